"""``spikefm corpus build``: NWB files / folders / DANDI dandisets -> a Neural-Pile-compatible corpus.

The build runs in two stages so that it is resumable and idempotent:

1. **Stage** each input file into ``CORPUS_DIR/.staging/<key>.arrow`` (its rows, Arrow IPC) and
   ``<key>.json`` (its session metadata, written last: its presence marks the session finished).
   The key hashes the file's resolved path, size and mtime and the build parameters, so a re-run
   skips finished sessions and an interrupted one (even ``kill -9``) resumes where it stopped.
   Files are staged in parallel with ``workers`` processes.
2. **Finalize**: assign splits (seeded), shuffle rows within each split, and write zstd Parquet
   shards ``data/{split}-{i:05d}-of-{n:05d}.parquet`` into a temporary folder that replaces
   ``data/`` only when complete, then ``manifest.json`` (temporary name, then rename).

The corpus holds exactly the sessions of the inputs given to the latest build; staged sessions of
earlier builds are reused when their inputs are given again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .binning import bin_spikes
from .nwb import NWBInputError, read_nwb, resample_behavior
from .schema import ROW_SCHEMA, SCHEMA_VERSION, SPLITS, shard_name
from ..fileio import replace_folder, write_atomic, write_json_atomic
from .session import SessionRecord

STAGING = ".staging"


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

    def __post_init__(self):
        if not isinstance(self.bin_ms, int) or isinstance(self.bin_ms, bool) or self.bin_ms <= 0:
            raise ValueError(f"bin_ms must be a positive int (milliseconds), got {self.bin_ms!r}")
        if not 1 <= self.max_row_tokens < 2**31:
            raise ValueError(f"max_row_tokens must be in [1, 2**31), got {self.max_row_tokens}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.split not in ("session", "row"):
            raise ValueError(f"split must be 'session' or 'row', got {self.split!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.shard_max_tokens < 1:
            raise ValueError(f"shard_max_tokens must be >= 1, got {self.shard_max_tokens}")


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
    """The build cannot proceed (bad inputs under --strict, nothing to build, id collisions)."""


# ---------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(inputs: list[str], cfg: BuildConfig) -> tuple[list[InputFile], list[dict]]:
    """Expand INPUT arguments into files. Returns (files, problems) where problems are
    ``{"input": str, "error": str}`` for inputs that do not exist or hold no NWB file."""
    files: list[InputFile] = []
    problems: list[dict] = []
    for spec in inputs:
        if spec.startswith("dandi:"):
            from .dandi import resolve_dandi

            try:
                files.extend(resolve_dandi(spec, cache_dir=cfg.cache_dir))
            except (ValueError, OSError) as exc:
                problems.append({"input": spec, "error": str(exc)})
            continue
        p = Path(spec)
        if p.is_dir():
            # Hidden files are other tools' temporaries (e.g. a killed writer's), not recordings.
            found = sorted(x for x in p.rglob("*.nwb") if x.is_file() and not x.name.startswith("."))
            if not found:
                problems.append({"input": spec, "error": f"{spec}: folder holds no *.nwb file"})
            files.extend(InputFile(path=f, source_dataset=p.resolve().name) for f in found)
        elif p.exists() or spec.endswith(".nwb"):
            files.append(InputFile(path=p, source_dataset=p.resolve().parent.name))
        else:
            problems.append({"input": spec, "error": f"{spec}: no such file or folder; give an "
                             ".nwb file, a folder of them, or dandi:DANDISET_ID[@VERSION][/GLOB]"})
    if cfg.source_dataset:
        for f in files:
            f.source_dataset = cfg.source_dataset
    # The same file given twice (e.g. a folder and a file in it) is built once.
    unique, seen = [], set()
    for f in files:
        key = str(f.path.resolve())
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _staging_key(item: InputFile, cfg: BuildConfig) -> str:
    st = item.path.stat()
    ident = json.dumps({
        "path": str(item.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "bin_ms": cfg.bin_ms, "max_row_tokens": cfg.max_row_tokens, "schema": SCHEMA_VERSION,
        "source": item.source_dataset, "provenance": item.provenance, "license": item.license,
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


def _trials_json(trials: dict[str, dict[str, np.ndarray]], t0_s: float, t1_s: float) -> str:
    """Trial-table rows overlapping [t0_s, t1_s), as JSON {table: {column: [...]}}."""
    out = {}
    for name, cols in trials.items():
        start = np.asarray(cols["start_time"], dtype=np.float64)
        stop = np.asarray(cols.get("stop_time", start), dtype=np.float64)
        keep = (start < t1_s) & (np.where(np.isfinite(stop), stop, start) >= t0_s)
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


def session_rows(rec: SessionRecord, cfg: BuildConfig) -> tuple[pa.Table, dict]:
    """Bin one session and cut it into rows. Returns (table with ROW_SCHEMA, session metadata)."""
    bin_ms = cfg.bin_ms
    t = rec.spike_times_s
    if t.size:
        t_start_ms = int(math.floor(t.min() * 1000.0 / bin_ms)) * bin_ms
        t_stop_ms = (int(math.floor(t.max() * 1000.0 / bin_ms)) + 1) * bin_ms
    else:
        t_start_ms = t_stop_ms = 0
    counts, num_clipped = bin_spikes(t, rec.unit_index, rec.num_units, t_start_ms / 1000.0,
                                     t_stop_ms / 1000.0, bin_ms, return_num_clipped=True)
    num_units, num_bins = counts.shape
    beh_names, beh_rows = [], []
    for series in rec.behavior:
        names, values = resample_behavior(series, t_start_ms, num_bins, bin_ms)
        beh_names += names
        beh_rows.append(values)
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
        "regions": {str(r): int(c) for r, c in zip(regions, region_counts)},
        "behavior_names": beh_names,
        "trial_tables": {k: int(len(v["start_time"])) for k, v in rec.trials.items()},
        "provenance": rec.provenance,
        "license": rec.license,
    }
    return table, meta


def _stage_one(item: InputFile, key: str, staging: str, cfg: BuildConfig) -> dict:
    """Worker: read, bin and stage one file. Returns its session metadata or {"error": ...}."""
    staging = Path(staging)
    try:
        rec = read_nwb(item.path, source_dataset=item.source_dataset,
                       provenance=item.provenance, license=item.license)
        table, meta = session_rows(rec, cfg)
    except (NWBInputError, ValueError, OSError) as exc:
        msg = str(exc)
        if str(item.path) not in msg:
            msg = f"{item.path}: {msg}"
        return {"error": msg, "input": str(item.path)}
    def write_arrow(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, ROW_SCHEMA) as writer:
            writer.write_table(table, max_chunksize=1)

    write_atomic(staging / f"{key}.arrow", write_arrow)
    meta["staging_key"] = key
    write_json_atomic(staging / f"{key}.json", meta)  # last: marks the session finished
    return meta


# ---------------------------------------------------------------------------------------------
# Stage 2: splits and shards


def assign_splits(metas: list[dict], cfg: BuildConfig) -> dict[tuple[str, int], str]:
    """Map (session_id, row index) -> split. Seeded; sessions are considered in sorted order."""
    metas = sorted(metas, key=lambda m: m["session_id"])
    rng = np.random.default_rng(cfg.seed)
    out: dict[tuple[str, int], str] = {}
    if cfg.split == "session":
        test = set()
        total = sum(m["num_tokens"] for m in metas)
        if cfg.test_fraction > 0 and len(metas) >= 2:
            target = cfg.test_fraction * total
            got = 0
            for i in rng.permutation(len(metas)):
                if got >= target or len(test) == len(metas) - 1:
                    break
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
    return out


def _dedupe_session_ids(metas: list[dict]) -> list[dict]:
    """Give colliding session ids a ``-2``, ``-3``... suffix (by input path order), warning once."""
    by_id: dict[str, list[dict]] = {}
    for m in sorted(metas, key=lambda m: m["provenance"].get("path", "")):
        by_id.setdefault(m["session_id"], []).append(m)
    for sid, group in by_id.items():
        if len(group) > 1:
            print(f"warning: {len(group)} inputs share session id '{sid}'; renamed with -2, -3... "
                  f"({', '.join(g['provenance'].get('path', '?') for g in group)})", file=sys.stderr)
            for k, m in enumerate(group[1:], start=2):
                m["original_session_id"] = sid
                m["session_id"] = f"{sid}-{k}"
    return metas


def finalize(out_dir: Path, metas: list[dict], skipped: list[dict], cfg: BuildConfig) -> dict:
    """Write shards and manifest from staged sessions."""
    out_dir = Path(out_dir)
    staging = out_dir / STAGING
    metas = _dedupe_session_ids([dict(m) for m in metas])
    split_of = assign_splits(metas, cfg)
    rng = np.random.default_rng([cfg.seed, 1])

    tables, row_tokens = {}, {}
    for m in metas:
        src = pa.memory_map(str(staging / f"{m['staging_key']}.arrow"))
        t = pa.ipc.open_file(src).read_all()  # one chunk per row; see _list_of_lists
        if "original_session_id" in m:
            t = t.set_column(2, "session_id", pa.array([m["session_id"]] * t.num_rows, pa.string()))
        tables[m["session_id"]] = t
        row_tokens[m["session_id"]] = _row_token_counts(t)

    tmp_data = Path(tempfile.mkdtemp(prefix=".data-tmp-", dir=out_dir))
    tmp_data.chmod(0o755)
    split_info = {}
    for split in SPLITS:
        rows = sorted(k for k, s in split_of.items() if s == split)
        order = [rows[i] for i in rng.permutation(len(rows))]
        groups, cur, cur_tokens = [], [], 0
        for sid, r in order:
            n_tok = row_tokens[sid][r]
            if cur and cur_tokens + n_tok > cfg.shard_max_tokens:
                groups.append(cur)
                cur, cur_tokens = [], 0
            cur.append((sid, r))
            cur_tokens += n_tok
        if cur:
            groups.append(cur)
        names = []
        for i, group in enumerate(groups):
            name = shard_name(split, i, len(groups))
            shard = pa.concat_tables([tables[sid].slice(r, 1) for sid, r in group])
            pq.write_table(shard.combine_chunks(), tmp_data / name, compression="zstd",
                           row_group_size=16)
            names.append(name)
        split_info[split] = {
            "num_rows": len(rows),
            "num_tokens": int(sum(row_tokens[s][r] for s, r in rows)),
            "num_sessions": len({s for s, _ in rows}),
            "shards": [f"data/{n}" for n in names],
        }

    replace_folder(tmp_data, out_dir / "data")

    sessions = []
    for m in sorted(metas, key=lambda m: m["session_id"]):
        splits = sorted({split_of[(m["session_id"], r)] for r in range(m["num_rows"])})
        entry = {k: v for k, v in m.items() if k != "staging_key"}
        entry["split"] = splits[0] if len(splits) == 1 else "both"
        sessions.append(entry)
    from spikefm._version import __version__

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "spikefm_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bin_ms": cfg.bin_ms,
        "build": {"max_row_tokens": cfg.max_row_tokens, "test_fraction": cfg.test_fraction,
                  "split": cfg.split, "seed": cfg.seed},
        "splits": split_info,
        "num_sessions": len(sessions),
        "num_human_sessions": sum(bool(s["is_human"]) for s in sessions),
        "sessions": sessions,
        "skipped": skipped,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _row_token_counts(table: pa.Table) -> np.ndarray:
    """Units x bins of every row of a table, from the list offsets."""
    counts = []
    for col in table.column("spike_counts").chunks:
        outer = col.offsets.to_numpy()
        inner = col.values.offsets.to_numpy()
        counts.append(inner[outer[1:]] - inner[outer[:-1]])
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------


def build_corpus(inputs: list[str], out_dir: str | Path, cfg: BuildConfig | None = None,
                 *, progress: bool = True) -> BuildReport:
    """Build (or resume, or refresh) a corpus from NWB inputs. See the module docstring.

    Without ``cfg.strict`` bad inputs are skipped and listed in the manifest (``report.ok`` is
    False). With ``cfg.strict`` any bad input raises :class:`BuildError` and nothing is written.
    """
    cfg = cfg or BuildConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"{out_dir}: exists and is not a folder; give a folder for the corpus")
    files, problems = resolve_inputs(inputs, cfg)
    if cfg.strict and problems:
        raise BuildError(problems[0]["error"] + " (--strict: nothing was written)")
    if not files and not problems:
        raise BuildError("no inputs given; pass .nwb files, folders or dandi:ID")

    created_out = not out_dir.exists()
    # In strict mode stage into a scratch folder and only move results in when all inputs pass.
    if cfg.strict:
        parent = out_dir.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".spikefm-strict-", dir=parent))
        existing = out_dir / STAGING
    else:
        staging = out_dir / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        existing = staging

    jobs, metas, reused = [], [], 0
    for item in files:
        if not item.path.exists():
            problems.append({"input": str(item.path),
                             "error": f"{item.path}: file not found; check the path"})
            continue
        key = _staging_key(item, cfg)
        done = existing / f"{key}.json"
        if done.exists() and (existing / f"{key}.arrow").exists():
            metas.append(json.loads(done.read_text()))
            reused += 1
        else:
            jobs.append((item, key))

    try:
        results = _run_jobs(jobs, staging, cfg, progress)
        for res in results:
            if "error" in res:
                problems.append({"input": res["input"], "error": res["error"]})
            else:
                metas.append(res)
        if cfg.strict and problems:
            raise BuildError(problems[0]["error"] + " (--strict: nothing was written)")
        if cfg.strict:
            (out_dir / STAGING).mkdir(parents=True, exist_ok=True)
            for f in staging.iterdir():
                os.replace(f, out_dir / STAGING / f.name)
    except BaseException:
        if cfg.strict:
            shutil.rmtree(staging, ignore_errors=True)
            if created_out and out_dir.exists() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    finally:
        if cfg.strict:
            shutil.rmtree(staging, ignore_errors=True)

    if not metas:
        msg = "; ".join(p["error"] for p in problems[:3]) or "no sessions"
        raise BuildError(f"no input could be built: {msg}")
    for p in problems:
        print(f"skipped: {p['error']}", file=sys.stderr)
    manifest = finalize(out_dir, metas, problems, cfg)
    return BuildReport(out_dir=out_dir, manifest=manifest, skipped=problems,
                       num_staged_now=len(metas) - reused, num_reused=reused)


def _run_jobs(jobs, staging: Path, cfg: BuildConfig, progress: bool) -> list[dict]:
    from ..progress import progress_bar

    results = []
    with progress_bar(total=len(jobs), description="building sessions", enabled=progress) as bar:
        if cfg.workers == 1 or len(jobs) <= 1:
            for item, key in jobs:
                results.append(_stage_one(item, key, str(staging), cfg))
                bar.advance(1)
        else:
            with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
                futures = [pool.submit(_stage_one, item, key, str(staging), cfg)
                           for item, key in jobs]
                for fut in futures:
                    results.append(fut.result())
                    bar.advance(1)
    return results
