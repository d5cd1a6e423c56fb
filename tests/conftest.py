"""Shared fixtures: tiny NWB files written with pynwb, and paths to the real DANDI file."""
from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REAL_NWB_NAME = "dandi-000207_sub-4_ses-4_ecephys+image.nwb"
_REAL_NWB_DANDI_NAME = "sub-4_ses-4_ecephys+image.nwb"  # its name inside the dandiset


def _real_data_places() -> list[Path]:
    """Where the shared real recording may be: $SPIKEFM_REAL_DATA (the file or a folder holding
    it), then shared/data/real beside the repository, inside it, or beside any parent folder."""
    places = []
    env = os.environ.get("SPIKEFM_REAL_DATA")
    if env:
        places.append(Path(env).expanduser())
    repo = Path(__file__).resolve().parents[1]
    places += [repo.parent / "shared" / "data" / "real", repo / "shared" / "data" / "real"]
    places += [p / "shared" / "data" / "real" for p in repo.parents[1:]]
    return places


def find_real_nwb() -> tuple[Path | None, str]:
    """(path of the real DANDI recording or None, where it was looked for)."""
    places = _real_data_places()
    for place in places:
        if place.is_file() and place.suffix == ".nwb":
            return place, ""
        if place.is_dir():
            for name in (REAL_NWB_NAME, _REAL_NWB_DANDI_NAME):
                direct = place / name
                if direct.is_file():
                    return direct, ""
                found = sorted(place.rglob(name))
                if found:
                    return found[0], ""
    return None, ", ".join(str(p) for p in dict.fromkeys(places))


REAL_NWB, _REAL_NWB_SEARCHED = find_real_nwb()


def write_nwb(path, spike_times: list[np.ndarray], regions: list[str], *, species="Mus musculus",
              subject_id="m1", region_in_units=False, trials=None, behavior=None):
    """Write a small but real NWB file.

    Args:
        spike_times: per-unit spike time arrays (seconds).
        regions: per-unit region, stored in electrodes.location (and a units column if asked).
        trials: dict column -> array for nwbfile.trials (must hold start_time, stop_time).
        behavior: dict name -> (timestamps, values) stored in processing["behavior"].
    """
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.file import Subject

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nwb = NWBFile(session_description="test", identifier=path.stem,
                  session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                  subject=Subject(subject_id=subject_id, species=species))
    device = nwb.create_device(name="probe")
    groups = {}
    for r in sorted(set(regions)):
        groups[r] = nwb.create_electrode_group(name=f"g_{r}", description=r, location=r,
                                               device=device)
    for r in regions:
        nwb.add_electrode(location=r, group=groups[r])
    if region_in_units:
        nwb.add_unit_column(name="brain_region", description="region")
    for i, st in enumerate(spike_times):
        kw = {"brain_region": regions[i]} if region_in_units else {}
        nwb.add_unit(spike_times=np.asarray(st, dtype=np.float64), electrodes=[i], **kw)
    if trials:
        extra = [c for c in trials if c not in ("start_time", "stop_time")]
        for c in extra:
            nwb.add_trial_column(name=c, description=c)
        for k in range(len(trials["start_time"])):
            nwb.add_trial(**{c: trials[c][k] for c in trials})
    if behavior:
        mod = nwb.create_processing_module(name="behavior", description="behaviour")
        for name, (t, v) in behavior.items():
            mod.add(TimeSeries(name=name, data=np.asarray(v), timestamps=np.asarray(t), unit="a.u."))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return path


def random_units(rng, num_units, duration_s, rate_hz=5.0):
    return [np.sort(rng.uniform(0, duration_s, rng.poisson(rate_hz * duration_s)))
            for _ in range(num_units)]


@pytest.fixture(autouse=True)
def _fresh_once_warnings():
    """Each test sees the once-per-process warnings (spikefm.progress.warn_once) afresh (they would
    otherwise depend on which tests ran before in the same process)."""
    from spikefm import progress

    progress.WARNED.clear()
    yield


@pytest.fixture
def nwb_factory(tmp_path):
    def make(name, num_units=6, duration_s=20.0, seed=0, **kw):
        rng = np.random.default_rng(seed)
        units = random_units(rng, num_units, duration_s)
        regions = kw.pop("regions", None) or [("CA1", "VISp")[i % 2] for i in range(num_units)]
        return write_nwb(tmp_path / "nwb" / f"{name}.nwb", units, regions, **kw), units
    return make


@pytest.fixture
def real_nwb():
    if REAL_NWB is None:
        pytest.skip(f"real DANDI recording {REAL_NWB_NAME} not found (looked in "
                    f"{_REAL_NWB_SEARCHED}); set SPIKEFM_REAL_DATA to the file or its folder")
    return REAL_NWB


def torchrun_failure_report(proc, tail: int = 2000) -> str:
    """What a failed torchrun run said: every rank's error lines first, then the end of stderr."""
    keys = ("Error", "error:", "what()", "terminate called", "Fatal Python", "Traceback")
    lines = [ln for ln in proc.stderr.splitlines() if any(k in ln for k in keys)]
    return (f"torchrun exited with {proc.returncode}; error lines:\n" + "\n".join(lines[:60])
            + f"\n--- end of stderr ---\n{proc.stderr[-tail:]}")


def copy_run_naming_a_gone_corpus(run: Path, dest: Path) -> dict:
    """Copy the run folder ``run`` to ``dest`` with its config.json naming a corpus that does not
    exist (as a run shared without its data, or whose corpus was moved); returns that config.json."""
    import json
    import shutil

    shutil.copytree(run, dest)
    rec = json.loads((dest / "config.json").read_text())
    rec["config"]["data"]["corpus"] = rec["family_info"]["corpus"] = str(dest.parent / "moved")
    (dest / "config.json").write_text(json.dumps(rec))
    return rec


def load_model_reading_no_windows(path: Path, monkeypatch):
    """``spikefm.load_model(path)`` with the window reader made to fail: the model must come from
    what the run recorded, not from its data."""
    import spikefm.data.windows as windows_module
    from spikefm import load_model

    def no_windows(*a, **k):
        raise AssertionError("loading a run read the corpus")

    with monkeypatch.context() as m:
        m.setattr(windows_module, "load_all_windows", no_windows)
        return load_model(path)
