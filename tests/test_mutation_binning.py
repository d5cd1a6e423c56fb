"""spikefm.corpus.binning.bin_spikes: contracts test_corpus_binning.py leaves open (written to
kill the mutants benchmarks/mutation/run_mutation.py found surviving it). Reference: per-unit
np.histogram on the documented integer-millisecond edges."""
from __future__ import annotations

import numpy as np
import pytest

from spikefm.corpus import binning
from spikefm.corpus.binning import bin_edges_s, bin_spikes


def histogram_reference(times, units, num_units, t_start_s, t_stop_s, bin_ms):
    start_ms, stop_ms = round(t_start_s * 1000), round(t_stop_s * 1000)
    num_bins = -(-(stop_ms - start_ms) // bin_ms)
    edges = (start_ms + bin_ms * np.arange(num_bins + 1)) / 1000.0
    out = np.zeros((num_units, num_bins), dtype=np.int64)
    for u in range(num_units):
        t = np.asarray(times, dtype=np.float64)[np.asarray(units) == u]
        t = t[(t >= edges[0]) & (t < edges[-1])]
        if num_bins:
            out[u] = np.histogram(t, bins=edges)[0]
    return np.minimum(out, 255).astype(np.uint8)


def test_default_bin_width_is_20_ms():
    times = np.array([0.0, 0.019, 0.020, 0.041, 0.999])
    units = np.zeros(5, dtype=np.int64)
    default = bin_spikes(times, units, 1, 0.0, 1.0)
    assert default.shape == (1, 50)
    np.testing.assert_array_equal(default, bin_spikes(times, units, 1, 0.0, 1.0, 20))
    np.testing.assert_array_equal(default, histogram_reference(times, units, 1, 0.0, 1.0, 20))


def test_inputs_are_converted_to_float64_and_int64():
    rng = np.random.default_rng(4)
    times32 = np.sort(rng.uniform(0, 2, 500)).astype(np.float32)
    units = rng.integers(0, 3, 500).astype(np.int8)
    got = bin_spikes(times32, units, 3, 0.0, 2.0, bin_ms=7)
    np.testing.assert_array_equal(got, bin_spikes(times32.astype(np.float64), units.astype(np.int64), 3, 0.0, 2.0, 7))
    np.testing.assert_array_equal(got, histogram_reference(times32.astype(np.float64), units, 3, 0.0, 2.0, 7))
    as_text = bin_spikes(["0.013", "0.5"], [0, 1], 2, 0.0, 1.0)
    assert as_text[0, 0] == 1 and as_text[1, 25] == 1 and as_text.sum() == 2
    # bin edges are exact integer milliseconds divided once
    np.testing.assert_array_equal(bin_edges_s(3, 4, 20), np.array([3, 23, 43, 63, 83]) / 1000.0)
    assert bin_edges_s(3, 4, 20).dtype == np.float64


def test_argument_messages_are_exact():
    def message(kind, *args, **kwargs):
        with pytest.raises(kind) as err:
            bin_spikes(*args, **kwargs)
        return str(err.value)

    t, u = np.array([0.1, 0.2]), np.array([0, 1])
    assert message(ValueError, t, u[:1], 2, 0.0, 1.0) == (
        "spike_times and unit_index must be 1-D arrays of the same length, got shapes (2,) and (1,)")
    assert message(ValueError, t[:, None], u[:, None], 2, 0.0, 1.0) == (
        "spike_times and unit_index must be 1-D arrays of the same length, got shapes (2, 1) and (2, 1)")
    assert message(TypeError, t, u.astype(float), 2, 0.0, 1.0) == "unit_index must hold integers, got dtype float64"
    for bad in (-1, True, 2.0, "2"):
        assert message(ValueError, t, u, bad, 0.0, 1.0) == f"num_units must be an int >= 0, got {bad!r}"
    assert message(ValueError, t, u, 2, 0.0, 1.0, 0) == "bin_ms must be a positive int (milliseconds), got 0"
    assert message(ValueError, t, u, 2, 1.0, 0.5) == "t_stop_s must be >= t_start_s, got 1.0 and 0.5"
    assert message(ValueError, t, u, 2, 0.0, float("inf")) == ("t_stop_s must be finite seconds (a number), got inf; "
                                                                "pass the time range's end in seconds")
    assert message(ValueError, t, u, 1, 0.0, 1.0) == "unit_index values must lie in [0, 1), got range [0, 1]"
    assert message(ValueError, np.array([0.1, np.nan]), u, 2, 0.0, 1.0) == (
        "spike_times must be finite seconds; 1 of 2 are NaN or infinite: remove them before binning")


def test_zero_units_and_empty_ranges():
    out = bin_spikes(np.zeros(0), np.zeros(0, dtype=np.int64), 0, 0.0, 1.0)
    assert out.shape == (0, 50) and out.dtype == np.uint8
    out, clipped = bin_spikes(np.array([0.5]), np.array([0]), 1, 2.0, 2.0, return_num_clipped=True)
    assert out.shape == (1, 0) and clipped == 0
    with pytest.raises(ValueError, match="unit_index values must lie in"):
        bin_spikes(np.array([0.5]), np.array([3]), 1, 2.0, 2.0)  # validated even with no bins
    with pytest.raises(ValueError, match="spike_times must be finite"):
        bin_spikes(np.array([np.inf]), np.array([0]), 1, 2.0, 2.0)


@pytest.mark.parametrize("order", ["sorted", "shuffled", "reversed"])
def test_chunked_counts_equal_histogram(monkeypatch, order):
    """Small chunks, cells spanning chunk borders, counts over 255, spikes out of range."""
    monkeypatch.setattr(binning, "_CHUNK", 16)
    rng = np.random.default_rng(9)
    units = np.repeat(np.arange(4), [300, 5, 40, 1])
    times = np.concatenate([np.full(300, 0.0105), rng.uniform(-0.1, 1.1, 5), np.sort(rng.uniform(0, 1, 40)), [0.999]])
    idx = np.arange(units.size)
    if order == "shuffled":
        idx = rng.permutation(units.size)
    elif order == "reversed":
        idx = idx[::-1]
    got, clipped = bin_spikes(times[idx], units[idx], 4, 0.0, 1.0, 10, return_num_clipped=True)
    np.testing.assert_array_equal(got, histogram_reference(times, units, 4, 0.0, 1.0, 10))
    assert got[0, 1] == 255 and clipped == 1


def test_unit_numbers_of_dropped_spikes_are_checked_too():
    """A unit number out of range is an error even when its spike falls outside the time range
    (or when there are no bins at all): the input is wrong either way."""
    expected = "unit_index values must lie in [0, 2), got range [0, 2]"
    for times in ([0.5, 5.0], [0.5, -1.0]):  # the bad unit's spike is past the end / before the start
        with pytest.raises(ValueError) as err:
            bin_spikes(np.array(times), np.array([0, 2]), 2, 0.0, 1.0)
        assert str(err.value) == expected
    with pytest.raises(ValueError) as err:
        bin_spikes(np.array([0.5, 0.6]), np.array([0, 2]), 2, 1.0, 1.0)  # no bins
    assert str(err.value) == expected
    with pytest.raises(ValueError) as err:
        bin_spikes(np.array([0.5]), np.array([-1]), 2, 1.0, 1.0)
    assert str(err.value) == "unit_index values must lie in [0, 2), got range [-1, -1]"


def test_a_time_range_too_long_to_hold_is_one_clear_error():
    with pytest.raises(ValueError) as err:
        bin_spikes(np.array([0.5]), np.array([0]), 10, 0.0, 1e15)
    assert str(err.value) == ("10 units x 50,000,000,000,000,000 bins of 20 ms (0 s to 1e+15 s) are too many to "
                              "hold in memory; check the time range (a stray spike time far past the others?)")


@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_sorted_spikes_split_across_chunks_count_exactly(monkeypatch, chunk):
    """NWB order (units grouped, times sorted): cells that continue across a chunk border, cells
    that start a chunk fresh, chunks without any repeated cell."""
    monkeypatch.setattr(binning, "_CHUNK", chunk)
    times, units = [], []
    # with chunk 4, unit 0 splits cells 3 and 6 across borders, the next chunk holding no other
    # repeated cell (or one later), and unit 1 continues cell 2 with two more spikes
    layout = [[0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 9, 9, 9], [1, 2, 2, 2, 2, 5, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    for u, bins in enumerate(layout):
        for k in bins:
            times.append(k * 0.01 + 0.002)
            units.append(u)
    times, units = np.array(times), np.array(units)
    got = bin_spikes(times, units, 3, 0.0, 0.1, 10)
    np.testing.assert_array_equal(got, histogram_reference(times, units, 3, 0.0, 0.1, 10))
    assert got.sum() == len(times)
