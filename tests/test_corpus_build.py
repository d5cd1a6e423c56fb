"""Corpus build: binning, chunking, splits, shards, bad inputs, resume, DANDI (offline)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.cli import main as cli_main
from spikefm.corpus import bin_spikes
from spikefm.corpus.binning import bin_edges_s
from spikefm.corpus.build import BuildConfig, build_corpus, chunk_bounds

from conftest import random_units, write_nwb


def histogram_counts(units, t_start_ms, num_bins, bin_ms):
    """The reference pipeline's method: one np.histogram per unit on the same edges."""
    edges = (t_start_ms + bin_ms * np.arange(num_bins + 1)) / 1000.0
    return np.stack([np.histogram(u, bins=edges)[0] for u in units])


def corpus_session_matrix(corpus: Corpus, session_id: str) -> tuple[np.ndarray, int]:
    """Reassemble a session from its rows (any split), ordered by chunk start."""
    rows = [r for split in ("train", "test") for r in corpus.iter_rows(split)
            if r.session_id == session_id]
    rows.sort(key=lambda r: r.t_start_ms)
    for a, b in zip(rows, rows[1:]):
        assert b.t_start_ms == a.t_start_ms + a.num_bins * a.bin_ms  # chunks tile the session
    return np.concatenate([r.spike_counts for r in rows], axis=1), rows[0].t_start_ms


# --- binning -----------------------------------------------------------------------------------

def test_bin_spikes_equals_per_unit_histogram_including_edges():
    rng = np.random.default_rng(1)
    units = random_units(rng, 7, 30.0, rate_hz=20)
    units[0] = np.concatenate([units[0], np.arange(0, 30, 0.02)])  # spikes exactly on edges
    t = np.concatenate(units)
    u = np.concatenate([np.full(len(x), i) for i, x in enumerate(units)])
    perm = rng.permutation(t.size)  # any order
    got = bin_spikes(t[perm], u[perm], 7, 0.0, 30.0, 20)
    ref = histogram_counts([x[x < 30.0] for x in units], 0, 1500, 20)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.uint8


def test_bin_spikes_clips_at_255_and_counts_clipped_cells():
    t = np.concatenate([np.full(300, 0.005), np.full(255, 0.025), np.full(10, 0.045)])
    u = np.zeros(t.size, dtype=np.int64)
    counts, clipped = bin_spikes(t, u, 1, 0.0, 0.06, 20, return_num_clipped=True)
    assert counts.tolist() == [[255, 255, 10]]  # 300 clipped, 255 kept, nothing wraps around
    assert clipped == 1


def test_bin_spikes_with_tiny_chunks_mixed_order_and_runs_across_chunks(monkeypatch):
    import spikefm.corpus.binning as binning

    monkeypatch.setattr(binning, "_CHUNK", 7)
    rng = np.random.default_rng(4)
    units = random_units(rng, 5, 3.0, rate_hz=30)
    units[2] = np.sort(np.concatenate([units[2], np.full(300, 1.005)]))  # one cell > 255, long run
    t = np.concatenate(units)
    u = np.concatenate([np.full(len(x), i) for i, x in enumerate(units)])
    half = t.size // 2
    perm = np.concatenate([np.arange(half), half + rng.permutation(t.size - half)])
    ref = np.minimum(histogram_counts(units, 0, 150, 20), 255)
    for order in (np.arange(t.size), perm, perm[::-1]):
        got, clipped = binning.bin_spikes(t[order], u[order], 5, 0.0, 3.0, 20,
                                          return_num_clipped=True)
        np.testing.assert_array_equal(got, ref)
        assert clipped == 1


def test_bin_spikes_drops_out_of_range_and_rejects_bad_args():
    counts = bin_spikes(np.array([-0.5, 0.01, 0.99, 1.0, 5.0]), np.zeros(5, int), 1, 0.0, 1.0, 20)
    assert counts.sum() == 2 and counts.shape == (1, 50)
    with pytest.raises(ValueError, match="bin_ms must be a positive int"):
        bin_spikes(np.zeros(1), np.zeros(1, int), 1, 0, 1, 0)
    with pytest.raises(ValueError, match=r"unit_index values must lie in \[0, 2\)"):
        bin_spikes(np.zeros(2), np.array([0, 5]), 2, 0, 1, 20)
    with pytest.raises(ValueError, match=r"unit_index values must lie in \[0, 2\)"):
        bin_spikes(np.array([0.5, 9.0]), np.array([0, -1]), 2, 0, 1, 20)  # dropped spike too
    with pytest.raises(ValueError, match=r"unit_index values must lie in \[0, 2\)"):
        bin_spikes(np.array([0.5, 0.1]), np.array([1, 3]), 2, 0, 1, 20)  # unordered chunk
    with pytest.raises(ValueError, match="same length"):
        bin_spikes(np.zeros(3), np.zeros(2, int), 1, 0, 1, 20)


@pytest.mark.parametrize("units,bins,limit", [(35, 141_055, 1_000_000), (10, 101, 100),
                                              (3, 7, 21), (500, 180_000, 10_000_000)])
def test_chunk_bounds_respect_limit_and_are_equal(units, bins, limit):
    b = chunk_bounds(units, bins, limit)
    lengths = [e - s for s, e in b]
    assert b[0][0] == 0 and b[-1][1] == bins
    assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
    assert max(lengths) * units <= limit
    assert max(lengths) - min(lengths) <= 1
    # the fewest chunks possible: one fewer would break the limit
    n = len(b)
    assert n == 1 or units * -(-bins // (n - 1)) > limit


# --- real DANDI file ---------------------------------------------------------------------------

def test_real_dandi_file_builds_with_regions_species_and_exact_counts(real_nwb, tmp_path):
    report = build_corpus([str(real_nwb)], tmp_path / "c",
                          BuildConfig(max_row_tokens=1_000_000), progress=False)
    assert report.ok
    corpus = Corpus(tmp_path / "c")
    (s,) = corpus.sessions
    assert s["num_units"] == 35
    assert s["species"] == "Homo sapiens" and s["is_human"] is True
    assert s["regions"] == {"hippocampus_right": 25, "amygdala_right": 10} or \
        set(s["regions"]) == {"hippocampus_right", "amygdala_right"}
    assert corpus.manifest["num_human_sessions"] == 1
    assert s["provenance"]["sha256"] == \
        "1f6d811347d83d9693ce824bded9d73f5c88d8542e78069211da52381153f046"
    assert set(s["trial_tables"]) == {"encoding_table", "recognition_table",
                                      "timediscrimination_table"}

    # Independent read (h5py, not pynwb) and independent binning (np.histogram per unit).
    with h5py.File(real_nwb, "r") as f:
        flat = f["units/spike_times"][:]
        ends = f["units/spike_times_index"][:]
        locs = [x.decode() for x in f["general/extracellular_ephys/electrodes/location"][:]]
        unit_elec = f["units/electrodes"][:]
    units = np.split(flat, ends[:-1])
    got, t_start_ms = corpus_session_matrix(corpus, s["session_id"])
    assert got.shape == (35, s["num_bins"])
    np.testing.assert_array_equal(got, histogram_counts(units, t_start_ms, got.shape[1], 20))
    row = next(corpus.iter_rows("train"))
    assert row.unit_regions == [locs[i] for i in unit_elec]
    assert row.num_units * row.num_bins <= 1_000_000


def test_shards_load_with_pyarrow_and_datasets_with_neural_pile_types(real_nwb, tmp_path):
    build_corpus([str(real_nwb)], tmp_path / "c", BuildConfig(max_row_tokens=2_000_000),
                 progress=False)
    shard = next((tmp_path / "c" / "data").glob("train-00000-of-*.parquet"))
    schema = pq.read_schema(shard)
    import pyarrow as pa

    assert schema.names[:5] == ["spike_counts", "subject_id", "session_id", "segment_id",
                                "source_dataset"]
    assert schema.field("spike_counts").type == pa.list_(pa.list_(pa.uint8()))
    for c in ("subject_id", "session_id", "segment_id", "source_dataset"):
        assert schema.field(c).type == pa.string()

    datasets = pytest.importorskip("datasets")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "c" / "data"),
                               cache_dir=str(tmp_path / "hf"))
    feats = ds["train"].features
    assert feats["spike_counts"] == datasets.List(datasets.List(datasets.Value("uint8"))) or \
        str(feats["spike_counts"]).count("uint8") == 1
    assert feats["session_id"] == datasets.Value("string")
    row = ds["train"][0]
    assert row["segment_id"].startswith("segment_")
    ours = {r.segment_id: r.spike_counts for r in Corpus(tmp_path / "c").iter_rows("train")}
    np.testing.assert_array_equal(np.asarray(row["spike_counts"], dtype=np.uint8),
                                  ours[row["segment_id"]])


# --- synthetic-style NWB files: splits, behaviour, trials ---------------------------------------

@pytest.fixture
def six_sessions(tmp_path):
    rng = np.random.default_rng(0)
    paths, units_of = [], {}
    for k in range(6):
        units = random_units(rng, 4 + k, 10.0 + k)
        p = write_nwb(tmp_path / "in" / f"sub-{k % 3}" / f"sub-{k % 3}_ses-{k}.nwb", units,
                      ["CA1"] * (4 + k), subject_id=f"s{k % 3}")
        paths.append(p)
        units_of[p.stem] = units
    return tmp_path / "in", units_of


def test_copies_of_one_recording_become_one_session(six_sessions, tmp_path, capsys):
    """Byte-identical copies of a recording (same sha256) were built as separate sessions and
    could land in both train and test; the later copies are left out and listed as skipped."""
    import shutil

    folder, _ = six_sessions
    src = folder / "sub-0" / "sub-0_ses-0.nwb"
    shutil.copy(src, folder / "sub-0" / "sub-0_ses-0-copy.nwb")
    shutil.copy(src, folder / "sub-9_copy.nwb")
    report = build_corpus([str(folder)], tmp_path / "c", BuildConfig(test_fraction=0.3), progress=False)
    m = report.manifest
    from spikefm.corpus.nwb import sha256_file

    digests = [s["provenance"]["sha256"] for s in m["sessions"]]
    assert m["num_sessions"] == 6 and len(set(digests)) == 6 and sha256_file(src) in digests
    kept = next(s["provenance"]["path"] for s in m["sessions"] if s["provenance"]["sha256"] == sha256_file(src))
    skipped = sorted(Path(x["input"]).name for x in m["skipped"])
    assert len(skipped) == 2 and all("the same recording as" in x["error"] for x in m["skipped"])
    assert sorted([Path(kept).name, *skipped]) == ["sub-0_ses-0-copy.nwb", "sub-0_ses-0.nwb", "sub-9_copy.nwb"]
    assert report.num_staged_now == 6 and report.num_reused == 0
    again = build_corpus([str(folder)], tmp_path / "c", BuildConfig(test_fraction=0.3), progress=False)
    assert again.num_staged_now == 0 and again.num_reused == 6  # counts of the sessions kept
    with pytest.raises(ValueError, match=r"the same recording as .* \(--strict: nothing was written\)"):
        build_corpus([str(folder)], tmp_path / "strict", BuildConfig(test_fraction=0.3, strict=True), progress=False)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_folder_build_counts_equal_independent_binning_file_by_file(six_sessions, tmp_path):
    folder, units_of = six_sessions
    build_corpus([str(folder)], tmp_path / "c", BuildConfig(max_row_tokens=500, test_fraction=0.3),
                 progress=False)
    corpus = Corpus(tmp_path / "c")
    assert len(corpus.sessions) == 6
    for s in corpus.sessions:
        got, t0 = corpus_session_matrix(corpus, s["session_id"])
        np.testing.assert_array_equal(
            got, histogram_counts(units_of[s["session_id"]], t0, got.shape[1], 20))
        assert s["num_rows"] > 1  # chunked along time
        assert s["regions"] == {"CA1": s["num_units"]}  # from electrodes.location (ragged column)


@pytest.mark.parametrize("first, last", [(1.0, 4.02), (0.06, 8.12), (4.02, 4.5), (3.9, 8.04)])
def test_a_first_or_last_spike_on_a_bin_edge_is_counted(first, last, tmp_path):
    """A last spike at 4.02 s (sample-quantised times hit edges like it ~1,200 times an hour at
    30 kHz) lay past the grid: 4.02 * 1000 / 20 reads 200.99999..., the grid stopped at 4.02 s and
    the spike was in no row, with no warning."""
    from spikefm.corpus.binning import spike_span_ms

    rng = np.random.default_rng(0)
    units = [np.sort(np.concatenate([[first], rng.uniform(first, last, 40), [last]])),
             np.sort(rng.uniform(first, last, 20))]
    write_nwb(tmp_path / "nwb" / "edge.nwb", units, ["CA1", "CA1"])
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    corpus = Corpus(tmp_path / "c")
    (s,) = corpus.sessions
    got, t0 = corpus_session_matrix(corpus, s["session_id"])
    assert int(got.sum()) == s["num_spikes"] == sum(len(u) for u in units)
    np.testing.assert_array_equal(got, histogram_counts(units, t0, got.shape[1], 20))
    # the grid is the bins of the first and the last spike, no more
    edges = bin_edges_s(t0, got.shape[1], 20)
    assert edges[0] <= first < edges[1] and edges[-2] <= last < edges[-1]
    assert spike_span_ms(first, last, 20) == (t0, t0 + 20 * got.shape[1])


def test_spikes_after_a_silence_longer_than_the_recording_before_are_noted(tmp_path, capsys):
    """One unit's times stored in samples (30 kHz) stretched a 10 s session to 83 hours of empty
    bins with no word (the end bound looks at the last 1 % of the spikes: 100 of 300 are not a few
    strays)."""
    rng = np.random.default_rng(0)
    units = [np.sort(rng.uniform(0, 10, 100)), np.sort(rng.uniform(0, 10, 100)),
             np.sort(rng.integers(0, 10 * 30000, 100)).astype(float)]
    write_nwb(tmp_path / "nwb" / "samples.nwb", units, ["CA1"] * 3)
    assert cli_main(["corpus", "build", str(tmp_path / "nwb"), "--out", str(tmp_path / "c"), "--test-fraction", "0",
                     "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    (s,) = Corpus(tmp_path / "c").sessions
    after = int(sum((u > 10.02).sum() for u in units))  # the sample-unit's spikes past the others
    assert after > 90
    assert re.search(rf"all units fall silent for [\d,]+ s from [\d.]+ s, longer than all the recording before it, "
                     rf"and {after} of 300 spikes \({after / 300:.1%}\) come after \(the session spans "
                     rf"{s['num_bins'] * 20 / 1000:,.0f} s\): stray spike times, or a unit's times in samples or ms\?",
                     err), err
    # a recording without such a silence says nothing of it
    write_nwb(tmp_path / "nwb2" / "fine.nwb", units[:2], ["CA1"] * 2)
    assert cli_main(["corpus", "build", str(tmp_path / "nwb2"), "--out", str(tmp_path / "c2"), "--test-fraction",
                     "0", "--quiet"]) == 0
    assert "fall silent" not in capsys.readouterr().err


def test_session_split_is_disjoint_seeded_and_rows_shuffled(six_sessions, tmp_path):
    folder, _ = six_sessions

    def splits(seed, out):
        build_corpus([str(folder)], out, BuildConfig(max_row_tokens=500, test_fraction=0.3,
                                                     seed=seed), progress=False)
        c = Corpus(out)
        train = {r.session_id for r in c.iter_rows("train")}
        test = {r.session_id for r in c.iter_rows("test")}
        order = [(r.session_id, r.segment_id) for r in c.iter_rows("train")]
        return train, test, order

    tr, te, order = splits(0, tmp_path / "a")
    assert te and tr and not (tr & te)
    assert (tr, te) == splits(0, tmp_path / "b")[:2]  # same seed, same split
    assert any(splits(s, tmp_path / f"s{s}")[:2] != (tr, te) for s in (1, 2, 3))
    assert order != sorted(order)  # rows shuffled within the split


@pytest.mark.parametrize("seed", [0, 1, 2, 4])
def test_a_corpus_grown_by_new_sessions_keeps_its_test_sessions(six_sessions, tmp_path, capsys, seed):
    """Sessions added to an input folder and built into the same corpus redrew the test split over
    all sessions: seed 2 moved the only test session into train (a model trained on the new
    version would see what the old version's results were measured on). The earlier test
    sessions now stay in test, new ones join until the share is reached; --split row, which
    draws rows afresh, says so."""
    import shutil

    folder, _ = six_sessions
    files = sorted(folder.rglob("*.nwb"))
    grow = tmp_path / f"grow{seed}"
    grow.mkdir()
    for f in files[:3]:
        shutil.copy(f, grow / f.name)
    cfg = BuildConfig(test_fraction=0.2, seed=seed)

    def test_sessions(out):
        return {s["session_id"] for s in Corpus(out).sessions if s["split"] == "test"}

    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    before = test_sessions(tmp_path / "c")
    assert len(before) == 1
    for f in files[3:]:
        shutil.copy(f, grow / f.name)
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    grown = Corpus(tmp_path / "c")
    after = test_sessions(tmp_path / "c")
    assert len(grown.sessions) == 6 and before <= after and len(after) < 6
    tokens = {s["session_id"]: s["num_tokens"] for s in grown.sessions}
    assert sum(tokens[s] for s in after) >= 0.2 * sum(tokens.values())  # the share is a floor
    # the draw adds sessions only while the share is not reached: without the last one it was not
    assert all(sum(tokens[s] for s in after - {x}) < 0.2 * sum(tokens.values()) for x in after - before)
    # the same sessions again: the same split
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    assert test_sessions(tmp_path / "c") == after

    # a new recording with the id of an earlier test session, whose path sorts first: the earlier
    # recording keeps its id (runs key their session parameters by it; it went to id-2 before) and
    # stays in test, the new one is renamed
    (held,) = sorted(before)
    held_path = next(s["provenance"]["path"] for s in grown.sessions if s["session_id"] == held)
    twin = grow / "a" / f"{held}.nwb"
    write_nwb(twin, random_units(np.random.default_rng(seed + 50), 4, 20.0), ["A"] * 4)
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    renamed = {s["provenance"]["path"]: s for s in Corpus(tmp_path / "c").sessions}
    assert renamed[held_path]["session_id"] == held and renamed[held_path]["split"] == "test"
    assert renamed[str(twin.resolve())]["session_id"] == f"{held}-2"
    # a byte copy of that test recording whose path sorts first is the one left out: the recording
    # keeps its id and stays in test (the copy took both, and the test recording went to train)
    copy = grow / "0" / "aaa.nwb"
    copy.parent.mkdir()
    shutil.copy(held_path, copy)
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    now = {s["provenance"]["path"]: s for s in Corpus(tmp_path / "c").sessions}
    assert str(copy.resolve()) not in now
    assert now[held_path]["session_id"] == held and now[held_path]["split"] == "test"
    shutil.rmtree(copy.parent)
    # the test recording renamed (same bytes): still held out, and under its id (it took the new
    # file name's id before, so runs keyed by the old id no longer met it), with a line saying so
    moved = Path(held_path).with_name("renamed_" + Path(held_path).name)
    os.replace(held_path, moved)
    capsys.readouterr()
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    now = {s["provenance"]["path"]: s for s in Corpus(tmp_path / "c").sessions}
    assert now[str(moved.resolve())]["split"] == "test" and len(now) == 7
    assert now[str(moved.resolve())]["session_id"] == held
    assert f"{moved.resolve()} keeps {held!r}" in capsys.readouterr().err
    os.replace(moved, held_path)
    # a test and a train recording swap file names: each keeps its id and its split (the test split
    # matched the test one's old path too, so the train recording was moved into test)
    c = Corpus(tmp_path / "c")
    by_id = {s["session_id"]: s for s in c.sessions}
    other = next(s for s in c.sessions if s["split"] == "train" and Path(s["provenance"]["path"]).parent
                 == Path(held_path).parent)
    a, b = Path(held_path), Path(other["provenance"]["path"])
    os.replace(a, a.with_suffix(".tmp"))
    os.replace(b, a)
    os.replace(a.with_suffix(".tmp"), b)
    build_corpus([str(grow)], tmp_path / "c", cfg, progress=False)
    swapped = {s["session_id"]: s for s in Corpus(tmp_path / "c").sessions}
    assert {k: (v["split"], v["provenance"]["sha256"]) for k, v in swapped.items()} == \
        {k: (v["split"], v["provenance"]["sha256"]) for k, v in by_id.items()}
    assert swapped[held]["provenance"]["path"] == str(b.resolve())
    os.replace(a, a.with_suffix(".tmp"))
    os.replace(b, a)
    os.replace(a.with_suffix(".tmp"), b)

    row = BuildConfig(test_fraction=0.3, seed=seed, split="row", max_row_tokens=200)
    shutil.rmtree(grow)
    grow.mkdir()
    for f in files[:3]:
        shutil.copy(f, grow / f.name)
    build_corpus([str(grow)], tmp_path / "r", row, progress=False)
    capsys.readouterr()
    shutil.copy(files[3], grow / files[3].name)
    build_corpus([str(grow)], tmp_path / "r", row, progress=False)
    assert "so --split row drew the test rows again over all rows" in capsys.readouterr().err


def test_row_split_mode_mixes_sessions_across_splits(six_sessions, tmp_path):
    folder, _ = six_sessions
    build_corpus([str(folder)], tmp_path / "c",
                 BuildConfig(max_row_tokens=200, test_fraction=0.2, split="row"), progress=False)
    c = Corpus(tmp_path / "c")
    n_train, n_test = (c.manifest["splits"][s]["num_rows"] for s in ("train", "test"))
    assert n_test == round(0.2 * (n_train + n_test))
    assert any(s["split"] == "both" for s in c.sessions)


def test_behavior_and_trials_are_carried_on_the_bin_grid(tmp_path):
    rng = np.random.default_rng(3)
    units = random_units(rng, 3, 10.0)
    ts = np.arange(0.0, 10.0, 0.01)
    trials = {"start_time": np.array([1.0, 4.0, 7.0]), "stop_time": np.array([2.0, 5.0, 8.0]),
              "choice": np.array([1, -1, 1])}
    p = write_nwb(tmp_path / "x.nwb", units, ["A", "B", "A"], trials=trials,
                  behavior={"wheel": (ts, 3.0 * ts + 1.0),
                            "hand": (ts, np.stack([ts, -ts], axis=1))})
    build_corpus([str(p)], tmp_path / "c", BuildConfig(), progress=False)
    row = next(Corpus(tmp_path / "c").iter_rows("train"))
    assert row.behavior_names == ["hand_0", "hand_1", "wheel"] or \
        sorted(row.behavior_names) == ["hand_0", "hand_1", "wheel"]
    centres = (row.t_start_ms + 20 * (np.arange(row.num_bins) + 0.5)) / 1000
    w = row.behavior[row.behavior_names.index("wheel")]
    inside = centres <= ts[-1]
    np.testing.assert_allclose(w[inside], 3.0 * centres[inside] + 1.0, rtol=1e-5)
    assert np.isnan(w[~inside]).all()
    assert row.unit_regions == ["A", "B", "A"]
    assert row.trials["trials"]["choice"] == [1, -1, 1]
    assert row.trials["trials"]["start_time"] == [1.0, 4.0, 7.0]


# --- bad inputs --------------------------------------------------------------------------------

def _bad_files(tmp_path, good_paths):
    bad = tmp_path / "in"
    (bad / "truncated.nwb").write_bytes(Path(good_paths[0]).read_bytes()[:4000])
    (bad / "text.nwb").write_text("hello, not HDF5")
    rng = np.random.default_rng(9)
    u = random_units(rng, 2, 5.0)
    u[1] = np.concatenate([u[1], [np.nan]])
    write_nwb(bad / "nan.nwb", u, ["A", "A"])
    u2 = random_units(rng, 2, 5.0)
    u2[0] = np.concatenate([[-1.0], u2[0]])
    write_nwb(bad / "negative.nwb", u2, ["A", "A"])
    return ["truncated.nwb", "text.nwb", "nan.nwb", "negative.nwb"]


def test_a_datalad_copy_of_a_dandiset_builds_sessions_named_by_their_links(tmp_path):
    """git-annex keeps each file under .git/annex/objects/ with its key for a name, behind the link
    that names it: the hidden copy was found first and the sessions were called SHA256E-s...."""
    ds = tmp_path / "000123"
    rng = np.random.default_rng(0)
    for sub in ("A", "B"):
        key = f"SHA256E-s1000--{sub * 8}.nwb"
        obj = ds / ".git" / "annex" / "objects" / "Ab" / "Cd" / key / key
        write_nwb(obj, random_units(rng, 4, 10.0), ["CA1"] * 4)
        link = ds / f"sub-{sub}" / f"sub-{sub}_ses-1_ecephys.nwb"
        link.parent.mkdir(parents=True)
        link.symlink_to(os.path.relpath(obj, link.parent))
    (ds / ".hidden").mkdir()
    write_nwb(ds / ".hidden" / "stray.nwb", random_units(rng, 4, 10.0), ["CA1"] * 4)
    build_corpus([str(ds)], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    assert Corpus(tmp_path / "c").session_ids() == ["sub-A_ses-1_ecephys", "sub-B_ses-1_ecephys"]


def test_a_zarr_nwb_folder_is_a_named_skipped_input(tmp_path, nwb_factory):
    """A Zarr-backed NWB recording (a folder called x.nwb) inside an input folder was passed over
    without a word; given itself, it was 'a folder holding no *.nwb file'."""
    good, _ = nwb_factory("good")
    zarr = good.parent / "sub-Z_ses-1.nwb"
    (zarr / "units").mkdir(parents=True)
    (zarr / ".zgroup").write_text("{}")
    report = build_corpus([str(good.parent), str(zarr)], tmp_path / "c", BuildConfig(test_fraction=0.0),
                          progress=False)
    assert [s["session_id"] for s in report.manifest["sessions"]] == ["good"]
    errors = [s for s in report.skipped if s["input"] == str(zarr)]
    assert len(errors) == 2 and all("a folder named like an NWB file (Zarr-backed NWB?); spikefm reads HDF5 "
                                    "NWB files" in s["error"] for s in errors)


def test_bad_inputs_skipped_named_and_good_sessions_built(tmp_path, nwb_factory, capsys):
    good = [nwb_factory(f"good{i}", seed=i)[0] for i in range(2)]
    (tmp_path / "in").mkdir()
    bad = _bad_files(tmp_path, good)
    out = tmp_path / "c"
    rc = cli_main(["corpus", "build", *map(str, good), str(tmp_path / "in"), "--out", str(out),
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    for name in bad:
        assert name in err
    assert "NaN or infinite" in err and "negative" in err and "not an HDF5/NWB file" in err
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(s["session_id"] for s in m["sessions"]) == ["good0", "good1"]
    assert sorted(Path(s["input"]).name for s in m["skipped"]) == sorted(bad)


def test_no_units_table_and_bad_behavior_timestamps(tmp_path, capsys):
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    import datetime as dt

    nwb = NWBFile(session_description="x", identifier="x",
                  session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    with NWBHDF5IO(str(tmp_path / "nounits.nwb"), "w") as io:
        io.write(nwb)
    rng = np.random.default_rng(0)
    write_nwb(tmp_path / "beh.nwb", random_units(rng, 2, 5.0), ["A", "A"],
              behavior={"wheel": (np.array([0.0, 2.0, 1.0]), np.ones(3))})
    report = build_corpus([str(tmp_path / "nounits.nwb"), str(tmp_path / "beh.nwb"),
                           *[str(p) for p in [write_nwb(tmp_path / "ok.nwb",
                                                        random_units(rng, 2, 5.0), ["A", "A"])]]],
                          tmp_path / "c", BuildConfig(), progress=False)
    errors = {Path(s["input"]).name: s["error"] for s in report.skipped}
    assert "no units table" in errors["nounits.nwb"]
    # a behaviour series whose timestamps do not fit is left out, with a note; the session's
    # spikes are built (one swapped timestamp skipped the whole session)
    assert "beh.nwb" not in errors
    sessions = {s["session_id"]: s for s in report.manifest["sessions"]}
    assert sorted(sessions) == ["beh", "ok"] and sessions["beh"].get("behavior_names", []) == []
    assert ("beh.nwb: behaviour series 'wheel' left out: its timestamps decrease at 2 of 3 samples (they must be "
            "sorted in time)") in capsys.readouterr().err


def test_units_tables_in_processing_modules_are_read_when_alone_and_named_when_not(tmp_path, capsys):
    """A second Units table in processing/ecephys was ignored without a word; units only there gave
    'no units table with spike_times ... (nwbfile.units)', not saying where they were."""
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.misc import Units

    from spikefm.corpus.nwb import NWBInputError, read_nwb

    rng = np.random.default_rng(0)

    def write(name, main_units, extra_tables):
        nwb = NWBFile(session_description="x", identifier=name,
                      session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
        for t in main_units:
            nwb.add_unit(spike_times=t)
        if extra_tables:
            mod = nwb.create_processing_module("ecephys", "sortings")
            for tname, trains in extra_tables.items():
                table = Units(name=tname, description="another sorting")
                for t in trains:
                    table.add_unit(spike_times=t)
                mod.add(table)
        path = tmp_path / f"{name}.nwb"
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
        return path

    trains = [np.sort(rng.uniform(0, 5, 30)) for _ in range(3)]
    both = read_nwb(write("both", trains[:2], {"units_kilosort": trains}))
    assert both.num_units == 2
    assert "Units table processing/ecephys/units_kilosort (3 units) not read: spikefm reads nwbfile.units, one " \
           "sorting" in both.notes
    alone = read_nwb(write("alone", [], {"units_kilosort": trains}))
    assert alone.num_units == 3 and int(alone.spike_times_s.size) == 90
    assert "units read from processing/ecephys/units_kilosort (3 units): the file's nwbfile.units is empty" in alone.notes
    two = write("two", [], {"a": trains[:1], "b": trains[1:]})
    with pytest.raises(NWBInputError) as exc:
        read_nwb(two)
    assert str(exc.value) == (f"{two}: no units table with spike_times; spikefm needs spike-sorted units "
                              "(nwbfile.units) to build a corpus; found Units tables in processing/ecephys/a, "
                              "processing/ecephys/b, and spikefm reads one sorting: write the one to use as "
                              "nwbfile.units")


def test_a_behaviour_series_outside_the_binned_span_is_noted(tmp_path, capsys):
    """A series at 5000-5010 s beside spikes at 0-5 s was stored as 100 % NaN with no word."""
    rng = np.random.default_rng(0)
    late = np.arange(100) / 10 + 5000.0
    inside = np.arange(40) / 10
    write_nwb(tmp_path / "nwb" / "beh.nwb", random_units(rng, 2, 5.0), ["A", "A"],
              behavior={"late": (late, np.arange(100.0)), "wheel": (inside, np.ones(40)),
                        "brief": (np.array([1.001, 1.002]), np.array([1.0, 2.0]))})  # between bin centres
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(r"behaviour series 'late' \(5000-5009\.9 s\) is NaN in every bin of the binned span "
                     r"[\d.]+-[\d.]+ s \(first to last spike\): it lies outside it or between bin centres; another "
                     r"clock, or times in ms or samples\?", err), err
    assert "'wheel'" not in err
    assert "behaviour series 'brief' (1.001-1.002 s) is NaN in every bin" in err
    (row,) = list(Corpus(tmp_path / "c").iter_rows("train"))
    names = list(row.behavior_names)
    assert np.isnan(row.behavior[names.index("late")]).all()
    assert not np.isnan(row.behavior[names.index("wheel")]).all()


def test_strict_writes_nothing_and_keeps_existing_corpus(tmp_path, nwb_factory):
    good, _ = nwb_factory("good")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "text.nwb").write_text("not hdf5")
    out = tmp_path / "c"
    rc = cli_main(["corpus", "build", str(good), str(tmp_path / "in"), "--out", str(out),
                   "--strict", "--quiet"])
    assert rc == 2 and not out.exists()
    # An existing corpus is left exactly as it was.
    build_corpus([str(good)], out, BuildConfig(), progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = cli_main(["corpus", "build", str(good), str(tmp_path / "in" / "text.nwb"), "--out",
                   str(out), "--strict", "--quiet"])
    assert rc == 2
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


# --- idempotence and resume --------------------------------------------------------------------

def _corpus_content(path):
    c = Corpus(path)
    return {split: [(r.session_id, r.segment_id, r.spike_counts.tobytes())
                    for r in c.iter_rows(split)] for split in ("train", "test")}


def test_rebuild_is_idempotent_and_reuses_staged_sessions(six_sessions, tmp_path):
    folder, _ = six_sessions
    cfg = BuildConfig(max_row_tokens=500, test_fraction=0.3)
    r1 = build_corpus([str(folder)], tmp_path / "c", cfg, progress=False)
    first = _corpus_content(tmp_path / "c")
    r2 = build_corpus([str(folder)], tmp_path / "c", cfg, progress=False)
    assert r1.num_staged_now == 6 and r2.num_reused == 6 and r2.num_staged_now == 0
    assert _corpus_content(tmp_path / "c") == first



@pytest.mark.parametrize("damage", ["truncated", "changed in place"])
def test_a_damaged_staged_session_is_staged_again(six_sessions, tmp_path, capsys, damage):
    """A truncated staged Arrow file made every rebuild with the same settings fail ("Not an
    Arrow file", naming no file); bytes changed in the middle (footer intact) were reused, and
    the corpus held wrong counts. Either is now staged again from its input, with one warning."""
    folder, _ = six_sessions
    cfg = BuildConfig(max_row_tokens=500, test_fraction=0.3)
    build_corpus([str(folder)], tmp_path / "c", cfg, progress=False)
    first = _corpus_content(tmp_path / "c")
    arrow = sorted((tmp_path / "c" / ".staging").glob("*.arrow"))[2]
    data = arrow.read_bytes()
    if damage == "truncated":
        arrow.write_bytes(data[:1000])
    else:
        mid = len(data) // 2
        arrow.write_bytes(data[:mid] + bytes(255 - b for b in data[mid:mid + 100]) + data[mid + 100:])
    capsys.readouterr()
    report = build_corpus([str(folder)], tmp_path / "c", cfg, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert report.num_reused == 5 and report.num_staged_now == 1
    assert len(err) == 1 and err[0].startswith("spikefm: warning: ")
    assert f".staging/{arrow.stem}) is damaged (" in err[0] and err[0].endswith("; staging it again")
    if damage == "changed in place":
        assert "its .arrow file was changed after it was staged (its sha256 differs)" in err[0]
    assert _corpus_content(tmp_path / "c") == first


def test_workers_give_the_same_corpus(six_sessions, tmp_path):
    folder, _ = six_sessions
    cfg = BuildConfig(max_row_tokens=500, test_fraction=0.3)
    build_corpus([str(folder)], tmp_path / "a", cfg, progress=False)
    build_corpus([str(folder)], tmp_path / "b", BuildConfig(max_row_tokens=500, test_fraction=0.3,
                                                            workers=2), progress=False)
    assert _corpus_content(tmp_path / "a") == _corpus_content(tmp_path / "b")


# slow (11 s): tests/test_corpus_atomic.py faults every file operation of a build in the default run
@pytest.mark.slow
def test_kill_9_mid_build_leaves_no_partial_shard_and_resumes(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    for k in range(12):
        write_nwb(folder / f"ses-{k:02d}.nwb", random_units(rng, 30, 120.0, rate_hz=20), ["A"] * 30)
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "spikefm.cli", "corpus", "build", str(folder), "--out", str(out),
           "--quiet", "--max-row-tokens", "20000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = out / ".staging"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(staging.glob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(staging.glob("*.json")))
    assert 0 < done < 12, "the kill should land mid-build"
    # Nothing half-written is visible: no shards yet, no manifest, only complete staged sessions.
    assert not (out / "manifest.json").exists() and not list(out.glob("data/*.parquet"))
    for j in staging.glob("*.json"):
        assert (staging / (j.stem + ".arrow")).exists()
    report = build_corpus([str(folder)], out, BuildConfig(max_row_tokens=20000), progress=False)
    assert report.num_reused == done and report.num_staged_now == 12 - done
    build_corpus([str(folder)], tmp_path / "fresh", BuildConfig(max_row_tokens=20000),
                 progress=False)
    assert _corpus_content(out) == _corpus_content(tmp_path / "fresh")


# --- DANDI, offline ----------------------------------------------------------------------------

class _FakeAsset:
    def __init__(self, path, local):
        self.path, self._local = path, Path(local)
        self.size = self._local.stat().st_size
        self.downloads = 0

    def download(self, filepath):
        self.downloads += 1
        Path(filepath).write_bytes(self._local.read_bytes())

    def get_raw_metadata(self):
        import hashlib

        return {"digest": {"dandi:sha2-256": hashlib.sha256(self._local.read_bytes()).hexdigest()}}


class _FakeVersion:
    identifier = "0.220216.0"


class _FakeDandiset:
    def __init__(self, version, assets):
        self.version_id, self._assets = version, assets
        self.most_recent_published_version = _FakeVersion() if version == "draft" else None

    def get_assets_by_glob(self, pattern):
        import fnmatch

        return [a for a in self._assets if fnmatch.fnmatch(a.path, pattern)]

    def get_raw_metadata(self):
        return {"license": ["spdx:CC-BY-4.0"]}


class _FakeClient:
    """Stands in for dandi.dandiapi.DandiAPIClient over local files in the DANDI layout."""

    def __init__(self, assets):
        self.assets, self.calls = assets, []

    def get_dandiset(self, dandiset_id, version_id=None):
        self.calls.append((dandiset_id, version_id))
        return _FakeDandiset(version_id or "draft", self.assets)


def test_dandi_input_downloads_into_cache_and_records_version(real_nwb, tmp_path, monkeypatch,
                                                             nwb_factory):
    from spikefm.corpus import dandi as dandi_mod

    other, _ = nwb_factory("sub-9_ses-1")
    assets = [_FakeAsset("sub-4/sub-4_ses-4_ecephys+image.nwb", real_nwb),
              _FakeAsset("sub-9/sub-9_ses-1.nwb", other)]
    client = _FakeClient(assets)
    monkeypatch.setattr(dandi_mod, "_client", lambda: client)
    cache = tmp_path / "cache"
    report = build_corpus(["dandi:000207/sub-4/*.nwb"], tmp_path / "c",
                          BuildConfig(cache_dir=str(cache)), progress=False)
    (s,) = report.manifest["sessions"]
    prov = s["provenance"]
    assert prov["dandiset_id"] == "000207" and prov["dandiset_version"] == "0.220216.0"
    assert prov["asset_path"] == "sub-4/sub-4_ses-4_ecephys+image.nwb"
    assert prov["asset_sha256"] == prov["sha256"]
    assert s["license"] == "spdx:CC-BY-4.0" and s["source_dataset"] == "dandi-000207"
    assert (cache / "000207" / "0.220216.0" / "sub-4" / "sub-4_ses-4_ecephys+image.nwb").exists()
    assert assets[0].downloads == 1 and assets[1].downloads == 0
    dandi_mod.resolve_dandi("dandi:000207@0.220216.0/sub-4/*.nwb", cache_dir=cache, client=client)
    assert assets[0].downloads == 1  # cached
    with pytest.raises(ValueError, match="expected dandi:DANDISET_ID"):
        dandi_mod.parse_dandi_spec("dandi:abc")


def test_behaviour_series_left_out_are_named_in_warnings(tmp_path, capsys):
    """A series spikefm cannot bin (a (samples, 2, 3) array; more than 16 dimensions per sample)
    was dropped without a word; each now gets one warning line naming the file, the series and why,
    and the usable series is still read."""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 6.0, 121)
    path = write_nwb(tmp_path / "in" / "x.nwb", random_units(rng, 3, 6.0), ["A"] * 3, behavior={
        "speed": (t, np.sin(t)), "frames": (t, np.zeros((t.size, 2, 3))), "wide": (t, np.zeros((t.size, 20)))})
    assert cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
                     "--test-fraction", "0", "--quiet"]) == 0
    err = sorted(capsys.readouterr().err.strip().splitlines())
    assert err == [
        f"spikefm: warning: {path}: behaviour series 'frames' left out: its data have shape (121, 2, 3); "
        "spikefm reads (samples,) or (samples, dims)",
        f"spikefm: warning: {path}: behaviour series 'wide' left out: it has 20 dimensions per sample, more "
        "than 16 (an image or a many-channel signal, not a behavioural variable)"]
    (session,) = Corpus(tmp_path / "c").sessions
    assert session["behavior_names"] == ["speed"] and "read_notes" not in session
    # a rebuild reuses the staged session and says it again (the first build's words are not the
    # only record a user sees)
    assert cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
                     "--test-fraction", "0", "--quiet"]) == 0
    assert sorted(capsys.readouterr().err.strip().splitlines()) == err


def test_dandi_client_errors_name_the_spec_and_other_inputs_are_built(tmp_path, monkeypatch,
                                                                     nwb_factory, capsys):
    """An unknown dandiset / version (dandi-cli raises its NotFoundError, a RuntimeError) and a
    network failure are one-line problems naming the spec; the other inputs are still built."""
    from spikefm.corpus import dandi as dandi_mod

    class NotFoundError(RuntimeError):  # dandi.exceptions.NotFoundError's base
        pass

    class Missing:
        def get_dandiset(self, dandiset_id, version_id=None):
            raise NotFoundError(f"No such version: {version_id!r} of Dandiset {dandiset_id}")

    class Offline:
        def get_dandiset(self, dandiset_id, version_id=None):
            raise ConnectionError("connection reset by peer")

    good, _ = nwb_factory("sub-1_ses-1")
    monkeypatch.setattr(dandi_mod, "_client", lambda: Missing())
    report = build_corpus([str(good), "dandi:000999@9.9.9"], tmp_path / "c",
                          BuildConfig(cache_dir=str(tmp_path / "cache")), progress=False)
    assert [s["session_id"] for s in report.manifest["sessions"]] == ["sub-1_ses-1"]
    (skipped,) = report.manifest["skipped"]
    assert skipped["input"] == "dandi:000999@9.9.9"
    assert skipped["error"].startswith("dandi:000999@9.9.9: ") and "No such version" in skipped["error"]
    assert "dandiarchive.org/dandiset/000999" in skipped["error"] and "\n" not in skipped["error"]
    with pytest.raises(ValueError, match=r"^dandi:000123: the DANDI archive cannot be reached "
                                         r"\(connection reset by peer\); only the archive says which version is the "
                                         r"newest: check your network, or pin a published version"):
        dandi_mod.resolve_dandi("dandi:000123", cache_dir=tmp_path / "cache", client=Offline())
    with pytest.raises(ValueError, match=r"^dandi:000123@1.2.3: the DANDI archive cannot be reached \(connection "
                                         r"reset by peer\), and the cache .* holds no list of its assets"):
        dandi_mod.resolve_dandi("dandi:000123@1.2.3", cache_dir=tmp_path / "cache", client=Offline())


def test_dandi_downloads_and_cached_copies_are_checked_against_the_published_sha256(
        tmp_path, nwb_factory, capsys, monkeypatch):
    from spikefm.corpus import dandi as dandi_mod

    src, _ = nwb_factory("sub-2_ses-1")
    original = Path(src).read_bytes()
    asset = _FakeAsset("sub-2/sub-2_ses-1.nwb", src)
    client = _FakeClient([asset])
    cache = tmp_path / "cache"
    (item,) = dandi_mod.resolve_dandi("dandi:000207@0.220216.0", cache_dir=cache, client=client)
    assert asset.downloads == 1 and item.path.read_bytes() == original

    # the second use trusts the remembered digest: no re-hash while size and mtime are unchanged
    hashed = []
    real_sha = dandi_mod.sha256_file
    monkeypatch.setattr(dandi_mod, "sha256_file", lambda p: hashed.append(p) or real_sha(p))
    dandi_mod.resolve_dandi("dandi:000207@0.220216.0", cache_dir=cache, client=client)
    assert asset.downloads == 1 and hashed == []

    # a cached copy of the right size but other bytes (a damaged disk, an interrupted copy) is
    # downloaded again, with a warning
    item.path.write_bytes(b"\0" * len(original))
    capsys.readouterr()
    dandi_mod.resolve_dandi("dandi:000207@0.220216.0", cache_dir=cache, client=client)
    assert asset.downloads == 2 and item.path.read_bytes() == original
    assert "does not match the sha256 DANDI publishes" in capsys.readouterr().err

    # a download whose bytes are not the published ones is refused and nothing is kept
    class Corrupt(_FakeAsset):
        def download(self, filepath):
            Path(filepath).write_bytes(b"\1" * 100)

    bad = Corrupt("sub-3/sub-3_ses-1.nwb", src)
    with pytest.raises(ValueError, match=r"^dandi:000207@0.220216.0: the download of "
                                         r"sub-3/sub-3_ses-1.nwb does not match"):
        dandi_mod.resolve_dandi("dandi:000207@0.220216.0", cache_dir=cache,
                                client=_FakeClient([bad]))
    assert not (cache / "000207" / "0.220216.0" / "sub-3").exists() or \
        not any((cache / "000207" / "0.220216.0" / "sub-3").iterdir())


def test_dandi_input_without_the_client_names_the_spec(tmp_path, monkeypatch):
    import builtins

    from spikefm.corpus import dandi as dandi_mod

    real_import = builtins.__import__

    def no_dandi(name, *a, **k):
        if name.startswith("dandi"):
            raise ImportError("No module named 'dandi'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_dandi)
    with pytest.raises(ValueError, match=r"^dandi:000207: DANDI inputs need the dandi client, "
                                         r"which is not installed; pip install"):
        dandi_mod.resolve_dandi("dandi:000207", cache_dir=tmp_path / "cache")


def test_a_killed_downloads_temporary_is_removed_and_the_clients_log_stays_quiet(tmp_path, nwb_factory):
    """A killed DANDI download left its partial .tmp file in the cache for good; the dandi
    client's own log records (a connection traceback before each retry) printed dozens of lines
    before spikefm's one-line error."""
    import subprocess
    import sys

    from spikefm.corpus import dandi as dandi_mod

    src, _ = nwb_factory("sub-2_ses-1")
    cache = tmp_path / "cache"
    target = cache / "000207" / "0.220216.0" / "sub-2" / "sub-2_ses-1.nwb"
    target.parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs: the killed downloader's
    stale = target.with_name(f".{target.name}.tmp-{gone.pid}")
    stale.write_bytes(b"partial")
    old = time.time() - dandi_mod.STALE_DOWNLOAD_S - 60
    os.utime(stale, (old, old))
    # a fresh one may be a live download on another machine sharing the cache (its pid means nothing here)
    fresh = target.with_name(f".{target.name}.tmp-{gone.pid + 1000000}")
    fresh.write_bytes(b"still coming")
    (item,) = dandi_mod.resolve_dandi("dandi:000207@0.220216.0", cache_dir=cache,
                                      client=_FakeClient([_FakeAsset("sub-2/sub-2_ses-1.nwb", src)]))
    assert item.path == target and not stale.exists() and fresh.read_bytes() == b"still coming"
    fresh.unlink()
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == \
        [f".{target.name}.sha256.json"]
    # the client module's logger: a stand-in dandi package that logs as dandi-cli does when offline
    fake = tmp_path / "fake"
    (fake / "dandi").mkdir(parents=True)
    (fake / "dandi" / "__init__.py").write_text("")
    (fake / "dandi" / "dandiapi.py").write_text(
        "import logging\n"
        "class DandiAPIClient:\n"
        "    def __init__(self):\n"
        "        lgr = logging.getLogger('dandi')\n"
        "        lgr.warning('Using hard-coded URLs')\n"
        "        try:\n"
        "            raise ConnectionError('offline')\n"
        "        except ConnectionError:\n"
        "            lgr.exception('HTTP connection failed')\n")
    code = "from spikefm.corpus.dandi import _client; _client(); print('made')"
    env = {**os.environ, "PYTHONPATH": str(fake)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "made" and done.stderr == ""
    # a program that configures logging still gets the records
    code = "import logging; logging.basicConfig(); " + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "HTTP connection failed" in done.stderr and "ConnectionError: offline" in done.stderr


def test_folder_inputs_take_any_case_of_nwb_and_name_dangling_links(tmp_path, nwb_factory):
    src, _ = nwb_factory("sub-1_ses-1")
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "B.NWB").write_bytes(Path(src).read_bytes())
    (folder / "a.nwb").symlink_to(tmp_path / "nowhere" / "x.nwb")
    report = build_corpus([str(folder)], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    assert [s["provenance"]["path"] for s in report.manifest["sessions"]] == [str((folder / "B.NWB").resolve())]
    (skipped,) = report.manifest["skipped"]
    assert skipped["input"] == str(folder / "a.nwb")
    assert skipped["error"] == (f"{folder / 'a.nwb'}: a link to {tmp_path / 'nowhere' / 'x.nwb'}, which does not "
                                "exist; fix or remove the link")


@pytest.mark.parametrize("kwargs,match", [
    ({"workers": 2.5}, "workers must be an int >= 1, got 2.5"),
    ({"workers": float("nan")}, "workers must be an int >= 1, got nan"),
    ({"shard_max_tokens": float("nan")}, "shard_max_tokens must be an int >= 1, got nan"),
    ({"max_row_tokens": 100.5}, "max_row_tokens must be an int >= 1, got 100.5"),
    ({"test_fraction": "0.1"}, r"test_fraction must be a number in \[0, 1\), got '0.1'"),
    ({"test_fraction": float("nan")}, r"test_fraction must be a number in \[0, 1\), got nan"),
    ({"seed": True}, r"seed must be an int >= 0 \(it seeds the train/test split\), got True"),
    ({"source_dataset": 3}, "source_dataset must be a string or None, got 3"),
])
def test_build_config_refuses_wrong_types_at_once(kwargs, match):
    """BuildConfig(workers=2.5) failed inside the process pool, NaN token limits were accepted and
    a build with shard_max_tokens=nan succeeded; each is refused in one line when made."""
    with pytest.raises(ValueError, match=f"^{match}$"):
        BuildConfig(**kwargs)


def test_build_config_takes_numpy_ints_and_build_corpus_refuses_a_dict(tmp_path):
    cfg = BuildConfig(workers=np.int64(2), seed=np.uint8(3), test_fraction=np.float32(0.25), cache_dir=tmp_path)
    assert (cfg.workers, cfg.seed) == (2, 3) and type(cfg.workers) is int
    assert type(cfg.test_fraction) is float and cfg.cache_dir == str(tmp_path)  # what the manifest's JSON takes
    with pytest.raises(ValueError, match="^source_dataset must be a string or None, got PosixPath"):
        BuildConfig(source_dataset=tmp_path)
    with pytest.raises(ValueError, match=r"^cfg must be a BuildConfig \(e.g. BuildConfig\(bin_ms=10\)\), got a dict$"):
        build_corpus([str(tmp_path)], tmp_path / "c", {"bin_ms": 10}, progress=False)


def test_a_full_disk_stops_the_build_as_an_operation_failure_not_bad_inputs(tmp_path, nwb_factory, monkeypatch,
                                                                           capsys):
    """With the disk full every healthy input was skipped as bad ('No space left on device') and the
    command exited 2 (bad input); it is the machine's problem: exit 1, no input blamed."""
    import errno

    from spikefm.cli import main as cli_main
    from spikefm.corpus import build as build_mod

    src, _ = nwb_factory("sub-1_ses-1")

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build_mod, "write_atomic", full)
    assert cli_main(["corpus", "build", str(src), "--out", str(tmp_path / "c"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikefm: error: No space left on device while writing the corpus in ")
    assert "skipped" not in err[0] and err[0].endswith("free space there (nothing was half-written: writes go to "
                                                       "temporary names)")


def test_a_librarys_out_of_space_error_is_not_called_an_internal_error(tmp_path, monkeypatch, capsys):
    """safetensors reports a full disk as its own SafetensorError: it was 'internal error ... report it'."""
    from spikefm import cli

    class SafetensorError(Exception):
        pass

    def full(args):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(cli, "cmd_corpus_info", full)
    assert cli.main(["corpus", "info", str(tmp_path)]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("spikefm: error: no space left on the device (Error while serializing")
    assert "internal error" not in line and line.endswith("free space there (nothing was half-written: writes go "
                                                          "to temporary names)")


def test_counts_clipped_at_255_are_warned_about_and_the_spikes_left_out_recorded(tmp_path, capsys):
    """The build clipped bins above 255 spikes to 255 without a word: a 60 s --bin-ms on a real
    recording left 21 % of its spikes out of the corpus, and num_spikes still counted them."""
    rng = np.random.default_rng(0)
    burst = np.sort(np.concatenate([0.5 + 0.019 * rng.random(300), 1.0 + 0.019 * rng.random(270)]))
    quiet = np.sort(rng.uniform(0.0, 2.0, 40))
    path = write_nwb(tmp_path / "nwb" / "a.nwb", [burst, quiet], ["CA1", "CA1"])
    assert cli_main(["corpus", "build", str(path), "--out", str(tmp_path / "c"), "--test-fraction", "0",
                     "--quiet"]) == 0
    corpus = Corpus(tmp_path / "c")
    (s,) = corpus.sessions
    got, _ = corpus_session_matrix(corpus, s["session_id"])
    lost = burst.size + quiet.size - int(got.sum())
    assert lost == (300 - 255) + (270 - 255) and s["clipped_bins"] == 2 and s["clipped_spikes"] == lost
    assert s["num_spikes"] == burst.size + quiet.size  # the file's spikes, as before
    err = capsys.readouterr().err
    assert (f"{path}: 2 unit-bin(s) held more than 255 spikes and were clipped to 255 (uint8), 60 of its 610 "
            "spikes not in the corpus; a smaller --bin-ms (now 20) keeps them") in err
    # a session without clipped bins records no clipped_spikes and says nothing of it
    assert cli_main(["corpus", "build", str(write_nwb(tmp_path / "n2" / "b.nwb", [quiet], ["CA1"])), "--out",
                     str(tmp_path / "c2"), "--test-fraction", "0", "--quiet"]) == 0
    assert "clipped_spikes" not in Corpus(tmp_path / "c2").sessions[0] and "clipped" not in capsys.readouterr().err


def test_staging_keeps_only_the_latest_builds_sessions(six_sessions, tmp_path, capsys):
    """Every settings change (or changed input file) left a full uncompressed staged copy of its
    sessions in .staging/ that no build would use again; the folder grew with each rebuild."""
    folder, _ = six_sessions
    out = tmp_path / "c"
    build_corpus([str(folder)], out, BuildConfig(max_row_tokens=500, test_fraction=0.3), progress=False)
    first = {p.name for p in (out / ".staging").iterdir()}
    assert len(first) == 12  # one .arrow and one .json per session
    capsys.readouterr()
    cfg = BuildConfig(max_row_tokens=400, test_fraction=0.3, overwrite=True)
    report = build_corpus([str(folder)], out, cfg, progress=False)
    err = capsys.readouterr().err
    second = {p.name for p in (out / ".staging").iterdir()}
    assert report.num_staged_now == 6 and len(second) == 12 and not first & second
    assert err.count("removed 6 staged session(s) of earlier builds (") == 1
    content = _corpus_content(out)
    # an input changed since it was staged: its old copy goes, the other five are reused
    nwb = sorted(folder.rglob("*.nwb"))[0]
    st = nwb.stat()
    os.utime(nwb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    report = build_corpus([str(folder)], out, cfg, progress=False)
    third = {p.name for p in (out / ".staging").iterdir()}
    assert report.num_reused == 5 and len(third) == 12 and len(third - second) == 2
    assert "removed 1 staged session(s)" in capsys.readouterr().err
    assert _corpus_content(out) == content  # the same counts (only the file's mtime changed)
    # the same build again removes nothing and says nothing of it
    build_corpus([str(folder)], out, cfg, progress=False)
    assert {p.name for p in (out / ".staging").iterdir()} == third
    assert "staged session(s)" not in capsys.readouterr().err
    # an input given but missing now (an unmounted share): its staged copy is kept for its return
    files = [str(p) for p in sorted(folder.rglob("*.nwb"))]
    build_corpus(files, out, cfg, progress=False)  # given one by one
    by_file = {p.name for p in (out / ".staging").iterdir()}
    capsys.readouterr()
    away = tmp_path / "away.nwb"
    os.replace(files[1], away)
    build_corpus(files, out, cfg, progress=False)
    assert {p.name for p in (out / ".staging").iterdir()} == by_file
    assert "staged session(s)" not in capsys.readouterr().err
    os.replace(away, files[1])
    assert build_corpus(files, out, cfg, progress=False).num_reused == 6


def test_a_file_under_two_given_folders_takes_its_source_from_the_innermost_whatever_the_order(tmp_path):
    """`build R R/x` named R/x's files' source 'R' and `build R/x R` named it 'x', writing a new
    version for what the docs call the same build."""
    from spikefm.corpus.build import resolve_inputs

    root = tmp_path / "R"
    for sub, k in (("x", 0), ("y", 1)):
        write_nwb(root / sub / f"s{k}.nwb", random_units(np.random.default_rng(k), 3, 6.0), ["A"] * 3)
    cfg = BuildConfig()
    by_order = []
    for inputs in ([str(root), str(root / "x")], [str(root / "x"), str(root)]):
        files, problems = resolve_inputs(inputs, cfg, progress=False)
        assert not problems
        by_order.append(sorted((f.path.name, f.source_dataset) for f in files))
    assert by_order[0] == by_order[1] == [("s0.nwb", "x"), ("s1.nwb", "R")]
    # a file given itself names its own folder
    files, _ = resolve_inputs([str(root), str(root / "y" / "s1.nwb")], cfg, progress=False)
    assert sorted((f.path.name, f.source_dataset) for f in files) == [("s0.nwb", "R"), ("s1.nwb", "y")]


def test_a_pinned_dandi_version_whose_assets_are_cached_builds_offline(tmp_path, nwb_factory, capsys, monkeypatch):
    """Every asset cached and the version pinned, a build without the network still asked the
    archive first and failed with 'check your network ... finished downloads are kept in the
    cache', which a rerun offline never used."""
    from spikefm.corpus import dandi as dandi_mod

    class Offline:
        def get_dandiset(self, dandiset_id, version_id=None):
            raise ConnectionError("connection refused")

    one, _ = nwb_factory("sub-1_ses-1")
    two, _ = nwb_factory("sub-2_ses-1")
    assets = [_FakeAsset("sub-1/sub-1_ses-1.nwb", one), _FakeAsset("sub-2/sub-2_ses-1.nwb", two)]
    cache, spec = tmp_path / "cache", "dandi:000207@0.220216.0"
    online = dandi_mod.resolve_dandi(spec, cache_dir=cache, client=_FakeClient(assets), progress=False)
    capsys.readouterr()
    offline = dandi_mod.resolve_dandi(spec, cache_dir=cache, client=Offline(), progress=False)
    assert [(i.path, i.provenance, i.license) for i in offline] == [(i.path, i.provenance, i.license) for i in online]
    assert offline[0].license == "spdx:CC-BY-4.0" and len(offline) == 2
    assert "the DANDI archive cannot be reached (connection refused); 2 asset(s) of version 0.220216.0 come from " \
           "the cache" in capsys.readouterr().err
    (sub1,) = dandi_mod.resolve_dandi(spec + "/sub-1/*.nwb", cache_dir=cache, client=Offline(), progress=False)
    assert sub1.provenance["asset_path"] == "sub-1/sub-1_ses-1.nwb"
    monkeypatch.setattr(dandi_mod, "_client", Offline)  # corpus build, as a user runs it offline
    report = build_corpus([spec], tmp_path / "c", BuildConfig(cache_dir=str(cache)), progress=False)
    assert [s["source_dataset"] for s in report.manifest["sessions"]] == ["dandi-000207"] * 2
    assert {s["license"] for s in report.manifest["sessions"]} == {"spdx:CC-BY-4.0"}
    # an asset the cache lost, or damaged, cannot be used offline: one line says so
    offline[1].path.write_bytes(b"\0" * offline[1].path.stat().st_size)
    with pytest.raises(ValueError, match=r"^dandi:000207@0.220216.0: the DANDI archive cannot be reached \(connection "
                                         r"refused\), and its asset sub-2/sub-2_ses-1.nwb is not in the cache"):
        dandi_mod.resolve_dandi(spec, cache_dir=cache, client=Offline(), progress=False)
    assert "it cannot be downloaded again now" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"no asset the cache lists for version 0.220216.0 matches 'sub-9/\*.nwb'"):
        dandi_mod.resolve_dandi(spec + "/sub-9/*.nwb", cache_dir=cache, client=Offline(), progress=False)
    # a draft changes: the cache cannot say what it is now
    with pytest.raises(ValueError, match=r"only the archive says which version is the draft now"):
        dandi_mod.resolve_dandi("dandi:000207@draft", cache_dir=cache, client=Offline(), progress=False)
