"""The Ray Tune trainable: runs :func:`tuneddml.training.run_trial`'s trainer inside a trial.

Reports after every epoch with a checkpoint (so a trial that dies on a node resumes from its last
epoch elsewhere), and turns a diverged loss into a final ``diverged`` result instead of an error,
so the searcher sees a bad result and Ray does not retry it. Each epoch's record also carries what
the trial's process used over the epoch (``system/*``, :class:`SystemUsage`) and a digest of its
data split (``data_digest``), which the driver logs to MLflow (workers never talk to MLflow).

A checkpoint that cannot be restored (missing, truncated, refused: see
:func:`tuneddml.training.loop.read_checkpoint`) does not cost the trial: :func:`resume_trainer`
falls back to the trial's newest readable earlier checkpoint (Ray keeps ``num_to_keep`` of them
beside it, ``<trial folder>/checkpoint_NNNNNN/``), else restarts the trial from its first epoch
(also when the storage is a URI, whose other checkpoints are not looked for), with one warning line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
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
    from tuneddml.results.schema import DIGEST
    from tuneddml.training.loop import resolve_device

    flat = {k: v for k, v in params.items() if not k.startswith("_")}
    node = ray.get_runtime_context().get_node_id()  # which node ran the trial (clusters)
    config = TrialConfig.from_flat(flat)
    # the GPU Ray gave the trial is its only visible one (CUDA_VISIBLE_DEVICES): "cuda" is that one;
    # its peak memory counts from here (an actor Ray reuses runs several trials)
    usage = SystemUsage(resolve_device(config.device))
    checkpoint = tune.get_checkpoint()
    local = local_checkpoint_folder(checkpoint)
    if checkpoint is None or local is not None:
        trainer = resume_trainer(config, local)
    else:  # on remote storage: this checkpoint, else a fresh start
        try:
            with checkpoint.as_directory() as folder:
                trainer = resume_trainer(config, Path(folder), siblings=False)
        except Exception as exc:  # not downloadable
            print(
                f"warning: checkpoint {checkpoint.path}: unreadable ({type(exc).__name__}); "
                "the trial restarts from its first epoch",
                file=sys.stderr,
                flush=True,
            )
            trainer = resume_trainer(config, None)

    digest = split_digest(config, trainer.data)

    def report(epoch_report: Any, tr: Any) -> None:
        with tempfile.TemporaryDirectory() as folder:
            tr.save(Path(folder) / CHECKPOINT_FILE)
            tune.report(
                {**epoch_report.flat(), **usage.sample(), DIVERGED: 0, NODE: node, DIGEST: digest},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    try:
        trainer.run(report)
    except TrialDiverged as exc:
        tune.report({**diverged_record(exc.epoch, metric, str(exc)), NODE: node})


class SystemUsage:
    """What this process used since the last :meth:`sample` (psutil; torch for CUDA memory).

    ``device``: the trial's; on a CUDA device its peak-memory counter starts again here, at the
    trial's start."""

    def __init__(self, device: Any = None) -> None:
        import psutil
        import torch

        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call starts the interval
        self._device = torch.device(device) if device is not None else None
        self._cuda = self._device is not None and self._device.type == "cuda"
        self._peak_mb = 0.0
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self._device)

    def sample(self) -> dict[str, float]:
        """``system/cpu_percent`` (100 = one core busy), ``system/rss_mb`` and, for a trial on a
        CUDA device, ``system/gpu_mem_mb`` (the peak allocated on it since the last sample) and
        ``system/gpu_peak_mb`` (the peak since the trial started: the largest ``gpu_mem_mb`` so
        far). A trial on the CPU has no ``gpu_*`` keys at all."""
        from tuneddml.results.schema import SYSTEM

        out = {
            f"{SYSTEM}cpu_percent": float(self._process.cpu_percent(None)),
            f"{SYSTEM}rss_mb": self._process.memory_info().rss / 2**20,
        }
        if self._cuda:
            import torch

            since_last = torch.cuda.max_memory_allocated(self._device) / 2**20
            self._peak_mb = max(self._peak_mb, since_last)
            out[f"{SYSTEM}gpu_mem_mb"] = since_last
            out[f"{SYSTEM}gpu_peak_mb"] = self._peak_mb
            torch.cuda.reset_peak_memory_stats(self._device)
        return out


def split_digest(config: Any, data: Any) -> str:
    """A short digest of the trial's data split: the settings that make it (dataset, its
    parameters, split, folds, fold seed) and the class labels of its training items, queries and
    gallery. Trials with one digest trained and were scored on the same data."""
    h = hashlib.sha256()
    settings = {k: getattr(config, k) for k in ("dataset", "dataset_params", "split", "num_folds", "fold", "fold_seed")}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for part in (data.train, data.query, data.gallery):
        if part is not None:
            h.update(part.labels.astype("int64").tobytes())
    return h.hexdigest()[:16]


def local_checkpoint_folder(checkpoint: Any) -> Path | None:
    """The folder of a Ray ``Checkpoint`` on the local file system (None: none, or remote)."""
    if checkpoint is None:
        return None
    import pyarrow.fs

    if isinstance(getattr(checkpoint, "filesystem", None), pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    return None


def resume_trainer(
    config: Any, latest: Path | None, *, siblings: bool = True, warn: Callable[[str], None] | None = None
) -> Any:
    """A ``Trainer`` of ``config`` continued from checkpoint folder ``latest`` (None: a fresh
    one); if that cannot be restored, from the newest readable other ``checkpoint_*`` folder
    beside it (``siblings``), else fresh; ``warn`` (default: stderr) gets one line saying which."""
    from tuneddml.training.folds import make_trainer as Trainer  # a cross-validated trial: its folds'
    from tuneddml.training.loop import UnreadableCheckpoint, read_checkpoint

    trainer = Trainer(config)
    if latest is None:
        return trainer
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    candidates = [latest]
    if siblings and latest.parent.is_dir():
        candidates += sorted(
            (p for p in latest.parent.glob("checkpoint_*") if p.name != latest.name), reverse=True
        )
    why = ""
    for folder in candidates:
        try:
            state = read_checkpoint(folder / CHECKPOINT_FILE, trainer.device)
        except UnreadableCheckpoint as exc:
            why = why or str(exc)
            continue
        try:
            trainer.load_state_dict(state)
        except Exception as exc:  # a checkpoint of another trial (shapes, keys): not this one's
            why = why or f"checkpoint {folder / CHECKPOINT_FILE}: not this trial's ({type(exc).__name__})"
            trainer = Trainer(config)  # half restored: start again from a clean one
            continue
        if folder != latest:
            warn(f"warning: {why}; resumed from {folder.name} (epoch {trainer.epoch}) instead")
        return trainer
    warn(f"warning: {why}; no earlier checkpoint restores, so the trial restarts from its first epoch")
    return trainer
