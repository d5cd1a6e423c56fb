"""spikefm.data.windows: windows equal independent binnings of the NWB spikes at the right event
bins, skipped trials are counted, labels/behaviour follow the trials, splits are seeded and
round-trip through JSON, and the batcher mixes sessions, pads, shards by rank and resumes exactly."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from spikefm import Corpus
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.data.windows import (
    SessionWindows,
    WindowBatcher,
    apply_splits,
    load_all_windows,
    load_splits,
    make_session_windows,
    save_splits,
)

from conftest import random_units, write_nwb

BIN_MS = 20
DURATION_S = 60
NUM_BINS = DURATION_S * 1000 // BIN_MS


def _session_spec(seed: int, num_units: int, regions: list[str]):
    """Spike times, trial table and the expected event times (exact, in ms) of one session."""
    rng = np.random.default_rng(seed)
    units = random_units(rng, num_units, DURATION_S - 0.01, rate_hz=8.0)
    # Anchor spikes in the first and last bin so the recording covers exactly [0, DURATION_S).
    units[0] = np.sort(np.concatenate([units[0], [0.0005, DURATION_S - 0.0005]]))
    # Event times as decimal strings: exactly on a bin edge, inside a bin, just before an edge.
    offsets = ["0.300", "0.307", "0.3199", "0.340", "0.3551"]
    stim, start, stop = [], [], []
    for i in range(24):
        t0 = Fraction(2) + Fraction(22, 10) * i
        stim.append(t0 + Fraction(offsets[i % len(offsets)]))
        start.append(t0)
        stop.append(t0 + 2)
    # Trials that must be skipped: no event, window before the recording, window after it.
    stim += [None, Fraction(3, 10), Fraction(DURATION_S) - Fraction(1)]
    start += [Fraction(DURATION_S) - Fraction(7), Fraction(1, 10), Fraction(DURATION_S) - Fraction(3, 2)]
    stop += [s + Fraction(1, 2) for s in start[-3:]]
    order = np.argsort([float(s) for s in start], kind="stable")
    stim = [stim[i] for i in order]
    start = [start[i] for i in order]
    stop = [stop[i] for i in order]
    n = len(start)
    trials = {
        "start_time": np.array([float(x) for x in start]),
        "stop_time": np.array([float(x) for x in stop]),
        "stim_on_time": np.array([np.nan if x is None else float(x) for x in stim]),
        "choice": np.array([(-1, 1)[(i * 7) % 3 == 0] for i in range(n)], dtype=np.int64),
        "block_prior": np.array([(0.2, 0.5, 0.8)[i % 3] for i in range(n)]),
        "reaction_time": rng.uniform(0.1, 0.5, n),  # a time column: never a label
        "peak_speed": rng.uniform(1.0, 2.0, n),  # continuous: too many values to be a label
    }
    # A linear behaviour signal: linear interpolation at bin centres recovers 2 t + 1 exactly.
    beh_t = np.arange(0, DURATION_S * 100 + 1) / 100.0
    behavior = {"lever": (beh_t, 2.0 * beh_t + 1.0)}
    return units, trials, stim, behavior


@pytest.fixture(scope="module")
def corpus_info(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    specs = {}
    paths = []
    for name, seed, regions in (("sesA", 1, ["CA1", "VISp"] * 3),
                                ("sesB", 2, ["CA1"] * 3 + ["VISp"] * 4 + ["LP"] * 2)):
        units, trials, stim, behavior = _session_spec(seed, len(regions), regions)
        # Regions go in a units column: the reader does not recover them from the ragged
        # units.electrodes column that write_nwb produces (they would all read "unknown").
        paths.append(write_nwb(root / "nwb" / f"{name}.nwb", units, regions, trials=trials,
                               behavior=behavior, subject_id=name, region_in_units=True))
        specs[name] = dict(units=units, trials=trials, stim=stim, regions=regions)
    cfg = BuildConfig(bin_ms=BIN_MS, max_row_tokens=6 * 400, split="row", test_fraction=0.3, seed=0)
    build_corpus([str(p) for p in paths], root / "corpus", cfg, progress=False)
    return Corpus(root / "corpus"), specs


def _histogram(units, t_start_ms: int, num_bins: int) -> np.ndarray:
    """(T, N) counts by np.histogram on exact edges (independent of the corpus binning)."""
    edges = (t_start_ms + BIN_MS * np.arange(num_bins + 1)) / 1000.0
    return np.stack([np.histogram(u, bins=edges)[0] for u in units], axis=1)


def _windows(corpus, sid, **kw):
    with pytest.warns(RuntimeWarning, match="skipped"):
        return make_session_windows(corpus, sid, **kw)


def test_rows_span_both_corpus_splits(corpus_info):
    corpus, _ = corpus_info
    splits = {split for split in ("train", "test") for r in corpus.iter_rows(split) if r.session_id == "sesA"}
    assert splits == {"train", "test"}  # so windows really reassemble rows from any split


def test_trial_windows_equal_histograms_at_event_bins(corpus_info):
    corpus, specs = corpus_info
    spec = specs["sesA"]
    w = _windows(corpus, "sesA", window_bins=100, align="stim_on_time", pre_ms=500)
    assert w.skipped == {"missing_event": 1, "outside_recording": 2, "gap_in_recording": 0}
    kept = [i for i, s in enumerate(spec["stim"]) if s is not None and s - Fraction(1, 2) >= 0
            and s + Fraction(3, 2) <= DURATION_S]
    assert len(kept) == 24 and w.trial_index.tolist() == kept
    assert w.counts.shape == (24, 100, 6) and w.counts.dtype == np.uint8
    assert w.event_bin == 25 and w.bin_ms == BIN_MS
    for k, i in enumerate(kept):
        event_bin_start_ms = int(spec["stim"][i] * 1000 // BIN_MS) * BIN_MS  # bin holding the event
        start_ms = event_bin_start_ms - 500
        assert w.t_start_ms[k] == start_ms
        np.testing.assert_array_equal(w.counts[k], _histogram(spec["units"], start_ms, 100))
    # labels: discrete trial columns only, values of the kept trials
    assert set(w.labels) == {"choice", "block_prior"}
    np.testing.assert_array_equal(w.labels["choice"], spec["trials"]["choice"][kept].astype(float))
    np.testing.assert_array_equal(w.labels["block_prior"], spec["trials"]["block_prior"][kept])
    # behaviour: interpolated at bin centres
    assert w.behavior_names == ["lever"] and w.behavior.shape == (24, 100, 1)
    centres_s = (w.t_start_ms[:, None] + BIN_MS * (np.arange(100) + 0.5)) / 1000.0
    np.testing.assert_allclose(w.behavior[..., 0], 2 * centres_s + 1, rtol=1e-6)
    # regions
    assert w.unit_regions == spec["regions"]
    assert w.region_ids.tolist() == [0, 1] * 3 and w.region_ids.dtype == np.int64


def test_other_window_shapes_and_event_bin(corpus_info):
    corpus, specs = corpus_info
    w = _windows(corpus, "sesB", window_bins=40, pre_ms=200)
    assert w.event_bin == 10 and w.counts.shape[1:] == (40, 9)
    i = w.trial_index[3]
    start_ms = int(specs["sesB"]["stim"][i] * 1000 // BIN_MS) * BIN_MS - 200
    np.testing.assert_array_equal(w.counts[3], _histogram(specs["sesB"]["units"], start_ms, 40))
    with pytest.raises(ValueError, match="multiple of bin_ms"):
        make_session_windows(corpus, "sesB", pre_ms=210)
    with pytest.raises(ValueError, match="no column 'go_cue_time'"):
        make_session_windows(corpus, "sesB", align="go_cue_time")


def test_continuous_windows(corpus_info):
    corpus, specs = corpus_info
    w = make_session_windows(corpus, "sesA", window_bins=50, align=None)
    assert w.num_windows == NUM_BINS // 50 and w.align is None and w.event_bin is None
    assert w.labels == {} and (w.trial_index == -1).all()
    np.testing.assert_array_equal(w.t_start_ms, np.arange(NUM_BINS // 50) * 50 * BIN_MS)
    for k in (0, 17, w.num_windows - 1):
        np.testing.assert_array_equal(w.counts[k], _histogram(specs["sesA"]["units"], int(w.t_start_ms[k]), 50))
    overlapping = make_session_windows(corpus, "sesA", window_bins=50, align=None, stride_bins=25)
    assert overlapping.num_windows == (NUM_BINS - 50) // 25 + 1
    np.testing.assert_array_equal(overlapping.counts[1, :25], overlapping.counts[0, 25:])
    # a missing trial table falls back to continuous windows, with a warning
    with pytest.warns(RuntimeWarning, match="no 'blocks' trial table"):
        fb = make_session_windows(corpus, "sesA", window_bins=50, table="blocks")
    np.testing.assert_array_equal(fb.counts, w.counts)


def test_split_fractions_and_determinism(corpus_info):
    corpus, _ = corpus_info
    w = make_session_windows(corpus, "sesA", window_bins=50, align=None)  # 60 windows
    K = w.num_windows
    counts = {s: int((w.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"test": round(0.2 * K), "val": round(0.1 * K), "train": K - round(0.2 * K) - round(0.1 * K)}
    again = make_session_windows(corpus, "sesA", window_bins=50, align=None)
    np.testing.assert_array_equal(again.split, w.split)
    other = make_session_windows(corpus, "sesA", window_bins=50, align=None, seed=1)
    assert not np.array_equal(other.split, w.split)
    odd = make_session_windows(corpus, "sesA", window_bins=50, align=None, split_fractions=(0.5, 0.0, 0.5))
    assert (odd.split == "test").sum() == 30 and (odd.split == "val").sum() == 0
    # per-session seeding: a session's split does not depend on which other sessions are loaded
    with pytest.warns(RuntimeWarning, match="skipped"):
        both = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100)
    alone = _windows(corpus, "sesB", window_bins=100)
    np.testing.assert_array_equal(both["sesB"].split, alone.split)
    np.testing.assert_array_equal(both["sesB"].counts, alone.counts)
    with pytest.raises(ValueError, match="split_fractions"):
        make_session_windows(corpus, "sesA", split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="not in"):
        make_session_windows(corpus, "nope")


def test_saved_splits_round_trip(corpus_info, tmp_path):
    corpus, _ = corpus_info
    with pytest.warns(RuntimeWarning):
        ws = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100, seed=3)
    save_splits(tmp_path / "run" / "splits.json", ws)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name != "splits.json"]  # no temp left
    saved = load_splits(tmp_path / "run" / "splits.json")
    assert saved["sesA"]["t_start_ms"] == ws["sesA"].t_start_ms.tolist()
    with pytest.warns(RuntimeWarning):
        fresh = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100, seed=99)
    assert not np.array_equal(fresh["sesA"].split, ws["sesA"].split)
    restored = apply_splits(fresh, tmp_path / "run" / "splits.json")
    for sid in ws:
        np.testing.assert_array_equal(restored[sid].split, ws[sid].split)
        np.testing.assert_array_equal(restored[sid].counts, ws[sid].counts)
    # order of windows does not matter: matching is by start time
    perm = np.random.default_rng(0).permutation(ws["sesA"].num_windows)
    shuffled = SessionWindows(**{**ws["sesA"].__dict__, "t_start_ms": ws["sesA"].t_start_ms[perm],
                                 "split": np.full(perm.size, "train")})
    back = apply_splits({"sesA": shuffled}, saved)["sesA"]
    np.testing.assert_array_equal(back.split, ws["sesA"].split[perm])
    # different windows than saved -> error
    cont = {"sesA": make_session_windows(corpus, "sesA", window_bins=100, align=None)}
    with pytest.raises(ValueError, match="windows differ"):
        apply_splits(cont, saved)
    with pytest.raises(ValueError, match="not in the saved splits"):
        apply_splits({"sesC": ws["sesA"]}, saved)


def test_batcher_mixes_sessions_and_pads(corpus_info):
    corpus, _ = corpus_info
    with pytest.warns(RuntimeWarning):
        ws = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100)
    total = sum(w.num_windows for w in ws.values())
    batcher = WindowBatcher(ws, batch_size=6, seed=0, split=None)
    seen = []
    mixed = False
    for _ in range(total // 6):
        batch = next(batcher)
        B, T, N = batch["counts_BTN"].shape
        assert batch["counts_BTN"].dtype == torch.float32 and B == 6 and T == 100
        assert N == max(ws[s].num_units for s in batch["session_ids"])
        mixed |= len(set(batch["session_ids"])) > 1
        for b, sid in enumerate(batch["session_ids"]):
            w, k = ws[sid], int(batch["window_index_B"][b])
            n = w.num_units
            np.testing.assert_array_equal(batch["counts_BTN"][b, :, :n].numpy(), w.counts[k])
            assert (batch["counts_BTN"][b, :, n:] == 0).all()
            assert batch["unit_valid_BN"][b].tolist() == [True] * n + [False] * (N - n)
            assert batch["region_BN"][b].tolist() == w.region_ids.tolist() + [-1] * (N - n)
            seen.append((sid, k))
    assert mixed
    # one epoch (48 windows = 8 batches of 6) visits every window exactly once
    assert sorted(seen) == sorted((s, k) for s, w in ws.items() for k in range(w.num_windows))
    train_only = WindowBatcher(ws, batch_size=5, seed=0, split="train")
    batch = next(train_only)
    assert all(ws[s].split[k] == "train" for s, k in zip(batch["session_ids"], batch["window_index_B"].tolist()))


def test_batcher_ranks_take_disjoint_windows(corpus_info):
    corpus, _ = corpus_info
    with pytest.warns(RuntimeWarning):
        ws = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100)
    per_rank = []
    for rank in range(3):
        b = WindowBatcher(ws, batch_size=4, seed=5, split=None, rank=rank, world_size=3)
        items = []
        for _ in range(4):  # 16 windows = this rank's share of the 48 in epoch 0
            batch = next(b)
            items += list(zip(batch["session_ids"], batch["window_index_B"].tolist()))
        per_rank.append(set(items))
        assert len(items) == 16 == len(set(items))
    assert not (per_rank[0] & per_rank[1]) and not (per_rank[1] & per_rank[2]) and not (per_rank[0] & per_rank[2])
    assert len(set().union(*per_rank)) == 48
    with pytest.raises(ValueError, match="rank"):
        WindowBatcher(ws, batch_size=4, rank=3, world_size=3)
    # numpy integers are ints (np.int64(4) was refused as 'not a positive int'); bools are not
    b = WindowBatcher(ws, batch_size=np.int64(4), seed=5, split=None, rank=np.int64(0), world_size=np.int64(3))
    first = next(b)
    assert set(zip(first["session_ids"], first["window_index_B"].tolist())) <= per_rank[0]
    assert len(first["session_ids"]) == 4
    with pytest.raises(ValueError, match="batch_size must be a positive int, got True"):
        WindowBatcher(ws, batch_size=True)


def test_batcher_resumes_exactly(corpus_info):
    corpus, _ = corpus_info
    with pytest.warns(RuntimeWarning):
        ws = load_all_windows(corpus, ["sesA", "sesB"], window_bins=100)
    a = WindowBatcher(ws, batch_size=7, seed=11, split="train")
    for _ in range(6):  # crosses an epoch end (train has ~34 windows)
        next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(8)]
    b = WindowBatcher(ws, batch_size=7, seed=11, split="train")
    b.load_state_dict(state)
    got = [next(b) for _ in range(8)]
    for e, g in zip(expected, got):
        assert e["session_ids"] == g["session_ids"]
        for key in ("counts_BTN", "unit_valid_BN", "region_BN", "window_index_B"):
            assert torch.equal(e[key], g[key])
    # a fresh batcher does not continue where the old one stopped (the test can fail)
    c = WindowBatcher(ws, batch_size=7, seed=11, split="train")
    fresh = [next(c) for _ in range(8)]
    assert any(f["session_ids"] != e["session_ids"] or not torch.equal(f["window_index_B"], e["window_index_B"])
               for f, e in zip(fresh, expected))
    with pytest.raises(ValueError, match="seed"):
        WindowBatcher(ws, batch_size=7, seed=12, split="train").load_state_dict(state)


def test_nearest_event_rounding_puts_the_event_within_half_a_bin(corpus_info):
    corpus, specs = corpus_info
    spec = specs["sesA"]
    w = _windows(corpus, "sesA", window_bins=100, pre_ms=500, event_rounding="nearest")
    for k, i in enumerate(w.trial_index):
        event_ms = spec["stim"][i] * 1000  # exact (Fraction)
        nearest_edge = int((event_ms / BIN_MS + Fraction(1, 2)) // 1) * BIN_MS  # round half up
        assert w.t_start_ms[k] == nearest_edge - 500
        assert abs(Fraction(int(w.t_start_ms[k]) + 500) - event_ms) <= BIN_MS / 2
        np.testing.assert_array_equal(w.counts[k], _histogram(spec["units"], int(w.t_start_ms[k]), 100))


def test_trial_filters_and_unit_rate_filter(corpus_info):
    corpus, specs = corpus_info
    spec = specs["sesB"]
    w = _windows(corpus, "sesB", window_bins=50, pre_ms=200, drop_nogo=True)
    assert w.skipped["no_go"] == 0  # every choice is -1 or +1
    with pytest.raises(ValueError, match="first_movement_time"):
        make_session_windows(corpus, "sesB", window_bins=50, pre_ms=200, rt_range_ms=(80, 2000))
    with pytest.raises(ValueError, match="rt_range_ms must be"):
        make_session_windows(corpus, "sesB", window_bins=50, pre_ms=200, rt_range_ms=(500, 100))
    rates = np.array([len(u) / DURATION_S for u in spec["units"]])
    threshold = float(np.median(rates))
    f = _windows(corpus, "sesB", window_bins=50, pre_ms=200, min_rate_hz=threshold)
    kept = np.flatnonzero(rates >= threshold)
    assert f.unit_index.tolist() == kept.tolist() and f.units_dropped == len(rates) - kept.size
    assert f.unit_regions == [spec["regions"][i] for i in kept]
    full = _windows(corpus, "sesB", window_bins=50, pre_ms=200)
    np.testing.assert_array_equal(f.counts, full.counts[:, :, kept])
    with pytest.raises(ValueError, match="no unit fires"):
        make_session_windows(corpus, "sesB", window_bins=50, pre_ms=200, min_rate_hz=1e6)


def test_real_recording_aligns_to_a_named_trial_table(real_nwb, tmp_path):
    """The DANDI file keeps its trials in encoding/recognition/timediscrimination tables, none
    named 'trials': windows fell back to continuous ones with no way to choose a table. Now the
    warning names the tables, and data.trial_table (NDT, NEDS) aligns to one of them."""
    import h5py
    import warnings

    from spikefm.families import run_config
    from spikefm.families.ndt.family import window_options

    build_corpus([str(real_nwb)], tmp_path / "c", BuildConfig(), progress=False)
    corpus = Corpus(tmp_path / "c")
    (sid,) = corpus.session_ids()
    with pytest.warns(RuntimeWarning, match=r"has no 'trials' trial table \(its trial tables: encoding_table, "
                                            r"recognition_table, timediscrimination_table; name one with "
                                            r"data.trial_table=NAME\)"):
        load_all_windows(corpus, [sid], window_bins=50, align="auto", pre_ms=200)
    cfg = run_config("ndt", preset="tiny", corpus=str(tmp_path / "c"),
                     overrides=["data.trial_table=recognition_table", "data.window_bins=50", "data.pre_ms=200"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the table is found
        w = load_all_windows(corpus, [sid], **window_options(cfg.data))[sid]
    with h5py.File(real_nwb, "r") as f:  # the table's own events, read independently
        table = f["intervals/recognition_table"]
        column = next(c for c in ("stim_on_time", "go_cue_time", "target_on_time", "start_time") if c in table)
        events = table[column][:]
    assert w.align == column and w.num_windows + sum(w.skipped.values()) == len(events)
    assert w.num_windows > 0.9 * len(events)
    # each window starts pre_ms before its trial's event, on the session's 20 ms grid
    start = events[w.trial_index] * 1000.0 - 200.0
    assert np.all(np.abs(w.t_start_ms - start) <= 20.0), np.abs(w.t_start_ms - start).max()


def test_held_out_windows_sharing_bins_with_train_windows_are_counted_in_a_warning(tmp_path):
    """Trials closer than the window length put held-out spikes in training windows; this went
    unsaid (5 such windows on the real file with 2 s windows)."""
    import re

    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=1, seed=0, duration_s=120.0, units_range=(20, 22), progress=False)
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    corpus = Corpus(tmp_path / "c")
    with pytest.warns(RuntimeWarning, match="share bins with train windows") as caught:
        w = next(iter(load_all_windows(corpus, window_bins=200, align="stim_on_time", pre_ms=500).values()))
    said = int(re.search(r"(\d+) val/test window", str(caught[0].message)).group(1))
    starts, train = w.t_start_ms // w.bin_ms, w.split == "train"
    expected = sum(1 for k in np.flatnonzero(~train)  # computed here: any train window within 200 bins
                   if np.any(np.abs(starts[train] - starts[k]) < 200))
    assert said == expected > 0


def test_numpy_integer_window_options_are_accepted(corpus_info):
    """make_session_windows(..., window_bins=np.int64(50)) said 'window_bins must be a positive
    int, got np.int64(50)'."""
    corpus, _ = corpus_info
    with pytest.warns(RuntimeWarning, match="share bins with train windows"):  # overlapping windows
        ref = make_session_windows(corpus, "sesA", window_bins=50, align=None, stride_bins=25)
    with pytest.warns(RuntimeWarning, match="share bins with train windows"):
        w = make_session_windows(corpus, "sesA", window_bins=np.int64(50), align=None, stride_bins=np.int32(25))
    np.testing.assert_array_equal(w.counts, ref.counts)
    np.testing.assert_array_equal(w.t_start_ms, ref.t_start_ms)
    ws = load_all_windows(corpus, ["sesA"], window_bins=np.int64(50), align=None, pre_ms=np.int64(0))
    np.testing.assert_array_equal(ws["sesA"].counts, make_session_windows(corpus, "sesA", window_bins=50,
                                                                          align=None).counts)
    for kw, match in (({"window_bins": True}, "window_bins must be a positive int, got True"),
                      ({"window_bins": np.bool_(True)}, "window_bins must be a positive int"),
                      ({"window_bins": 50.0}, "window_bins must be a positive int, got 50.0"),
                      ({"pre_ms": np.int64(-20)}, "pre_ms must be a non-negative int"),
                      ({"stride_bins": True}, "stride_bins must be a positive int, got True")):
        with pytest.raises(ValueError, match=match):
            make_session_windows(corpus, "sesA", align=None, **{"window_bins": 50, **kw})


def test_a_single_session_id_string_is_refused_in_one_line(corpus_info):
    """Corpus.iter_rows(sessions="sesA") silently gave no rows (a set of characters); it is now
    refused at the call, as load_all_windows refuses a string."""
    corpus, _ = corpus_info
    for call, name in ((lambda: corpus.iter_rows("train", sessions="sesA"), "sessions"),
                       (lambda: load_all_windows(corpus, "sesA"), "session_ids")):
        with pytest.raises(TypeError) as err:
            call()
        assert str(err.value) == (f"{name} must be a list of session ids, got the string 'sesA'; for one "
                                  "session pass ['sesA']")
    with pytest.raises(TypeError, match=r"sessions must be a list of session ids \(str\), got 1 \(int\)"):
        corpus.iter_rows("train", sessions=["sesA", 1])
    with pytest.raises(TypeError, match="sessions must be a list of session ids, got int 5"):
        corpus.iter_rows("train", sessions=5)
    rows = list(corpus.iter_rows("train", sessions=["sesA"], with_extras=False))
    assert rows and {r.session_id for r in rows} == {"sesA"}
    assert {r.session_id for r in corpus.iter_rows("train", sessions=("sesA",))} == {"sesA"}


def test_a_trial_table_no_session_has_is_refused_not_replaced_by_continuous_windows(corpus_info):
    """data.trial_table=TYPO warned per session and cut continuous windows: a run trained on
    something else than asked. A named table none of the sessions holds is refused in one line
    naming the tables they have; the default table keeps its per-session fallback."""
    corpus, _ = corpus_info
    sids = corpus.session_ids()
    with pytest.raises(ValueError, match=r"trial table 'trails': none of the 2 sessions has it \(their trial "
                                         r"tables: trials\); name one of them with data.trial_table=NAME"):
        load_all_windows(corpus, sids, table="trails", window_bins=50, pre_ms=200)
    w = load_all_windows(corpus, sids, table="trials", window_bins=50, pre_ms=200)
    assert all(x.align == "stim_on_time" for x in w.values())
    # continuous windows need no table, whatever its name
    w = load_all_windows(corpus, sids, table="trails", align=None, window_bins=50)
    assert all(x.align is None and x.num_windows > 0 for x in w.values())
    # a finished run's windows cut again as its training cut them (a session without the table fell
    # back to continuous windows then): evaluation passes require_table=False
    with pytest.warns(RuntimeWarning, match="has no 'trails' trial table"):
        w = load_all_windows(corpus, sids[:1], table="trails", window_bins=50, pre_ms=200, require_table=False)
    assert w[sids[0]].align is None and w[sids[0]].num_windows > 0


def test_a_psth_is_split_by_the_first_label_with_two_values():
    """The report's and behaviour decoding's PSTHs took the first label by name even when it held
    one value (a real file's ExperimentID), which splits nothing."""
    from spikefm.data.windows import psth_condition

    one = np.array([7.0, 7.0, np.nan])
    assert psth_condition({"ExperimentID": one, "old_new": np.array([1.0, 2.0, 1.0])}) == "old_new"
    assert psth_condition({"a": np.array(["x", None, "y"], dtype=object), "choice": np.array([1.0, 1.0])}) == "a"
    assert psth_condition({"target_angle": np.array([0.0, 90.0]), "choice": np.array([-1.0, 1.0])}) == "choice"
    assert psth_condition({"ExperimentID": one}) is None and psth_condition({}) is None
