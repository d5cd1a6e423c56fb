"""bin_spikes against an independent count (np.histogram on explicit edges): a final partial bin,
counts of exactly 255 / 256 and more, and property-based tests (Hypothesis) of the binning, the
NWB reader and the per-session pipeline on random spike trains (empty, unsorted, duplicate, huge
and non-finite times)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikefm.corpus import binning
from spikefm.corpus.binning import bin_spikes
from spikefm.corpus.build import BuildConfig, session_rows
from spikefm.corpus.nwb import NWBInputError, read_nwb
from spikefm.corpus.session import SessionRecord, recording_end_s

from conftest import write_nwb

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def reference(t, u, num_units: int, start_ms: int, stop_ms: int, bin_ms: int):
    """Per-unit np.histogram on the documented edges: ceil((stop - start) / bin) bins of bin_ms
    from start_ms, the last one full width (so it reaches past stop_ms when the span is not a
    whole number of bins), every bin half-open; counts above 255 clipped and counted."""
    num_bins = math.ceil((stop_ms - start_ms) / bin_ms)
    edges = np.array([(start_ms + bin_ms * k) / 1000.0 for k in range(num_bins + 1)])
    counts = np.zeros((num_units, num_bins), np.int64)
    t, u = np.asarray(t, np.float64), np.asarray(u)
    if num_bins:
        inside = (t >= edges[0]) & (t < edges[-1])  # histogram's last bin is closed: exclude
        for k in range(num_units):
            counts[k] = np.histogram(t[inside & (u == k)], bins=edges)[0]
    return np.minimum(counts, 255).astype(np.uint8), int((counts > 255).sum())


# --- a final partial bin and the uint8 ceiling --------------------------------------------------

def test_final_partial_bin_equals_histogram_on_explicit_edges():
    # 13 ms .. 1005 ms at 20 ms: 49.6 bins -> 50, the last one [993, 1013) ms
    start_s, stop_s = 0.013, 1.005
    edges = (13 + 20 * np.arange(51)) / 1000.0
    assert edges[-1] == 1.013
    rng = np.random.default_rng(5)
    t = np.concatenate([rng.uniform(0.0, 1.1, 3000), edges,  # every edge, exactly
                        [0.993, 0.9999, 1.004999, 1.005, 1.0129999, 1.013, 1.02, 0.0129999]])
    u = rng.integers(0, 3, t.size)
    perm = rng.permutation(t.size)
    got, clipped = bin_spikes(t[perm], u[perm], 3, start_s, stop_s, 20, return_num_clipped=True)
    want, want_clipped = reference(t, u, 3, 13, 1005, 20)
    assert got.shape == (3, 50)
    np.testing.assert_array_equal(got, want)
    assert clipped == want_clipped == 0
    # by hand: what the last bin holds, spike by spike
    last = [x for x, k in zip(t, u) if k == 0 and 0.993 <= x < 1.013]
    assert got[0, -1] == len(last)
    assert bin_spikes(np.array([1.013]), np.array([0]), 1, start_s, stop_s, 20).sum() == 0


@pytest.mark.parametrize("chunk", [7, 256, 1 << 15])
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_counts_of_exactly_255_are_kept_and_256_or_more_clipped(monkeypatch, chunk, order):
    monkeypatch.setattr(binning, "_CHUNK", chunk)
    want = {(0, 0): 254, (0, 1): 255, (0, 2): 256, (1, 0): 1000, (1, 3): 255, (2, 2): 1}
    t, u = [], []
    for (unit, k), n in want.items():
        t += [0.020 * k + 0.0005 * (i % 30) for i in range(n)]  # inside bin k
        u += [unit] * n
    t, u = np.array(t), np.array(u)
    if order == "shuffled":
        perm = np.random.default_rng(0).permutation(t.size)
        t, u = t[perm], u[perm]
    got, clipped = bin_spikes(t, u, 3, 0.0, 0.08, 20, return_num_clipped=True)
    expect = np.zeros((3, 4), np.uint8)
    for (unit, k), n in want.items():
        expect[unit, k] = min(n, 255)
    np.testing.assert_array_equal(got, expect)
    assert clipped == 2  # the 256 and the 1000 cells; 255 is not clipped
    np.testing.assert_array_equal((got, clipped)[0], reference(t, u, 3, 0, 80, 20)[0])
    assert reference(t, u, 3, 0, 80, 20)[1] == clipped


# --- property-based: binning -------------------------------------------------------------------

@st.composite
def spike_trains(draw):
    """Random valid arguments of bin_spikes and the spikes to bin."""
    bin_ms = draw(st.sampled_from([1, 3, 20, 50]))
    start_ms = draw(st.integers(-3000, 3000))
    stop_ms = start_ms + draw(st.integers(0, 2000))  # any span: often a partial last bin
    num_units = draw(st.integers(1, 5))
    lo, hi = start_ms / 1000.0 - 0.3, stop_ms / 1000.0 + 0.3
    num_bins = math.ceil((stop_ms - start_ms) / bin_ms)
    times = draw(st.lists(st.floats(lo, hi, allow_nan=False), max_size=120))
    times += [(start_ms + bin_ms * k) / 1000.0  # exactly on edges
              for k in draw(st.lists(st.integers(0, num_bins), max_size=15))]
    times += draw(st.lists(st.sampled_from([1e15, -1e15, 1e300, -1e300, 4e9]), max_size=3))
    burst_at, burst_n = draw(st.floats(lo, hi, allow_nan=False)), draw(st.integers(0, 300))
    times += [burst_at] * burst_n  # duplicates, enough to reach the uint8 ceiling
    units = draw(st.lists(st.integers(0, num_units - 1), min_size=len(times),
                          max_size=len(times)))
    order = draw(st.permutations(range(len(times))))  # any order
    t = np.array(times, np.float64)[list(order)] if times else np.zeros(0)
    u = np.array(units, np.int64)[list(order)] if times else np.zeros(0, np.int64)
    chunk = draw(st.sampled_from([5, 64, 1 << 15]))
    return t, u, num_units, start_ms, stop_ms, bin_ms, chunk


@SETTINGS
@given(spike_trains())
def test_binning_equals_histogram_for_any_valid_spike_train(args):
    t, u, num_units, start_ms, stop_ms, bin_ms, chunk = args
    saved = binning._CHUNK
    binning._CHUNK = chunk
    try:
        got, clipped = bin_spikes(t, u, num_units, start_ms / 1000.0, stop_ms / 1000.0, bin_ms,
                                  return_num_clipped=True)
    finally:
        binning._CHUNK = saved
    want, want_clipped = reference(t, u, num_units, start_ms, stop_ms, bin_ms)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert clipped == want_clipped


@SETTINGS
@given(spike_trains(), st.sampled_from([np.nan, np.inf, -np.inf]), st.integers(0, 10_000))
def test_non_finite_spike_times_are_a_clear_value_error(args, bad, where):
    t, u, num_units, start_ms, stop_ms, bin_ms, _ = args
    i = where % (t.size + 1)
    t, u = np.insert(t, i, bad), np.insert(u, i, 0)
    with pytest.raises(ValueError, match=r"spike_times must be finite seconds; 1 of \d+ are NaN "
                                         "or infinite"):
        bin_spikes(t, u, num_units, start_ms / 1000.0, stop_ms / 1000.0, bin_ms)


@SETTINGS
@given(spike_trains(), st.data())
def test_other_invalid_arguments_are_clear_value_errors(args, data):
    t, u, num_units, start_ms, stop_ms, bin_ms, _ = args
    start_s, stop_s = start_ms / 1000.0, stop_ms / 1000.0
    case = data.draw(st.sampled_from(["unit", "reversed", "bin", "range", "huge", "shape"]))
    if case == "unit":
        t, u = np.append(t, start_s), np.append(u, data.draw(st.sampled_from([-1, num_units])))
        match = r"unit_index values must lie in \[0, "
    elif case == "reversed":
        start_s, stop_s, match = stop_s + 1.0, start_s, "t_stop_s must be >= t_start_s"
    elif case == "bin":
        bin_ms, match = data.draw(st.sampled_from([0, -20, 2.5])), "bin_ms must be a positive"
    elif case == "range":
        stop_s, match = data.draw(st.sampled_from([np.nan, np.inf])), "must be finite seconds"
    elif case == "huge":  # 10^12 s of 1 ms bins cannot be allocated
        stop_s, bin_ms, match = start_s + 1e12, 1, "too many to hold in memory"
    else:
        u, match = np.append(u, 0), "same length"
    with pytest.raises(ValueError, match=match) as exc:
        bin_spikes(t, u, num_units, start_s, stop_s, bin_ms)
    assert "\n" not in str(exc.value)


# --- property-based: the NWB reader and the per-session pipeline -------------------------------

unit_trains = st.lists(st.one_of(st.floats(0.0, 30.0, allow_nan=False),
                                 st.sampled_from([0.0, 0.02, 1e7, 3e9])), max_size=25)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(unit_trains, min_size=1, max_size=4),
       st.sampled_from([None, np.nan, np.inf, -np.inf, -0.5]), st.integers(0, 3))
def test_nwb_reader_round_trips_spike_trains_and_rejects_bad_times(units, bad, bad_unit):
    units = [np.array(x, np.float64) for x in units]  # unsorted, duplicates, empty, huge
    if bad is not None:
        k = bad_unit % len(units)
        units[k] = np.append(units[k], bad)
    with tempfile.TemporaryDirectory() as d:
        path = write_nwb(Path(d) / "s.nwb", units, ["A"] * len(units))
        if bad is None:
            rec = read_nwb(path)
            np.testing.assert_array_equal(rec.spike_times_s, np.concatenate(units))
            np.testing.assert_array_equal(
                rec.unit_index, np.repeat(np.arange(len(units)), [x.size for x in units]))
            return
        with pytest.raises(NWBInputError) as exc:  # a ValueError: skipped, named, one line
            read_nwb(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert ("negative" in msg) if bad == -0.5 else ("NaN or infinite" in msg)


def record(units: list[np.ndarray], trial_end: float | None) -> SessionRecord:
    t = np.concatenate(units) if units else np.zeros(0)
    trials = {} if trial_end is None else {
        "trials": {"start_time": np.array([0.0]), "stop_time": np.array([trial_end])}}
    return SessionRecord(session_id="s", subject_id="m", source_dataset="d", species="",
                         spike_times_s=t,
                         unit_index=np.repeat(np.arange(len(units)), [x.size for x in units]),
                         unit_ids=[str(i) for i in range(len(units))],
                         unit_regions=["A"] * len(units), trials=trials)


recorded = st.lists(st.one_of(st.floats(0.0, 30.0, allow_nan=False), st.just(0.02)), max_size=25)


@SETTINGS
@given(st.lists(recorded, min_size=1, max_size=4), st.lists(st.sampled_from([1e7, 3e9]),
                                                             max_size=1),
       st.one_of(st.none(), st.floats(0.0, 40.0)), st.sampled_from(["drop", "error"]),
       st.sampled_from([5, 20]))
def test_session_rows_bin_the_spikes_up_to_the_recording_end(units, stray, trial_end, policy,
                                                             bin_ms):
    """Up to one stray time (a kept one would make a session of 10^7 s and more)."""
    units = [np.array(x, np.float64) for x in units]
    units[-1] = np.append(units[-1], stray)
    rec = record(units, trial_end)
    cfg = BuildConfig(bin_ms=bin_ms, max_row_tokens=400, spikes_past_end=policy)
    if rec.spike_times_s.size == 0:
        with pytest.raises(ValueError, match="have no spikes at all"):
            session_rows(rec, cfg)
        return
    end_s, _ = recording_end_s(rec)
    kept = [x[x <= end_s] for x in units]
    dropped = sum(x.size for x in units) - sum(x.size for x in kept)
    if dropped and policy == "error":
        with pytest.raises(ValueError, match=rf"^{dropped} spike time\(s\) lie after the "
                                             "recording's end"):
            session_rows(rec, cfg)
        return
    table, meta = session_rows(rec, cfg)
    assert meta.get("spikes_past_end", 0) == dropped
    assert meta["num_spikes"] == sum(x.size for x in kept)
    rows = table.column("spike_counts").to_pylist()
    counts = np.concatenate([np.array(r, np.uint8).reshape(len(units), -1) for r in rows], axis=1)
    starts = table.column("t_start_ms").to_pylist()
    assert starts[0] == meta["t_start_ms"] and all(
        b - a == np.array(r).shape[1] * bin_ms for a, b, r in zip(starts, starts[1:], rows))
    all_kept = np.concatenate(kept)
    want, _ = reference(all_kept, np.repeat(np.arange(len(units)), [x.size for x in kept]),
                        len(units), meta["t_start_ms"],
                        meta["t_start_ms"] + meta["num_bins"] * bin_ms, bin_ms)
    np.testing.assert_array_equal(counts, want)
    # the session spans exactly the kept spikes' bins, whatever stray times there were: the first
    # and last kept spikes lie in its first and last bins, on the edges binning uses (the floor
    # of t * 1000 / bin_ms misplaces a spike on an edge, 4.02 s reading 200.99999...)
    edges = binning.bin_edges_s(meta["t_start_ms"], meta["num_bins"], bin_ms)
    assert edges[0] <= all_kept.min() < edges[1] and edges[-2] <= all_kept.max() < edges[-1]


@pytest.mark.parametrize("name, start, stop", [
    ("t_stop_s", 0, None), ("t_start_s", None, 1.0), ("t_start_s", "0", 1.0), ("t_stop_s", 0.0, [1.0]),
    ("t_start_s", True, 1.0), ("t_stop_s", 0.0, np.nan), ("t_start_s", -np.inf, 1.0)])
def test_scalar_time_arguments_are_named_one_line_value_errors(name, start, stop):
    """bin_spikes(t, u, 2, 0, None) raised numpy's TypeError from np.isfinite(None)."""
    t, u = np.array([0.01, 0.5]), np.array([0, 1])
    with pytest.raises(ValueError, match=rf"^{name} must be finite seconds \(a number\), got ") as exc:
        bin_spikes(t, u, 2, start, stop)
    assert "\n" not in str(exc.value)


def test_numpy_scalars_and_0d_arrays_are_accepted_as_times():
    t, u = np.array([0.01, 0.5]), np.array([0, 1])
    expected = bin_spikes(t, u, 2, 0.0, 1.0)
    for start, stop in ((np.float32(0.0), np.float64(1.0)), (np.int64(0), np.array(1.0)), (0, 1)):
        np.testing.assert_array_equal(bin_spikes(t, u, 2, start, stop), expected)


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 3600 * 30000), b=st.integers(0, 3600 * 30000), rate=st.sampled_from([20000, 30000, 32000]),
       bin_ms=st.sampled_from([1, 10, 20, 50]))
def test_the_spike_span_grid_holds_its_first_and_last_spikes_in_its_end_bins(a, b, rate, bin_ms):
    """Sample-quantised spike times on bin edges (4.02 s at 30 kHz) fell past a grid computed by
    floor(t * 1000 / bin_ms) alone."""
    from spikefm.corpus.binning import bin_edges_s, spike_span_ms

    t_min, t_max = min(a, b) / rate, max(a, b) / rate
    start, stop = spike_span_ms(t_min, t_max, bin_ms)
    assert start % bin_ms == 0 and stop % bin_ms == 0 and stop > start
    edges = bin_edges_s(start, (stop - start) // bin_ms, bin_ms)
    assert edges[0] <= t_min < edges[1] and edges[-2] <= t_max < edges[-1]
