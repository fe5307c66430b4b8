"""Ensemble of losses on one backbone (Zabihzadeh et al., "Ensemble of Loss Functions to Improve
Generalizability of Deep Metric Learning methods", 2022)."""

from __future__ import annotations

from typing import Literal

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss
from tuneddml.losses.members import (
    MemberLoss,
    WeightedMembers,
    build_member,
    member_choices,
    parse_member,
    parse_weights,
)


@LOSSES.register(
    "ensemble",
    runtime=("num_classes", "embedding_size", "num_train"),
    search={
        "weighting": {"choice": ["fixed", "learnable"]},
        "losses": {"choice": ["contrastive,proxy_anchor", "supcon,softtriple", "multi_similarity,normsoftmax", "contrastive,multi_similarity,proxy_anchor"]},
    },
)
class EnsembleLoss(MemberLoss):
    """Several registered losses on one backbone, with fixed (searched) or learnable weights.

    ``total = sum_k omega_k * L_k`` where ``L_k`` is member ``k``'s own weighted total. Each
    member's terms are reported with its name as prefix (``contrastive.pos``, ``proxy_anchor.neg``,
    ...), each with weight ``omega_k * w_kt``; see :class:`WeightedMembers` for ``omega_k``.

    Zabihzadeh et al. combine diverse losses on a shared feature extractor so that the features must
    satisfy all of them, and learn each loss's weight end to end; how the weights are learnt here
    is this implementation's choice: with ``weighting="learnable"``, Kendall et al.'s uncertainty
    weighting with the weights on the simplex ``sum_k omega_k = K``,
    ``total = sum_k omega_k L_k + weights_reg`` with ``omega_k = K softmax(theta)_k`` and
    ``weights_reg = -sum_k log omega_k`` (see :class:`WeightedMembers`). Each weight stays in
    ``(0, K)`` and ``total >= K min_k L_k`` whatever the members' signs (SupCon and cross-entropy
    members with ``lambda > 0.5`` are negative); at the optimum ``omega_k = 1 / (L_k + mu)``, so
    the member with the larger loss gets the smaller weight, as in Kendall et al.

    Parameters:

    - ``losses``: comma-separated member specs, each ``name`` or ``name:param=value:param=value``
      (e.g. ``"contrastive:lambda=0.3,proxy_anchor"``); parameters not given keep the member's
      defaults, members that use a miner get their own default miner. Each name at most once; no
      wrapper (``ensemble``, ``hybrid``, ``lsd``) as member. Default
      ``"contrastive,multi_similarity,proxy_anchor"`` (two pair losses and a proxy loss).
    - ``weighting``: ``"fixed"`` (default) or ``"learnable"`` (adds the term ``weights_reg``; the
      logits ``theta`` are the parameter ``parts.weight_logits``, trained with ``proxy_lr``).
    - ``weights``: fixed weights ``omega_k``, comma-separated non-negative numbers, one per member
      (default ``""``: all 1); ignored when learnable.

    Follows: Zabihzadeh et al. 2022, several losses on one shared backbone with weights learnt end to
    end. Differs: the learnt weighting is Kendall, Gal & Cipolla's uncertainty weighting on the simplex
    (this implementation's choice, not the paper's own weight update).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        num_train: int = 0,
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
                spec, "loss.losses", num_classes=num_classes, embedding_size=embedding_size, num_train=num_train
            )
        factors = parse_weights(weights, len(members), "loss.weights")
        self.set_members(WeightedMembers(members, factors, weighting))
