"""Frozen batch norm: over a real training step (forward, loss, backward, optimiser step) the
running statistics and the affine weights of every batch-norm layer stay as they were, while the
other weights train; without it they all change. And the backbones trained from scratch compute
what they computed before the pretrained ones came (values recorded at main 8582c86)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuneddml.models import Embedder, build_model


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return {f"{name}.{k}": v.detach().clone() for name, m in model.named_modules() if isinstance(m, norms)
            for k, v in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]}


def _step(model: nn.Module, x: torch.Tensor) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)  # decay moves any weight it sees
    model.train()
    loss = nn.functional.normalize(model(x), dim=1)[:, 0].sum() + model(x).pow(2).mean()
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_a_training_step_leaves_frozen_batch_norms_alone(freeze):
    torch.manual_seed(0)
    model = build_model("small_cnn", {"width": 4, "depth": 2}, item_shape=(1, 16, 16), embedding_size=4, freeze_bn=freeze)
    before_bn = _bn_state(model)
    before_conv = model.backbone.net[0].weight.detach().clone()
    model.eval()
    _step(model, torch.rand(8, 1, 16, 16))  # _step puts it back in train mode
    after_bn = _bn_state(model)
    assert len(before_bn) == 4 * 5  # 2 stages of 2 conv-BN blocks; each BN: weight, bias, 3 buffers
    changed = {k for k in before_bn if not torch.equal(before_bn[k], after_bn[k])}
    assert changed == (set() if freeze else set(before_bn))
    assert not torch.equal(before_conv, model.backbone.net[0].weight)  # the rest trains either way


class _AllNorms(nn.Module):
    out_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 6, 1)
        self.bn3 = nn.BatchNorm3d(6)
        self.sync = nn.SyncBatchNorm(6)  # on a CPU without a process group: a plain batch norm
        self.bn1 = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sync(self.bn3(self.conv(x[:, :, None])).flatten(2)).mean(2)
        return self.bn1(h)


def test_every_kind_of_batch_norm_is_frozen_through_train_and_eval():
    torch.manual_seed(0)
    model = Embedder(_AllNorms(), 3, freeze_bn=True)
    norms = [model.backbone.bn3, model.backbone.sync, model.backbone.bn1]
    for mode in (True, False, True):
        model.train(mode)
        assert model.training is mode and model.head.training is mode
        assert not any(m.training for m in norms)
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    assert model.head.weight.requires_grad and model.backbone.conv.weight.requires_grad
    before = _bn_state(model)
    _step(model, torch.rand(4, 1, 5, 5))
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    unfrozen = Embedder(_AllNorms(), 3)
    unfrozen.train()
    assert all(m.training for m in (unfrozen.backbone.bn3, unfrozen.backbone.sync, unfrozen.backbone.bn1))


def test_the_backbones_trained_from_scratch_compute_what_they_did():
    torch.manual_seed(0)
    cnn = build_model("small_cnn", {}, item_shape=(1, 32, 32), embedding_size=8)
    assert (cnn.backbone.mean, cnn.backbone.std, cnn.backbone.input_size) == (None, None, None)
    torch.manual_seed(1)
    x = torch.rand(4, 1, 32, 32)
    cnn.train()
    y = cnn(x)
    expected = [1.009726, 0.251104, -0.335849, -0.436283, -0.155498, 0.705065, 0.810934, -0.874946]
    assert y[0].tolist() == pytest.approx(expected, abs=2e-5)
    assert y.abs().sum().item() == pytest.approx(17.957787, abs=1e-4)
    assert cnn.backbone.net[1].running_mean.sum().item() == pytest.approx(-0.0506741, abs=1e-6)
    cnn.eval()
    expected_eval = [0.065295, -0.033284, 0.041872, -0.065662, -0.02643, 0.099612, 0.068015, -0.094908]
    assert cnn(x)[0].tolist() == pytest.approx(expected_eval, abs=2e-5)
    torch.manual_seed(0)
    mlp = build_model("mlp", {}, item_shape=(20,), embedding_size=8).train()
    torch.manual_seed(1)
    expected_mlp = [0.221818, -0.082528, -0.220629, 0.179672, 0.544808, 0.171645, 0.667283, 0.272962]
    assert mlp(torch.rand(4, 20))[0].tolist() == pytest.approx(expected_mlp, abs=2e-5)
    assert mlp.backbone.mean is None
