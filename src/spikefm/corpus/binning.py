"""Binning spike times into uint8 count matrices, vectorized over all units at once."""
from __future__ import annotations

import math
import numbers

import numpy as np

#: Spikes per chunk of work; small enough that temporaries stay in cache.
_CHUNK = 1 << 15


def _unit_range_error(unit_index: np.ndarray, num_units: int) -> ValueError:
    return ValueError(f"unit_index values must lie in [0, {num_units}), got range "
                      f"[{unit_index.min()}, {unit_index.max()}]")


def _not_finite_error(spike_times: np.ndarray) -> ValueError:
    bad = int(np.count_nonzero(~np.isfinite(spike_times)))
    return ValueError(f"spike_times must be finite seconds; {bad} of {spike_times.size} are NaN "
                      "or infinite: remove them before binning")


def _finite_seconds(name: str, value) -> float:
    """``value`` as float seconds: a real number (Python or numpy, or a 0-d numpy array), finite."""
    ok = not isinstance(value, (bool, np.bool_)) and (
        isinstance(value, numbers.Real)
        or (isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"))
    if ok and math.isfinite(float(value)):
        return float(value)
    raise ValueError(f"{name} must be finite seconds (a number), got {value!r}; pass the time "
                     f"range's {'start' if name == 't_start_s' else 'end'} in seconds")


def bin_edges_s(t_start_ms: int, num_bins: int, bin_ms: int) -> np.ndarray:
    """The float64 bin edges in seconds: ``(t_start_ms + k * bin_ms) / 1000`` for k = 0..num_bins."""
    return (t_start_ms + bin_ms * np.arange(num_bins + 1, dtype=np.int64)) / 1000.0


def spike_span_ms(t_min_s: float, t_max_s: float, bin_ms: int) -> tuple[int, int]:
    """(start_ms, stop_ms) of the bin grid from the bin of the first spike to the bin of the last,
    on whole multiples of ``bin_ms``, such that both spikes fall in its first and last bins as
    :func:`bin_edges_s` makes their edges (``start / 1000 <= t_min_s`` and ``t_max_s < stop / 1000``): the
    grid from ``floor(t * 1000 / bin_ms)`` alone lost a spike lying on an edge (4.02 s reads as bin
    200.99999..., so the grid stopped at 4.02 s and the spike was past it)."""
    start = int(math.floor(t_min_s * 1000.0 / bin_ms)) * bin_ms
    while t_min_s < start / 1000.0:
        start -= bin_ms
    while t_min_s >= (start + bin_ms) / 1000.0:  # and no empty bin before the first spike's
        start += bin_ms
    stop = (int(math.floor(t_max_s * 1000.0 / bin_ms)) + 1) * bin_ms
    while t_max_s >= stop / 1000.0:
        stop += bin_ms
    while t_max_s < (stop - bin_ms) / 1000.0:
        stop -= bin_ms
    return start, stop


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
        spike_times: (num_spikes,) finite float seconds, all units together, any order.
        unit_index: (num_spikes,) int unit number of each spike, in ``[0, num_units)``.
        num_units: number of rows of the output.
        t_start_s, t_stop_s: time range in seconds, finite numbers.
        bin_ms: bin width in whole milliseconds.
        return_num_clipped: also return how many (unit, bin) cells held more than 255 spikes.

    Returns:
        (num_units, num_bins) uint8 counts, and the clipped-cell count if asked.

    Raises:
        ValueError: bad arguments, NaN or infinite spike times, unit numbers out of range, or a
            time range too long to allocate.
        TypeError: ``unit_index`` does not hold integers.
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
    if unit_index.size == 0:  # no spikes at all ([] reads as float): every count is 0
        unit_index = unit_index.astype(np.int64)
    if not np.issubdtype(unit_index.dtype, np.integer):
        raise TypeError(f"unit_index must hold integers, got dtype {unit_index.dtype}")
    if not isinstance(num_units, (int, np.integer)) or isinstance(num_units, bool) or num_units < 0:
        raise ValueError(f"num_units must be an int >= 0, got {num_units!r}")
    t_start_s = _finite_seconds("t_start_s", t_start_s)
    t_stop_s = _finite_seconds("t_stop_s", t_stop_s)
    start_ms = int(round(t_start_s * 1000))
    stop_ms = int(round(t_stop_s * 1000))
    if stop_ms < start_ms:
        raise ValueError(f"t_stop_s must be >= t_start_s, got {t_start_s} and {t_stop_s}")
    num_bins = -(-(stop_ms - start_ms) // bin_ms)
    try:
        edges = bin_edges_s(start_ms, num_bins, bin_ms)
        out = np.zeros((num_units, num_bins), dtype=np.uint8)
    except (MemoryError, ValueError, OverflowError):  # ValueError: numpy's "array is too big"
        raise ValueError(
            f"{num_units} units x {num_bins:,} bins of {bin_ms} ms ({t_start_s:.6g} s to "
            f"{t_stop_s:.6g} s) are too many to hold in memory; check the time range (a stray "
            "spike time far past the others?)") from None
    if num_bins == 0 or spike_times.size == 0:
        if spike_times.size:  # nothing to count, but the input must still be valid
            if not np.isfinite(spike_times).all():
                raise _not_finite_error(spike_times)
            if unit_index.min() < 0 or unit_index.max() >= num_units:
                raise _unit_range_error(unit_index, num_units)
        return (out, 0) if return_num_clipped else out

    # Work through the spikes in cache-sized chunks: large temporaries cost more in page faults
    # than the arithmetic itself. Within a chunk, cells are counted by run length over the sorted
    # flat cell index (spikes from NWB files are grouped by unit and sorted in time, so this is
    # usually sorted already) and added into the output with saturation at 255.
    flat_out = out.reshape(-1)
    clipped_cells = []
    scale = 1000.0 / bin_ms
    last_cell, monotone = -1, True
    unit_index = unit_index.astype(np.int64, copy=False)
    for c0 in range(0, spike_times.size, _CHUNK):
        t = spike_times[c0:c0 + _CHUNK]
        units = unit_index[c0:c0 + _CHUNK]
        lo, hi = t.min(), t.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):  # min and max carry any NaN
            raise _not_finite_error(spike_times)
        if lo < edges[0] or hi >= edges[-1]:
            if units.min() < 0 or units.max() >= num_units:  # dropped spikes too
                raise _unit_range_error(unit_index, num_units)
            keep = (t >= edges[0]) & (t < edges[-1])
            t, units = t[keep], units[keep]
            if t.size == 0:
                continue
        # Bin index from arithmetic, then nudged by one where float rounding disagrees with the
        # edges (np.histogram's own correction), so spikes on an edge land where histogram puts
        # them.
        x = t - edges[0]
        x *= scale
        idx = x.astype(np.int64)  # x >= 0, so truncation is floor
        # Only spikes within float rounding of an edge can be misplaced: check those against the
        # edges themselves (np.histogram's rule), leaving the rest alone.
        x -= idx
        x -= 0.5
        near = np.flatnonzero(np.abs(x, out=x) > 0.5 - 1e-6)
        if near.size:
            k = np.clip(idx[near], 0, num_bins - 1)
            tn = t[near]
            k -= tn < edges[k]
            k += tn >= edges[k + 1]
            idx[near] = k
        flat = units * num_bins
        flat += idx
        step = np.diff(flat)
        in_order = not (step.size and step.min() < 0)
        # Ordered cells mean ordered units, so the first and last unit bound the chunk's range.
        lo, hi = (units[0], units[-1]) if in_order else (units.min(), units.max())
        if lo < 0 or hi >= num_units:
            raise _unit_range_error(unit_index, num_units)
        monotone = monotone and in_order and flat[0] >= last_cell
        if monotone:
            # Cells come in order, so each cell's spikes are one run and only a run continuing
            # from the previous chunk already has counts in the output. Most occupied cells hold
            # one spike: write 1 everywhere, then count only the cells that repeat.
            carried = int(flat_out[last_cell]) if flat[0] == last_cell else 0
            flat_out[flat] = 1
            rep = np.flatnonzero(step == 0)
            if rep.size:
                extra_cells = flat[rep]  # one entry per spike beyond the first in its cell
                rstep = np.diff(extra_cells)
                rstarts = np.concatenate(([0], np.flatnonzero(rstep) + 1))
                cells = extra_cells[rstarts]
                counts = np.diff(rstarts, append=extra_cells.size) + 1
            else:
                cells, counts = flat[:0], np.zeros(0, dtype=np.int64)
            if carried:
                # The first cell continues the previous chunk's run: add what was written there.
                if cells.size and cells[0] == last_cell:
                    counts[0] += carried
                else:
                    cells = np.concatenate(([last_cell], cells))
                    counts = np.concatenate(([1 + carried], counts))
            last_cell = int(flat[-1])
        else:
            if not in_order:
                flat.sort()
                step = np.diff(flat)
            starts = np.flatnonzero(step)
            starts += 1
            starts = np.concatenate(([0], starts))
            cells = flat[starts]
            counts = np.diff(starts, append=flat.size)
            counts += flat_out[cells]  # cells are unique within a chunk
            last_cell = max(last_cell, int(cells[-1]))
        over = counts > 255
        if over.any():
            clipped_cells.append(cells[over])
            counts[over] = 255
        flat_out[cells] = counts
    num_clipped = int(np.unique(np.concatenate(clipped_cells)).size) if clipped_cells else 0
    return (out, num_clipped) if return_num_clipped else out
