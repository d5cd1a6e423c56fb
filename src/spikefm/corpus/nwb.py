"""Reading one NWB file into a :class:`SessionRecord` (units, regions, subject, trials, behaviour).

What is read, and from where:

- spikes: ``units.spike_times`` (the flat ragged array and its index, read in one go, no per-unit
  Python loop). Spike times must be finite and >= 0 (seconds from the session reference time).
  Times repeated within a unit are counted as stored, with a note (a sorter's duplicates?).
  ``units.obs_intervals`` is read: bins outside a unit's observation intervals hold 0 counts in
  the corpus (it has no "unobserved" value), and the build says how many there are.
- each unit's brain region, unit by unit: the first units column among ``brain_region``,
  ``location``, ``region``, ``brain_area`` that names one; otherwise the ``location`` of the
  unit's first electrode (``units.electrodes`` -> ``electrodes.location``); otherwise its
  electrode group's location; otherwise ``"unknown"`` (empty and ``"unknown"`` values fall
  through to the next source).
- subject and species: ``nwbfile.subject`` (``subject_id``, ``species``); the subject id falls back
  to the name of the folder holding the file, as the Neural Pile does.
- session id: the file name without ``.nwb`` (the Neural Pile's convention), unless given.
- trial tables: every table under ``intervals/`` (``trials`` included), numeric and string columns
  (ragged columns are left out, with a note; rows without a finite ``start_time`` too).
- behaviour: ``TimeSeries`` found in processing modules named ``behavior``/``behaviour`` (any case,
  including those nested in BehavioralTimeSeries, Position, PupilTracking... containers) and
  behaviour containers in ``acquisition``. Raw voltage, images and event-code series are not
  behaviour and are ignored. 2-D series become ``name_0``, ``name_1``... Values are in the series'
  unit: ``data * conversion + offset`` (times ``channel_conversion`` per column when given). A
  second series of an existing name is kept as ``<container>_<name>``, with a note.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from ..fileio import first_line
from .session import BehaviorSeries, SessionRecord


def is_nwb_name(path: Path) -> bool:
    """``path`` is named like an NWB file: ``.nwb`` in any case (file systems that ignore case
    show ``.NWB``), not hidden (other tools' temporaries are)."""
    return path.suffix.lower() == ".nwb" and not path.name.startswith(".")


def nwb_in_folder(folder: Path) -> Path | None:
    """The first NWB file (:func:`is_nwb_name`) in ``folder`` or its sub-folders (as synth and
    DANDI lay recordings out), or None: for telling a user who gave a folder of recordings where
    a corpus or a run goes what it is."""
    if not folder.is_dir():
        return None
    return next((p for pattern in ("*", "*/*") for p in sorted(folder.glob(pattern)) if is_nwb_name(p)), None)


def nwb_paths(folder: Path) -> list[Path]:
    """Everything under ``folder`` (recursively, sorted) named like an NWB file
    (:func:`is_nwb_name`): files, and links whatever they point at (a caller names dangling ones).
    Hidden folders are not searched: a DataLad / git-annex copy of a dandiset keeps each file's
    content under ``.git/annex/objects/`` with a key for a name, behind the link that names it."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if is_nwb_name(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


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
            table, non-finite or negative spike times); a behaviour series that cannot be binned
            is left out with a note instead.
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
            f"{path}: cannot be read as NWB ({type(exc).__name__}: {first_line(exc, 200)}); "
            "the file may be truncated or not an NWB file"
        ) from None
    try:
        return _read_open_file(nwb, path, session_id, subject_id, source_dataset, provenance,
                               license, compute_sha256)
    except NWBInputError:
        raise
    except Exception as exc:
        raise NWBInputError(
            f"{path}: failed while reading ({type(exc).__name__}: {first_line(exc, 200)})"
        ) from None
    finally:
        io.close()


def _other_units_tables(nwb) -> list[tuple[str, object]]:
    """(path, table) of the Units tables with spike times in processing modules (a second
    sorting, or the only one when ``nwbfile.units`` is empty)."""
    from pynwb.misc import Units

    found = []
    for mod_name, mod in sorted((getattr(nwb, "processing", None) or {}).items()):
        for name, obj in sorted(mod.data_interfaces.items()):
            if isinstance(obj, Units) and "spike_times" in obj.colnames:
                found.append((f"processing/{mod_name}/{name}", obj))
    return found


def _read_open_file(nwb, path, session_id, subject_id, source_dataset, provenance, license,
                    compute_sha256) -> SessionRecord:
    units = nwb.units
    notes: list[str] = []
    others = _other_units_tables(nwb)
    if units is None or "spike_times" not in units.colnames:
        if len(others) != 1:
            found = (f"; found Units tables in {', '.join(p for p, _ in others)}, and spikefm reads one sorting: "
                     "write the one to use as nwbfile.units" if others else "")
            raise NWBInputError(
                f"{path}: no units table with spike_times; spikefm needs spike-sorted units "
                f"(nwbfile.units) to build a corpus{found}"
            )
        (where, units), others = others[0], []
        notes.append(f"units read from {where} ({len(units)} units): the file's nwbfile.units is empty")
    for where, table in others:  # a second sorting beside nwbfile.units: not mixed in, but said
        notes.append(f"Units table {where} ({len(table)} units) not read: spikefm reads nwbfile.units, one sorting")
    spike_times, unit_index, num_units = _read_spikes(units, path, notes)
    unit_ids = [str(x) for x in np.asarray(units.id.data[:])]
    regions = _unit_regions(units, num_units)
    obs_intervals = _obs_intervals(units, num_units)

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
        trials=_read_intervals(nwb, notes),
        behavior=behavior,
        provenance=prov,
        license=license,
        notes=notes,
        obs_intervals=obs_intervals,
    )


def _obs_intervals(units, num_units: int) -> list[np.ndarray] | None:
    """Each unit's (k, 2) observation intervals in seconds, or None without the column."""
    if "obs_intervals" not in units.colnames:
        return None
    out = []
    for i in range(num_units):
        iv = np.asarray(units["obs_intervals"][i], dtype=np.float64).reshape(-1, 2)
        out.append(iv[np.all(np.isfinite(iv), axis=1)])
    return out


def _read_spikes(units, path, notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
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
    if notes is not None and times.size > 1:
        same_unit = np.diff(unit_index) == 0  # unit_index is sorted: one run per unit
        step = np.diff(times)
        if (step[same_unit] < 0).any():  # some unit's times are not sorted: sort within units
            order = np.lexsort((times, unit_index))
            step = np.diff(times[order])
        same = (step == 0) & same_unit
        if same.any():
            units_hit = np.unique(unit_index[1:][same]).size
            notes.append(f"{int(same.sum())} spike time(s) repeat an earlier time of the same unit "
                         f"({units_hit} unit(s)), a spike sorter's duplicates?; each is counted as stored")
    return times, unit_index, num_units


def _named(value) -> str:
    text = _text(value).strip()
    return "" if text.lower() in ("", "unknown", "none", "nan", "n/a") else text


def _unit_regions(units, num_units: int) -> list[str]:
    """Each unit's region from the first source that names one (see the module docstring)."""
    sources: list[list[str]] = []
    for col in UNIT_REGION_COLUMNS:
        if col in units.colnames:
            values = [_named(v) for v in units[col].data[:]]
            if len(values) == num_units:
                sources.append(values)
    if "electrodes" in units.colnames:
        try:
            # The column object itself: units["electrodes"] is its index when the column is ragged.
            region = units.electrodes
            table = region.table
            rows = np.asarray(region.data[:], dtype=np.int64)
            idx = getattr(units, "electrodes_index", None)
            if idx is not None:  # ragged: several electrodes per unit, take the first
                ends = np.asarray(idx.data[:], dtype=np.int64)
                starts = np.concatenate([[0], ends[:-1]])
                first = np.where(ends > starts, rows[np.minimum(starts, len(rows) - 1)], -1)
            else:
                first = rows
            # the electrode's location, then its group's
            for locs in ([_named(v) for v in table["location"].data[:]] if "location" in table.colnames else None,
                         [_named(getattr(g, "location", "")) for g in table["group"].data[:]]
                         if "group" in table.colnames else None):
                if locs is not None:
                    sources.append([locs[i] if 0 <= i < len(locs) else "" for i in first])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            warnings.warn(f"could not read unit regions from units.electrodes ({exc}); "
                          "trying electrode groups")
    if "electrode_group" in units.colnames:
        sources.append([_named(getattr(g, "location", "")) for g in units["electrode_group"].data[:]])
    return [next((src[i] for src in sources if i < len(src) and src[i]), "unknown")
            for i in range(num_units)]


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


def _undeclared_datasets(table) -> list[str]:
    """Datasets in an HDF5-backed table's group that its ``colnames`` leave out (a writer's slip:
    pynwb shows no such column), other than ``id`` and the ``*_index`` / ``*_elements`` helpers of
    declared columns; [] for a table not read from HDF5."""
    group = getattr(getattr(getattr(table, "id", None), "data", None), "parent", None)
    if group is None or not hasattr(group, "items"):
        return []
    try:
        import h5py

        declared = set(table.colnames) | {"id"}
        return sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset) and k not in declared
                      and not k.endswith(("_index", "_elements")))
    except Exception:  # an odd backend: nothing to say, rather than a failed build
        return []


def _read_intervals(nwb, notes: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    tables = {}
    notes = [] if notes is None else notes
    for name, table in (nwb.intervals or {}).items():
        cols, left = {}, []
        for c in table.colnames:
            if c.endswith("_index"):
                continue
            values = _column_values(table[c])
            if values is not None:
                cols[c] = values
            else:
                left.append(c)
        if "start_time" not in cols:
            continue
        tables[name] = cols
        if left:
            notes.append(f"interval table '{name}': column(s) {', '.join(left)} left out (ragged or "
                         "not numbers / text: the corpus keeps one value per trial)")
        undeclared = _undeclared_datasets(table)
        if undeclared:
            notes.append(f"interval table '{name}': dataset(s) {', '.join(undeclared)} left out: the file does "
                         "not declare them as columns (they are missing from the table's colnames attribute, so "
                         "NWB readers such as pynwb do not show them); fix the file's colnames to use them")
        no_start = int(np.count_nonzero(~np.isfinite(np.asarray(cols["start_time"], dtype=np.float64))))
        if no_start:
            notes.append(f"interval table '{name}': {no_start} row(s) without a finite start_time are "
                         "not in any corpus row")
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
        # timestamps that do not fit leave the series out, not the session (its spikes are good)
        why = (f"it has {t.shape[0]} timestamps for {data.shape[0]} samples" if t.shape[0] != data.shape[0]
               else "it has NaN or infinite timestamps" if not np.all(np.isfinite(t))
               else f"its timestamps decrease at {int(np.flatnonzero(np.diff(t) < 0)[0]) + 1} of {t.size} samples "
                    "(they must be sorted in time)" if t.size > 1 and np.any(np.diff(t) < 0) else None)
        if why is not None:
            notes.append(f"behaviour series '{name}' left out: {why}")
            continue
        if name in seen:  # e.g. Position/position and BehavioralTimeSeries/position
            parent = getattr(getattr(ts, "parent", None), "name", "") or "series"
            new, k = f"{parent}_{name}", 2
            while new in seen:
                new, k = f"{parent}_{name}_{k}", k + 1
            notes.append(f"behaviour series '{name}' of {parent} kept as '{new}' (another series "
                         f"is called '{name}')")
            name = new
        seen.add(name)
        values = data.astype(np.float64)
        channel = getattr(ts, "channel_conversion", None)
        if channel is not None and values.ndim == 2:
            channel = np.asarray(channel[:], dtype=np.float64).reshape(-1)
            if channel.size == values.shape[1]:
                values = values * channel[None, :]
        values = values * float(getattr(ts, "conversion", 1.0) or 1.0) + float(getattr(ts, "offset", 0.0) or 0.0)
        out.append(BehaviorSeries(name=name, timestamps_s=t, values=values))
    return out


#: A stretch between two finite samples longer than this many times the series' median sampling
#: interval is a gap (no samples, or NaN samples): bins whose centre falls in it are NaN.
GAP_FACTOR = 5.0


def resample_behavior(series: BehaviorSeries, t_start_ms: int, num_bins: int,
                      bin_ms: int) -> tuple[list[str], np.ndarray]:
    """Linear interpolation of a series at the bin centres, between its finite samples; NaN
    outside the span of its finite samples and inside gaps (two consecutive finite samples more
    than :data:`GAP_FACTOR` x the median interval apart: missing or NaN samples are not filled in).

    Returns:
        names (one per dimension) and a (num_dims, num_bins) float32 array.
    """
    centres = (t_start_ms + bin_ms * (np.arange(num_bins) + 0.5)) / 1000.0
    values = series.values if series.values.ndim == 2 else series.values[:, None]
    t = series.timestamps_s
    rows = []
    for d in range(values.shape[1]):
        v = values[:, d]
        ok = np.isfinite(v)
        if ok.sum() == 0:
            rows.append(np.full(num_bins, np.nan))
            continue
        tf, vf = t[ok], v[ok]
        row = np.interp(centres, tf, vf)
        hidden = (centres < tf[0]) | (centres > tf[-1])
        steps = np.diff(tf)
        if (steps > 0).sum() >= 2:  # repeated timestamps (steps of 0) do not set the interval
            limit = GAP_FACTOR * float(np.median(steps[steps > 0]))
            left = np.clip(np.searchsorted(tf, centres, side="right") - 1, 0, steps.size - 1)
            hidden |= (steps[left] > limit) & (centres > tf[left]) & (centres < tf[left + 1])
        row[hidden] = np.nan
        rows.append(row)
    names = [series.name] if series.values.ndim == 1 else [
        f"{series.name}_{d}" for d in range(values.shape[1])]
    return names, np.asarray(rows, dtype=np.float32).reshape(len(names), num_bins)
