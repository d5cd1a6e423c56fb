"""NWB structures real labs write that the synthetic generator does not: observation intervals,
scaled behaviour (conversion / offset), two series of one name, NaN runs and gaps in behaviour,
trials outside the spikes' span or without a start, ragged trial columns, repeated spike times,
regions named only by the electrode group. Each file is written with pynwb and the corpus is
compared with values computed here from the same arrays."""
from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pytest

from spikefm.corpus import Corpus
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.nwb import read_nwb

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _nwb(location="CA1", group_location="CA1"):
    from pynwb import NWBFile
    from pynwb.file import Subject

    nwb = NWBFile(session_description="t", identifier="x", session_start_time=T0,
                  subject=Subject(subject_id="m1", species="Mus musculus"))
    device = nwb.create_device(name="probe")
    group = nwb.create_electrode_group(name="g", description="g", location=group_location, device=device)
    for _ in range(3):
        nwb.add_electrode(location=location, group=group)
    return nwb


def _write(nwb, path: Path) -> Path:
    from pynwb import NWBHDF5IO

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return path


def _build(path: Path, out: Path, capsys) -> tuple[Corpus, str]:
    capsys.readouterr()
    build_corpus([str(path)], out, BuildConfig(test_fraction=0.0), progress=False)
    return Corpus(out), capsys.readouterr().err


def _units(rng, n=3, duration=60.0):
    return [np.sort(rng.uniform(0.01, duration - 0.01, 300)) for _ in range(n)]


def test_obs_intervals_repeated_spikes_and_group_regions(tmp_path, capsys):
    rng = np.random.default_rng(0)
    nwb = _nwb(location="unknown", group_location="VISp")  # pynwb refuses an empty location
    spikes = _units(rng)
    spikes[1] = np.sort(np.concatenate([spikes[1], spikes[1][:50]]))  # 50 exact repeats
    observed = [[(0.0, 60.0)], [(0.0, 20.0)], [(30.0, 60.0)]]
    for i, st in enumerate(spikes):
        nwb.add_unit(spike_times=st, electrodes=[i], obs_intervals=observed[i])
    corpus, err = _build(_write(nwb, tmp_path / "obs.nwb"), tmp_path / "c", capsys)
    (row,) = corpus.iter_rows("train")
    edges = (row.t_start_ms + 20 * np.arange(row.spike_counts.shape[1] + 1)) / 1000.0
    for i, st in enumerate(spikes):  # counted as stored, repeats included
        np.testing.assert_array_equal(row.spike_counts[i], np.histogram(st, edges)[0])
    centres = (edges[:-1] + edges[1:]) / 2
    unobserved = sum(int(np.count_nonzero(~np.any([(centres >= a) & (centres < b) for a, b in iv], axis=0)))
                     for iv in observed)
    total = row.spike_counts.size
    assert f"{unobserved:,} of {total:,} unit-bins" in err and "obs_intervals" in err
    assert "50 spike time(s) repeat an earlier time of the same unit (1 unit(s))" in err
    assert list(row.unit_regions) == ["VISp"] * 3  # the group's location, unit by unit


def test_behaviour_scaled_renamed_and_gaps_left_as_nan(tmp_path, capsys):
    from pynwb.behavior import BehavioralTimeSeries, Position, SpatialSeries
    from pynwb.base import TimeSeries

    rng = np.random.default_rng(1)
    nwb = _nwb()
    for i, st in enumerate(_units(rng)):
        nwb.add_unit(spike_times=st, electrodes=[i])
    mod = nwb.create_processing_module(name="behavior", description="b")
    raw = (np.arange(600) % 200).astype(np.int16)  # 10 Hz from t = 1 s
    mod.add(TimeSeries(name="wheel", data=raw, unit="rad", conversion=0.01, offset=0.5,
                       starting_time=1.0, rate=10.0))
    lick = np.linspace(0, 1, 600)
    lick[:100] = np.nan  # no value for 0-10 s
    t = np.arange(600) / 10.0
    mod.add(TimeSeries(name="lick", data=lick, timestamps=t, unit="a.u."))
    keep = (t < 20) | (t >= 40)  # no samples for 20-40 s
    mod.add(TimeSeries(name="pupil", data=np.sin(t[keep]), timestamps=t[keep], unit="a.u."))
    pos = Position(name="Position")
    pos.add_spatial_series(SpatialSeries(name="position", data=np.c_[t, -t], timestamps=t,
                                         reference_frame="origin"))
    mod.add(pos)
    bts = BehavioralTimeSeries(name="BehavioralTimeSeries")
    bts.add_timeseries(TimeSeries(name="position", data=2 * t, timestamps=t, unit="cm"))
    mod.add(bts)
    path = _write(nwb, tmp_path / "beh.nwb")
    rec = read_nwb(path)
    names = [s.name for s in rec.behavior]
    assert sorted(names) == sorted(["wheel", "lick", "pupil", "position", "BehavioralTimeSeries_position"]) or \
        sorted(names) == sorted(["wheel", "lick", "pupil", "position", "Position_position"])
    assert any("kept as" in n for n in rec.notes)

    corpus, err = _build(path, tmp_path / "c", capsys)
    (row,) = corpus.iter_rows("train")
    beh = dict(zip(row.behavior_names, row.behavior))
    centres = (row.t_start_ms + 20 * (np.arange(row.spike_counts.shape[1]) + 0.5)) / 1000.0
    wheel_t = 1.0 + np.arange(600) / 10.0
    inside = (centres >= wheel_t[0]) & (centres <= wheel_t[-1])
    np.testing.assert_allclose(beh["wheel"][inside], np.interp(centres[inside], wheel_t, raw * 0.01 + 0.5),
                               rtol=1e-6)
    assert np.isnan(beh["lick"][centres < 10.0]).all() and np.isfinite(beh["lick"][(centres > 10.05) & (centres < 59.9)]).all()
    gap = (centres > 19.9) & (centres < 40.0)
    assert np.isnan(beh["pupil"][gap]).all() and np.isfinite(beh["pupil"][(centres > 1) & (centres < 19.9)]).all()
    # both series are in the corpus, whichever the file lists first keeps the name
    assert {"position_0", "position_1", "BehavioralTimeSeries_position"} <= set(beh) or \
        {"position", "Position_position_0", "Position_position_1"} <= set(beh), sorted(beh)
    one_d = beh["position"] if "position" in beh else beh["BehavioralTimeSeries_position"]
    ok = (centres > 0.05) & (centres < 59.9)
    np.testing.assert_allclose(one_d[ok], 2 * centres[ok], rtol=1e-5)  # the 1-D one is 2 t


def test_trials_outside_the_span_without_start_and_ragged_columns_are_said(tmp_path, capsys):
    rng = np.random.default_rng(2)
    nwb = _nwb()
    for i in range(3):
        nwb.add_unit(spike_times=np.sort(rng.uniform(10.0, 30.0, 100)), electrodes=[i])
    nwb.add_trial_column(name="tags_list", description="ragged", index=True)
    starts = [2.0, 12.0, 20.0, 45.0, np.nan]
    for k, s0 in enumerate(starts):
        nwb.add_trial(start_time=s0, stop_time=(s0 + 1.0) if np.isfinite(s0) else 50.0, tags_list=["a"] * (k + 1))
    corpus, err = _build(_write(nwb, tmp_path / "tri.nwb"), tmp_path / "c", capsys)
    assert "interval table 'trials': column(s) tags_list left out" in err
    assert "interval table 'trials': 1 row(s) without a finite start_time" in err
    assert "interval table 'trials': 2 of 5 row(s) lie outside the binned span" in err
    (row,) = corpus.iter_rows("train")
    assert row.trials["trials"]["start_time"] == [12.0, 20.0]


def test_repeated_timestamps_do_not_make_every_step_a_gap():
    """With most steps 0 (each timestamp twice), the median interval was 0 and every real step a
    'gap': 44 of 50 bins went NaN."""
    from spikefm.corpus.nwb import resample_behavior
    from spikefm.corpus.session import BehaviorSeries

    t = np.repeat(np.arange(0, 2, 0.05), 2)
    series = BehaviorSeries(name="x", timestamps_s=t, values=np.sin(t))
    _, row = resample_behavior(series, 0, 50, 20)
    centres = (20 * (np.arange(50) + 0.5)) / 1000.0
    inside = centres <= t[-1]
    assert np.isfinite(row[0][inside]).all() and np.isnan(row[0][~inside]).all()


def test_a_trial_dataset_the_table_does_not_declare_is_named_in_the_notes(tmp_path):
    """The real DANDI file's response_time datasets sit in its interval tables' groups but not in
    their colnames, so pynwb (and the corpus) never saw them, and nothing said so: a
    response-aligned analysis was refused with 'no column response_time'."""
    import h5py

    from conftest import write_nwb
    from spikefm.corpus.nwb import read_nwb

    path = tmp_path / "s.nwb"
    write_nwb(path, [np.array([0.1, 0.5, 1.2])], ["CA1"],
              trials={"start_time": np.array([0.0, 1.0]), "stop_time": np.array([0.5, 1.5]),
                      "choice": np.array([1.0, -1.0])})
    assert read_nwb(path, compute_sha256=False).notes == []
    with h5py.File(path, "a") as f:
        f["intervals/trials"].create_dataset("response_time", data=np.array([0.3, 1.3]))
    notes = read_nwb(path, compute_sha256=False).notes
    assert len(notes) == 1 and notes[0].startswith("interval table 'trials': dataset(s) response_time left out: "
                                                   "the file does not declare them as columns")
