"""List-wise self-distillation (Zeng, Yang, Wang & Satoh, "Improving Generalization of Metric
Learning via Listwise Self-distillation", 2022, arXiv 2206.08880): a regulariser added to any
loss, whose soft targets are the model's own earlier similarity lists."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tuneddml.losses import LOSSES
from tuneddml.losses.base import BaseLoss, Family
from tuneddml.losses.members import build_member, call_member
from tuneddml.similarity import similarity, zero_like_graph


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_i KL(q_i || p_i)`` between each anchor's softmax list over the rest of the batch.

    ``student``/``teacher`` are ``(n, d)`` L2-normalised embeddings of the same samples;
    ``p_ij = softmax_{j != i}(s_ij / T)`` from the student, ``q_ij`` the same from the teacher
    (no gradient).
    """
    n = len(student)
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    logits_s = (similarity(student) / temperature).masked_fill(~off, float("-inf"))
    logits_t = (similarity(teacher) / temperature).masked_fill(~off, float("-inf"))
    log_p = F.log_softmax(logits_s, dim=1)
    log_q = F.log_softmax(logits_t, dim=1).detach()
    kl = (log_q.exp() * (log_q - log_p)).masked_fill(~off, 0.0).sum(dim=1)
    return kl.mean()


@LOSSES.register(
    "lsd",
    ranges={"weight": "[0, inf)", "temperature": "(0, inf)", "momentum": "[0, 1)"},
    runtime=("num_classes", "embedding_size", "num_train"),
    search={
        "base": {"choice": ["contrastive", "supcon", "proxy_anchor", "multi_similarity"]},
        "temperature": {"loguniform": [0.05, 1.0], "start": 0.1},
        "weight": {"uniform": [0.0, 2.0], "start": 1.0},
        "teacher": {"choice": ["epoch", "bank", "ema"]},
        "momentum": {"choice": [0.99, 0.9, 0.999], "when": {"teacher": "ema"}},  # a 90-step trial: the default 0.999 keeps the mean teacher at the initial model
    },
)
class ListwiseSelfDistillation(BaseLoss):
    """Any loss ``base`` plus list-wise self-distillation.

    For each anchor ``i`` of the batch, the list of its similarities to the other samples becomes a
    distribution ``p_i = softmax_{j != i}(s_ij / T)``. A teacher (the same network at an earlier
    point of training) gives the list ``q_i`` for the same samples, and

    ``lsd = mean_i KL(q_i || p_i)``

    pulls the student's lists towards the teacher's: instead of the hard "all positives equally
    close, all negatives equally far" target of the base loss, each pair gets a soft target from
    the model's own knowledge, which keeps the relations inside the positives (negatives) and
    softens hard or mislabelled samples.

    ``total = base total + weight * lsd``; terms: the base's (unprefixed) and ``lsd``.

    **The teacher** (``teacher``):

    - ``"epoch"`` (default; the paper's): a frozen copy of the model taken at the start of each
      epoch, i.e. the previous epoch's model, run (eval mode, no gradient) on the batch's input.
      In epoch 1 there is no earlier model and ``lsd`` is 0.
    - ``"bank"``: per-sample soft targets without a second forward pass. The loss keeps, for every
      training sample ``x`` (by its training-set index), the normalised embedding ``t_x`` the
      model gave it the last time it was in a batch (buffers ``bank`` ``(num_train, d)`` and
      ``stored`` ``(num_train,)``). In a batch, the rows whose sample has a stored embedding are
      distilled: ``q_ij = softmax_{j != i}(<t_i, t_j> / T)`` over those rows, ``p_ij`` the
      student's over the same rows; afterwards (training mode only) ``t_x`` is overwritten with
      the batch's embedding of ``x``. With a sampler that shows each sample once per epoch,
      ``t_x`` is the previous epoch's model's embedding of ``x``, but taken at the step it was
      seen in that epoch and on that epoch's augmentation of the input (``"epoch"`` re-embeds
      today's input with the model as it was at the epoch's end). Rows without an index (``-1``:
      appended by an embedding augmenter) and samples not seen yet are left out; ``lsd`` is 0
      when fewer than two rows are left (all of epoch 1), or when the trainer gives no indices.
      The bank is part of the loss's ``state_dict``, so a resumed trial continues with the same
      targets. Memory: ``4 num_train d`` bytes (60k samples x 512-d: 123 MB).
    - ``"ema"``: a mean-teacher copy, ``theta_T <- m theta_T + (1 - m) theta``, updated before each
      step's distillation, starting from the model at the start of epoch 1.

    For ``"epoch"`` and ``"ema"`` the teacher embeds the same inputs as the student: the loss sees
    only embeddings, so it records the input of the model's last training-mode forward call (a
    forward pre-hook on ``context.model``, set at epoch start) and runs the teacher on it.
    Embedding augmenters that append synthetic rows are supported (the first rows, one per input,
    are distilled); ``lsd`` is 0 until an epoch hook has given it the model. That teacher is not
    part of the loss's parameters nor of its checkpoint: after a restore, the ``"epoch"`` teacher
    is taken again at the next epoch start (the same model), an ``"ema"`` teacher restarts from it.

    Follows: Zeng et al. 2022, official code
    ZelongZeng/Improving-Generalization-of-Metric-Learning-via-Listwise-Self-distillation:main.py
    (the teacher is the model saved at the end of the previous epoch, run without gradient on the
    batch's input) and criteria/*_lsd.py:Criterion.forward (each anchor's KL between the softmax
    at temperature ``T`` of its teacher and student similarity lists over the batch, averaged
    over the anchors). Differs: the official teacher is left in training mode (batch-norm
    statistics of the batch, frozen in its ResNet-50 setting), here eval mode; the official list
    keeps the anchor itself, and scales the negatives' similarities by ``kd_beta`` unless
    ``f_distillation_standard``, here the anchor is left out and nothing is scaled; the official
    weight grows as ``(epoch / n_epochs) kd_alpha kd_tau^2`` (``kd_alpha`` 200, ``kd_tau`` 1),
    here it is the constant ``weight``.

    Parameters: ``base``, a loss spec (``name`` or ``name:param=value:...``, default
    ``supcon``; the base's other parameters keep their defaults, its default miner is used);
    ``weight`` >= 0 (1.0); ``temperature`` ``T`` > 0 (0.1); ``teacher`` (``"epoch"``);
    ``momentum`` ``m`` in [0, 1) (0.999, used by ``"ema"`` only).

    Why ``supcon`` as the default base: it is the trial's default loss (the best family on glyphs
    in the contrastive_balance search, ``bench/RESULTS.md``); the base was ``contrastive``, the
    trial default when LSD was written. The contrastive margin loss with its default margins
    0.8 / 0.3 moves slowly out of a fresh network's narrow cone: on glyphs-tiny (small CNN,
    32-d, batch 32, seed 0) the pair cosines of a first batch are 0.90-1.00 (mean 0.975), so the
    positive term is about 0 from the start, and the negative term falls only from 0.63 to 0.49
    (epoch means over 4 x 15 steps); with LSD on it, distilling towards the previous epoch's
    lists holds it there (0.63, 0.65, 0.68, 0.66). On glyphs-tiny, LSD on ``supcon`` learns on
    every seed tried and more than LSD on ``contrastive`` (the per-seed Recall@1 gains are in
    ``bench/RESULTS.md``, "Short-run checks of single losses").
    """

    family: ClassVar[Family] = "wrapper"
    uses_indices: ClassVar[bool] = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        num_train: int = 0,
        base: str = "supcon",
        weight: float = 1.0,
        temperature: float = 0.1,
        teacher: Literal["epoch", "bank", "ema"] = "epoch",
        momentum: float = 0.999,
    ) -> None:
        super().__init__()
        self.base = build_member(
            base, "loss.base", num_classes=num_classes, embedding_size=embedding_size, num_train=num_train
        )
        self.term_names = (*self.base.term_names, "lsd")  # type: ignore[misc]
        self.expects_normalized = self.base.expects_normalized  # type: ignore[misc]
        self.weight = weight
        self.temperature = temperature
        self.teacher_kind = teacher
        self.momentum = momentum
        rows = num_train if teacher == "bank" else 0
        #: ``"bank"``: each training sample's embedding at its last visit, and whether it has one
        self.register_buffer("bank", torch.zeros(rows, embedding_size))
        self.register_buffer("stored", torch.zeros(rows, dtype=torch.bool))
        # kept out of the module tree: neither trained, nor saved, nor moved by .to()
        self.__dict__["_teacher"] = None
        self.__dict__["_student"] = None
        self.__dict__["_hook"] = None
        self.__dict__["_last_input"] = None

    def weights(self) -> dict[str, Any]:
        return {**self.base.weights(), "lsd": self.weight}

    def on_epoch_start(self, epoch: int, context: Any) -> None:
        self.base.on_epoch_start(epoch, context)
        if self.teacher_kind == "bank":
            return
        if self.teacher_kind == "epoch":
            take = epoch > 1
        else:
            take = self._teacher is None
        self.attach(context.model, take_teacher=take)

    def attach(self, model: nn.Module, take_teacher: bool = True) -> None:
        """Watch ``model``'s training-mode inputs; with ``take_teacher``, copy it as the teacher."""
        if self._hook is not None:
            # removed before copying: the teacher must not carry the hook (nor, through it, this loss)
            self._hook.remove()
        if take_teacher:
            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.__dict__["_teacher"] = teacher
        self.__dict__["_student"] = model
        self.__dict__["_hook"] = model.register_forward_pre_hook(self._record_input)

    def _record_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and args and isinstance(args[0], torch.Tensor):
            self.__dict__["_last_input"] = args[0]

    @torch.no_grad()
    def _update_ema(self) -> None:
        student, teacher = self._student.state_dict(), self._teacher.state_dict()
        for key, value in teacher.items():
            if value.dtype.is_floating_point:
                value.mul_(self.momentum).add_(student[key].detach(), alpha=1.0 - self.momentum)
            else:
                value.copy_(student[key])

    @torch.no_grad()
    def _teacher_embeddings(self) -> torch.Tensor | None:
        x = self._last_input
        if self._teacher is None or x is None:
            return None
        if self.teacher_kind == "ema":
            self._update_ema()
        return self._teacher(x)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        out = dict(call_member(self.base, embeddings, labels, indices))
        out.pop("total", None)
        if self.teacher_kind == "bank":
            out["lsd"] = self._bank_term(embeddings, indices)
            return self.combine(out)
        teacher = self._teacher_embeddings() if self.training else None
        n = 0 if teacher is None else len(teacher)
        if 1 < n <= len(embeddings):
            student = F.normalize(embeddings[:n], dim=1)
            out["lsd"] = listwise_kl(student, F.normalize(teacher.to(student), dim=1), self.temperature)
        else:
            out["lsd"] = zero_like_graph(embeddings)
        self.__dict__["_last_input"] = None
        return self.combine(out)

    def _bank_term(self, embeddings: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """``lsd`` against the stored embeddings of the batch's samples; then (training mode) store
        the batch's embeddings of its real rows."""
        if indices is None or not self.training:
            return zero_like_graph(embeddings)
        indices = indices.to(self.stored.device)
        real = indices >= 0
        if bool((indices >= len(self.stored)).any()):
            raise ValueError(
                f"loss lsd: training-set index {int(indices.max())} for a bank of {len(self.stored)} "
                "samples (build it with num_train = the training set's size)"
            )
        have = real.clone()
        have[real] = self.stored[indices[real]]
        rows = have.nonzero().squeeze(1).to(embeddings.device)
        if len(rows) > 1:
            student = F.normalize(embeddings[rows], dim=1)
            teacher = self.bank[indices[have]].to(student)
            term = listwise_kl(student, teacher, self.temperature)
        else:
            term = zero_like_graph(embeddings)
        with torch.no_grad():
            fresh = F.normalize(embeddings[real.to(embeddings.device)].detach(), dim=1)
            self.bank[indices[real]] = fresh.to(self.bank)
            self.stored[indices[real]] = True
        return term
