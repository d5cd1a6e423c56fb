"""The marginal choice observer of benchmarks/choice_observers.py against independent computations:
the VAR(1) prior precision against the inverse of the joint covariance built from its stationary
solution, and the Laplace log marginal likelihood against numerical quadrature for one latent."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import integrate, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_script import load_benchmark  # noqa: E402


def _module():
    return load_benchmark("choice_observers")


def test_var1_fit_and_prior_precision_match_the_joint_covariance():
    m = _module()
    rng = np.random.default_rng(0)
    A = np.array([[0.9, 0.1], [-0.2, 0.7]])
    Q = np.array([[0.3, 0.05], [0.05, 0.2]])
    x = np.zeros((60000, 2))
    noise = rng.multivariate_normal(np.zeros(2), Q, size=len(x))
    for t in range(1, len(x)):
        x[t] = A @ x[t - 1] + noise[t]
    A_hat, Q_hat, P_hat = m._var1(x)
    np.testing.assert_allclose(A_hat, A, atol=0.02)
    np.testing.assert_allclose(Q_hat, Q, atol=0.01)
    T, D = 4, 2
    P = P_hat
    cov = np.zeros((T * D, T * D))  # Cov(x_t, x_s) = A^(t-s) P for t >= s
    for t in range(T):
        for s in range(T):
            block = np.linalg.matrix_power(A_hat, t - s) @ P if t >= s else P @ np.linalg.matrix_power(A_hat, s - t).T
            cov[t * D:(t + 1) * D, s * D:(s + 1) * D] = block
    np.testing.assert_allclose(m._prior_precision(A_hat, Q_hat, P, T), np.linalg.inv(cov), rtol=1e-6, atol=1e-8)


def test_laplace_log_marginal_ratio_matches_quadrature_for_one_latent():
    m = _module()
    rng = np.random.default_rng(1)
    N, prior_var = 6, 0.5
    W = rng.normal(0.0, 0.6, size=(N, 1))
    J = np.array([[1.0 / prior_var]])
    y = rng.poisson(3.0, size=(1, 1, N)).astype(float)

    def exact(c_N):
        f = lambda x: np.prod(stats.poisson.pmf(y[0, 0], np.exp(c_N + W[:, 0] * x))) * stats.norm.pdf(x, 0, prior_var ** 0.5)
        return np.log(integrate.quad(f, -8, 8, limit=200)[0])

    c_a, c_b = np.log(np.full(N, 3.0)), np.log(np.full(N, 3.0)) + rng.normal(0.0, 0.4, size=N)
    lap = [m._laplace_log_marginal(y, c[None, None, :], W, J)[0] for c in (c_a, c_b)]
    # Laplace drops the terms equal for every c (log y!, log det J): compare differences
    assert abs((lap[0] - lap[1]) - (exact(c_a) - exact(c_b))) < 0.05
