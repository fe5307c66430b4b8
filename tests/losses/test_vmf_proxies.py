"""Non-isotropic probabilistic proxies: the vMF moments, the closed-form expectation (checked by
Monte Carlo), a hand computation of the loss, and the role of the embedding norm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ive
from scipy.stats import vonmises_fisher

from tuneddml.losses import build_loss
from tuneddml.losses.vmf_proxies import VMFProxiesLoss, expected_log_likelihood, vmf_moment_ratio


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
        num_classes=3, embedding_size=4, lam=0.4, temperature=0.5, proxies_per_class=2, kappa_scale=2.0
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


def test_norm_is_certainty():
    """A longer embedding on its class's proxy lowers the loss; a longer one on the wrong
    class's proxy raises it; the direction alone decides the class ranking."""
    torch.manual_seed(0)
    loss = build_loss("vmf_proxies", num_classes=4, embedding_size=16).double()
    direction = torch.nn.functional.normalize(loss.proxies.detach()[1:2], dim=1)
    labels_right, labels_wrong = torch.tensor([1]), torch.tensor([2])
    right = [loss(direction * r, labels_right)["total"].item() for r in (1.0, 10.0, 100.0)]
    wrong = [loss(direction * r, labels_wrong)["total"].item() for r in (1.0, 10.0, 100.0)]
    assert right[0] > right[1] > right[2] and wrong[0] < wrong[1] < wrong[2]
    assert loss.class_scores(direction * 10).argmax().item() == 1
    assert loss.expects_normalized is False
