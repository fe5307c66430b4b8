"""Class generation (Lee, Kim, Hong & Kwak, "Learning to Generate Novel Classes for Deep Metric
Learning", BMVC 2021, arXiv 2201.01008): a conditional generator of embeddings, trained beside the
embedding network, whose samples of novel (mixed) classes augment the batch of a proxy loss."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tuneddml.errors import ConfigError
from tuneddml.sampling import EMBEDDING_AUGMENTERS
from tuneddml.sampling.base import EmbeddingAugmenter

if TYPE_CHECKING:  # type only: the loss interface owns the epoch context
    from tuneddml.losses.base import EpochContext


class LabelGenerator(nn.Module):
    """``G(v, z)``: an embedding of the class described by label vector ``v`` (``C`` entries), from
    noise ``z`` (``noise_size`` entries), one hidden layer:

        G(v, z) = normalize( W2 relu(A^T v + W1 z + b1) + b2 )

    ``A`` (``C x hidden``) is the label input layer. A label vector here mixes two classes,
    ``v = lam onehot(a) + (1 - lam) onehot(b)`` (a real class: ``a = b``), so ``A^T v =
    lam A_a + (1 - lam) A_b`` is computed from the two rows without the ``C``-wide vector.
    """

    def __init__(self, num_classes: int, embedding_size: int, noise_size: int, hidden_size: int) -> None:
        super().__init__()
        self.noise_size = noise_size
        # the scale of W1 z under nn.Linear's initialisation (variance 1/3 per hidden unit)
        self.label = nn.Parameter(torch.randn(num_classes, hidden_size) / math.sqrt(3.0))
        self.noise = nn.Linear(noise_size, hidden_size)
        self.out = nn.Linear(hidden_size, embedding_size)

    def forward(
        self, first: torch.Tensor, second: torch.Tensor, lam: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        w = lam.to(self.label.dtype)[:, None]
        h = w * self.label[first] + (1 - w) * self.label[second] + self.noise(z.to(self.label.dtype))
        return F.normalize(self.out(F.relu(h)), dim=1)


def conditional_mmd(
    real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor, bandwidth: float
) -> torch.Tensor:
    """Squared MMD between ``(real_i, y_i)`` and ``(fake_i, y_i)`` under the kernel
    ``[y = y'] k(e, e')``, ``k(e, e') = exp(-|e - e'|^2 / (2 bandwidth^2))`` (V-statistic):

        MMD^2 = 1/n^2 sum_ij [y_i = y_j] (k(r_i, r_j) + k(f_i, f_j) - 2 k(r_i, f_j))

    zero when each class's fake embeddings are distributed as its real ones.
    """

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)
        return torch.exp(-d2 / (2 * bandwidth**2))

    same = (labels[:, None] == labels[None, :]).to(real.dtype)
    return (same * (kernel(real, real) + kernel(fake, fake) - 2 * kernel(real, fake))).sum() / len(
        labels
    ) ** 2


@EMBEDDING_AUGMENTERS.register(
    "class_generation",
    ranges={
        "novel_classes": "[1, 4096]",
        "novel_samples": "[1, 256]",
        "alpha": "(0, inf)",
        "noise_size": "[1, 4096]",
        "hidden_size": "[1, 65536]",
        "class_weight": "[0, inf)",
        "match_weight": "[0, inf)",
        "bandwidth": "(0, inf)",
        "warmup_epochs": "[0, 100000]",
    },
    runtime=("num_classes", "embedding_size"),
)
class ClassGeneration(EmbeddingAugmenter):
    """Class generation: a conditional generator's embeddings of novel classes join the batch.

    A generator ``G(v, z)`` (:class:`LabelGenerator`) maps a label vector ``v`` and noise
    ``z ~ N(0, I)`` to a unit embedding of that class. Each training step, with ``C`` the real
    classes, ``p_c`` the loss's proxies (:mod:`tuneddml.losses.synthetic`; ``p^`` = ``p / |p|``):

    - **Novel classes.** ``M = novel_classes`` pairs ``(a_m, b_m)`` of distinct classes present
      in the batch, ``lam_m ~ Beta(alpha, alpha)``; novel class ``C + m`` has the label vector
      ``v_m = lam_m onehot(a_m) + (1 - lam_m) onehot(b_m)`` and the proxy (each of the ``K``
      proxies ``k`` of a class mixed with the other class's ``k``-th)
      ``p_{C+m} = normalize(lam_m p^_{a_m} + (1 - lam_m) p^_{b_m})``: the same mix of the two
      classes' proxies as of their labels. It gets ``novel_samples`` embeddings
      ``g = G(v_m, z)``, one noise draw each.
    - **Batch.** The loss sees ``(cat[e, g_novel], cat[y, C + m, ...])`` with the novel proxies
      added to its classes for this step (they train ``p_a``, ``p_b``; for Proxy-Anchor they are
      extra anchors, for Proxy-NCA / the normalised softmax extra classes of the softmax), so the
      real embeddings are also pushed from the novel classes' proxies.
    - **Generator objective**, two terms the trainer reports and optimises beside the loss's own:
      ``gen_class = L(cat[f, g_novel], cat[y, C + m], sg(P))``: the trial's proxy loss itself, on
      the generated embeddings of the batch's real classes ``f_i = G(onehot(y_i), z_i)`` (one per
      real row) and of the novel classes, against the proxies (the novel ones included) with no
      gradient (``sg``): each generated embedding must be classified to its label's proxy; and
      ``gen_match = MMD^2((e_i, y_i), (f_i, y_i))`` (:func:`conditional_mmd`, ``e`` with no
      gradient): each real class's generated embeddings must be distributed as its real ones.
      ``total += class_weight gen_class + match_weight gen_match``.

    Gradients: the generator objective reaches only ``G`` (real embeddings and proxies are
    detached in it); with ``detach`` the novel embeddings enter the batch detached, so the loss
    on them trains the proxies and, through the proxies' pushes, the embedder, never ``G``
    (``detach=False``: the loss also trains ``G``). ``G``'s parameters are in the trainer's
    optimiser with the loss's (at ``proxy_lr``) and in the checkpoint.

    Parameters (valid ranges): ``novel_classes`` = 8 ([1, 4096]): novel classes per batch (none
    when the batch has fewer than two classes); ``novel_samples`` = 4 ([1, 256]): generated
    embeddings per novel class; ``alpha`` = 1.0 ((0, inf)): the Beta parameter of ``lam`` (1:
    uniform); ``noise_size`` = 32, ``hidden_size`` = 512: the generator's sizes; ``class_weight``
    = 1.0, ``match_weight`` = 100 ([0, inf)); ``bandwidth`` = 1.0 ((0, inf)): the MMD kernel's
    (with ``match_weight`` = 1 and ``bandwidth`` = 0.5 the MMD's small gradient was swamped by the
    proxy loss's and ``gen_match`` stayed at 0.11 over 4 epochs of glyphs-tiny; with these it fell
    to 0.005);
    ``warmup_epochs`` = 0: epochs in which only the generator trains (no novel rows in the batch);
    ``detach`` = True.

    Needs a loss that takes synthetic classes (``proxy_anchor``, ``proxy_nca``, ``normsoftmax``
    and their subclasses); any other is refused before training with a ConfigError on ``loss``.

    Follows: Lee, Kim, Hong & Kwak 2021 (arXiv 2201.01008), abstract and method outline: a
    label-and-noise conditional generator trained beside the embedder, novel classes synthesised
    from it to augment a proxy loss. Differs: the paper's text and code were not available here;
    these parts are this implementation's reading: novel labels as Beta-mixes of two batch
    classes with proxies mixed the same way, the generator's objective as the trial's proxy loss
    on detached proxies plus a class-conditional kernel MMD to the real embeddings (in place of
    whatever distribution-matching loss the paper uses), a one-hidden-layer MLP generator trained
    at ``proxy_lr``, the novel embeddings detached from the generator in the loss by default.
    """

    makes_classes: ClassVar[bool] = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        novel_classes: int = 8,
        novel_samples: int = 4,
        alpha: float = 1.0,
        noise_size: int = 32,
        hidden_size: int = 512,
        class_weight: float = 1.0,
        match_weight: float = 100.0,
        bandwidth: float = 1.0,
        warmup_epochs: int = 0,
        detach: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.novel_classes = novel_classes
        self.novel_samples = novel_samples
        self.alpha = alpha
        self.class_weight = class_weight
        self.match_weight = match_weight
        self.bandwidth = bandwidth
        self.warmup_epochs = warmup_epochs
        self.detach = detach
        self.generator = LabelGenerator(num_classes, embedding_size, noise_size, hidden_size)
        self.epoch = 1  # set by on_epoch_start
        self.__dict__["_loss"] = None  # the trial's loss: not a submodule (its parameters are its own)

    def attach_loss(self, loss: nn.Module) -> None:
        if not all(hasattr(loss, m) for m in ("class_proxies", "add_classes", "frozen_proxies")):
            raise ConfigError("loss", type(loss).__name__, "a proxy loss that takes synthetic classes")
        self.__dict__["_loss"] = loss

    def on_epoch_start(self, epoch: int, context: EpochContext) -> None:
        self.epoch = epoch

    def novel(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, lam)`` of this step's novel classes, drawn among the classes of ``labels``."""
        present = labels.unique()
        count = self.novel_classes if len(present) >= 2 else 0
        i = torch.randint(len(present), (count,), device=labels.device)
        j = (i + torch.randint(1, max(len(present), 2), (count,), device=labels.device)) % len(present)
        beta = torch.distributions.Beta(torch.tensor(float(self.alpha)), torch.tensor(float(self.alpha)))
        return present[i], present[j], beta.sample((count,)).to(labels.device)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return embeddings, labels
        loss: Any = self.__dict__["_loss"]
        if loss is None:
            raise RuntimeError("class_generation: attach_loss(loss) first (the trainer does)")
        n, dtype, device = len(labels), embeddings.dtype, embeddings.device
        noise = self.generator.noise_size
        a, b, lam = self.novel(labels)
        proxies = F.normalize(loss.class_proxies(), dim=-1)  # (C, K, d)
        w = lam.to(proxies.dtype)[:, None, None]
        novel_proxies = F.normalize(w * proxies[a] + (1 - w) * proxies[b], dim=-1)
        s = self.novel_samples
        a_rows, b_rows, lam_rows = a.repeat_interleave(s), b.repeat_interleave(s), lam.repeat_interleave(s)
        z_novel = torch.randn(len(a_rows), noise, device=device)
        novel = self.generator(a_rows, b_rows, lam_rows, z_novel).to(dtype)
        novel_labels = self.num_classes + torch.arange(len(a), device=device).repeat_interleave(s)
        ones, z_real = torch.ones(n, device=device), torch.randn(n, noise, device=device)
        fake = self.generator(labels, labels, ones, z_real).to(dtype)  # one per real row, its class

        loss.add_classes(novel_proxies.detach())
        with loss.frozen_proxies():
            gen_class = loss(torch.cat([fake, novel]), torch.cat([labels, novel_labels]))["total"]
        terms = {
            "gen_class": gen_class,
            "gen_match": conditional_mmd(embeddings.detach(), fake, labels, self.bandwidth),
        }
        weights = {"gen_class": self.class_weight, "gen_match": self.match_weight}
        if self.epoch <= self.warmup_epochs or len(a) == 0:
            loss.add_classes(None, terms, weights)
            return embeddings, labels
        loss.add_classes(novel_proxies, terms, weights)
        rows = novel.detach() if self.detach else novel
        return torch.cat([embeddings, rows]), torch.cat([labels, novel_labels])
