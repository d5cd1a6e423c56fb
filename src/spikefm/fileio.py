"""Atomic file writes shared by every layer (no torch): write to a temporary name in the same
folder, fsync, then rename, so readers see the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
