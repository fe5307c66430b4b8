"""What the wrapper losses (``ensemble``, ``hybrid``, ``lsd``) share: building member losses from a
spec string, and weighting the members with fixed or learnable weights.

Which losses may be members comes from one place, each loss's own ``family``
(:attr:`~tuneddml.losses.base.BaseLoss.family`): any loss but a wrapper, and where a wrapper wants
a pair-based or a proxy-based member (``hybrid``), a loss of that family.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES, loss_family
from tuneddml.losses.base import BaseLoss, EpochContext, Family


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


def member_choices(family: Family | None = None) -> list[str]:
    """Registered losses that may be members of a wrapper (every loss but a wrapper), or only
    those of ``family``."""
    return [
        n for n in LOSSES.names() if loss_family(n) != "wrapper" and family in (None, loss_family(n))
    ]


def is_proxy_loss(name: str) -> bool:
    """Whether a registered loss declares ``family = "proxy"``."""
    return loss_family(name) == "proxy"


def build_member(
    spec: str, field: str, *, num_classes: int, embedding_size: int, num_train: int = 0
) -> BaseLoss:
    """Build one member loss from ``spec`` (see :func:`parse_member`).

    Parameters not named in ``spec`` keep the member's defaults; a member that uses a miner gets its
    own default miner (``BaseLoss.default_miner``) with default parameters; a member with
    per-sample state gets ``num_train``, the training set's size.
    """
    from tuneddml.sampling import MINERS

    name, params = parse_member(spec, field)
    if name not in LOSSES or loss_family(name) == "wrapper":
        raise ConfigError(field, spec, member_choices())
    miner_name = LOSSES.get(name).factory.default_miner  # type: ignore[attr-defined]
    miner = MINERS.build(miner_name, {}, field=f"{field}:{name}.miner") if miner_name else None
    return LOSSES.build(
        name,
        params,
        field=f"{field}:{name}",
        num_classes=num_classes,
        embedding_size=embedding_size,
        miner=miner,
        num_train=num_train,
    )


def call_member(
    member: BaseLoss, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """``member(embeddings, labels)``, with ``indices=`` where the member uses them
    (:attr:`~tuneddml.losses.base.BaseLoss.uses_indices`) and the wrapper was given them."""
    if member.uses_indices and indices is not None:
        return member(embeddings, labels, indices=indices)
    return member(embeddings, labels)


class WeightedMembers(nn.Module):
    """Member losses whose terms are reported with a prefix and weighted per member.

    Member ``k`` of ``K`` (prefix ``P_k``, own weighted total ``L_k``) contributes its terms as
    ``P_k.<term>`` with weight ``omega_k * w_kt``, where ``w_kt`` is the member's own term weight.
    ``omega_k`` is:

    - ``"fixed"``: the given factor (searched from outside);
    - ``"learnable"``: uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) with the
      precisions on the simplex ``sum_k omega_k = K``. With learnable logits ``theta`` (starting
      at 0, so ``omega_k = 1``)::

          omega_k = K softmax(theta)_k,    eta_k = -log omega_k   (the log-variance)
          total   = sum_k omega_k L_k + weights_reg,    weights_reg = sum_k eta_k >= 0

      ``weights_reg`` (weight 1) is Kendall et al.'s regulariser ``log sigma_k^2 = eta_k``; it is
      0 at equal weights and grows as they part, and it keeps each ``omega_k`` away from 0.

    Why the constraint. Kendall et al.'s unconstrained ``sum_k exp(-eta_k) L_k + eta_k`` assumes
    ``L_k > 0`` (a negative log-likelihood): its minimum over ``eta_k`` is ``1 + log L_k`` at
    ``omega_k = 1 / L_k``, which tends to -inf as ``L_k -> 0`` and does not exist for
    ``L_k <= 0``, and the weight then grows without bound (``eta_k`` falls by the learning rate
    every Adam step). Many members are not positive: SupCon with ``aggregation="mean"``, Proxy-NCA
    (its log-sum-exp leaves out the own class), the cross-entropy losses with ``lambda > 0.5``
    (normsoftmax, softtriple), and hinge losses that reach 0. On the simplex, for any member
    values:

    - ``0 < omega_k < K`` by construction, so no weight can run away;
    - ``total >= K min_k L_k`` (``sum_k omega_k L_k >= K min_k L_k``, and
      ``weights_reg >= 0`` by Jensen's inequality since the ``omega_k`` average 1), so the
      weighting adds no unbounded direction: the total is bounded below whenever each member is;
    - the minimum over the weights (for given ``L_k``) is where ``L_k - 1 / omega_k`` is the same
      for every ``k``, i.e. ``omega_k = 1 / (L_k + mu)`` with the one ``mu`` that makes the weights
      sum to ``K``: Kendall's inverse-loss weights ``1 / L_k`` with a common shift, the same
      order (the member with the larger loss gets the smaller weight), and exactly Kendall's when
      ``sum_k 1 / L_k = K``. The shift makes the weights invariant to a constant added to every
      member, and bounds them: ``omega_k >= 1 / (1 + Delta)`` with ``Delta = max_k L_k -
      min_k L_k`` (and ``omega_k <= 1 / (1 - Delta)`` when ``Delta < 1``).

    Normalising learnt task weights to sum to the number of tasks is what GradNorm (Chen et al.,
    ICML 2018) and Dynamic Weight Average (``K softmax``; Liu, Johns & Davison, CVPR 2019) do; with
    fixed factors summing to ``K`` (the all-ones default, and ``hybrid``'s ``2 lambda``,
    ``2 (1 - lambda)``) the learnable weights keep the fixed weights' total, so weighting does not
    change the overall step size. The regulariser is Kendall's log barrier rather than an entropy
    term: an entropy term would give ``omega_k ~ exp(-L_k)``, starving a member exponentially in
    its loss gap, the log barrier only as ``1 / (L_k + mu)``.

    Embeddings reach each member L2-normalised when it expects that (``expects_normalized``), raw
    otherwise; the wrapper itself asks the trainer for normalised embeddings only if every member does.
    """

    def __init__(self, members: dict[str, BaseLoss], factors: list[float], weighting: str) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.weighting = weighting
        self.factors = list(factors)
        learnable = weighting == "learnable"
        #: ``theta``: ``omega = K softmax(theta)`` (None unless learnable)
        self.weight_logits = nn.Parameter(torch.zeros(len(members))) if learnable else None
        names = [f"{p}.{t}" for p, m in self.members.items() for t in m.term_names]
        if self.weight_logits is not None:
            names.append("weights_reg")
        self.term_names = tuple(names)
        self.expects_normalized = all(m.expects_normalized for m in self.members.values())
        self.uses_indices = any(m.uses_indices for m in self.members.values())

    def log_vars(self) -> torch.Tensor:
        """``eta_k = -log omega_k = -log(K softmax(theta)_k)``, the learnable weighting's log-variances."""
        assert self.weight_logits is not None
        return -(F.log_softmax(self.weight_logits, dim=0) + math.log(len(self.members)))

    def omegas(self) -> list[Any]:
        if self.weight_logits is None:
            return self.factors
        return list(torch.exp(-self.log_vars()))

    def weights(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (prefix, member), omega in zip(self.members.items(), self.omegas()):
            for term, w in member.weights().items():
                out[f"{prefix}.{term}"] = omega * w
        if self.weight_logits is not None:
            out["weights_reg"] = 1.0
        return out

    def terms(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        unit = embeddings if self.expects_normalized else F.normalize(embeddings, dim=1)
        out: dict[str, torch.Tensor] = {}
        for prefix, member in self.members.items():
            given = unit if member.expects_normalized else embeddings
            result = call_member(member, given, labels, indices)
            out.update({f"{prefix}.{t}": result[t] for t in member.term_names})
        if self.weight_logits is not None:
            out["weights_reg"] = self.log_vars().sum().to(embeddings.dtype)
        return out

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
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
    epoch hook are the members', and it takes the batch's indices when a member uses them (and
    hands them to those members only). Subclasses build the members and call :meth:`set_members`."""

    family: ClassVar[Family] = "wrapper"
    parts: WeightedMembers

    def set_members(self, parts: WeightedMembers) -> None:
        self.parts = parts
        self.term_names = parts.term_names  # type: ignore[misc]
        self.expects_normalized = parts.expects_normalized  # type: ignore[misc]
        self.uses_indices = parts.uses_indices  # type: ignore[misc]

    def weights(self) -> dict[str, Any]:
        return self.parts.weights()

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.combine(self.parts.terms(embeddings, labels, indices))

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        self.parts.on_epoch_start(epoch, context)
