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

__all__ = ["oracle_bps_pooled", "oracle_bps_per_neuron_mean", "ideal_observer_log_ratio"]


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
