"""File operations shared by every layer (no torch).

- Atomic writes: write to a temporary name in the same folder, fsync, then rename, so readers see
  the old file or the new one, never half of one (:func:`write_atomic` and its helpers).
- :func:`folder_lock`: one process at a time in a folder (a corpus, a training run).
- :func:`check_relative_path`: a name from elsewhere (a server's file listing) that is joined
  onto a local folder must stay inside it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

#: Name of the lock file :func:`folder_lock` keeps inside a locked folder.
LOCK_NAME = ".spikefm.lock"


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to create a temporary file beside ``path``, fsync it and rename it over
    ``path``; on failure the temporary file is removed and ``path`` is untouched. A folder at
    ``path`` or a file among its parents is a ``ValueError`` naming it.

    The temporary name is hidden and ends in ``.tmp-PID``, so a file left by a killed process
    never matches a pattern such as ``*.json`` or ``*.nwb``. Writers must therefore not pick a
    format from the name: pass it explicitly (``savefig(tmp, format="png")``) or write through a
    file object (``np.savez(f, ...)``, which would otherwise append ``.npz``).
    """
    path = Path(path)
    check_file_target(path)
    make_folder(path.parent, action=f"write {path}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename == str(tmp):  # name the file the user asked for, not our temporary
            exc.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's
    name when it has none: what a one-line error quotes of a library's multi-line one."""
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return lines[0].strip()[:limit] if lines else type(exc).__name__


#: Terminal colour / bold codes some libraries put in their messages (torch's weights-only refusal).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file here: ``0o666`` less the process's umask. For files a
    library creates with a mode of its own (safetensors' ``save_file`` writes ``0o600``), so that
    they get the same permissions as the files beside them."""
    try:  # Linux: read it without changing it (os.umask sets it, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_temporaries(path: str | os.PathLike, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove the temporaries of :func:`write_atomic` for ``path`` (``.NAME.tmp-PID`` beside it)
    left by processes that no longer run (a killed earlier run); a live writer's are kept.

    ``min_age_s``: keep temporaries written to less than this long ago, for folders that other
    machines share (a cache on a network file system): there a process id says nothing about a
    writer on another host, but a live writer keeps its file's modification time fresh.

    Returns:
        The removed files.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not tmp.is_file() or tmp.is_symlink():
            continue
        if min_age_s > 0 and time.time() - tmp.stat().st_mtime < min_age_s:
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that process still runs (or is another user's): not ours to remove
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, OSError):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def make_folder(path: str | os.PathLike, *, action: str | None = None,
                fix: str = "choose another path") -> None:
    """Create the folder ``path`` and its parents; a regular file in the way is one ValueError:
    ``cannot {action}: {file} is a file, not a folder; {fix}``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _in_the_way(action or f"create {path}", _file_among([path, *path.parents]) or path, fix) from None


def _file_among(paths) -> Path | None:
    """The first of ``paths`` that exists and is not a folder (a file where a folder must be)."""
    return next((p for p in paths if p.exists() and not p.is_dir()), None)


def _in_the_way(action: str, blocker: Path, fix: str = "choose another path") -> ValueError:
    return ValueError(f"cannot {action}: {blocker} is a file, not a folder; {fix}")


def spikefm_folder_kind(path: str | os.PathLike) -> str | None:
    """What spikefm folder ``path`` is, in words with the file that tells (``"a spikefm corpus
    (manifest.json)"``, ``"a training run or model (config.json)"``), or None: for commands that
    must not write their own files into one."""
    for marker, what in (("manifest.json", "a spikefm corpus"), ("config.json", "a training run or model")):
        if (Path(path) / marker).is_file():
            return f"{what} ({marker})"
    return None


#: Files that describe a folder of synthetic recordings (``spikefm synth``, the quickstart's).
_RECORDING_FILES = (".spikefm-synth.json", ".quickstart-synth.json")
#: Files that describe a spikefm run or corpus folder: an output file must never replace one.
_FOLDER_FILES = ("config.json", "metrics.jsonl", "manifest.json", "finetune.json",
                 "early_stopping.json", "early_stopping_progress.json", "best_model.safetensors", "soup.json",
                 "transfer.json", "ranking.json", "scaling.json", "scores.json", "model.safetensors")


def check_file_target(path: str | os.PathLike) -> None:
    """Refuse, before any work, a file path that :func:`write_atomic` would refuse only when it
    writes (it calls this first): a folder at ``path``, or a file among its parents
    (``e1.json/x.json``).

    Raises:
        ValueError: naming the folder or the file in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file; give the path of a file to write "
                         "(a new name, or a file to replace)")
    blocker = _file_among(path.parents)
    if blocker is not None:
        raise _in_the_way(f"write {path}", blocker)


#: A corpus folder's own entries (corpus/store.py lays them out; the AR token cache lives in
#: ``.cache``), named once here because the layer below the corpus checks outputs against them.
CORPUS_DATA, CORPUS_CURRENT, CORPUS_VERSIONS = "data", ".current", ".versions"
CORPUS_STAGING, CORPUS_CACHE = ".staging", ".cache"
#: Entries of a corpus folder that spikefm writes and replaces (shards and their versions, build
#: staging, the token cache): an output put there is lost, or breaks the corpus's next use.
CORPUS_OWN_ENTRIES = (CORPUS_DATA, CORPUS_CURRENT, CORPUS_VERSIONS, CORPUS_STAGING, CORPUS_CACHE)


def _is_corpus_manifest(path: Path) -> bool:
    """Whether ``path`` is a spikefm corpus manifest (a JSON object with its ``schema_version`` and
    ``splits``; a checkpoint's or another program's manifest.json is not)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "schema_version" in obj and isinstance(obj.get("splits"), dict)


def corpus_holding(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(corpus folder, its entry)`` when ``path`` lies inside one of a spikefm corpus's own
    entries (:data:`CORPUS_OWN_ENTRIES`: its shards, versions, build staging or token cache), else
    None. Every enclosing corpus is looked at, links followed and not (a version folder holds a
    manifest of its own, inside the corpus's ``.versions/``)."""
    p = Path(path)
    for candidate in dict.fromkeys((p.absolute(), p.resolve())):
        for d in candidate.parents:
            if d.name == CORPUS_CURRENT or d.parent.name == CORPUS_VERSIONS:  # a version's own manifest: the
                continue  # corpus is the folder around it
            if (d / "manifest.json").is_file() and _is_corpus_manifest(d / "manifest.json"):
                entry = candidate.relative_to(d).parts[0]
                if entry in CORPUS_OWN_ENTRIES:
                    return d, entry
    return None


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...], flag: str) -> None:
    """Refuse an output file name that could be one of the user's other files: it must end in
    one of ``suffixes`` (so a typo cannot replace a recording, say ``--out session.nwb``) and may
    not be a file that describes a spikefm run or corpus (``--out RUN/config.json``) or lies in a
    corpus's own entries (:data:`CORPUS_OWN_ENTRIES`: its shards, versions or token cache), a folder,
    or a path below a file (:func:`check_file_target`), so that a command refuses it before its
    work rather than when it writes. An accepted path's temporaries that a killed earlier write
    left beside it are removed (:func:`remove_stale_temporaries`).

    Raises:
        ValueError: naming the flag, the path and what to give instead.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}, "
                         f"got {path.suffix or 'no ending'}; nothing was written (another ending "
                         f"could be one of your files): give e.g. {path.with_suffix(suffixes[0]).name}")
    if path.name in _FOLDER_FILES and any((path.parent / n).is_file() for n in _FOLDER_FILES):
        raise ValueError(f"{flag} {path}: that file belongs to the spikefm run or corpus in "
                         f"{path.parent}; writing it would damage that folder: give another name")
    truth_of = path.with_name(path.name[:-len(".truth.npz")] + ".nwb") if path.name.endswith(".truth.npz") else None
    if path.name in _RECORDING_FILES or (truth_of is not None and truth_of.is_file()):
        raise ValueError(f"{flag} {path}: that file belongs to the synthetic recordings in {path.parent} (their "
                         "settings or a recording's ground truth); writing it would damage them: give another name")
    held = corpus_holding(path)
    if held is not None:
        raise ValueError(f"{flag} {path}: that is inside the corpus {held[0]} ({held[1]}/, which spikefm writes and "
                         "replaces); nothing was written: give a path outside it")
    check_file_target(path)
    _check_writable(path, flag)
    remove_stale_temporaries(path)


def _check_writable(path: Path, flag: str) -> None:
    """Refuse a path whose folder cannot take a new file (read-only, a system folder): found by
    creating and removing a hidden file in the nearest existing folder, before the command's work,
    not when it writes at the end."""
    import tempfile

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write there ({exc.strerror or first_line(exc)} in {folder}); "
                         "nothing was done: give a path in a folder you can write") from None


def check_results_file(path: str | os.PathLike, flag: str, what: str, earlier: Callable[[dict], bool]) -> None:
    """Refuse a results file name that holds something else: ``path`` may be new or hold JSON
    that ``earlier`` recognises as an earlier result of the same command (``what``, e.g.
    ``"spikefm eval results"``), which is replaced; any other file (notes, another command's
    results) is kept and the command stops before its work. Call after :func:`check_output_file`."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        obj = None
    if not (isinstance(obj, dict) and earlier(obj)):
        raise ValueError(f"{flag} {path}: exists and is not {what} (those are replaced); nothing was written: give "
                         "another name, or move that file away")


def savez_atomic(path: str | os.PathLike, *, compressed: bool = False, **arrays) -> Path:
    """``np.savez`` (or ``np.savez_compressed``) to ``path`` atomically."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no .npz to the name
            save(f, **arrays)

    return write_atomic(path, write)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete folder ``new`` in place of ``dest`` (two renames; readers see the old or
    the new folder, never a mix), then delete the old one."""
    new, dest = Path(new), Path(dest)
    old = dest.with_name(f".{dest.name}-old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so that renames and new entries in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """What the holder wrote into the lock file (it may not have written yet: retry briefly)."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            try:
                info = json.loads(text)
                return (f"PID {info.get('pid', '?')}: {info.get('command', '?')}, "
                        f"since {info.get('since', '?')}")
            except (ValueError, AttributeError):
                return text.replace("\n", " ")[:300]
        time.sleep(0.01)
    return "PID unknown"


@contextmanager
def folder_lock(path: str | os.PathLike, what: str = "folder", *,
                command: str | None = None, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive lock on the folder ``path`` for the ``with`` block; fail at once if
    another process holds it.

    The lock is an OS lock (``fcntl.flock``) on ``path/.spikefm.lock``. While it is held the file
    holds one JSON line, ``{"pid", "command", "since"}``, which the error of a second process
    quotes; it is emptied on release. The OS drops the lock when its holder exits, however it
    exits (``kill -9`` included), so a lock is never stale and there is nothing to clean up. The
    file itself is never deleted: a process that still had the old file open could otherwise
    lock it while a third locks a new one. Locks are per open file, so a second ``folder_lock``
    on the same folder fails within one process too.

    Use it around everything that writes the folder (``spikefm corpus build`` and ``import``
    hold it on the corpus folder)::

        with folder_lock(run_dir, what="training run"):
            ...  # write checkpoints

    Args:
        path: an existing folder.
        what: what the folder is, for the error message ("corpus", "training run").
        command: recorded as the holder's command (default: the process's command line).
        name: the lock file's name in the folder (another name is another lock: fine-tuning holds
            its own around the training loop's, which locks the same folder per segment).

    Yields:
        The lock file's path.

    Raises:
        ValueError: another process holds the lock (the message names its PID and command), or
            the folder cannot be locked (missing, not writable, a file system without locks).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        raise ValueError(f"{path}: cannot lock the {what}: file locks need a POSIX system "
                         "(Linux, macOS)") from None
    path = Path(path)
    lock_path = path / name
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ValueError(f"{path}: cannot lock the {what} ({exc.strerror or exc}); it must be an "
                         "existing folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{path}: the {what} is in use by another process "
                             f"({_lock_holder(fd)}); wait for it to finish or stop it, then "
                             "run again") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot lock the {what} ({exc.strerror or exc}); use a "
                             "folder on a local file system") from None
        holder = {"pid": os.getpid(),
                  "command": " ".join(command.split()) if command else
                  " ".join(" ".join(sys.argv).split())[:500],
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with holding_lock(fd, json.dumps(holder) + "\n"):
            yield lock_path
    finally:
        os.close(fd)


def folder_in_use(path: str | os.PathLike, *, name: str = LOCK_NAME) -> bool:
    """Whether another process holds :func:`folder_lock` on the folder ``path`` now (False when
    the folder or its lock file is missing, or locks cannot be taken here); creates nothing."""
    try:
        import fcntl

        fd = os.open(Path(path) / name, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


@contextmanager
def holding_lock(fd: int, holder: str) -> Iterator[None]:
    """For the ``with`` block, with the ``fcntl.flock`` on the lock file ``fd`` already taken:
    ``holder`` (who holds it, for a waiting or refused process to quote) is the file's content;
    afterwards the file is emptied and the lock released (the file is never deleted: see
    :func:`folder_lock`)."""
    import fcntl

    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    try:
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(name: str, *, what: str = "file name") -> PurePosixPath:
    """A ``/``-separated relative path from elsewhere (a server's listing, a version string),
    checked to stay inside the folder it will be joined onto.

    Rejects absolute paths, Windows drive or UNC paths, backslashes, NUL bytes and ``.``/``..``
    or empty components, before anything is written.

    Raises:
        ValueError: naming ``what``, the offending name and the rule.
    """
    bad = (not isinstance(name, str) or not name or name.startswith("/") or "\\" in name
           or "\x00" in name or _WINDOWS_DRIVE.match(name) is not None
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise ValueError(f"{what} {name!r} is not a plain relative path: absolute paths, '..', "
                         "'.', empty parts, backslashes and drive letters could write outside "
                         "the target folder; refused before anything was written (check the "
                         "source you gave)")
    return PurePosixPath(name)
