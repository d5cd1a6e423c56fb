"""Atomic, resumable checkpoints and the final model export.

Layout of one checkpoint (all `torch.save` files, readable with `torch.load(weights_only=True)`):

    RUN_DIR/checkpoints/step_00000200/
        model.pt        full (unsharded) model state dict, fp32, CPU          -- written by rank 0
        optim.pt        full optimizer state dict keyed by parameter name     -- rank 0
        trainer.pt      {"step", "tokens", "world_size", "scheduler"}          -- rank 0
        rank_00000.pt   {"loader": loader.state_dict(), "rng": rng_state()}    -- one per rank
        config.json     the run's self-description (see runinfo)               -- rank 0

Full state dicts come from `torch.distributed.checkpoint.state_dict.get_state_dict` with
`full_state_dict=True, cpu_offload=True` (a collective under FSDP: every rank calls it, rank 0
receives the tensors) and go back in with `set_state_dict(..., broadcast_from_rank0=True)`, so a
checkpoint does not depend on how the model was sharded. Each rank's data-loader position and RNG
streams are per-rank files; resuming therefore needs the same world size.

Atomicity: every rank writes into `checkpoints/.tmp-step_XXXXXXXX/`, each file is fsynced, then
rank 0 renames the directory to `step_XXXXXXXX` (os.replace) and fsyncs the parent. A directory
named `step_*` is therefore always complete; a crash leaves at most a `.tmp-*` directory, which the
next save removes. The file system must be shared by all ranks (always true on one machine).

The final export, `RUN_DIR/model.safetensors`, is the full state dict the rest of the toolkit
loads (`load_exported_model`), next to RUN_DIR/config.json.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spikefm.fileio import write_atomic, write_json_atomic
from spikefm.train import dist as d

__all__ = [
    "CHECKPOINT_DIR",
    "rng_state",
    "set_rng_state",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "export_model",
    "load_exported_model",
]

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first."""
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
    """Path of the newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


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
    """Write checkpoint `step` atomically and delete all but the newest `keep`.

    Collective: every rank must call it. `trainer_state` (ints/floats) is stored with the step.

    Returns:
        The checkpoint directory.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(run_dir) / CHECKPOINT_DIR
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_state_dict_options(cpu_offload=True))
    rank = d.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    d.barrier()
    _save({"loader": loader.state_dict(), "rng": rng_state()}, tmp / f"rank_{rank:05d}.pt")
    if rank == 0:
        _save(model_sd, tmp / "model.pt")
        _save(optim_sd, tmp / "optim.pt")
        _save({**trainer_state, "step": step, "world_size": d.get_world_size(),
               "scheduler": scheduler.state_dict()}, tmp / "trainer.pt")
        write_json_atomic(tmp / "config.json", info)
    d.barrier()
    if rank == 0:
        _fsync_dir(tmp)
        if final.exists():  # same step saved twice (e.g. stop_after on a ckpt_every step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


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
        raise ValueError(
            f"checkpoint {path} was written by {trainer['world_size']} processes, resuming with "
            f"{world_size}; data-loader positions are per rank, so resume with the same world size"
        )
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
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)
    optimizer.zero_grad(set_to_none=True)
    scheduler.load_state_dict(trainer["scheduler"])
    per_rank = _load(path / f"rank_{rank:05d}.pt")
    loader.load_state_dict(per_rank["loader"])
    set_rng_state(per_rank["rng"])
    return trainer


# ----------------------------------------------------------------------------------------------
# final export


def export_model(run_dir: str | os.PathLike, model: nn.Module) -> Path:
    """Write the full fp32 state dict to RUN_DIR/model.safetensors (collective; rank 0 writes).

    Tensors that share storage (tied weights) are stored as separate copies.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_state_dict_options(cpu_offload=True))
    out = Path(run_dir) / "model.safetensors"
    if d.get_rank() == 0:
        seen: set[int] = set()
        tensors = {}
        for key, t in sd.items():
            t = t.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            tensors[key] = t.clone() if ptr in seen else t
            seen.add(ptr)
        write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    d.barrier()
    return out


def load_exported_model(run_dir: str | os.PathLike, family: Any, cfg: Any,
                        device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its RunConfig and RUN_DIR/model.safetensors.

    Args:
        run_dir: a finished run directory.
        family: the run's model family; cfg: its RunConfig (``spikefm.families.load_model``
            reads both from RUN_DIR/config.json).

    Returns:
        The model in eval mode on `device`.
    """
    from safetensors.torch import load_file

    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{path} not found; the run has not finished (or was not exported)")
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    # Non-persistent buffers are not in the file. A family may offer init_for_loading: an
    # initialisation that needs nothing but the config (no pretrained weights from elsewhere).
    getattr(family, "init_for_loading", family.init_weights)(model)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval()
