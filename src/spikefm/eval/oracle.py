"""Ground-truth oracle of rate-predicting models on synthetic data (numpy/scipy, no torch).

When counts are sampled from known Poisson expected counts, the oracle bits per spike is
:func:`spikefm.eval.metrics.bps_pooled` (or ``bps_per_neuron_mean``) evaluated with the true
expected counts as ``rates``: the ceiling a learned model can approach. Shapes as in
:mod:`spikefm.eval.metrics` (neurons on the last axis).
"""
from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from spikefm.eval.metrics import bps_pooled, bps_per_neuron_mean

__all__ = ["oracle_bps_pooled", "oracle_bps_per_neuron_mean", "ideal_observer_log_ratio",
           "ideal_observer_favours_truth"]


def oracle_bps_pooled(expected, counts, *, null_rates=None) -> float:
    """Oracle bits per spike: ``bps_pooled(expected, counts)``, the true expected counts as rates.

    Same shapes as :func:`spikefm.eval.metrics.bps_pooled` (neurons on the last axis).
    """
    return bps_pooled(expected, counts, null_rates=null_rates)


def oracle_bps_per_neuron_mean(expected, counts, *, null_rates=None) -> float:
    """Oracle for the per-neuron convention: ``bps_per_neuron_mean(expected, counts)``."""
    return bps_per_neuron_mean(expected, counts, null_rates=null_rates)


def ideal_observer_log_ratio(counts, rates_a, rates_b) -> np.ndarray:
    """(K,) Poisson log-likelihood ratio ``log p(counts | rates_a) - log p(counts | rates_b)`` of each
    trial (first axis; sums over all other axes; NaN counts left out).

    The ideal observer of a two-way label: on synthetic data ``rates_a`` are the true expected
    counts and ``rates_b`` those of the same trial with the label's latent flipped (everything else,
    noise included, held at the truth), so a positive ratio means the spikes favour the true label.
    Its accuracy bounds every decoder that reads the spikes: what the Poisson noise of these units
    allows, where a decoder of the noiseless latents reaches 1.0. It knows the other latents
    exactly, so it is an upper bound, not an achievable target.
    """
    c = np.asarray(counts, dtype=np.float64)
    a = np.asarray(rates_a, dtype=np.float64)
    b = np.asarray(rates_b, dtype=np.float64)
    if not (c.shape == a.shape == b.shape) or c.ndim < 1:
        raise ValueError(f"counts, rates_a and rates_b must share one shape (trials first), got {c.shape}, "
                         f"{a.shape} and {b.shape}")
    ok = ~np.isnan(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(ok, xlogy(np.where(ok, c, 0.0), a) - xlogy(np.where(ok, c, 0.0), b) - (a - b), 0.0)
    return term.reshape(c.shape[0], -1).sum(axis=1)


def ideal_observer_favours_truth(counts_KTN, latents_KTZ, loadings_NZ, biases_N, latent: int, *,
                                 max_count: float = np.inf, seed: int = 0) -> np.ndarray:
    """(K,) bool: on each trial, does the ideal observer of a signed two-way latent (the synthetic
    ``choice``) favour its true sign? Rates follow the generator's readout,
    ``min(exp(latents @ loadings.T + biases), max_count)``, once with the latents as they are and once
    with latent ``latent`` negated; the spikes' :func:`ideal_observer_log_ratio` decides (a tie,
    e.g. a trial whose latent is 0 throughout, by a coin seeded with ``seed``). Its mean is the
    ideal observer's accuracy."""
    z = np.asarray(latents_KTZ, dtype=np.float64)
    w = np.asarray(loadings_NZ, dtype=np.float64)
    b = np.asarray(biases_N, dtype=np.float64)
    if z.ndim != 3 or w.ndim != 2 or w.shape[1] != z.shape[2] or b.shape != (w.shape[0],):
        raise ValueError(f"latents must be (K, T, Z), loadings (N, Z) and biases (N,), got {z.shape}, "
                         f"{w.shape} and {b.shape}")
    if not 0 <= latent < z.shape[2]:
        raise ValueError(f"latent must index one of the {z.shape[2]} latents, got {latent}")
    flipped = z.copy()
    flipped[..., latent] *= -1.0
    llr_K = ideal_observer_log_ratio(counts_KTN, np.minimum(np.exp(z @ w.T + b), max_count),
                                     np.minimum(np.exp(flipped @ w.T + b), max_count))
    coin = np.random.default_rng(seed).random(llr_K.size) < 0.5
    return np.where(llr_K == 0, coin, llr_K > 0)
