"""``manifest.json`` as a typed record: the one place that turns a corpus manifest into JSON and
back (:func:`read_manifest` reads it; :mod:`spikefm.corpus.store` writes it).

The JSON layout, keys in this order (keys marked optional are left out when absent)::

    {
      "schema_version": 1,                 # == schema.SCHEMA_VERSION
      "spikefm_version": "0.1.0",          # optional
      "created_utc": "2025-01-01T00:00:00Z",  # optional
      "bin_ms": 20,
      "build": {...},                      # optional, BuildSettings: how the corpus was made
      "provenance": {...},                 # optional (corpus import): where the rows came from
      "splits": {"train": SplitInfo, "test": SplitInfo},
      "num_sessions": 6,                   # optional
      "num_human_sessions": 0,             # optional
      "sessions": [SessionEntry, ...],     # one per session, sorted by session_id
      "skipped": [{"input": "...", "error": "..."}]  # optional: inputs left out, and why
    }

Keys this version does not know are kept (``extra``) and written back as they were, so
``Manifest.from_dict(d).to_dict() == d`` for every manifest that validates.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import check_relative_path
from .schema import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"

#: Values of a session's ``split``: its rows are all in one split, or in both (``--split row``).
SESSION_SPLITS = ("train", "test", "both")

_FIX = "rebuild the corpus with `spikefm corpus build` or `spikefm corpus import`"


# ---------------------------------------------------------------------------------------------
# Checking JSON values


def _found(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_count_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) and x >= 0
                                       for k, x in v.items())


#: kind -> (test, what was expected). Lists are checked as JSON lists and stored as tuples.
_KINDS: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "an int"),
    "count": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "positive": (lambda v: _is_int(v) and v > 0, "an int > 0"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v), "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str_list": (_is_str_list, "a list of strings"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "count_dict": (_is_count_dict, "an object of ints >= 0"),
    "session_split": (lambda v: v in SESSION_SPLITS, f"one of {', '.join(SESSION_SPLITS)}"),
}


class ManifestError(ValueError):
    """A manifest that does not have the layout above; the message names file, key, expected
    and found."""


def _fail(source: str, key: str, expected: str, value: Any = dataclasses.MISSING) -> ManifestError:
    found = "nothing (the key is missing)" if value is dataclasses.MISSING else _found(value)
    return ManifestError(f"{source}: key '{key}' must be {expected}, found {found}; {_FIX}")


def _spec(kind: str, *, required: bool = False, default: Any = None):
    """A record field: its JSON kind, and whether a manifest must have it."""
    return field(default=default, metadata={"kind": kind, "required": required})


def _parse_fields(cls, d: Any, where: str, source: str) -> dict:
    """The known keys of ``d`` for record ``cls``, checked, plus ``extra`` (the unknown ones)."""
    if not isinstance(d, dict):
        raise _fail(source, where, "an object", d)
    kw: dict[str, Any] = {}
    names = set()
    for f in dataclasses.fields(cls):
        if "kind" not in f.metadata:  # extra, and nested records (parsed by their owner)
            continue
        names.add(f.name)
        kind, required = f.metadata["kind"], f.metadata["required"]
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in d:
            if required:
                raise _fail(source, key, _KINDS[kind][1])
            continue
        value = d[f.name]
        test, expected = _KINDS[kind]
        if not test(value):
            raise _fail(source, key, expected, value)
        kw[f.name] = tuple(value) if kind == "str_list" else value
    kw["extra"] = {k: v for k, v in d.items() if k not in names}
    return kw


def _fields_to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        if value is None:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    out.update(obj.extra)
    return out


# ---------------------------------------------------------------------------------------------
# Records


class _Record:
    """JSON <-> record for the flat records below (their fields are declared with ``_spec``)."""

    @classmethod
    def from_dict(cls, d: Any, *, where: str, source: str):
        """Check ``d`` (the JSON object at key ``where`` of file ``source``) and build the
        record; raises :class:`ManifestError`."""
        return cls(**_parse_fields(cls, d, where, source))

    def to_dict(self) -> dict:
        return _fields_to_dict(self)


@dataclass(frozen=True, kw_only=True)
class SplitInfo(_Record):
    """One split: its rows, tokens (units x bins cells), sessions and shard files (paths relative
    to the corpus folder, ``data/{split}-{i:05d}-of-{n:05d}.parquet``)."""

    num_rows: int = _spec("count", required=True)
    num_tokens: int = _spec("count", required=True)
    num_sessions: int = _spec("count", required=True)
    shards: tuple[str, ...] = _spec("str_list", required=True)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, *, where: str, source: str) -> SplitInfo:
        record = super().from_dict(d, where=where, source=source)
        for i, shard in enumerate(record.shards):
            try:
                check_relative_path(shard, what="shard path")
            except ValueError:
                raise _fail(source, f"{where}.shards[{i}]", "a path inside the corpus folder "
                            "such as data/train-00000-of-00001.parquet", shard) from None
        return record


@dataclass(frozen=True, kw_only=True)
class SkippedInput(_Record):
    """An input that was left out of the corpus, and why (one line naming the file)."""

    input: str = _spec("str", required=True)
    error: str = _spec("str", required=True)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BuildSettings(_Record):
    """How the corpus was made. ``corpus build`` records its settings and its INPUT arguments
    (``inputs``, local paths made absolute); ``corpus import`` records ``importer`` and
    ``source``. A later build into the same folder compares these (see ``build.py``)."""

    importer: str | None = _spec("str")  # "neural_pile" (corpus import)
    source: str | None = _spec("str")  # the imported repo id or folder
    max_row_tokens: int | None = _spec("positive")  # largest units x bins of a row
    test_fraction: float | None = _spec("number")  # share of tokens in the test split
    split: str | None = _spec("str")  # "session", "row", or "published" (import)
    seed: int | None = _spec("int")  # of the split and the row order
    shard_max_tokens: int | None = _spec("positive")  # cells per shard, at most
    spikes_past_end: str | None = _spec("str")  # "drop" or "error"
    source_dataset: str | None = _spec("str")  # --source, when given
    inputs: tuple[str, ...] | None = _spec("str_list")  # INPUT arguments, sorted
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SessionEntry(_Record):
    """One session of the corpus (``sessions[i]``); field order is the JSON order.

    ``spikes_past_end`` / ``recording_end_s`` appear only for sessions whose spikes after the
    recording's end were dropped (``--spikes-past-end drop``); ``segments_ordered`` only for
    imported sessions; ``original_session_id`` only for renamed ones; ``clipped_spikes`` (spikes
    of the file not in the corpus: ``num_spikes`` minus the stored counts' sum) only for built
    sessions with ``clipped_bins``.
    """

    session_id: str = _spec("str", required=True)
    subject_id: str | None = _spec("str")
    source_dataset: str | None = _spec("str")
    species: str | None = _spec("str")
    is_human: bool | None = _spec("bool")
    num_units: int | None = _spec("count")
    num_bins: int | None = _spec("count")
    bin_ms: int | None = _spec("positive")
    t_start_ms: int | None = _spec("int")
    duration_s: float | None = _spec("number")
    num_rows: int | None = _spec("count")
    num_tokens: int | None = _spec("count")
    num_spikes: int | None = _spec("count")
    clipped_bins: int | None = _spec("count")
    clipped_spikes: int | None = _spec("count")
    spikes_past_end: int | None = _spec("count")
    recording_end_s: float | None = _spec("number")
    regions: dict | None = _spec("count_dict")
    behavior_names: tuple[str, ...] | None = _spec("str_list")
    trial_tables: dict | None = _spec("count_dict")
    segments_ordered: bool | None = _spec("bool")
    provenance: dict | None = _spec("dict")
    license: str | None = _spec("str")
    original_session_id: str | None = _spec("str")
    split: str = _spec("session_split", required=True)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A corpus manifest. Build one with :func:`new_manifest`; read one with
    :func:`read_manifest`; :meth:`to_dict` gives the JSON object (the dict ``Corpus.manifest``
    returns)."""

    schema_version: int = _spec("int", required=True)
    spikefm_version: str | None = _spec("str")
    created_utc: str | None = _spec("str")
    bin_ms: int = _spec("positive", required=True)
    build: BuildSettings | None = None
    provenance: dict | None = _spec("dict")
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    num_sessions: int | None = _spec("count")
    num_human_sessions: int | None = _spec("count")
    sessions: tuple[SessionEntry, ...] = ()
    skipped: tuple[SkippedInput, ...] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, *, source: str = MANIFEST_NAME) -> Manifest:
        """Check ``d`` against the layout; raises :class:`ManifestError` (a ValueError) whose one
        line names ``source``, the key, what was expected and what was found."""
        if not isinstance(d, dict):
            raise _fail(source, "(top level)", "a JSON object", d)
        version = d.get("schema_version", dataclasses.MISSING)
        if version != SCHEMA_VERSION:
            if version is dataclasses.MISSING or not _is_int(version):
                raise _fail(source, "schema_version", f"the int {SCHEMA_VERSION}", version)
            raise ManifestError(f"{source}: schema_version {version}, this spikefm reads "
                                f"{SCHEMA_VERSION}; rebuild the corpus with this version")
        nested = {k: d[k] for k in ("build", "splits", "sessions", "skipped") if k in d}
        flat = {k: v for k, v in d.items() if k not in nested}
        kw = _parse_fields(cls, flat, "", source)
        if "build" in nested:
            kw["build"] = BuildSettings.from_dict(nested["build"], where="build", source=source)
        for key in ("splits", "sessions"):
            if key not in nested:
                raise _fail(source, key, "an object of splits" if key == "splits"
                            else "a list of sessions")
        if not isinstance(nested["splits"], dict):
            raise _fail(source, "splits", "an object of splits", nested["splits"])
        kw["splits"] = {name: SplitInfo.from_dict(sp, where=f"splits.{name}", source=source)
                        for name, sp in nested["splits"].items()}
        for key, record in (("sessions", SessionEntry), ("skipped", SkippedInput)):
            if key not in nested:
                continue
            if not isinstance(nested[key], list):
                raise _fail(source, key, "a list", nested[key])
            kw[key] = tuple(record.from_dict(x, where=f"{key}[{i}]", source=source)
                            for i, x in enumerate(nested[key]))
        ids = [s.session_id for s in kw["sessions"]]
        if len(set(ids)) != len(ids):
            dup = next(s for s in ids if ids.count(s) > 1)
            raise _fail(source, "sessions", "sessions with distinct session_id values",
                        f"{dup!r} twice")
        listed = kw.get("num_sessions")
        if listed is not None and listed != len(ids):  # an edited manifest: the sessions its rows hold are not listed
            raise _fail(source, "sessions", f"a list of the {listed} sessions num_sessions counts", ids)
        for split_name, sp in kw["splits"].items():
            in_split = sum(1 for s in kw["sessions"] if s.split in (split_name, "both"))
            if sp.num_rows and not in_split:
                raise _fail(source, "sessions", f"a list holding the sessions of the {sp.num_rows} {split_name} rows "
                            "under splits", ids)
        for i, sess in enumerate(kw["sessions"]):
            needed = ("train", "test") if sess.split == "both" else (sess.split,)
            missing = [name for name in needed if name not in kw["splits"]]
            if missing:
                raise _fail(source, f"sessions[{i}].split", "a split listed under splits "
                            f"({', '.join(sorted(kw['splits'])) or 'none listed'})", sess.split)
        return cls(**kw)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if f.name == "build":
                value = value.to_dict()
            elif f.name == "splits":
                value = {name: sp.to_dict() for name, sp in value.items()}
            elif f.name in ("sessions", "skipped"):
                value = [x.to_dict() for x in value]
            out[f.name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        """The bytes of ``manifest.json`` (indented JSON and a final newline)."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()


def distinct_session_ids(ids: list[str], keep: list[str | None] | None = None,
                         same_content: list[bool] | None = None) -> list[str]:
    """The ids a manifest can hold (distinct) for sessions with these ``ids``, in this order: the
    first session of each id keeps it, each later one gets the next ``-2``, ``-3``... suffix that
    no session has (``a, a, a-2`` -> ``a, a-3, a-2``). ``keep`` (one per session, or None) names
    the id an earlier version of the corpus gave the same recording: it stays (runs key their
    per-session parameters by it) when it is that id or one of its suffixes, or whatever it is
    where ``same_content`` (one bool per session) says the file is byte for byte the one the
    earlier version read (a file renamed since), and no other session kept it first; the other
    sessions are named around it."""
    keep = list(keep) if keep is not None else [None] * len(ids)
    same = list(same_content) if same_content is not None else [False] * len(ids)
    out: list[str | None] = [None] * len(ids)
    used: set[str] = set()
    for i, (sid, old) in enumerate(zip(ids, keep)):
        rest = old[len(sid) + 1:] if isinstance(old, str) and old.startswith(sid + "-") else None
        if old is not None and (old == sid or same[i] or (rest is not None and rest.isdigit())) and old not in used:
            out[i] = old
            used.add(old)
    taken = set(ids) | used
    for i, sid in enumerate(ids):
        if out[i] is not None:
            continue
        if sid not in used:
            new = sid
        else:
            k = 2
            while f"{sid}-{k}" in taken:
                k += 1
            new = f"{sid}-{k}"
        out[i] = new
        used.add(new)
        taken.add(new)
    return [str(x) for x in out]


def new_manifest(*, bin_ms: int, build: BuildSettings, splits: dict[str, SplitInfo],
                 sessions: list[SessionEntry], skipped: list[SkippedInput],
                 provenance: dict | None = None) -> Manifest:
    """A manifest for a corpus written now by this spikefm: version, time and the session counts
    filled in; sessions sorted by id."""
    from spikefm._version import __version__

    sessions = sorted(sessions, key=lambda s: s.session_id)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        spikefm_version=__version__,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        bin_ms=bin_ms,
        build=build,
        provenance=provenance,
        splits=splits,
        num_sessions=len(sessions),
        num_human_sessions=sum(bool(s.is_human) for s in sessions),
        sessions=tuple(sessions),
        skipped=tuple(skipped),
    )


def _what_instead(path: Path) -> str:
    """Why ``path`` is not a corpus, and what to give instead (for a user who passed the wrong path)."""
    build = "build one with `spikefm corpus build INPUT --out DIR` or `spikefm corpus import`"
    if not path.exists():
        return f"no such file or folder; give a spikefm corpus folder ({build})"
    if path.is_file() and path.name == MANIFEST_NAME:
        return f"the manifest file of a corpus; give the corpus folder, {path.parent}"
    from .nwb import is_nwb_name, nwb_in_folder

    if is_nwb_name(path) or nwb_in_folder(path) is not None:
        return (f"NWB recordings, not a spikefm corpus; make a corpus of them first: spikefm corpus build "
                f"{path} --out CORPUS_DIR")
    if path.is_dir() and (path / "config.json").is_file():
        return ("a folder with a config.json (a training run?), not a spikefm corpus (no "
                f"{MANIFEST_NAME}); give the corpus folder the run was trained on")
    return f"not a spikefm corpus (no {MANIFEST_NAME}); {build}"


def read_manifest(corpus_dir: str | Path) -> Manifest:
    """Read and check ``corpus_dir/manifest.json``.

    Raises:
        ValueError: the folder has no manifest (not a corpus), the file is not JSON, or it does
            not have the layout above (one line: file, key, expected, found, fix).
    """
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{corpus_dir}: {_what_instead(corpus_dir)}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rebuild the corpus") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc}); check its "
                         "permissions") from None
    return Manifest.from_dict(data, source=str(path))
