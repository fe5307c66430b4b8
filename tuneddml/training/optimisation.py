"""A trial's optimiser, learning-rate schedule, gradient scaler and memory format.

The optimiser has up to three parameter groups: the model (or, with ``backbone.lr``, the backbone
and the rest of the model, i.e. the head, as two), and the loss's own parameters (``proxy_lr``).
Parameters that do not require a gradient (frozen BatchNorm layers) are left out.

The schedule multiplies every group's learning rate by one factor, :func:`lr_factor` of the
number of optimiser steps taken, through :class:`torch.optim.lr_scheduler.LambdaLR`, stepped after
each optimiser step. With ``lr_schedule=constant`` and no warm-up there is no scheduler at all:
the trial runs exactly as before schedules existed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from tuneddml.config import TrialConfig


def param_groups(
    config: TrialConfig, model: nn.Module, loss_params: Iterable[nn.Parameter], backbone_lr: float | None
) -> list[dict[str, Any]]:
    """The optimiser's groups: model (or backbone at ``backbone_lr`` and head at ``lr``), then the
    loss's parameters at ``proxy_lr``; only parameters that require a gradient, no empty group."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr is None:
        groups = [{"params": trained, "lr": config.lr}]
    else:
        backbone = {id(p) for p in model.backbone.parameters()}  # type: ignore[union-attr]
        groups = [
            {"params": [p for p in trained if id(p) in backbone], "lr": backbone_lr},
            {"params": [p for p in trained if id(p) not in backbone], "lr": config.lr},
        ]
    groups.append({"params": [p for p in loss_params if p.requires_grad], "lr": config.proxy_lr})
    return [g for g in groups if g["params"]]


def make_optimizer(config: TrialConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """adam, adamw, sgd (momentum 0.9) or rmsprop (momentum 0.9, torch's alpha 0.99 and eps)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """A (fractional) number of epochs in optimiser steps: 0 for 0, else at least 1."""
    return max(1, round(epochs * steps_per_epoch)) if epochs > 0 else 0


def lr_factor(step: int, config: TrialConfig, steps_per_epoch: int) -> float:
    """The factor of every learning rate at optimiser step ``step`` (0 is the first).

    Warm-up (``warmup_epochs``, W steps): ``(step + 1) / W`` for the first W steps, times:
    constant, 1; cosine, from 1 at the end of the warm-up down to ``lr_min_factor`` at the end of
    the trial (``epochs * steps_per_epoch`` steps); step, ``lr_step_gamma`` to the power of the
    number of whole ``lr_step_epochs`` since the start of the trial."""
    warmup = epochs_to_steps(config.warmup_epochs, steps_per_epoch)
    factor = (step + 1) / warmup if step < warmup else 1.0
    if config.lr_schedule == "cosine":
        total = config.epochs * steps_per_epoch
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        low = config.lr_min_factor
        factor *= low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.lr_schedule == "step":
        factor *= config.lr_step_gamma ** (step // epochs_to_steps(config.lr_step_epochs, steps_per_epoch))
    return factor


def make_scheduler(
    config: TrialConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The per-step schedule; None for a constant learning rate without warm-up."""
    if config.lr_schedule == "constant" and config.warmup_epochs == 0:
        return None

    def factor(step: int) -> float:  # a plain function: LambdaLR's state holds only the step
        return lr_factor(step, config, steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_scaler(config: TrialConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 on CUDA needs a gradient scaler; bf16, float32 and the CPU none."""
    if config.amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def autocast_dtype(config: TrialConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass: only on CUDA (amp has no effect on the CPU)."""
    if device.type != "cuda" or config.amp == "none":
        return None
    return torch.bfloat16 if config.amp == "bf16" else torch.float16


def use_channels_last(
    config: TrialConfig, device: torch.device, item_shape: tuple[int, ...], model: nn.Module
) -> bool:
    """``channels_last``, where None (auto) means: image items on CUDA with a conv backbone.
    Never for vector items (a 2-D batch has no channels-last layout)."""
    if len(item_shape) != 3:
        return False
    if config.channels_last is not None:
        return config.channels_last
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-D weights in channels-last order, and every 4-D input converted on entry
    (a forward pre-hook: training and embedding batches alike)."""

    def convert(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            return (x.contiguous(memory_format=torch.channels_last), *args[1:])
        return args

    model = model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(convert)
    return model
