"""Atomic, verified, resumable checkpoints; the final model export; reading model files safely.

Layout of one checkpoint (all `torch.save` files, readable with `torch.load(weights_only=True)`):

    RUN_DIR/checkpoints/step_00000200/
        model.pt        full (unsharded) model state dict, fp32, CPU          -- written by rank 0
        optim.pt        full optimizer state dict keyed by parameter name     -- rank 0
        trainer.pt      {"step", "tokens", "world_size", "scheduler",           -- rank 0
                         "params_without_optimizer_state": names of trainable
                         parameters no gradient had reached (no Adam state yet)}
        rank_00000.pt   {"loader": loader.state_dict(), "rng": rng_state()}    -- one per rank
        config.json     the run's self-description (see runinfo)               -- rank 0
        manifest.json   {"format", "step", "world_size", "files": {name: {"bytes", "sha256"}}}
                        -- rank 0, written last

Full state dicts come from `torch.distributed.checkpoint.state_dict.get_state_dict` with
`full_state_dict=True, cpu_offload=True` (a collective under FSDP: every rank calls it, rank 0
receives the tensors) and go back in with `set_state_dict(..., broadcast_from_rank0=True)`, so a
checkpoint does not depend on how the model was sharded. Each rank's data-loader position and RNG
streams are per-rank files; resuming therefore needs the same world size (refused otherwise, in
one line, before anything is built).

Atomicity: every rank writes into `checkpoints/.tmp-step_XXXXXXXX/`, hashing each file as it
writes it (sha256) and fsyncing it; rank 0 writes `manifest.json` last (itself through a temporary
name), then renames the folder to `step_XXXXXXXX` (os.replace) and fsyncs the parent. A folder
named `step_*` is therefore complete when it was renamed; a crash leaves at most a `.tmp-*` (or a
`.del-*` folder of an old checkpoint being deleted), which the next save removes. Old checkpoints
are renamed to `.del-*` before they are deleted, so a kill in the middle of a deletion never
leaves a half-deleted `step_*`. The file system must be shared by all ranks (always true on one
machine).

Verification: :func:`select_checkpoint` (what ``--resume`` uses) checks the newest checkpoint's
files against its manifest (presence, sizes, sha256); a damaged one (a truncated file, a disk
error) is renamed to `checkpoints/damaged-step_XXXXXXXX` (kept, never deleted) and the next older
intact one is used, with a one-line warning.

The final export, `RUN_DIR/model.safetensors`, is the full state dict the rest of the toolkit
loads (`load_exported_model`), next to RUN_DIR/config.json; its metadata records the step. Model
folders may come from elsewhere: :func:`read_safetensors_header` reads and checks a safetensors
header (8-byte little-endian length + JSON) without reading any tensor, and
:func:`load_exported_model` compares it with the model the config describes before allocating
anything, so a config with absurd sizes or a malformed file is one ValueError, not an allocation
that runs until the process is killed. :func:`confined_file` keeps every path inside its folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from spikefm.fileio import check_relative_path, default_file_mode, fsync_dir, write_atomic, write_json_atomic
from spikefm.train import dist as d

__all__ = [
    "CHECKPOINT_DIR",
    "MANIFEST_NAME",
    "EXPORT_NAME",
    "rng_state",
    "set_rng_state",
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_problem",
    "other_world_size",
    "select_checkpoint",
    "save_checkpoint",
    "prune_checkpoints",
    "load_checkpoint",
    "export_model",
    "write_safetensors",
    "exported_step",
    "load_exported_model",
    "read_safetensors_header",
    "confined_file",
    "read_json_file",
    "world_size_message",
    "check_run_folder",
]

CHECKPOINT_DIR = "checkpoints"
MANIFEST_NAME = "manifest.json"
EXPORT_NAME = "model.safetensors"
MANIFEST_FORMAT = 1
DAMAGED_PREFIX = "damaged-"
_STEP_RE = re.compile(r"^step_(\d+)$")
_LEFTOVER_PREFIXES = (".tmp-", ".del-")

#: Names whose presence makes a folder a spikefm run (started or finished).
RUN_MARKERS = ("config.json", "metrics.jsonl", CHECKPOINT_DIR, EXPORT_NAME)


def check_run_folder(out_dir: str | os.PathLike, *, allowed: tuple[str, ...] = ()) -> None:
    """Refuse to start a run in a folder that holds files of something else (a project folder, a
    corpus, recordings): a run folder is new, empty, or a spikefm run. Hidden entries (locks,
    temporaries) and the names in ``allowed`` do not count.

    Raises:
        ValueError: naming the folder and one of the files found.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or any((out_dir / n).exists() for n in RUN_MARKERS):
        return
    other = sorted(p.name for p in out_dir.iterdir()
                   if not p.name.startswith(".") and p.name not in allowed)
    if not other:
        return
    if (out_dir / "manifest.json").is_file():  # --data and --out swapped, or a corpus given twice
        raise ValueError(f"{out_dir} is a spikefm corpus (manifest.json), not a run folder; nothing was written: "
                         "give a new run folder (--out), e.g. runs/NAME, and the corpus as --data")
    from spikefm.corpus.nwb import nwb_in_folder  # on the way to a refusal only (it imports pyarrow)

    if nwb_in_folder(out_dir) is not None:
        raise ValueError(f"{out_dir} holds NWB recordings, not a spikefm run; nothing was written: give a new "
                         "run folder (--out), e.g. runs/NAME")
    raise ValueError(f"{out_dir}: folder has files and is not a spikefm run (found "
                     f"{other[0]!r}{f' and {len(other) - 1} more' if len(other) > 1 else ''}); "
                     "nothing was written: give a new or empty folder (--out)")


# ----------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (when present) all CUDA generator states, as tensors/ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# files


class _HashingWriter:
    """A binary file object that hashes (sha256) and counts the bytes written through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += view.nbytes
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()


def _save(obj: Any, path: Path) -> dict[str, Any]:
    """torch.save + fsync; returns the file's manifest entry {"bytes", "sha256"}."""
    with open(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}


def _digest(path: Path) -> dict[str, Any]:
    """The manifest entry of an existing file (read in 1 MiB pieces)."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            sha.update(piece)
            size += len(piece)
    return {"bytes": size, "sha256": sha.hexdigest()}


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _retire(path: Path) -> None:
    """Delete a checkpoint folder: rename it to a hidden `.del-*` name first (atomic), so that a
    kill during the deletion never leaves a half-deleted `step_*` behind."""
    dest = path.with_name(f".del-{path.name}")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(path, dest)
    shutil.rmtree(dest, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Remove `.tmp-*` / `.del-*` folders that a killed save left (the run folder is locked)."""
    for p in root.iterdir():
        if p.name.startswith(_LEFTOVER_PREFIXES) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoints of a run as (step, path), oldest first (folders named `step_*`; use
    :func:`checkpoint_problem` to verify one)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Path of the newest checkpoint folder, or None (not verified: see :func:`select_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _expected_files(world_size: int) -> list[str]:
    return (["model.pt", "optim.pt", "trainer.pt", "config.json"]
            + [f"rank_{r:05d}.pt" for r in range(world_size)])


def _read_manifest(path: Path) -> dict[str, Any]:
    """The checkpoint's manifest, structurally checked (ValueError naming the problem)."""
    try:
        with open(path / MANIFEST_NAME) as f:
            manifest = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
    ok = (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
          and isinstance(manifest.get("files"), dict)
          and isinstance(manifest.get("world_size"), int) and manifest["world_size"] >= 1
          and isinstance(manifest.get("step"), int))
    if not ok:
        raise ValueError(f"{MANIFEST_NAME} is not a format-{MANIFEST_FORMAT} checkpoint manifest")
    return manifest


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the checkpoint folder ``path`` (one line), or None when it is intact:
    its manifest lists every file a checkpoint needs and each file has the recorded size and
    sha256. A folder without a manifest (written by spikefm before checkpoints were verified) is
    accepted when its files are present."""
    path = Path(path)
    if not (path / MANIFEST_NAME).exists():
        missing = [n for n in ("model.pt", "optim.pt", "trainer.pt", "rank_00000.pt")
                   if not (path / n).is_file()]
        return f"no {MANIFEST_NAME} and {', '.join(missing)} missing" if missing else None
    try:
        manifest = _read_manifest(path)
    except (OSError, ValueError) as exc:
        return str(exc)
    m = _STEP_RE.match(path.name)
    if m and int(m.group(1)) != manifest["step"]:
        return f"{MANIFEST_NAME} is for step {manifest['step']}"
    files = manifest["files"]
    unlisted = [n for n in _expected_files(manifest["world_size"]) if n not in files]
    if unlisted:
        return f"{MANIFEST_NAME} does not list {', '.join(unlisted)}"
    for name, entry in files.items():
        if not (isinstance(name, str) and "/" not in name and "\\" not in name
                and name not in ("", ".", "..") and isinstance(entry, dict)):
            return f"{MANIFEST_NAME} lists a bad file entry {name!r}"
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry.get("bytes"):
            return f"{name} has {size} bytes, the manifest says {entry.get('bytes')}"
        try:
            actual = _digest(file)["sha256"]
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
        if actual != entry.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


def _checkpoint_world_size(path: Path) -> int:
    if (path / MANIFEST_NAME).exists():
        return int(_read_manifest(path)["world_size"])
    return int(_load(path / "trainer.pt")["world_size"])


def other_world_size(run_dir: str | os.PathLike, world_size: int) -> tuple[Path, int] | None:
    """The checkpoint a resume of an unfinished run would continue and the world size it records,
    when that differs from ``world_size`` (for an early, clearer refusal, read without the run's
    lock); None when they agree, the run has finished (its export is there: a resume reports
    that), or the newest checkpoint is damaged (:func:`select_checkpoint` passes over it, and an
    older one may agree)."""
    found = list_checkpoints(run_dir)
    if not found or (Path(run_dir) / EXPORT_NAME).exists():
        return None
    path = found[-1][1]
    try:
        saved = _checkpoint_world_size(path)
    except Exception:  # noqa: BLE001 - damaged: select_checkpoint passes over it and says so
        return None
    if saved == world_size or checkpoint_problem(path) is not None:  # verified only when it would refuse
        return None
    return path, saved


def select_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, int | None, list[str]]:
    """The newest intact checkpoint of a run, for resuming (call on one process: rank 0).

    Leftovers of an interrupted save or deletion (``.tmp-*``, ``.del-*``) are removed (the caller
    holds the run folder's lock). Checkpoints are verified newest first
    (:func:`checkpoint_problem`); each damaged one is renamed
    to ``checkpoints/damaged-step_XXXXXXXX`` (kept for inspection, never deleted, never picked
    again) and the next older one is tried.

    Returns:
        (path or None, the world size that wrote it or None, one-line warnings about the damaged
        checkpoints that were passed over).
    """
    notes: list[str] = []
    chosen = None
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.is_dir():
        _remove_leftovers(root)
    for _, path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            try:
                world_size = _checkpoint_world_size(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable legacy trainer.pt is damage too
                problem = f"trainer.pt cannot be read ({type(exc).__name__})"
            else:
                chosen = (path, world_size)
                break
        aside = path.with_name(DAMAGED_PREFIX + path.name)
        n = 1
        while aside.exists():
            n += 1
            aside = path.with_name(f"{DAMAGED_PREFIX}{path.name}.{n}")
        os.replace(path, aside)
        notes.append(f"checkpoint {path.name} is damaged ({problem}); moved it to "
                     f"{CHECKPOINT_DIR}/{aside.name}")
    if chosen is None:
        if notes:
            notes[-1] += "; no intact checkpoint is left, so the run starts from step 0"
        return None, None, notes
    if notes:
        notes[-1] += f"; resuming from {chosen[0].name}"
    return chosen[0], chosen[1], notes


def _state_dict_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: Any,
    trainer_state: dict[str, Any],
    info: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically, manifest last, and delete all but the newest `keep`.

    Collective: every rank must call it. `trainer_state` (ints/floats) is stored with the step.

    Returns:
        The checkpoint directory.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(run_dir) / CHECKPOINT_DIR
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options(cpu_offload=True))
    # trainable parameters no gradient has reached yet have no optimizer state; loading must leave
    # them without (see load_checkpoint), or their first update would differ from the unbroken run.
    # Found by name in the full optimizer state (rank 0 holds it), not by tensor: under FSDP2 a
    # module a no-grad forward left unsharded lists tensors that are not the optimizer's.
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    stateless = [n for n in trainable if n not in optim_sd.get("state", {})]
    rank, world_size = d.get_rank(), d.get_world_size()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp.mkdir()
    try:
        _write_checkpoint(tmp, final, root, run_dir, step, rank, world_size, keep, model_sd, optim_sd, stateless,
                          loader, trainer_state, scheduler, info)
    except BaseException:
        # an interruption (Ctrl-C) or a failure mid-save: the temporary folder goes at once (it was
        # left for the next save or resume to remove)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_checkpoint(tmp, final, root, run_dir, step, rank, world_size, keep, model_sd, optim_sd, stateless,
                      loader, trainer_state, scheduler, info) -> None:
    """The body of :func:`save_checkpoint` after its temporary folder exists (every rank)."""
    d.barrier()
    rank_file = f"rank_{rank:05d}.pt"
    mine = {rank_file: _save({"loader": loader.state_dict(), "rng": rng_state()}, tmp / rank_file)}
    entries = d.all_gather_object(mine)  # after every rank has written (and fsynced) its file
    if rank == 0:
        files: dict[str, Any] = {}
        for entry in entries:
            files.update(entry)
        files["model.pt"] = _save(model_sd, tmp / "model.pt")
        files["optim.pt"] = _save(optim_sd, tmp / "optim.pt")
        files["trainer.pt"] = _save({**trainer_state, "step": step, "world_size": world_size,
                                     "scheduler": scheduler.state_dict(),
                                     "params_without_optimizer_state": stateless}, tmp / "trainer.pt")
        write_json_atomic(tmp / "config.json", info)
        files["config.json"] = _digest(tmp / "config.json")
        write_json_atomic(tmp / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "step": step,
                                                "world_size": world_size, "files": files})
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run passing a damaged one)
            _retire(final)
        os.replace(tmp, final)
        fsync_dir(root)
        prune_checkpoints(run_dir, keep)
    d.barrier()


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (one process; each is renamed to `.del-*`
    first, so an interrupted deletion never leaves a half-deleted `step_*`)."""
    if keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    for _, old in list_checkpoints(run_dir)[:-keep]:
        _retire(old)


def rewrite_checkpoint_configs(run_dir: str | os.PathLike, edit) -> int:
    """Apply ``edit(info) -> info`` to the ``config.json`` of every checkpoint of ``run_dir`` and
    record the new file's size and sha256 in that checkpoint's manifest (each file written to a
    temporary name, then renamed; a crash between the two leaves a checkpoint that
    :func:`checkpoint_problem` reports as damaged, never a silently wrong one). Checkpoints that
    are already damaged are left as they are. Returns how many were rewritten."""
    from spikefm.fileio import write_json_atomic

    done = 0
    for _, path in list_checkpoints(run_dir):
        if checkpoint_problem(path) is not None or not (path / "config.json").is_file():
            continue
        manifest = _read_manifest(path)
        write_json_atomic(path / "config.json", edit(read_json_file(path / "config.json", what="checkpoint config")))
        manifest["files"]["config.json"] = _digest(path / "config.json")
        write_json_atomic(path / MANIFEST_NAME, manifest)
        done += 1
    return done


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: Any,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, this rank's loader and RNG from checkpoint `path`.

    Collective under FSDP. Rank 0 reads model.pt / optim.pt and broadcasts them.

    Returns:
        The trainer state (at least "step").

    Raises:
        ValueError: when the checkpoint was written with another world size.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    trainer = _load(path / "trainer.pt")
    world_size, rank = d.get_world_size(), d.get_rank()
    if trainer["world_size"] != world_size:
        raise ValueError(world_size_message(path, trainer["world_size"], world_size))
    distributed = d.is_distributed()
    if rank == 0 or not distributed:
        model_sd, optim_sd = _load(path / "model.pt"), _load(path / "optim.pt")
    else:
        model_sd, optim_sd = {}, {}
    # Two calls, not set_state_dict(model, optimizer, ...): the latter treats an empty model
    # state dict (what ranks > 0 pass with broadcast_from_rank0) as "optimizer only", so those
    # ranks skip the model broadcast that rank 0 waits in, and the job deadlocks (torch 2.13).
    options = _state_dict_options(broadcast_from_rank0=distributed)
    set_model_state_dict(model, model_sd, options=options)
    # strict=False: a parameter that had no gradient before the save (a session or a label head no
    # batch reached yet) has no optimizer state in the checkpoint. Loading gives every parameter a
    # fresh state (one zero-gradient step at lr 0); drop it again for those, so that their first
    # real update is the one the uninterrupted run makes.
    set_optimizer_state_dict(model, optimizer, optim_sd,
                             options=_state_dict_options(broadcast_from_rank0=distributed, strict=False))
    stateless = set(trainer.get("params_without_optimizer_state", ()))
    for name, param in model.named_parameters():
        if name in stateless:
            optimizer.state.pop(param, None)
    optimizer.zero_grad(set_to_none=True)
    scheduler.load_state_dict(trainer["scheduler"])
    per_rank = _load(path / f"rank_{rank:05d}.pt")
    loader.load_state_dict(per_rank["loader"])
    set_rng_state(per_rank["rng"])
    return trainer


def world_size_message(path: str | os.PathLike, saved: int, now: int) -> str:
    """The one-line refusal to resume checkpoint ``path`` (written by ``saved`` processes) with
    ``now`` processes."""
    launch = (f"torchrun --nproc_per_node {saved} -m spikefm.cli train ..." if saved > 1
              else "one process, without torchrun")
    return (f"checkpoint {Path(path).name} was written by {saved} process(es) and this run has "
            f"{now}: each rank's data position and random streams are saved per rank, so the "
            f"run cannot continue exactly with another world size; resume with {launch}, or "
            "start a new run folder (--out)")


# ----------------------------------------------------------------------------------------------
# final export


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> Path:
    """``safetensors`` ``save_file`` to ``path`` atomically (:func:`spikefm.fileio.write_atomic`),
    with the permissions of the files beside it (``save_file`` writes ``0o600``, so colleagues
    sharing a run folder could read every file of it but the weights)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, default_file_mode())

    return write_atomic(path, write)


def export_model(run_dir: str | os.PathLike, model: nn.Module, *, step: int | None = None) -> Path:
    """Write the full fp32 state dict to RUN_DIR/model.safetensors (collective; rank 0 writes).

    Tensors that share storage (tied weights) are stored as separate copies. ``step`` (the
    optimizer steps the weights have had) goes into the file's metadata as ``spikefm_step``.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_state_dict_options(cpu_offload=True))
    out = Path(run_dir) / EXPORT_NAME
    if d.get_rank() == 0:
        seen: set[int] = set()
        tensors = {}
        for key, t in sd.items():
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[key] = t.clone() if ptr in seen else t
            seen.add(ptr)
        metadata = {"format": "pt"}
        if step is not None:
            metadata["spikefm_step"] = str(int(step))
        write_safetensors(out, tensors, metadata)
    d.barrier()
    return out


def exported_step(run_dir: str | os.PathLike) -> int | None:
    """The step recorded in RUN_DIR/model.safetensors (None when the file has none, e.g. written
    by fine-tuning or an older spikefm). ValueError when the file is not a safetensors file."""
    _, metadata = read_safetensors_header(Path(run_dir) / EXPORT_NAME)
    value = metadata.get("spikefm_step")
    return int(value) if isinstance(value, str) and value.isdigit() else None


# ----------------------------------------------------------------------------------------------
# model folders from elsewhere

#: Largest safetensors JSON header accepted (the format's own readers use 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Largest JSON file (config.json, a shard index) read from a model folder.
MAX_JSON_BYTES = 16 << 20
#: Buffers not stored in the weights file (rotary tables...) may take at most this many bytes.
MAX_DERIVED_BUFFER_BYTES = 1 << 30

_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def confined_file(folder: str | os.PathLike, name: str, *, what: str = "file") -> Path:
    """``folder/name`` resolved (symlinks followed), refused unless it stays inside ``folder``.

    ``name`` is a relative '/'-separated name from the folder's own files (a shard index, say);
    absolute names, '..', and symlinks that lead out of the folder are refused. The file need not
    exist.

    Raises:
        ValueError: one line naming the folder, the name and where it leads.
    """
    root = Path(folder).resolve()
    rel = check_relative_path(name, what=f"{what} name")
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{what} {name!r} of {folder} leads outside that folder (to {target}); "
                         "a model folder must hold its own files: copy them into it")
    return target


def read_json_file(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """A small JSON file (at most MAX_JSON_BYTES), with one-line errors."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{what} {path} has {size:,} bytes, more than the {MAX_JSON_BYTES:,} a "
                         "JSON description can need; it is not the file expected")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({' '.join(str(exc).split())})") from None


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The tensors and metadata of a safetensors file, from its header only (no tensor is read).

    The file is an 8-byte little-endian header length n, n bytes of JSON, then the data. Checked:
    the length fits the file, the JSON is an object whose entries have a known dtype, a shape of
    ints >= 0 and data offsets [begin, end] inside the data with end - begin equal to the shape's
    size in bytes, the tensors do not overlap, and ``__metadata__`` maps strings to strings.

    Returns:
        ({name: {"dtype", "shape" (tuple), "data_offsets" (tuple)}}, metadata).

    Raises:
        ValueError: one line naming the file and the first problem found.
    """
    path = Path(path)

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path} is not a valid safetensors file: {problem}; the file is damaged "
                          "or of another format: copy or export it again")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"the header length {n:,} exceeds the file ({size:,} bytes) or "
                      f"{MAX_HEADER_BYTES:,} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(header, dict):
        raise bad(f"the header is a JSON {type(header).__name__}, not an object")
    data_bytes = size - 8 - n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("__metadata__ must map strings to strings")
    tensors: dict[str, dict[str, Any]] = {}
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of ints >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise bad(f"tensor {name!r} has data offsets {offsets!r} outside the "
                      f"{data_bytes:,} data bytes")
        nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise bad(f"tensor {name!r} of shape {tuple(shape)} {dtype} needs {nbytes:,} bytes, its "
                      f"offsets span {offsets[1] - offsets[0]:,}")
        spans.append((offsets[0], offsets[1], name))
        tensors[name] = {"dtype": dtype, "shape": tuple(shape), "data_offsets": tuple(offsets)}
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise bad(f"tensors {a!r} and {b!r} overlap")
    return tensors, metadata


class _ModelTooLarge(ValueError):
    pass


@contextmanager
def _allocation_guard(max_numel: int, max_count: int, max_buffer_numel: int, what: str) -> Iterator[None]:
    """Stop a model build (on the meta device) as soon as it registers more parameters or buffer
    elements than the weights file can fill: a config with absurd sizes fails in a moment instead
    of building millions of modules."""
    from torch.nn.modules.module import (
        register_module_buffer_registration_hook,
        register_module_parameter_registration_hook,
    )

    totals = {"numel": 0, "count": 0, "buffers": 0}

    def on_parameter(module: nn.Module, name: str, param: Any) -> None:
        if param is None:
            return
        totals["numel"] += param.numel()
        totals["count"] += 1
        if totals["numel"] > max_numel or totals["count"] > max_count:
            raise _ModelTooLarge(f"{what} describes a model with more parameters than its weights "
                                 f"file holds (over {max_numel:,} values or {max_count:,} tensors); "
                                 "the config and the weights do not belong together")

    def on_buffer(module: nn.Module, name: str, buffer: Any) -> None:
        if buffer is None:
            return
        totals["buffers"] += buffer.numel()
        if totals["buffers"] > max_buffer_numel:
            raise _ModelTooLarge(f"{what} describes buffers of over {max_buffer_numel:,} values "
                                 "(e.g. a huge maximum sequence length); refused before allocating")

    handles = [register_module_parameter_registration_hook(on_parameter),
               register_module_buffer_registration_hook(on_buffer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: cannot read the tensors ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}); the file is damaged: export or "
                         "copy it again") from None


def _build_for_loading(run_dir: str | os.PathLike, family: Any, cfg: Any) -> nn.Module:
    """The family's ``build_recorded_model`` from what RUN_DIR/config.json records (no data read),
    else its ``build_model`` (which may read the run's data)."""
    from spikefm.train.runinfo import read_run_info

    recorded = getattr(family, "build_recorded_model", None)
    if recorded is not None:
        info = read_run_info(run_dir).get("family_info")
        model = recorded(cfg, info) if isinstance(info, dict) else None
        if model is not None:
            return model
    return family.build_model(cfg)


def load_exported_model(run_dir: str | os.PathLike, family: Any, cfg: Any,
                        device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its RunConfig and RUN_DIR/model.safetensors.

    The file's header is read and checked first; the model is built on the meta device (stopped
    early if it grows past what the file holds), its parameter names and shapes are compared with
    the header, and only then is memory allocated and the data read. Works on run folders from
    elsewhere: nothing outside the folder is read (symlinks leading out are refused) when the
    family builds the model from what the run recorded (its optional ``build_recorded_model``, as
    the NDT and NEDS do; otherwise ``build_model`` may read the run's data).

    Args:
        run_dir: a finished run directory.
        family: the run's model family; cfg: its RunConfig (``spikefm.families.load_model``
            reads both from RUN_DIR/config.json).

    Returns:
        The model in eval mode on `device`.

    Raises:
        ValueError: missing or malformed weights, or weights that do not fit the config (one line).
    """
    path = confined_file(run_dir, EXPORT_NAME, what="weights file")
    if not path.is_file():
        tuning = next((n for n in ("finetune.json", "early_stopping_progress.json", "early_stopping.json")
                       if (Path(run_dir) / n).is_file()), None)
        if tuning:  # spikefm train --resume would retrain it to its last step, not keep its best weights
            raise ValueError(f"{Path(run_dir) / EXPORT_NAME} not found; {run_dir} is a fine-tuning ({tuning}) that "
                             "has not finished or lost its weights: run its spikefm finetune command again (the "
                             "same --out continues an interrupted one; a finished one needs a new --out)")
        raise ValueError(f"{Path(run_dir) / EXPORT_NAME} not found; the run has not finished (or was "
                         "not exported): resume it with spikefm train --resume")
    header, _ = read_safetensors_header(path)
    file_numel = sum(math.prod(t["shape"]) for t in header.values())
    what = f"{Path(run_dir) / 'config.json'}"
    with _allocation_guard(2 * file_numel + (1 << 20), 2 * len(header) + 64,
                           MAX_DERIVED_BUFFER_BYTES // 4, what), torch.device("meta"):
        model = _build_for_loading(run_dir, family, cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model {what} describes: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}; the config and the "
                         "weights do not belong together")
    for key, shape in expected.items():
        if header[key]["shape"] != shape:
            raise ValueError(f"{path}: tensor {key!r} has shape {header[key]['shape']}, the config "
                             f"implies {shape}; the config and the weights do not belong together")
    derived = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in expected)
    if derived > MAX_DERIVED_BUFFER_BYTES:
        raise ValueError(f"{what} implies {derived:,} bytes of derived buffers (e.g. rotary tables "
                         f"of a huge max_seq_len), over the {MAX_DERIVED_BUFFER_BYTES:,} allowed")
    model.to_empty(device="cpu")
    # Non-persistent buffers are not in the file. A family may offer init_for_loading: an
    # initialisation that needs nothing but the config (no pretrained weights from elsewhere).
    getattr(family, "init_for_loading", family.init_weights)(model)
    model.load_state_dict(_load_safetensors(path), strict=True)
    return model.to(device).eval()
