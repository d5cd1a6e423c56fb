"""Ground-truth token oracle of the spike language model on synthetic data (numpy/scipy).

When counts are sampled from known Poisson expected counts, :func:`poisson_token_logprob` gives
the log-probability of each token of the Neural Pile sequence
``spikefm.families.ar.tokens.tokenize(counts)`` under the true rates, and
:func:`oracle_token_loss` its mean negative (the best achievable cross-entropy per token if units
are conditionally independent given the rates). The rate-model oracle (bits per spike of the true
rates) is :mod:`spikefm.eval.oracle`.

Layout note: these functions take (units, bins) arrays like ``tokenize``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import gammaln, xlogy
from scipy.stats import poisson

from spikefm.families.ar.tokens import MAX_COUNT_TOKEN, tokenize

__all__ = ["poisson_token_logprob", "oracle_token_loss"]


def _check_counts_expected(counts_NT, expected_NT) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(counts_NT)
    expected = np.asarray(expected_NT, dtype=np.float64)
    if counts.ndim != 2 or counts.shape != expected.shape:
        raise ValueError(
            f"counts_NT and expected_NT must both be (units, bins) arrays of the same shape, got "
            f"{counts.shape} and {expected.shape}"
        )
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"counts_NT must be an integer array (uint8 as in the Neural Pile), got "
                        f"{counts.dtype}; convert with counts.astype(np.uint8)")
    if counts.size and counts.min() < 0:
        raise ValueError(f"counts_NT must be >= 0, found {counts.min()}")
    if not np.all(np.isfinite(expected)) or (expected.size and expected.min() < 0):
        raise ValueError("expected_NT must be finite, non-negative expected counts per bin")
    return counts, expected


def poisson_token_logprob(counts_NT, expected_NT) -> np.ndarray:
    """Per-token log-probabilities (nats) of ``tokenize(counts_NT)`` under true Poisson rates.

    The sequence is, for each bin t, ``[255, c_1t, ..., c_Nt]`` (counts clipped at 254). Because
    the layout is fixed, a separator has probability 1 (log-probability 0). A count token c < 254
    has ``log Poisson(c; lambda)``; the clipped token 254 stands for every count >= 254 and has
    ``log P(count >= 254) = poisson.logsf(253, lambda)``. A zero expected count gives 0 for token 0
    and ``-inf`` for any other token (no clipping).

    Args:
        counts_NT: (units, bins) integer counts (uint8 in the Neural Pile).
        expected_NT: (units, bins) true expected counts per bin, >= 0.

    Returns:
        (bins * (units + 1),) float64, aligned element by element with ``tokenize(counts_NT)``.
    """
    counts, expected = _check_counts_expected(counts_NT, expected_NT)
    num_units, num_bins = counts.shape
    tokens_TN = tokenize(counts).reshape(num_bins, num_units + 1)[:, 1:].astype(np.float64)
    lam_TN = expected.T
    with np.errstate(divide="ignore"):
        logp_TN = xlogy(tokens_TN, lam_TN) - lam_TN - gammaln(tokens_TN + 1.0)
    tail = tokens_TN == MAX_COUNT_TOKEN
    if tail.any():
        logp_TN[tail] = poisson.logsf(MAX_COUNT_TOKEN - 1, lam_TN[tail])
    out = np.zeros((num_bins, num_units + 1), dtype=np.float64)
    out[:, 1:] = logp_TN
    return out.reshape(-1)


def oracle_token_loss(counts_NT, expected_NT, *, include_separators: bool = True) -> float:
    """Mean negative log-probability (nats per token) of the token sequence under the true rates.

    With ``include_separators=True`` the mean runs over all ``bins * (units + 1)`` tokens (as a
    language-model loss averaged over every position); otherwise over count tokens only.
    """
    logp = poisson_token_logprob(counts_NT, expected_NT)
    num_units = np.shape(counts_NT)[0]
    if not include_separators:
        logp = logp.reshape(-1, num_units + 1)[:, 1:]
    if logp.size == 0:
        raise ValueError("no tokens to average over (empty counts)")
    return float(-logp.mean())
