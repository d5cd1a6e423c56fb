"""Process groups, FSDP2 sharding and small collective helpers.

One code path for one process and for `torchrun --nproc_per_node N`: `init_distributed` reads the
torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). With WORLD_SIZE
unset or 1 no process group is created, `apply_fsdp` is not called, and every helper below is a
no-op, so single-machine runs have no distributed overhead. NCCL is used on CUDA, gloo on CPU
(FSDP2's `fully_shard` works on CPU with gloo, which is how CI tests the sharded path).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "apply_fsdp",
    "default_mp_policy",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main",
    "barrier",
    "all_reduce_mean",
    "all_reduce_min",
    "all_reduce_sum",
    "broadcast_object",
    "all_gather_object",
    "exit_worker",
    "shutdown",
    "SaidByRankZero",
    "raise_rank_zero_error",
    "env_rank_world",
    "reshard",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: from torchrun (0, 1, 0 for a single process).
        device: the torch.device this rank computes on.
        mesh: 1-D DeviceMesh over all ranks, or None for a single process.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: Any

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from None


def resolve_device_type(device: str, *, option: str = "train.device") -> str:
    """"cpu" or "cuda" for a device option of "auto" (CUDA when available, else CPU), "cpu" or
    "cuda"; ValueError naming ``option`` for "cuda" without a CUDA device or any other value."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}='cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{option} must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's environment (reusing one that exists).

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda". On CUDA each rank uses
            `cuda:LOCAL_RANK`.

    Returns:
        DistInfo for this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if resolve_device_type(device) == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")

    if world_size <= 1:
        return DistInfo(0, 1, 0, torch_device, None)

    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        kwargs = {"device_id": torch_device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(torch_device.type, (world_size,), mesh_dim_names=("dp",))
    return DistInfo(rank, world_size, local_rank, torch_device, mesh)


def default_mp_policy(precision: str, device: torch.device) -> Any:
    """FSDP2 mixed precision: bf16 parameters with fp32 gradient reduction on CUDA under "bf16";
    None (fp32 parameters) otherwise. On CPU the loop relies on bf16 autocast alone, as a single
    CPU process does, so that the sharded and unsharded CPU runs compute the same thing (the policy
    itself also works with gloo in torch 2.13)."""
    if precision != "bf16" or device.type != "cuda":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def apply_fsdp(model: nn.Module, blocks: list[nn.Module], mesh: Any, mp_policy: Any = None) -> nn.Module:
    """Shard `model` with FSDP2: `fully_shard` each block, then the root (torchtitan pattern).

    Parameters become DTensors sharded on dim 0 across `mesh`. The last block is not resharded
    after forward because backward needs it immediately.

    Args:
        model: the full model (parameters on CPU or on the mesh's device; they are moved).
        blocks: sub-modules of `model` that become separate FSDP units.
        mesh: a 1-D DeviceMesh.
        mp_policy: a `MixedPrecisionPolicy` or None for full precision.

    Returns:
        `model` itself (sharded in place).
    """
    import warnings

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # FSDP2 warns when a wrapped module returns a view (F.linear on a 3-D input does) because an
    # in-place op on it would skip the all-gather; the families' losses only read the outputs
    # (tests/test_distributed.py: the same losses and weights as one process), so the warning,
    # printed on every rank of every run, says nothing true here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor",
                            category=UserWarning)
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for i, block in enumerate(blocks):
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1, **kwargs)
    fully_shard(model, **kwargs)
    return model


class SaidByRankZero(ValueError):
    """A refusal that rank 0 met and sent to the other ranks (:func:`raise_rank_zero_error`):
    every rank stops with it, and only rank 0 prints it (the command line stays silent on the
    others), so a torchrun job says it once."""


def raise_rank_zero_error(error: str | None) -> None:
    """Every rank's half of a decision rank 0 made alone: ``error`` is rank 0's refusal (``None``:
    none), as :func:`broadcast_object` delivered it. Rank 0 raises it as a ValueError, the other
    ranks as :class:`SaidByRankZero`."""
    if error is None:
        return
    raise (ValueError if get_rank() == 0 else SaidByRankZero)(error)


def forward_in_slices(forward, num_rows: int, rows_per_call: int, calls: int) -> list:
    """``forward(lo, hi)`` over the rows ``[0, num_rows)`` of a batch in slices of ``rows_per_call``,
    called exactly ``calls`` times (FSDP gathers parameters in every forward, so every rank must
    call it equally often): a call past the rows runs on row 0 alone and its output is dropped.
    Returns the kept outputs in row order. Lets validation score a batch larger than a rank's
    training micro-batch without more memory than one."""
    if calls * rows_per_call < num_rows:
        raise ValueError(f"{calls} calls of {rows_per_call} rows cannot cover {num_rows} rows")
    outs = []
    for k in range(calls):
        lo = k * rows_per_call
        if lo < num_rows:
            outs.append(forward(lo, min(lo + rows_per_call, num_rows)))
        else:
            forward(0, 1)
    return outs


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, before any process group exists."""
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 unit of ``model`` (a no-grad forward leaves the
    root and the last block gathered until the next backward); nothing for an unsharded model."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce(values: list[float], device: torch.device | None, op=None) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t.tolist()


def _device_for_collectives() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of floats over ranks (identity for a single process)."""
    if not is_distributed():
        return [float(v) for v in values]
    return _reduce([float(v) for v in values], _device_for_collectives())


def all_reduce_min(values: list[float]) -> list[float]:
    """Element-wise minimum of a list of floats over ranks (identity for a single process)."""
    if not is_distributed():
        return [float(v) for v in values]
    return _reduce([float(v) for v in values], _device_for_collectives(), op=dist.ReduceOp.MIN)


def all_reduce_mean(values: list[float]) -> list[float]:
    """Element-wise mean of a list of floats over ranks, for logging."""
    if not is_distributed():
        return [float(v) for v in values]
    n = get_world_size()
    return [v / n for v in all_reduce_sum(values)]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, as a list indexed by rank (``[obj]`` for a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def exit_worker(code: int, *, barrier: bool = True) -> None:
    """End a torchrun worker of a finished run: barrier, flush, ``os._exit(code)``.

    ``barrier=False`` ends a worker whose command failed or was interrupted: another rank may
    have stopped, so nothing is waited for; leaving at once also keeps its exit status (the
    teardown could abort it, SIGABRT, and torchrun then reported that instead).

    Does nothing (returns) outside a multi-process group. Interpreter shutdown with a live gloo
    group sometimes aborted a rank after all its work was done ("terminate called without an
    active exception", SIGABRT), so torchrun reported the finished run as failed
    (``benchmarks/stress_torchrun.py`` counts such failures). After the barrier every rank has finished every
    collective and written everything (writes are atomic), so the process leaves without running
    C++ destructors. Only for the end of a command-line run, never inside a library call.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return
    if barrier:
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def shutdown() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
