"""Every loss and miner of pytorch-metric-learning (pml), by name: ``loss=pml:CircleLoss
loss.m=0.4 loss.gamma=80``, ``miner=pml:TripletMarginMiner miner.type_of_triplets=semihard``.

Active only where ``pytorch_metric_learning`` imports; otherwise this module registers nothing.

- **Losses** go into :data:`~tuneddml.losses.LOSSES` as ``pml:<ClassName>``: a
  :class:`PmlLoss` holding the pml module, with one term ``pml`` (weight 1) and ``total``; its
  family is ``proxy`` when the pml class takes ``num_classes``, ``embedding_size`` or
  ``descriptors_dim`` (it owns per-class vectors: ProxyAnchor, SoftTriple, ArcFace, ...), else
  ``pair`` (TripletMargin, Circle, ...). The
  trainer L2-normalises the embeddings first (pml's default distances normalise anyway).
  ``num_classes``, ``embedding_size`` (and P2SGrad's ``descriptors_dim``) are filled in by the
  trial; pml's proxies/weights/``beta`` are parameters of the loss, trained with ``proxy_lr``. A
  loss whose pml code accepts an ``indices_tuple`` takes any of our miners (triplets or pairs:
  pml converts between the two); one that rejects it takes none.
- **Miners** go into :data:`~tuneddml.sampling.MINERS` as ``pml:<ClassName>`` with ``output``
  ``"triplets"`` or ``"pairs"``, read from what the pml miner returns on a small probe batch.

Parameters come from the pml class's constructor, followed through ``**kwargs`` up its class
chain to pml's base classes (a name the subclass itself passes up, such as BatchHardMiner's
strategies, is fixed and not offered). Skipped: collaborators passed as objects (``distance``,
``reducer``, regularisers, ``weight_init_func``), their weights, and ``None`` defaults of unknown
type. Integer defaults become floats (``alpha=40`` may be searched as 40.5) except counts
(``num_*``, ``n_*``, ``*_per_*``, ``sub_centers``) and the integer angle margin of
Large-Margin/SphereFace softmax. Values pml's constructor rejects raise ConfigError.

Not registered (:data:`EXCLUDED` gives the reason for each):

- wrappers that need another loss object: CrossBatchMemory, MultipleLosses, SelfSupervisedLoss;
- self-supervised losses that take no labels: ManifoldLoss, VICRegLoss;
- the miner EmbeddingsAlreadyPackagedAsTriplets (it assumes a batch laid out as a, p, n, a, p, n);
- base and abstract classes (BaseMetricLossFunction, GenericPairLoss, BaseMiner, mixins).

Required constructor arguments without a default get one here (:data:`REQUIRED_DEFAULTS`):
RankedListLoss ``margin`` = 0.4 (Wang et al., CVPR 2019, ``m = 0.4``) and ``Tn`` = 1.0 (our
choice: pml warns that values over 5 may overflow; search it).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss
from tuneddml.sampling.base import Miner

PREFIX = "pml:"
_DOCS = "https://kevinmusgrave.github.io/pytorch-metric-learning/"
#: component name -> why it is not registered
EXCLUDED: dict[str, str] = {}
#: (class, argument) -> default for a required pml argument
REQUIRED_DEFAULTS: dict[tuple[str, str], Any] = {
    ("RankedListLoss", "margin"): 0.4,
    ("RankedListLoss", "Tn"): 1.0,
}
#: (class, argument) -> type of an argument whose pml default is None
NONE_DEFAULT_TYPES: dict[tuple[str, str], type] = {("RankedListLoss", "alpha"): float}

_SKIPPED_ARGS = {
    "self", "distance", "reducer", "embedding_regularizer", "embedding_reg_weight", "weight_regularizer",
    "weight_reg_weight", "weight_init_func", "collect_stats", "loss", "miner", "mat_based_loss",
}  # fmt: skip
_RUNTIME_ARGS = {
    "num_classes": "num_classes",
    "embedding_size": "embedding_size",
    "descriptors_dim": "embedding_size",
}
_COUNT = re.compile(r"^(num_|n_)|_per_|^sub_centers$")
_INT_MARGIN = {"LargeMarginSoftmaxLoss", "SphereFaceLoss"}
_CHOICES: dict[str, tuple[str, ...]] = {
    "type_of_triplets": ("all", "hard", "semihard", "easy"),
    "pos_strategy": ("easy", "semihard", "hard", "all"),
    "neg_strategy": ("easy", "semihard", "hard", "all"),
    "variant": ("Ds", "Dq", "Iu", "Ib", "O"),
}
#: ranges of pml parameters, by name, where pml's docs define them or its formulas need them:
#: scales and temperatures divide or multiply logits (> 0); margins are distances or similarities
#: gaps on pml's default distance (>= 0), angular margins in degrees (ArcFace, Tuplet: [0, 180)),
#: integer angle multipliers (Large-Margin, SphereFace: >= 1); counts >= 1; AngularLoss's alpha is
#: an angle in degrees (0, 90) (pml: "the paper uses values between 36 and 55"); momenta, the
#: RankedList imbalance in [0, 1]; regularisers and epsilons >= 0
_RANGE_BY_NAME = {
    **dict.fromkeys(("temperature", "softmax_scale", "scale", "la", "gamma", "beta", "Tn", "anneal"), "(0, inf)"),
    **dict.fromkeys(("margin", "pos_margin", "neg_margin", "nu", "pos_eps", "neg_eps", "Tp"), "[0, inf)"),
    **dict.fromkeys(("lambda_plus", "lambda_minus"), "[0, inf)"),
    **dict.fromkeys(("num_bins", "n_bins", "centers_per_class", "sub_centers"), "[1, inf)"),
    **dict.fromkeys(("momentum", "imbalance"), "[0, 1]"),
}
_RANGE_BY_CLASS = {
    # on a distance, a negative positive margin pulls every positive pair: the Reality Check's best
    # contrastive loss on CUB-200 has pos_margin = -0.2 (search_spaces/mlrc_optima.yaml)
    ("ContrastiveLoss", "pos_margin"): "(-inf, inf)",
    ("ArcFaceLoss", "margin"): "[0, 180)",
    ("SubCenterArcFaceLoss", "margin"): "[0, 180)",
    ("TupletMarginLoss", "margin"): "[0, 180)",
    ("LargeMarginSoftmaxLoss", "margin"): "[1, inf)",
    ("SphereFaceLoss", "margin"): "[1, inf)",
    ("AngularLoss", "alpha"): "(0, 90)",
    ("MultiSimilarityLoss", "alpha"): "(0, inf)",
    ("ProxyAnchorLoss", "alpha"): "(0, inf)",
    ("PNPLoss", "alpha"): "(0, inf)",
    ("PNPLoss", "b"): "(0, inf)",
}
_EXCLUDED_REASONS = {
    "CrossBatchMemory": "a wrapper: needs another loss object",
    "MultipleLosses": "a wrapper: needs a list of loss objects (use loss=ensemble)",
    "SelfSupervisedLoss": "a wrapper: needs another loss object and pairs of augmented views, no labels",
    "ManifoldLoss": "self-supervised: rejects labels (pml raises 'labels are not supported')",
    "VICRegLoss": "self-supervised: needs ref_emb (a second view), takes no labels",
    "GenericPairLoss": "the abstract base of pml's pair losses",
    "EmbeddingsAlreadyPackagedAsTriplets": "assumes a batch laid out as (a, p, n) triples, never so here",
}


class PmlLoss(BaseLoss):
    """A pytorch-metric-learning loss as one term ``pml``: ``total = pml``."""

    term_names: ClassVar[tuple[str, ...]] = ("pml",)
    pml_class: ClassVar[type]
    runtime_args: ClassVar[dict[str, str]] = {}  # pml argument -> trial runtime name

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.miner = kwargs.pop("miner", None)
        runtime = {k: kwargs.pop(k, None) for k in ("num_classes", "embedding_size")}
        args = {pml_arg: runtime[ours] for pml_arg, ours in self.runtime_args.items()}
        args.update(kwargs)
        self.inner = _construct(self.pml_class, args, "loss")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.miner is not None:
            value = self.inner(embeddings, labels, tuple(self.miner(embeddings, labels)))
        else:
            value = self.inner(embeddings, labels)
        return self.combine({"pml": value.to(embeddings.dtype).reshape(())})


class PmlMiner(Miner):
    """A pytorch-metric-learning miner: ``miner(embeddings, labels)`` returns its index tuple."""

    output: ClassVar[str]
    pml_class: ClassVar[type]

    def __init__(self, **kwargs: Any) -> None:
        self.inner = _construct(self.pml_class, kwargs, "miner")

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner(embeddings, labels))


def pml_ranges(cls: type, params: list[inspect.Parameter]) -> dict[str, str]:
    """The declared range of each numeric parameter of ``cls`` that has one (see _RANGE_BY_NAME)."""
    out = {}
    for p in params:
        if p.annotation in (int, float) or p.annotation in (int | None, float | None):
            rng = _RANGE_BY_CLASS.get((cls.__name__, p.name)) or _RANGE_BY_NAME.get(p.name)
            if rng is not None:
                out[p.name] = rng
    return out


def _construct(cls: type, args: dict[str, Any], field: str) -> Any:
    if "triplets_per_anchor" in args:
        text = str(args["triplets_per_anchor"])
        if text != "all" and not (text.isdigit() and int(text) >= 1):
            raise ConfigError(
                f"{field}.triplets_per_anchor", args["triplets_per_anchor"], "all or a positive integer"
            )
        args["triplets_per_anchor"] = int(text) if text.isdigit() else text
    try:
        return cls(**args)
    except (AssertionError, ValueError, TypeError) as err:
        shown = {k: v for k, v in args.items() if k not in _RUNTIME_ARGS}
        raise ConfigError(
            field, f"{PREFIX}{cls.__name__} {shown}", f"values {cls.__name__} accepts ({err})"
        ) from None


# -- reading pml signatures ------------------------------------------------------------------------
def _is_pml_base(cls: type) -> bool:
    module = cls.__module__
    return (
        not module.startswith("pytorch_metric_learning")
        or module.startswith("pytorch_metric_learning.utils")
        or module.rsplit(".", 1)[-1] in {"mixins", "base_metric_loss_function", "base_miner"}
    )


def pml_parameters(cls: type) -> tuple[list[inspect.Parameter], dict[str, Any], dict[str, str]]:
    """The searchable keyword parameters of a pml class, their annotations, and its runtime
    arguments (pml name -> trial name). Raises ValueError for a required argument we cannot fill."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    runtime: dict[str, str] = {}
    fixed: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or _is_pml_base(klass):
            continue
        init = vars(klass)["__init__"]
        signature = inspect.signature(init)
        for name, p in signature.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in _SKIPPED_ARGS:
                continue
            if name in _RUNTIME_ARGS:
                runtime.setdefault(name, _RUNTIME_ARGS[name])
                continue
            if name in params or name in fixed:
                continue
            spec = _parameter(klass.__name__, cls.__name__, name, p)
            if spec is not None:
                params[name], hints[name] = spec
        fixed |= _passed_up(init)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return list(params.values()), hints, runtime


def _passed_up(init: Callable[..., Any]) -> set[str]:
    """Keyword names an ``__init__`` passes explicitly to its parent's
    (``super().__init__(pos_strategy=HARD, **kwargs)`` -> ``{"pos_strategy"}``)."""
    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):
        return set()
    names: set[str] = set()
    for match in re.finditer(r"super\([^)]*\)\.__init__\(", source):
        depth, end = 1, match.end()
        while end < len(source) and depth:
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            end += 1
        names |= set(re.findall(r"(\w+)\s*=(?!=)", source[match.end() : end]))
    return names


def _parameter(owner: str, cls: str, name: str, p: inspect.Parameter) -> tuple[inspect.Parameter, Any] | None:
    default = p.default
    annotation = p.annotation if p.annotation is not inspect.Parameter.empty else None
    if default is inspect.Parameter.empty:
        key = (cls, name) if (cls, name) in REQUIRED_DEFAULTS else (owner, name)
        if key not in REQUIRED_DEFAULTS:
            raise ValueError(f"required argument {name!r} has no default")
        default = REQUIRED_DEFAULTS[key]
    if default is None:
        kind = NONE_DEFAULT_TYPES.get((owner, name)) or (
            annotation if annotation in (int, float, bool) else None
        )
        if kind is None:
            return None  # an object or a tuple: not searchable
        hint: Any = kind | None
    elif name in _CHOICES and isinstance(default, str):
        hint = Literal[_CHOICES[name]]  # type: ignore[valid-type]
    elif isinstance(default, bool):
        hint = bool
    elif isinstance(default, int):
        hint = int if _COUNT.search(name) or (owner in _INT_MARGIN and name == "margin") else float
        default = hint(default)
    elif isinstance(default, (float, str)):
        hint = type(default)
    else:
        return None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint), hint


def _with_signature(
    base: type,
    cls: type,
    params: list[inspect.Parameter],
    hints: dict[str, Any],
    runtime: tuple[str, ...],
    attrs: dict[str, Any],
) -> type:
    """A subclass of ``base`` for ``cls`` whose ``__init__`` shows the registry ``params``
    (keyword-only, with ``hints`` as annotations) and the trial's ``runtime`` arguments."""

    def __init__(self: Any, **kwargs: Any) -> None:
        base.__init__(self, **kwargs)

    shown = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params]
    shown += [inspect.Parameter(r, inspect.Parameter.KEYWORD_ONLY, default=None) for r in runtime]
    __init__.__signature__ = inspect.Signature(shown)  # type: ignore[attr-defined]
    __init__.__annotations__ = dict(hints)
    own = inspect.cleandoc(vars(cls).get("__doc__") or "").splitlines()  # not nn.Module's inherited doc
    first = own[0].strip().rstrip(".") if own and not own[0].rstrip().endswith(":") else ""
    doc = f"{cls.__name__} of pytorch-metric-learning" + (f": {first}." if first else ".")
    doc += f" Parameters as in pml's docs ({_DOCS}{'losses' if base is PmlLoss else 'miners'}/)."
    doc += f"\n\nFollows: pytorch-metric-learning's ``{cls.__name__}`` itself, called unchanged (its reading of the paper)."
    namespace = {"__init__": __init__, "__doc__": doc, "pml_class": cls, **attrs}
    return type(f"Pml{cls.__name__}", (base,), namespace)


def _takes_indices(cls: type) -> bool:
    """Whether the loss's ``compute_loss`` accepts a miner's ``indices_tuple``."""
    try:
        source = inspect.getsource(cls.compute_loss)
    except (OSError, TypeError, AttributeError):
        return False
    return "indices_tuple_not_supported" not in source and "labels_not_supported" not in source


def _probe_output(cls: type) -> str | None:
    """Run the miner once on a fixed small batch (global RNG states restored): "triplets" for a
    3-tuple, "pairs" for a 4-tuple."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            g = torch.Generator().manual_seed(0)
            emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
            out = cls()(emb, torch.arange(4).repeat_interleave(3))
    finally:
        np.random.set_state(np_state)
    return {3: "triplets", 4: "pairs"}.get(len(out))


def _concrete(module: Any, base: type) -> list[type]:
    found = []
    for name, obj in sorted(vars(module).items()):
        if not inspect.isclass(obj) or name.startswith("_"):
            continue
        if name in _EXCLUDED_REASONS:
            EXCLUDED[PREFIX + name] = _EXCLUDED_REASONS[name]
        elif issubclass(obj, base) and obj is not base:
            found.append(obj)
        elif issubclass(obj, torch.nn.Module) or name.endswith("Mixin"):
            EXCLUDED[PREFIX + name] = "a base class or mixin, not a component"
    return found


def _register_all() -> None:
    from pytorch_metric_learning import losses, miners

    from tuneddml.sampling import MINERS

    for cls in _concrete(losses, losses.BaseMetricLossFunction):
        name = PREFIX + cls.__name__
        try:
            params, hints, runtime = pml_parameters(cls)
        except ValueError as err:
            EXCLUDED[name] = str(err)
            continue
        outputs = ("triplets", "pairs") if _takes_indices(cls) else ()
        family = "proxy" if runtime else "pair"  # owns per-class vectors iff it takes their shape
        attrs = {"runtime_args": runtime, "miner_outputs": outputs, "family": family}
        trial_args = ("num_classes", "embedding_size", "miner")
        LOSSES.register(name, runtime=trial_args, ranges=pml_ranges(cls, params))(
            _with_signature(PmlLoss, cls, params, hints, trial_args, attrs)
        )

    for cls in _concrete(miners, miners.BaseMiner):
        name = PREFIX + cls.__name__
        try:
            params, hints, _ = pml_parameters(cls)
            output = _probe_output(cls)
        except Exception as err:  # a miner that cannot run with its defaults on a plain batch
            EXCLUDED[name] = f"cannot run with defaults: {err}"
            continue
        if output is None:
            EXCLUDED[name] = "returns neither triplets nor pairs"
            continue
        MINERS.register(name, ranges=pml_ranges(cls, params))(_with_signature(PmlMiner, cls, params, hints, (), {"output": output}))


def available() -> bool:
    """Whether pytorch-metric-learning is installed (and so the ``pml:`` components exist)."""
    return importlib.util.find_spec("pytorch_metric_learning") is not None


if available():
    _register_all()

__all__ = ["EXCLUDED", "PREFIX", "REQUIRED_DEFAULTS", "PmlLoss", "PmlMiner", "available", "pml_parameters"]
