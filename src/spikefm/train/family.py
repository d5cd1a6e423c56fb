"""The contract a model family implements: for the shared training loop, fine-tuning and evaluation.

The registry of families is :mod:`spikefm.families` (``spikefm.families.get(name)``); this module
only defines what a family is, so that the training layer never imports a family.

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
       entries (numbers) are averaged over the micro-steps and ranks that report them (a batch
       may leave one out) and logged as they are. The shapes are checked on a run's first step:
       a mistake is a one-line error naming `loss()`.
    6. `family.flops_per_batch(model, batch, cfg)` -- training FLOPs (forward + backward, e.g.
       6 * params * tokens plus attention) of one micro-batch, used for MFU; count only the
       parameters each sample uses (a session's own stitcher on its samples only:
       `spikefm.train.mfu.params_by_session`).
    7. `family.describe(cfg)` -- JSON-serialisable facts about the inputs (corpus manifest hash,
       session list, ...) written into the run directory's config.json.

Optional member: `build_recorded_model(cfg, family_info) -> nn.Module | None`, the model of a
finished run built from what `describe` recorded in its config.json (`family_info`), without
reading the data (None when the record lacks it: `build_model` is used). `load_exported_model`
prefers it, so a run folder loads where its corpus is not (a model shared without its data).

Optional member: `init_for_loading(model)`, used instead of `init_weights` when a finished run is
loaded from its `model.safetensors` (e.g. a fine-tuning family whose `init_weights` reads a
pretrained run must not need that run to load its own result).

Optional member: `validate(model, cfg, rank, world_size) -> dict[str, tuple[float, float]]`,
called under `torch.no_grad()` with the model in eval mode every `cfg.train.eval_every` steps (and
by `spikefm.train.finetune.train_with_early_stopping` after every segment, which minimises the
"val_loss" entry). It returns (numerator, denominator) sums for this rank's share of the
validation data, the same names on every rank; the loop sums both over ranks and logs numerator /
denominator as "eval/<name>" (names whose denominator is 0 on every rank are left out), through
`spikefm.train.loop.validation_metrics`. A share should not change what is scored (the same
masks, batches and seeds whatever the number of ranks), so that validation losses of runs on
different numbers of processes compare.

Optional member: `combine_validation(means: dict[str, float]) -> dict[str, float]`, metrics that
are not one ratio of sums (a mean of per-scheme means, say), computed from the summed ratios and
added to them.

Optional member: `validate_windows(model, cfg) -> np.ndarray`, the same validation loss on each
validation window alone (one process), for `finetune --select one-se`, which compares candidates
by the standard error of their per-window differences.

Members used outside the loop (by `spikefm.families`, the CLI and the experiments):

    preset(name) -> model config       `--preset NAME`; `presets()` lists the names.
    finetune_config(run_dir, corpus, session_id, *, freeze_core, from_scratch, steps) -> RunConfig
                                       the run that adapts a finished run to a new session (or,
                                       with from_scratch, the single-session baseline with the same
                                       settings); trained with early stopping on validation data.
    evaluate(run_dir, corpus, **options) -> dict
                                       the family's benchmark of a finished run on a corpus, as
                                       JSON-serialisable data (unknown options: ValueError).
    format_results(results_by_run: dict[str, dict]) -> str
                                       text table of one or more `evaluate` results.
    task_scores(results, who="model") -> dict[str, float]
                                       optional: one number per task of an `evaluate` result
                                       (`who`: the model or a reference); the scaling study needs it.
    task_score_unit(task) -> str       optional: what that number of `task` is ("accuracy"), for
                                       the scaling study's axis labels.
    transfer_headline(benchmarks) -> dict
                                       optional: `{metric: {model: value}}` of one seed of
                                       `spikefm experiment transfer` (benchmarks: {"fine-tuned":
                                       results, "single-session": results, "finetune": the
                                       strategy summary}); the study needs it.
    check_tasks(tasks: list[str])      optional: ValueError (one line) for a task name `evaluate`
                                       would refuse, so studies fail before training anything.
    check_config(cfg)                  optional: ValueError (one line) for model and data settings
                                       that cannot work together; `families.run_config` calls it.
    check_validation_data(cfg)         optional: ValueError (one line) when the run has no
                                       validation data; fine-tuning calls it before training.
    finetune_select, finetune_soup     optional attributes: `finetune --strategy auto`'s default
                                       selection rule (`lowest`) and whether it ranks the soup (False).
    finetune_fixed_data                optional attribute: names of `data` settings a fine-tuning
                                       keeps from the pretrained run (`--set` may not change them;
                                       e.g. how windows are cut, where evaluation cuts the
                                       pretraining sessions with the fine-tuned run's settings).
    claims_folder(config: dict) -> bool
                                       optional: True for a foreign model folder this family can
                                       load (e.g. a Hugging Face Llama folder for the AR family).
    load_foreign(path, device) -> nn.Module
                                       optional, with claims_folder: load such a folder.
    Extra `spikefm` sub-commands of a family: `spikefm.families.FamilyCommand` objects listed in
    `COMMANDS` of its light (torch-free) module `spikefm.families.<name>.commands`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from spikefm.train.config import RunConfig

__all__ = ["Family", "StatefulIterator", "check_family_config", "check_window_fits"]


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

    # -- outside the loop ---------------------------------------------------------------------

    def preset(self, name: str) -> Any:
        """The model config of preset `name` (ValueError listing the presets otherwise)."""
        ...

    def presets(self) -> list[str]:
        """Names accepted by `preset`, smallest first. A family may also define
        ``default_preset() -> str``, the preset a run gets without ``--preset`` (else the first)."""
        ...

    def finetune_config(self, run_dir: str, corpus: str, session_id: str, *, freeze_core: bool,
                        from_scratch: bool, steps: int) -> RunConfig:
        """The RunConfig that adapts the finished run in `run_dir` to `session_id` of `corpus`."""
        ...

    def evaluate(self, run_dir: str, corpus: str, **options: Any) -> dict[str, Any]:
        """Benchmark a finished run; JSON-serialisable results."""
        ...

    def format_results(self, results_by_run: dict[str, dict[str, Any]]) -> str:
        """A text table of `evaluate` results, one column (or block) per run."""
        ...


def family_label(family) -> str:
    """The name a message gives ``family`` (its ``name``, else its class's)."""
    return getattr(family, "name", type(family).__name__)


def check_family_config(family: Family, cfg: RunConfig) -> None:
    """TypeError unless cfg.model / cfg.data are instances of the family's config classes."""
    for name, expected in (("model", family.model_config_cls), ("data", family.data_config_cls)):
        if not isinstance(getattr(cfg, name), expected):
            raise TypeError(
                f"cfg.{name} must be {expected.__name__} for family {cfg.family!r}, "
                f"got {type(getattr(cfg, name)).__name__}"
            )


def check_window_fits(cfg: RunConfig) -> None:
    """One-line ValueError when the data's windows (``data.window_bins``) are longer than the
    model's position table (``model.max_bins``), for the window families' ``check_config``."""
    if cfg.data.window_bins > cfg.model.max_bins:
        raise ValueError(f"data.window_bins ({cfg.data.window_bins}) exceeds model.max_bins "
                         f"({cfg.model.max_bins}); lower data.window_bins or raise model.max_bins")
