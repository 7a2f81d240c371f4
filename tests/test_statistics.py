"""hard_concrete samples follow the analytic hard-concrete distribution (Louizos et al. 2018).

With L = logit(u) ~ Logistic(0, 1), s = sigmoid((L + log_alpha) / beta) has
P(s <= y) = sigmoid(beta * logit(y) - log_alpha). z = clamp(s * (zeta - gamma) + gamma, 0, 1), so
    F(z) = P(Z <= z) = sigmoid(beta * logit((z - gamma) / (zeta - gamma)) - log_alpha),  0 <= z < 1,
    P(z = 0) = F(0) = sigmoid(beta * log(-gamma / zeta) - log_alpha),
    P(z = 1) = 1 - sigmoid(beta * log((1 - gamma) / (zeta - 1)) - log_alpha).
Samples are drawn with fixed seeds, so the tests are deterministic; the
thresholds are ones a correct sampler passes with probability > 0.999.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sparsekern
from helpers import HC, cpu_backends

N = 200_000
BETA, GAMMA, ZETA = HC["beta"], HC["gamma"], HC["zeta"]
KS_CRITICAL = 1.95  # P(sqrt(n) * D > 1.95) ~ 0.001 under the null (Kolmogorov distribution)
BINOMIAL_SIGMAS = 4.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hc_cdf(z, log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
    """P(Z <= z) for 0 <= z < 1."""
    y = (np.asarray(z, dtype=np.float64) - gamma) / (zeta - gamma)
    return _sigmoid(beta * (np.log(y) - np.log1p(-y)) - log_alpha)


def p_zero(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
    return float(_sigmoid(beta * math.log(-gamma / zeta) - log_alpha))


def p_one(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
    return 1.0 - float(_sigmoid(beta * math.log((1 - gamma) / (zeta - 1)) - log_alpha))


def ks_interior(z: np.ndarray, log_alpha: float, **params) -> float:
    """Kolmogorov-Smirnov distance of the samples in (0, 1) to the conditional CDF on (0, 1)."""
    inner = np.sort(z[(z > 0) & (z < 1)].astype(np.float64))
    f0, f1 = hc_cdf(0.0, log_alpha, **params), 1.0 - p_one(log_alpha, **params)
    cdf = (hc_cdf(inner, log_alpha, **params) - f0) / (f1 - f0)
    n = inner.size
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max())) * math.sqrt(n)


def samples(log_alpha: float, seed: int, backend: str = "torch", **params) -> np.ndarray:
    la = torch.full((N,), log_alpha)
    with sparsekern.use_backend(backend):
        return sparsekern.hard_concrete(la, seed, 12345, **{**HC, **params}).numpy()


def _binomial_z(count: int, p: float) -> float:
    return (count - N * p) / math.sqrt(N * p * (1 - p))


def test_analytic_masses_match_l0_norm():
    """The CDF above is consistent with docs/math.md's P(z != 0) used by l0_norm."""
    for la in (-2.0, 0.0, 1.5):
        expected = 1 - p_zero(la)
        got = float(sparsekern.l0_norm(torch.tensor([la], dtype=torch.float64), **HC))
        assert abs(got - expected) < 1e-12


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_hard_concrete_distribution(backend, log_alpha):
    z = samples(log_alpha, seed=2024 + int(log_alpha * 10), backend=backend)
    assert z.min() >= 0 and z.max() <= 1
    zeros, ones = int((z == 0).sum()), int((z == 1).sum())
    assert abs(_binomial_z(zeros, p_zero(log_alpha))) < BINOMIAL_SIGMAS, (zeros / N, p_zero(log_alpha))
    assert abs(_binomial_z(ones, p_one(log_alpha))) < BINOMIAL_SIGMAS, (ones / N, p_one(log_alpha))
    assert ks_interior(z, log_alpha) < KS_CRITICAL


@pytest.mark.parametrize(
    "wrong",
    [dict(beta=0.5), dict(beta=0.9), dict(gamma=-0.2), dict(zeta=1.05)],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_statistics_reject_a_wrong_sampler(wrong):
    """Power check: samples with a wrong temperature or stretch fail the same statistics."""
    log_alpha = 0.0
    z = samples(log_alpha, seed=77, **wrong)
    masses_off = max(abs(_binomial_z(int((z == 0).sum()), p_zero(log_alpha))),
                     abs(_binomial_z(int((z == 1).sum()), p_one(log_alpha))))
    assert masses_off > BINOMIAL_SIGMAS or ks_interior(z, log_alpha) > KS_CRITICAL


def test_uniform_is_uniform():
    u = sparsekern.uniform(N, 31337, 2**40).numpy().astype(np.float64)
    u.sort()
    d = max((np.arange(1, N + 1) / N - u).max(), (u - np.arange(N) / N).max())
    assert d * math.sqrt(N) < KS_CRITICAL
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
