"""What a trial would find out in its first second, found out before Ray starts.

:func:`check_trials` runs, for the space's representative points merged over the fixed settings
(the points :func:`~tuneddml.searchers.space.check_values` validates), the start of a trial
without its model and its training: the dataset (its folder and layout, a few images decoded), the
class-disjoint split, the batch sampler's ``check`` against the class sizes and the batch size, and
the loss with its miner (and the embedding augmenter) built on the CPU, whose term names a
``metric: loss/<term>`` must name, and the backbone's weights (a local file or folder, or the hub
cache when offline: :func:`~tuneddml.models.check_backbone`, which builds and downloads nothing).
Each distinct dataset is loaded once; a glyph dataset that would need rendering is skipped (see
:func:`tuneddml.data.probe.probe_dataset`). No Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneddml.errors import ConfigError


def check_trials(space: Any, fixed: Mapping[str, Any], *, cluster: bool = False) -> None:
    """Raise the ConfigError the first failing trial would raise (with the point that fails).

    ``cluster``: the trials run on a Ray cluster (``--address``), whose nodes may hold a
    ``data_root`` this machine has not: a data folder missing here is then left to the trials."""
    from pathlib import Path

    from tuneddml.config import DATASET_RUNTIME, TrialConfig, split_backbone_params
    from tuneddml.data.probe import check_sample, probe_dataset
    from tuneddml.data.splits import make_split
    from tuneddml.models import check_backbone
    from tuneddml.results.schema import TERM
    from tuneddml.sampling import SAMPLERS
    from tuneddml.training.loop import build_loss_parts

    loaded: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    checked: set[str] = set()  # sampler settings checked on a split
    weights: set[str] = set()  # backbones checked
    start = space.config_of(space.start_point())
    for point in space.representative_configs():
        config = TrialConfig.from_flat({**fixed, **point})
        differs = {k: v for k, v in point.items() if start.get(k) != v}
        at = ", ".join(f"{k}={v}" for k, v in differs.items())  # empty at the start point
        try:
            backbone = repr((config.backbone, sorted(config.backbone_params.items())))
            if backbone not in weights and not cluster:  # a cluster's nodes may hold weights this machine has not
                check_backbone(config.backbone, split_backbone_params(config.backbone_params)[0])
                weights.add(backbone)
            runtime = {arg: getattr(config, top) for arg, top in DATASET_RUNTIME.items()}
            data_key = repr((config.dataset, sorted(config.dataset_params.items()), runtime))
            elsewhere = cluster and config.data_root and not Path(config.data_root).expanduser().exists()
            if data_key not in loaded and elsewhere:
                loaded[data_key] = None
            if data_key not in loaded:
                dataset = probe_dataset(config.dataset, config.dataset_params, **runtime)
                if dataset is not None:
                    check_sample(dataset.train)
                    check_sample(dataset.test)
                loaded[data_key] = dataset
            if loaded[data_key] is None:  # not loaded (not cheap): the loss is still built
                loss, _ = build_loss_parts(config, num_classes=_PLACEHOLDER_CLASSES)
                _check_metric(space.metric, config, loss, TERM)
                continue
            split_key = repr((data_key, config.split, config.num_folds, config.fold, config.fold_seed))
            if split_key not in splits:
                splits[split_key] = make_split(
                    loaded[data_key],
                    split=config.split,
                    num_folds=config.num_folds,
                    fold=config.fold,
                    seed=config.fold_seed,
                )
            data = splits[split_key]
            batches = repr((split_key, config.sampler, sorted(config.sampler_params.items()), config.batch_size))
            if batches not in checked:
                sampler = SAMPLERS.build(config.sampler, config.sampler_params, field="sampler")
                sampler.check(data.train.labels, config.batch_size)
                checked.add(batches)
            loss, _ = build_loss_parts(
                config, num_classes=data.num_train_classes, num_train=len(data.train.labels)
            )
        except ConfigError as exc:
            if not at:
                raise
            where = f"{exc.expected}; " if exc.expected else ""
            raise ConfigError(exc.field, exc.value, f"{where}checked at {at}") from None
        _check_metric(space.metric, config, loss, TERM)


#: classes a loss is built for when the dataset was not loaded (its parameters are what is checked)
_PLACEHOLDER_CLASSES = 8


def _check_metric(metric: Any, config: Any, loss: Any, term: str) -> None:
    """A ``metric: loss/<term>`` names a term this trial's loss reports (or ``loss/total``)."""
    if isinstance(metric, str) and metric.startswith(term):
        terms = ("total", *loss.term_names)
        if metric.removeprefix(term) not in terms:
            raise ConfigError(
                "metric", metric, f"a term loss={config.loss} reports: {', '.join(term + t for t in terms)}"
            )
