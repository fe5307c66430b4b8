"""The Ray Tune trainable: runs :func:`tuneddml.training.run_trial`'s trainer inside a trial.

Reports after every epoch with a checkpoint (so a trial that dies on a node resumes from its last
epoch elsewhere), and turns a diverged loss into a final ``diverged`` result instead of an error,
so the searcher sees a bad result and Ray does not retry it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "trainer.pt"


def train_trial(
    params: dict[str, Any], metric: str = "map_at_r", ended: dict[str, dict[str, Any]] | None = None
) -> None:
    """Ray Tune function trainable; ``params`` are flat trial-config keys (fixed + searched);
    ``metric`` is the search's metric, which a diverged trial reports as NaN; ``ended``: the
    search's ledger of ended trials (on ``--resume``): such a trial reports its last record again
    and does not train."""
    import ray
    from ray import tune

    if ended:
        from tuneddml.results.ledger import config_key

        done = ended.get(tune.get_context().get_trial_id()) or ended.get(config_key(params))
        if done is not None:
            tune.report(dict(done))
            return

    from tuneddml.config import TrialConfig
    from tuneddml.errors import TrialDiverged
    from tuneddml.results import DIVERGED, NODE, diverged_record
    from tuneddml.training import Trainer

    flat = {k: v for k, v in params.items() if not k.startswith("_")}
    node = ray.get_runtime_context().get_node_id()  # which node ran the trial (clusters)
    config = TrialConfig.from_flat(flat)
    trainer = Trainer(config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.restore(Path(folder) / CHECKPOINT_FILE)

    def report(epoch_report: Any, tr: Any) -> None:
        with tempfile.TemporaryDirectory() as folder:
            tr.save(Path(folder) / CHECKPOINT_FILE)
            tune.report(
                {**epoch_report.flat(), DIVERGED: 0, NODE: node},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    try:
        trainer.run(report)
    except TrialDiverged as exc:
        tune.report({**diverged_record(exc.epoch, metric, str(exc)), NODE: node})
