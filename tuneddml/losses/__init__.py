"""Losses, built by name from :data:`LOSSES`. Importing this package registers them all.

A loss is one file: its class (a :class:`~tuneddml.losses.base.BaseLoss` declaring its family,
terms and balance) registered with its parameter ranges and, optionally, the ranges worth
searching (``search=``, reused by spaces that name the loss as a branch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneddml.errors import ConfigError
from tuneddml.losses.base import BaseLoss, EpochContext, check_loss_class
from tuneddml.registry import Registry, import_components

LOSSES: Registry[BaseLoss] = Registry("loss", contract=check_loss_class)


def loss_family(name: str) -> str:
    """``"pair"``, ``"proxy"`` or ``"wrapper"``: what loss ``name`` declares
    (:attr:`BaseLoss.family`)."""
    return LOSSES.get(name, "loss").factory.family  # type: ignore[attr-defined]


def resolve_miner(loss: str, miner: str) -> str | None:
    """The miner a trial of ``loss`` uses: ``"default"`` is the loss's own default miner
    (``BaseLoss.default_miner``), ``"none"`` none; a named miner must produce what the loss can use
    (``BaseLoss.miner_outputs``)."""
    from tuneddml.sampling import MINERS

    cls: type[BaseLoss] = LOSSES.get(loss, "loss").factory  # type: ignore[assignment]
    outputs = cls.miner_outputs
    name = cls.default_miner if miner == "default" else miner
    if name in (None, "none"):
        return None
    if not outputs:
        raise ConfigError("miner", miner, f"default or none: loss {loss!r} takes no miner")
    suitable = [m for m in MINERS.names() if MINERS.get(m).factory.output in outputs]  # type: ignore[attr-defined]
    if name not in suitable:
        raise ConfigError("miner", name, ["default", "none", *suitable])
    return name


def build_loss(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    num_classes: int,
    embedding_size: int,
    miner: str = "default",
    miner_params: Mapping[str, Any] | None = None,
    num_train: int = 0,
) -> BaseLoss:
    """Build a loss with its miner (see :func:`resolve_miner`). ``num_train``: the training set's
    size, given to losses with per-sample state (runtime argument ``num_train``; 0: built
    without the data, e.g. by the up-front checks, which run no batch)."""
    from tuneddml.sampling import MINERS

    miner_name = resolve_miner(name, miner)
    miner_obj = None
    if miner_name is not None:
        miner_obj = MINERS.build(miner_name, miner_params or {}, field="miner")
    elif miner_params:
        raise ConfigError("miner_params", dict(miner_params), "no parameters when no miner is used")
    return LOSSES.build(
        name,
        params or {},
        field="loss",
        num_classes=num_classes,
        embedding_size=embedding_size,
        miner=miner_obj,
        num_train=num_train,
    )


def balance_label(name: str) -> str:
    """The lambda axis label of loss ``name``: its :class:`~tuneddml.losses.base.Balance` sides
    (``lambda -> pos vs neg``), or a plain ``lambda`` where the loss declares none at class level
    (CCP's balance is its base loss's)."""
    try:
        balance = LOSSES.get(name).factory.balance  # type: ignore[attr-defined]
    except (ConfigError, AttributeError):
        balance = None
    if balance is None:
        return "lambda"
    return f"lambda: weight of {balance.first.rstrip('.')} (1 - lambda: {balance.second.rstrip('.')})"


import_components(__name__)  # each module registers its components

__all__ = ["LOSSES", "BaseLoss", "EpochContext", "balance_label", "build_loss", "loss_family", "resolve_miner"]
