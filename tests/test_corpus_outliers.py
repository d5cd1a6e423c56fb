"""One bad file never stops a build: stray spike times past the recording's end (the
--spikes-past-end policy), a MemoryError, a worker process killed while building a file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from spikefm import Corpus
from spikefm.cli import main as cli_main
from spikefm.corpus import build as build_mod
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.session import (END_SILENCE_MIN_S, BehaviorSeries, SessionRecord,
                                    recording_end_s, spike_time_bound_s)

from conftest import random_units, write_nwb
from test_corpus_support import histogram, session_matrix, write_sessions


@pytest.fixture
def files(tmp_path):
    """Two good files and one with a single spike time far past the others."""
    rng = np.random.default_rng(3)
    good = [write_nwb(tmp_path / "in" / f"good{k}.nwb", random_units(rng, 4, 20.0), ["A"] * 4)
            for k in range(2)]
    units = random_units(rng, 5, 20.0)
    real = [u.copy() for u in units]
    units[2] = np.sort(np.concatenate([units[2], [1.0e9]]))  # ~32 years: 5e10 bins
    stray = write_nwb(tmp_path / "in" / "stray.nwb", units, ["A"] * 5)
    return good, stray, real


def test_stray_spike_is_dropped_counted_and_the_rest_binned_exactly(files, tmp_path, capsys):
    good, stray, real = files
    out = tmp_path / "c"
    rc = cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0
    assert err == [f"spikefm: warning: {stray.resolve()}: left out 1 spike time(s) after the recording's "
                   f"end ({max(u.max() for u in real):.6g} s) (--spikes-past-end drop)"]
    corpus = Corpus(out)
    s = corpus.session("stray")
    assert s["spikes_past_end"] == 1
    assert s["recording_end_s"] == max(u.max() for u in real)
    assert s["num_spikes"] == sum(u.size for u in real)
    got, t0 = session_matrix(corpus, "stray")
    assert got.shape[1] == s["num_bins"] <= 20.0 / 0.02 + 1
    np.testing.assert_array_equal(got, histogram(real, t0, got.shape[1]))
    assert "spikes_past_end" not in corpus.session("good0")
    assert corpus.manifest["build"]["spikes_past_end"] == "drop"


def test_error_policy_skips_the_file_with_one_line_and_builds_the_others(files, tmp_path,
                                                                          capsys):
    good, stray, _ = files
    out = tmp_path / "c"
    rc = cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(out), "--quiet",
                   "--spikes-past-end", "error"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    (line,) = [e for e in err if "stray.nwb" in e]
    assert line.startswith(f"spikefm: warning: skipped {stray}: 1 spike time(s) lie after the recording's end")
    assert "latest at 1e+09 s" in line and "--spikes-past-end drop" in line
    m = Corpus(out).manifest
    assert sorted(s["session_id"] for s in m["sessions"]) == ["good0", "good1"]
    assert [Path(s["input"]).name for s in m["skipped"]] == ["stray.nwb"]


def test_trials_and_behaviour_extend_the_recording(tmp_path):
    """A late spike inside the recorded trials is real: it is kept."""
    rng = np.random.default_rng(4)
    units = random_units(rng, 3, 20.0)
    units[0] = np.sort(np.concatenate([units[0], [400.0]]))
    trials = {"start_time": np.array([1.0, 300.0]), "stop_time": np.array([2.0, 410.0])}
    p = write_nwb(tmp_path / "t.nwb", units, ["A"] * 3, trials=trials)
    report = build_corpus([str(p)], tmp_path / "c", BuildConfig(spikes_past_end="error"),
                          progress=False)
    assert report.ok
    (s,) = report.manifest["sessions"]
    assert "spikes_past_end" not in s and s["num_spikes"] == sum(u.size for u in units)
    got, t0 = session_matrix(Corpus(tmp_path / "c"), "t")
    np.testing.assert_array_equal(got, histogram(units, t0, got.shape[1]))
    assert t0 / 1000 + got.shape[1] * 0.02 > 400.0  # the session reaches the late spike


def record(times, trials=None, behavior=()):
    times = np.asarray(times, dtype=np.float64)
    return SessionRecord(session_id="s", subject_id="m", source_dataset="d", species="",
                         spike_times_s=times, unit_index=np.zeros(times.size, np.int64),
                         unit_ids=["0"], unit_regions=["A"], trials=trials or {},
                         behavior=list(behavior))


def test_recording_end_rules():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 600, 50_000)
    assert spike_time_bound_s(t) == t.max()  # a steady recording: nothing is stray
    # a few stray times, in any order, far past: the bound is the last real spike
    stray = np.concatenate([t, [5e4, 1e12, 7e5]])
    assert spike_time_bound_s(rng.permutation(stray)) == t.max()
    # a silence must be longer than all the recording before it: a pause of 300 s after 600 s of
    # recording is real, one of 700 s is not
    assert spike_time_bound_s(np.concatenate([t, t.max() + 300 + t[:200] / 100])) > t.max()
    assert spike_time_bound_s(np.concatenate([t, [t.max() + 700]])) == t.max()
    # ... and longer than END_SILENCE_MIN_S: a 10 s recording with a spike 30 s later keeps it
    short = np.array([0.0, 1.0, 2.0, 10.0, 40.0])
    assert END_SILENCE_MIN_S > 30 and spike_time_bound_s(short) == 40.0
    with pytest.raises(ValueError, match="empty"):
        spike_time_bound_s(np.zeros(0))
    # trials and behaviour extend the end; NaN stop times are ignored
    rec = record(np.concatenate([t, [1e9]]),
                 trials={"trials": {"start_time": np.array([0.0, 650.0]),
                                    "stop_time": np.array([1.0, np.nan])}},
                 behavior=[BehaviorSeries("wheel", np.array([0.0, 700.0]), np.ones(2))])
    assert recording_end_s(rec) == (700.0, "behaviour")
    assert recording_end_s(record(t, trials={"x": {"start_time": np.array([900.0])}})) == \
        (900.0, "trials")
    assert recording_end_s(record(t)) == (t.max(), "spike times")


def test_memory_error_in_one_file_skips_it_with_one_line(files, tmp_path, monkeypatch, capsys):
    good, stray, _ = files
    real_bin = build_mod.bin_spikes

    def bin_or_fail(t, units, num_units, *a, **kw):
        if num_units == 5:  # stray.nwb
            raise MemoryError("Unable to allocate 250. GiB for an array")
        return real_bin(t, units, num_units, *a, **kw)

    monkeypatch.setattr(build_mod, "bin_spikes", bin_or_fail)
    rc = cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(tmp_path / "c"),
                   "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    (line,) = [e for e in err if e.startswith("spikefm: warning: skipped")]
    assert line.startswith(f"spikefm: warning: skipped {stray}: out of memory while reading or binning it "
                           "(MemoryError: Unable to allocate 250. GiB")
    assert sorted(s["session_id"] for s in Corpus(tmp_path / "c").sessions) == ["good0", "good1"]


def test_a_worker_killed_while_building_a_file_skips_only_that_file(tmp_path, monkeypatch,
                                                                    capsys):
    """As when the system kills a worker for memory: the pool breaks; the file is found by
    re-running the jobs left one at a time, and only it is skipped."""
    folder = tmp_path / "in"
    write_sessions(folder, 5, seed=8)
    real_rows = build_mod.session_rows

    def rows_or_die(rec, cfg):
        if rec.session_id == "ses-2":
            os._exit(9)  # the worker process dies at once (fork: workers inherit this patch)
        return real_rows(rec, cfg)

    monkeypatch.setattr(build_mod, "session_rows", rows_or_die)
    rc = cli_main(["corpus", "build", str(folder), "--out", str(tmp_path / "c"), "--quiet",
                   "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-2:] == [f"spikefm: warning: skipped {folder / 'ses-2.nwb'}: the worker process building it died "
                        "(killed by the system, most likely for running out of memory); skipped",
                        f"spikefm: error: 1 input(s) skipped; listed under \"skipped\" in "
                        f"{tmp_path / 'c'}/manifest.json; the other 4 session(s) were built: fix "
                        "or remove the skipped inputs and run again (built sessions are reused)"]
    got = Corpus(tmp_path / "c")
    assert sorted(s["session_id"] for s in got.sessions) == ["ses-0", "ses-1", "ses-3", "ses-4"]
    monkeypatch.setattr(build_mod, "session_rows", real_rows)
    build_corpus([str(p) for p in sorted(folder.glob("*.nwb")) if p.stem != "ses-2"],
                 tmp_path / "ref", BuildConfig(), progress=False)
    want = Corpus(tmp_path / "ref")
    for s in want.sessions:
        np.testing.assert_array_equal(session_matrix(got, s["session_id"])[0],
                                      session_matrix(want, s["session_id"])[0])


def test_a_session_larger_than_available_memory_is_skipped_before_binning(files, tmp_path,
                                                                           monkeypatch):
    """Where the system would kill the build instead of raising MemoryError."""
    good, stray, _ = files
    calls = []
    monkeypatch.setattr(build_mod, "available_memory_bytes", lambda: 5_000)
    monkeypatch.setattr(build_mod, "bin_spikes", lambda *a, **kw: calls.append(a))
    with pytest.raises(ValueError, match="no input could be built") as exc:
        build_corpus([str(good[0])], tmp_path / "c", BuildConfig(), progress=False)
    msg = str(exc.value)
    # 4 units x about 1000 bins of 20 ms, 2 bytes a cell: about 8 kB
    assert f"{good[0]}: binning it needs about 8." in msg and " kB (4 units x " in msg
    assert "more than the 5.0 kB of memory available" in msg
    assert not calls  # refused before any allocation
    assert not (tmp_path / "c").exists()
