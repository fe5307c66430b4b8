"""Densely anchored sampling, DAS (Liu, Huang et al., "Densely-Anchored Sampling for Deep Metric
Learning", ECCV 2022): synthetic embeddings around the real ones, as an embedding augmenter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneddml.errors import ConfigError
from tuneddml.sampling import EMBEDDING_AUGMENTERS
from tuneddml.sampling.base import EmbeddingAugmenter


@EMBEDDING_AUGMENTERS.register(
    "das",
    ranges={
        "num_produce": "[1, 64]",
        "scale_channels": "[1, 65536]",
        "scale_low": "(0, inf)",
        "scale_high": "(0, inf)",
        "bank_size": "[1, 100000]",
        "shift_scale": "[0, inf)",
    },
    runtime=("num_classes", "embedding_size"),
)
class DenselyAnchoredSampling(EmbeddingAugmenter):
    """Densely anchored sampling: synthetic embeddings around each real one (DFS + MTS).

    Adds ``num_produce`` synthetic copies of the batch, each real embedding ``e`` (class ``y``)
    serving as an anchor for a new point of the same class, to fill the "missing embeddings" of
    barren regions so that a miner has more (and harder) candidates:

        e' = normalize( DFS(e) + shift_scale * t ),   label y

    - **Discriminative feature scaling (DFS)**: a frequency table ``F[y, j]`` counts how often
      channel ``j`` is among the ``scale_channels`` largest channels of an embedding of class
      ``y`` (updated with every batch). ``DFS(e)`` multiplies the ``scale_channels`` most frequent
      channels of class ``y`` by factors drawn uniformly from ``[scale_low, scale_high]``, other
      channels unchanged: the class's discriminative features, scaled.
    - **Memorised transformation shifting (MTS)**: each class keeps a queue of its last
      ``bank_size`` intra-class transformations ``t = e_i - e_j`` (``y_i = y_j = y``, ``i != j``,
      ``t != 0``) from earlier batches and this one; ``t`` is one of them drawn at random (zero
      while the queue is empty). Shifting by another pair's difference moves the anchor along
      the class's own directions of variation.

    The table and the queues are updated with the batch before the synthesis (as the paper's
    code). Returned: ``(cat[e, e'_1, ..., e'_num_produce], cat[y, y, ..., y])``.

    Parameters (defaults from the paper's code; valid ranges):

    - ``num_produce`` = 3 ([1, 64]): synthetic copies of the batch;
    - ``dfs``, ``mts`` = True, True: switch each part (the paper's ablation);
    - ``scale_channels`` = 4 ([1, embedding_size]): channels DFS scales;
    - ``scale_low``, ``scale_high`` = 0.5, 2.0 ((0, inf), ``low <= high``): DFS factor range;
    - ``bank_size`` = 10 ([1, 1e5]): transformations remembered per class;
    - ``shift_scale`` = 0.01 ([0, inf)): MTS step;
    - ``normalize`` = True: L2-normalise the synthetic embeddings (set False for a loss that
      reads the embedding norm);
    - ``detach`` = True: synthetic embeddings carry no gradient to their anchors (the paper's
      default); the loss still reaches the real embeddings through their pairs with them.

    The table is ``num_classes x embedding_size`` and the queues ``num_classes x bank_size x
    embedding_size`` floats (buffers, so they are checkpointed).

    Follows: Liu et al. 2022 (DAS), discriminative feature scaling and memorised transformation shifting
    as in the paper's code. As published.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        num_produce: int = 3,
        dfs: bool = True,
        mts: bool = True,
        scale_channels: int = 4,
        scale_low: float = 0.5,
        scale_high: float = 2.0,
        bank_size: int = 10,
        shift_scale: float = 0.01,
        normalize: bool = True,
        detach: bool = True,
    ) -> None:
        super().__init__()
        if scale_channels > embedding_size:
            raise ConfigError(
                "embedding_aug.scale_channels", scale_channels, f"at most embedding_size={embedding_size}"
            )
        if scale_low > scale_high:
            raise ConfigError("embedding_aug.scale_low", scale_low, f"at most scale_high={scale_high}")
        self.num_produce = num_produce
        self.dfs = dfs
        self.mts = mts
        self.scale_channels = scale_channels
        self.scale_low = scale_low
        self.scale_high = scale_high
        self.bank_size = bank_size
        self.shift_scale = shift_scale
        self.normalize = normalize
        self.detach = detach
        self.register_buffer("frequency", torch.zeros(num_classes, embedding_size))
        self.register_buffer("bank", torch.zeros(num_classes, bank_size, embedding_size))
        self.register_buffer("bank_count", torch.zeros(num_classes, dtype=torch.long))  # filled slots
        self.register_buffer("bank_next", torch.zeros(num_classes, dtype=torch.long))  # ring pointer

    @torch.no_grad()
    def _remember(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        e = embeddings.detach().to(self.frequency.dtype)
        top = e.topk(self.scale_channels, dim=1).indices
        rows = labels[:, None].expand_as(top)
        self.frequency.index_put_((rows, top), torch.ones_like(top, dtype=e.dtype), accumulate=True)
        for c in labels.unique().tolist():
            members = e[labels == c]
            diffs = (members[:, None, :] - members[None, :, :]).reshape(-1, e.shape[1])
            diffs = diffs[diffs.abs().sum(dim=1) > 0][-self.bank_size :]  # the newest fit
            if len(diffs) == 0:
                continue
            slots = (self.bank_next[c] + torch.arange(len(diffs), device=e.device)) % self.bank_size
            self.bank[c, slots] = diffs
            self.bank_next[c] = (self.bank_next[c] + len(diffs)) % self.bank_size
            self.bank_count[c] = torch.clamp(self.bank_count[c] + len(diffs), max=self.bank_size)

    def _produce(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = embeddings.detach().clone() if self.detach else embeddings.clone()
        n = len(out)
        if self.dfs:
            channels = self.frequency[labels].topk(self.scale_channels, dim=1).indices
            factor = torch.empty(n, self.scale_channels, device=out.device, dtype=out.dtype)
            factor.uniform_(self.scale_low, self.scale_high)
            out = out.scatter(1, channels, out.gather(1, channels) * factor)
        if self.mts:
            count = self.bank_count[labels]
            slot = (torch.rand(n, device=out.device) * count.clamp(min=1)).long()
            shift = self.bank[labels, slot].to(out.dtype) * (count > 0)[:, None]
            out = out + self.shift_scale * shift
        return F.normalize(out, dim=1) if self.normalize else out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._remember(embeddings, labels)
        produced = [self._produce(embeddings, labels) for _ in range(self.num_produce)]
        return torch.cat([embeddings, *produced]), labels.repeat(self.num_produce + 1)
