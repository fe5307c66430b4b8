# Long file: every trial setting, its validation and the combinations refused (features, views, backbone settings) live in the one frozen dataclass every entry point builds.
"""The trial configuration: one frozen, validated dataclass describes a trial completely.

Every entry point (the ``train`` CLI, Ray Tune trials, tests) builds a :class:`TrialConfig` with
:meth:`TrialConfig.from_flat` from flat keys, dotted for a component's parameters::

    {"dataset": "glyphs-tiny", "loss": "supcon", "loss.lambda": 0.3, "sampler.samples_per_class": 4}

Validation happens here, before anything runs: unknown keys, unknown components, unknown or
out-of-range parameters raise :class:`~tuneddml.errors.ConfigError`. Component parameters are
stored complete (defaults filled in), so ``to_flat()`` lists every setting of the trial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneddml.errors import ConfigError
from tuneddml.registry import Registry, param_specs

#: dotted prefix -> (name field, params field)
COMPONENTS = {
    "dataset": ("dataset", "dataset_params"),
    "backbone": ("backbone", "backbone_params"),
    "loss": ("loss", "loss_params"),
    "miner": ("miner", "miner_params"),
    "sampler": ("sampler", "sampler_params"),
    "embedding_aug": ("embedding_aug", "embedding_aug_params"),
}
#: what numpy's and torch's seeding accept (numpy's legacy seed: [0, 2**32 - 1])
SEED_RANGE = "[0, 4294967295]"
#: a dataset loader's runtime argument -> the trial field that supplies it
DATASET_RUNTIME = {"root": "data_root", "image_size": "image_size"}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Field docs double as the catalog's help."""

    # data
    dataset: str = "glyphs"
    data_root: str | None = None  # folder of a benchmark / cache folder for glyphs
    image_size: int | None = None  # None: the dataset's own (glyphs 32, the photo benchmarks 224)
    resize_size: int | None = None  # file-backed images: shorter side before the crop; None: image_size * 256/224
    split: Literal["val", "test"] = "val"  # val: a class-disjoint fold of the training classes
    num_folds: int = 4
    fold: int = 0
    fold_seed: int = 0  # partition of the training classes into folds: the same for every trial of a search
    # one model per fold, the trial's metrics their mean (the Reality Check's validation); with
    # split=test the fold models are scored on the test classes, alone and concatenated
    cross_validate: bool = False
    workers: int | None = None  # image-decoding processes for file-backed sets; None: min(8, CPUs - 1), 0 in memory
    # the dataset's training augmentation; false: none (file-backed items: the eval view); None:
    # on, except for features=cached with feature_views=0 (the cached evaluation view)
    augment: bool | None = None
    # cached: the frozen backbone's features of every item computed once, stored in feature_cache,
    # and only the head (and the loss) trained on them; implies backbone.freeze (an explicit
    # backbone.freeze=false is refused), and no augmentation unless feature_views > 0
    features: Literal["full", "cached"] = "full"
    # features=cached: V > 0 stored augmented views of the training items, epoch e trains on view
    # (e-1) % V; 0: the evaluation view only (as augment=false)
    feature_views: int = 0
    feature_cache: str | None = None  # folder of cached features; None: $TUNEDDML_FEATURE_CACHE, else ~/.cache/tuneddml/features
    # model
    backbone: str = "small_cnn"
    embedding_size: int = 64
    # loss, miner, sampler
    loss: str = "supcon"  # the best family on glyphs in the contrastive_balance search (bench/RESULTS.md)
    miner: str = "default"  # "default": the loss's own; "none": no mining
    sampler: str = "m_per_class"
    embedding_aug: str = "none"  # embedding-space augmentation between model and loss (DAS, IAA)
    batch_size: int = 64
    # optimisation
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"  # sgd, rmsprop: momentum 0.9
    lr: float = 1e-3  # the embedding head's (and the backbone's, unless backbone.lr is set)
    proxy_lr: float = 1e-2  # learning rate of the loss's own parameters (proxies, beta, weights)
    weight_decay: float = 0.0
    # the schedule multiplies every group's lr by one factor, updated after each optimiser step
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to each lr over this many epochs (may be fractional)
    lr_min_factor: float = 0.0  # cosine: the factor reached at the end of the trial (0: down to zero)
    lr_step_epochs: float = 10.0  # step: multiply the lrs by lr_step_gamma every this many epochs
    lr_step_gamma: float = 0.1  # step: the factor applied every lr_step_epochs
    grad_clip: float | None = None  # clip the gradients' total L2 norm to this; None: no clipping
    epochs: int = 5
    steps_per_epoch: int | None = None  # None: one pass over the training items
    seed: int = 0
    device: str = "auto"  # auto: CUDA where present, else CPU
    # mixed precision: autocast on CUDA only (fp16 with a gradient scaler), no effect on the CPU;
    # the loss is always computed in float32. true/false (older configs) mean bf16/none
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool | None = None  # None: on for image batches on CUDA with a conv backbone, else off
    threads: int | None = None  # torch CPU threads; None: torch's default
    eval_batch_size: int = 512
    eval_ap: bool = (
        True  # exact AP over full rankings each epoch (about 15 s for 60k items: off for SOP-size searches)
    )
    eval_nmi: bool = True  # k-means NMI each epoch
    # component parameters (dotted keys)
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    backbone_params: Mapping[str, Any] = field(default_factory=dict)
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    miner_params: Mapping[str, Any] = field(default_factory=dict)
    sampler_params: Mapping[str, Any] = field(default_factory=dict)
    embedding_aug_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> TrialConfig:
        """Build and validate from flat keys (see the module docstring)."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {prefix: {} for prefix in COMPONENTS}
        for key, value in flat.items():
            prefix, dot, rest = key.partition(".")
            if dot:
                if prefix not in COMPONENTS or not rest:
                    raise ConfigError(
                        key,
                        value,
                        f"a field or <component>.<param> with component one of {', '.join(COMPONENTS)}",
                    )
                nested[prefix][rest] = value
            elif key.endswith("_params") and isinstance(value, Mapping):
                nested[key.removesuffix("_params")].update(value)
            else:
                top[key] = value
        specs = {s.name: s for s in _TOP_SPECS}
        checked: dict[str, Any] = {}
        for key, value in top.items():
            if key not in specs:
                raise ConfigError(key, value, f"a trial setting: {', '.join(sorted(specs))}")
            checked[key] = specs[key].coerce(_LEGACY.get(key, _same)(value), key)
        config = cls(**checked)
        return config._with_components(nested)

    def _with_components(self, nested: Mapping[str, Mapping[str, Any]]) -> TrialConfig:
        registries = component_registries()
        updates: dict[str, Any] = {}
        for prefix, (name_field, params_field) in COMPONENTS.items():
            name = getattr(self, name_field)
            params = dict(getattr(self, params_field))
            params.update(nested.get(prefix, {}))
            if (prefix, name) in (("miner", "default"), ("miner", "none"), ("embedding_aug", "none")):
                updates[params_field] = _check_no_params(prefix, name, params)
                continue
            registry = registries[prefix]
            if prefix == "backbone":
                updates[params_field] = _backbone_params(registry, name, params)
                continue
            if prefix == "dataset":
                for arg, top in DATASET_RUNTIME.items():
                    if arg in params:
                        raise ConfigError(f"dataset.{arg}", params[arg], f"set it with the top-level key {top}")
                updates["image_size"] = self._image_size(registry.get(name, "dataset"))
            updates[params_field] = registry.validate(name, params, field=prefix)
        config = dataclasses.replace(self, **updates)
        config._check_combination()
        return config

    def _image_size(self, dataset: Any) -> int:
        """The trial's image size: its own, checked against the dataset's range, else the dataset's."""
        spec = dataset.runtime_param("image_size")
        if self.image_size is None:
            return int(spec.default)
        return int(spec.coerce(self.image_size, "image_size"))

    def _check_combination(self) -> None:
        from tuneddml.losses import resolve_miner

        resolve_miner(self.loss, self.miner)
        k = self.sampler_params.get("samples_per_class")
        if isinstance(k, int) and self.batch_size % k:
            raise ConfigError("sampler.samples_per_class", k, f"a divisor of batch_size={self.batch_size}")
        if isinstance(k, int) and self.batch_size // k < 2:
            raise ConfigError(
                "sampler.samples_per_class", k, f"at most batch_size/2 = {self.batch_size // 2}: a batch needs two classes or more"
            )
        if self.resize_size is not None and self.image_size is not None and self.resize_size < self.image_size:
            raise ConfigError("resize_size", self.resize_size, f"at least image_size={self.image_size} (the crop)")
        if not 0 <= self.fold < self.num_folds:
            raise ConfigError("fold", self.fold, f"an integer in [0, num_folds={self.num_folds})")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError("device", self.device, "auto, cpu, cuda or cuda:N")
        self._check_features()

    def _check_features(self) -> None:
        """``features``, ``feature_views``, ``augment``, ``backbone.freeze``: the combinations that run."""
        if self.features == "full":
            if self.feature_views:
                raise ConfigError("feature_views", self.feature_views, "0 with features=full (views are cached features)")
            return
        if self.backbone_params.get("freeze") is False:
            raise ConfigError(
                "backbone.freeze", False, "true or unset with features=cached (cached features need a frozen backbone)"
            )
        if self.feature_views and self.augment is False:
            raise ConfigError("feature_views", self.feature_views, "0 with augment=false (views are augmented draws)")
        if not self.feature_views and self.augment:  # what ran is what the record says
            raise ConfigError(
                "augment",
                self.augment,
                "false with features=cached and feature_views=0 (the cached evaluation view is not augmented), "
                "or feature_views > 0 (augmented views)",
            )

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented: ``augment``, or by default on unless the trial
        trains on cached evaluation-view features (``features=cached``, ``feature_views=0``)."""
        if self.augment is not None:
            return self.augment
        return not (self.features == "cached" and not self.feature_views)

    @property
    def backbone_frozen(self) -> bool:
        """``backbone.freeze``, or by default frozen exactly when ``features=cached``."""
        freeze = self.backbone_params.get("freeze")
        return self.features == "cached" if freeze is None else bool(freeze)

    def to_flat(self) -> dict[str, Any]:
        """Flat keys, dotted for component parameters; ``from_flat(to_flat())`` round-trips."""
        out: dict[str, Any] = {}
        params_fields = {pf for _, pf in COMPONENTS.values()}
        for f in dataclasses.fields(self):
            if f.name not in params_fields:
                out[f.name] = getattr(self, f.name)
        for prefix, (_, params_field) in COMPONENTS.items():
            for key, value in getattr(self, params_field).items():
                out[f"{prefix}.{key}"] = value
        return out

    def replace(self, **flat: Any) -> TrialConfig:
        """A copy with some flat keys changed, validated again."""
        return TrialConfig.from_flat(merge_flat(self.to_flat(), flat))

    @classmethod
    def from_file(
        cls, path: str | Path, overrides: Mapping[str, Any] | None = None, *, base: Mapping[str, Any] | None = None
    ) -> TrialConfig:
        """Read a JSON or YAML file of flat (or nested ``*_params``) keys, then apply ``overrides``;
        the file's keys change ``base`` (flat keys, e.g. a preset's) as :func:`merge_flat` does."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", str(path), "an existing JSON or YAML file")
        from tuneddml.cli import DuplicateKey, load_json, load_yaml

        text = path.read_text()
        try:
            data = (load_yaml(text) if path.suffix in (".yaml", ".yml") else load_json(text)) or {}
        except DuplicateKey as exc:
            raise ConfigError(f"--config {path}: {exc.key}", "given twice", "each key once per mapping") from None
        except Exception as exc:
            raise ConfigError("--config", str(path), f"valid JSON/YAML ({exc})") from None
        if not isinstance(data, Mapping):
            raise ConfigError("--config", str(path), "a mapping of trial settings")
        flat = _flatten(data)
        flat.update(overrides or {})
        return cls.from_flat(merge_flat(base or {}, flat))


def merge_flat(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keys ``base`` with ``changes`` applied. A component given a new name loses ``base``'s
    parameters of that component (they belong to the old one; ``backbone.lr``,
    ``backbone.freeze_bn`` and ``backbone.freeze``, valid for every backbone, stay); a new dataset also loses the image
    size, unless ``changes`` gives one."""
    merged = dict(base)
    for prefix, (name_field, _) in COMPONENTS.items():
        if name_field in changes and name_field in merged and changes[name_field] != merged[name_field]:
            kept = {f"backbone.{s.name}" for s in BACKBONE_SPECS}  # valid for every backbone
            merged = {k: v for k, v in merged.items() if not k.startswith(prefix + ".") or k in kept}
            if prefix == "dataset":
                merged["image_size"] = None
    merged.update(changes)
    return merged


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in COMPONENTS and isinstance(value, Mapping):
            # nested form: {"loss": {"name": "supcon", "temperature": 0.1}}
            value = dict(value)
            if "name" in value:
                flat[key] = value.pop("name")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _same(value: Any) -> Any:
    return value


def _amp(value: Any) -> Any:
    """``amp`` was a bool before fp16 came: true meant bf16, false (or None) no mixed precision;
    the spellings of a bool the registry reads (true/false, 1/0, yes/no, on/off) still work."""
    if value is None or isinstance(value, bool):
        return "bf16" if value else "none"
    word = value.strip().lower() if isinstance(value, str) else value
    if word in ("true", "1", "yes", "on", 1):
        return "bf16"
    if word in ("false", "0", "no", "off", 0):
        return "none"
    return value


#: a trial setting -> the translation of its older values (applied before the type check)
_LEGACY = {"amp": _amp}


def _backbone_settings(lr: float | None = None, freeze_bn: bool = False, freeze: bool | None = None) -> None:
    """The parameters every backbone takes besides its own, applied by the trial: ``lr``, the
    backbone's learning rate (None: the trial's ``lr``, one group with the head); ``freeze_bn``,
    the backbone's BatchNorm layers are frozen (``build_model(freeze_bn=True)``), their affine
    parameters left out of the optimiser; ``freeze``, the whole backbone is frozen
    (``build_model(freeze=True)``: eval mode, no gradient, out of the optimiser), only the head
    and the loss's parameters train (None: frozen exactly with ``features=cached``,
    :attr:`TrialConfig.backbone_frozen`)."""


#: backbone.lr, backbone.freeze_bn, backbone.freeze: valid for every backbone, stripped before it is built
BACKBONE_SPECS = param_specs(_backbone_settings, {"lr": "(0, 10]"}, (), "backbone settings")


def _backbone_params(registry: Registry[Any], name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone's own parameters (checked by its registry) followed by :data:`BACKBONE_SPECS`."""
    generic = {s.name: s for s in BACKBONE_SPECS}
    entry = registry.get(name, "backbone")
    for key, value in params.items():
        if key not in generic and entry.param(key) is None:
            valid = ", ".join([*(s.name for s in entry.params), *generic])
            supplied = f" (the trial supplies {key})" if key in entry.runtime else ""
            expected = f"a parameter of backbone {name!r}: {valid}{supplied}"
            raise ConfigError(f"backbone.{key}", value, expected)
    own = registry.validate(name, {k: v for k, v in params.items() if k not in generic}, field="backbone")
    for key, spec in generic.items():
        own[key] = spec.coerce(params[key], f"backbone.{key}") if key in params else spec.default
    return own


def split_backbone_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's ``backbone_params`` in two: the backbone's own (what it is built with) and the
    :data:`BACKBONE_SPECS` settings, defaults filled in (what the trainer applies)."""
    generic = {s.name: s.default for s in BACKBONE_SPECS}
    own = {k: v for k, v in params.items() if k not in generic}
    return own, {k: params.get(k, default) for k, default in generic.items()}


def _check_no_params(prefix: str, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if params:
        raise ConfigError(
            f"{prefix}.{next(iter(params))}",
            next(iter(params.values())),
            f"no {prefix} parameters with {prefix}={name}: name a {prefix}",
        )
    return {}


def component_registries() -> dict[str, Registry[Any]]:
    """The registry behind each dotted prefix (imported lazily: it registers every component)."""
    from tuneddml.data import DATASETS
    from tuneddml.losses import LOSSES
    from tuneddml.models import BACKBONES
    from tuneddml.sampling import EMBEDDING_AUGMENTERS, MINERS, SAMPLERS

    return {
        "dataset": DATASETS,
        "backbone": BACKBONES,
        "loss": LOSSES,
        "miner": MINERS,
        "sampler": SAMPLERS,
        "embedding_aug": EMBEDDING_AUGMENTERS,
    }


_TOP_SPECS = param_specs(
    TrialConfig,
    {
        "image_size": "[8, 1024]",
        "num_folds": "[2, 100]",
        "fold": "[0, 99]",
        "embedding_size": "[2, 8192]",
        "batch_size": "[2, 65536]",
        "lr": "(0, 10]",
        "proxy_lr": "(0, 1000]",
        "weight_decay": "[0, 1]",
        "warmup_epochs": "[0, 100000]",
        "lr_min_factor": "[0, 1]",
        "lr_step_epochs": "(0, 100000]",
        "lr_step_gamma": "(0, 1]",
        "grad_clip": "(0, inf)",
        "epochs": "[1, 100000]",
        "steps_per_epoch": "[1, 10000000]",
        "threads": "[1, 1024]",
        "workers": "[0, 256]",
        "resize_size": "[8, 4096]",
        "eval_batch_size": "[1, 1000000]",
        "feature_views": "[0, 1000]",
        "seed": SEED_RANGE,
        "fold_seed": SEED_RANGE,
    },
    tuple(pf for _, pf in COMPONENTS.values()),
    "trial config",
)
