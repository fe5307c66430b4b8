"""Ensemble of losses on one backbone (Zabihzadeh et al., "Ensemble of Loss Functions to Improve
Generalizability of Deep Metric Learning methods", 2022), and the member machinery that the other
wrappers (``hybrid``, ``lsd``) share: building member losses from a spec string, weighting them
with fixed or learnable weights."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss

#: the registry names of losses made of other losses; they cannot be members of each other
WRAPPERS = frozenset({"ensemble", "hybrid", "lsd"})


def parse_member(spec: str, field: str) -> tuple[str, dict[str, str]]:
    """``"name"`` or ``"name:param=value:param=value"`` -> ``(name, {param: value})``.

    Values stay strings; the registry converts and checks them against the member's signature.
    A name may itself contain ``:`` (``pml:CircleLoss:margin=0.4``): the name runs up to the first
    part that holds an ``=``.
    """
    parts = [part.strip() for part in spec.strip().split(":")]
    first_param = next((i for i, part in enumerate(parts) if "=" in part), len(parts))
    name, assignments = ":".join(parts[:first_param]), parts[first_param:]
    params: dict[str, str] = {}
    for item in assignments:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ConfigError(field, spec, "name or name:param=value[:param=value...]")
        if key.strip() in params:
            raise ConfigError(field, spec, f"each parameter once (repeated {key.strip()!r})")
        params[key.strip()] = value.strip()
    if not name:
        raise ConfigError(field, spec, "a loss name: " + ", ".join(member_choices()))
    return name, params


def member_choices() -> list[str]:
    """Registered losses that may be members of a wrapper."""
    return [n for n in LOSSES.names() if n not in WRAPPERS]


def is_proxy_loss(name: str) -> bool:
    """Whether a registered loss is proxy-based: it declares ``family = "proxy"``, or (without a
    ``family``) it needs ``embedding_size`` at construction, i.e. it owns per-class vectors in the
    embedding space (proxies, centres, class weights)."""
    entry = LOSSES.get(name)
    family = getattr(entry.factory, "family", None)
    if family is not None:
        return family == "proxy"
    return "embedding_size" in entry.runtime


def build_member(spec: str, field: str, *, num_classes: int, embedding_size: int) -> BaseLoss:
    """Build one member loss from ``spec`` (see :func:`parse_member`).

    Parameters not named in ``spec`` keep the member's defaults; a member that uses a miner gets its
    own default miner (``BaseLoss.default_miner``) with default parameters.
    """
    from tuneddml.sampling import MINERS

    name, params = parse_member(spec, field)
    if name in WRAPPERS or name not in LOSSES:
        raise ConfigError(field, spec, member_choices())
    cls = LOSSES.get(name).factory
    miner_name = getattr(cls, "default_miner", None)
    miner = MINERS.build(miner_name, {}, field=f"{field}:{name}.miner") if miner_name else None
    return LOSSES.build(
        name,
        params,
        field=f"{field}:{name}",
        num_classes=num_classes,
        embedding_size=embedding_size,
        miner=miner,
    )


class WeightedMembers(nn.Module):
    """Member losses whose terms are reported with a prefix and weighted per member.

    Member ``k`` (prefix ``P_k``) contributes its terms as ``P_k.<term>`` with weight
    ``omega_k * w_kt``, where ``w_kt`` is the member's own term weight. ``omega_k`` is:

    - ``"fixed"``: the given factor (searched from outside);
    - ``"learnable"``: ``exp(-eta_k)`` with a learnable log-variance ``eta_k`` (starting at 0, so
      ``omega_k = 1``), plus the term ``weights_reg = sum_k eta_k`` with weight 1: the homoscedastic
      uncertainty weighting of Kendall, Gal & Cipolla (CVPR 2018),
      ``sum_k exp(-eta_k) L_k + eta_k``, whose minimum over ``eta_k`` is at ``eta_k = log L_k``, so
      the weights cannot collapse to zero as plain learnable weights would.

    Embeddings reach each member L2-normalised when it expects that (``expects_normalized``), raw
    otherwise; the wrapper itself asks the trainer for normalised embeddings only if every member does.
    """

    def __init__(self, members: dict[str, BaseLoss], factors: list[float], weighting: str) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.weighting = weighting
        self.factors = list(factors)
        self.log_vars = nn.Parameter(torch.zeros(len(members))) if weighting == "learnable" else None
        names = [f"{p}.{t}" for p, m in self.members.items() for t in m.term_names]
        if self.log_vars is not None:
            names.append("weights_reg")
        self.term_names = tuple(names)
        self.expects_normalized = all(m.expects_normalized for m in self.members.values())

    def omegas(self) -> list[Any]:
        if self.log_vars is None:
            return self.factors
        return list(torch.exp(-self.log_vars))

    def weights(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (prefix, member), omega in zip(self.members.items(), self.omegas()):
            for term, w in member.weights().items():
                out[f"{prefix}.{term}"] = omega * w
        if self.log_vars is not None:
            out["weights_reg"] = 1.0
        return out

    def terms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        unit = embeddings if self.expects_normalized else F.normalize(embeddings, dim=1)
        out: dict[str, torch.Tensor] = {}
        for prefix, member in self.members.items():
            result = member(unit if member.expects_normalized else embeddings, labels)
            out.update({f"{prefix}.{t}": result[t] for t in member.term_names})
        if self.log_vars is not None:
            out["weights_reg"] = self.log_vars.sum().to(embeddings.dtype)
        return out

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        for member in self.members.values():
            member.on_epoch_start(epoch, context)


def parse_weights(text: str, count: int, field: str) -> list[float]:
    """``""`` -> ``count`` ones; ``"1,0.5"`` -> ``[1.0, 0.5]`` (finite, non-negative, ``count`` of them)."""
    if not text.strip():
        return [1.0] * count
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(field, text, f"{count} comma-separated non-negative numbers") from None
    if len(values) != count or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(field, text, f"{count} comma-separated non-negative numbers")
    return values


class MemberLoss(BaseLoss):
    """A loss made of member losses held by a :class:`WeightedMembers`: its terms, weights and
    epoch hook are the members'. Subclasses build the members and call :meth:`set_members`."""

    parts: WeightedMembers

    def set_members(self, parts: WeightedMembers) -> None:
        self.parts = parts
        self.term_names = parts.term_names  # type: ignore[misc]
        self.expects_normalized = parts.expects_normalized  # type: ignore[misc]

    def weights(self) -> dict[str, Any]:
        return self.parts.weights()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.combine(self.parts.terms(embeddings, labels))

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        self.parts.on_epoch_start(epoch, context)


@LOSSES.register("ensemble", runtime=("num_classes", "embedding_size"))
class EnsembleLoss(MemberLoss):
    """Several registered losses on one backbone, with fixed (searched) or learnable weights.

    ``total = sum_k omega_k * L_k`` where ``L_k`` is member ``k``'s own weighted total. Each
    member's terms are reported with its name as prefix (``contrastive.pos``, ``proxy_anchor.neg``,
    ...), each with weight ``omega_k * w_kt``; see :class:`WeightedMembers` for ``omega_k``.

    Zabihzadeh et al. combine diverse losses on a shared feature extractor so that the features must
    satisfy all of them, and learn each loss's weight end to end; how the weights are learnt here
    (uncertainty weighting, ``weighting="learnable"``) is this implementation's choice.

    Parameters:

    - ``losses``: comma-separated member specs, each ``name`` or ``name:param=value:param=value``
      (e.g. ``"contrastive:lambda=0.3,proxy_anchor"``); parameters not given keep the member's
      defaults, members that use a miner get their own default miner. Each name at most once; no
      wrapper (``ensemble``, ``hybrid``, ``lsd``) as member. Default
      ``"contrastive,multi_similarity,proxy_anchor"`` (two pair losses and a proxy loss).
    - ``weighting``: ``"fixed"`` (default) or ``"learnable"``.
    - ``weights``: fixed weights ``omega_k``, comma-separated non-negative numbers, one per member
      (default ``""``: all 1); ignored when learnable.
    """

    wraps_losses: ClassVar[bool] = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        losses: str = "contrastive,multi_similarity,proxy_anchor",
        weighting: Literal["fixed", "learnable"] = "fixed",
        weights: str = "",
    ) -> None:
        super().__init__()
        specs = [s for s in losses.split(",") if s.strip()]
        if not specs:
            raise ConfigError(
                "loss.losses", losses, "comma-separated loss names: " + ", ".join(member_choices())
            )
        members: dict[str, BaseLoss] = {}
        for spec in specs:
            name = parse_member(spec, "loss.losses")[0]
            if name in members:
                raise ConfigError("loss.losses", losses, f"each loss once ({name!r} repeated)")
            members[name] = build_member(
                spec, "loss.losses", num_classes=num_classes, embedding_size=embedding_size
            )
        factors = parse_weights(weights, len(members), "loss.weights")
        self.set_members(WeightedMembers(members, factors, weighting))
