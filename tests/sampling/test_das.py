from __future__ import annotations

import pytest
import torch

from tuneddml.errors import ConfigError
from tuneddml.sampling import EMBEDDING_AUGMENTERS

C, D = 3, 8


def _build(**params):
    return EMBEDDING_AUGMENTERS.build("das", params, num_classes=C, embedding_size=D)


def _batch(seed: int, per_class: int = 3):
    """Class c is strong on channels c and c + 4, so those are every embedding's top-2 channels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(per_class)
    e = 0.1 * torch.rand(len(labels), D, generator=g)
    for row, c in enumerate(labels.tolist()):
        e[row, c] += 1.0 + torch.rand(1, generator=g).item()
        e[row, c + 4] += 1.0 + torch.rand(1, generator=g).item()
    return e, labels


def test_reference_by_a_plain_loop():
    """Fixed scale (low = high) and a one-slot bank make DAS deterministic; recompute it by hand."""
    aug = _build(num_produce=2, scale_channels=2, scale_low=1.5, scale_high=1.5, bank_size=1, shift_scale=0.3)
    batches = [_batch(0), _batch(1)]
    for e, y in batches[:1]:
        aug(e, y)
    e, y = batches[1]
    out, out_labels = aug(e, y)

    freq = [[0] * D for _ in range(C)]
    last_diff: dict[int, list[float]] = {}
    for be, by in batches:
        for row in range(len(by)):
            values = be[row].tolist()
            for j in sorted(range(D), key=lambda j: -values[j])[:2]:
                freq[int(by[row])][j] += 1
        for c in range(C):
            members = [be[i].tolist() for i in range(len(by)) if by[i] == c]
            diffs = [[a - b for a, b in zip(mi, mj, strict=True)] for mi in members for mj in members]
            last_diff[c] = [d for d in diffs if any(x != 0 for x in d)][-1]  # i-major order, newest kept
    expected = []
    for row in range(len(y)):
        c = int(y[row])
        top = sorted(range(D), key=lambda j: -freq[c][j])[:2]
        assert set(top) == {c, c + 4}
        v = [e[row, j].item() * (1.5 if j in top else 1.0) + 0.3 * last_diff[c][j] for j in range(D)]
        norm = sum(x * x for x in v) ** 0.5
        expected.append([x / norm for x in v])
    expected_t = torch.tensor(expected)
    assert out.shape == (3 * len(y), D)
    torch.testing.assert_close(out[: len(y)], e)  # the real embeddings come first, untouched
    torch.testing.assert_close(out[len(y) : 2 * len(y)], expected_t)
    torch.testing.assert_close(out[2 * len(y) :], expected_t)
    assert out_labels.tolist() == y.tolist() * 3
    assert aug.frequency.sum() == 2 * 2 * len(y)  # two batches, two channels per embedding


def test_dfs_scales_only_the_class_channels_within_the_range():
    torch.manual_seed(0)
    aug = _build(num_produce=4, scale_channels=2, mts=False, normalize=False)
    e, y = _batch(2)
    out, _ = aug(e, y)
    synthetic = out[len(y) :].view(4, len(y), D)
    for row, c in enumerate(y.tolist()):
        ratio = synthetic[:, row] / e[row]
        scaled = [c, c + 4]
        assert ((ratio[:, scaled] >= 0.5) & (ratio[:, scaled] <= 2.0)).all()
        others = [j for j in range(D) if j not in scaled]
        torch.testing.assert_close(ratio[:, others], torch.ones(4, len(others)))
    assert synthetic[:, :, [0, 4]].std() > 0  # factors are drawn, not fixed


def test_mts_shifts_by_a_remembered_intra_class_difference():
    torch.manual_seed(0)
    aug = _build(num_produce=3, dfs=False, normalize=False, shift_scale=0.5, bank_size=4)
    e, y = _batch(3)
    out, _ = aug(e, y)
    shifts = (out[len(y) :].view(3, len(y), D) - e) / 0.5
    for row, c in enumerate(y.tolist()):
        bank = aug.bank[c, : int(aug.bank_count[c])]
        assert len(bank) == 4  # 3 members -> 6 differences, the newest 4 kept
        for k in range(3):
            assert torch.isclose(bank, shifts[k, row]).all(dim=1).any()


def test_gradients_and_detach():
    e, y = _batch(4)
    for detach in (True, False):
        e1 = e.clone().requires_grad_(True)
        out, _ = _build(detach=detach)(e1, y)
        (out[len(y) :] * torch.arange(D)).sum().backward()  # the synthetic part only
        assert bool(e1.grad.abs().sum() > 0) is (not detach)


def test_state_is_in_buffers():
    aug = _build()
    aug(*_batch(5))
    state = aug.state_dict()
    assert {"frequency", "bank", "bank_count", "bank_next"} <= set(state)
    fresh = _build()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.bank, aug.bank) and torch.equal(fresh.frequency, aug.frequency)


def test_bad_parameters():
    with pytest.raises(ConfigError) as err:
        _build(scale_channels=D + 1)
    assert err.value.field == "embedding_aug.scale_channels"
    with pytest.raises(ConfigError) as err:
        _build(scale_low=2.0, scale_high=1.0)
    assert err.value.field == "embedding_aug.scale_low"
    with pytest.raises(ConfigError):
        _build(num_produce=0)
