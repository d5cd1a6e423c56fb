"""``spikefm corpus import``: the published Neural Pile (Hugging Face) -> a spikefm corpus.

The Neural Pile (``eminorhan/neural-pile-primate``, ``eminorhan/neural-pile-rodent``) is published
as Parquet shards ``data/{train,test}-NNNNN-of-NNNNN.parquet`` whose rows have five columns:
``spike_counts`` (list<list<uint8>>, units x 20 ms bins), ``subject_id``, ``session_id``,
``segment_id`` (``segment_0``, ``segment_1``... for sessions cut into chunks) and
``source_dataset`` (absent from some subsets). The importer keeps every row and the published
train/test split, and adds spikefm's columns with defaults (see :data:`schema.ROW_SCHEMA`):

- ``bin_ms`` = 20; ``t_start_ms`` from the segment order when a session's segments are numbered
  0..k-1 with the same units (start = bins of the earlier segments x bin_ms), else 0 for every
  row of the session, recorded as ``segments_ordered: false`` in its manifest entry and named in
  a warning: ``generate --prompt`` then takes a prompt from inside one row, and the windows of
  the masked families (ndt, neds) refuse the session (leave it out with ``--sessions``);
- unit ids ``"0".."n-1"``, regions ``"unknown"``, no behaviour, no trials;
- ``species`` from :data:`NEURAL_PILE_SPECIES` by source name, else ``""``.

Files that carry spikefm's own columns (a spikefm corpus's shards, e.g. one uploaded to the Hub and
downloaded again) keep them instead of the defaults: bin width, start times, unit ids and
regions, species, behaviour and trials, so such a corpus round-trips (a null unit id becomes the
unit's index, a null region ``"unknown"``; each session's licence and provenance, which the rows do
not carry, come from the ``manifest.json`` beside the shards when there is one). One corpus has one bin
width: files whose rows give different ``bin_ms`` (or a ``bin_ms`` other than the Neural Pile's
20 beside rows without one) are refused.

Splits: a folder with a dataset card (``README.md`` whose YAML front matter has ``configs``)
gets them from the ``data_files`` of its default config (marked ``default: true``, else named
``default``, else the only one; paths may be globs; a ``data_dir`` limits it to the files under
that folder, its paths relative to it), as ``datasets.load_dataset`` does; data files the card
does not list are left out with a warning (listed under ``skipped``), and a card of several
configs and no default is refused. Without a card (or with a ``data_dir`` and no ``data_files``),
the names decide as ``datasets`` reads them: when any file lies in a folder naming a split, the
folders (the innermost naming one; files in none are left out with a warning), else the last
split word of each file name, files naming none imported as train with a warning. A split word
is found as ``datasets`` finds it (:data:`_SPLIT_WORD`: train / training, test / testing / eval /
evaluation, validation / valid / val / dev, set off by ``-._``, a space or a digit). Only train
and test are imported.

Before anything is written, each file's known columns are checked against the Arrow types the
import reads (ids: string, or integer read as its text; ``unit_ids``: list of strings or
integers; ``unit_regions`` / ``behavior_names``: list<string>; ``species`` / ``source_dataset`` /
``trials_json``: string; ``behavior``: list<list<number>>; ``bin_ms`` / ``t_start_ms``: integer,
or floats holding whole numbers); another type is refused naming the file, column and both types.
Rows without a ``session_id`` or ``subject_id`` are refused (a row without a subject would split
its session); rows with no units or no bins are left out (counted in a warning). Rows whose own
``t_start_ms`` make two rows of a session overlap, or are not a whole number of bins apart, are
refused, and so are ``trials_json`` tables that are not columns of one length. A folder whose Hugging Face shard
names (``train-00001-of-00003.parquet``) show missing shards is imported with a warning naming
them (they are listed under ``skipped`` in the manifest); one file named as the source is
imported alone, without that check. A link to a missing file (an interrupted download) is
refused. Rows that repeat the (source, subject, session, segment) of an earlier row are imported
as they are, with a warning (two copies of the same files in the folder?), unless their own
``t_start_ms`` make them overlap: then the import is refused (see above). ``--out`` may not lie
inside the source folder.

Counts are kept as published; cells equal to 255 (the uint8 ceiling, where larger counts were
clipped) are counted into each session's ``clipped_bins``. Rows are streamed one record batch at a
time in two passes (the first reads segment lengths for ``t_start_ms``, the second writes) into a
new version of the corpus folder, which replaces the old one (shards and ``manifest.json``
together) in one step when complete, with the folder locked throughout
(:mod:`spikefm.corpus.store`, the writer ``corpus build`` uses too).

File names from a Hugging Face repo are listed first (a dry run) and must be plain relative
paths; a listing with an absolute path or ``..`` is refused before anything is downloaded.

Example::

    spikefm corpus import eminorhan/neural-pile-primate --out np_primate
    spikefm corpus import ./neural-pile-primate --out np_primate     # a downloaded copy
"""
from __future__ import annotations

import json
import os
import re
import reprlib
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import check_relative_path, first_line
from .info import flat_counts
from .manifest import (BuildSettings, Manifest, SessionEntry, SkippedInput, SplitInfo,
                       distinct_session_ids, new_manifest)
from .schema import NEURAL_PILE_COLUMNS, ROW_SCHEMA, SPLITS
from .session import is_human_species
from .store import STAGING, VersionWriter, check_inputs_outside, inspect_out_dir, open_corpus_dir

#: Species of the Neural Pile's component datasets (``source_dataset`` values, which are the
#: component Hugging Face repo names), from the dataset cards of neural-pile-primate and
#: neural-pile-rodent. Macaque components are not all one species, so they get the genus.
NEURAL_PILE_SPECIES: dict[str, str] = {
    **{name: "Homo sapiens" for name in ("card", "willett", "h1", "h2")},
    "moore": "Callithrix jacchus",
    **{name: "Macaca sp." for name in (
        "xiao", "neupane-ppc", "chen", "churchland", "neupane-entorhinal", "kim", "even-chen",
        "temmar", "papale", "perich", "wojcik", "makin", "lanzarini", "athalye", "m1-a", "m1-b",
        "rajalingham", "dmfc-rsg", "m2", "area2-bump")},
    **{name: "Rattus norvegicus" for name in ("petersen", "grosmark", "gonzalez", "fujisawa")},
    **{name: "Mus musculus" for name in (
        "vbn", "ibl", "shield", "vcn", "vcn-2", "v2h", "oddball", "illusion", "huszar",
        "steinmetz", "lemerre", "peyrache", "prince", "senzai", "finkelstein", "giocomo",
        "steinmetz-2", "jaramillo", "mehrotra", "iurilli", "li")},
}

#: Files fetched from a Hugging Face dataset repo: the data, and the dataset card (its YAML
#: ``configs`` can map files to splits).
HF_ALLOW_PATTERNS = ["*.parquet", "*.arrow", "README.md", "manifest.json"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
#: a split word in a file or folder name, as ``datasets`` finds one: between the start or one of
#: ``-._``, a space or a digit, and one of them or the end
_SPLIT_WORD = re.compile(r"(?:^|[-_. 0-9])(training|train|testing|test|evaluation|eval|validation|valid|val|dev)"
                         r"(?=[-_. 0-9]|$)")
#: A folder that names a split: its name starts with a split word (after separators or digits),
#: followed by its end or a separator (``train/``, ``test_2/``, ``00-val/``, ``test_data/``, as
#: ``datasets`` reads them); a split word later in the name names none, so that a repository or
#: cache folder named ``pile-test-copy`` or ``datasets--org--pile-test`` does not make every file
#: under it a test file (``datasets`` would).
_SPLIT_FOLDER = re.compile(r"[-_. 0-9]*(training|train|testing|test|evaluation|eval|validation|valid|val|dev)"
                           r"(?:[-_. 0-9].*)?")
_SPLIT_SYNONYMS = {"training": "train", "testing": "test", "evaluation": "test", "eval": "test",
                   "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation"}
_SEGMENT_INDEX = re.compile(r"(\d+)$")
_REQUIRED = ("spike_counts", "subject_id", "session_id", "segment_id")
#: spikefm's columns beyond the Neural Pile's five: kept when a file has them.
_EXTRAS = tuple(n for n in ROW_SCHEMA.names if n not in NEURAL_PILE_COLUMNS)
_SHARD_NAME = re.compile(r"^(?P<prefix>.*)-(?P<index>\d+)-of-(?P<total>\d+)\.(?:parquet|arrow)$")
_BATCH_ROWS = 8


def _warn(msg: str) -> None:
    print(f"spikefm: warning: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Finding the published files


@dataclass
class _DataFile:
    path: Path
    split: str
    fmt: str  # "parquet" or "arrow"


def _resolve_source(source: str, cache_dir: str | None, revision: str | None
                    ) -> tuple[Path, dict, str]:
    """Returns (local folder or file, provenance, name for rows without source_dataset)."""
    p = Path(source).expanduser()
    is_repo = source.startswith("hf:") or (not p.exists() and _REPO_ID.fullmatch(source))
    if not is_repo:
        if not p.exists():
            raise ValueError(f"{source}: no such folder; give a folder of Neural Pile Parquet or "
                             "Arrow files, or a Hugging Face dataset repo id like "
                             "eminorhan/neural-pile-primate")
        if p.is_dir():
            return p, {"path": str(p.resolve())}, p.resolve().name
        return p, {"path": str(p.resolve())}, p.resolve().parent.name

    repo_id = source[3:] if source.startswith("hf:") else source
    if "@" in repo_id:
        repo_id, at_rev = repo_id.split("@", 1)
        revision = revision or at_rev
    if not _REPO_ID.fullmatch(repo_id):
        raise ValueError(f"{source}: not a Hugging Face repo id; expected OWNER/NAME[@REVISION], "
                         "e.g. eminorhan/neural-pile-primate")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError("importing from the Hugging Face Hub needs huggingface_hub: "
                          "pip install 'spikefm[hf]'") from None
    def failed(exc: Exception) -> ValueError:  # network, auth, missing repo: one line, the fix
        return ValueError(f"{repo_id}: download from the Hugging Face Hub failed ({first_line(exc)}); check "
                          "the repo id, your network and HF_TOKEN, or give a local folder")

    try:  # list first: every name must be a plain relative path before anything is written
        names, commit = _hub_listing(repo_id, revision, cache_dir)
    except Exception as exc:
        cached = _cached_snapshot(repo_id, revision, cache_dir)
        if cached is None:
            raise failed(exc) from exc
        _warn(f"{repo_id}: the Hugging Face Hub could not be reached ({first_line(exc)}); importing the "
              f"copy already downloaded to {cached}")
        return cached, {"hf_repo": repo_id, "revision": cached.name}, repo_id.split("/")[-1]
    for name in names:
        check_relative_path(name, what=f"{repo_id}: repo file name")
    try:
        local = snapshot_download(repo_id, repo_type="dataset", revision=commit,
                                  cache_dir=cache_dir, allow_patterns=HF_ALLOW_PATTERNS)
    except Exception as exc:
        raise failed(exc) from exc
    local = Path(local)
    # Hub snapshots live in .../snapshots/<commit sha>: that is the exact revision imported.
    resolved = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else (commit or "main")
    return local, {"hf_repo": repo_id, "revision": resolved}, repo_id.split("/")[-1]


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | None) -> Path | None:
    """The snapshot of ``repo_id`` a download already put in the Hub cache (offline), or None."""
    import huggingface_hub

    try:
        local = Path(huggingface_hub.snapshot_download(
            repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
            allow_patterns=HF_ALLOW_PATTERNS, local_files_only=True))
    except Exception:  # nothing cached for this repo / revision
        return None
    return local if local.is_dir() else None


def _hub_listing(repo_id: str, revision: str | None, cache_dir: str | None
                 ) -> tuple[list[str], str | None]:
    """(names of the files a download would fetch, their commit), without downloading."""
    import fnmatch

    import huggingface_hub

    try:
        listing = huggingface_hub.snapshot_download(
            repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir,
            allow_patterns=HF_ALLOW_PATTERNS, dry_run=True)
    except TypeError:  # huggingface_hub before dry runs: list the repo instead
        info = huggingface_hub.HfApi().dataset_info(repo_id, revision=revision)
        names = [s.rfilename for s in info.siblings or []
                 if any(fnmatch.fnmatch(s.rfilename, p) for p in HF_ALLOW_PATTERNS)]
        return names, info.sha
    return [f.filename for f in listing], (listing[0].commit_hash if listing else revision)


def _split_word(parts) -> str | None:
    """The split the first of ``parts`` naming one names (its last split word); None if none."""
    for part in parts:
        words = _SPLIT_WORD.findall(part)
        if words:
            return _SPLIT_SYNONYMS.get(words[-1], words[-1])
    return None


def _splits_from_names(files: list[Path], root: Path, skipped: list[dict]) -> list[tuple[Path, str | None]]:
    """(file, split or None) from the names, as ``datasets`` reads a folder without a card: when
    any file lies in a folder naming a split (``train/``, ``test_2/``, ``test_data/``...: the split
    word first, so that a repository or cache folder called ``pile-test-copy`` is none), the folders decide (the
    innermost naming one) and files in none are left out (with a warning); else each file's name
    (its last split word: ``pile-test-copy-train.arrow`` is train)."""
    def folder_split(f: Path) -> str | None:  # the innermost folder that is a split's
        for part in reversed(f.parent.relative_to(root).parts) if f.parent != root else ():
            m = _SPLIT_FOLDER.fullmatch(part)
            if m:
                return _SPLIT_SYNONYMS.get(m.group(1), m.group(1))
        return None

    by_folder = {f: folder_split(f) for f in files}
    if not any(by_folder.values()):
        return [(f, _split_word([f.name])) for f in files]
    outside = [f for f, split in by_folder.items() if split is None]
    if outside:
        _warn(f"{len(outside)} data file(s) lie in no split folder while others do (first: {outside[0]}); "
              "left out, as datasets.load_dataset leaves them out (move them into a train/ or test/ folder "
              "to import them)")
        skipped += [{"input": str(f), "error": "in no split folder"} for f in outside]
    return [(f, split) for f, split in by_folder.items() if split is not None]


def _visible_files(root: Path) -> list[Path]:
    """Every file under ``root`` outside hidden folders, following folder links (a spikefm
    corpus's ``data`` is a link into its hidden ``.versions/``), each real folder once. A link to
    a data file that does not exist (a Hub snapshot whose download never finished) is refused."""
    seen, out, dangling = set(), [], []
    for here, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link cycle or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            f = Path(here) / n
            if n.startswith("."):
                continue
            if f.is_file():
                out.append(f)
            elif f.is_symlink() and not f.exists() and f.suffix in (".parquet", ".arrow"):
                dangling.append(f)
    if dangling:
        raise ValueError(f"{root}: {len(dangling)} data file link(s) point to nothing (first: "
                         f"{sorted(dangling)[0]}), as after an interrupted download; download "
                         "again (the Hub client resumes) or remove the broken links")
    return out


def _missing_shards(files: list[Path]) -> list[str]:
    """Hugging Face shard names (``train-00001-of-00003.parquet``) absent beside their siblings."""
    groups: dict[tuple, set[int]] = {}
    for f in files:
        m = _SHARD_NAME.match(f.name)
        if m:
            ext = f.suffix
            groups.setdefault((f.parent, m["prefix"], m["total"], ext, len(m["index"])),
                              set()).add(int(m["index"]))
    missing = []
    for (parent, prefix, total, ext, width), have in sorted(groups.items(), key=str):
        for i in range(int(total)):
            if i not in have:
                missing.append(str(parent / f"{prefix}-{i:0{width}d}-of-{total}{ext}"))
    return missing


def _glob_regex(pattern: str) -> re.Pattern:
    """A dataset card's path pattern (Hugging Face's fsspec globs) as a regex to fullmatch a
    ``/``-separated path: ``*`` and ``?`` stay inside one folder, ``**`` spans folders,
    ``[...]`` is a set of characters."""
    out, i = [], 0
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and pattern.find("]", i + 2) != -1:
            j = pattern.find("]", i + 2)
            body = pattern[i + 1:j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _card_data_files(root: Path) -> tuple[Path, list[tuple[str, str]] | None, str] | None:
    """``(card, pairs, data_dir)`` of the dataset card ``root/README.md``'s default config (the
    one marked ``default: true``, else the one named ``default``, else the only one), as
    ``datasets.load_dataset`` reads them: the (split, path pattern) pairs of its ``data_files``
    (None without them: file and folder names decide) and its ``data_dir`` (``""`` without one;
    the config's files are those under it, its patterns relative to it). None without a card,
    front matter, ``configs``, or a config with ``data_files`` or ``data_dir``.
    Raises ValueError for a card that cannot be read that way, or several configs and no default."""
    card = root / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
    m = re.match(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$", text, re.S | re.M)
    if not m:
        return None
    try:
        import yaml
    except ImportError:
        raise ValueError(f"{card}: reading the dataset card's configs (which files are train and "
                          "which test) needs PyYAML: pip install pyyaml") from None
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())  # PyYAML's first line omits what and where (line, column)
        raise ValueError(f"{card}: its YAML front matter does not parse ({where[:300]}); fix "
                         "it, or move the README.md out of the folder to take the splits from the "
                         "file names") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not configs:
        return None

    def bad_card(got) -> ValueError:
        return ValueError(f"{card}: the dataset card's configs must be a list of mappings with "
                          "config_name and data_files (split and path), as Hugging Face reads "
                          f"them; got {reprlib.repr(got)}; fix the card, or move it out of the "
                          "folder to take the splits from the file names")

    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise bad_card(configs)
    chosen = ([c for c in configs if c.get("default") is True]
              or [c for c in configs if c.get("config_name") == "default"]
              or (configs if len(configs) == 1 else []))
    if len(chosen) != 1:
        names = ", ".join(str(c.get("config_name")) for c in configs)
        raise ValueError(f"{card}: the dataset card defines {len(configs)} configs ({names}) and "
                         "no single default; spikefm imports one: mark the one to import "
                         "`default: true` in the card (of a downloaded copy), or import a folder "
                         "holding only its files")
    files, data_dir = chosen[0].get("data_files"), chosen[0].get("data_dir") or ""  # null: none, as datasets reads it
    if not isinstance(data_dir, str) or Path(data_dir).is_absolute() or ".." in Path(data_dir).parts:
        raise ValueError(f"{card}: the default config's data_dir must be a folder inside the dataset, "
                         f"got {reprlib.repr(data_dir)}; fix the card, or move it out of the folder to "
                         "take the splits from the file names")
    data_dir = Path(data_dir).as_posix().strip("/") if data_dir.strip("/. ") else ""
    if files is None:
        return (card, None, data_dir) if data_dir else None
    if isinstance(files, dict):
        entries = [{"split": k, "path": v} for k, v in files.items()]
    elif isinstance(files, (str, list)):
        entries = [e if isinstance(e, dict) else {"split": "train", "path": e}
                   for e in ([files] if isinstance(files, str) else files)]
    else:
        raise bad_card(files)
    pairs = []
    for e in entries:
        paths = e.get("path")
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or \
                not all(isinstance(x, str) for x in paths) or not isinstance(e.get("split", "train"), str):
            raise bad_card(e)
        pairs += [(e.get("split", "train"), x) for x in paths]
    return card, pairs, data_dir


def _splits_from_card(card: Path, pairs: list[tuple[str, str]], files: list[Path], root: Path,
                      skipped: list[dict]) -> list[tuple[Path, str]]:
    """(file, split) for the files the card's patterns match; the others are left out (with a
    warning, as ``datasets.load_dataset`` leaves them out)."""
    compiled = [(split, pat, _glob_regex(pat)) for split, pat in pairs]
    used: set[str] = set()
    out, unlisted = [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        hits = {}
        for split, pat, rx in compiled:
            if rx.fullmatch(rel):
                hits.setdefault(split, pat)
                used.add(pat)
        if len(hits) > 1:
            raise ValueError(f"{card}: {rel} is matched by the patterns of splits "
                             + ", ".join(f"{k} ({v})" for k, v in hits.items())
                             + "; a file belongs to one split: fix the card's data_files")
        if hits:
            out.append((f, next(iter(hits))))
        else:
            unlisted.append(f)
    for split, pat, _ in compiled:
        if pat not in used:
            _warn(f"{card}: the dataset card's {split} pattern {pat} matches no data file here; "
                  "imported without it (download its files to import them too)")
    if unlisted:
        _warn(f"{len(unlisted)} data file(s) are not in the data_files of the dataset card {card} "
              f"(first: {unlisted[0]}); left out, as datasets.load_dataset leaves them out (add "
              "them to the card's data_files to import them)")
        skipped += [{"input": str(f), "error": "not in the dataset card's data_files"}
                    for f in unlisted]
    return out


def _find_files(root: Path, skipped: list[dict]) -> list[_DataFile]:
    """The data files to import and their splits: from the dataset card's ``configs`` when
    ``root`` is a folder with one (``README.md`` with YAML front matter), else from file and
    folder names (:func:`_splits_from_names`), files naming no split going to train."""
    single = root.is_file()
    card = None if single else _card_data_files(root)
    if single:
        files = [root]
        base = root.parent
    else:
        base = root
        files = sorted(_visible_files(root))
    if card is not None and card[2]:  # the default config's folder: its files only, named from it
        base = root / card[2]
        outside = [f for f in files if not f.is_relative_to(base) and f.suffix in (".parquet", ".arrow")]
        if outside:
            _warn(f"{len(outside)} data file(s) lie outside {card[2]}/, the data_dir of the dataset card "
                  f"{card[0]}'s default config (first: {outside[0]}); left out, as datasets.load_dataset "
                  "leaves them out (mark their config `default: true` in the card to import it instead)")
            skipped += [{"input": str(f), "error": "outside the dataset card's data_dir"} for f in outside]
        files = [f for f in files if f.is_relative_to(base)]
    parquet = [f for f in files if f.suffix == ".parquet"]
    # datasets' cache also holds cache-*.arrow files of map/filter results: not the dataset.
    arrow = [f for f in files if f.suffix == ".arrow" and not f.name.startswith("cache-")]
    chosen, fmt = (parquet, "parquet") if parquet else (arrow, "arrow")
    if not chosen and card is not None and card[2]:
        raise ValueError(f"{card[0]}: the default config's data_dir {card[2]} holds no Parquet or Arrow file"
                         f"{'' if base.is_dir() else ' (no such folder)'}; fix the dataset card's data_dir, or "
                         "download that folder's files")
    if not chosen:
        raise ValueError(f"{root}: holds no Parquet (data/train-*.parquet) or Arrow (*.arrow) "
                         "files; give the folder of a downloaded Neural Pile dataset or its "
                         "Hugging Face repo id")
    # one file named by the user is imported alone: its sister shards are not looked for
    missing = [] if single else _missing_shards(chosen)
    if missing:
        _warn(f"{len(missing)} shard(s) missing beside their siblings (first: {missing[0]}); the "
              "files found are imported; download the rest to import the whole dataset")
        skipped += [{"input": m, "error": "shard not found (an incomplete download?)"}
                    for m in missing]
    if card is not None and card[1] is not None:
        split_of = _splits_from_card(card[0], card[1], chosen, base, skipped)
    else:
        split_of = _splits_from_names(chosen, base, skipped)
        unnamed = [f for f, split in split_of if split is None]
        if unnamed:
            _warn(f"{len(unnamed)} file(s) name no split (train, test, validation) in their file "
                  f"or folder names, and no dataset card (README.md with configs) maps them "
                  f"(first: {unnamed[0]}); spikefm imported them as train")
    out = []
    for f, split in split_of:
        split = split or "train"
        if split not in SPLITS:
            _warn(f"{f}: split '{split}' is not one of {SPLITS}; skipped")
            skipped.append({"input": str(f), "error": f"split '{split}' not imported"})
            continue
        out.append(_DataFile(f, split, fmt))
    if not out:
        raise ValueError(f"{root}: no file of the train or test split; found only "
                         + ", ".join(s["input"] for s in skipped[:3]))
    return out


def _unreadable(path: Path, exc: BaseException, what: str) -> ValueError:
    """One line for a data file that cannot be read (a damaged shard: download it again)."""
    return ValueError(f"{_shown(path)}: not a readable {what} ({first_line(exc)}); download that file again "
                      "(it may be damaged or incomplete)")


def _shown(path: Path) -> str:
    """``path`` as text a terminal can print (undecodable bytes of its name escaped)."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _parquet_file(path: Path) -> pq.ParquetFile:
    """A Parquet file opened from Python (a path pyarrow cannot take as text, e.g. a name that is
    not UTF-8, still opens), or a one-line ValueError naming it."""
    try:
        return pq.ParquetFile(open(path, "rb"))  # noqa: SIM115 - closed with the ParquetFile
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(path, exc, "Parquet file") from None


def _iter_batches(f: _DataFile, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of one file, a few rows at a time (never the whole file); a file damaged
    past its footer is said in one line naming it."""
    if f.fmt == "parquet":
        pf = _parquet_file(f.path)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        yield from _read(pf.iter_batches(batch_size=_BATCH_ROWS, columns=cols), f.path, "Parquet file")
        return
    for batch in _read(_open_arrow(f.path)[1], f.path, "Arrow file"):
        if columns is not None:
            batch = batch.select([c for c in columns if c in batch.schema.names])
        for start in range(0, batch.num_rows, _BATCH_ROWS):
            yield batch.slice(start, _BATCH_ROWS)


def _read(batches: Iterator[pa.RecordBatch], path: Path, what: str) -> Iterator[pa.RecordBatch]:
    """``batches`` as they are read, a read error (e.g. "Corrupt snappy compressed data") said in
    one line naming ``path``."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path, exc, what) from None
        yield batch


def _open_arrow(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """An Arrow IPC stream (what ``datasets`` writes) or file, memory-mapped."""
    try:
        source = pa.memory_map(os.fsdecode(path))
    except (OSError, UnicodeError, pa.ArrowException) as exc:
        raise _unreadable(path, exc, "Arrow file") from None
    try:
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid:
        source.seek(0)
    try:
        reader = pa.ipc.open_file(source)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: not an Arrow IPC stream or file ({exc})") from None
    return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def _file_schema(f: _DataFile) -> pa.Schema:
    if f.fmt == "parquet":
        return _parquet_file(f.path).schema_arrow
    return _open_arrow(f.path)[0]


# ---------------------------------------------------------------------------------------------
# Pass 1: shapes of every row


@dataclass
class _Session:
    source: str
    subject: str
    session: str
    rows: list[int] = field(default_factory=list)  # global row indices
    session_id: str = ""  # after de-duplication
    t_start_known: bool = False
    # from spikefm's own columns, when the rows carry them
    species: str = ""
    regions: dict[str, int] | None = None
    region_units: int = -1  # units of the row the regions come from (the largest)
    behavior_names: tuple[str, ...] = ()
    trial_starts: dict[str, set] = field(default_factory=dict)  # table -> its trials' start times


@dataclass
class _Rows:
    """Per-row facts from pass 1, indexed by the global row number (file order, row order)."""

    session_key: list[tuple[str, str, str]] = field(default_factory=list)
    segment_id: list[str] = field(default_factory=list)
    num_units: list[int] = field(default_factory=list)
    num_bins: list[int] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    t_start_ms: list[int] = field(default_factory=list)
    keep: list[bool] = field(default_factory=list)  # False: no units or no bins, left out
    bin_ms: list[int | None] = field(default_factory=list)  # the row's own bin_ms column
    given_t_start: list[int | None] = field(default_factory=list)  # its own t_start_ms
    origin: list[str] = field(default_factory=list)  # "FILE row N", for messages

    @property
    def kept(self) -> list[int]:
        return [r for r, k in enumerate(self.keep) if k]


def _check_counts_column(col: pa.Array, where: str) -> None:
    t = col.type
    ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and \
        (pa.types.is_list(t.value_type) or pa.types.is_large_list(t.value_type)) and \
        pa.types.is_integer(t.value_type.value_type)
    if not ok:
        raise ValueError(f"{where}: spike_counts must be list<list<uint8>> (units x bins integer "
                         f"counts), got {t}; is this a Neural Pile dataset?")
    if col.null_count or col.values.null_count or col.values.values.null_count:
        raise ValueError(f"{where}: spike_counts holds nulls; every row must be a full units x "
                         "bins matrix of counts")


def _row_shapes(col: pa.Array, where: str) -> list[tuple[int, int]]:
    """(num_units, num_bins) of every row; raises if a row's units have different lengths."""
    outer = col.offsets.to_numpy()
    inner = col.values.offsets.to_numpy()
    out = []
    for r in range(len(col)):
        lens = np.diff(inner[outer[r]:outer[r + 1] + 1])
        if lens.size and (lens != lens[0]).any():
            raise ValueError(f"{where}: row {r} has units of different lengths "
                             f"({int(lens.min())}..{int(lens.max())} bins); not a units x bins "
                             "matrix")
        out.append((int(lens.size), int(lens[0]) if lens.size else 0))
    return out


def _is_text(t: pa.DataType) -> bool:
    """string, large_string, or dictionary-encoded strings (pandas categoricals)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list_of(t: pa.DataType, item) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
        and (pa.types.is_null(t.value_type) or item(t.value_type))


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


#: What each known column must hold: (test of its Arrow type, the type expected in words, what
#: to do instead). Ids may be integers (imported as their decimal text, as ``datasets`` shows
#: them); ``bin_ms`` and ``t_start_ms`` may be floats holding whole numbers (as pandas writes an
#: integer column with gaps), checked value by value in :func:`_check_extras`.
_COLUMN_TYPES: dict[str, tuple] = {
    **{name: (lambda t: _is_text(t) or pa.types.is_integer(t), "string (or integer)",
              "write one id string per row")
       for name in ("subject_id", "session_id", "segment_id")},
    **{name: (_is_text, "string", "write one string per row") for name in ("source_dataset", "species")},
    "trials_json": (_is_text, "string (a JSON object of trial tables)",
                    "write each row's trial tables as one JSON string"),
    "unit_ids": (lambda t: _is_list_of(t, lambda v: _is_text(v) or pa.types.is_integer(v)),
                 "list<string> (or list<integer>)", "write a list of one id per unit"),
    "unit_regions": (lambda t: _is_list_of(t, _is_text), "list<string>",
                     "write a list of one region name per unit"),
    "behavior_names": (lambda t: _is_list_of(t, _is_text), "list<string>",
                       "write a list of one name per behaviour channel"),
    "behavior": (lambda t: _is_list_of(t, lambda v: _is_list_of(v, _is_number)),
                 "list<list<float32>>", "write channels x bins numbers per row"),
    "bin_ms": (_is_number, "integer (ms)", "write whole milliseconds"),
    "t_start_ms": (_is_number, "integer (ms)", "write whole milliseconds"),
}


#: What the import does for a row without a spikefm column (see the module docstring).
_DEFAULTS = {
    "source_dataset": "the folder or repo name", "bin_ms": "20 ms, the Neural Pile's",
    "t_start_ms": "start times then come from the segment numbers", "unit_ids": 'ids "0".."n-1"',
    "unit_regions": 'regions "unknown"', "species": "species then come from the source name",
    "behavior_names": "no behaviour", "behavior": "no behaviour", "trials_json": "no trials",
}


def _check_column_types(schema: pa.Schema, path: Path) -> None:
    """Refuse a file whose known columns (other than ``spike_counts``, checked with its values)
    are not of the types the import reads, before anything is written. A column of nulls only
    (Arrow's null type) passes: its rows have no value."""
    for name, (ok, expected, fix) in _COLUMN_TYPES.items():
        if name not in schema.names:
            continue
        t = schema.field(name).type
        if pa.types.is_null(t) or ok(t):
            continue
        drop = "" if name not in _DEFAULTS else f", or leave the column out ({_DEFAULTS[name]})"
        raise ValueError(f"{path}: column {name} is {t}, expected {expected}; {fix}{drop}")


def _strings(batch: pa.RecordBatch, name: str, where: str = "", first_row: int = 0) -> list[str | None]:
    if name not in batch.schema.names:
        return [None] * batch.num_rows
    col = batch.column(name)
    try:
        return col.cast(pa.string()).to_pylist()
    except (UnicodeDecodeError, pa.ArrowInvalid):
        for i in range(len(col)):  # the first value that is not UTF-8 text, named
            try:
                col.slice(i, 1).cast(pa.string()).to_pylist()
            except (UnicodeDecodeError, pa.ArrowInvalid):
                raw = col.slice(i, 1).cast(pa.binary())[0].as_py()
                raise ValueError(f"{where}: row {first_row + i}'s {name} is not UTF-8 text (found {raw!r}); "
                                 "Neural Pile ids are UTF-8 strings: re-encode that column (e.g. from "
                                 "Latin-1) and import again") from None
        raise


def _column(batch: pa.RecordBatch, name: str) -> list:
    return batch.column(name).to_pylist() if name in batch.schema.names else [None] * batch.num_rows


def _check_extras(where: str, row: int, n_units: int, n_bins: int, ex: dict) -> dict:
    """The spikefm columns of one row must describe its units x bins matrix. Returns its trial
    tables (parsed ``trials_json``; ``{}`` without one)."""
    for name in ("unit_ids", "unit_regions"):
        if ex[name] is not None and len(ex[name]) != n_units:
            raise ValueError(f"{where}: row {row} has {len(ex[name])} {name} for {n_units} units; "
                             "each unit needs one")
    if ex["behavior"] is not None:
        names = ex["behavior_names"] or []
        shapes = {len(b or []) for b in ex["behavior"]}
        if len(ex["behavior"]) != len(names) or (shapes and shapes != {n_bins}):
            raise ValueError(f"{where}: row {row} has behavior of {len(ex['behavior'])} channel(s) x "
                             f"{sorted(shapes)} bins for {len(names)} behavior_names and {n_bins} "
                             "bins; expected one series of the row's length per name")
    for name in ("bin_ms", "t_start_ms"):  # a float column: whole numbers only
        v = ex[name]
        if isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"{where}: row {row} has {name} {v!r} in a float column; "
                                 f"expected whole milliseconds: round the column to int64 ms, or "
                                 f"leave it out ({_DEFAULTS[name]})")
            ex[name] = int(v)
    b = ex["bin_ms"]
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b <= 0):
        raise ValueError(f"{where}: row {row} has bin_ms {b!r}; expected a positive number of ms")
    if ex["trials_json"] is None:
        return {}
    try:
        tables = json.loads(ex["trials_json"])
        if not isinstance(tables, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ValueError(f"{where}: row {row}'s trials_json is not a JSON object of trial "
                         f"tables ({exc})") from None
    for name, cols in tables.items():
        lengths = {len(v) for v in cols.values() if isinstance(v, list)} if isinstance(cols, dict) else set()
        if not isinstance(cols, dict) or not all(isinstance(v, list) for v in cols.values()) or len(lengths) > 1:
            found = (f"a {type(cols).__name__}" if not isinstance(cols, dict) else
                     f"columns of lengths {sorted(lengths)}" if len(lengths) > 1 else
                     "a column that is not a list")
            raise ValueError(f"{where}: row {row}'s trials_json table {name!r} holds {found}; expected "
                             'each table as {"column": [one value per trial], ...} with columns of one '
                             "length (as spikefm corpus build writes it)")
    return tables


def _scan(files: list[_DataFile], default_source: str, progress: bool, skipped: list[dict]
          ) -> tuple[_Rows, dict[tuple, _Session]]:
    """Pass 1: every row's shape and metadata, the sessions; rows with no units or bins are left
    out (added to ``skipped``)."""
    from ..progress import progress_bar

    rows = _Rows()
    sessions: dict[tuple[str, str, str], _Session] = {}
    missing_source = empty = 0
    first_copy: dict[tuple, str] = {}
    repeated: list[str] = []
    with progress_bar(total=len(files), description="scanning files", enabled=progress) as bar:
        for f in files:
            schema = _file_schema(f)
            names = schema.names
            absent = [c for c in _REQUIRED if c not in names]
            if absent:
                raise ValueError(f"{f.path}: missing column(s) {', '.join(absent)}; a Neural Pile "
                                 f"file has {', '.join(NEURAL_PILE_COLUMNS)} (found "
                                 f"{', '.join(names) or 'none'})")
            _check_column_types(schema, f.path)
            where = _shown(f.path)
            in_file = 0
            for batch in _iter_batches(f, [*NEURAL_PILE_COLUMNS, *_EXTRAS]):
                col = batch.column("spike_counts")
                _check_counts_column(col, where)
                shapes = _row_shapes(col, where)
                extras = {name: _column(batch, name) for name in _EXTRAS}
                for i, ((n_units, n_bins), subj, sess, seg, src) in enumerate(zip(
                        shapes, *(_strings(batch, name, where, in_file) for name in
                                  ("subject_id", "session_id", "segment_id", "source_dataset")))):
                    row_in_file = in_file + i
                    if not sess:
                        raise ValueError(f"{where}: row {row_in_file} has no session_id (found "
                                         f"{sess!r}); every Neural Pile row names its session")
                    if not subj:  # else one session's rows would be split into two sessions
                        raise ValueError(f"{where}: row {row_in_file} (session {sess}) has no "
                                         f"subject_id (found {subj!r}); every Neural Pile row names "
                                         "its subject: fill it in (the subject of the session's "
                                         "other rows)")
                    if not src:
                        missing_source += 1
                        src = default_source
                    ex = {name: extras[name][i] for name in _EXTRAS}
                    trial_tables = _check_extras(where, row_in_file, n_units, n_bins, ex)
                    key = (src, subj, sess)
                    rows.session_key.append(key)
                    rows.origin.append(f"{where} row {row_in_file}")
                    rows.segment_id.append(seg or "")
                    rows.num_units.append(n_units)
                    rows.num_bins.append(n_bins)
                    rows.split.append(f.split)
                    rows.bin_ms.append(ex["bin_ms"])
                    rows.given_t_start.append(ex["t_start_ms"])
                    rows.keep.append(n_units > 0 and n_bins > 0)
                    if not rows.keep[-1]:
                        empty += 1
                        skipped.append({"input": f"{where} row {row_in_file}",
                                        "error": f"no units or no bins ({n_units} x {n_bins}); left out"})
                        continue
                    if seg:
                        k4 = (*key, seg)
                        if k4 in first_copy:
                            repeated.append(f"{where} row {row_in_file} repeats {first_copy[k4]}")
                        else:
                            first_copy[k4] = f"{where} row {row_in_file}"
                    s = sessions.get(key)
                    if s is None:
                        s = sessions[key] = _Session(*key)
                        s.behavior_names = tuple(ex["behavior_names"] or ())
                    if n_units > s.region_units:  # the session's units: its largest row's (num_units)
                        s.regions, s.region_units = _count(ex["unit_regions"]), n_units
                    s.species = s.species or (ex["species"] or "")
                    s.rows.append(len(rows.segment_id) - 1)
                    for table, cols in trial_tables.items():
                        starts = cols.get("start_time", []) if isinstance(cols, dict) else []
                        s.trial_starts.setdefault(table, set()).update(
                            x for x in starts if isinstance(x, (int, float)))
                in_file += batch.num_rows
            bar.advance(1)
    if missing_source:
        _warn(f"{missing_source} rows have no source_dataset; they get '{default_source}'")
    if empty:
        _warn(f"{empty} rows have no units or no bins; left out (listed under the manifest's skipped)")
    if repeated:
        _warn(f"{len(repeated)} rows repeat the (source, subject, session, segment) of an earlier "
              f"row ({repeated[0]}): two copies of the same files in the folder? Kept as they are, unless "
              "their own t_start_ms make them overlap (then refused)")
    if not sessions:
        raise ValueError(f"{files[0].path.parent}: the files hold no rows with spike counts; "
                         "nothing to import")
    return rows, sessions


def _count(values) -> dict[str, int] | None:
    """Units per region (a null region is ``"unknown"``, as in :func:`_unit_strings`)."""
    return None if values is None else dict(sorted(Counter(_unit_strings(values, "unknown")).items()))


def _unit_strings(values, missing) -> list[str]:
    """A row's unit ids or regions as strings; a null entry becomes ``missing`` (a str, or a
    function of the unit's index), not the text "None"."""
    return [(missing(j) if callable(missing) else missing) if x is None else str(x) for j, x in enumerate(values)]


def _resolve_bin_ms(rows: _Rows, asked: int | None) -> int:
    """The corpus's one bin width: the rows' own ``bin_ms`` where they carry it, else ``asked``
    (default 20, the Neural Pile's)."""
    given = {b for b, k in zip(rows.bin_ms, rows.keep) if k and b is not None}
    without = sum(1 for b, k in zip(rows.bin_ms, rows.keep) if k and b is None)
    default = 20 if asked is None else asked

    def first_of(width) -> str:  # where a row of that width (None: without bin_ms) is
        return next(o for b, k, o in zip(rows.bin_ms, rows.keep, rows.origin) if k and b == width)

    if len(given) > 1:
        where = "; ".join(f"{b} ms e.g. {first_of(b)}" for b in sorted(given))
        raise ValueError(f"the rows give bin widths {sorted(given)} ms ({where}); a corpus has one bin width: "
                         "import the files of each width into their own corpus")
    if not given:
        return default
    (b,) = given
    if asked is not None and asked != b:
        raise ValueError(f"the rows give bin_ms {b}, but bin_ms {asked} was asked for; leave it "
                         "out (the rows' own width is used) or import other files")
    if without and b != default:
        raise ValueError(f"{without} rows have no bin_ms (no such column, or a null: the Neural Pile's 20 ms; e.g. {first_of(None)}) "
                         f"and the others give {b} ms (e.g. {first_of(b)}); a corpus has one bin width: import "
                         "them separately")
    return b


def _assign_session_ids(sessions: dict[tuple, _Session]) -> None:
    """Published session ids can repeat across sources or subjects; spikefm needs them unique.
    The first (sorted by source, subject) keeps its id, the others get -2, -3..."""
    keys = sorted(sessions)
    renamed = 0
    for key, sid in zip(keys, distinct_session_ids([key[2] for key in keys])):
        sessions[key].session_id = sid
        renamed += sid != key[2]
    if renamed:
        _warn(f"{renamed} sessions share a session_id with a session of another source or "
              "subject; renamed with -2, -3... (original_session_id in the manifest)")


def _assign_t_start(rows: _Rows, sessions: dict[tuple, _Session], bin_ms: int,
                    earlier: dict | None = None) -> list[str]:
    """Fill rows.t_start_ms; returns the ids of the multi-row sessions whose rows cannot be put
    on one timeline (segments not numbered 0..k-1, different unit counts, or rows of distinct
    segments all at t_start_ms 0: how a spikefm corpus stores such a session; also rows of
    repeated or missing segment ids at 0 ms where the source's own manifest, ``earlier``
    (:func:`_source_manifest_sessions`), says the session has no timeline: a corpus this import
    wrote from such rows)."""
    rows.t_start_ms = [0] * len(rows.segment_id)
    unknown: list[str] = []
    for s in sessions.values():
        given = [rows.given_t_start[r] for r in s.rows]
        segments = [rows.segment_id[r] for r in s.rows]
        said_unordered = (earlier or {}).get((s.source, s.subject, s.session_id), {}).get("segments_ordered") is False
        if len(given) > 1 and all(t == 0 for t in given) and (len(set(segments)) == len(segments) or said_unordered):
            # every row of a multi-row session at 0 ms: what a spikefm corpus stores for a session
            # without one timeline (segments_ordered false), so it stays one (not refused as an
            # overlap, which made such a corpus impossible to import again; nor reordered by
            # segment numbers, which the rows' own start times do not say). Rows repeating one
            # segment id (two copies of a file) are refused as overlapping, below.
            unknown.append(s.session_id)
            continue
        if all(t is not None for t in given):  # the rows' own t_start_ms (a spikefm corpus's)
            for r, t in zip(s.rows, given):
                rows.t_start_ms[r] = int(t)
            _check_on_one_grid(rows, s, bin_ms)
            _check_no_overlap(rows, s, bin_ms)
            s.t_start_known = True
            continue
        idx = []
        for r in s.rows:
            m = _SEGMENT_INDEX.search(rows.segment_id[r])
            idx.append(int(m.group(1)) if m else -1)
        units = {rows.num_units[r] for r in s.rows}
        if sorted(idx) == list(range(len(idx))) and len(units) == 1:
            s.t_start_known = True
            start = 0
            for i, r in sorted(zip(idx, s.rows)):
                rows.t_start_ms[r] = start * bin_ms
                start += rows.num_bins[r]
        elif len(s.rows) > 1:
            unknown.append(s.session_id)
        else:
            s.t_start_known = True  # a lone row starts the session
    return unknown


def _check_on_one_grid(rows: _Rows, s: _Session, bin_ms: int) -> None:
    """Refuse a session whose rows' own start times are not a whole number of bins apart: their
    bins cannot be put on one grid (windows across rows would be cut between bins)."""
    first = min(s.rows, key=lambda r: rows.t_start_ms[r])
    for r in s.rows:
        if (rows.t_start_ms[r] - rows.t_start_ms[first]) % bin_ms:
            raise ValueError(f"session {s.session} (source {s.source}, subject {s.subject}): the "
                             f"rows' own t_start_ms are off one {bin_ms} ms bin grid: "
                             f"{rows.segment_id[r] or 'a row'} starts at {rows.t_start_ms[r]} ms, "
                             f"{rows.t_start_ms[r] - rows.t_start_ms[first]} ms after "
                             f"{rows.segment_id[first] or 'the first row'} ({rows.origin[r]}); expected "
                             f"start times a multiple of {bin_ms} ms apart: fix their t_start_ms, or "
                             "leave the t_start_ms column out (start times then come from the segment "
                             "numbers)")


def _check_no_overlap(rows: _Rows, s: _Session, bin_ms: int) -> None:
    """Refuse a session whose rows' own start times put two rows over the same time: the
    session would hold those bins twice, so its timeline (``segments_ordered``) is false."""
    def end(r: int) -> int:
        return rows.t_start_ms[r] + rows.num_bins[r] * bin_ms

    def span(r: int) -> str:
        return f"{rows.segment_id[r] or 'a row'} at [{rows.t_start_ms[r]}, {end(r)}) ms ({rows.origin[r]})"

    order = sorted(s.rows, key=lambda r: rows.t_start_ms[r])
    for a, b in zip(order, order[1:]):
        if rows.t_start_ms[b] < end(a):
            raise ValueError(f"session {s.session} (source {s.source}, subject {s.subject}): the "
                             f"rows' own t_start_ms make two of them overlap: {span(a)} and "
                             f"{span(b)}; a session's rows must not cover the same time: remove "
                             "the copy (two copies of one file?) or fix their t_start_ms, or leave "
                             "the t_start_ms column out (start times then come from the segment "
                             "numbers)")


def _unordered_warning(session_ids: list[str]) -> str:
    """The one-line warning about sessions whose rows cannot be put on one timeline: what it
    means for ``spikefm generate --prompt`` (a prompt from inside one row) and ndt / neds training
    (:mod:`spikefm.data.windows` refuses them)."""
    names = ", ".join(sorted(session_ids)[:5]) + (" ..." if len(session_ids) > 5 else "")
    return (f"{len(session_ids)} session(s) ({names}) have segments not numbered 0..k-1, rows of "
            "different unit counts or every row at t_start_ms 0 (how a spikefm corpus stores such "
            "sessions), so their rows cannot be put on one timeline: each row gets "
            "t_start_ms 0 (manifest: segments_ordered false); generate --prompt takes its prompt "
            "from inside one of their rows, and ndt / neds training refuses them: leave them out "
            "with --sessions")


# ---------------------------------------------------------------------------------------------
# Pass 2: write shards


def _uint8_counts(col: pa.Array, where: str) -> tuple[pa.Array, int]:
    """The column as list<list<uint8>> with offsets from 0. Returns (array, cells clipped now)."""
    flat = flat_counts(col) if col.type == ROW_SCHEMA.field("spike_counts").type else None
    outer = col.offsets.to_numpy()
    inner = col.values.offsets.to_numpy()[outer[0]:outer[-1] + 1]
    clipped_now = 0
    if flat is None:  # another integer type: cast, clipping what uint8 cannot hold
        v0, v1 = int(inner[0]), int(inner[-1])
        values = col.values.values.slice(v0, v1 - v0).to_numpy(zero_copy_only=False)
        if values.size and values.min() < 0:
            raise ValueError(f"{where}: spike_counts holds negative values; counts must be >= 0")
        over = values > 255
        clipped_now = int(over.sum())
        flat = np.where(over, 255, values).astype(np.uint8)
    inner_arr = pa.ListArray.from_arrays(pa.array((inner - inner[0]).astype(np.int32)),
                                         pa.array(flat, pa.uint8()))
    outer_rel = (outer - outer[0]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_rel), inner_arr), clipped_now


def _write(files: list[_DataFile], rows: _Rows, sessions: dict[tuple, _Session], bin_ms: int,
           version: VersionWriter, progress: bool
           ) -> tuple[dict[str, list[str]], dict[tuple, dict]]:
    """Pass 2. Returns ({split: shard paths}, {session key: accumulated stats})."""
    from ..progress import progress_bar

    stats = {k: {"num_spikes": 0, "clipped_bins": 0} for k in sessions}
    clipped_now = 0
    species_of = {k: s.species or NEURAL_PILE_SPECIES.get(k[0], "") for k, s in sessions.items()}
    r = 0
    with progress_bar(total=len(rows.segment_id), description="importing rows",
                      enabled=progress) as bar:
        for f in files:
            for batch in _iter_batches(f, [*NEURAL_PILE_COLUMNS, *_EXTRAS]):
                n = batch.num_rows
                counts, clipped = _uint8_counts(batch.column("spike_counts"), str(f.path))
                clipped_now += clipped
                keys = rows.session_key[r:r + n]
                units = rows.num_units[r:r + n]
                own = {name: _column(batch, name) for name in
                       ("unit_ids", "unit_regions", "behavior_names", "behavior", "trials_json")}

                def pick(name, default):  # the row's own value where it has one
                    return [default(i) if own[name][i] is None else own[name][i] for i in range(n)]

                table = pa.Table.from_arrays([
                    counts,
                    pa.array([k[1] for k in keys], pa.string()),
                    pa.array([sessions[k].session_id if k in sessions else "" for k in keys],
                             pa.string()),
                    pa.array(rows.segment_id[r:r + n], pa.string()),
                    pa.array([k[0] for k in keys], pa.string()),
                    pa.array([bin_ms] * n, pa.int32()),
                    pa.array(rows.t_start_ms[r:r + n], pa.int64()),
                    pa.array([_unit_strings(v, str) for v in
                              pick("unit_ids", lambda i: range(units[i]))], pa.list_(pa.string())),
                    pa.array([_unit_strings(v, "unknown") for v in
                              pick("unit_regions", lambda i: ["unknown"] * units[i])],
                             pa.list_(pa.string())),
                    pa.array([species_of.get(k, "") for k in keys], pa.string()),
                    pa.array(pick("behavior_names", lambda i: []), pa.list_(pa.string())),
                    pa.array(pick("behavior", lambda i: []), pa.list_(pa.list_(pa.float32()))),
                    pa.array(pick("trials_json", lambda i: "{}"), pa.string()),
                ], schema=ROW_SCHEMA)
                for i in range(n):
                    if not rows.keep[r + i]:
                        continue
                    key, split = keys[i], rows.split[r + i]
                    one = table.slice(i, 1)
                    flat = flat_counts(one.column("spike_counts").chunk(0))
                    assert flat.size == rows.num_units[r + i] * rows.num_bins[r + i]
                    st = stats[key]
                    st["num_spikes"] += int(flat.sum(dtype=np.int64))
                    st["clipped_bins"] += int(np.count_nonzero(flat == 255))
                    version.add(split, one, int(flat.size))
                r += n
                bar.advance(n)
    assert r == len(rows.segment_id), "pass 2 read a different number of rows than pass 1"
    if clipped_now:
        _warn(f"{clipped_now:,} counts above 255 were clipped to 255 (uint8)")
    return version.finish(SPLITS), stats


# ---------------------------------------------------------------------------------------------


def import_neural_pile(source: str, out_dir: str | Path, *, cache_dir: str | None = None,
                       progress: bool = True, revision: str | None = None, bin_ms: int | None = None,
                       shard_max_tokens: int = 250_000_000, overwrite: bool = False) -> dict:
    """Import a published Neural Pile dataset as a spikefm corpus (see the module docstring).

    Args:
        source: a Hugging Face dataset repo id (``eminorhan/neural-pile-primate``, optionally
            ``@REVISION`` or an ``hf:`` prefix), or a local folder holding its Parquet shards
            (``data/train-*.parquet``, ``data/test-*.parquet``, and its dataset card
            ``README.md`` when it has one) or ``datasets``' Arrow cache files
            (``*-train*.arrow``), or one such file. A local path wins over a repo id.
        out_dir: corpus folder to write (created). A corpus already there is replaced when it was
            imported from the same ``source`` (a re-import) or with ``overwrite``; otherwise (a
            corpus built from NWB files, or imported from elsewhere) it is refused untouched.
        cache_dir: Hugging Face cache folder for the download (default: the hub's own).
        progress: show progress bars (only on a terminal).
        revision: Hub branch, tag or commit to download (default: main).
        bin_ms: bin width of the counts in ms; default: the rows' own ``bin_ms`` column where
            they have one (a spikefm corpus's files), else 20 (the Neural Pile's). A value that
            the rows contradict is refused.
        shard_max_tokens: start a new output shard before one would exceed this many cells.
        overwrite: replace whatever corpus ``out_dir`` holds (``spikefm corpus import --overwrite``).

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        ValueError: the source does not exist, holds no Parquet/Arrow file, its dataset card
            cannot be read or names no default config, its columns or rows are not Neural Pile
            rows, ``out_dir`` is a non-corpus folder with files in it, or it holds another
            corpus and ``overwrite`` is not set; a repo id was given and huggingface_hub is not
            installed, or the folder has a dataset card and PyYAML is not installed.
    """
    if bin_ms is not None and (not isinstance(bin_ms, int) or isinstance(bin_ms, bool) or bin_ms <= 0):
        raise ValueError(f"bin_ms must be a positive int (milliseconds), got {bin_ms!r}")
    if shard_max_tokens < 1:
        raise ValueError(f"shard_max_tokens must be >= 1, got {shard_max_tokens}")
    out_dir = Path(out_dir)
    # a non-corpus folder, or another corpus without overwrite, is refused before any download
    _check_replace(out_dir, inspect_out_dir(out_dir), source, overwrite)

    root, provenance, default_source = _resolve_source(source, cache_dir, revision)
    if root.is_dir() and out_dir.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{out_dir}: lies inside the source folder {root}, so a later import of "
                         "that folder would read the corpus too; give an --out outside it")
    skipped: list[dict] = []
    files = _find_files(root, skipped)
    check_inputs_outside(out_dir, [f.path for f in files])
    rows, sessions = _scan(files, default_source, progress, skipped)
    bin_ms = _resolve_bin_ms(rows, bin_ms)
    _assign_session_ids(sessions)
    earlier = _source_manifest_sessions(root)
    unknown = _assign_t_start(rows, sessions, bin_ms, earlier)
    if unknown:
        _warn(_unordered_warning(unknown))

    try:
        with open_corpus_dir(out_dir) as folder, \
                folder.new_version(shard_max_tokens) as version:
            _check_replace(out_dir, folder.existing, source, overwrite)  # as found under the lock
            shards, stats = _write(files, rows, sessions, bin_ms, version, progress)
            manifest = _manifest(source, rows, sessions, stats, shards, provenance, skipped,
                                 bin_ms, shard_max_tokens, earlier=earlier)
            kept = version.current_created_utc(manifest)
            if kept is not None:  # the same import again: the current version stays (and its hash)
                return replace(manifest, created_utc=kept).to_dict()
            version.commit(manifest)
            # a build's per-session cache, from the corpus this import replaced: stale now
            shutil.rmtree(Path(out_dir) / STAGING, ignore_errors=True)
    except MemoryError as exc:
        raise ValueError(f"{out_dir}: out of memory while importing ({exc}); use a machine "
                         "with more memory") from None
    except OSError as exc:  # an operation failed (exit 1 on the command line, as a build's), not bad input
        raise OSError(exc.errno, f"{exc.strerror or first_line(exc)} while writing the corpus in {out_dir}; "
                      "fix the cause (space, permissions) and run again", exc.filename) from None
    return manifest.to_dict()


def _source_key(source: str) -> str:
    """What a source names, however it is written: a local path resolved, or a Hub repo id
    without the ``hf:`` prefix and the ``@REVISION`` (another revision is a re-import)."""
    p = Path(source).expanduser()
    if not source.startswith("hf:") and p.exists():
        return f"path:{p.resolve()}"
    repo = source[3:] if source.startswith("hf:") else source
    return f"hf:{repo.split('@', 1)[0]}"


def _check_replace(out_dir: Path, existing, source: str, overwrite: bool) -> None:
    """Refuse to replace a corpus that is not an import of ``source`` unless ``overwrite``."""
    old = None if existing is None else existing.build
    if existing is None or overwrite:
        return
    if old is not None and old.importer == "neural_pile":
        prov = existing.provenance if isinstance(existing.provenance, dict) else {}
        old_key = f"path:{prov['path']}" if prov.get("path") else \
            f"hf:{prov['hf_repo']}" if prov.get("hf_repo") else _source_key(old.source or "")
        if old_key == _source_key(source):  # a re-import of the same source
            return
    what = f"imported from {old.source}" if old is not None and old.importer else "built from NWB files"
    raise ValueError(f"{out_dir}: holds a corpus {what}; pass --overwrite to replace it with this import "
                     f"of {source}, or give another --out")


def _source_manifest_sessions(root: Path) -> dict[tuple[str, str, str], dict]:
    """(source, subject, session) -> ``{"license", "provenance", "original_session_id",
    "segments_ordered"}`` of each
    session in the ``manifest.json`` beside the shards of a spikefm corpus (its folder, or one
    uploaded with it as the README shows): what the rows do not carry. Empty without one (the published Neural Pile);
    a manifest that cannot be read is passed over with a warning (the rows are the corpus). Read
    leniently, not through :class:`~spikefm.corpus.manifest.Manifest`: a manifest of another version
    still gives what it has of these fields."""
    path = (root if root.is_dir() else root.parent) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        sessions = json.loads(path.read_text())["sessions"]
        return {(str(e["source_dataset"]), str(e["subject_id"]), str(e["session_id"])):
                {"license": e.get("license") if isinstance(e.get("license"), str) else "",
                 "provenance": e.get("provenance") if isinstance(e.get("provenance"), dict) else None,
                 "original_session_id": (e.get("original_session_id")
                                         if isinstance(e.get("original_session_id"), str) else None),
                 "segments_ordered": e.get("segments_ordered") if isinstance(e.get("segments_ordered"), bool) else None}
                for e in sessions}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _warn(f"{path}: not read ({type(exc).__name__}: {first_line(exc)}); the sessions' licences and "
              "provenance it records are not carried over")
        return {}


def _manifest(source, rows: _Rows, sessions, stats, shards, provenance, skipped, bin_ms,
              shard_max_tokens, earlier: dict | None = None) -> Manifest:
    tokens = [u * b for u, b in zip(rows.num_units, rows.num_bins)]
    split_info = {}
    for split in SPLITS:
        idx = [i for i in rows.kept if rows.split[i] == split]
        split_info[split] = SplitInfo(
            num_rows=len(idx),
            num_tokens=int(sum(tokens[i] for i in idx)),
            num_sessions=len({rows.session_key[i] for i in idx}),
            shards=tuple(shards[split]),
        )
    entries = []
    for key, s in sessions.items():
        splits = sorted({rows.split[r] for r in s.rows})
        units = [rows.num_units[r] for r in s.rows]
        num_bins = sum(rows.num_bins[r] for r in s.rows)
        species = s.species or NEURAL_PILE_SPECIES.get(s.source, "")
        was = (earlier or {}).get((s.source, s.subject, s.session_id), {})
        entries.append(SessionEntry(
            session_id=s.session_id,
            subject_id=s.subject,
            source_dataset=s.source,
            species=species,
            is_human=is_human_species(species),
            num_units=max(units),
            num_bins=int(num_bins),
            bin_ms=bin_ms,
            t_start_ms=min(rows.t_start_ms[r] for r in s.rows),
            duration_s=num_bins * bin_ms / 1000.0,
            num_rows=len(s.rows),
            num_tokens=int(sum(tokens[r] for r in s.rows)),
            num_spikes=stats[key]["num_spikes"],
            clipped_bins=stats[key]["clipped_bins"],
            regions=s.regions or {"unknown": max(units)},
            behavior_names=s.behavior_names,
            trial_tables={t: len(v) for t, v in sorted(s.trial_starts.items())},
            segments_ordered=s.t_start_known,
            provenance=was.get("provenance") or provenance,  # the recording's, where a manifest says it
            license=was.get("license", ""),
            original_session_id=(s.session if s.session_id != s.session
                                 else was.get("original_session_id")),  # a re-import keeps the first's
            split=splits[0] if len(splits) == 1 else "both",
        ))
    return new_manifest(
        bin_ms=bin_ms,
        build=BuildSettings(importer="neural_pile", source=source, split="published",
                            max_row_tokens=int(max(tokens[i] for i in rows.kept)),
                            shard_max_tokens=shard_max_tokens),
        provenance=provenance, splits=split_info, sessions=entries,
        skipped=[SkippedInput(input=x["input"], error=x["error"]) for x in skipped])
