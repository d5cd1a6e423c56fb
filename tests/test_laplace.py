"""The Laplace machinery of benchmarks/_laplace.py (choice_observers.py, ndt_cosmoothing_ceiling.py)
against independent computations:
the VAR(1) prior precision against the inverse of the joint covariance built from its stationary
solution, and the Laplace log marginal likelihood against numerical quadrature for one latent."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _benchmark_script import load_benchmark  # noqa: E402


def _module():
    return load_benchmark("_laplace")


def test_var1_fit_and_prior_precision_match_the_joint_covariance():
    m = _module()
    rng = np.random.default_rng(0)
    A = np.array([[0.9, 0.1], [-0.2, 0.7]])
    Q = np.array([[0.3, 0.05], [0.05, 0.2]])
    x = np.zeros((60000, 2))
    noise = rng.multivariate_normal(np.zeros(2), Q, size=len(x))
    for t in range(1, len(x)):
        x[t] = A @ x[t - 1] + noise[t]
    A_hat, Q_hat, P_hat = m.var1(x)
    np.testing.assert_allclose(A_hat, A, atol=0.02)
    np.testing.assert_allclose(Q_hat, Q, atol=0.01)
    T, D = 4, 2
    P = P_hat
    cov = np.zeros((T * D, T * D))  # Cov(x_t, x_s) = A^(t-s) P for t >= s
    for t in range(T):
        for s in range(T):
            block = np.linalg.matrix_power(A_hat, t - s) @ P if t >= s else P @ np.linalg.matrix_power(A_hat, s - t).T
            cov[t * D:(t + 1) * D, s * D:(s + 1) * D] = block
    np.testing.assert_allclose(m.prior_precision(A_hat, Q_hat, P, T), np.linalg.inv(cov), rtol=1e-6, atol=1e-8)


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
    lap = [m.laplace_log_marginal(y, c[None, None, :], W, J)[0] for c in (c_a, c_b)]
    # Laplace drops the terms equal for every c (log y!, log det J): compare differences
    assert abs((lap[0] - lap[1]) - (exact(c_a) - exact(c_b))) < 0.05


def _toy(seed, T=5, N=7, D=2):
    m = _module()
    rng = np.random.default_rng(seed)
    A = np.array([[0.8, 0.1], [-0.1, 0.6]])[:D, :D]
    Q = np.diag([0.3, 0.2])[:D, :D]
    from scipy.linalg import solve_discrete_lyapunov
    J = m.prior_precision(A, Q, solve_discrete_lyapunov(A, Q), T)
    W = rng.normal(0.0, 0.7, size=(N, D))
    c = np.log(rng.uniform(0.5, 3.0, size=(T, N)))
    y = rng.poisson(np.exp(c)).astype(float)
    return m, J, W, c, y


def test_leave_one_out_mode_and_variance_match_a_dense_optimisation():
    """The banded Newton of leave_one_out_rates against scipy.optimize on the dense log posterior,
    with the predictive variance from the dense inverse Hessian."""
    from scipy.optimize import minimize

    m, J, W, c, y = _toy(2)
    T, N = y.shape
    D = W.shape[1]
    got = m.leave_one_out_rates(y, c, W, J)
    for n in (0, 3, N - 1):
        keep = np.arange(N) != n

        def neg_log_post(xf):
            x = xf.reshape(T, D)
            eta = c[:, keep] + x @ W[keep].T
            return -(y[:, keep] * eta - np.exp(eta)).sum() + 0.5 * xf @ J @ xf

        def grad(xf):
            x = xf.reshape(T, D)
            lam = np.exp(c[:, keep] + x @ W[keep].T)
            return ((lam - y[:, keep]) @ W[keep]).reshape(-1) + J @ xf

        x = minimize(neg_log_post, np.zeros(T * D), jac=grad, method="BFGS", options={"gtol": 1e-10}).x
        lam = np.exp(c[:, keep] + x.reshape(T, D) @ W[keep].T)
        H = J.copy()
        for t in range(T):
            H[t * D:(t + 1) * D, t * D:(t + 1) * D] += (W[keep].T * lam[t]) @ W[keep]
        S = np.linalg.inv(H)
        var = np.array([W[n] @ S[t * D:(t + 1) * D, t * D:(t + 1) * D] @ W[n] for t in range(T)])
        want = np.exp(c[:, n] + x.reshape(T, D) @ W[n] + 0.5 * var)
        np.testing.assert_allclose(got[:, n], want, rtol=1e-5)


def test_leave_one_out_rate_matches_numerical_integration_for_one_latent_and_ignores_the_held_out_counts():
    """One bin, one latent: the Laplace predictive mean E[exp(c_n + w_n x) | others] against the
    exact posterior integrated on a fine grid (Laplace is asymptotic in the number of units: 200
    here, where its error is ~0.2 %); and the held-out unit's own count never enters."""
    m = _module()
    rng = np.random.default_rng(3)
    N, prior_var = 200, 0.5
    W = rng.normal(0.0, 0.5, size=(N, 1))
    J = np.array([[1.0 / prior_var]])
    c = np.log(np.full((1, N), 2.0))
    y = rng.poisson(np.exp(c + 0.6 * W[:, 0])).astype(float)
    got = m.leave_one_out_rates(y, c, W, J)
    n = 0
    others = np.arange(N) != n
    x = np.linspace(-6.0, 6.0, 4001)
    eta = c[0, others][:, None] + W[others, 0][:, None] * x[None, :]
    log_post = (y[0, others][:, None] * eta - np.exp(eta)).sum(0) - 0.5 * x * x / prior_var
    p = np.exp(log_post - log_post.max())
    want = (p * np.exp(c[0, n] + W[n, 0] * x)).sum() / p.sum()
    assert abs(got[0, n] / want - 1.0) < 0.005
    y2 = y.copy()
    y2[0, n] += 7.0
    assert m.leave_one_out_rates(y2, c, W, J)[0, n] == got[0, n]


def test_leave_one_out_rate_of_a_unit_without_internal_loadings_is_its_known_rate():
    m, J, W, c, y = _toy(4)
    W[2] = 0.0
    np.testing.assert_allclose(m.leave_one_out_rates(y, c, W, J)[:, 2], np.exp(c[:, 2]), rtol=0, atol=0)


def test_forward_rates_match_a_dense_optimisation_and_ignore_the_predicted_bins():
    """Forward prediction of bins start..stop-1 from every unit's counts before start: the banded
    Newton against scipy.optimize on the dense log posterior (data term on the earlier bins only),
    predictive variances from the dense inverse Hessian; the predicted bins' own counts never enter."""
    from scipy.optimize import minimize

    m, J, W, c, y = _toy(5, T=6)
    T, N = y.shape
    D = W.shape[1]
    start, stop = 3, 5
    got = m.forward_rates(y, c, W, J, start, stop)
    obs = (np.arange(T) < start)[:, None]

    def neg_log_post(xf):
        eta = c + xf.reshape(T, D) @ W.T
        return -(obs * (y * eta - np.exp(eta))).sum() + 0.5 * xf @ J @ xf

    def grad(xf):
        lam = np.exp(c + xf.reshape(T, D) @ W.T)
        return ((obs * (lam - y)) @ W).reshape(-1) + J @ xf

    x = minimize(neg_log_post, np.zeros(T * D), jac=grad, method="BFGS", options={"gtol": 1e-10}).x.reshape(T, D)
    lam = obs * np.exp(c + x @ W.T)
    H = J.copy()
    for t in range(T):
        H[t * D:(t + 1) * D, t * D:(t + 1) * D] += (W.T * lam[t]) @ W
    S = np.linalg.inv(H)
    want = np.array([[np.exp(c[t, n] + x[t] @ W[n] + 0.5 * W[n] @ S[t * D:(t + 1) * D, t * D:(t + 1) * D] @ W[n])
                      for n in range(N)] for t in range(start, stop)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    y2 = y.copy()
    y2[start:] += 5.0
    np.testing.assert_array_equal(m.forward_rates(y2, c, W, J, start, stop), got)
    with pytest.raises(ValueError, match="start"):
        m.forward_rates(y, c, W, J, 0, 2)


def test_ceiling_benchmark_refuses_mismatched_corpora_and_a_bad_split(monkeypatch, capsys):
    ceiling = load_benchmark("ndt_cosmoothing_ceiling")
    monkeypatch.setattr(sys, "argv", ["ndt_cosmoothing_ceiling.py", "RUN_A", "RUN_B", "RUN_C",
                                      "--corpus", "C1", "C2"])
    with pytest.raises(SystemExit, match="--corpus takes one directory or one per run; got 2 for 3 runs"):
        ceiling.main()
    with pytest.raises(SystemExit, match="--split must be 'test' or 'val', got 'train'"):
        ceiling.ceiling("RUN", "CORPUS", split="train")
