"""``spikefm corpus build``: NWB files / folders / DANDI dandisets -> a Neural-Pile-compatible corpus.

The build runs in two stages so that it is resumable and idempotent:

1. **Stage** each input file into ``CORPUS_DIR/.staging/<key>.arrow`` (its rows, Arrow IPC) and
   ``<key>.json`` (its session metadata, written last: its presence marks the session finished).
   The key hashes the file's resolved path, size and mtime and the build parameters, so a re-run
   skips finished sessions and an interrupted one (even ``kill -9``) resumes where it stopped.
   Files are staged in parallel with ``workers`` processes, which die with the build.
2. **Finalize**: assign splits (seeded; :func:`assign_splits`: a corpus rebuilt with the same split
   settings keeps its earlier test sessions in test), shuffle rows within each split, and write zstd Parquet
   shards ``data/{split}-{i:05d}-of-{n:05d}.parquet`` and ``manifest.json`` as a new version of
   the folder, switched in by one rename (:mod:`spikefm.corpus.store`).

The corpus holds exactly the sessions of the inputs given to the latest build, and so does
``.staging/``: once a build's version is in place, the staged sessions of other inputs or settings
(earlier builds, files changed since) are removed, so a folder holds at most one staged copy of each
session (not after a build that could not find or resolve one of its inputs: their staged
sessions are kept for when they are back).

The output folder must be missing, empty, or a spikefm corpus. Re-running the same command (same
INPUT arguments and settings) resumes or refreshes that corpus; building other inputs or with
other settings into an existing corpus replaces it and needs ``overwrite`` (``--overwrite``).
Inputs may not lie in the folder's ``data/``, ``.versions/`` or ``.staging/``. A build holds the
folder's lock (:func:`spikefm.fileio.folder_lock`): a second build into it fails at once.

Per-file problems never stop the build: a file that cannot be read, has no spikes, has spike
times past the recording's end under ``spikes_past_end="error"``, or runs out of memory (even a
worker process killed for it) is skipped with one line and listed under ``"skipped"``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pyarrow as pa

from ..argtypes import is_int
from ..fileio import first_line, write_atomic, write_json_atomic
from .binning import bin_spikes, spike_span_ms
from .manifest import (BuildSettings, Manifest, SessionEntry, SkippedInput, SplitInfo, distinct_session_ids,
                       new_manifest)
from .nwb import is_nwb_name, nwb_paths, read_nwb, resample_behavior, sha256_file
from .schema import ROW_SCHEMA, SCHEMA_VERSION, SPLITS
from .session import SessionRecord, recording_end_s
from .store import STAGING, CorpusDir, check_inputs_outside, inspect_out_dir, open_corpus_dir

#: What ``spikes_past_end`` may be: leave such spikes out (and count them), or skip the file.
SPIKES_PAST_END = ("drop", "error")


@dataclass(frozen=True)
class BuildConfig:
    """Parameters of ``spikefm corpus build`` (see the CLI help for each)."""

    bin_ms: int = 20
    max_row_tokens: int = 10_000_000
    test_fraction: float = 0.01
    split: Literal["session", "row"] = "session"
    seed: int = 0
    workers: int = 1
    strict: bool = False
    source_dataset: str | None = None
    shard_max_tokens: int = 250_000_000
    cache_dir: str | None = None
    #: Spike times after the recording's end (:func:`spikefm.corpus.session.recording_end_s`):
    #: "drop" leaves them out and counts them in the manifest; "error" skips the file.
    spikes_past_end: Literal["drop", "error"] = "drop"
    #: Replace an existing corpus built from other inputs or settings.
    overwrite: bool = False
    #: Where files are staged: "local" (``workers`` processes here) or "ray" (one Ray task per
    #: file on the cluster at ``ray_address``, or on a local Ray instance when it is None; every
    #: node must see the inputs and the corpus folder at the same paths).
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None

    def __post_init__(self):
        def whole(name: str, lo: int) -> None:  # an int (numpy's too), not a bool or a float
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                why = " (it seeds the train/test split)" if name == "seed" else ""
                raise ValueError(f"{name} must be an int >= {lo}{why}, got {v!r}")
            object.__setattr__(self, name, int(v))

        for name, lo in (("bin_ms", 1), ("max_row_tokens", 1), ("seed", 0), ("workers", 1),
                         ("shard_max_tokens", 1)):
            whole(name, lo)
        if not self.max_row_tokens < 2**31:
            raise ValueError(f"max_row_tokens must be in [1, 2**31), got {self.max_row_tokens}")
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float, np.floating, np.integer)) \
                or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be a number in [0, 1), got {self.test_fraction!r}")
        object.__setattr__(self, "test_fraction", float(self.test_fraction))  # the manifest is JSON
        for name in ("source_dataset", "ray_address"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{name} must be a string or None, got {v!r}")
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)):
                raise ValueError(f"cache_dir must be a folder path or None, got {self.cache_dir!r}")
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        if self.split not in ("session", "row"):
            raise ValueError(f"split must be 'session' or 'row', got {self.split!r}")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise ValueError("ray_address (--address) applies to executor 'ray' only; add --executor ray")
        if self.ray_address and self.workers > 1:
            raise ValueError(f"workers (--workers {self.workers}) sizes a local Ray instance or process "
                             "pool; a Ray cluster (--address) uses its own CPUs: drop one of the two")
        if self.spikes_past_end not in SPIKES_PAST_END:
            raise ValueError(f"spikes_past_end must be one of {', '.join(SPIKES_PAST_END)}, got "
                             f"{self.spikes_past_end!r}")


@dataclass
class InputFile:
    """One NWB file to stage, with what the build knows about where it came from."""

    path: Path
    source_dataset: str
    provenance: dict = dataclasses.field(default_factory=dict)
    license: str = ""


@dataclass
class BuildReport:
    out_dir: Path
    manifest: dict
    skipped: list[dict]
    num_staged_now: int
    num_reused: int

    @property
    def ok(self) -> bool:
        return not self.skipped


class BuildError(ValueError):
    """The build cannot proceed (bad inputs under --strict, nothing to build, an output folder
    that is not a corpus or holds another one, a file operation that failed)."""


# ---------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(inputs: list[str], cfg: BuildConfig, *,
                   progress: bool = True) -> tuple[list[InputFile], list[dict]]:
    """Expand INPUT arguments into files (downloading DANDI assets, with a byte progress bar
    unless ``progress`` is False). Returns (files, problems) where problems are
    ``{"input": str, "error": str}`` for inputs that do not exist or hold no NWB file."""
    files: list[InputFile] = []
    depth: list[int] = []  # of the folder that names each file's source (the innermost given wins)
    problems: list[dict] = []
    for spec in inputs:
        if spec.startswith("dandi:"):
            from .dandi import resolve_dandi

            try:
                got = resolve_dandi(spec, cache_dir=cfg.cache_dir, progress=progress)
                files.extend(got)
                depth.extend([-1] * len(got))
            except (ValueError, OSError) as exc:
                problems.append({"input": spec, "error": str(exc)})
            continue
        p = Path(spec)
        if p.is_dir() and is_nwb_name(p):
            problems.append({"input": spec, "error": _zarr_error(p)})
        elif p.is_dir():
            # Hidden files are other tools' temporaries (e.g. a killed writer's), not recordings;
            # the suffix in any case (.NWB), as file systems that ignore case show it.
            named = nwb_paths(p)
            found = [x for x in named if x.is_file()]
            dangling = [x for x in named if x.is_symlink() and not x.exists()]
            for link in dangling:
                problems.append({"input": str(link), "error": f"{link}: a link to {os.readlink(link)}, which does "
                                 "not exist; fix or remove the link"})
            zarr = [x for x in named if x.is_dir()]
            problems += [{"input": str(x), "error": _zarr_error(x)} for x in zarr]
            if not found and not dangling and not zarr:
                problems.append({"input": spec, "error": f"{spec}: folder holds no *.nwb file"})
            files.extend(InputFile(path=f, source_dataset=p.resolve().name) for f in found)
            depth.extend([len(p.resolve().parts)] * len(found))
        elif p.exists() or spec.endswith(".nwb"):
            files.append(InputFile(path=p, source_dataset=p.resolve().parent.name))
            depth.append(len(p.resolve().parent.parts))
        else:
            problems.append({"input": spec, "error": f"{spec}: no such file or folder; give an "
                             ".nwb file, a folder of them, or dandi:DANDISET_ID[@VERSION][/GLOB]"})
    if cfg.source_dataset:
        for f in files:
            f.source_dataset = cfg.source_dataset
    # The same file given twice (e.g. a folder and a file in it, or a folder inside another) is built
    # once, its source named by the innermost input that holds it, whatever the order of the inputs
    chosen: dict[str, int] = {}  # in the order first given (a dict keeps its keys' first insertion)
    for i, f in enumerate(files):
        key = str(f.path.resolve())
        if key not in chosen or depth[i] > depth[chosen[key]]:
            chosen[key] = i
    return [files[i] for i in chosen.values()], problems


def _zarr_error(path: Path) -> str:
    return (f"{path}: a folder named like an NWB file (Zarr-backed NWB?); spikefm reads HDF5 NWB files: "
            "export it to one (pynwb's NWBHDF5IO(...).export(src_io=NWBZarrIO(path, mode='r')), NWBZarrIO from "
            "hdmf-zarr) and build from that file")


def _staging_key(item: InputFile, cfg: BuildConfig) -> str:
    st = item.path.stat()
    ident = json.dumps({
        "path": str(item.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "bin_ms": cfg.bin_ms, "max_row_tokens": cfg.max_row_tokens, "schema": SCHEMA_VERSION,
        "source": item.source_dataset, "provenance": item.provenance, "license": item.license,
        "spikes_past_end": cfg.spikes_past_end,
    }, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Stage 1: one session -> rows


def chunk_bounds(num_units: int, num_bins: int, max_row_tokens: int) -> list[tuple[int, int]]:
    """Split ``num_bins`` into the fewest equal chunks with ``num_units * len <= max_row_tokens``.

    Chunk lengths differ by at most one bin. Raises ValueError when a single bin is already larger
    than ``max_row_tokens``.
    """
    if num_bins == 0:
        return []
    if num_units > max_row_tokens:
        raise ValueError(
            f"one time bin of {num_units} units exceeds max_row_tokens={max_row_tokens}; "
            "raise --max-row-tokens"
        )
    n = max(1, math.ceil(num_units * num_bins / max_row_tokens))
    while num_units * math.ceil(num_bins / n) > max_row_tokens:
        n += 1
    edges = np.linspace(0, num_bins, n + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _json_value(v):
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def _overlapping(cols: dict[str, np.ndarray], t0_s: float, t1_s: float) -> np.ndarray:
    """Which rows of a trial table overlap [t0_s, t1_s) (a row without a finite stop_time ends
    at its start; a row without a finite start_time overlaps nothing)."""
    start = np.asarray(cols["start_time"], dtype=np.float64)
    stop = np.asarray(cols.get("stop_time", start), dtype=np.float64)
    return (start < t1_s) & (np.where(np.isfinite(stop), stop, start) >= t0_s)


def _trials_json(trials: dict[str, dict[str, np.ndarray]], t0_s: float, t1_s: float) -> str:
    """Trial-table rows overlapping [t0_s, t1_s), as JSON {table: {column: [...]}}."""
    out = {}
    for name, cols in trials.items():
        keep = _overlapping(cols, t0_s, t1_s)
        if not keep.any():
            continue
        out[name] = {c: [_json_value(x) for x in np.asarray(v)[keep].tolist()]
                     for c, v in cols.items()}
    return json.dumps(out, separators=(",", ":"))


def _list_of_lists(matrices: list[np.ndarray], value_type: pa.DataType) -> pa.ChunkedArray:
    """Rows of 2-D arrays -> list<list<value>>, one chunk per row, built from flat buffers (no
    per-element Python). One chunk per row keeps every offset within the row (< 2**31 by
    ``max_row_tokens``), whatever the length of the session."""
    chunks = []
    for m in matrices:
        rows, cols = m.shape
        inner = pa.ListArray.from_arrays(
            pa.array(cols * np.arange(rows + 1, dtype=np.int32)),
            pa.array(np.ascontiguousarray(m).reshape(-1), type=value_type))
        chunks.append(pa.ListArray.from_arrays(pa.array(np.array([0, rows], dtype=np.int32)), inner))
    return pa.chunked_array(chunks, type=pa.list_(pa.list_(value_type)))


def _note_what_the_grid_misses(rec: SessionRecord, t_start_ms: int, t_stop_ms: int, bin_ms: int) -> None:
    """Notes (the build's warnings) for what the bin grid cannot show as recorded: unit-bins
    outside their unit's ``obs_intervals`` (stored as recorded bins) and trials that start outside
    the binned span (first to last spike; they are in no row)."""
    num_bins = (t_stop_ms - t_start_ms) // bin_ms
    if rec.obs_intervals is not None:
        centres = (t_start_ms + bin_ms * (np.arange(num_bins) + 0.5)) / 1000.0
        unobserved = 0
        for iv in rec.obs_intervals:
            seen = np.zeros(num_bins, dtype=bool)
            for a, b in iv:
                seen |= (centres >= a) & (centres < b)
            unobserved += int(num_bins - np.count_nonzero(seen)) if len(iv) else 0
        if unobserved:
            total = num_bins * rec.num_units
            rec.notes.append(f"{unobserved:,} of {total:,} unit-bins ({unobserved / total:.1%}) lie outside "
                             "their unit's obs_intervals (not recorded) and are stored as recorded bins (0 "
                             "counts, or the spikes the file has there): the corpus has no 'unobserved' "
                             "value; select units or times observed throughout")
    t0, t1 = t_start_ms / 1000.0, t_stop_ms / 1000.0
    for name, cols in rec.trials.items():
        start = np.asarray(cols["start_time"], dtype=np.float64)
        out = np.isfinite(start) & ~_overlapping(cols, t0, t1)
        if out.any():
            rec.notes.append(f"interval table '{name}': {int(out.sum())} of {start.size} row(s) lie outside "
                             f"the binned span {t0:.6g}-{t1:.6g} s (first to last spike) and are in no row")


def _note_a_silence_before_spikes(rec: SessionRecord, counts: np.ndarray, t_start_ms: int, bin_ms: int) -> None:
    """A note when all units fall silent for longer than ``END_SILENCE_MIN_S`` and than all the
    recording before, and spikes follow: kept (real recordings pause), but the usual cause is stray
    spike times, or one unit's times in samples or ms, which stretch the session to hours of empty
    bins (the end bound of :func:`~spikefm.corpus.session.recording_end_s` only looks at the last
    1 % of the spikes, so it drops a few strays, not many)."""
    from .session import long_silences

    active = np.flatnonzero(counts.any(axis=0))
    if active.size < 2:
        return
    bin_s = bin_ms / 1000.0
    starts_s = active * bin_s  # the recording before a bin's silence runs to its end: from a bin earlier
    found = long_silences(starts_s, starts_s[0] - bin_s)
    if not found.size:
        return
    i = int(found[0])
    gap_s = float(starts_s[i + 1] - starts_s[i])
    at_s = (t_start_ms + (int(active[i]) + 1) * bin_ms) / 1000.0
    after = int(counts[:, active[i + 1]:].sum(dtype=np.int64))
    total = int(counts.sum(dtype=np.int64))
    span_s = counts.shape[1] * bin_ms / 1000.0
    rec.notes.append(f"all units fall silent for {gap_s:,.0f} s from {at_s:.6g} s, longer than all the recording "
                     f"before it, and {after:,} of {total:,} spikes ({after / total:.1%}) come after (the session "
                     f"spans {span_s:,.0f} s): stray spike times, or a unit's times in samples or ms? They are kept; "
                     "check the file's units table (spikefm corpus info shows each session's length)")


def session_rows(rec: SessionRecord, cfg: BuildConfig) -> tuple[pa.Table, dict]:
    """Bin one session and cut it into rows. Returns (table with ROW_SCHEMA, session metadata).

    Raises:
        ValueError: the units have no spikes at all; spike times past the recording's end under
            ``cfg.spikes_past_end == "error"``; a session too large to bin.
    """
    bin_ms = cfg.bin_ms
    t, unit_index = rec.spike_times_s, rec.unit_index
    if t.size == 0:
        raise ValueError(f"its {rec.num_units} units have no spikes at all; a session needs at "
                         "least one spike to be binned (skipped)")
    end_s, end_from = recording_end_s(rec)
    past_end = t > end_s
    num_past_end = int(np.count_nonzero(past_end))
    if num_past_end:
        if cfg.spikes_past_end == "error":
            raise ValueError(
                f"{num_past_end} spike time(s) lie after the recording's end ({end_s:.6g} s, from "
                f"the {end_from}), the latest at {t.max():.6g} s; fix the file, or pass "
                "--spikes-past-end drop to leave them out")
        t, unit_index = t[~past_end], unit_index[~past_end]
    t_start_ms, t_stop_ms = spike_span_ms(float(t.min()), float(t.max()), bin_ms)
    _check_fits_in_memory(rec, (t_stop_ms - t_start_ms) // bin_ms, bin_ms)
    counts, num_clipped = bin_spikes(t, unit_index, rec.num_units, t_start_ms / 1000.0,
                                     t_stop_ms / 1000.0, bin_ms, return_num_clipped=True)
    num_units, num_bins = counts.shape
    _note_what_the_grid_misses(rec, t_start_ms, t_stop_ms, bin_ms)
    _note_a_silence_before_spikes(rec, counts, t_start_ms, bin_ms)
    beh_names, beh_rows = [], []
    for series in rec.behavior:
        names, values = resample_behavior(series, t_start_ms, num_bins, bin_ms)
        beh_names += names
        beh_rows.append(values)
        if values.size and np.isnan(values).all() and np.isfinite(series.values).any():
            ts = series.timestamps_s
            rec.notes.append(f"behaviour series '{series.name}' ({ts[0]:.6g}-{ts[-1]:.6g} s) is NaN in every bin of the "
                             f"binned span {t_start_ms / 1000:.6g}-{t_stop_ms / 1000:.6g} s (first to last spike): it "
                             "lies outside it or between bin centres; another clock, or times in ms or samples?")
    behavior = (np.concatenate(beh_rows, axis=0) if beh_rows
                else np.zeros((0, num_bins), dtype=np.float32))

    bounds = chunk_bounds(num_units, num_bins, cfg.max_row_tokens)
    chunk_counts, chunk_beh, starts, trials_js = [], [], [], []
    for a, b in bounds:
        chunk_counts.append(counts[:, a:b])
        chunk_beh.append(behavior[:, a:b])
        s_ms = t_start_ms + a * bin_ms
        starts.append(s_ms)
        trials_js.append(_trials_json(rec.trials, s_ms / 1000.0, (t_start_ms + b * bin_ms) / 1000.0))
    n = len(bounds)
    table = pa.Table.from_arrays([
        _list_of_lists(chunk_counts, pa.uint8()),
        pa.array([rec.subject_id] * n, pa.string()),
        pa.array([rec.session_id] * n, pa.string()),
        pa.array([f"segment_{i}" for i in range(n)], pa.string()),
        pa.array([rec.source_dataset] * n, pa.string()),
        pa.array([bin_ms] * n, pa.int32()),
        pa.array(starts, pa.int64()),
        pa.array([rec.unit_ids] * n, pa.list_(pa.string())),
        pa.array([rec.unit_regions] * n, pa.list_(pa.string())),
        pa.array([rec.species] * n, pa.string()),
        pa.array([beh_names] * n, pa.list_(pa.string())),
        _list_of_lists(chunk_beh, pa.float32()),
        pa.array(trials_js, pa.string()),
    ], schema=ROW_SCHEMA)
    regions, region_counts = np.unique(np.asarray(rec.unit_regions, dtype=object).astype(str),
                                       return_counts=True)
    meta = {
        "session_id": rec.session_id,
        "subject_id": rec.subject_id,
        "source_dataset": rec.source_dataset,
        "species": rec.species,
        "is_human": rec.is_human,
        "num_units": num_units,
        "num_bins": num_bins,
        "bin_ms": bin_ms,
        "t_start_ms": t_start_ms,
        "duration_s": num_bins * bin_ms / 1000.0,
        "num_rows": n,
        "num_tokens": int(num_units * num_bins),
        "num_spikes": int(t.size),
        "clipped_bins": int(num_clipped),
        **({"clipped_spikes": int(t.size) - int(counts.sum(dtype=np.int64))} if num_clipped else {}),
        **({"spikes_past_end": num_past_end, "recording_end_s": end_s} if num_past_end else {}),
        "regions": {str(r): int(c) for r, c in zip(regions, region_counts)},
        "behavior_names": beh_names,
        "trial_tables": {k: int(len(v["start_time"])) for k, v in rec.trials.items()},
        "provenance": rec.provenance,
        "license": rec.license,
    }
    return table, meta


def available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_in_memory(rec: SessionRecord, num_bins: int, bin_ms: int) -> None:
    """Refuse a session whose dense arrays cannot fit: the system would kill the build (the OOM
    killer) rather than raise MemoryError. Binning holds the counts about twice (the matrix and
    its rows), behaviour as float64 and float32."""
    dims = sum(1 if b.values.ndim == 1 else b.values.shape[1] for b in rec.behavior)
    need = 2 * rec.num_units * num_bins + 12 * dims * num_bins
    available = available_memory_bytes()
    if available is not None and need > available:
        raise ValueError(
            f"binning it needs about {_size(need)} ({rec.num_units} units x {num_bins:,} bins "
            f"of {bin_ms} ms), more than the {_size(available)} of memory available; check its "
            "spike times (a stray time far past the others?) or build it on a machine with more "
            "memory")


def _size(num_bytes: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:,.1f} {unit}"
    return f"{num_bytes / 1e3:,.1f} kB"


def _stage_one(item: InputFile, key: str, staging: str, cfg: BuildConfig) -> dict:
    """Worker: read, bin and stage one file. Returns its session metadata, or
    ``{"error": one line naming the file, "input": path}`` for any failure of this file."""
    staging = Path(staging)
    try:
        rec = read_nwb(item.path, source_dataset=item.source_dataset,
                       provenance=item.provenance, license=item.license)
        table, meta = session_rows(rec, cfg)
        if rec.notes:  # things of the file left out, shown as warnings by the build
            meta["read_notes"] = list(rec.notes)
        del rec

        def write_arrow(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, ROW_SCHEMA) as writer:
                writer.write_table(table, max_chunksize=1)

        write_atomic(staging / f"{key}.arrow", write_arrow)
        meta["staging_key"] = key
        arrow = staging / f"{key}.arrow"
        st = arrow.stat()  # size and mtime: a reuse hashes the file again only when these differ
        meta["staged_sha256"] = {"sha256": sha256_file(arrow), "size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns}
        write_json_atomic(staging / f"{key}.json", meta)  # last: marks the session finished
        return meta
    except MemoryError as exc:
        msg = (f"out of memory while reading or binning it ({type(exc).__name__}: "
               f"{first_line(exc)}); build it on a machine with more memory, or check its spike "
               "times (see --spikes-past-end)")
    except (ValueError, OSError) as exc:  # NWBInputError is a ValueError
        if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
            raise  # a full disk or a read-only folder is the machine's problem, not this input's
        msg = first_line(exc)
    except Exception as exc:  # a file that trips up a library: skip it, say what happened
        msg = f"failed while building it ({type(exc).__name__}: {first_line(exc)})"
    if str(item.path) not in msg:
        msg = f"{item.path}: {msg}"
    return {"error": msg, "input": str(item.path)}


#: OS errors of the machine (no space, quota, read-only file system): they stop the build, exit 1,
#: instead of skipping each input as if it were bad.
_MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


# ---------------------------------------------------------------------------------------------
# Stage 2: splits and shards


def assign_splits(metas: list[dict], cfg: BuildConfig, *, keep_test: Iterable[str] = ()
                  ) -> dict[tuple[str, int], str]:
    """Map (session_id, row index) -> split. Seeded; sessions are considered in sorted order.

    ``keep_test`` (``--split session``): sessions that stay in test whatever the draw (the test
    sessions of the corpus a build grows); further sessions are drawn, in the seeded order, until
    the test share is reached. Kept sessions that already reach it make the draw add none, so a
    corpus rebuilt from the same sessions keeps the same split."""
    metas = sorted(metas, key=lambda m: m["session_id"])
    rng = np.random.default_rng(cfg.seed)
    out: dict[tuple[str, int], str] = {}
    if cfg.split == "session":
        test = set()
        total = sum(m["num_tokens"] for m in metas)
        if cfg.test_fraction > 0 and len(metas) >= 2:
            target = cfg.test_fraction * total
            kept = set(keep_test)
            got = 0
            for m in metas:
                if m["session_id"] in kept and len(test) < len(metas) - 1:
                    test.add(m["session_id"])
                    got += m["num_tokens"]
            for i in rng.permutation(len(metas)):
                if got >= target or len(test) == len(metas) - 1:
                    break
                if metas[i]["session_id"] in test:
                    continue
                test.add(metas[i]["session_id"])
                got += metas[i]["num_tokens"]
        for m in metas:
            split = "test" if m["session_id"] in test else "train"
            out.update({(m["session_id"], r): split for r in range(m["num_rows"])})
    else:
        rows = [(m["session_id"], r) for m in metas for r in range(m["num_rows"])]
        n_test = 0
        if cfg.test_fraction > 0 and len(rows) >= 2:
            n_test = min(len(rows) - 1, max(1, round(cfg.test_fraction * len(rows))))
        test_idx = set(rng.choice(len(rows), size=n_test, replace=False).tolist()) if n_test else set()
        out = {row: ("test" if i in test_idx else "train") for i, row in enumerate(rows)}
    if cfg.test_fraction > 0 and metas and "test" not in out.values():
        # one session (--split session) or one row (--split row): everything stays in train
        rows_total = sum(m["num_rows"] for m in metas)
        how = ("give more sessions, or --split row with rows shorter than a session (a smaller "
               "--max-row-tokens)" if cfg.split == "session" else
               "cut the sessions into more rows with a smaller --max-row-tokens")
        print(f"spikefm: warning: --test-fraction {cfg.test_fraction:g} put nothing in the test split: "
              f"the {cfg.split} split needs at least 2 {cfg.split}s and the corpus has "
              f"{len(metas) if cfg.split == 'session' else rows_total}; {how}", file=sys.stderr)
    return out


def _earlier_sessions(existing: Manifest | None, metas: list[dict]) -> list[tuple[SessionEntry, bool] | None]:
    """For each of ``metas``, the session of the ``existing`` version that is the same recording,
    and whether it is by content: first the file whose sha256 it had (a file renamed or moved
    since, however the names now fall), then, for a file of new content, the one at the same
    path (a file rewritten in place), unless that session's content is another input's now (two
    files whose names were swapped are each matched by content). None: a new recording."""
    if existing is None:
        return [None] * len(metas)
    prov = [m.get("provenance") or {} for m in metas]
    by_digest = {(s.provenance or {}).get("sha256"): s for s in existing.sessions}
    by_digest.pop(None, None)
    out: list[tuple[SessionEntry, bool] | None] = [(by_digest[p["sha256"]], True) if p.get("sha256") in by_digest
                                                   else None for p in prov]
    claimed = {id(match[0]) for match in out if match is not None}
    by_path = {str((s.provenance or {}).get("path")): s for s in existing.sessions if (s.provenance or {}).get("path")}
    for i, p in enumerate(prov):
        old = by_path.get(str(p.get("path")))
        if out[i] is None and old is not None and id(old) not in claimed:
            out[i] = (old, False)
            claimed.add(id(old))
    return out


def _earlier_test_sessions(existing: Manifest | None, metas: list[dict], cfg: BuildConfig,
                           earlier: list[tuple[SessionEntry, bool] | None]) -> set[str]:
    """The test sessions of the corpus this build replaces, when it was split the same way (same
    bin width, split kind, seed and test share): a corpus grown by new sessions keeps them held
    out (a fresh draw over all sessions moved some into train, where a model trained on the new
    version would see what the old version's results were measured on). Recordings are matched
    by :func:`_earlier_sessions` (``earlier``, one per meta), not by id: a file renamed since is
    the same recording, and a new input can take an earlier session's plain id. ``--split row``
    draws rows afresh; a grown row-split corpus says so when its earlier test rows may have moved."""
    if existing is None:
        return set()
    old = existing.build or BuildSettings()
    same = existing.bin_ms == cfg.bin_ms and old.split == cfg.split and old.seed == cfg.seed \
        and old.test_fraction == cfg.test_fraction
    if not same:
        return set()
    if cfg.split == "session":  # also when the sessions are the same: a grown corpus's test stays so
        return {m["session_id"] for m, match in zip(metas, earlier) if match is not None and match[0].split == "test"} | \
            {s.session_id for s in existing.sessions if s.split == "test" and not (s.provenance or {}).get("path")}
    before = {s.session_id: s.split for s in existing.sessions}
    now = {m["session_id"] for m in metas}
    if set(before) != now and any(split != "train" for split in before.values()):
        print(f"spikefm: warning: the sessions changed ({len(set(before) - now)} gone, {len(now - set(before))} "
              "new), so --split row drew the test rows again over all rows: rows of the earlier test split may "
              "now be in train (a model trained on this version has seen them); --split session keeps a grown "
              "corpus's test sessions", file=sys.stderr)
    return set()


def _dedupe_session_ids(metas: list[dict], earlier: list[tuple[SessionEntry, bool] | None]) -> list[dict]:
    """Give colliding session ids a ``-2``, ``-3``... suffix (by input path order; one no other
    session has, :func:`~spikefm.corpus.manifest.distinct_session_ids`), warning once per shared id.
    A recording the earlier version holds (``earlier``, one per meta: :func:`_earlier_sessions`)
    keeps the id it has there: whatever the file is named now when its content is the same."""
    order = sorted(range(len(metas)), key=lambda i: metas[i]["provenance"].get("path", ""))
    ordered = [metas[i] for i in order]
    match = [earlier[i] for i in order]
    new_ids = distinct_session_ids([m["session_id"] for m in ordered],
                                   keep=[x[0].session_id if x else None for x in match],
                                   same_content=[bool(x and x[1]) for x in match])
    renamed: dict[str, list[dict]] = {}
    kept = []
    for m, sid, x in zip(ordered, new_ids, match):
        if sid != m["session_id"]:
            m["original_session_id"] = m["session_id"]
            m["session_id"] = sid
            if x is not None and x[1] and x[0].session_id == sid:
                kept.append(m)
            else:
                renamed.setdefault(m["original_session_id"], []).append(m)
    if renamed:  # one line: the id each took is another session's (an input's, or an earlier rename's)
        later = [m for group in renamed.values() for m in group]
        print(f"spikefm: warning: {len(later)} input(s) named with a session id another session has, renamed: "
              + ", ".join(f"{m['provenance'].get('path', '?')} ({m['original_session_id']!r}) -> {m['session_id']!r}"
                          for m in later), file=sys.stderr)
    if kept:
        print(f"spikefm: warning: {len(kept)} input(s) renamed since the corpus read them (the same content) keep "
              "their session id, so runs keyed by it meet the same recording: "
              + ", ".join(f"{m['provenance'].get('path', '?')} keeps {m['session_id']!r}" for m in kept),
              file=sys.stderr)
    return metas


def finalize(folder: CorpusDir, metas: list[dict], skipped: list[dict], cfg: BuildConfig,
             settings: BuildSettings) -> dict:
    """Write shards and manifest from staged sessions as the folder's new version; returns the
    manifest (a dict)."""
    staging = folder.path / STAGING
    metas = [dict(m) for m in metas]
    earlier = _earlier_sessions(folder.existing, metas)
    metas = _dedupe_session_ids(metas, earlier)
    split_of = assign_splits(metas, cfg, keep_test=_earlier_test_sessions(folder.existing, metas, cfg, earlier))
    rng = np.random.default_rng([cfg.seed, 1])

    tables, row_tokens = {}, {}
    for m in metas:
        src = pa.memory_map(str(staging / f"{m['staging_key']}.arrow"))
        t = pa.ipc.open_file(src).read_all()  # one chunk per row; see _list_of_lists
        if "original_session_id" in m:
            t = t.set_column(2, "session_id", pa.array([m["session_id"]] * t.num_rows, pa.string()))
        tables[m["session_id"]] = t
        row_tokens[m["session_id"]] = _row_token_counts(t)

    rows_of = {}
    with folder.new_version(cfg.shard_max_tokens) as version:
        for split in SPLITS:
            rows = sorted(k for k, s in split_of.items() if s == split)
            for i in rng.permutation(len(rows)):
                sid, r = rows[i]
                version.add(split, tables[sid].slice(r, 1), int(row_tokens[sid][r]))
            rows_of[split] = rows
        shards = version.finish(SPLITS)
        splits = {split: SplitInfo(
            num_rows=len(rows),
            num_tokens=int(sum(row_tokens[s][r] for s, r in rows)),
            num_sessions=len({s for s, _ in rows}),
            shards=tuple(shards[split])) for split, rows in rows_of.items()}
        sessions = []
        for m in metas:
            row_splits = sorted({split_of[(m["session_id"], r)] for r in range(m["num_rows"])})
            entry = {k: v for k, v in m.items() if k not in _STAGING_KEYS}
            entry["split"] = row_splits[0] if len(row_splits) == 1 else "both"
            sessions.append(SessionEntry.from_dict(
                entry, where=f"session {m['session_id']}",
                source=str(staging / f"{m['staging_key']}.json")))
        manifest = new_manifest(
            bin_ms=cfg.bin_ms, build=settings, splits=splits, sessions=sessions,
            skipped=[SkippedInput(input=p["input"], error=p["error"]) for p in skipped])
        kept = version.current_created_utc(manifest)
        if kept is not None:  # the same corpus again: the current version stays (and its hash)
            return dataclasses.replace(manifest, created_utc=kept).to_dict()
        version.commit(manifest)
    return manifest.to_dict()


def _row_token_counts(table: pa.Table) -> np.ndarray:
    """Units x bins of every row of a table, from the list offsets."""
    counts = []
    for col in table.column("spike_counts").chunks:
        outer = col.offsets.to_numpy()
        inner = col.values.offsets.to_numpy()
        counts.append(inner[outer[1:]] - inner[outer[:-1]])
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------


def build_settings(inputs: list[str], cfg: BuildConfig) -> BuildSettings:
    """What the manifest records about a build, and what a later build into the same folder
    must match to resume or refresh it without ``overwrite``: the settings that change the
    corpus and the INPUT arguments (local paths absolute, order and repeats ignored)."""
    specs = sorted({spec.strip() if spec.startswith("dandi:") else str(Path(spec).resolve())
                    for spec in inputs})
    return BuildSettings(max_row_tokens=cfg.max_row_tokens, test_fraction=cfg.test_fraction,
                         split=cfg.split, seed=cfg.seed, shard_max_tokens=cfg.shard_max_tokens,
                         spikes_past_end=cfg.spikes_past_end, source_dataset=cfg.source_dataset,
                         inputs=tuple(specs))


def _check_replace(out_dir: Path, existing: Manifest | None, settings: BuildSettings,
                   files: list[InputFile], cfg: BuildConfig) -> None:
    """Refuse to replace a corpus made from other inputs or settings unless ``cfg.overwrite``."""
    if existing is None or cfg.overwrite:
        return
    old = existing.build or BuildSettings()
    if old.importer is not None:
        raise BuildError(f"{out_dir}: holds a corpus imported from {old.source}; pass "
                         "--overwrite to replace it with this build, or give another --out")
    diffs = [f"bin_ms {existing.bin_ms} -> {cfg.bin_ms}"] if existing.bin_ms != cfg.bin_ms else []
    recorded = old.inputs is not None  # written by this version: every setting is recorded
    for name in ("max_row_tokens", "test_fraction", "split", "seed", "shard_max_tokens",
                 "spikes_past_end", "source_dataset"):
        was, now = getattr(old, name), getattr(settings, name)
        if was != now and (recorded or was is not None):
            diffs.append(f"{name} {was!r} -> {now!r}")
    if recorded:
        if set(old.inputs) != set(settings.inputs):  # as sets: an older manifest's order or repeats do not count
            gone = sorted(set(old.inputs) - set(settings.inputs))
            new = sorted(set(settings.inputs) - set(old.inputs))
            diffs.append("inputs " + (f"({gone[0]}{f' and {len(gone) - 1} more' if len(gone) > 1 else ''} no longer "
                                      "given)" if gone else
                                      f"({len(new)} new, e.g. {new[0]}; the corpus records the INPUTs it was built from)"))
    else:  # older manifests: the inputs must still cover every session
        given = {str(f.path.resolve()) for f in files}
        gone = sorted(str((s.provenance or {}).get("path")) for s in existing.sessions
                      if (s.provenance or {}).get("path") not in given)
        if gone:
            diffs.append(f"inputs ({gone[0]} no longer given)")
    if diffs:
        raise BuildError(f"{out_dir}: holds a corpus built from other inputs or settings "
                         f"({'; '.join(diffs)}); pass --overwrite to replace it, or give "
                         "another --out")


def _keep_sessions_of_failed_inputs(out_dir: Path, existing: Manifest | None, problems: list[dict],
                                    cfg: BuildConfig, metas: list[dict]) -> None:
    """Refuse (BuildError) to write a new version without sessions the current one holds: with the
    same inputs (other inputs need ``overwrite``, refused before), a session not built now had its
    file damaged, deleted or moved, or its folder missing or emptied (an unmounted share), and the
    corpus would shrink, its earlier version go and its split move sessions, all quietly.
    ``overwrite`` builds without them; a copy left out is no loss (its recording stays)."""
    if existing is None or cfg.overwrite:
        return

    def key(path) -> str:
        try:
            return str(Path(path).resolve())
        except (OSError, RuntimeError, TypeError, ValueError):
            return str(path)

    kept = {key((m.get("provenance") or {}).get("path")) for m in metas}
    kept |= {key(p["input"]) for p in problems if "copy_of" in p}
    # a file renamed or moved in its folder is the same recording (its content): not lost
    contents = {(m.get("provenance") or {}).get("sha256") for m in metas} - {None}
    lost = [s for s in existing.sessions if (s.provenance or {}).get("path")
            and key(s.provenance["path"]) not in kept and (s.provenance or {}).get("sha256") not in contents]
    if not lost:
        return
    first = key(lost[0].provenance["path"])
    why = next((p["error"] for p in problems if key(p["input"]) == first or first.startswith(key(p["input"]) + os.sep)),
               f"{first}: not among this build's inputs any more (deleted or moved from its folder)")
    more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
    raise BuildError(f"{why}: that input holds session {lost[0].session_id!r} of the corpus at {out_dir}{more}; the "
                     f"corpus is left as it was ({len(existing.sessions)} sessions, its splits unchanged): restore "
                     "the input and run again (the other sessions are staged and reused), or pass --overwrite to "
                     "build the corpus without it")


def build_corpus(inputs: list[str | os.PathLike], out_dir: str | Path, cfg: BuildConfig | None = None,
                 *, progress: bool = True) -> BuildReport:
    """Build (or resume, or refresh) a corpus from NWB inputs. See the module docstring.

    Without ``cfg.strict`` bad inputs are skipped and listed in the manifest (``report.ok`` is
    False). With ``cfg.strict`` any bad input raises :class:`BuildError` and nothing is written.

    Raises:
        BuildError: (a ValueError, one line) see the module docstring; file operations that fail
            (disk full, permissions) and running out of memory outside a single file's work are
            reported this way too, naming the folder.
    """
    cfg = BuildConfig() if cfg is None else cfg
    if not isinstance(cfg, BuildConfig):
        raise ValueError(f"cfg must be a BuildConfig (e.g. BuildConfig(bin_ms=10)), got a {type(cfg).__name__}")
    out_dir = Path(out_dir)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(x) if isinstance(x, os.PathLike) else x for x in inputs]
    try:
        return _build(inputs, out_dir, cfg, progress)
    except BuildError:
        raise
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    except MemoryError as exc:
        raise BuildError(f"{out_dir}: out of memory while writing the corpus ({first_line(exc)}); "
                         "use a machine with more memory or a smaller --max-row-tokens") from None
    except OSError as exc:  # an operation failed (exit 1 on the command line), not bad input
        raise OSError(exc.errno, f"{exc.strerror or first_line(exc)} while writing the corpus in {out_dir}; "
                      "fix the cause (space, permissions) and run again: finished sessions are reused",
                      exc.filename) from None


def _build(inputs: list[str], out_dir: Path, cfg: BuildConfig, progress: bool) -> BuildReport:
    existing = inspect_out_dir(out_dir)  # refuse a non-corpus folder before any download
    files, problems = resolve_inputs(inputs, cfg, progress=progress)
    if cfg.strict and problems:
        raise BuildError(problems[0]["error"] + " (--strict: nothing was written)")
    if not files:
        if not problems:
            raise BuildError("no inputs given; pass .nwb files, folders or dandi:DANDISET_ID")
        raise BuildError("no input could be built: " + "; ".join(p["error"] for p in problems[:3]))
    check_inputs_outside(out_dir, [f.path for f in files])
    settings = build_settings(inputs, cfg)
    _check_replace(out_dir, existing, settings, files, cfg)

    with open_corpus_dir(out_dir) as folder:
        _check_replace(out_dir, folder.existing, settings, files, cfg)  # as found under the lock
        staged = folder.path / STAGING
        staged.mkdir(exist_ok=True)
        # In strict mode stage into a scratch folder and only move results in when all pass.
        staging = Path(tempfile.mkdtemp(prefix=".tmp-strict-", dir=folder.path)) \
            if cfg.strict else staged
        jobs, metas, reused_keys, keys = [], [], set(), set()
        for item in files:
            if not item.path.exists():
                problems.append({"input": str(item.path),
                                 "error": f"{item.path}: file not found; check the path"})
                continue
            key = _staging_key(item, cfg)
            keys.add(key)
            done = staged / f"{key}.json"
            problem = _staged_problem(staged, key) if done.exists() else "not staged"
            if problem is None:
                metas.append(json.loads(done.read_text()))
                reused_keys.add(key)
                _say_what_was_left_out(metas[-1])  # each build says it, not only the first
            else:
                if done.exists():  # damaged: staged again from its input (the corpus is untouched)
                    print(f"spikefm: warning: {item.path}: its staged copy ({STAGING}/{key}) is damaged "
                          f"({problem}); staging it again", file=sys.stderr)
                    for suffix in (".json", ".arrow"):
                        (staged / f"{key}{suffix}").unlink(missing_ok=True)
                jobs.append((item, key))
        # an input given but not found or resolved now (an unmounted share, a DANDI spec offline) is
        # still this build's: its staged sessions of earlier builds are not pruned below
        all_inputs_found = not problems
        try:
            for res in _run_jobs(jobs, staging, cfg, progress):
                if "error" in res:
                    problems.append({"input": res["input"], "error": res["error"]})
                else:
                    metas.append(res)
                    _say_what_was_left_out(res)
            metas = _drop_duplicate_recordings(metas, problems, folder.existing)  # a copy is a skipped input
            if cfg.strict and problems:
                raise BuildError(problems[0]["error"] + " (--strict: nothing was written)")
            if cfg.strict:
                for f in staging.iterdir():
                    os.replace(f, staged / f.name)
        finally:
            if cfg.strict:
                shutil.rmtree(staging, ignore_errors=True)

        if not metas:
            msg = "; ".join(p["error"] for p in problems[:3]) or "no sessions"
            raise BuildError(f"no input could be built: {msg}")
        _keep_sessions_of_failed_inputs(out_dir, folder.existing, problems, cfg, metas)
        for p in problems:
            print(f"spikefm: warning: skipped {p['error']}", file=sys.stderr)
        manifest = finalize(folder, metas, problems, cfg, settings)
        if all_inputs_found:
            _prune_staged(staged, keep=keys)
    reused = sum(1 for m in metas if m.get("staging_key") in reused_keys)  # of the sessions kept
    return BuildReport(out_dir=out_dir, manifest=manifest, skipped=problems,
                       num_staged_now=len(metas) - reused, num_reused=reused)


def _prune_staged(staged: Path, keep: set[str]) -> None:
    """Remove the staged sessions of inputs this build no longer has (files changed since, other
    settings, inputs left out): every change of settings would otherwise leave a full uncompressed
    copy of the corpus behind. Called once the new version is in place; says what it freed."""
    freed, count = 0, 0
    for marker in staged.glob("*.json"):
        if marker.stem in keep:
            continue
        for f in (marker.with_suffix(".arrow"), marker):  # the marker last: a kill leaves no reusable half
            with contextlib.suppress(FileNotFoundError):
                freed += f.stat().st_size
                f.unlink()
        count += 1
    for arrow in staged.glob("*.arrow"):  # a session whose staging never finished
        if arrow.stem not in keep and not arrow.with_suffix(".json").exists():
            with contextlib.suppress(FileNotFoundError):
                freed += arrow.stat().st_size
                arrow.unlink()
    if count:
        print(f"spikefm: removed {count} staged session(s) of earlier builds ({freed / 1e6:,.1f} MB) from "
              f"{staged}: their inputs or settings are not this build's", file=sys.stderr)


def _drop_duplicate_recordings(metas: list[dict], problems: list[dict], existing: Manifest | None = None
                               ) -> list[dict]:
    """Keep one session per recording: inputs with the same content (sha256) as an earlier one
    (by path order; a path the ``existing`` corpus holds comes first, so a new copy cannot take its
    recording's id and split) are left out and listed with the skipped inputs, since two copies of
    one recording would be counted twice and could land in both train and test."""
    held = {str((s.provenance or {}).get("path")) for s in (existing.sessions if existing else ())}
    first: dict[str, str] = {}
    dropped = set()

    def order(m):
        path = str((m.get("provenance") or {}).get("path", ""))
        return path not in held, path

    for m in sorted(metas, key=order):
        prov = m.get("provenance") or {}
        digest, path = prov.get("sha256"), str(prov.get("path", m.get("session_id")))
        if digest and digest in first:
            problems.append({"input": path, "error": f"{path}: the same recording as {first[digest]} (sha256 "
                                                     f"{digest[:12]}...); left out: give each recording once",
                             "copy_of": first[digest]})
            dropped.add(id(m))
        elif digest:
            first[digest] = path
    return [m for m in metas if id(m) not in dropped]


def _say_what_was_left_out(meta: dict) -> None:
    """Warnings for what of a session's file is not in the corpus (behaviour series it cannot
    bin, spikes after the recording's end), for sessions staged now and reused alike."""
    where = meta.get("provenance", {}).get("path", meta["session_id"])
    for note in meta.get("read_notes", []):
        print(f"spikefm: warning: {where}: {note}", file=sys.stderr)
    if meta.get("clipped_bins"):
        lost = meta.get("clipped_spikes")
        print(f"spikefm: warning: {where}: {meta['clipped_bins']:,} unit-bin(s) held more than 255 spikes and "
              f"were clipped to 255 (uint8)" + (f", {lost:,} of its {meta['num_spikes']:,} spikes not in the "
                                                 "corpus" if lost else "")
              + f"; a smaller --bin-ms (now {meta['bin_ms']}) keeps them", file=sys.stderr)
    if meta.get("spikes_past_end"):
        print(f"spikefm: warning: {where}: left out {meta['spikes_past_end']} spike time(s) after the "
              f"recording's end ({meta['recording_end_s']:.6g} s) (--spikes-past-end drop)", file=sys.stderr)


#: Keys of a staged session's record that only the build uses (not copied to the manifest).
_STAGING_KEYS = ("staging_key", "staged_sha256", "read_notes")


def _staged_problem(staged: Path, key: str) -> str | None:
    """Why a finished staged session cannot be reused (None when it can): its marker must be a
    JSON object naming the key, its Arrow file must open (a truncated file has no footer) and
    have the sha256 recorded when it was written (bytes changed in place keep the footer)."""
    try:
        meta = json.loads((staged / f"{key}.json").read_text())
        if not isinstance(meta, dict) or meta.get("staging_key") != key:
            return "its .json is not this session's record"
        with pa.memory_map(str(staged / f"{key}.arrow")) as src:
            pa.ipc.open_file(src)
        recorded = meta.get("staged_sha256")  # absent in folders staged before it was recorded
        if isinstance(recorded, dict):
            arrow = staged / f"{key}.arrow"
            st = arrow.stat()
            if st.st_size != recorded.get("size"):
                return (f"its .arrow file has {st.st_size:,} bytes, {recorded.get('size')} when it "
                        "was staged")
            if st.st_mtime_ns != recorded.get("mtime_ns") and sha256_file(arrow) != recorded.get("sha256"):
                return "its .arrow file was changed after it was staged (its sha256 differs)"
    except FileNotFoundError:
        return "its .arrow file is missing"
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        return " ".join(str(exc).split())[:120] or type(exc).__name__
    return None


def _run_pool(jobs, staging: Path, cfg: BuildConfig, workers: int, bar) -> tuple[list, list]:
    """Stage ``jobs`` in a process pool. Returns (results, jobs left undone because a worker
    process died, e.g. killed by the system for memory)."""
    results = []
    from ..pools import start_worker, terminate_workers

    pool = ProcessPoolExecutor(max_workers=workers, initializer=start_worker, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(_stage_one, item, key, str(staging), cfg) for item, key in jobs]
        for i, fut in enumerate(futures):
            try:
                results.append(fut.result())
            except BrokenProcessPool:
                left = []
                for job, f in zip(jobs[i:], futures[i:]):
                    if f.done() and not f.cancelled() and f.exception() is None:
                        results.append(f.result())
                        bar.advance(1)
                    else:
                        left.append(job)
                return results, left
            bar.advance(1)
        return results, []
    except KeyboardInterrupt:  # workers ignore it: end them now (staging writes are atomic)
        terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_jobs(jobs, staging: Path, cfg: BuildConfig, progress: bool) -> list[dict]:
    """Stage every job; one result per job. When a worker process dies, the jobs it left are
    run again, one worker at a time, so that the file that killed it is found and skipped."""
    from ..progress import progress_bar

    results = []
    with progress_bar(total=len(jobs), description="building sessions", enabled=progress) as bar:
        if cfg.executor == "ray" and jobs:
            return _run_ray(jobs, staging, cfg, bar, quiet=not progress)
        if cfg.workers == 1 or len(jobs) <= 1:
            for item, key in jobs:
                results.append(_stage_one(item, key, str(staging), cfg))
                bar.advance(1)
            return results
        pending, one_at_a_time = jobs, False
        while pending:
            done, pending = _run_pool(pending, staging, cfg, 1 if one_at_a_time else cfg.workers,
                                      bar)
            results += done
            if pending and one_at_a_time:  # with one worker, the first job left killed it
                item, _ = pending.pop(0)
                results.append({"input": str(item.path), "error": (
                    f"{item.path}: the worker process building it died (killed by the system, "
                    "most likely for running out of memory); skipped")})
                bar.advance(1)
            one_at_a_time = bool(pending) and not one_at_a_time
    return results


def in_driver_folder(cwd: str | None) -> None:
    """In a Ray worker, go to the driver's working folder (when this node has it: a cluster's
    shared file system), so relative paths mean what they meant to the command that was run."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


def _stage_one_from(cwd: str, item: InputFile, key: str, staging: str, cfg: BuildConfig) -> dict:
    """:func:`_stage_one` as a Ray task, from the driver's folder."""
    in_driver_folder(cwd)
    return _stage_one(item, key, staging, cfg)


def _local_instead(flag: str) -> str:
    """How to use a local Ray instance instead of the address that ``flag`` gave."""
    return "leave out --address" if flag == "--address" else "unset RAY_ADDRESS"


#: An HTTP/2 client's first bytes: its preface and an empty SETTINGS frame. A gRPC server (Ray's
#: GCS, the Ray Client server) answers with a SETTINGS frame of its own.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _check_reachable(address: str, timeout_s: float = 10.0, flag: str = "--address") -> None:
    """Refuse, in one line and within about ``timeout_s``, a ``HOST:PORT`` (or ``ray://HOST:PORT``)
    nothing listens at, or where what answers is not a gRPC server (a dashboard, another service):
    Ray itself retries for minutes, printing only its own log lines. (Under ``RAY_USE_TLS`` only
    the connection is checked.)"""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # "auto" (found by Ray) or a form Ray resolves itself
    where = "check the head node's address and port (ray status on the head node)"
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            sock.settimeout(timeout_s)
            sock.sendall(_HTTP2_PREFACE)
            answer = b""
            with contextlib.suppress(OSError):  # a timeout or a reset: no gRPC answer
                while len(answer) < 9 and (chunk := sock.recv(9 - len(answer))):
                    answer += chunk
    except OSError as exc:
        raise ValueError(f"{flag} {address}: nothing answers there ({exc.strerror or exc}); {where}, "
                         f"or {_local_instead(flag)} for a local instance") from None
    if len(answer) < 9 or answer[3] != 4:  # not an HTTP/2 SETTINGS frame
        seen = "nothing within {:g} s".format(timeout_s) if not answer else f"{answer[:9]!r}..."
        raise ValueError(f"{flag} {address}: something listens there but it is not a Ray cluster's GCS (it answered "
                         f"{seen} where gRPC was expected; the dashboard's port 8265, perhaps); give the head node's "
                         "GCS address (port 6379 unless ray start --port chose another; ray status on the head node "
                         f"shows it), or {_local_instead(flag)} for a local instance") from None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, quiet: bool = False):
    """Ray, connected to the cluster at ``address`` or to a local instance started here (and
    shut down at the end); a session already open in this process is used as it is. Workers
    import spikefm from where this process does (an uninstalled checkout too). ``quiet``
    (``--quiet``): Ray's own start-up lines (its instance started, token authentication) are
    not printed, its errors still are."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray; install it with: pip install 'spikefm[ray]'") from None
    if ray.is_initialized():
        yield ray
        return
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    # log_to_driver=False: Ray would print every line a worker writes, prefixed with its pid;
    # study jobs send their warnings back with their results (experiments.jobs._ray_run_job)
    kwargs = {"include_dashboard": False, "log_to_driver": False,
              "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    if quiet:
        import logging

        kwargs["logging_level"] = logging.ERROR
    flag = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None  # what ray.init would connect to itself
    if address:
        _check_reachable(address, flag=flag)
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:  # "auto" with no cluster running, a cluster gone
        raise ValueError(f"{flag} {address}: no Ray cluster to connect to ({first_line(exc)}); "
                         f"start one (ray start --head) or {_local_instead(flag)} for a local instance") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(jobs, staging: Path, cfg: BuildConfig, bar, quiet: bool = False) -> list[dict]:
    """Stage every job as a Ray task (one CPU each); a task that dies (its worker killed, e.g.
    for memory) skips its file with one line, like a dead pool worker."""
    results = []
    # --workers sizes a local instance (default 1: every core, Ray's own default); a cluster's
    # size is its own
    num_cpus = cfg.workers if cfg.workers > 1 and not cfg.ray_address else None
    with ray_session(cfg.ray_address, num_cpus, quiet=quiet) as ray:
        stage = ray.remote(_stage_one_from).options(num_cpus=1, max_retries=0)
        cwd = os.getcwd()  # relative inputs and --out are the driver's: a cluster's workers start elsewhere
        items = {stage.remote(cwd, item, key, str(staging), cfg): item for item, key in jobs}
        pending = list(items)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results.append(ray.get(ref))
                except Exception as exc:  # noqa: BLE001 - the task died; its file is skipped
                    item = items[ref]
                    results.append({"input": str(item.path), "error": (
                        f"{item.path}: the Ray task building it failed ({type(exc).__name__}: "
                        f"{first_line(exc)}); skipped")})
                bar.advance(1)
    return results
