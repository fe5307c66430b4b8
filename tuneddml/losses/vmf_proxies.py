"""Non-isotropic probabilistic proxies (after Kirchhof, Roth, Akata & Kasneci, "A Non-isotropic
Probabilistic Take on Proxy-based Deep Metric Learning", ECCV 2022): images as von Mises-Fisher
distributions whose concentration is the embedding norm, class proxies as non-isotropic
distributions, compared distribution to distribution."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from tuneddml.losses import LOSSES
from tuneddml.losses.base import Balance, BaseLoss, Family
from tuneddml.similarity import init_proxies

#: bounds of the proxies' log-concentrations (a runaway concentration would make the loss blow up)
LOG_CONCENTRATION_RANGE = (-5.0, 10.0)


def vmf_moment_ratio(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """``A(kappa) / kappa`` with ``A(kappa) = I_{dim/2}(kappa) / I_{dim/2-1}(kappa)``, the mean
    resultant length of a von Mises-Fisher distribution on ``S^{dim-1}`` (``E[x] = A mu``).

    Uses Amos's (1974) rational bound ``A(kappa) ~ kappa / (nu + 1/2 + sqrt(kappa^2 + (nu + 3/2)^2))``,
    ``nu = dim/2 - 1``: within 3 % of the exact ratio for ``dim = 3``, 0.6 % for ``dim = 16`` and
    0.15 % for ``dim >= 64`` over all ``kappa``, differentiable, and free of Bessel functions (which
    torch lacks for large orders). Written as ``A / kappa`` so that ``kappa -> 0`` is safe."""
    nu = dim / 2.0 - 1.0
    return 1.0 / (nu + 0.5 + torch.sqrt(kappa.pow(2) + (nu + 1.5) ** 2))


def expected_log_likelihood(
    mu: torch.Tensor, kappa: torch.Tensor, a_over_kappa: torch.Tensor, means: torch.Tensor, conc: torch.Tensor
) -> torch.Tensor:
    """``E_{x ~ vMF(mu_i, kappa_i)} [log f_p(x)]`` for every image ``i`` and proxy ``p``: ``(n, P)``.

    ``mu`` ``(n, d)`` unit means, ``kappa`` ``(n,)`` concentrations, ``a_over_kappa`` their
    ``A(kappa) / kappa``; ``means`` ``(P, d)`` unit proxy means ``m_p``, ``conc`` ``(P, d)`` positive
    per-dimension concentrations ``k_p``. The proxy's log-density (up to a shared constant) is

        log f_p(x) = -1/2 sum_d k_pd (x_d - m_pd)^2 + 1/2 sum_d (1 - m_pd^2) log k_pd

    and with the vMF moments ``E[x] = A mu``, ``E[x x^T] = (A/kappa) I + (1 - d A/kappa) mu mu^T``
    the expectation is closed-form:

        E[(x_d - m_d)^2] = A/kappa + (1 - d A/kappa) mu_d^2 - 2 A mu_d m_d + m_d^2.
    """
    d = mu.shape[1]
    a = a_over_kappa[:, None]
    big_a = (kappa * a_over_kappa)[:, None]
    quad = (
        a * conc.sum(dim=1)[None, :]
        + (1.0 - d * a) * (mu.pow(2) @ conc.T)
        - 2.0 * big_a * (mu @ (conc * means).T)
        + (conc * means.pow(2)).sum(dim=1)[None, :]
    )
    log_norm = 0.5 * ((1.0 - means.pow(2)) * conc.log()).sum(dim=1)
    return -0.5 * quad + log_norm[None, :]


#: the Debye polynomials u_1..u_4 of the uniform asymptotic expansion of I_nu (DLMF 10.41.10)
_DEBYE = (
    ((3, 1), (-5, 3), 24.0),
    ((81, 2), (-462, 4), (385, 6), 1152.0),
    ((30375, 3), (-369603, 5), (765765, 7), (-425425, 9), 414720.0),
    ((4465125, 4), (-94121676, 6), (349922430, 8), (-446185740, 10), (185910725, 12), 39813120.0),
)


def log_vmf_normaliser(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """``log C_d(kappa)`` of a von Mises-Fisher density ``C_d(kappa) exp(kappa mu.x)`` on
    ``S^{d-1}``: ``C_d = kappa^nu / ((2 pi)^{d/2} I_nu(kappa))``, ``nu = d/2 - 1``, ``d >= 3``.

    ``log I_nu(nu z)`` by the uniform asymptotic (Debye) expansion, terms to ``u_4 / nu^4``
    (DLMF 10.41.3): with ``w = sqrt(1 + z^2)``, ``t = 1/w``, ``eta = w + log(z / (1 + w))``,
    ``log I_nu(nu z) = nu eta - 1/2 log(2 pi nu) - 1/2 log w + log(1 + sum_k u_k(t) / nu^k)``.
    Differentiable and uniform in ``kappa``; against scipy's Bessel function the error of ``log C_d``
    is below 3e-3 at ``d = 5``, 1e-4 at ``d = 8`` and 1e-7 from ``d = 32`` on (tests). ``d = 3`` and
    ``d = 4`` are exact (``C_3 = kappa / (4 pi sinh kappa)``; torch's ``i1e`` for ``I_1``)."""
    if dim < 3:
        raise ValueError(f"log_vmf_normaliser: dim {dim} < 3")
    nu = dim / 2.0 - 1.0
    kappa = kappa.clamp_min(1e-6)
    if dim == 3:  # exact: C_3 = kappa / (4 pi sinh kappa)
        return torch.log(kappa) - math.log(2 * math.pi) - kappa - torch.log(-torch.expm1(-2 * kappa))
    if dim == 4:  # exact: torch has I_1 (exponentially scaled)
        return torch.log(kappa) - 2 * math.log(2 * math.pi) - torch.log(torch.special.i1e(kappa)) - kappa
    z = kappa / nu
    w = torch.sqrt(1.0 + z * z)
    t = 1.0 / w
    series = torch.ones_like(kappa)
    for k, poly in enumerate(_DEBYE, start=1):
        *coefs, denom = poly
        series = series + sum(c * t**e for c, e in coefs) / denom / nu**k
    log_i = (
        nu * (w + torch.log(z / (1.0 + w)))
        - 0.5 * math.log(2 * math.pi * nu)
        - 0.5 * torch.log(w)
        + torch.log(series)
    )
    return nu * torch.log(kappa) - dim / 2.0 * math.log(2 * math.pi) - log_i


def sample_vmf(
    mu: torch.Tensor, kappa: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num_samples`` draws of ``vMF(mu_i, kappa_i)`` for each row: ``(num_samples, n, d)``.

    Wood's (1994) algorithm: the component ``w = x.mu`` by rejection from the proposal
    ``w = (1 - (1 + b) e) / (1 - (1 - b) e)``, ``e ~ Beta((d-1)/2, (d-1)/2)``,
    ``b = (d - 1) / (2 kappa + sqrt(4 kappa^2 + (d - 1)^2))``, ``x0 = (1 - b) / (1 + b)``, accepted
    when ``kappa w + (d - 1) log(1 - x0 w) - kappa x0 - (d - 1) log(1 - x0^2) >= log u``; then
    ``x = w e_1 + sqrt(1 - w^2) v`` with ``v`` uniform on the tangent sphere, rotated onto ``mu`` by
    the Householder reflection that maps ``e_1`` to ``mu``.

    Reparameterised as the official code's sampler (s-vae's): the accepted ``e`` and ``v`` are
    held fixed, so gradients reach ``mu`` through the reflection and ``kappa`` through ``b`` in
    ``w(e, b)``; the rejection step's own gradient term (Naesseth et al. 2017) is left out. The
    random numbers are drawn on the CPU from ``generator`` (None: torch's global CPU generator,
    which the trainer seeds and checkpoints): the same draws on every device. ``e`` is drawn as
    ``(1 + g_1 / |g|) / 2`` of a standard normal ``g`` in ``R^d`` (the first coordinate of a
    uniform point on ``S^{d-1}``), which is ``Beta((d-1)/2, (d-1)/2)``."""
    n, d = mu.shape
    shape = (num_samples, n)
    k = kappa.detach().to("cpu", torch.float64).expand(shape)
    m1 = d - 1.0
    b = m1 / (2 * k + torch.sqrt(4 * k * k + m1 * m1))
    x0 = (1 - b) / (1 + b)
    c = k * x0 + m1 * torch.log1p(-x0 * x0)
    e = torch.empty(shape, dtype=torch.float64)
    pending = torch.ones(shape, dtype=torch.bool)
    for _ in range(10_000):
        count = int(pending.sum())
        if count == 0:
            break
        g = torch.randn(count, d, dtype=torch.float64, generator=generator)
        e_try = 0.5 * (1 + g[:, 0] / g.norm(dim=1))
        u = torch.rand(count, dtype=torch.float64, generator=generator)
        bp, x0p, cp, kp = b[pending], x0[pending], c[pending], k[pending]
        w_try = (1 - (1 + bp) * e_try) / (1 - (1 - bp) * e_try)
        ok = kp * w_try + m1 * torch.log1p(-x0p * w_try) - cp >= torch.log(u)
        idx = pending.nonzero(as_tuple=True)
        e[idx[0][ok], idx[1][ok]] = e_try[ok]
        pending[idx[0][ok], idx[1][ok]] = False
    else:  # pragma: no cover - acceptance is above 1/2 for every kappa and d
        raise RuntimeError("sample_vmf: Wood's rejection sampler did not finish")
    v = torch.randn(num_samples, n, d - 1, dtype=torch.float64, generator=generator)
    v = v / v.norm(dim=2, keepdim=True)
    e = e.to(mu.device, mu.dtype)
    v = v.to(mu.device, mu.dtype)
    kap = kappa.to(mu.dtype).clamp_min(1e-6)
    b_grad = m1 / (2 * kap + torch.sqrt(4 * kap * kap + m1 * m1))  # (n,), carries kappa's gradient
    w = (1 - (1 + b_grad) * e) / (1 - (1 - b_grad) * e)
    x = torch.cat([w[..., None], torch.sqrt((1 - w * w).clamp_min(0))[..., None] * v], dim=2)
    e1 = torch.zeros(d, dtype=mu.dtype, device=mu.device)
    e1[0] = 1.0
    h = e1 - mu
    h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)  # mu = e_1: h = 0, the identity
    return x - 2 * (x * h).sum(dim=2, keepdim=True) * h


def log_nivmf_density(x: torch.Tensor, means: torch.Tensor, conc: torch.Tensor) -> torch.Tensor:
    """The official code's non-isotropic vMF log-density of unit vectors ``x`` ``(..., d)`` under
    each proxy ``(means (P, d) unit, conc (P, d) positive)``: ``(..., P)``. With
    ``eta_p = k_p * m_p`` (elementwise) and ``rho_p = |eta_p|``:

        log f_p(x) = log C_d(rho_p) + eta_p . x + sum_d log k_pd - log rho_p,

    a vMF with natural parameter ``eta_p`` plus the log-determinant term of the paper's
    non-isotropic transform (``log_ppk_vmf_vec``'s ``logcp + norm * cos + detterm``)."""
    eta = conc * means
    rho = eta.norm(dim=1)
    const = log_vmf_normaliser(rho, means.shape[1]) + conc.log().sum(dim=1) - rho.log()
    return x @ eta.T + const


def mc_expected_likelihood(
    mu: torch.Tensor,
    kappa: torch.Tensor,
    means: torch.Tensor,
    conc: torch.Tensor,
    *,
    temperature: float,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo log expected (tempered) likelihood of every proxy under every image's vMF:
    ``(n, P)``, ``log (1/N) sum_s exp(log f_p(x_is) / tau)`` with ``x_is ~ vMF(mu_i, kappa_i)``,
    ``s = 1..N``, the same ``N`` draws of image ``i`` for all proxies (official
    ``log_ppk_vmf_vec``). It estimates ``log E_{x ~ vMF(mu_i, kappa_i)}[f_p(x)^{1/tau}]``."""
    x = sample_vmf(mu, kappa, num_samples, generator)  # (N, n, d)
    logl = log_nivmf_density(x, means, conc) / temperature  # (N, n, P)
    return torch.logsumexp(logl, dim=0) - math.log(num_samples)


@LOSSES.register(
    "vmf_proxies",
    ranges={
        "lam": "[0, 1]",
        "temperature": "(0, inf)",
        "init_concentration": "(0, 20000]",
        "proxies_per_class": "[1, 100]",
        "kappa_scale": "(0, inf)",
        "samples": "[1, 10000]",
    },
    runtime=("num_classes", "embedding_size"),
    search={
        "lambda": {"uniform": [0.05, 0.95], "start": 0.5},
        "temperature": {"loguniform": [0.1, 2.0], "start": 1.0},
        "proxies_per_class": {"choice": [1, 2, 4]},
        "init_concentration": {"loguniform": [4, 64], "start": 16},
        "kappa_scale": {"loguniform": [1, 30], "start": 10},
    },
)
class VMFProxiesLoss(BaseLoss):
    """Probabilistic proxy loss: vMF image distributions, non-isotropic proxies, the expected
    likelihood of each proxy under the image's distribution, softmax over classes.

    Image ``i`` with raw (unnormalised) embedding ``z_i`` is the von Mises-Fisher distribution
    ``vMF(mu_i, kappa_i)`` on the unit sphere, ``mu_i = z_i / |z_i|`` and concentration
    ``kappa_i = kappa_scale |z_i|``: the norm carries the model's certainty (hence
    ``expects_normalized = False``; retrieval uses ``mu_i`` only). Proxy ``p`` has a mean direction
    ``m_p`` and one concentration per dimension ``k_pd`` (non-isotropic: tight along some axes,
    loose along others). The class logits ``z_ic`` come from one of two similarities
    (``similarity``):

    - ``mc`` (default, the paper's): the non-isotropic vMF density of the official code
      (:func:`log_nivmf_density`; ``eta_p = k_p * m_p``, ``rho_p = |eta_p|``)

          log f_p(x) = log C_d(rho_p) + eta_p . x + sum_d log k_pd - log rho_p

      and the Monte Carlo log expected likelihood over ``N = samples`` draws
      ``x_is ~ vMF(mu_i, kappa_i)`` (Wood's sampler, :func:`sample_vmf`), tempered inside the mean
      as in the official ``log_ppk_vmf_vec``:
      ``sim_ip = log (1/N) sum_s exp(log f_p(x_is) / tau)`` (:func:`mc_expected_likelihood`);
    - ``closed_form``: the expected log-likelihood ``E_{x ~ vMF(mu_i, kappa_i)}[log f_p(x)]`` of
      the diagonal Fisher-Bingham-type density
      ``log f_p(x) = -1/2 sum_d k_pd (x_d - m_pd)^2 + 1/2 sum_d (1 - m_pd^2) log k_pd``,
      exact from the vMF's first two moments (:func:`expected_log_likelihood`), divided by ``tau``:
      ``sim_ip = E[log f_p] / tau``. Deterministic and cheaper; not the paper's.

    A class with ``K`` proxies scores ``z_ic = log mean_k exp(sim_ick)``. Then:

    - ``pos`` = ``-mean_i z_{i y_i}``;
    - ``ent`` = ``mean_i log sum_c exp(z_ic)``;

    ``total = 2 lambda pos + 2 (1 - lambda) ent`` (``lambda = 0.5``: the cross-entropy over
    classes, the paper's ProxyNCA++-style objective). An uncertain image (small ``kappa``) spreads
    its samples (or its ``E[x]`` is near 0) and scores alike for all classes, so the loss learns
    to make ``kappa`` large for clear images only.

    Follows: Kirchhof et al. 2022, EL-nivMF as the official code
    ExplainableML/Probabilistic_Deep_Metric_Learning:utilities.misc.log_ppk_vmf_vec (``similarity=mc``,
    20 samples as its ``loss_proxyvmf_n_samples`` default; ``closed_form`` is our own deterministic
    variant). Differs: (1) ``log C_d`` is the Debye expansion of the Bessel function
    (:func:`log_vmf_normaliser`) instead of the official per-dimension polynomial fit ``approx_log_cp``;
    (2) no ProxyAnchor "guidance" term (``guidance_w``: 0 by default there, 0.3-3 in its example runs);
    (3) the image concentration is ``kappa_scale |z|`` (official: ``|z|``, with the last layer's
    initial weights multiplied instead); (4) concentrations are ``exp`` of log-parameters clipped
    to ``LOG_CONCENTRATION_RANGE`` (official: raw, clamped at 0.1) and the temperature is a fixed
    parameter (1; official: learned, from 0.01); (5) ``K > 1`` proxies per class are mixed by
    log-mean-exp (official: one per class).

    Learnable: ``proxies`` ``(C * K, d)`` (mean directions, normalised when used; class ``c`` owns
    rows ``c*K .. c*K + K-1``) and ``log_concentration`` ``(C * K, d)``, initialised to
    ``log(init_concentration)``.

    Parameters: ``lambda`` in [0, 1] (0.5); ``temperature`` ``tau`` in (0, inf) (1; the
    concentrations are learned, so they carry the scale); ``init_concentration`` in (0, 20000]
    (16); ``proxies_per_class`` in [1, 100] (1); ``kappa_scale`` in (0, inf) (10);
    ``similarity`` ``mc`` or ``closed_form`` (``mc``); ``samples`` ``N`` in [1, 10000] (20; ``mc``
    only). The samples come from torch's global CPU generator, so the trial seed fixes them and a
    checkpoint (which saves that generator) resumes them.

    The closed form's approximations: (1) its density's normaliser is the tangent-plane
    (Laplace) one, exact for an isotropic proxy in the high-concentration limit, where
    ``log f_p`` is a vMF's ``k (m.x - 1) + (d-1)/2 log k``; (2) ``A(kappa)`` uses Amos's bound
    (:func:`vmf_moment_ratio`); (3) the mixture over a class's proxies combines expected
    log-likelihoods, not likelihoods.

    Why ``kappa_scale = 10`` (measured with the closed form): an image distribution only tells
    the classes apart once its concentration is of the order of the dimension, since
    ``A(kappa) ~ kappa / d`` below that (``E[x] = A mu``), and with an isotropic proxy
    ``S_ic = k A(kappa_i) m_c.mu_i + const``: the softmax's scale is ``k A``. A freshly initialised
    network's raw embeddings are short (the small CNN's: mean norm about 2.4-3.1 in training mode
    at ``d = 32`` on glyphs-tiny, about 4 at ``d = 64`` on glyphs), so with ``kappa_scale = 1`` the
    images start almost uniform (``A`` 0.08-0.09, softmax scale about 1.5 at ``k = 16``; about 1 at
    ``d = 64``): the classes' scores barely differ, the loss stays near ``log C`` and a short run
    spends itself on growing the norms instead of on the directions (glyphs-tiny, 23 training
    classes, ``log 23 = 3.14``, 2 epochs x 15 steps: epoch-mean total 3.14, 3.00; norm in eval mode
    0.44 -> 3.5). With ``kappa_scale = 10`` the images start at ``kappa`` about ``d`` (``A`` about
    0.6, scale about 9.7; epoch-mean total 3.24, 2.63). The official code does the same another
    way: it multiplies the last layer's initial weights by 10-50 ("start with a higher norm for
    images", ``init_norm_multiplier`` 10, 12, 30, 50 in its example runs). On glyphs-tiny and
    glyphs, ``kappa_scale = 10`` learns on every seed tried and beats 1 (three seeds of eight do
    not learn at 1) and 32-64 (per-seed figures in ``bench/RESULTS.md``, "Short-run checks of
    single losses").
    """

    family: ClassVar[Family] = "proxy"
    term_names: ClassVar[tuple[str, ...]] = ("pos", "ent")
    balance: ClassVar[Balance | None] = Balance(
        "pos", "ent", "raise the likelihood of each sample's own class proxy", "spread it over every class proxy (log-sum-exp)"
    )
    expects_normalized: ClassVar[bool] = False

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_size: int,
        lam: float = 0.5,
        temperature: float = 1.0,
        init_concentration: float = 16.0,
        proxies_per_class: int = 1,
        kappa_scale: float = 10.0,
        similarity: Literal["mc", "closed_form"] = "mc",
        samples: int = 20,
    ) -> None:
        super().__init__()
        self.similarity = similarity
        self.samples = samples
        self.num_classes = num_classes
        self.lam = lam
        self.temperature = temperature
        self.proxies_per_class = proxies_per_class
        self.kappa_scale = kappa_scale
        self.proxies = init_proxies(num_classes, proxies_per_class, embedding_size)
        self.log_concentration = torch.nn.Parameter(
            torch.full((num_classes * proxies_per_class, embedding_size), math.log(init_concentration))
        )

    def class_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(n, C)`` class logits ``z_ic`` (temperature included)."""
        norm = embeddings.norm(dim=1).clamp_min(1e-6)
        mu = embeddings / norm[:, None]
        kappa = self.kappa_scale * norm
        means = F.normalize(self.proxies.to(embeddings.dtype), dim=1)
        conc = self.log_concentration.to(embeddings.dtype).clamp(*LOG_CONCENTRATION_RANGE).exp()
        if self.similarity == "mc":  # tempered inside the Monte Carlo mean, then mixed
            sim = mc_expected_likelihood(
                mu, kappa, means, conc, temperature=self.temperature, num_samples=self.samples
            )
            return self._mix(sim)
        sim = expected_log_likelihood(mu, kappa, vmf_moment_ratio(kappa, mu.shape[1]), means, conc)
        return self._mix(sim) / self.temperature  # mixed, then tempered

    def _mix(self, sim: torch.Tensor) -> torch.Tensor:
        """``log mean_k exp(sim_ick)`` over each class's ``K`` proxies: ``(n, C * K) -> (n, C)``."""
        k = self.proxies_per_class
        if k == 1:
            return sim
        return torch.logsumexp(sim.view(len(sim), -1, k), dim=2) - math.log(k)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.class_scores(embeddings)
        rows = torch.arange(len(labels), device=z.device)
        pos = -z[rows, labels].mean()
        ent = torch.logsumexp(z, dim=1).mean()
        return self.combine({"pos": pos, "ent": ent})
