from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from handcalc import cos_table, pk_batch

from tuneddml.losses import build_loss
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
