"""``spikefm.Corpus``: read a corpus directory at memory speed (pyarrow -> numpy, no per-element
Python conversion)."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import first_line
from .manifest import Manifest, _fail, read_manifest
from .store import CURRENT, VERSIONS


@contextmanager
def shard_errors(shard: str | Path, corpus=None) -> Iterator[None]:
    """Reading ``shard`` inside the block: a missing or damaged Parquet file becomes one
    ``ValueError`` naming the file and the fix, instead of a bare pyarrow message."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        rebuild = ("rebuild the corpus (spikefm corpus build INPUTS --out DIR --overwrite, or "
                   "spikefm corpus import)")
        shown = _as_the_user_sees_it(shard, corpus)
        if not Path(shard).exists():
            raise ValueError(f"{shown}: a shard listed in manifest.json is missing, so the corpus "
                             f"is incomplete; {rebuild}") from None
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(f"{shown}: not a readable Parquet shard ({detail}); the corpus is "
                         f"damaged: {rebuild}") from None


def _as_the_user_sees_it(shard: str | Path, corpus=None) -> Path:
    """A shard of a corpus's pinned version (``CORPUS/.versions/<id>/data/x.parquet``) named as
    its folder shows it (``CORPUS/data/x.parquet``, under the path the corpus was opened by)."""
    root = getattr(corpus, "_root", None)
    if root is not None and root != corpus.path:
        try:
            return corpus.path / Path(shard).relative_to(root)
        except ValueError:
            pass
    parts = Path(shard).parts
    if VERSIONS in parts[:-2]:
        i = len(parts) - 1 - parts[::-1].index(VERSIONS)
        return Path(*parts[:i], *parts[i + 2:])
    return Path(shard)


def _check_shard(shard: Path, corpus=None) -> None:
    """A listed shard exists and starts and ends with Parquet's magic bytes (two small reads),
    so that a missing, empty or truncated shard is found when the corpus is opened, by every
    reader, and not as a bare pyarrow error deep in training."""
    with shard_errors(shard, corpus):
        with open(shard, "rb") as f:
            head = f.read(4)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if size < 12 or head != b"PAR1" or tail != b"PAR1":
            raise pa.ArrowInvalid(f"{size:,} bytes, no Parquet magic bytes at both ends: "
                                  "empty, truncated or not Parquet")


def _import_pandas_first() -> None:
    """Import pandas (installed with pynwb) before pyarrow does. pyarrow imports it lazily, on the
    first ``to_numpy()`` of a corpus read, and its import shim swallows a ``KeyboardInterrupt``
    raised meanwhile: a Ctrl-C in that second was lost and the command ran on to the end. Raised
    by this plain import, it ends the command as any Ctrl-C does."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


def manifest_sha256(corpus_dir: str | Path) -> str:
    """sha256 of ``corpus_dir/manifest.json`` (what training records as the corpus it read), without
    opening the corpus; OSError when there is none."""
    return hashlib.sha256((Path(corpus_dir) / "manifest.json").read_bytes()).hexdigest()


@dataclass
class CorpusRow:
    """One row: a chunk of one session.

    ``spike_counts`` is a (num_units, num_bins) uint8 view of the Arrow buffer; ``behavior`` a
    (num_behaviors, num_bins) float32 array (NaN where not recorded); ``trials`` the trial tables
    overlapping the chunk ({table: {column: list}}, times in seconds on the session clock).
    """

    spike_counts: np.ndarray
    subject_id: str
    session_id: str
    segment_id: str
    source_dataset: str
    bin_ms: int = 20
    t_start_ms: int = 0
    unit_ids: list[str] = field(default_factory=list)
    unit_regions: list[str] = field(default_factory=list)
    species: str = ""
    behavior_names: list[str] = field(default_factory=list)
    behavior: np.ndarray | None = None
    trials_json: str = "{}"

    @property
    def num_units(self) -> int:
        return self.spike_counts.shape[0]

    @property
    def num_bins(self) -> int:
        return self.spike_counts.shape[1]

    @cached_property
    def trials(self) -> dict:
        return json.loads(self.trials_json or "{}")


def _matrices(col: pa.Array) -> list[np.ndarray]:
    """A list<list<T>> array -> per-row 2-D numpy views (rows x inner length), zero-copy."""
    if isinstance(col, pa.ChunkedArray):
        return [m for chunk in col.chunks for m in _matrices(chunk)]
    outer = col.offsets.to_numpy()
    inner_arr = col.values
    inner = inner_arr.offsets.to_numpy()
    values = inner_arr.values
    flat = values.to_numpy(zero_copy_only=values.null_count == 0, writable=False)
    out = []
    for i in range(len(col)):
        u0, u1 = outer[i], outer[i + 1]
        v0, v1 = inner[u0], inner[u1]
        n = u1 - u0
        width = (v1 - v0) // n if n else 0
        if n and np.any(np.diff(inner[u0:u1 + 1]) != width):
            raise _BadRow(f"row {i} of its batch: per-unit lists have different lengths; not a units x bins "
                          "matrix")
        out.append(flat[v0:v1].reshape(n, width))
    return out


class Corpus:
    """A spikefm corpus directory (``manifest.json`` + ``data/*.parquet``, see
    :mod:`spikefm.corpus.store`).

    Example::

        corpus = spikefm.Corpus("my_corpus")
        for row in corpus.iter_rows("train"):
            row.spike_counts  # uint8 (units, bins)
    """

    def __init__(self, path: str | Path):
        _import_pandas_first()
        self.path = Path(path)
        # One version, pinned when opened: a rebuild switches .current, and the shards were found
        # through the links at each read, so an open corpus read the new version's shards
        # against its old manifest (sessions it held out among its train rows).
        current = self.path / CURRENT
        self._root = Path(os.path.realpath(current)) if current.is_symlink() else self.path
        #: The manifest as a typed, checked record (:class:`~spikefm.corpus.manifest.Manifest`).
        self.manifest_record: Manifest = read_manifest(self._root)
        self._manifest_sha256 = manifest_sha256(self._root)  # now: the version may be gone when asked
        #: The manifest as the JSON object on disk (a dict; ``manifest_record.to_dict()``).
        self.manifest: dict = self.manifest_record.to_dict()
        for split, info in self.manifest["splits"].items():
            rows = 0
            for shard in self.shards(split):
                _check_shard(shard, self)
                with shard_errors(shard, self):
                    rows += pq.read_metadata(shard).num_rows  # the footer only
            if rows != info["num_rows"]:  # a shard replaced or copied over by another
                raise ValueError(
                    f"{self.path}: the {split} shards hold {rows:,} rows but manifest.json lists "
                    f"{info['num_rows']:,}; shards and manifest come from different builds, so the "
                    "corpus is damaged: rebuild it (spikefm corpus build INPUTS --out DIR "
                    "--overwrite, or spikefm corpus import)")

    def __repr__(self) -> str:
        s = self.manifest["splits"]
        return (f"Corpus({str(self.path)!r}, sessions={len(self.sessions)}, "
                + ", ".join(f"{k}_tokens={v['num_tokens']:,}" for k, v in s.items()) + ")")

    @property
    def sessions(self) -> list[dict]:
        """Per-session metadata from the manifest (session_id, subject_id, split, num_units...)."""
        return self.manifest["sessions"]

    @property
    def bin_ms(self) -> int:
        return int(self.manifest["bin_ms"])

    def session(self, session_id: str) -> dict:
        for s in self.sessions:
            if s["session_id"] == session_id:
                return s
        raise KeyError(f"session {session_id!r} is not in {self.path}; known sessions: "
                       + ", ".join(s["session_id"] for s in self.sessions[:10])
                       + (" ..." if len(self.sessions) > 10 else ""))

    def require_session_keys(self, *keys: str, needed_by: str) -> None:
        """Raise the manifest's one-line error (file, key, fix) when a session lacks one of
        ``keys``: the layout leaves them optional (minimal manifests), ``needed_by`` does not."""
        for i, s in enumerate(self.sessions):
            for key in keys:
                if s.get(key) is None:
                    raise _fail(str(self.path / "manifest.json"), f"sessions[{i}].{key}",
                                f"an int >= 0 ({needed_by} reads it)")

    def fill_split_advice(self, split: str) -> str:
        """How to give this corpus rows in ``split`` (for a message about an empty split): an
        imported corpus takes its splits from its source's files, a built one from the build's
        split settings."""
        build = self.manifest.get("build") or {}
        if build.get("importer"):
            return (f"its splits are the imported source's ({build.get('source') or 'the source'}): import a "
                    f"source whose {split} split has files (data/{split}-*.parquet, or a dataset card mapping them)")
        return (f"rebuild the corpus so that {split} gets some (more sessions, a "
                f"{'larger' if split == 'test' else 'smaller'} --test-fraction, or --split row with a "
                "--max-row-tokens that cuts each session into several rows)")

    def session_ids(self, split: str | None = None) -> list[str]:
        """Session ids, optionally only those with rows in ``split``."""
        return [s["session_id"] for s in self.sessions
                if split is None or s["split"] in (split, "both")]

    def shards(self, split: str) -> list[Path]:
        if not isinstance(split, str):
            raise TypeError(f"split must be one split name, one of {sorted(self.manifest['splits'])}, got "
                            f"{type(split).__name__} {split!r}; read the splits one after another")
        if split not in self.manifest["splits"]:
            raise ValueError(f"split must be one of {sorted(self.manifest['splits'])}, got {split!r}")
        if self._root != self.path and not self._root.is_dir():
            raise ValueError(f"{self.path} was rebuilt since it was opened here (the version read, "
                             f"{self._root.name}, is gone); open it again (spikefm.Corpus), or start the run again")
        return [self._root / p for p in self.manifest["splits"][split]["shards"]]

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["splits"][split]["num_tokens"])

    @cached_property
    def manifest_hash(self) -> str:
        """sha256 of manifest.json (of the version opened), recorded by training runs to pin their data."""
        return self._manifest_sha256

    def iter_rows(self, split: str = "train", *, sessions: list[str] | set[str] | None = None,
                  with_extras: bool = True) -> Iterator[CorpusRow]:
        """Yield rows of a split in shard order (rows were shuffled when the corpus was built).

        Args:
            split: ``"train"`` or ``"test"``.
            sessions: only rows of these session ids (a list or set of str; one id is
                ``[session_id]``, a bare str is refused).
            with_extras: also read behaviour, regions and trials (skip them for speed when only
                spike counts are needed).

        Raises:
            ValueError: an unknown split, or a session id the corpus does not hold (a session of
                the other split gives no rows, silently: its rows are there).
            TypeError: ``sessions`` is a str or not a collection of str (raised at the call, not at
                the first row).
        """
        wanted = _session_set(sessions, "sessions")
        unknown = sorted(wanted - set(self.session_ids())) if wanted else []
        if unknown:
            raise ValueError(f"sessions not in {self.path}: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
                             f"its sessions: {self.session_ids()[:10]}")
        shards = self.shards(split)
        return self._iter_rows(shards, wanted, with_extras)

    def _iter_rows(self, shards: list[Path], wanted: set[str] | None,
                   with_extras: bool) -> Iterator[CorpusRow]:
        for shard in shards:
            with shard_errors(shard, self):
                pf = pq.ParquetFile(shard)
                cols = None if with_extras else ["spike_counts", "subject_id", "session_id",
                                                 "segment_id", "source_dataset", "bin_ms",
                                                 "t_start_ms"]
                names = set(pf.schema_arrow.names)
                if cols is not None:
                    cols = [c for c in cols if c in names]
                try:
                    for batch in pf.iter_batches(batch_size=8, columns=cols):
                        yield from _rows_from_batch(batch, wanted, self.bin_ms)
                except _BadRow as exc:
                    raise ValueError(f"{_as_the_user_sees_it(shard, self)}: {exc}; the corpus is damaged: rebuild it "
                                     "(spikefm corpus build INPUTS --out DIR --overwrite, or spikefm corpus "
                                     "import)") from None


def _session_set(sessions, name: str) -> set[str] | None:
    """``sessions`` (None, or a collection of session ids) as a set; a one-line TypeError for a
    bare str (a set of its characters would silently match nothing) or a non-str id."""
    if sessions is None:
        return None
    if isinstance(sessions, (str, bytes)):
        raise TypeError(f"{name} must be a list of session ids, got the string {sessions!r}; "
                        f"for one session pass [{sessions!r}]")
    try:
        wanted = set(sessions)
    except TypeError:
        raise TypeError(f"{name} must be a list of session ids, got {type(sessions).__name__} {sessions!r}; "
                        "pass e.g. ['sub-01_ses-01']") from None
    bad = sorted((s for s in wanted if not isinstance(s, str)), key=repr)
    if bad:
        raise TypeError(f"{name} must be a list of session ids (str), got {bad[0]!r} "
                        f"({type(bad[0]).__name__}) among them; pass the ids as strings")
    return wanted


def _of_bins(behavior_CT: np.ndarray, num_bins: int) -> np.ndarray:
    """A row's behaviour matrix; one of no channel is (0, num_bins), as documented (its stored
    empty list says nothing of the bins)."""
    return behavior_CT if behavior_CT.shape[0] else np.zeros((0, num_bins), dtype=behavior_CT.dtype)


class _BadRow(ValueError):
    """A row no spikefm writer makes (a shard edited or damaged by another tool); the reader names
    its shard."""


def _checked(row: CorpusRow, bin_ms: int) -> CorpusRow:
    """``row`` if its fields fit together (and its bin width is the corpus's ``bin_ms``), else
    :class:`_BadRow` naming the row and the field: each
    of these failed later, far from the data, in words that named neither (a modulo by zero, a
    broadcast of shapes, a JSON parser's position)."""
    where = f"the row of session {row.session_id!r} (segment {row.segment_id!r})"
    if isinstance(row.bin_ms, bool) or not isinstance(row.bin_ms, int) or row.bin_ms < 1:
        raise _BadRow(f"{where} has bin_ms {row.bin_ms!r}; expected a positive whole number of milliseconds")
    if row.bin_ms != bin_ms:  # a corpus has one bin width (the build and the import make one)
        raise _BadRow(f"{where} has bin_ms {row.bin_ms} where manifest.json gives the corpus {bin_ms} ms bins")
    if row.spike_counts.ndim != 2 or row.num_units < 1:
        raise _BadRow(f"{where} has spike counts of shape {row.spike_counts.shape}; expected (units >= 1, bins)")
    for name in ("unit_ids", "unit_regions"):
        values = getattr(row, name)
        if values and len(values) != row.num_units:
            raise _BadRow(f"{where} lists {len(values)} {name} for {row.num_units} units of spike counts")
    if row.behavior is not None and (row.behavior.shape[1] != row.num_bins
                                     or row.behavior.shape[0] != len(row.behavior_names)):
        raise _BadRow(f"{where} has behaviour of shape {row.behavior.shape} for {len(row.behavior_names)} "
                      f"named channels and {row.num_bins} bins")
    if row.trials_json not in ("", "{}"):
        try:
            trials = row.trials
        except ValueError as exc:
            raise _BadRow(f"{where} has trials_json that is not JSON ({first_line(exc)})") from None
        if not isinstance(trials, dict):
            raise _BadRow(f"{where} has trials_json holding a {type(trials).__name__}; expected an object "
                          "{table: {column: values}}")
    return row


def _rows_from_batch(batch: pa.RecordBatch, wanted: set[str] | None, default_bin_ms: int):
    names = batch.schema.names
    session_ids = batch.column("session_id").to_pylist()
    keep = [i for i, s in enumerate(session_ids) if wanted is None or s in wanted]
    if not keep:
        return
    counts = _matrices(batch.column("spike_counts"))
    py = {c: batch.column(c).to_pylist() for c in names
          if c not in ("spike_counts", "behavior", "session_id")}
    behavior = _matrices(batch.column("behavior")) if "behavior" in names else None
    for i in keep:
        yield _checked(CorpusRow(
            spike_counts=counts[i],
            subject_id=py["subject_id"][i],
            session_id=session_ids[i],
            segment_id=py["segment_id"][i],
            source_dataset=py["source_dataset"][i],
            bin_ms=py["bin_ms"][i] if "bin_ms" in py else default_bin_ms,
            t_start_ms=py["t_start_ms"][i] if "t_start_ms" in py else 0,
            unit_ids=py["unit_ids"][i] if "unit_ids" in py else [],
            unit_regions=py["unit_regions"][i] if "unit_regions" in py else [],
            species=py["species"][i] if "species" in py else "",
            behavior_names=py["behavior_names"][i] if "behavior_names" in py else [],
            behavior=None if behavior is None else _of_bins(behavior[i], counts[i].shape[1]),
            trials_json=py["trials_json"][i] if "trials_json" in py else "{}",
        ), default_bin_ms)
