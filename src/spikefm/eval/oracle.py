"""Ground-truth oracle of rate-predicting models on synthetic data (numpy/scipy, no torch).

When counts are sampled from known Poisson expected counts, the oracle bits per spike is
:func:`spikefm.eval.metrics.bps_pooled` (or ``bps_per_neuron_mean``) evaluated with the true
expected counts as ``rates``: the ceiling a learned model can approach. Shapes as in
:mod:`spikefm.eval.metrics` (neurons on the last axis).
"""
from __future__ import annotations

from spikefm.eval.metrics import bps_pooled, bps_per_neuron_mean

__all__ = ["oracle_bps_pooled", "oracle_bps_per_neuron_mean"]


def oracle_bps_pooled(expected, counts, *, null_rates=None) -> float:
    """Oracle bits per spike: ``bps_pooled(expected, counts)``, the true expected counts as rates.

    Same shapes as :func:`spikefm.eval.metrics.bps_pooled` (neurons on the last axis).
    """
    return bps_pooled(expected, counts, null_rates=null_rates)


def oracle_bps_per_neuron_mean(expected, counts, *, null_rates=None) -> float:
    """Oracle for the per-neuron convention: ``bps_per_neuron_mean(expected, counts)``."""
    return bps_per_neuron_mean(expected, counts, null_rates=null_rates)
