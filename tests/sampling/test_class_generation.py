"""Class generation (``embedding_aug=class_generation``): the generator's contract, the novel
classes' proxies, the proxy losses' synthetic-class hook against hand computations, the pairing
check before training, and a short trial that trains and resumes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tuneddml.config import TrialConfig
from tuneddml.errors import ConfigError
from tuneddml.losses import build_loss
from tuneddml.sampling import EMBEDDING_AUGMENTERS
from tuneddml.sampling.class_generation import conditional_mmd
from tuneddml.training.loop import build_loss_parts

C, D = 5, 6
HOSTS = ["proxy_anchor", "proxy_nca", "normsoftmax"]


def _parts(loss="proxy_anchor", seed=0, loss_params=None, **params):
    torch.manual_seed(seed)
    host = build_loss(loss, loss_params or {}, num_classes=C, embedding_size=D)
    aug = EMBEDDING_AUGMENTERS.build("class_generation", params, num_classes=C, embedding_size=D)
    aug.attach_loss(host)
    aug.train()
    return host, aug


def _batch(seed=1, classes=(0, 1, 3), per_class=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return F.normalize(torch.randn(len(labels), D, generator=g, dtype=dtype), dim=1), labels


# -- the augmenter's contract -----------------------------------------------------------------
def test_real_rows_first_then_novel_classes_with_new_labels_and_unit_embeddings():
    host, aug = _parts(novel_classes=3, novel_samples=2)
    e, y = _batch()
    out, labels = aug(e, y)
    assert out.shape == (len(e) + 6, D)
    torch.testing.assert_close(out[: len(e)], e)
    assert labels[: len(e)].tolist() == y.tolist()
    assert labels[len(e) :].tolist() == [C, C, C + 1, C + 1, C + 2, C + 2]
    torch.testing.assert_close(out[len(e) :].norm(dim=1), torch.ones(6))
    proxies, classes = host.proxies_in_use()  # the staged novel proxies, for the next forward
    assert classes == C + 3 and proxies.shape == ((C + 3), D)


def test_the_generator_is_the_documented_network_and_is_conditioned_on_the_label():
    _, aug = _parts(noise_size=4, hidden_size=7)
    gen = aug.generator
    z = torch.randn(1, 4)

    def by_hand(v):  # G(v, z) = normalize(W2 relu(A^T v + W1 z + b1) + b2), v a C-wide label vector
        h = v @ gen.label + z @ gen.noise.weight.T + gen.noise.bias
        out = torch.relu(h) @ gen.out.weight.T + gen.out.bias
        return out / out.norm()

    with torch.no_grad():
        for a, b, lam in [(0, 0, 1.0), (1, 3, 0.3), (4, 2, 0.75)]:
            v = torch.zeros(1, C)
            v[0, a] += lam
            v[0, b] += 1 - lam
            got = gen(torch.tensor([a]), torch.tensor([b]), torch.tensor([lam]), z)
            torch.testing.assert_close(got, by_hand(v))
        same_noise = gen(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.ones(2), z.repeat(2, 1))
    assert (same_noise[0] - same_noise[1]).abs().max() > 1e-3  # another label, another embedding


def test_novel_pairs_are_two_distinct_batch_classes_and_lambda_is_a_fraction():
    _, aug = _parts(novel_classes=50, alpha=0.5)
    _, y = _batch()
    a, b, lam = aug.novel(y)
    assert len(a) == 50 and (a != b).all()
    assert set(a.tolist()) | set(b.tolist()) <= {0, 1, 3}
    assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0.1
    one, _, _ = aug.novel(torch.tensor([2, 2, 2]))  # a single class: nothing to mix
    assert len(one) == 0


@pytest.mark.parametrize("k", [1, 2])
def test_novel_proxies_are_the_same_mix_of_the_two_classes_proxies(monkeypatch, k):
    host, aug = _parts(loss_params={"proxies_per_class": k}, novel_classes=2)
    chosen = (torch.tensor([0, 3]), torch.tensor([1, 0]), torch.tensor([0.25, 0.9]))
    monkeypatch.setattr(aug, "novel", lambda labels: chosen)
    e, y = _batch()
    aug(e, y)
    proxies, classes = host.proxies_in_use()
    assert classes == C + 2
    raw = host.proxies.detach().tolist()
    for m, (a, b, lam) in enumerate(zip(*[t.tolist() for t in chosen])):
        for j in range(k):
            pa, pb = raw[a * k + j], raw[b * k + j]
            na, nb = math.sqrt(sum(x * x for x in pa)), math.sqrt(sum(x * x for x in pb))
            mix = [lam * u / na + (1 - lam) * v / nb for u, v in zip(pa, pb)]
            norm = math.sqrt(sum(x * x for x in mix))
            expected = torch.tensor([x / norm for x in mix])
            torch.testing.assert_close(proxies[(C + m) * k + j].detach(), expected)


def test_warmup_trains_the_generator_without_novel_rows():
    host, aug = _parts(warmup_epochs=1)
    e, y = _batch()
    aug.on_epoch_start(1, None)
    out, labels = aug(e, y)
    assert len(out) == len(e) and labels.tolist() == y.tolist()
    terms = host(out, labels)
    assert {"gen_class", "gen_match"} <= set(terms)
    aug.on_epoch_start(2, None)
    assert len(aug(e, y)[0]) > len(e)


def test_the_generator_objective_trains_only_the_generator_and_the_loss_not_the_generator():
    host, aug = _parts(class_weight=0.5, match_weight=7.0)
    e, y = _batch()
    e.requires_grad_(True)
    out, labels = aug(e, y)
    terms = host(out, labels)
    total = sum(w * terms[t] for t, w in host.weights().items())
    total += 0.5 * terms["gen_class"] + 7.0 * terms["gen_match"]
    torch.testing.assert_close(terms["total"], total)

    gen_params = list(aug.parameters())
    grads = torch.autograd.grad(
        terms["gen_class"] + terms["gen_match"], [e, host.proxies, *gen_params], allow_unused=True
    )
    assert grads[0] is None and grads[1] is None  # neither the embedder nor the proxies
    assert any(g is not None and g.abs().sum() > 0 for g in grads[2:])

    host2, aug2 = _parts()
    out, labels = aug2(e, y)
    terms = host2(out, labels)
    grads = torch.autograd.grad(
        terms["pos"] + terms["neg"], [e, host2.proxies, *aug2.parameters()], allow_unused=True
    )
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert all(g is None for g in grads[2:])  # detach: the loss does not train the generator


def test_conditional_mmd_by_a_loop():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 0, 1, 1, 1])
    sigma = 0.7

    def k(u, v):
        return math.exp(-sum((a - b) ** 2 for a, b in zip(u, v)) / (2 * sigma**2))

    r, f = real.tolist(), fake.tolist()
    total = sum(
        k(r[i], r[j]) + k(f[i], f[j]) - 2 * k(r[i], f[j]) for i in range(5) for j in range(5) if y[i] == y[j]
    )
    assert conditional_mmd(real, fake, y, sigma).item() == pytest.approx(total / 25, abs=1e-6)
    assert conditional_mmd(real, real, y, sigma).item() == pytest.approx(0.0, abs=1e-6)


# -- the proxy losses' hook, by hand ----------------------------------------------------------
def _cos(e, p):
    rows, cols = e.tolist(), p.tolist()

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    return [[dot(u, v) / math.sqrt(dot(u, u) * dot(v, v)) for v in cols] for u in rows]


def _hand(name, e, labels, proxies):
    """The three losses' terms by loops (one proxy per class, defaults), classes = len(proxies)."""
    s, y, classes = _cos(e, proxies), labels.tolist(), range(len(proxies))
    n = len(y)
    if name == "proxy_anchor":
        alpha, margin = 32.0, 0.1
        present = [c for c in classes if c in y]
        pos = sum(
            math.log(1 + sum(math.exp(-alpha * (s[i][c] - margin)) for i in range(n) if y[i] == c))
            for c in present
        ) / len(present)
        neg = sum(
            math.log(1 + sum(math.exp(alpha * (s[i][c] + margin)) for i in range(n) if y[i] != c))
            for c in classes
        ) / len(proxies)
        return {"pos": pos, "neg": neg}
    if name == "proxy_nca":
        scale = 16.0
        pos = -sum(scale * s[i][y[i]] for i in range(n)) / n
        neg = (
            sum(math.log(sum(math.exp(scale * s[i][c]) for c in classes if c != y[i])) for i in range(n)) / n
        )
        return {"pos": pos, "neg": neg}
    tau = 0.05
    pos = -sum(s[i][y[i]] / tau for i in range(n)) / n
    ent = sum(math.log(sum(math.exp(s[i][c] / tau) for c in classes)) for i in range(n)) / n
    return {"pos": pos, "ent": ent}


@pytest.mark.parametrize("name", HOSTS)
def test_without_synthetic_classes_the_loss_is_unchanged(name):
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=C, embedding_size=D).double()
    e, y = _batch(dtype=torch.float64)
    out = loss(e, y)
    assert set(out) == {*loss.term_names, "total"}
    for t, v in _hand(name, e, y, loss.proxies.detach()).items():
        assert out[t].item() == pytest.approx(v, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", HOSTS)
def test_with_synthetic_classes_the_loss_scores_them_as_classes_for_one_forward(name):
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=C, embedding_size=D).double()
    e, y = _batch(dtype=torch.float64)
    extra = torch.randn(2, 1, D, dtype=torch.float64)
    e2 = torch.cat([e, F.normalize(torch.randn(4, D, dtype=torch.float64), dim=1)])
    y2 = torch.cat([y, torch.tensor([C, C, C + 1, C + 1])])
    gen = torch.tensor(0.7, dtype=torch.float64)
    loss.add_classes(extra, {"gen": gen}, {"gen": 3.0})
    out = loss(e2, y2)
    hand = _hand(name, e2, y2, torch.cat([loss.proxies.detach(), extra[:, 0]]))
    for t, v in hand.items():
        assert out[t].item() == pytest.approx(v, rel=1e-9, abs=1e-9)
    weights = loss.weights()
    expected = sum(weights[t] * hand[t] for t in loss.term_names) + 3.0 * 0.7
    assert out["gen"].item() == 0.7 and out["total"].item() == pytest.approx(expected, rel=1e-9)
    again = loss(e, y)  # consumed: the next forward is the plain loss
    assert set(again) == {*loss.term_names, "total"}
    assert again["total"].item() == pytest.approx(
        sum(weights[t] * v for t, v in _hand(name, e, y, loss.proxies.detach()).items()), rel=1e-9
    )


def test_frozen_proxies_get_no_gradient():
    torch.manual_seed(0)
    loss = build_loss("proxy_anchor", num_classes=C, embedding_size=D)
    e, y = _batch()
    with loss.frozen_proxies():
        out = loss(e, y)
    assert not out["total"].requires_grad
    assert loss(e, y)["total"].requires_grad


# -- the pairing, before training -------------------------------------------------------------
def test_a_loss_without_synthetic_classes_is_refused_naming_the_choices():
    config = TrialConfig.from_flat({"loss": "multi_similarity", "embedding_aug": "class_generation"})
    with pytest.raises(ConfigError) as info:
        build_loss_parts(config, num_classes=C)
    assert info.value.field == "loss"
    for name in HOSTS:
        assert name in info.value.expected
    assert "multi_similarity" not in info.value.expected
    ok = TrialConfig.from_flat({"loss": "proxy_nca", "embedding_aug": "class_generation"})
    loss, aug = build_loss_parts(ok, num_classes=C)
    assert aug.__dict__["_loss"] is loss and not any(p is loss.proxies for p in aug.parameters())


def test_a_search_pairing_it_with_a_pair_loss_stops_before_ray(tmp_path, monkeypatch, capsys):
    from tuneddml.search import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--space=quick", "embedding_aug=class_generation"])  # quick searches supcon, contrastive
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: loss:") and "proxy_anchor" in err[0], err
    assert len(err[0]) < 200


# -- a short trial ----------------------------------------------------------------------------
def test_a_trial_trains_reports_the_generator_terms_and_resumes_exactly(tmp_path):
    from tuneddml.training import Trainer, run_trial

    flat = {
        "dataset": "glyphs-tiny",
        "split": "test",
        "threads": 1,
        "steps_per_epoch": 3,
        "epochs": 2,
        "loss": "proxy_anchor",
        "embedding_aug": "class_generation",
        "embedding_aug.hidden_size": 32,
        "eval_nmi": False,
        "eval_ap": False,
    }
    config = TrialConfig.from_flat(flat)
    straight = run_trial(config)
    assert {"pos", "neg", "gen_class", "gen_match", "total"} <= set(straight.history[-1].terms)
    first = Trainer(config)
    before = [p.detach().clone() for p in first.embedding_aug.parameters()]
    first.train_epoch()
    assert any((p - q).abs().sum() > 0 for p, q in zip(first.embedding_aug.parameters(), before))
    first.save(tmp_path / "state.pt")
    resumed = run_trial(config, resume=tmp_path / "state.pt")
    assert resumed.metrics == straight.metrics
    assert [r.epoch for r in resumed.history] == [2]
