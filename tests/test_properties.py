"""Property-based tests (Hypothesis) of the corpus (binning over adjacent ranges and in NWB order,
the bin grid of the spike span, chunking into rows, the split draw, and the write/read round trip
of a corpus folder), of windows cut from sessions, of the evaluation metrics (bits per spike and
R² against computations written here with scipy, and their invariances), and of the AR family's
tokens (tokenize/detokenize both ways, unit permutation, bin positions).

Every property compares the code with an independent expectation: a count or formula computed
another way, a round trip, or an invariance. tests/test_corpus_binning.py already checks
bin_spikes against np.histogram on random spike trains; nothing of it is repeated here."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import poisson
from scipy.stats import t as student_t

from spikefm.corpus import binning
from spikefm.corpus.binning import bin_edges_s, bin_spikes, spike_span_ms
from spikefm.corpus.build import (
    BuildConfig,
    assign_splits,
    build_settings,
    chunk_bounds,
    finalize,
    session_rows,
)
from spikefm.corpus.reader import Corpus, CorpusRow
from spikefm.corpus.schema import ROW_SCHEMA
from spikefm.corpus.session import BehaviorSeries, SessionRecord
from spikefm.corpus.store import STAGING, open_corpus_dir
from spikefm.data.windows import (
    SPLIT_NAMES,
    WindowBatcher,
    _assemble,
    _windows_from_grid,
    apply_splits,
    load_all_windows,
    save_splits,
)
from spikefm.eval.metrics import (
    bps_per_neuron,
    bps_per_neuron_mean,
    bps_pooled,
    bps_pooled_difference,
    bps_pooled_interval,
    r2_score_pooled,
)
from spikefm.families.ar.loader import permute_row_units, row_num_units
from spikefm.families.ar.positions import STATE_CAP, bin_positions, window_prefix
from spikefm.families.ar.tokens import MAX_COUNT_TOKEN, SEPARATOR, detokenize, tokenize


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


LN2 = math.log(2.0)


def count_on_edges(t, u, num_units: int, start_ms: int, num_bins: int, bin_ms: int) -> np.ndarray:
    """Unclipped int64 counts by searchsorted on the integer-ms edges (not np.histogram): bin k is
    [edges[k], edges[k+1]), spikes outside [edges[0], edges[-1]) left out."""
    edges = np.array([(start_ms + bin_ms * k) / 1000.0 for k in range(num_bins + 1)])
    out = np.zeros((num_units, num_bins), np.int64)
    t, u = np.asarray(t, np.float64), np.asarray(u, np.int64)
    if num_bins == 0 or t.size == 0:
        return out
    k = np.searchsorted(edges, t, side="right") - 1
    inside = (k >= 0) & (k < num_bins)
    np.add.at(out, (u[inside], k[inside]), 1)
    return out


# =============================================================================================
# Binning: adjacent ranges, superposition, NWB order across chunks, the spike-span grid


@st.composite
def spikes_between(draw, lo_s: float, hi_s: float, num_units: int, edges_ms: list[int]):
    times = draw(st.lists(st.floats(lo_s, hi_s, allow_nan=False), max_size=60))
    times += [e / 1000.0 for e in draw(st.lists(st.sampled_from(edges_ms), max_size=10))]
    burst = draw(st.integers(0, 280))
    times += [draw(st.floats(lo_s, hi_s, allow_nan=False))] * burst
    units = draw(st.lists(st.integers(0, num_units - 1), min_size=len(times), max_size=len(times)))
    return np.array(times, np.float64), np.array(units, np.int64)


@_settings(80)
@given(st.data())
def test_binning_adjacent_ranges_concatenates_to_binning_their_union(data):
    """bin(a, b) ++ bin(b, c) == bin(a, c) when b - a is whole bins, and binning the union of two
    spike sets is the clipped sum of their binnings: the bin grid depends only on its start."""
    bin_ms = data.draw(st.sampled_from([1, 7, 20]))
    a = data.draw(st.integers(-2000, 2000))
    b = a + bin_ms * data.draw(st.integers(0, 40))
    c = b + data.draw(st.integers(0, 40 * bin_ms))  # c may cut a partial last bin
    n = data.draw(st.integers(1, 4))
    edges = [a + bin_ms * k for k in range((c - a) // bin_ms + 2)]
    t1, u1 = data.draw(spikes_between(a / 1000 - 0.05, c / 1000 + 0.05, n, edges))
    t2, u2 = data.draw(spikes_between(a / 1000 - 0.05, c / 1000 + 0.05, n, edges))
    t, u = np.concatenate([t1, t2]), np.concatenate([u1, u2])
    whole, clipped = bin_spikes(t, u, n, a / 1000, c / 1000, bin_ms, return_num_clipped=True)
    left = bin_spikes(t, u, n, a / 1000, b / 1000, bin_ms)
    right = bin_spikes(t, u, n, b / 1000, c / 1000, bin_ms)
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), whole)
    # superposition of two spike sets, clipped at 255
    one = bin_spikes(t1, u1, n, a / 1000, c / 1000, bin_ms).astype(np.int64)
    two = bin_spikes(t2, u2, n, a / 1000, c / 1000, bin_ms).astype(np.int64)
    np.testing.assert_array_equal(np.minimum(one + two, 255), whole)
    want = count_on_edges(t, u, n, a, whole.shape[1], bin_ms)
    assert clipped == int((want > 255).sum())


@_settings(80)
@given(st.data())
def test_binning_in_nwb_order_with_runs_across_chunks_equals_an_independent_count(data):
    """Spikes grouped by unit and sorted in time (how NWB files hold them; the fast path that
    carries a cell's count from one chunk to the next), possibly followed by a shuffled tail, with
    bursts long enough to cross chunks and reach the uint8 ceiling."""
    bin_ms = data.draw(st.sampled_from([5, 20]))
    num_bins = data.draw(st.integers(1, 30))
    n = data.draw(st.integers(1, 4))
    start_ms = data.draw(st.integers(-500, 500))
    lo, hi = start_ms / 1000 - 0.03, (start_ms + num_bins * bin_ms) / 1000 + 0.03
    edges = [start_ms + bin_ms * k for k in range(num_bins + 1)]
    t, u = data.draw(spikes_between(lo, hi, n, edges))
    extra_burst = data.draw(st.integers(0, 600))  # one cell with up to 600 spikes in a row
    t = np.concatenate([t, np.full(extra_burst, data.draw(st.floats(lo, hi)))])
    u = np.concatenate([u, np.full(extra_burst, data.draw(st.integers(0, n - 1)))])
    order = np.lexsort((t, u))
    t, u = t[order], u[order]
    tail = data.draw(st.integers(0, t.size))
    if data.draw(st.booleans()) and tail:
        perm = np.array(data.draw(st.permutations(range(tail))), np.int64)
        t[t.size - tail:], u[u.size - tail:] = t[t.size - tail:][perm], u[u.size - tail:][perm]
    chunk = data.draw(st.sampled_from([1, 2, 3, 16, 255, 1 << 15]))
    saved = binning._CHUNK
    binning._CHUNK = chunk
    try:
        got, clipped = bin_spikes(t, u, n, start_ms / 1000, (start_ms + num_bins * bin_ms) / 1000,
                                  bin_ms, return_num_clipped=True)
    finally:
        binning._CHUNK = saved
    want = count_on_edges(t, u, n, start_ms, num_bins, bin_ms)
    np.testing.assert_array_equal(got, np.minimum(want, 255).astype(np.uint8))
    assert clipped == int((want > 255).sum())


@_settings(300)
@given(st.one_of(st.floats(-1e5, 1e5, allow_nan=False),
                 st.integers(-10**6, 10**6).map(lambda k: k / 1000.0),
                 st.integers(-10**6, 10**6).map(lambda k: k / 50.0)),
       st.floats(0.0, 1e4, allow_nan=False), st.sampled_from([1, 3, 10, 20, 50]))
def test_the_spike_span_grid_holds_any_float_spikes_in_its_end_bins(t_min, extent, bin_ms):
    """Any float times (not only sample-quantised ones): the grid starts and stops on multiples of
    bin_ms, its first bin holds the first spike and its last bin the last one."""
    t_max = t_min + extent
    start, stop = spike_span_ms(t_min, t_max, bin_ms)
    assert start % bin_ms == 0 and stop % bin_ms == 0 and stop > start
    num_bins = (stop - start) // bin_ms
    edges = [(start + bin_ms * k) / 1000.0 for k in (0, 1, num_bins - 1, num_bins)]  # bin_edges_s's
    assert edges[0] <= t_min < edges[1] and edges[-2] <= t_max < edges[-1]
    if num_bins > 100_000:
        return
    np.testing.assert_array_equal(bin_edges_s(start, num_bins, bin_ms)[[0, 1, -2, -1]], edges)
    # and binning on it counts both spikes
    got = bin_spikes(np.array([t_min, t_max]), np.array([0, 0]), 1, start / 1000, stop / 1000, bin_ms)
    assert int(got.sum()) == 2 and got[0, 0] >= 1 and got[0, -1] >= 1


# =============================================================================================
# Chunking a session into rows


@_settings(400)
@given(st.integers(0, 700), st.integers(0, 2_000_000), st.integers(1, 20_000_000))
def test_chunk_bounds_cover_every_bin_once_in_order_within_the_budget(units, bins, limit):
    if bins and units > limit:
        with pytest.raises(ValueError, match="exceeds max_row_tokens"):
            chunk_bounds(units, bins, limit)
        return
    b = chunk_bounds(units, bins, limit)
    if bins == 0:
        assert b == []
        return
    # every bin once, in order: the rows start at 0, each where the last ended, and end at bins
    assert b[0][0] == 0 and b[-1][1] == bins and all(x[1] == y[0] for x, y in zip(b, b[1:]))
    lengths = [e - s for s, e in b]
    assert min(lengths) >= 1 and units * max(lengths) <= limit
    assert max(lengths) - min(lengths) <= 1
    n = len(b)  # the fewest rows: n - 1 rows would need a row longer than the budget allows
    assert n == 1 or units * -(-bins // (n - 1)) > limit


# =============================================================================================
# The split draw


@st.composite
def session_metas(draw):
    k = draw(st.integers(1, 8))
    ids = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=k, max_size=k,
                        unique=True))
    return [{"session_id": s, "num_tokens": draw(st.integers(1, 10_000)),
             "num_rows": draw(st.integers(1, 4))} for s in ids]


@_settings(200)
@given(session_metas(), st.floats(0.0, 0.99), st.integers(0, 2**32 - 1),
       st.lists(st.text("abcdefghz", min_size=1, max_size=3), max_size=4), st.randoms())
def test_session_split_puts_every_session_in_one_split_and_reaches_the_test_share(
        metas, fraction, seed, keep, rnd):
    cfg = BuildConfig(split="session", test_fraction=fraction, seed=seed)
    out = assign_splits(metas, cfg, keep_test=keep)
    assert set(out) == {(m["session_id"], r) for m in metas for r in range(m["num_rows"])}
    assert set(out.values()) <= {"train", "test"}
    split_of = {}
    for (sid, _), s in out.items():
        assert split_of.setdefault(sid, s) == s  # a session's rows share its split
    shuffled = list(metas)
    rnd.shuffle(shuffled)
    assert assign_splits(shuffled, cfg, keep_test=list(reversed(keep))) == out  # input order
    test = {s for s, v in split_of.items() if v == "test"}
    tokens = {m["session_id"]: m["num_tokens"] for m in metas}
    if fraction == 0 or len(metas) < 2:
        assert not test
        return
    assert test and len(test) <= len(metas) - 1  # never everything in test
    kept = set(keep) & set(tokens)
    if len(kept) <= len(metas) - 1:
        assert kept <= test
    target = fraction * sum(tokens.values())
    got = sum(tokens[s] for s in test)
    assert got >= target or len(test) == len(metas) - 1
    drawn = test - kept
    if drawn:  # the draw stops at the first session that reaches the share
        assert got - max(tokens[s] for s in drawn) < target


@_settings(200)
@given(session_metas(), st.floats(0.0, 0.99), st.integers(0, 2**32 - 1), st.randoms())
def test_row_split_puts_every_row_in_one_split_with_the_rounded_share(metas, fraction, seed, rnd):
    cfg = BuildConfig(split="row", test_fraction=fraction, seed=seed)
    out = assign_splits(metas, cfg)
    rows = [(m["session_id"], r) for m in metas for r in range(m["num_rows"])]
    assert sorted(out) == sorted(rows) and set(out.values()) <= {"train", "test"}
    shuffled = list(metas)
    rnd.shuffle(shuffled)
    assert assign_splits(shuffled, cfg) == out
    n_test = sum(v == "test" for v in out.values())
    if fraction == 0 or len(rows) < 2:
        assert n_test == 0
    else:
        assert 1 <= n_test <= len(rows) - 1
        assert abs(n_test - fraction * len(rows)) <= 0.5 or n_test in (1, len(rows) - 1)


# =============================================================================================
# A corpus folder: session rows -> staged -> finalize (shards + manifest) -> Corpus


@st.composite
def session_records(draw, ids=("a", "b", "c")):
    k = draw(st.integers(1, 4))
    recs = []
    for i in range(k):
        n = draw(st.integers(1, 4))
        units = [np.array(draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=30)))
                 for _ in range(n)]
        if not any(x.size for x in units):
            units[0] = np.array([draw(st.floats(0.0, 1.0, allow_nan=False))])
        trials = {}
        if draw(st.booleans()):
            starts = np.sort(np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))))
            trials = {"trials": {"start_time": starts, "stop_time": starts + 0.1,
                                 "choice": np.array([(-1, 1)[j % 2] for j in range(starts.size)])}}
        behavior = []
        if draw(st.booleans()):
            ts = np.linspace(0.0, 1.0, 41)
            vals = np.sin(ts * (i + 1))
            vals[draw(st.integers(0, 40))] = np.nan
            behavior = [BehaviorSeries("speed", ts, vals)]
        sid = draw(st.sampled_from(ids))
        recs.append(SessionRecord(
            session_id=sid, subject_id=f"m{i % 2}", source_dataset="d", species="Mus musculus",
            spike_times_s=np.concatenate(units),
            unit_index=np.repeat(np.arange(n), [x.size for x in units]),
            unit_ids=[f"u{j}" for j in range(n)], unit_regions=[("CA1", "VISp")[j % 2] for j in range(n)],
            trials=trials, behavior=behavior, provenance={"path": f"/in/{i}.nwb"}))
    return recs


def write_corpus(out: Path, recs: list[SessionRecord], cfg: BuildConfig):
    """Stage each session as the build does (its rows as Arrow IPC, one chunk per row) and
    finalize the folder; returns the staged tables and metas."""
    staged_tables, metas = [], []
    with open_corpus_dir(out) as folder:
        staging = folder.path / STAGING
        staging.mkdir(exist_ok=True)
        for i, rec in enumerate(recs):
            table, meta = session_rows(rec, cfg)
            with pa.OSFile(str(staging / f"k{i}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, ROW_SCHEMA) as writer:
                writer.write_table(table, max_chunksize=1)
            meta["staging_key"] = f"k{i}"
            staged_tables.append(table)
            metas.append(meta)
        manifest = finalize(folder, metas, [], cfg, build_settings([], cfg))
    return staged_tables, metas, manifest


def _final_ids(recs: list[SessionRecord]) -> list[str]:
    """The ids the build gives: repeats of an id get -2, -3... in input path order."""
    seen: dict[str, int] = {}
    out = []
    for rec in recs:  # paths /in/0.nwb, /in/1.nwb... sort in this order
        seen[rec.session_id] = seen.get(rec.session_id, 0) + 1
        out.append(rec.session_id if seen[rec.session_id] == 1 else f"{rec.session_id}-{seen[rec.session_id]}")
    return out


def _check_corpus_round_trip(recs, cfg):
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Path(d) / "c"
        staged, metas, manifest = write_corpus(out, recs, cfg)
        corpus = Corpus(out)
        ids = _final_ids(recs)
        # every session once in the manifest, in exactly one split (or "both" for --split row)
        listed = [s["session_id"] for s in corpus.sessions]
        assert sorted(listed) == sorted(ids) and len(set(listed)) == len(listed)
        read: dict[str, dict[str, CorpusRow]] = {sid: {} for sid in ids}
        seen_split: dict[str, set] = {sid: set() for sid in ids}
        where: dict[tuple[str, str], str] = {}
        for split in ("train", "test"):
            info = corpus.manifest["splits"][split]
            rows = list(corpus.iter_rows(split))
            assert info["num_rows"] == len(rows)
            assert info["num_tokens"] == sum(r.num_units * r.num_bins for r in rows)
            assert info["num_sessions"] == len({r.session_id for r in rows})
            for r in rows:
                assert r.segment_id not in read[r.session_id]  # each row once over both splits
                read[r.session_id][r.segment_id] = r
                seen_split[r.session_id].add(split)
                where[(r.session_id, r.segment_id)] = split
        some = set(ids[::2])  # iter_rows(sessions=...) gives exactly those sessions' rows of the split
        for split in ("train", "test"):
            got_keys = sorted((r.session_id, r.segment_id) for r in corpus.iter_rows(split, sessions=some))
            assert got_keys == sorted(k for k, sp in where.items() if sp == split and k[0] in some)
        for s in corpus.sessions:
            want = {"both": {"train", "test"}}.get(s["split"], {s["split"]})
            assert seen_split[s["session_id"]] == want
            if cfg.split == "session":
                assert s["split"] in ("train", "test")
        # the rows read back are the rows staged, field by field
        for rec, sid, table, meta in zip(recs, ids, staged, metas):
            entry = corpus.session(sid)
            for key in ("num_units", "num_bins", "num_rows", "num_tokens", "num_spikes", "t_start_ms",
                        "bin_ms", "subject_id"):
                assert entry[key] == meta[key], key
            got = read[sid]
            assert set(got) == {f"segment_{i}" for i in range(table.num_rows)}
            mats = []
            for i, want in enumerate(table.to_pylist()):
                r = got[f"segment_{i}"]
                assert r.spike_counts.dtype == np.uint8
                np.testing.assert_array_equal(r.spike_counts, np.array(want["spike_counts"], np.uint8))
                assert r.num_units * r.num_bins <= cfg.max_row_tokens
                assert (r.t_start_ms, r.bin_ms, r.unit_ids, r.unit_regions, r.species, r.trials_json,
                        r.subject_id, r.source_dataset, r.behavior_names) == (
                    want["t_start_ms"], want["bin_ms"], want["unit_ids"], want["unit_regions"],
                    want["species"], want["trials_json"], want["subject_id"], want["source_dataset"],
                    want["behavior_names"])
                if want["behavior"]:  # rows without behaviour: see the (0, 0) test below
                    np.testing.assert_array_equal(r.behavior, np.array(want["behavior"], np.float32))
                mats.append(r.spike_counts)
            # the rows of a session tile its bin grid, and hold every spike where binning puts it
            counts = np.concatenate(mats, axis=1)
            starts = [got[f"segment_{i}"].t_start_ms for i in range(table.num_rows)]
            assert starts == [meta["t_start_ms"] + cfg.bin_ms * sum(m.shape[1] for m in mats[:i])
                              for i in range(len(mats))]
            want = count_on_edges(rec.spike_times_s, rec.unit_index, rec.num_units, meta["t_start_ms"],
                                  meta["num_bins"], cfg.bin_ms)
            np.testing.assert_array_equal(counts, want)
            assert int(want.sum()) == rec.spike_times_s.size  # nothing lies outside the grid


@_settings(25)
@given(session_records(ids=("a", "b", "c", "d")), st.sampled_from([10, 20]), st.integers(20, 300),
       st.sampled_from(["session", "row"]), st.floats(0.0, 0.9), st.integers(0, 1000),
       st.sampled_from([50, 400, 10**6]))
def test_a_corpus_reads_back_the_rows_and_metadata_it_was_written_with(
        recs, bin_ms, max_row_tokens, split, fraction, seed, shard_max_tokens):
    assume(all(r.num_units <= max_row_tokens for r in recs))
    cfg = BuildConfig(bin_ms=bin_ms, max_row_tokens=max_row_tokens, split=split, test_fraction=fraction,
                      seed=seed, shard_max_tokens=shard_max_tokens)
    _check_corpus_round_trip(recs, cfg)


@pytest.mark.parametrize("num_units, num_bins", [(1, 2), (3, 17)])  # fixed: no shrinking of a known failure
def test_a_row_without_behaviour_reads_back_zero_channels_of_its_bins(num_units, num_bins):
    rec = SessionRecord(session_id="a", subject_id="m", source_dataset="d", species="",
                        spike_times_s=np.array([0.0, (num_bins - 0.5) * 0.02]), unit_index=np.array([0, 0]),
                        unit_ids=[f"u{j}" for j in range(num_units)], unit_regions=["CA1"] * num_units,
                        provenance={"path": "/in/0.nwb"})
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_corpus(Path(d) / "c", [rec], BuildConfig(test_fraction=0.0))
        (row,) = Corpus(Path(d) / "c").iter_rows("train")
    assert row.spike_counts.shape == (num_units, num_bins)
    assert row.behavior.shape == (0, num_bins)


def test_repeated_session_ids_are_renamed_to_ids_no_other_session_has():
    """Inputs with ids a, a, a-2 (files x/a.nwb, y/a.nwb, z/a-2.nwb): the second a becomes a-3, not
    a second a-2 (which left a corpus that could not be opened)."""
    recs = []
    for i, sid in enumerate(["a", "a", "a-2"]):
        recs.append(SessionRecord(session_id=sid, subject_id="m", source_dataset="d", species="",
                                  spike_times_s=np.array([0.01 * (i + 1), 0.5]), unit_index=np.array([0, 0]),
                                  unit_ids=["u0"], unit_regions=["CA1"], provenance={"path": f"/in/{i}.nwb"}))
    cfg = BuildConfig(test_fraction=0.0)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_corpus(Path(d) / "c", recs, cfg)
        ids = [s["session_id"] for s in Corpus(Path(d) / "c").sessions]
    assert sorted(ids) == ["a", "a-2", "a-3"]


def test_a_rebuild_keeps_each_recordings_id_when_a_new_input_takes_a_renamed_id():
    """a/x, b/x, d/z gave x, x-2, z; adding c/x-2 and building again gave b's recording the id x-3
    and c's the id x-2 (a run keyed by x-2 then met another recording). Each earlier recording
    keeps its id now; the newcomer is renamed around them."""
    from spikefm.corpus.manifest import distinct_session_ids

    assert distinct_session_ids(["x", "x", "z"]) == ["x", "x-2", "z"]
    assert distinct_session_ids(["x", "x", "x-2", "z"]) == ["x", "x-3", "x-2", "z"]  # nothing earlier
    assert distinct_session_ids(["x", "x", "x-2", "z"], keep=["x", "x-2", None, "z"]) == ["x", "x-2", "x-2-2", "z"]
    # an earlier id that no longer fits the file's own id (the file was renamed) is not kept
    assert distinct_session_ids(["y", "x"], keep=["x-2", None]) == ["y", "x"]
    # two recordings claiming one earlier id: the first keeps it
    assert distinct_session_ids(["x", "x"], keep=["x", "x"]) == ["x", "x-2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "a-2", "a-3", "b", "a-2-2"]), min_size=1, max_size=8), st.data())
def test_distinct_session_ids_are_distinct_and_keep_what_they_can(ids, data):
    from spikefm.corpus.manifest import distinct_session_ids

    keep = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(["a", "a-2", "a-3", "b", "a-4"])),
                              min_size=len(ids), max_size=len(ids)))
    out = distinct_session_ids(ids, keep=keep)
    assert len(set(out)) == len(out) == len(ids)
    for sid, new in zip(ids, out):  # each is its own id or a numbered suffix of it
        assert new == sid or (new.startswith(sid + "-") and new[len(sid) + 1:].isdigit())
    # a kept id that fits its own id and no earlier session claimed is kept
    claimed = set()
    for sid, old, new in zip(ids, keep, out):
        fits = old is not None and (old == sid or (old.startswith(sid + "-") and old[len(sid) + 1:].isdigit()))
        if fits and old not in claimed:
            assert new == old
            claimed.add(old)


# =============================================================================================
# Windows


@st.composite
def session_grids(draw):
    """A session's full count matrix cut into rows, some rows left out (gaps), rows in any order."""
    bin_ms = draw(st.sampled_from([10, 20]))
    n = draw(st.integers(1, 4))
    g = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**31))
    counts = np.random.default_rng(seed).integers(0, 6, (n, g)).astype(np.uint8)
    t0 = bin_ms * draw(st.integers(-50, 500))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(g - 1, 1)), max_size=6))) - {g})
    pieces = list(zip([0, *cuts], [*cuts, g]))
    keep = [p for p in pieces if draw(st.booleans()) or p is pieces[0]]
    return bin_ms, counts, t0, keep


def _rows_of(counts, t0, bin_ms, pieces, trials_json="{}"):
    return [CorpusRow(spike_counts=counts[:, a:b], subject_id="m", session_id="s", segment_id=f"segment_{i}",
                      source_dataset="d", bin_ms=bin_ms, t_start_ms=t0 + a * bin_ms,
                      unit_ids=[f"u{j}" for j in range(counts.shape[0])],
                      unit_regions=["CA1"] * counts.shape[0], trials_json=trials_json)
            for i, (a, b) in enumerate(pieces)]


fractions = st.sampled_from([(0.7, 0.1, 0.2), (1.0, 0.0, 0.0), (0.5, 0.25, 0.25), (0.0, 0.0, 1.0),
                             (0.34, 0.33, 0.33)])


@_settings(150)
@given(session_grids(), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 30)), fractions,
       st.integers(0, 2**31), st.randoms(), st.sampled_from([0.0, 0.0, 50.0, 100.0, 150.0]))
def test_continuous_windows_lie_inside_the_recorded_bins_and_are_split_once(grid_spec, T, stride, fr, seed, rnd,
                                                                            min_rate_hz):
    bin_ms, counts_all, t0, pieces = grid_spec
    rows = _rows_of(counts_all, t0, bin_ms, pieces)

    def cut(rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grid = _assemble("s", rows)
            return _windows_from_grid(grid, "s", window_bins=T, align=None, pre_ms=0, table="trials",
                                      stride_bins=stride, split_fractions=fr, seed=seed,
                                      min_rate_hz=min_rate_hz)

    first, last = pieces[0][0], max(b for _, b in pieces)
    recorded = np.zeros(counts_all.shape[1], bool)
    for a, b in pieces:
        recorded[a:b] = True
    # units firing at >= min_rate_hz over the recorded bins are kept
    rate_hz = counts_all[:, recorded].sum(axis=1) / (recorded.sum() * bin_ms / 1000.0)
    units = np.flatnonzero(rate_hz >= min_rate_hz)
    if units.size == 0:
        with pytest.raises(ValueError, match="no unit fires at"):
            cut(rows)
        return
    w = cut(rows)
    np.testing.assert_array_equal(w.unit_index, units)
    assert w.units_dropped == counts_all.shape[0] - units.size
    counts = counts_all[units]
    # expected: every stride step from the first kept bin whose T bins were all recorded
    step = T if stride is None else stride
    starts = [s for s in range(first, last - T + 1, step) if recorded[s:s + T].all()]
    np.testing.assert_array_equal(w.t_start_ms, [t0 + s * bin_ms for s in starts])
    assert w.counts.shape == (len(starts), T, counts.shape[0])
    for k, s in enumerate(starts):
        np.testing.assert_array_equal(w.counts[k], counts[:, s:s + T].T)
    # splits: each window in exactly one, shares as rounded
    K = len(starts)
    parts = [w.indices(s) for s in SPLIT_NAMES]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(K))
    n_train, n_val, n_test = (p.size for p in parts)
    assert abs(n_test - K * fr[2]) <= 0.5 and n_val <= K - n_test
    assert abs(n_val - K * fr[1]) <= 0.5 or n_val == K - n_test
    # deterministic for a seed, whatever order the rows come in
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    again = cut(shuffled)
    np.testing.assert_array_equal(again.split, w.split)
    np.testing.assert_array_equal(again.t_start_ms, w.t_start_ms)
    np.testing.assert_array_equal(again.counts, w.counts)
    # train log rates: each unit's mean count over the train windows, floored
    rates = w.train_log_rates()
    if n_train == 0:
        assert rates is None
    else:
        mean = np.array([np.mean([counts[j, s:s + T].mean() for s in np.array(starts)[parts[0]]])
                         for j in range(counts.shape[0])])
        np.testing.assert_allclose(rates, np.log(np.maximum(mean, 1e-3)), rtol=1e-12)


@_settings(120)
@given(st.data())
def test_trial_windows_hold_their_event_in_the_event_bin(data):
    bin_ms = data.draw(st.sampled_from([10, 20]))
    n = data.draw(st.integers(1, 3))
    G = data.draw(st.integers(5, 150))
    counts = np.random.default_rng(data.draw(st.integers(0, 2**31))).integers(0, 5, (n, G)).astype(np.uint8)
    t0 = bin_ms * data.draw(st.integers(0, 300))
    event_bin = data.draw(st.integers(0, 4))
    T = data.draw(st.integers(event_bin + 1, event_bin + 30))
    rounding = data.draw(st.sampled_from(["floor", "nearest"]))
    span_us = (t0 - 200) * 1000, (t0 + G * bin_ms + 200) * 1000
    events_us = data.draw(st.lists(st.integers(*span_us), min_size=1, max_size=12, unique=True))
    missing = data.draw(st.lists(st.booleans(), min_size=len(events_us), max_size=len(events_us)))
    trials = {"trials": {
        "start_time": [e / 1e6 - 0.5 for e in events_us],
        "stop_time": [e / 1e6 + 0.5 for e in events_us],
        "stim_on_time": [None if m else e / 1e6 for e, m in zip(events_us, missing)],
        "choice": [(-1, 1)[e % 2] for e in events_us]}}
    js = json.dumps(trials)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, G - 1), max_size=4))))
    pieces = list(zip([0, *cuts], [*cuts, G]))
    rows = _rows_of(counts, t0, bin_ms, pieces, trials_json=js)  # every row repeats the trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = _windows_from_grid(_assemble("s", rows), "s", window_bins=T, align="stim_on_time",
                               pre_ms=event_bin * bin_ms, table="trials", stride_bins=None,
                               split_fractions=(0.6, 0.2, 0.2), seed=0, event_rounding=rounding)
    assert w.event_bin == event_bin
    bin_us = bin_ms * 1000
    by_start = sorted(range(len(events_us)), key=lambda i: events_us[i] / 1e6 - 0.5)  # merged order
    kept = []
    for k, i in enumerate(w.trial_index):
        j = by_start[i]
        e = events_us[j]
        assert not missing[j]
        s_us = int(w.t_start_ms[k]) * 1000
        ev_bin_start = s_us + event_bin * bin_us
        if rounding == "floor":
            assert ev_bin_start <= e < ev_bin_start + bin_us
        else:
            assert abs(e - ev_bin_start) * 2 <= bin_us
        s = (int(w.t_start_ms[k]) - t0) // bin_ms
        assert 0 <= s and s + T <= G  # inside the recording
        np.testing.assert_array_equal(w.counts[k], counts[:, s:s + T].T)
        assert w.labels["choice"][k] == (-1, 1)[e % 2]
        kept.append(j)
    # every trial whose window fits is kept, and each trial is counted once
    def fits(e):
        rel = e - t0 * 1000
        b = (rel + bin_us // 2) // bin_us if rounding == "nearest" else rel // bin_us
        return 0 <= b - event_bin and b - event_bin + T <= G
    want = sorted(j for j, e in enumerate(events_us) if not missing[j] and fits(e))
    assert sorted(kept) == want
    assert len(kept) + sum(w.skipped.values()) == len(events_us)
    assert w.skipped["missing_event"] == sum(missing)
    # saved splits restore each window's split, also among windows that start in the same bin
    shuffled = dataclasses.replace(w, split=np.roll(w.split, 1))
    with tempfile.TemporaryDirectory() as d:
        save_splits(Path(d) / "splits.json", {"s": w})
        restored = apply_splits({"s": shuffled}, Path(d) / "splits.json")["s"]
    np.testing.assert_array_equal(restored.split, w.split)


@_settings(8)
@given(session_records(ids=("a", "b", "c")), st.integers(1, 30), st.integers(0, 100))
def test_windows_of_a_built_corpus_are_the_sessions_bins_and_deterministic(recs, T, seed):
    """Through the public API: windows cut from a corpus equal slices of the session's own bins."""
    cfg = BuildConfig(bin_ms=20, max_row_tokens=40, test_fraction=0.4, seed=1)
    assume(all(r.num_units <= 40 for r in recs))
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Path(d) / "c"
        _, metas, _ = write_corpus(out, recs, cfg)
        ws = load_all_windows(out, window_bins=T, align=None, seed=seed)
        again = load_all_windows(out, window_bins=T, align=None, seed=seed)
    for rec, sid, meta in zip(recs, _final_ids(recs), metas):
        w = ws[sid]
        full = count_on_edges(rec.spike_times_s, rec.unit_index, rec.num_units, meta["t_start_ms"],
                              meta["num_bins"], 20)
        assert w.num_windows == meta["num_bins"] // T
        for k in range(w.num_windows):
            s = (int(w.t_start_ms[k]) - meta["t_start_ms"]) // 20
            assert s == k * T
            np.testing.assert_array_equal(w.counts[k], full[:, s:s + T].T)
        np.testing.assert_array_equal(w.split, again[sid].split)


@_settings(60)
@given(st.lists(session_grids(), min_size=1, max_size=3), st.integers(1, 8), st.integers(1, 3),
       st.integers(1, 4), st.integers(0, 1000), st.integers(0, 12))
def test_batcher_ranks_share_out_each_epochs_windows_once_and_resume_exactly(specs, T, world, batch, seed, stop):
    ws = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (bin_ms, counts, t0, pieces) in enumerate(specs):
            rows = _rows_of(counts, t0, bin_ms, pieces)
            ws[f"s{i}"] = _windows_from_grid(_assemble(f"s{i}", rows), f"s{i}", window_bins=T, align=None,
                                             pre_ms=0, table="trials", stride_bins=None,
                                             split_fractions=(1.0, 0.0, 0.0), seed=0)
    total = sum(w.num_windows for w in ws.values())
    assume(total >= world)

    def stream(rank, n_items, b=batch, state=None):
        """The (session, window) items of a rank's batches, checking each batch's padding."""
        it = WindowBatcher(ws, batch_size=b, seed=seed, split="train", rank=rank, world_size=world)
        if state is not None:
            it.load_state_dict(state)
        items = []
        while len(items) < n_items:
            out = next(it)
            for j, (sid, k) in enumerate(zip(out["session_ids"], out["window_index_B"].tolist())):
                w = ws[sid]
                n = w.num_units
                np.testing.assert_array_equal(out["counts_BTN"][j, :, :n].numpy(), w.counts[k].astype(np.float32))
                assert not out["counts_BTN"][j, :, n:].any() and out["unit_valid_BN"][j].sum() == n
                items.append((sid, k))
        return items[:n_items], it

    per_rank = [len(range(r, total, world)) for r in range(world)]
    epoch0 = [stream(r, per_rank[r])[0] for r in range(world)]
    flat = [x for e in epoch0 for x in e]
    # one epoch over all ranks: every window of the split exactly once
    assert sorted(flat) == sorted((sid, k) for sid, w in ws.items() for k in range(w.num_windows))
    # batches are the one-window stream cut into pieces, running across epoch ends
    n_long = max(2 * per_rank[0] + 3, (stop + 2) * batch)
    long, _ = stream(0, n_long)
    assert long == stream(0, n_long, b=1)[0]
    # a batcher resumed from a state continues exactly where the first one was
    first = WindowBatcher(ws, batch_size=batch, seed=seed, split="train", rank=0, world_size=world)
    for _ in range(stop):
        next(first)
    assert stream(0, 2 * batch, state=first.state_dict())[0] == long[stop * batch:stop * batch + 2 * batch]


# =============================================================================================
# Metrics


@st.composite
def rate_count_arrays(draw, min_trials=1, positive=True):
    K = draw(st.integers(min_trials, 5))
    T = draw(st.integers(1, 6))
    N = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    lo = 0.01 if positive else 0.0
    rates = rng.uniform(lo, 3.0, (K, T, N))
    if not positive:
        rates[rng.random((K, T, N)) < 0.2] = 0.0
    counts = rng.poisson(rates + draw(st.sampled_from([0.0, 0.5]))).astype(np.float64)
    nan_frac = draw(st.sampled_from([0.0, 0.0, 0.3]))
    counts[rng.random(counts.shape) < nan_frac] = np.nan
    silent = draw(st.integers(-1, N - 1))  # one neuron never spikes
    if silent >= 0:
        counts[..., silent] = np.where(np.isnan(counts[..., silent]), np.nan, 0.0)
    return rates, counts


def ref_bps(rates, counts, null_rates=None):
    """Pooled and per-neuron bits per spike from scipy's Poisson pmf, neuron by neuron; the null
    is each neuron's mean count over its scored entries unless ``null_rates`` gives it."""
    N = counts.shape[-1]
    c2, r2 = counts.reshape(-1, N), rates.reshape(-1, N)
    num, den, per = 0.0, 0.0, np.full(N, np.nan)
    for n in range(N):
        ev = ~np.isnan(c2[:, n])
        c, r = c2[ev, n], r2[ev, n]
        if c.size == 0:
            continue
        null = c.mean() if null_rates is None else null_rates[n]
        with np.errstate(divide="ignore"):
            d = float(np.sum(poisson.logpmf(c, r)) - np.sum(poisson.logpmf(c, null)))
        num += d
        den += c.sum()
        if c.sum() > 0:
            per[n] = d / (c.sum() * LN2)
    return (num / (den * LN2) if den else math.nan), per


@_settings(150)
@given(rate_count_arrays(positive=False))
def test_bits_per_spike_equal_scipys_poisson_likelihood_against_the_mean_rate(rc):
    rates, counts = rc
    pooled, per = ref_bps(rates, counts)
    total = np.nansum(counts)
    if total == 0:
        with pytest.warns(RuntimeWarning, match="no spikes"):
            assert math.isnan(bps_pooled(rates, counts))
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        got = bps_pooled(rates, counts)
    if math.isinf(pooled):
        assert got == pooled
    else:
        assert got == pytest.approx(pooled, rel=1e-9, abs=1e-9)
    got_per = bps_per_neuron(rates, counts)
    np.testing.assert_array_equal(np.isnan(got_per), np.isnan(per))
    np.testing.assert_allclose(got_per[~np.isnan(per)], per[~np.isnan(per)], rtol=1e-9, atol=1e-9)
    active = ~np.isnan(per)
    if active.any():
        assert bps_per_neuron_mean(rates, counts) == pytest.approx(float(per[active].mean()), rel=1e-9,
                                                                   abs=1e-9)
    # pooled = spike-weighted mean of the per-neuron scores + silent neurons' -sum(rates) / spikes
    if np.isfinite(per[active]).all():
        N = counts.shape[-1]
        spikes = np.nansum(counts.reshape(-1, N), axis=0)
        silent_ll = sum(-rates.reshape(-1, N)[~np.isnan(counts.reshape(-1, N)[:, n]), n].sum()
                        for n in range(N) if spikes[n] == 0)
        assert got == pytest.approx((np.sum(per[active] * spikes[active]) + silent_ll / LN2) / total,
                                    rel=1e-9, abs=1e-9)


@_settings(150)
@given(rate_count_arrays(), st.randoms())
def test_bits_per_spike_are_invariant_to_unit_trial_and_bin_order_and_ignore_unscored_rates(rc, rnd):
    rates, counts = rc
    assume(np.nansum(counts) > 0)
    K, T, N = counts.shape
    base, per = bps_pooled(rates, counts), bps_per_neuron(rates, counts)
    pu = np.array(rnd.sample(range(N), N))
    pk = np.array(rnd.sample(range(K), K))
    pt = np.array(rnd.sample(range(T), T))
    assert bps_pooled(rates[..., pu], counts[..., pu]) == pytest.approx(base, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(bps_per_neuron(rates[..., pu], counts[..., pu]), per[pu], rtol=1e-12)
    assert bps_pooled(rates[pk][:, pt], counts[pk][:, pt]) == pytest.approx(base, rel=1e-12, abs=1e-12)
    assert bps_pooled(rates.reshape(-1, N), counts.reshape(-1, N)) == pytest.approx(base, rel=1e-12, abs=1e-12)
    # rates where counts are NaN (not scored) may be anything
    odd = rates.copy()
    hole = np.isnan(counts)
    odd[hole] = np.array([np.nan, np.inf, -3.0, 1e9])[np.arange(hole.sum()) % 4]
    assert bps_pooled(odd, counts) == pytest.approx(base, rel=1e-12, abs=1e-12)
    # the null model (each neuron's mean count over the scored entries) scores 0 bits per spike
    scored = ~np.isnan(counts)
    null_N = np.array([counts[..., n][scored[..., n]].mean() if scored[..., n].any() else 1.0
                       for n in range(N)])
    null = np.broadcast_to(null_N, counts.shape)
    assert bps_pooled(null, counts) == pytest.approx(0.0, abs=1e-9)
    finite = np.isfinite(per)
    np.testing.assert_allclose(bps_per_neuron(null, counts)[finite], 0.0, atol=1e-9)
    # and so does any model against a given null equal to it
    assert bps_pooled(rates, counts, null_rates=rates[0, 0]) == pytest.approx(
        bps_pooled(rates, counts) - bps_pooled(np.broadcast_to(rates[0, 0], counts.shape), counts),
        rel=1e-9, abs=1e-9)


@_settings(100)
@given(rate_count_arrays(min_trials=3), st.sampled_from([0.9, 0.95]), st.booleans())
def test_bps_interval_is_theta_plus_minus_t_times_the_leave_one_trial_out_jackknife(rc, level, fixed_null):
    rates, counts = rc
    K = counts.shape[0]
    null = rates[1, 0] if fixed_null else None  # a given null is kept, not re-fitted per subset
    theta, _ = ref_bps(rates, counts, null)
    loo = np.array([ref_bps(np.delete(rates, k, 0), np.delete(counts, k, 0), null)[0] for k in range(K)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = bps_pooled_interval(rates, counts, level=level, null_rates=null)
    if math.isnan(theta) or np.isnan(loo).any():
        assert math.isnan(lo) and math.isnan(hi)
        return
    se = math.sqrt((K - 1) / K * float(np.sum((loo - loo.mean()) ** 2)))
    half = float(student_t.ppf(0.5 + level / 2, K - 1)) * se
    assert lo == pytest.approx(theta - half, rel=1e-7, abs=1e-9)
    assert hi == pytest.approx(theta + half, rel=1e-7, abs=1e-9)
    if fixed_null:
        return
    # the paired difference: the value is the difference of the two scores, its interval the
    # jackknife of the leave-one-out differences
    other = rates[::-1].copy() if K > 1 else rates
    theta_b, _ = ref_bps(other, counts)
    loo_b = np.array([ref_bps(np.delete(other, k, 0), np.delete(counts, k, 0))[0] for k in range(K)])
    diff = bps_pooled_difference(rates, other, counts, level=level)
    assert diff["value"] == pytest.approx(theta - theta_b, rel=1e-7, abs=1e-9)
    dl = loo - loo_b
    se = math.sqrt((K - 1) / K * float(np.sum((dl - dl.mean()) ** 2)))
    half = float(student_t.ppf(0.5 + level / 2, K - 1)) * se
    np.testing.assert_allclose(diff["ci95"], [theta - theta_b - half, theta - theta_b + half],
                               rtol=1e-7, atol=1e-9)


@_settings(150)
@given(st.integers(1, 30), st.integers(1, 4), st.integers(0, 2**31), st.sampled_from([0.0, 0.3]),
       st.floats(-5, 5).filter(lambda a: abs(a) > 1e-3), st.floats(-10, 10), st.randoms())
def test_r2_equals_the_pooled_formula_and_is_invariant_to_order_and_affine_rescaling(
        R, C, seed, nan_frac, a, b, rnd):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(R, C)) * rng.uniform(0.1, 3, C)
    p = y + rng.normal(scale=0.7, size=(R, C))
    y[rng.random((R, C)) < nan_frac] = np.nan
    ev = ~np.isnan(y)
    ss_res = sum(((y[ev[:, c], c] - p[ev[:, c], c]) ** 2).sum() for c in range(C))
    ss_tot = sum(((y[ev[:, c], c] - y[ev[:, c], c].mean()) ** 2).sum() for c in range(C) if ev[:, c].any())
    assume(ss_tot > 1e-9)
    want = 1 - ss_res / ss_tot
    got = r2_score_pooled(p, y)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    rows, cols = np.array(rnd.sample(range(R), R)), np.array(rnd.sample(range(C), C))
    assert r2_score_pooled(p[rows][:, cols], y[rows][:, cols]) == pytest.approx(got, rel=1e-9, abs=1e-9)
    assert r2_score_pooled(a * p + b, a * y + b) == pytest.approx(got, rel=1e-7, abs=1e-7)
    odd = p.copy()
    odd[~ev] = np.nan  # predictions where the target is not scored are ignored
    assert r2_score_pooled(odd, y) == pytest.approx(got, rel=1e-12, abs=1e-12)
    means = np.array([y[ev[:, c], c].mean() if ev[:, c].any() else 0.0 for c in range(C)])
    assert r2_score_pooled(np.broadcast_to(means, y.shape), y) == pytest.approx(0.0, abs=1e-9)
    assert r2_score_pooled(np.where(ev, y, 0.0), y) == 1.0


# =============================================================================================
# AR tokens: [255, c1..cn] per bin


count_dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.uint64,
                                np.float32, np.float64, np.bool_])


@_settings(200)
@given(count_dtypes, st.integers(1, 7), st.integers(0, 25), st.integers(0, 2**31))
def test_tokenize_then_detokenize_gives_the_counts_clipped_at_254(dtype, n, bins, seed):
    rng = np.random.default_rng(seed)
    hi = {np.bool_: 2, np.int8: 128, np.uint8: 256}.get(dtype, 400)
    raw = rng.integers(0, hi, (n, bins))
    raw[rng.random((n, bins)) < 0.1] = min(hi - 1, 255)
    counts = raw.astype(dtype)
    tok = tokenize(counts)
    assert tok.dtype == np.uint8 and tok.shape == (bins * (n + 1),)
    sep = np.flatnonzero(tok == SEPARATOR)
    np.testing.assert_array_equal(sep, np.arange(bins) * (n + 1))  # separators exactly at bin starts
    back = detokenize(tok, n)
    assert back.dtype == np.uint8 and back.shape == (n, bins)
    np.testing.assert_array_equal(back, np.minimum(raw, MAX_COUNT_TOKEN))
    if bins:
        assert row_num_units(tok) == n


@_settings(200)
@given(st.integers(1, 7), st.integers(0, 25), st.integers(0, 2**31),
       st.sampled_from([np.uint8, np.int64, np.float64]), st.booleans())
def test_detokenize_then_tokenize_gives_the_tokens_back(n, bins, seed, dtype, batch_of_one):
    rng = np.random.default_rng(seed)
    grid = np.empty((bins, n + 1), np.int64)
    grid[:, 0] = SEPARATOR
    grid[:, 1:] = rng.integers(0, SEPARATOR, (bins, n))  # any count token 0..254
    tok = grid.reshape(-1).astype(dtype)
    counts = detokenize(tok[None] if batch_of_one else tok, n)
    np.testing.assert_array_equal(tokenize(counts), grid.reshape(-1))
    # any other unit count that divides the length is refused, never silently misread
    for m in range(1, 9):
        if m != n and tok.size and tok.size % (m + 1) == 0:
            with pytest.raises(ValueError):
                detokenize(tok, m)


@_settings(150)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**31))
def test_permuting_a_rows_units_equals_tokenizing_the_permuted_counts(n, bins, seed):
    counts = np.random.default_rng(seed).integers(0, 300, (n, bins))
    rng = np.random.default_rng(seed + 1)
    perm = copy.deepcopy(rng).permutation(n)  # the permutation the function will draw
    np.testing.assert_array_equal(permute_row_units(tokenize(counts), rng), tokenize(counts[perm]))


@_settings(150)
@given(st.integers(1, 6), st.integers(1, 10), st.data())
def test_bin_positions_give_each_tokens_unit_bin_and_state(n, bins, data):
    counts = np.random.default_rng(data.draw(st.integers(0, 2**31))).integers(0, 255, (n, bins))
    tok = tokenize(counts)
    start = data.draw(st.integers(0, tok.size - 1))
    L = data.draw(st.integers(1, tok.size - start))
    window = torch.from_numpy(tok[start:start + L].astype(np.int64))[None]
    g = start + np.arange(L)  # each token's place in the row
    unit = g % (n + 1)  # 0 for the separator, u for unit u's count
    with_prefix = bin_positions(window, torch.tensor([window_prefix(n, start)]))
    np.testing.assert_array_equal(with_prefix.unit_BL[0].numpy(), unit)
    np.testing.assert_array_equal(with_prefix.state_BL[0].numpy(), 2 + np.minimum(n - unit, STATE_CAP))
    seps = np.cumsum(unit == 0)  # separators at or before each token, within the window
    np.testing.assert_array_equal(with_prefix.bin_BL[0].numpy(), seps)
    plain = bin_positions(window)
    np.testing.assert_array_equal(plain.bin_BL[0].numpy(), seps)
    np.testing.assert_array_equal(plain.unit_BL[0].numpy(), np.where(seps > 0, unit, np.arange(L)))
    want_state = np.where(seps == 0, 0, np.where(seps == 1, 1, 2 + np.minimum(n - unit, STATE_CAP)))
    np.testing.assert_array_equal(plain.state_BL[0].numpy(), want_state)
