"""Hybrid pair + proxy loss (the 2022 hybrid-loss DML paper with global and local features: a
pair-based loss for the rich data-to-data relations plus a proxy-based loss for fast convergence)."""

from __future__ import annotations

from typing import ClassVar, Literal

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance
from tuneddml.losses.members import MemberLoss, WeightedMembers, build_member, member_choices, parse_member


@LOSSES.register(
    "hybrid",
    ranges={"lam": "[0, 1]"},
    runtime=("num_classes", "embedding_size", "num_train"),
    search={
        "lambda": {"uniform": [0.0, 1.0], "start": 0.5, "when": {"weighting": "fixed"}},
        "weighting": {"choice": ["fixed", "learnable"]},
        "pair": {"choice": ["multi_similarity", "contrastive", "triplet", "supcon", "npair", "margin"]},
        "proxy": {"choice": ["proxy_anchor", "proxy_nca", "softtriple", "multi_proxy_anchor", "normsoftmax"]},
    },
)
class HybridLoss(MemberLoss):
    """Weighted sum of a pair-based and a proxy-based loss on the same embeddings.

    ``total = 2 lambda * L_pair + 2 (1 - lambda) * L_proxy`` (``weighting="fixed"``; ``lambda = 0.5``
    is the plain sum), where each ``L`` is the member's own weighted total. With
    ``weighting="learnable"`` the two weights are learnt instead and ``lambda`` is not used:
    ``total = omega_pair L_pair + omega_proxy L_proxy + weights_reg`` with
    ``(omega_pair, omega_proxy) = 2 softmax(theta)`` (so a learnt ``omega_pair = 2 lambda``, the
    fixed form's scale) and ``weights_reg = -log omega_pair - log omega_proxy >= 0``: Kendall, Gal
    & Cipolla's (CVPR 2018) uncertainty weighting on the simplex, see
    :class:`tuneddml.losses.members.WeightedMembers`. Both weights stay in ``(0, 2)`` and the
    total stays ``>= 2 min(L_pair, L_proxy)`` even when a member is negative (SupCon, normsoftmax
    or softtriple with ``lambda > 0.5``); at the optimum ``omega = 1 / (L + mu)``, so the member
    with the larger loss gets the smaller weight.

    Terms: the pair member's terms prefixed ``pair.`` and the proxy member's prefixed ``proxy.``
    (e.g. ``pair.pos``, ``pair.neg``, ``proxy.pos``, ``proxy.neg``), plus ``weights_reg`` when
    learnable. The prefixes name the role, not the loss, so the terms keep their names when a
    search varies the members.

    Parameters:

    - ``pair``: a pair-based loss spec, ``name`` or ``name:param=value:...`` (default
      ``multi_similarity``): any registered loss of family ``pair``
      (:attr:`~tuneddml.losses.base.BaseLoss.family`), ``pml:`` losses included;
    - ``proxy``: a proxy-based loss spec (default ``proxy_anchor``), any loss of family ``proxy``;
    - ``lambda`` in [0, 1] (0.5): the share of the pair loss;
    - ``weighting``: ``"fixed"`` (default) or ``"learnable"``.

    Members use their defaults for parameters the spec does not set, and their own default miner.
    The paper's global/local feature branches and second-order attention belong to the backbone,
    not to the loss, and are not part of this component.

    Follows: the 2022 hybrid-loss paper's loss, a pair-based plus a proxy-based loss on the same
    embeddings. Differs: its global/local feature branches and second-order attention (backbone parts)
    are not implemented; the learnable weighting is Kendall et al.'s on the simplex.
    """

    balance: ClassVar[Balance | None] = Balance(
        "pair.", "proxy.", "the pair-based member's terms", "the proxy-based member's terms"
    )

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        num_train: int = 0,
        pair: str = "multi_similarity",
        proxy: str = "proxy_anchor",
        lam: float = 0.5,
        weighting: Literal["fixed", "learnable"] = "fixed",
    ) -> None:
        super().__init__()
        pair_name = parse_member(pair, "loss.pair")[0]
        proxy_name = parse_member(proxy, "loss.proxy")[0]
        if pair_name not in member_choices("pair"):
            raise ConfigError("loss.pair", pair, member_choices("pair"))
        if proxy_name not in member_choices("proxy"):
            raise ConfigError("loss.proxy", proxy, member_choices("proxy"))
        members = {
            "pair": build_member(
                pair, "loss.pair", num_classes=num_classes, embedding_size=embedding_size, num_train=num_train
            ),
            "proxy": build_member(
                proxy, "loss.proxy", num_classes=num_classes, embedding_size=embedding_size, num_train=num_train
            ),
        }
        self.lam = lam
        self.set_members(WeightedMembers(members, [2.0 * lam, 2.0 * (1.0 - lam)], weighting))
