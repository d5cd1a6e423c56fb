"""The corpus folder on disk: the one writer of Parquet shards + ``manifest.json``, shared by
``corpus build`` and ``corpus import``.

Layout::

    CORPUS_DIR/
      manifest.json -> .current/manifest.json    # links, made once
      data -> .current/data
      .current -> .versions/<id>                 # the pointer a commit switches
      .versions/<id>/manifest.json
      .versions/<id>/data/train-00000-of-00002.parquet ...
      .staging/                                  # build.py's per-session cache
      .spikefm.lock                              # fileio.folder_lock

Readers (:class:`spikefm.Corpus`, ``datasets.load_dataset(CORPUS_DIR)``) go through the links
and so see one version: a manifest and exactly the shards it lists. A new version is written
completely beside the current one (shards, then its manifest, all fsynced), then ``.current`` is
switched by one ``rename``, the only step that changes what readers see: a process killed at any
point leaves the old corpus or the new one, never a mix. Whatever a killed process left (a
half-written version, temporary links) is removed by the next build or import.

Corpora written before this layout (a real ``data/`` folder and ``manifest.json`` file) are moved
into it by their next build or import, and their content stays the same at every step of the move
(the data folder is swapped for the link with ``renameat2(RENAME_EXCHANGE)``; on file systems
without it, two renames leave ``data`` missing for an instant, which the next run repairs).

Every write holds :func:`spikefm.fileio.folder_lock` on the folder. Files this module deletes:
its own temporaries, replaced versions under ``.versions/``, and a replaced legacy ``data/``
folder, which is only replaced after it was checked to hold nothing but the shards its manifest
lists.
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import CORPUS_CACHE as CACHE
from ..fileio import CORPUS_CURRENT as CURRENT
from ..fileio import CORPUS_DATA as DATA
from ..fileio import CORPUS_STAGING as STAGING
from ..fileio import CORPUS_VERSIONS as VERSIONS
from ..fileio import LOCK_NAME, corpus_holding, folder_lock, fsync_dir, write_bytes_atomic
from .manifest import MANIFEST_NAME, Manifest, read_manifest
from .schema import ROW_SCHEMA, shard_name

#: Entries spikefm may keep in a corpus folder (besides temporaries, see _is_temporary).
OWNED_NAMES = frozenset({MANIFEST_NAME, DATA, CURRENT, VERSIONS, STAGING, CACHE, LOCK_NAME})
#: Rows per Parquet row group (small: a reader fetches a few rows at a time).
ROW_GROUP_ROWS = 16

_DATA_LINK = f"{CURRENT}/{DATA}"
_MANIFEST_LINK = f"{CURRENT}/{MANIFEST_NAME}"
#: Temporaries of this module (".tmp-") and of older spikefm versions.
_TEMP_PREFIXES = (".tmp-", ".data-tmp-", ".data-old-", f".{MANIFEST_NAME}.tmp-")


def _is_temporary(name: str) -> bool:
    return name.startswith(_TEMP_PREFIXES)


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _link(target: str, path: Path) -> None:
    """Make ``path`` a symlink to ``target`` in one step (a temporary link renamed over it)."""
    tmp = path.with_name(f".tmp-link-{os.getpid()}-{path.name.lstrip('.')}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot
        return False
    raise OSError(err, os.strerror(err), str(a))


# ---------------------------------------------------------------------------------------------
# What is in a folder


def inspect_out_dir(out_dir: Path) -> Manifest | None:
    """Check, without writing anything, that ``out_dir`` may receive a corpus.

    Returns the manifest of the corpus there, or None for a missing or empty folder or one that
    holds only spikefm's own entries (an interrupted first build).

    Raises:
        ValueError: ``out_dir`` is a file, a folder with other files (not a spikefm corpus), a
            corpus whose manifest cannot be read, or a corpus whose ``data/`` holds files that are
            not its shards (they would be lost when ``data/`` is replaced), or a folder inside
            another corpus's own entries (``data/``, ``.versions/``, ``.staging/``: its next build
            removes or refuses it).
    """
    held = corpus_holding(out_dir)
    if held is not None:
        corpus, entry = held
        raise ValueError(f"{out_dir} is inside the corpus {corpus} ({entry}/, which its builds replace and which holds "
                         f"its own files only); give a folder of its own for this corpus, e.g. "
                         f"{corpus.parent / (corpus.name + '_2')}")
    if not out_dir.exists():
        if out_dir.is_symlink():
            raise ValueError(f"{out_dir}: is a link to a missing folder; give a folder for the "
                             "corpus")
        return None
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder; give a folder for the corpus")
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(out_dir)
        except ValueError as exc:
            raise ValueError(f"{exc} (the folder was left as it is: give another folder, or "
                             "delete this one first)") from None
        _check_data_folder(out_dir, manifest)
        return manifest
    own_links = {DATA: _DATA_LINK, MANIFEST_NAME: _MANIFEST_LINK}
    for entry in sorted(out_dir.iterdir()):
        name = entry.name
        if name in own_links:
            ours = entry.is_symlink() and os.readlink(entry) == own_links[name]
        else:
            ours = name in OWNED_NAMES or _is_temporary(name)
        if not ours:
            raise ValueError(f"{out_dir}: folder has files and is not a spikefm corpus (found "
                             f"'{name}'); give a new or empty folder, or an existing corpus")
    return None


def _check_data_folder(out_dir: Path, manifest: Manifest) -> None:
    data = out_dir / DATA
    if not data.is_dir():
        return
    listed = {Path(p).name for sp in manifest.splits.values() for p in sp.shards
              if Path(p).parent == Path(DATA)}
    for entry in sorted(data.iterdir()):
        if entry.name not in listed or not entry.is_file():
            raise ValueError(f"{out_dir}: '{DATA}/{entry.name}' is not a shard of this corpus, "
                             f"and writing the corpus replaces {DATA}/; move it out of "
                             f"{data} first")


def check_inputs_outside(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse inputs that live where writing the corpus deletes or replaces files."""
    areas = [(name, (out_dir / name).resolve()) for name in (DATA, VERSIONS, STAGING)]
    for path in inputs:
        resolved = path.resolve()
        for name, root in areas:
            if resolved == root or root in resolved.parents:
                raise ValueError(f"{path}: this input lies inside {out_dir / name}, which "
                                 "spikefm rewrites when it writes the corpus; move the input out "
                                 "of the corpus folder first")


# ---------------------------------------------------------------------------------------------
# A locked corpus folder


class CorpusDir:
    """A corpus folder held under its lock (see :func:`open_corpus_dir`).

    Attributes:
        path: the folder.
        existing: the manifest of the corpus that was there when the lock was taken, or None.
        created: the folder did not exist before.
    """

    def __init__(self, path: Path, existing: Manifest | None, created: bool):
        self.path, self.existing, self.created = path, existing, created

    def current_version(self) -> Path | None:
        link = self.path / CURRENT
        return self.path / os.readlink(link) if link.is_symlink() else None

    def clean_stale(self) -> None:
        """Remove what killed writers left: temporaries, versions no one points to, staged
        files that were never renamed into place. Only call with the lock held."""
        for entry in self.path.iterdir():
            if _is_temporary(entry.name):
                _remove(entry)
        current = self.current_version()
        versions = self.path / VERSIONS
        if versions.is_dir():
            for entry in versions.iterdir():
                if current is None or entry.name != current.name:
                    _remove(entry)
        staging = self.path / STAGING
        if staging.is_dir():
            for entry in staging.iterdir():
                if entry.name.startswith(".") and ".tmp-" in entry.name:
                    _remove(entry)

    def remove_if_unused(self) -> None:
        """Delete a folder this run created when it holds nothing worth keeping (no corpus, no
        finished staged session)."""
        if (self.created and not (self.path / MANIFEST_NAME).exists()
                and not any((self.path / STAGING).glob("*.json"))):
            shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def new_version(self, shard_max_tokens: int) -> Iterator[VersionWriter]:
        """A :class:`VersionWriter` for the next version; removed again unless committed."""
        writer = VersionWriter(self, shard_max_tokens)
        try:
            yield writer
        finally:
            writer.abort()

    # -- switching -----------------------------------------------------------------------------

    def _switch(self, version: Path) -> None:
        self._adopt_legacy()
        for name, target in ((DATA, _DATA_LINK), (MANIFEST_NAME, _MANIFEST_LINK)):
            if not (self.path / name).is_symlink():
                _link(target, self.path / name)  # dangling until .current exists: invisible
        old = self.current_version()
        _link(f"{VERSIONS}/{version.name}", self.path / CURRENT)  # the commit
        fsync_dir(self.path)
        if old is not None and old.name != version.name:
            _remove(old)

    def _adopt_legacy(self) -> None:
        """Move a corpus of the older layout (real ``data/`` and ``manifest.json``, or links to
        elsewhere) into ``.versions``; what readers see is the same after every step."""
        data, manifest = self.path / DATA, self.path / MANIFEST_NAME
        data_ours = data.is_symlink() and os.readlink(data) == _DATA_LINK
        manifest_ours = manifest.is_symlink() and os.readlink(manifest) == _MANIFEST_LINK
        if (data_ours or not os.path.lexists(data)) and \
                (manifest_ours or not os.path.lexists(manifest)):
            return
        # 1. The visible content as a version (hard links: no copy of the shards), then point
        #    .current at it; the root entries still show the same files.
        tmp = self.path / VERSIONS / f".tmp-{_version_id()}"
        (tmp / DATA).mkdir(parents=True)
        if data.is_dir():
            for f in sorted(data.iterdir()):
                try:
                    os.link(f, tmp / DATA / f.name)
                except OSError:  # another file system, or no hard links
                    shutil.copy2(f, tmp / DATA / f.name)
        if manifest.is_file():
            write_bytes_atomic(tmp / MANIFEST_NAME, manifest.read_bytes())
        legacy = tmp.with_name(tmp.name[len(".tmp-"):])
        _fsync_tree(tmp)
        os.rename(tmp, legacy)
        previous = self.current_version()  # left by a move that was killed
        _link(f"{VERSIONS}/{legacy.name}", self.path / CURRENT)
        if previous is not None:
            _remove(previous)
        # 2. manifest.json: a link to the same bytes.
        if not manifest_ours:
            _link(_MANIFEST_LINK, manifest)
        # 3. data: swapped for the link in one step where the file system can.
        if not data_ours:
            if data.is_symlink() or not data.exists():
                _link(_DATA_LINK, data)  # a user's link: replaced, its target left alone
            else:
                link = self.path / f".tmp-legacy-link-{os.getpid()}"
                link.unlink(missing_ok=True)
                os.symlink(_DATA_LINK, link)
                if _exchange(link, data):
                    old_data = link  # now the old folder
                else:
                    old_data = self.path / f".tmp-legacy-data-{os.getpid()}"
                    os.rename(data, old_data)
                    os.rename(link, data)
                _remove(old_data)
        fsync_dir(self.path)


def _version_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


@contextmanager
def open_corpus_dir(out_dir: str | Path, *, command: str | None = None) -> Iterator[CorpusDir]:
    """Check ``out_dir`` (see :func:`inspect_out_dir`), create it if needed, lock it, clean what
    killed writers left, and yield it as a :class:`CorpusDir`.

    On an exception a folder created here is removed again when it holds nothing worth keeping.

    Raises:
        ValueError: the folder may not receive a corpus, or another process holds its lock.
    """
    out_dir = Path(out_dir)
    inspect_out_dir(out_dir)  # before anything is written
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{out_dir}: cannot create the corpus folder ({exc.strerror or exc}); "
                         "choose a folder you can write to") from None
    with folder_lock(out_dir, "corpus", command=command):
        folder = CorpusDir(out_dir, inspect_out_dir(out_dir), created)
        try:
            folder.clean_stale()
            yield folder
        except BaseException:
            folder.remove_if_unused()
            raise


# ---------------------------------------------------------------------------------------------
# Writing one version


class VersionWriter:
    """Rows -> zstd Parquet shards of a new version, then :meth:`commit` with its manifest.

    Each split's rows go into shards ``data/{split}-{i:05d}-of-{n:05d}.parquet`` in the order
    given; a shard is closed before it would exceed ``shard_max_tokens`` cells (a row larger than
    that gets a shard of its own), with row groups of ``ROW_GROUP_ROWS`` rows.
    """

    def __init__(self, folder: CorpusDir, shard_max_tokens: int):
        self.folder = folder
        self.shard_max_tokens = shard_max_tokens
        self.dir = folder.path / VERSIONS / f".tmp-{_version_id()}"
        (self.dir / DATA).mkdir(parents=True)
        self._splits: dict[str, _SplitShards] = {}
        self._shards: dict[str, list[str]] | None = None
        self._committed = False

    def add(self, split: str, row: pa.Table, num_tokens: int) -> None:
        """Append one row (a one-row table with ``ROW_SCHEMA``) of ``num_tokens`` cells."""
        if split not in self._splits:
            self._splits[split] = _SplitShards(self.dir / DATA, split, self.shard_max_tokens)
        self._splits[split].add(row, num_tokens)

    def finish(self, splits: tuple[str, ...]) -> dict[str, list[str]]:
        """Close all shards; returns ``{split: ["data/NAME", ...]}`` for every split named (a
        split without rows has no shard)."""
        self._shards = {s: self._splits[s].close() if s in self._splits else [] for s in splits}
        return self._shards

    def current_created_utc(self, manifest: Manifest) -> str | None:
        """The creation time of the corpus's current version when that version already holds
        exactly this one (its manifest equal to ``manifest`` but for ``created_utc``, its shards
        byte for byte these), so that a build of the same inputs and settings can keep it (the
        corpus's identity, its manifest hash, stays); None when it differs. After :meth:`finish`."""
        import filecmp
        import json

        assert self._shards is not None, "finish() before current_created_utc()"
        current = self.folder.current_version()
        if current is None:
            return None
        try:
            old = json.loads((current / MANIFEST_NAME).read_bytes())
            new = json.loads(manifest.to_json())
            theirs = sorted(p.name for p in (current / DATA).iterdir())
        except (OSError, ValueError):
            return None
        when = old.pop("created_utc", None) if isinstance(old, dict) else None
        new.pop("created_utc", None)
        mine = sorted(p.name for p in (self.dir / DATA).iterdir())
        if old != new or mine != theirs or not isinstance(when, str):
            return None
        same = all(filecmp.cmp(self.dir / DATA / n, current / DATA / n, shallow=False) for n in mine)
        return when if same else None

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest into the version and make the version the corpus, atomically."""
        assert self._shards is not None, "finish() before commit()"
        written = sorted(p.name for p in (self.dir / DATA).iterdir())
        listed = sorted(Path(p).name for sp in manifest.splits.values() for p in sp.shards)
        assert written == listed, f"manifest lists {listed}, the version holds {written}"
        write_bytes_atomic(self.dir / MANIFEST_NAME, manifest.to_json())
        _fsync_tree(self.dir)
        final = self.dir.with_name(self.dir.name[len(".tmp-"):])
        os.rename(self.dir, final)
        self.dir = final
        self._committed = True
        self.folder._switch(final)

    def abort(self) -> None:
        for s in self._splits.values():
            s.abort()
        if not self._committed and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)


class _SplitShards:
    """One split's shards: numbered ``.part`` files while open, final names on close."""

    def __init__(self, folder: Path, split: str, max_tokens: int):
        self.folder, self.split, self.max_tokens = folder, split, max_tokens
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._tokens = 0
        self._pending: list[pa.Table] = []

    def add(self, row: pa.Table, tokens: int) -> None:
        if self._writer is not None and self._tokens + tokens > self.max_tokens:
            self._close_shard()
        if self._writer is None:
            path = self.folder / f".{self.split}-{len(self.paths):05d}.part"
            self._writer = pq.ParquetWriter(path, ROW_SCHEMA, compression="zstd")
            self.paths.append(path)
            self._tokens = 0
        self._pending.append(row)
        self._tokens += tokens
        if len(self._pending) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending).combine_chunks(),
                                     row_group_size=ROW_GROUP_ROWS)
            self._pending = []

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        self._writer = None

    def close(self) -> list[str]:
        if self._writer is not None:
            self._close_shard()
        names = []
        for i, p in enumerate(self.paths):
            name = shard_name(self.split, i, len(self.paths))
            os.replace(p, p.with_name(name))
            names.append(f"{DATA}/{name}")
        return names

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
