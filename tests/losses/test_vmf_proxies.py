"""Non-isotropic probabilistic proxies: the vMF normaliser and sampler (against scipy and the
exact moments), the Monte Carlo expected likelihood (against numerical integration on the sphere),
the closed-form option (vMF moments, expectation checked by Monte Carlo, a hand computation of the
loss), and the role of the embedding norm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ive
from scipy.stats import vonmises_fisher

from tuneddml.losses import build_loss
from tuneddml.losses.vmf_proxies import (
    VMFProxiesLoss,
    expected_log_likelihood,
    log_vmf_normaliser,
    mc_expected_likelihood,
    sample_vmf,
    vmf_moment_ratio,
)


def _exact_ratio(kappa: np.ndarray, dim: int) -> np.ndarray:
    return ive(dim / 2, kappa) / ive(dim / 2 - 1, kappa)


@pytest.mark.parametrize(("dim", "rtol"), [(3, 0.031), (16, 0.006), (64, 0.0015), (128, 0.0008)])
def test_moment_ratio_is_close_to_the_bessel_ratio(dim, rtol):
    kappa = np.logspace(-3, 3.5, 300)
    exact = _exact_ratio(kappa, dim)
    approx = (torch.tensor(kappa) * vmf_moment_ratio(torch.tensor(kappa), dim)).numpy()
    np.testing.assert_allclose(approx, exact, rtol=rtol)


def _log_density(x: np.ndarray, m: np.ndarray, k: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - m) ** 2 * k).sum(axis=1) + 0.5 * ((1 - m**2) * np.log(k)).sum()


@pytest.mark.parametrize("kappa", [0.5, 4.0, 40.0])
def test_expectation_matches_monte_carlo(kappa):
    dim = 5
    rng = np.random.default_rng(0)
    mu = rng.standard_normal(dim)
    mu /= np.linalg.norm(mu)
    means = rng.standard_normal((2, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    conc = rng.uniform(2.0, 30.0, size=(2, dim))
    samples = vonmises_fisher(mu, kappa, seed=rng).rvs(200_000)
    mc = [_log_density(samples, means[p], conc[p]) for p in range(2)]
    ratio = torch.tensor([_exact_ratio(np.array(kappa), dim) / kappa])
    got = expected_log_likelihood(
        torch.tensor(mu)[None], torch.tensor([kappa]), ratio, torch.tensor(means), torch.tensor(conc)
    )[0]
    for p in range(2):
        stderr = mc[p].std() / math.sqrt(len(samples))
        assert abs(got[p].item() - mc[p].mean()) < 5 * stderr + 1e-9


def test_isotropic_proxy_is_the_concentrated_vmf():
    """With equal concentrations ``k``: log f(x) = k (m.x - 1) + (d - 1)/2 log k."""
    dim, k = 6, 12.0
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = x[0] * 0.6 + x[1] * 0.8
    m /= np.linalg.norm(m)
    expected = k * (x @ m - 1) + (dim - 1) / 2 * math.log(k)
    np.testing.assert_allclose(_log_density(x, m, np.full(dim, k)), expected, rtol=1e-12)
    # a point mass at x (kappa -> inf, A -> 1): the closed form is the log-density at x itself
    got = expected_log_likelihood(
        torch.tensor(x),
        torch.full((5,), 1e9, dtype=torch.float64),
        torch.full((5,), 1e-9, dtype=torch.float64),
        torch.tensor(m)[None],
        torch.full((1, dim), k, dtype=torch.float64),
    )[:, 0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    loss = VMFProxiesLoss(
        num_classes=3,
        embedding_size=4,
        lam=0.4,
        temperature=0.5,
        proxies_per_class=2,
        kappa_scale=2.0,
        similarity="closed_form",
    ).double()
    with torch.no_grad():
        loss.log_concentration.uniform_(0.0, 3.0)
    z = torch.randn(5, 4, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 2, 0])
    means = torch.nn.functional.normalize(loss.proxies.detach(), dim=1).numpy()
    conc = loss.log_concentration.detach().exp().numpy()
    pos = ent = 0.0
    for i in range(5):
        zi = z[i].numpy()
        kappa = 2.0 * np.linalg.norm(zi)
        mu = zi / np.linalg.norm(zi)
        a = 1.0 / (1.0 + 0.5 + math.sqrt(kappa**2 + (1.0 + 1.5) ** 2))  # nu = d/2 - 1 = 1
        scores = []
        for c in range(3):
            sims = []
            for p in (2 * c, 2 * c + 1):
                m, k = means[p], conc[p]
                second = a + (1 - 4 * a) * mu**2
                quad = sum(k[d] * (second[d] - 2 * kappa * a * mu[d] * m[d] + m[d] ** 2) for d in range(4))
                sims.append(-0.5 * quad + 0.5 * sum((1 - m[d] ** 2) * math.log(k[d]) for d in range(4)))
            scores.append(math.log(sum(math.exp(s) for s in sims) / 2) / 0.5)
        pos -= scores[labels[i]] / 5
        ent += math.log(sum(math.exp(s) for s in scores)) / 5
    out = loss(z, labels)
    assert out["pos"].item() == pytest.approx(pos, rel=1e-10)
    assert out["ent"].item() == pytest.approx(ent, rel=1e-10)
    assert out["total"].item() == pytest.approx(0.8 * pos + 1.2 * ent, rel=1e-10)


@pytest.mark.parametrize("similarity", ["mc", "closed_form"])
def test_norm_is_certainty(similarity):
    """A longer embedding on its class's proxy lowers the loss; a longer one on the wrong
    class's proxy raises it; the direction alone decides the class ranking."""
    torch.manual_seed(0)
    loss = build_loss("vmf_proxies", {"similarity": similarity}, num_classes=4, embedding_size=16).double()
    direction = torch.nn.functional.normalize(loss.proxies.detach()[1:2], dim=1)
    labels_right, labels_wrong = torch.tensor([1]), torch.tensor([2])
    right = [loss(direction * r, labels_right)["total"].item() for r in (1.0, 10.0, 100.0)]
    wrong = [loss(direction * r, labels_wrong)["total"].item() for r in (1.0, 10.0, 100.0)]
    assert right[0] > right[1] > right[2] and wrong[0] < wrong[1] < wrong[2]
    assert loss.class_scores(direction * 10).argmax().item() == 1
    assert loss.expects_normalized is False


# -- the paper's Monte Carlo similarity -------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "tol"), [(3, 1e-9), (4, 1e-9), (5, 3e-3), (8, 1e-4), (32, 1e-7), (128, 1e-9)]
)
def test_log_normaliser_matches_the_bessel_function(dim, tol):
    kappa = np.logspace(-3, 3.5, 200)
    nu = dim / 2 - 1
    exact = nu * np.log(kappa) - dim / 2 * np.log(2 * np.pi) - (np.log(ive(nu, kappa)) + kappa)
    got = log_vmf_normaliser(torch.tensor(kappa), dim).numpy()
    np.testing.assert_allclose(got, exact, rtol=0, atol=tol)


@pytest.mark.parametrize("dim", [3, 32])
def test_sampler_has_the_vmf_moments(dim):
    """Unit samples; ``E[mu.x] = A_d(kappa)`` and ``E[(mu.x)^2] = 1 - (d - 1) A/kappa`` (exact, from
    the Bessel ratio); the mean of the samples lies along ``mu``; seeded by the generator."""
    rng = np.random.default_rng(dim)
    mu = rng.standard_normal((3, dim))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    kappa = np.array([0.5, 5.0, 60.0])
    n = 4000
    x = sample_vmf(torch.tensor(mu), torch.tensor(kappa), n, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(np.linalg.norm(x, axis=2), 1.0, atol=1e-12)
    a = _exact_ratio(kappa, dim)
    w = np.einsum("snd,nd->sn", x, mu)
    for i in range(3):
        assert abs(w[:, i].mean() - a[i]) < 5 * w[:, i].std() / math.sqrt(n)
        w2 = w[:, i] ** 2
        assert abs(w2.mean() - (1 - (dim - 1) * a[i] / kappa[i])) < 5 * w2.std() / math.sqrt(n) + 1e-12
        tangent = x[:, i] - w[:, i, None] * mu[i]
        assert np.abs(tangent.mean(axis=0)).max() < 5 / math.sqrt(n)
    again = sample_vmf(torch.tensor(mu), torch.tensor(kappa), n, torch.Generator().manual_seed(0)).numpy()
    assert (again == x).all()


def _sphere_quadrature(mu, kappa, means, conc, temperature, steps=300):
    """``log E_{x ~ vMF(mu, kappa)}[f_p(x)^(1/tau)]`` on S^2 by the midpoint rule in (theta, phi),
    with the official code's non-isotropic density written out here."""
    theta = (np.arange(steps) + 0.5) * np.pi / steps
    phi = (np.arange(2 * steps) + 0.5) * np.pi / steps
    t, p = np.meshgrid(theta, phi, indexing="ij")
    x = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)
    area = np.sin(t) * (np.pi / steps) ** 2
    image = kappa / (4 * np.pi * np.sinh(kappa)) * np.exp(kappa * x @ mu)
    out = []
    for m, k in zip(means, conc, strict=True):
        eta = k * m
        rho = np.linalg.norm(eta)
        log_f = np.log(rho / (4 * np.pi * np.sinh(rho))) + x @ eta + np.log(k).sum() - np.log(rho)
        out.append(np.log((image * np.exp(log_f / temperature) * area).sum()))
    return np.array(out)


@pytest.mark.parametrize(("kappa", "temperature"), [(2.0, 1.0), (6.0, 0.8)])
def test_monte_carlo_converges_to_numerical_integration(kappa, temperature):
    rng = np.random.default_rng(3)
    mu = rng.standard_normal(3)
    mu /= np.linalg.norm(mu)
    means = rng.standard_normal((2, 3))
    means[0] = mu + 0.3 * means[0]  # one proxy near the image, one anywhere
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    conc = rng.uniform(1.0, 4.0, size=(2, 3))
    want = _sphere_quadrature(mu, kappa, means, conc, temperature)
    args = (torch.tensor(mu)[None], torch.tensor([kappa]), torch.tensor(means), torch.tensor(conc))
    gen = torch.Generator().manual_seed(1)
    got = mc_expected_likelihood(*args, temperature=temperature, num_samples=20_000, generator=gen)[0]
    # 20,000 samples: errors up to 0.023 over 8 generator seeds (2 x that allowed)
    np.testing.assert_allclose(got.numpy(), want, atol=0.05)
    # the default 20 samples: a noisy estimate of the same quantity, biased low (Jensen)
    few = [
        mc_expected_likelihood(*args, temperature=temperature, num_samples=20, generator=gen)[0].numpy()
        for _ in range(50)
    ]
    assert np.all(np.mean(few, axis=0) < want + 0.01) and np.all(np.mean(few, axis=0) > want - 1.0)


def test_monte_carlo_loss_is_seeded_and_differentiable():
    loss = build_loss("vmf_proxies", num_classes=3, embedding_size=8).double()
    assert loss.similarity == "mc" and loss.samples == 20
    z = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    z.requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    first = loss(z, labels)
    torch.manual_seed(5)
    second = loss(z, labels)
    torch.manual_seed(6)
    other = loss(z, labels)
    assert first["total"].item() == second["total"].item() != other["total"].item()
    first["total"].backward()
    for grad in (z.grad, loss.proxies.grad, loss.log_concentration.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(Exception):  # noqa: B017 - the registry's ConfigError
        build_loss("vmf_proxies", {"similarity": "exact"}, num_classes=3, embedding_size=8)
