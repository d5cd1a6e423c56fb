"""Atomic file writes shared by every layer (no torch): write to a temporary name in the same
folder, fsync, then rename, so readers see the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to create a temporary file beside ``path``, fsync it and rename it over
    ``path``; on failure the temporary file is removed and ``path`` is untouched.

    The temporary name is hidden and ends in ``.tmp-PID``, so a file left by a killed process
    never matches a pattern such as ``*.json`` or ``*.nwb``. Writers must therefore not pick a
    format from the name: pass it explicitly (``savefig(tmp, format="png")``) or write through a
    file object (``np.savez(f, ...)``, which would otherwise append ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
