"""Ground-truth oracle of rate-predicting models on synthetic data (numpy/scipy, no torch).

Also the synthetic truth of a corpus session (:func:`session_truth`) sliced onto windows
(:func:`truth_windows`, :func:`truth_latent_windows`), shared by every family's evaluation.

When counts are sampled from known Poisson expected counts, the oracle bits per spike is
:func:`spikefm.eval.metrics.bps_pooled` (or ``bps_per_neuron_mean``) evaluated with the true
expected counts as ``rates``: the ceiling a learned model can approach. Shapes as in
:mod:`spikefm.eval.metrics` (neurons on the last axis).
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import xlogy

from spikefm.eval.metrics import bps_pooled, bps_per_neuron_mean

if TYPE_CHECKING:
    from spikefm.data.windows import SessionWindows

__all__ = ["oracle_bps_pooled", "oracle_bps_per_neuron_mean", "ideal_observer_log_ratio",
           "ideal_observer_favours_truth", "session_truth", "truth_windows", "truth_latent_windows"]


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


# ---------------------------------------------------------------------------------------------
# Synthetic truth on windows


def session_truth(corpus, session_id: str) -> dict | None:
    """The synthetic truth dict (:func:`spikefm.corpus.synth.load_truth`) of a corpus session:
    ``<stem>.truth.npz`` next to the NWB file its manifest names; None when there is none (real
    data), or when it is not the truth of the recording the corpus was built from
    (:func:`truth_of_session`)."""
    try:
        meta = corpus.session(session_id)
    except KeyError:
        return None
    return truth_of_session(meta)


def truth_of_session(meta: dict) -> dict | None:
    """The synthetic truth (:func:`spikefm.corpus.synth.load_truth`) beside the NWB file of a
    session's manifest entry ``meta``; None as :func:`truth_file_of_session` says."""
    from spikefm.corpus.synth import load_truth

    path = truth_file_of_session(meta)
    return None if path is None else load_truth(path)


def truth_file_of_session(meta: dict, use: str = "oracle") -> Path | None:
    """The ``.truth.npz`` beside the NWB file of a session's manifest entry ``meta``; None when
    there is none, or (with a warning) when the NWB file is no longer the one the corpus was built
    from (its sha256 differs from the manifest's): recordings regenerated into the same folder
    (``spikefm synth --overwrite``) have a new truth, which scored the old counts without a word.
    The hash is computed once per file state (path, size, modification time) in a process.
    ``use`` names what is given up in the warning ("oracle", "ground-truth families")."""
    from spikefm.corpus.synth import truth_path

    prov = meta.get("provenance") or {}
    nwb = prov.get("path")
    if not nwb or not str(nwb).endswith(".nwb") or not truth_path(nwb).is_file():
        return None
    recorded = prov.get("sha256")
    if recorded and Path(nwb).is_file():
        st = Path(nwb).stat()
        if _file_sha256(str(nwb), st.st_size, st.st_mtime_ns) != recorded:
            warnings.warn(f"no {use} for session {meta.get('session_id')}: {nwb} changed since the corpus was built "
                          "from it (regenerated?), so the truth file beside it is not that of the corpus's counts; "
                          f"rebuild the corpus from the current files to use the {use}", RuntimeWarning, stacklevel=3)
            return None
    return truth_path(nwb)


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached by its state (a scorer reads a session's truth once per row)."""
    from spikefm.corpus.nwb import sha256_file

    return sha256_file(path)


def truth_windows(truth: dict, windows: SessionWindows) -> np.ndarray:
    """Slice synthetic ground truth onto windows.

    Args:
        truth: a synthetic truth dict (``spikefm.corpus.synth.load_truth``) with
            ``expected_counts`` (units, bins), ``t_start_ms`` and ``bin_ms``.
        windows: windows of the same session.

    Returns:
        (K, T, N) float64 true expected counts per bin, aligned with ``windows.counts``.
    """
    for key in ("expected_counts", "t_start_ms", "bin_ms"):
        if key not in truth:
            raise ValueError(f"truth must hold {key!r} (a synthetic truth file's contents), got keys "
                             f"{sorted(truth)[:20]}")
    exp_NG = np.asarray(truth["expected_counts"])
    bin_ms = int(truth["bin_ms"])
    index = windows.unit_index
    if exp_NG.ndim == 2 and index is not None and index.size == windows.num_units and \
            exp_NG.shape[0] != windows.num_units and index.size and exp_NG.shape[0] > index.max():
        exp_NG = exp_NG[index]  # a firing-rate filter kept these units
    if exp_NG.ndim != 2 or exp_NG.shape[0] != windows.num_units:
        raise ValueError(f"truth expected_counts must be (units, bins) with {windows.num_units} units, "
                         f"got shape {exp_NG.shape}")
    if bin_ms != windows.bin_ms:
        raise ValueError(f"truth has {bin_ms} ms bins, the windows {windows.bin_ms} ms; cut windows "
                         "from a corpus built with the truth's bin width")
    idx_KT = _truth_bins(truth, windows, exp_NG.shape[1])
    return exp_NG[:, idx_KT].transpose(1, 2, 0).astype(np.float64)


def truth_latent_windows(truth: dict, windows: SessionWindows) -> np.ndarray | None:
    """(K, T, Z) true latents on the windows' bins (None when the truth holds no latents)."""
    if "latents" not in truth:
        return None
    z_GZ = np.asarray(truth["latents"], dtype=np.float64)
    return z_GZ[_truth_bins(truth, windows, z_GZ.shape[0])]


def _truth_bins(truth: dict, windows: SessionWindows, total_bins: int) -> np.ndarray:
    """(K, T) indices of the windows' bins in the truth's ``total_bins`` bins (ValueError when a
    window starts off the truth's bin grid or reaches outside it)."""
    t0, bin_ms = int(truth["t_start_ms"]), int(truth["bin_ms"])
    off = windows.t_start_ms - t0
    if np.any(off % bin_ms):
        raise ValueError("window starts are off the truth's bin grid")
    start_K = off // bin_ms
    if windows.num_windows and (start_K.min() < 0 or start_K.max() + windows.num_bins > total_bins):
        raise ValueError(f"windows reach outside the truth's {total_bins} bins starting at {t0} ms")
    return start_K[:, None] + np.arange(windows.num_bins)[None, :]
