"""Laplace approximations for the synthetic generator's latent-variable model, shared by the
benchmarks that ask what an observer who knows the generator could do (``choice_observers.py``,
``ndt_cosmoothing_ceiling.py``).

The model: counts ``y[t, n] ~ Poisson(exp(c[t, n] + x[t] @ W[n]))``, where ``c`` holds everything
the observer knows (biases and the trial's event latents through their loadings) and the internal
latents ``x`` follow a VAR(1), ``x_t = A x_(t-1) + e_t``, ``e_t ~ N(0, Q)``, the first state from
the stationary distribution. Everything here is numpy / scipy; nothing is trained.
"""
from __future__ import annotations

import numpy as np


def var1(x_GD: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares VAR(1) x_t = A x_(t-1) + e, e ~ N(0, Q), and its stationary covariance P."""
    from scipy.linalg import solve_discrete_lyapunov

    A = np.linalg.lstsq(x_GD[:-1], x_GD[1:], rcond=None)[0].T
    Q = np.cov((x_GD[1:] - x_GD[:-1] @ A.T).T)
    return A, Q, solve_discrete_lyapunov(A, Q)


def prior_precision(A: np.ndarray, Q: np.ndarray, P: np.ndarray, T: int) -> np.ndarray:
    """(T*D, T*D) precision of T consecutive states of the VAR(1), the first one stationary
    (block-tridiagonal: state t is coupled to t-1 and t+1 only)."""
    D = A.shape[0]
    Qi, Pi = np.linalg.inv(Q), np.linalg.inv(P)
    J = np.zeros((T * D, T * D))
    for t in range(T):
        s = slice(t * D, (t + 1) * D)
        J[s, s] += Pi if t == 0 else Qi
        if t < T - 1:
            n = slice((t + 1) * D, (t + 2) * D)
            J[s, s] += A.T @ Qi @ A
            J[s, n] -= A.T @ Qi
            J[n, s] -= Qi @ A
    return J


def laplace_log_marginal(y_KTN: np.ndarray, c_KTN: np.ndarray, W_ND: np.ndarray, J: np.ndarray,
                         iters: int = 50) -> np.ndarray:
    """(K,) Laplace approximation of log p(y | c) (up to terms equal for every c) for
    y ~ Poisson(exp(c + x W')), x ~ N(0, J^-1): Newton's method to the posterior mode, then the
    log-likelihood + log-prior there - 1/2 log det of the posterior precision. (The generator caps
    expected counts at its ``max_count``; this ignores the cap.)"""
    K, T, _ = y_KTN.shape
    D = W_ND.shape[1]
    x = np.zeros((K, T * D))

    def precision(lam_KTN):
        H = np.repeat(J[None], K, axis=0)
        blocks = np.einsum("ktn,nd,ne->ktde", lam_KTN, W_ND, W_ND)
        for t in range(T):
            H[:, t * D:(t + 1) * D, t * D:(t + 1) * D] += blocks[:, t]
        return H

    for _ in range(iters):
        lam = np.exp(np.minimum(c_KTN + x.reshape(K, T, D) @ W_ND.T, 30.0))  # no overflow on the way
        grad = ((lam - y_KTN) @ W_ND).reshape(K, T * D) + x @ J
        step = np.linalg.solve(precision(lam), grad[..., None])[..., 0]
        x -= step
        if np.abs(step).max() < 1e-8:
            break
    eta = c_KTN + x.reshape(K, T, D) @ W_ND.T
    lam = np.exp(eta)
    return ((y_KTN * eta - lam).sum((1, 2)) - 0.5 * np.einsum("ki,ij,kj->k", x, J, x)
            - 0.5 * np.linalg.slogdet(precision(lam))[1])


def _banded_upper(H: np.ndarray, u: int) -> np.ndarray:
    """The upper band form scipy.linalg.solveh_banded takes: ab[u + i - j, j] = H[i, j]."""
    n = H.shape[0]
    ab = np.zeros((u + 1, n))
    for k in range(u + 1):
        ab[u - k, k:] = np.diagonal(H, k)
    return ab


def _mode(y_TN, c_TN, W_ND, J, obs_TN, x0, iters):
    """Posterior mode of the window's internal latents given the counts at the entries where
    ``obs_TN`` is True, Newton's method with banded solves (the posterior precision is
    block-tridiagonal); returns the mode (T, D) and the banded posterior precision there."""
    from scipy.linalg import solveh_banded

    T, D = y_TN.shape[0], W_ND.shape[1]
    m_TN = obs_TN.astype(np.float64)
    J_ab = _banded_upper(J, min(2 * D - 1, T * D - 1))  # the prior's band, once per call
    u = J_ab.shape[0] - 1
    a, b = np.triu_indices(D)  # upper triangle of each D x D block: band row u + a - b, column t*D + b
    rows, cols = u + a - b, np.arange(T)[:, None] * D + b[None, :]

    def rates_and_precision(x):
        lam = np.exp(np.minimum(c_TN + x @ W_ND.T, 30.0)) * m_TN  # no overflow on the way to the mode
        ab = J_ab.copy()
        ab[rows[None, :], cols] += np.einsum("tn,nd,ne->tde", lam, W_ND, W_ND)[:, a, b]
        return lam, ab

    x = x0.copy()
    for _ in range(iters):
        lam, ab = rates_and_precision(x)
        step = solveh_banded(ab, ((lam - y_TN * m_TN) @ W_ND).reshape(-1) + J @ x.reshape(-1))
        x = x - step.reshape(T, D)
        if np.abs(step).max() < 1e-8:
            break
    return x, rates_and_precision(x)[1]


def _predict(x, ab, c_TN, W_ND, bins, units):
    """E[exp(c + W_n x_t)] under the Gaussian (mode x, precision ab) for t in bins, n in units."""
    from scipy.linalg import solveh_banded

    T, D = x.shape
    W = W_ND[units]
    if len(units) == 1:  # one unit: project on its loadings first (len(bins) right-hand sides)
        R = np.zeros((T * D, len(bins)))
        for i, t in enumerate(bins):
            R[t * D:(t + 1) * D, i] = W[0]
        var = np.einsum("it,it->t", R, solveh_banded(ab, R))[:, None]
    else:  # the bins' own D x D covariance blocks (len(bins) * D right-hand sides)
        R = np.zeros((T * D, len(bins) * D))
        for i, t in enumerate(bins):
            R[t * D:(t + 1) * D, i * D:(i + 1) * D] = np.eye(D)
        S = (R.T @ solveh_banded(ab, R)).reshape(len(bins), D, len(bins), D)
        S_tDD = S[np.arange(len(bins)), :, np.arange(len(bins)), :]
        var = np.einsum("nd,tde,ne->tn", W, S_tDD, W)
    return np.exp(c_TN[np.ix_(bins, units)] + x[bins] @ W.T + 0.5 * var)


def forward_rates(y_TN: np.ndarray, c_TN: np.ndarray, W_ND: np.ndarray, J: np.ndarray, start: int, stop: int,
                  *, iters: int = 50) -> np.ndarray:
    """(stop - start, N) expected counts of every unit in bins start..stop-1 predicted from every
    unit's counts in the bins before ``start`` (forward prediction, as the walk's chunks are
    scored): the Laplace posterior of the internal latents given those counts, the dynamics
    carrying it forward, E[exp(c + W_n x_t)] under it."""
    T, N = y_TN.shape
    if not 0 < start < stop <= T:
        raise ValueError(f"need 0 < start < stop <= {T}, got start={start}, stop={stop}")
    obs = np.zeros((T, N), dtype=bool)
    obs[:start] = True
    x, ab = _mode(y_TN, c_TN, W_ND, J, obs, np.zeros((T, W_ND.shape[1])), iters)
    return _predict(x, ab, c_TN, W_ND, list(range(start, stop)), np.arange(N))


def leave_one_out_rates(y_TN: np.ndarray, c_TN: np.ndarray, W_ND: np.ndarray, J: np.ndarray, *,
                        iters: int = 50) -> np.ndarray:
    """(T, N) expected counts of each unit predicted from the other units' counts in one window:
    the Laplace posterior of the internal latents given the others' counts (mode x, covariance
    S = H^-1), then E[exp(c + W_n x)] under that Gaussian, exp(c + W_n x + W_n S_tt W_n' / 2).

    This is co-smoothing (every unit held out in turn, all bins) for an observer that knows the
    generator: its readout, the known part ``c`` and the latents' dynamics (``J``, from
    :func:`prior_precision`). Units without internal loadings are predicted as exp(c) exactly.
    """
    T, N = y_TN.shape
    D = W_ND.shape[1]
    x_all, _ = _mode(y_TN, c_TN, W_ND, J, np.ones((T, N), dtype=bool), np.zeros((T, D)), iters)
    out = np.empty((T, N))
    for n in range(N):
        if not np.any(W_ND[n]):
            out[:, n] = np.exp(c_TN[:, n])
            continue
        obs = np.ones((T, N), dtype=bool)
        obs[:, n] = False
        x, ab = _mode(y_TN, c_TN, W_ND, J, obs, x_all, iters)  # warm start from everyone's mode
        out[:, n] = _predict(x, ab, c_TN, W_ND, list(range(T)), [n])[:, 0]
    return out
