"""Binning spike times into uint8 count matrices, vectorized over all units at once."""
from __future__ import annotations

import numpy as np

#: Work on at most this many (unit, bin) cells at a time, to bound the int64 scratch memory.
_MAX_BLOCK_CELLS = 1 << 24


def bin_edges_s(t_start_ms: int, num_bins: int, bin_ms: int) -> np.ndarray:
    """The float64 bin edges in seconds: ``(t_start_ms + k * bin_ms) / 1000`` for k = 0..num_bins."""
    return (t_start_ms + bin_ms * np.arange(num_bins + 1, dtype=np.int64)) / 1000.0


def bin_spikes(
    spike_times: np.ndarray,
    unit_index: np.ndarray,
    num_units: int,
    t_start_s: float,
    t_stop_s: float,
    bin_ms: int = 20,
    *,
    return_num_clipped: bool = False,
) -> np.ndarray | tuple[np.ndarray, int]:
    """Count spikes per unit in fixed bins, clipping counts to 255.

    Bin edges lie on integer milliseconds: ``t_start_s`` and ``t_stop_s`` are rounded to whole ms,
    there are ``ceil((stop_ms - start_ms) / bin_ms)`` bins, and bin k covers
    ``[edges[k], edges[k+1])`` with ``edges = bin_edges_s(start_ms, num_bins, bin_ms)``: the same
    half-open convention and the same float edges as ``np.histogram(t, bins=edges)``, so the result
    equals per-unit ``np.histogram`` exactly (the last edge is exclusive here, unlike histogram's
    closed last bin). Spikes outside ``[edges[0], edges[-1])`` are dropped.

    Args:
        spike_times: (num_spikes,) float seconds, all units together, any order.
        unit_index: (num_spikes,) int unit number of each spike, in ``[0, num_units)``.
        num_units: number of rows of the output.
        t_start_s, t_stop_s: time range in seconds.
        bin_ms: bin width in whole milliseconds.
        return_num_clipped: also return how many (unit, bin) cells held more than 255 spikes.

    Returns:
        (num_units, num_bins) uint8 counts, and the clipped-cell count if asked.
    """
    if not isinstance(bin_ms, (int, np.integer)) or isinstance(bin_ms, bool) or bin_ms <= 0:
        raise ValueError(f"bin_ms must be a positive int (milliseconds), got {bin_ms!r}")
    spike_times = np.asarray(spike_times, dtype=np.float64)
    unit_index = np.asarray(unit_index)
    if spike_times.ndim != 1 or unit_index.shape != spike_times.shape:
        raise ValueError(
            "spike_times and unit_index must be 1-D arrays of the same length, got shapes "
            f"{spike_times.shape} and {unit_index.shape}"
        )
    if not np.issubdtype(unit_index.dtype, np.integer):
        raise TypeError(f"unit_index must hold integers, got dtype {unit_index.dtype}")
    if unit_index.size and (unit_index.min() < 0 or unit_index.max() >= num_units):
        raise ValueError(
            f"unit_index values must lie in [0, {num_units}), got range "
            f"[{unit_index.min()}, {unit_index.max()}]"
        )
    start_ms = int(round(t_start_s * 1000))
    stop_ms = int(round(t_stop_s * 1000))
    if stop_ms < start_ms:
        raise ValueError(f"t_stop_s must be >= t_start_s, got {t_start_s} and {t_stop_s}")
    num_bins = -(-(stop_ms - start_ms) // bin_ms)
    edges = bin_edges_s(start_ms, num_bins, bin_ms)

    out = np.zeros((num_units, num_bins), dtype=np.uint8)
    if num_bins == 0 or spike_times.size == 0:
        return (out, 0) if return_num_clipped else out

    # Bin index from arithmetic, then nudged by one where float rounding disagrees with the edges
    # (np.histogram's own correction), so spikes on or near an edge land where histogram puts them.
    keep = (spike_times >= edges[0]) & (spike_times < edges[-1])
    t = spike_times[keep]
    units = unit_index[keep].astype(np.int64, copy=False)
    idx = np.floor((t - edges[0]) * (1000.0 / bin_ms)).astype(np.int64)
    np.clip(idx, 0, num_bins - 1, out=idx)
    idx -= t < edges[idx]
    idx += t >= edges[idx + 1]

    # Group spikes by unit so each block of units is a contiguous slice.
    if units.size > 1 and np.any(units[1:] < units[:-1]):
        order = np.argsort(units, kind="stable")
        units, idx = units[order], idx[order]
    bounds = np.searchsorted(units, np.arange(num_units + 1))
    units_per_block = max(1, _MAX_BLOCK_CELLS // num_bins)
    num_clipped = 0
    for u0 in range(0, num_units, units_per_block):
        u1 = min(num_units, u0 + units_per_block)
        s0, s1 = bounds[u0], bounds[u1]
        if s0 == s1:
            continue
        flat = (units[s0:s1] - u0) * num_bins + idx[s0:s1]
        counts = np.bincount(flat, minlength=(u1 - u0) * num_bins)
        over = counts > 255
        if over.any():
            num_clipped += int(over.sum())
            np.minimum(counts, 255, out=counts)
        out[u0:u1] = counts.reshape(u1 - u0, num_bins)
    return (out, num_clipped) if return_num_clipped else out
