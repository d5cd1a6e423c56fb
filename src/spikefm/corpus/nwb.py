"""Reading one NWB file into a :class:`SessionRecord` (units, regions, subject, trials, behaviour).

What is read, and from where:

- spikes: ``units.spike_times`` (the flat ragged array and its index, read in one go, no per-unit
  Python loop). Spike times must be finite and >= 0 (seconds from the session reference time).
- each unit's brain region: the first units column among ``brain_region``, ``location``,
  ``region``, ``brain_area``; otherwise the ``location`` of the unit's first electrode
  (``units.electrodes`` -> ``electrodes.location``); otherwise its electrode group's location;
  otherwise ``"unknown"``.
- subject and species: ``nwbfile.subject`` (``subject_id``, ``species``); the subject id falls back
  to the name of the folder holding the file, as the Neural Pile does.
- session id: the file name without ``.nwb`` (the Neural Pile's convention), unless given.
- trial tables: every table under ``intervals/`` (``trials`` included), numeric and string columns.
- behaviour: ``TimeSeries`` found in processing modules named ``behavior``/``behaviour`` (any case,
  including those nested in BehavioralTimeSeries, Position, PupilTracking... containers) and
  behaviour containers in ``acquisition``. Raw voltage, images and event-code series are not
  behaviour and are ignored. 2-D series become ``name_0``, ``name_1``...
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from .session import BehaviorSeries, SessionRecord

UNIT_REGION_COLUMNS = ("brain_region", "location", "region", "brain_area")
BEHAVIOR_MODULE_NAMES = {"behavior", "behaviour"}
BEHAVIOR_CONTAINERS = {
    "BehavioralTimeSeries", "Position", "CompassDirection", "PupilTracking", "EyeTracking",
    "BehavioralEpochs",
}
_MAX_BEHAVIOR_DIMS = 16


class NWBInputError(ValueError):
    """A file that cannot be turned into a session; the message names the file and the problem."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _text(x) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return "" if x is None else str(x)


def _check_hdf5(path: Path) -> None:
    if not path.exists():
        raise NWBInputError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise NWBInputError(f"{path}: is a folder, expected an .nwb file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise NWBInputError(
            f"{path}: not an HDF5/NWB file (bad signature {head[:8]!r}); expected an NWB 2.x file "
            "written by pynwb/MatNWB (Zarr-backed NWB is not supported)"
        )


def read_nwb(
    path: str | Path,
    *,
    session_id: str | None = None,
    subject_id: str | None = None,
    source_dataset: str | None = None,
    provenance: dict | None = None,
    license: str = "",
    compute_sha256: bool = True,
) -> SessionRecord:
    """Read one NWB file.

    Args:
        path: the ``.nwb`` file.
        session_id, subject_id, source_dataset: override the identifiers derived from the file.
        provenance: extra provenance (e.g. DANDI id, version, asset path) merged into the record's.
        license: licence of the data when known (DANDI metadata), else ``""``.
        compute_sha256: hash the file for provenance.

    Raises:
        NWBInputError: one line naming the file and the problem (missing, not HDF5/NWB, no units
            table, non-finite or negative spike times, behaviour timestamps that do not fit).
    """
    path = Path(path)
    _check_hdf5(path)
    import pynwb  # lazily: importing pynwb costs ~1 s

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pynwb warns about harmless schema quirks in real files
            io = pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True)
            nwb = io.read()
    except Exception as exc:  # h5py/hdmf raise many types for truncated or foreign files
        raise NWBInputError(
            f"{path}: cannot be read as NWB ({type(exc).__name__}: {_first_line(exc)}); "
            "the file may be truncated or not an NWB file"
        ) from None
    try:
        return _read_open_file(nwb, path, session_id, subject_id, source_dataset, provenance,
                               license, compute_sha256)
    except NWBInputError:
        raise
    except Exception as exc:
        raise NWBInputError(
            f"{path}: failed while reading ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    finally:
        io.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _read_open_file(nwb, path, session_id, subject_id, source_dataset, provenance, license,
                    compute_sha256) -> SessionRecord:
    units = nwb.units
    if units is None or "spike_times" not in units.colnames:
        raise NWBInputError(
            f"{path}: no units table with spike_times; spikefm needs spike-sorted units "
            "(nwbfile.units) to build a corpus"
        )
    spike_times, unit_index, num_units = _read_spikes(units, path)
    unit_ids = [str(x) for x in np.asarray(units.id.data[:])]
    regions = _unit_regions(units, num_units)

    subject = nwb.subject
    species = _text(getattr(subject, "species", None)) if subject is not None else ""
    if subject_id is None:
        sid = _text(getattr(subject, "subject_id", None)) if subject is not None else ""
        subject_id = sid or path.parent.name
    if session_id is None:
        session_id = path.name[: -len(".nwb")] if path.name.endswith(".nwb") else path.stem
    if source_dataset is None:
        source_dataset = path.parent.name

    prov = {"path": str(path.resolve()), "nwb_identifier": _text(nwb.identifier),
            "nwb_session_id": _text(nwb.session_id)}
    if compute_sha256:
        prov["sha256"] = sha256_file(path)
    prov.update(provenance or {})
    notes: list[str] = []
    behavior = _read_behavior(nwb, path, notes)
    return SessionRecord(
        session_id=session_id,
        subject_id=subject_id,
        source_dataset=source_dataset,
        species=species,
        spike_times_s=spike_times,
        unit_index=unit_index,
        unit_ids=unit_ids,
        unit_regions=regions,
        trials=_read_intervals(nwb),
        behavior=behavior,
        provenance=prov,
        license=license,
        notes=notes,
    )


def _read_spikes(units, path) -> tuple[np.ndarray, np.ndarray, int]:
    times = np.asarray(units.spike_times.data[:], dtype=np.float64).reshape(-1)
    index = getattr(units, "spike_times_index", None)
    if index is None:
        index = units["spike_times"]
    ends = np.asarray(index.data[:], dtype=np.int64)
    num_units = len(ends)
    if num_units == 0:
        raise NWBInputError(f"{path}: the units table is empty; nothing to bin")
    if ends[-1] != times.size or np.any(np.diff(ends) < 0):
        raise NWBInputError(
            f"{path}: units.spike_times_index does not match spike_times ({ends[-1]} indexed vs "
            f"{times.size} stored); the file is inconsistent"
        )
    bad = ~np.isfinite(times)
    if bad.any():
        raise NWBInputError(
            f"{path}: {int(bad.sum())} spike times are NaN or infinite; spike times must be finite "
            "seconds from the session start"
        )
    if times.size and times.min() < 0:
        raise NWBInputError(
            f"{path}: {int((times < 0).sum())} spike times are negative (min {times.min():.6g} s); "
            "spike times must be >= 0 s from the session start"
        )
    counts = np.diff(np.concatenate([[0], ends]))
    unit_index = np.repeat(np.arange(num_units, dtype=np.int64), counts)
    return times, unit_index, num_units


def _unit_regions(units, num_units: int) -> list[str]:
    for col in UNIT_REGION_COLUMNS:
        if col in units.colnames:
            values = [_text(v) for v in units[col].data[:]]
            if len(values) == num_units:
                return [v or "unknown" for v in values]
    if "electrodes" in units.colnames:
        try:
            # The column object itself: units["electrodes"] is its index when the column is ragged.
            region = units.electrodes
            table = region.table
            if "location" in table.colnames:
                locs = np.asarray([_text(v) for v in table["location"].data[:]], dtype=object)
                rows = np.asarray(region.data[:], dtype=np.int64)
                idx = getattr(units, "electrodes_index", None)
                if idx is not None:  # ragged: several electrodes per unit, take the first
                    ends = np.asarray(idx.data[:], dtype=np.int64)
                    starts = np.concatenate([[0], ends[:-1]])
                    first = np.where(ends > starts, rows[np.minimum(starts, len(rows) - 1)], -1)
                else:
                    first = rows
                return [locs[i] if 0 <= i < len(locs) and locs[i] else "unknown" for i in first]
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            warnings.warn(f"could not read unit regions from units.electrodes ({exc}); "
                          "trying electrode groups")
    if "electrode_group" in units.colnames:
        groups = units["electrode_group"].data[:]
        return [_text(getattr(g, "location", "")) or "unknown" for g in groups]
    return ["unknown"] * num_units


def _column_values(col) -> np.ndarray | None:
    """A trial-table column as a 1-D array, or None for ragged/object columns we do not keep."""
    if getattr(col, "__class__", type(None)).__name__ in {"VectorIndex", "DynamicTableRegion"}:
        return None
    try:
        data = col.data[:]
    except Exception:
        return None
    arr = np.asarray(data)
    if arr.ndim != 1:
        return None
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64) if arr.dtype.kind == "f" else arr.astype(np.int64)
    if arr.dtype.kind in "SUO":
        try:
            return np.asarray([_text(v) for v in arr], dtype=object)
        except Exception:
            return None
    return None


def _read_intervals(nwb) -> dict[str, dict[str, np.ndarray]]:
    tables = {}
    for name, table in (nwb.intervals or {}).items():
        cols = {}
        ragged = {c for c in table.colnames if f"{c}_index" in table.colnames}
        for c in table.colnames:
            if c in ragged or c.endswith("_index"):
                continue
            values = _column_values(table[c])
            if values is not None:
                cols[c] = values
        if "start_time" in cols:
            tables[name] = cols
    return tables


def _iter_behavior_series(nwb):
    def walk(container, prefix_ok):
        from pynwb.base import TimeSeries

        kind = type(container).__name__
        if isinstance(container, TimeSeries):
            if prefix_ok and kind not in {"ElectricalSeries", "ImageSeries", "OpticalSeries",
                                          "TwoPhotonSeries", "AnnotationSeries", "IntervalSeries"}:
                yield container
            return
        children = getattr(container, "children", None) or []
        for child in children:
            yield from walk(child, prefix_ok)

    for name, module in (nwb.processing or {}).items():
        if name.lower() in BEHAVIOR_MODULE_NAMES:
            for child in module.data_interfaces.values():
                yield from walk(child, True)
    for obj in (nwb.acquisition or {}).values():
        if type(obj).__name__ in BEHAVIOR_CONTAINERS:
            yield from walk(obj, True)


def _read_behavior(nwb, path, notes: list[str] | None = None) -> list[BehaviorSeries]:
    """The behaviour series spikefm can bin; each one left out adds a line to ``notes``."""
    out, seen = [], set()
    notes = [] if notes is None else notes
    for ts in _iter_behavior_series(nwb):
        data = np.asarray(ts.data[:])
        name = ts.name
        why = None
        if data.dtype.kind not in "biuf":
            why = f"its data are {data.dtype} values, not numbers"
        elif data.ndim not in (1, 2):
            why = f"its data have shape {data.shape}; spikefm reads (samples,) or (samples, dims)"
        elif data.shape[0] == 0:
            why = "it has no samples"
        elif data.ndim == 2 and data.shape[1] > _MAX_BEHAVIOR_DIMS:
            why = (f"it has {data.shape[1]} dimensions per sample, more than {_MAX_BEHAVIOR_DIMS} "
                   "(an image or a many-channel signal, not a behavioural variable)")
        elif ts.timestamps is None and not ts.rate:
            why = "it has neither timestamps nor a sampling rate"
        if why is not None:
            notes.append(f"behaviour series '{name}' left out: {why}")
            continue
        if ts.timestamps is not None:
            t = np.asarray(ts.timestamps[:] if not isinstance(ts.timestamps, np.ndarray)
                           else ts.timestamps, dtype=np.float64).reshape(-1)
        else:
            t = float(ts.starting_time or 0.0) + np.arange(data.shape[0]) / float(ts.rate)
        if t.shape[0] != data.shape[0]:
            raise NWBInputError(
                f"{path}: behaviour series '{name}' has {t.shape[0]} timestamps for "
                f"{data.shape[0]} samples; timestamps must match the data length"
            )
        if not np.all(np.isfinite(t)):
            raise NWBInputError(
                f"{path}: behaviour series '{name}' has NaN or infinite timestamps; "
                "timestamps must be finite seconds"
            )
        if t.size > 1 and np.any(np.diff(t) < 0):
            raise NWBInputError(
                f"{path}: behaviour series '{name}' has decreasing timestamps; "
                "timestamps must be sorted in time"
            )
        if name in seen:
            continue
        seen.add(name)
        out.append(BehaviorSeries(name=name, timestamps_s=t, values=data.astype(np.float64)))
    return out


def resample_behavior(series: BehaviorSeries, t_start_ms: int, num_bins: int,
                      bin_ms: int) -> tuple[list[str], np.ndarray]:
    """Linear interpolation of a series at the bin centres; NaN outside its recorded range.

    Returns:
        names (one per dimension) and a (num_dims, num_bins) float32 array.
    """
    centres = (t_start_ms + bin_ms * (np.arange(num_bins) + 0.5)) / 1000.0
    values = series.values if series.values.ndim == 2 else series.values[:, None]
    t = series.timestamps_s
    outside = (centres < t[0]) | (centres > t[-1])
    rows = []
    for d in range(values.shape[1]):
        v = values[:, d]
        ok = np.isfinite(v)
        if ok.sum() == 0:
            row = np.full(num_bins, np.nan)
        else:
            row = np.interp(centres, t[ok], v[ok])
            row[outside] = np.nan
        rows.append(row)
    names = [series.name] if series.values.ndim == 1 else [
        f"{series.name}_{d}" for d in range(values.shape[1])]
    return names, np.asarray(rows, dtype=np.float32).reshape(len(names), num_bins)
