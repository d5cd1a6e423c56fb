"""The contract between a model family and the shared training loop, plus the family registry.

A family (autoregressive Llama on spike tokens, masked NDT, ...) is a small object that builds
its model and data; the loop in `spikefm.train.loop` owns everything else (devices, ranks, FSDP,
precision, optimizer, schedule, checkpoints, logging). Families never import torch.distributed.

How the loop uses a family, in order:

    1. `with torch.device("meta"): model = family.build_model(cfg)`  -- no memory is allocated.
    2. `model.to_empty(device="cpu")`, `torch.manual_seed(cfg.train.seed)`,
       `family.init_weights(model)` -- must initialise EVERY parameter and buffer (to_empty leaves
       them uninitialised, including non-persistent buffers such as rotary tables), using only
       the global torch RNG so that initialisation is identical on every rank and world size.
    3. `family.blocks(model)` -- the repeated sub-modules (e.g. transformer layers). Each is
       wrapped for activation checkpointing / torch.compile and becomes one FSDP unit; the root
       module is sharded last and owns whatever is outside the blocks (embeddings, head).
       Blocks must be called through `block(...)` (not `block.forward(...)`) by the model.
    4. `loader = family.train_loader(cfg, rank, world_size)` -- an infinite iterator of
       micro-batches of `cfg.train.micro_batch_size(world_size)` sequences each. Over one
       optimizer step the loop draws `cfg.train.grad_accum` micro-batches on every rank; together
       they must cover the global batch exactly once. Batches may be tensors or (nested)
       dicts/lists/tuples of tensors on the CPU; the loop moves tensors to the device.
       `loader.state_dict()` must return plain Python containers of ints/floats/strs/tensors
       (it is loaded with `torch.load(weights_only=True)`); `load_state_dict` must make the next
       `next(loader)` return exactly what it would have returned at save time.
    5. Every micro-step: `loss, stats = family.loss(model, batch, cfg)` under autocast. `loss` is
       the scalar mean loss of this micro-batch (the loop divides by grad_accum and FSDP averages
       across ranks, so micro-batches must be equally weighted). `stats["tokens"]` (int) is
       required: the number of tokens/targets in the micro-batch, used for throughput. Other
       entries (floats) are averaged over micro-steps and ranks and logged as they are.
    6. `family.flops_per_batch(model, batch, cfg)` -- training FLOPs (forward + backward, e.g.
       6 * params * tokens plus attention) of one micro-batch, used for MFU.
    7. `family.describe(cfg)` -- JSON-serialisable facts about the inputs (corpus manifest hash,
       session list, ...) written into the run directory's config.json.

Optional member: `init_for_loading(model)`, used instead of `init_weights` when a finished run is
loaded from its `model.safetensors` (e.g. a fine-tuning family whose `init_weights` reads a
pretrained run must not need that run to load its own result).

Optional member: `evaluate(model, cfg, rank, world_size) -> dict[str, tuple[float, float]]`,
called under `torch.no_grad()` with the model in eval mode every `cfg.train.eval_every` steps. It
returns (numerator, denominator) sums for this rank's share of the evaluation data; the loop sums
both over ranks and logs numerator / denominator as "eval/<name>".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from spikefm.train.config import RunConfig

__all__ = ["Family", "StatefulIterator", "register_family", "get_family", "registered_families"]


@runtime_checkable
class StatefulIterator(Protocol):
    """An infinite iterator whose position can be saved and restored."""

    def __iter__(self) -> Iterator[Any]: ...

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Family(Protocol):
    """What a model family implements for the shared training loop (see the module docstring).

    Attributes:
        name: the registry name, also written into RunConfig.family.
        model_config_cls: the dataclass type of `RunConfig.model` (used to read configs back).
        data_config_cls: the dataclass type of `RunConfig.data`.
    """

    name: str
    model_config_cls: type
    data_config_cls: type

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """Construct the model; may run under `torch.device("meta")`."""
        ...

    def init_weights(self, model: nn.Module) -> None:
        """Initialise every parameter and buffer in place (after `to_empty`)."""
        ...

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The repeated sub-modules: FSDP units and activation-checkpoint / compile units."""
        ...

    def train_loader(self, cfg: RunConfig, rank: int, world_size: int) -> StatefulIterator:
        """Infinite stateful iterator of this rank's micro-batches."""
        ...

    def loss(self, model: nn.Module, batch: Any, cfg: RunConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar mean loss of one micro-batch and stats, at least {"tokens": n}."""
        ...

    def flops_per_batch(self, model: nn.Module, batch: Any, cfg: RunConfig) -> float:
        """Training FLOPs (forward + backward) of one micro-batch."""
        ...

    def describe(self, cfg: RunConfig) -> dict[str, Any]:
        """JSON-serialisable description of the run's inputs for config.json."""
        ...


_REGISTRY: dict[str, Callable[[], Family]] = {}


def register_family(name: str, factory: Callable[[], Family]) -> None:
    """Register `factory` (a zero-argument callable returning a Family) under `name`.

    Re-registering the same name replaces the previous factory (so modules can be reloaded).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"family name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for family {name!r} must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def registered_families() -> list[str]:
    """Names of all registered families, sorted."""
    return sorted(_REGISTRY)


def get_family(name: str) -> Family:
    """Instantiate the family registered as `name`.

    Raises:
        ValueError: when no family of that name is registered (the message lists those that are).
    """
    if name not in _REGISTRY:
        known = ", ".join(registered_families()) or "(none; import the module that defines it)"
        raise ValueError(f"unknown family {name!r}; registered families: {known}")
    return _REGISTRY[name]()
