from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from handcalc import cos_table, pk_batch

from tuneddml.losses import build_loss
from tuneddml.losses.base import BaseLoss
from tuneddml.losses.lsd import listwise_kl

D = 8


def hand_kl(student, teacher, temperature):
    s, t = cos_table(student), cos_table(teacher)
    n = len(s)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        zs = sum(math.exp(s[i][j] / temperature) for j in others)
        zt = sum(math.exp(t[i][j] / temperature) for j in others)
        for j in others:
            p = math.exp(s[i][j] / temperature) / zs
            q = math.exp(t[i][j] / temperature) / zt
            total += q * math.log(q / p)
    return total / n


def test_listwise_kl_by_plain_loop():
    g = torch.Generator().manual_seed(0)
    student = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    teacher = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    got = listwise_kl(student, teacher, 0.3).item()
    assert got == pytest.approx(hand_kl(student, teacher, 0.3), abs=1e-12)
    assert listwise_kl(student, student, 0.3).item() == pytest.approx(0.0, abs=1e-12)


def setup(teacher="epoch", **params):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, D).double()
    loss = build_loss("lsd", {"teacher": teacher, **params}, num_classes=4, embedding_size=D)
    context = SimpleNamespace(model=model, train_labels=np.arange(4).repeat(4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(4)
    return model, loss, context, x, labels


def step(model, loss, x, labels):
    emb = F.normalize(model(x), dim=1)
    return emb, loss(emb, labels)


def test_previous_epoch_model_is_the_teacher():
    model, loss, context, x, labels = setup(temperature=0.2, weight=0.7)
    loss.on_epoch_start(1, context)
    _, out = step(model, loss, x, labels)
    assert out["lsd"].item() == 0.0  # epoch 1: no earlier model
    loss.on_epoch_start(2, context)
    _, out = step(model, loss, x, labels)
    assert out["lsd"].item() == pytest.approx(0.0, abs=1e-12)  # teacher == student
    assert len(loss._teacher._forward_pre_hooks) == 0 and len(model._forward_pre_hooks) == 1
    before = F.normalize(model(x), dim=1).detach()
    with torch.no_grad():
        model.weight.add_(0.3 * torch.randn_like(model.weight))
    emb, out = step(model, loss, x, labels)
    assert out["lsd"].item() == pytest.approx(hand_kl(emb.detach(), before, 0.2), abs=1e-10)
    base = build_loss("supcon", num_classes=4, embedding_size=D)(emb, labels)  # the default base
    torch.testing.assert_close(out["total"], base["total"] + 0.7 * out["lsd"])
    assert set(out) == {"pos", "ent", "lsd", "total"}
    # the regulariser alone moves the student
    model.zero_grad()
    out["lsd"].backward()
    assert model.weight.grad.abs().sum() > 0


def test_eval_mode_calls_do_not_replace_the_recorded_input():
    model, loss, context, x, labels = setup()
    loss.on_epoch_start(2, context)
    with torch.no_grad():
        model.weight.add_(0.3)
    emb = F.normalize(model(x), dim=1)
    model.eval()
    model(torch.randn(3, 5, dtype=torch.float64))  # e.g. an epoch hook embedding other samples
    model.train()
    teacher = F.normalize(loss._teacher(x), dim=1)
    assert loss(emb, labels)["lsd"].item() == pytest.approx(hand_kl(emb.detach(), teacher, 0.1), abs=1e-10)


def test_appended_synthetic_rows_are_not_distilled():
    model, loss, context, x, labels = setup()
    loss.on_epoch_start(2, context)
    with torch.no_grad():
        model.weight.add_(0.2)
    emb = F.normalize(model(x), dim=1)
    extra = F.normalize(torch.randn(4, D, dtype=torch.float64), dim=1)
    out = loss(torch.cat([emb, extra]), torch.cat([labels, labels[:4]]))
    teacher = F.normalize(loss._teacher(x), dim=1)
    assert out["lsd"].item() == pytest.approx(hand_kl(emb.detach(), teacher, 0.1), abs=1e-10)


def test_ema_teacher_follows_the_student():
    model, loss, context, x, labels = setup(teacher="ema", momentum=0.9)
    loss.on_epoch_start(1, context)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    step(model, loss, x, labels)
    torch.testing.assert_close(loss._teacher.weight, 0.9 * start + 0.1 * model.weight.detach())
    loss.on_epoch_start(2, context)  # the EMA teacher is kept across epochs
    torch.testing.assert_close(loss._teacher.weight, 0.9 * start + 0.1 * model.weight.detach())


def test_teacher_is_not_a_parameter_nor_saved():
    _, loss, context, _, _ = setup()
    loss.on_epoch_start(2, context)
    assert not any("_teacher" in k for k in loss.state_dict())
    assert list(loss.parameters()) == []
    proxy = build_loss("lsd", {"base": "proxy_anchor"}, num_classes=4, embedding_size=D)
    assert [n for n, _ in proxy.named_parameters()] == ["base.proxies"]


def test_without_an_epoch_hook_the_term_is_a_connected_zero():
    e, labels = pk_batch(seed=0)
    e.requires_grad_(True)
    out = build_loss("lsd", num_classes=4, embedding_size=16)(e, labels)
    assert out["lsd"].item() == 0.0
    out["total"].backward()
    assert e.grad.abs().sum() > 0


# -- teacher="bank": each sample's embedding from its previous visit, by training-set index ------


def bank_loss(num_train=10, **params):
    params = {"teacher": "bank", "temperature": 0.3, **params}
    return build_loss("lsd", params, num_classes=4, embedding_size=D, num_train=num_train)


def unit(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, D, generator=g), dim=1)


def test_bank_teacher_is_the_stored_embedding_of_each_sample_by_plain_loop():
    loss = bank_loss(weight=0.5)
    assert loss.teacher_kind == "bank" and loss.uses_indices
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    first, second = unit(0), unit(1)
    out = loss.batch_terms(first, labels, np.array([0, 1, 2, 3, 4, 5]))
    assert out["lsd"].item() == 0.0  # nothing stored yet
    out = loss.batch_terms(second, labels, np.array([3, 4, 5, 6, 7, 8]))
    # samples 3, 4, 5 were stored at the first step (rows 3..5 there); 6..8 are new
    assert out["lsd"].item() == pytest.approx(hand_kl(second[:3], first[3:6], 0.3), abs=1e-6)
    base = build_loss("supcon", num_classes=4, embedding_size=D)(second, labels)
    assert out["total"].item() == pytest.approx(base["total"].item() + 0.5 * out["lsd"].item(), abs=1e-6)
    # the bank holds each sample's latest embedding, at exactly the indices given
    want = torch.zeros(10, D)
    want[0:3], want[3:9] = first[0:3], second
    assert float((loss.bank - want).abs().max()) < 1e-7
    assert loss.stored.tolist() == [True] * 9 + [False]


def test_bank_leaves_out_synthetic_rows_and_does_not_learn_in_eval_mode():
    loss = bank_loss()
    labels = torch.tensor([0, 0, 1, 1])
    loss.batch_terms(unit(2, 4), labels, np.array([0, 1, 2, 3]))
    before = loss.bank.clone()
    loss.eval()
    assert loss.batch_terms(unit(3, 4), labels, np.array([0, 1, 2, 3]))["lsd"].item() == 0.0
    assert torch.equal(loss.bank, before)
    loss.train()
    real, extra = unit(4, 4), unit(5, 4)  # an augmenter's 4 rows after the 4 real ones: index -1
    got = loss.batch_terms(torch.cat([real, extra]), torch.cat([labels, labels]), np.array([0, 1, 2, 3]))
    assert got["lsd"].item() == pytest.approx(hand_kl(real, before[:4], 0.3), abs=1e-6)
    assert float((loss.bank[:4] - real).abs().max()) < 1e-7 and not loss.stored[4:].any()


def test_bank_is_saved_and_restored_exactly():
    loss = bank_loss()
    labels = torch.tensor([0, 0, 1, 1])
    loss.batch_terms(unit(6, 4), labels, np.array([7, 1, 4, 9]))
    copy = bank_loss()
    copy.load_state_dict(loss.state_dict())
    assert torch.equal(copy.bank, loss.bank) and torch.equal(copy.stored, loss.stored)
    nxt = unit(7, 4)
    a = copy.batch_terms(nxt, labels, np.array([9, 4, 1, 7]))["lsd"].item()
    b = loss.batch_terms(nxt, labels, np.array([9, 4, 1, 7]))["lsd"].item()
    assert a == b > 0


def test_bank_refuses_an_index_beyond_the_training_set():
    with pytest.raises(ValueError, match="num_train"):
        bank_loss(num_train=3).batch_terms(unit(8, 4), torch.tensor([0, 0, 1, 1]), np.array([0, 1, 2, 3]))
    # the other teachers keep no bank
    assert bank_loss(teacher="epoch").bank.shape == (0, D)


class Recorder(BaseLoss):
    """A stand-in member that records the indices it is given."""

    family = "pair"
    term_names = ("pos", "ent")
    uses_indices = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, embeddings, labels, indices=None):
        self.seen.append(None if indices is None else indices.tolist())
        zero = embeddings.sum() * 0.0
        return self.combine({"pos": zero, "ent": zero})


def test_wrappers_hand_the_indices_to_members_that_use_them():
    from tuneddml.losses.members import MemberLoss, WeightedMembers

    e, labels = unit(9, 4), torch.tensor([0, 0, 1, 1])
    lsd = build_loss("lsd", {"teacher": "epoch"}, num_classes=4, embedding_size=D)
    lsd.base = Recorder()
    lsd.batch_terms(e, labels, np.array([5, 6, 7, 8]))
    assert lsd.base.seen == [[5, 6, 7, 8]]
    ccp = build_loss("ccp", num_classes=4, embedding_size=D)
    assert not ccp.uses_indices  # its proxy bases keep no per-sample state
    ccp.base = Recorder()
    ccp(e, labels, indices=torch.tensor([1, 2, 3, -1]))
    assert ccp.base.seen == [[1, 2, 3, -1]]
    recorder = Recorder()
    plain = build_loss("contrastive", num_classes=4, embedding_size=D)  # takes no indices
    both = MemberLoss()
    both.set_members(WeightedMembers({"rec": recorder, "contrastive": plain}, [1.0, 1.0], "fixed"))
    assert both.uses_indices
    both.batch_terms(torch.cat([e, e]), torch.cat([labels, labels]), np.array([3, 1, 4, 1]))
    assert recorder.seen == [[3, 1, 4, 1, -1, -1, -1, -1]]
    hybrid = build_loss("hybrid", num_classes=4, embedding_size=D)
    assert not hybrid.uses_indices  # no member of it uses them: the trainer passes none
