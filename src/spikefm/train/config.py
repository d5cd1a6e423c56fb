"""Typed, frozen run configuration and `section.key=value` overrides.

A run is described by one `RunConfig`: the family name, the family's own model and data config
dataclasses, and the shared `OptimConfig` / `TrainConfig`. Every dataclass validates itself in
`__post_init__`, so `dataclasses.replace` and `apply_overrides` can never build an invalid config.

Batch semantics (used by every family loader and by the loop):
    `TrainConfig.batch_size` is the GLOBAL batch: sequences per optimizer step, summed over all
    ranks and all accumulation micro-steps. Each forward pass on each rank sees
    `micro_batch_size(world_size) = batch_size // (grad_accum * world_size)` sequences, so the
    same config takes optimizer steps of the same size, on the same schedule, on 1 process or
    on N. Whether a step sees the same windows depends on the family's loader: the windowed
    families' :class:`~spikefm.data.windows.WindowBatcher` deals one global order of windows out
    to the ranks (the same model up to float rounding; tests/test_distributed.py), while the
    autoregressive :class:`~spikefm.families.ar.loader.ARTokenLoader` gives each rank its own
    Parquet row groups (each rank reads 1/N of the corpus, not all of it), so an AR run on N
    processes sees the data in another order than on one and ends at another model of the same
    quality, not at the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "OptimConfig",
    "TrainConfig",
    "RunConfig",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "config_differences",
]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW plus a linear warm-up / linear-decay learning-rate schedule.

    Attributes:
        lr: peak learning rate, reached at the last warm-up step.
        betas: AdamW (beta1, beta2).
        weight_decay: decoupled weight decay, applied only to parameters with >= 2 dims.
        eps: AdamW epsilon.
        warmup_steps: optimizer steps of linear warm-up from lr/warmup_steps to lr; None (the
            default) = a tenth of the run (``train.steps // 10``), so the default follows the
            run length. An explicit value larger than ``train.steps`` is an error.
        min_lr_ratio: the last step uses lr * min_lr_ratio (linear decay after warm-up; none when
            warm-up spans the run or the run is one step: the last step then uses lr).
        grad_clip: max global L2 norm of the gradients; 0 disables clipping (norm still logged).
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0

    def warmup_for(self, total_steps: int) -> int:
        """Warm-up steps of a run of ``total_steps`` optimizer steps (resolves the None default)."""
        return total_steps // 10 if self.warmup_steps is None else self.warmup_steps

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two floats in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.warmup_steps is not None and (isinstance(self.warmup_steps, bool) or not isinstance(
                self.warmup_steps, int) or self.warmup_steps < 0):
            raise ValueError(f"optim.warmup_steps must be an int >= 0 or none (a tenth of the run), "
                             f"got {self.warmup_steps!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings shared by every family.

    Attributes:
        steps: optimizer steps in the whole run.
        batch_size: GLOBAL sequences per optimizer step (all ranks, all micro-steps).
        grad_accum: micro-steps per optimizer step on each rank.
        seed: seeds python, numpy and torch (init is identical on every rank; after init each
            rank reseeds with seed + rank so that dropout differs between ranks).
        log_every: write a metrics.jsonl row every this many steps (and at the last step).
        ckpt_every: checkpoint every this many steps; 0 disables periodic checkpoints.
        ckpt_keep: number of most recent checkpoints kept on disk.
        eval_every: call the family's optional `evaluate` every this many steps; 0 disables.
        precision: "bf16" runs forward passes under bf16 autocast (CPU and CUDA) with fp32
            master weights; "fp32" runs in full precision.
        compile: torch.compile each block.
        activation_checkpointing: recompute each block's activations in the backward pass.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        tensorboard: also write every metrics.jsonl row as TensorBoard scalars to
            ``RUN/tensorboard/`` (rank 0; needs the ``tensorboard`` package:
            ``pip install 'spikefm[tensorboard]'``).
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    ckpt_keep: int = 2
    eval_every: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False
    activation_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        for name in ("compile", "activation_checkpointing", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be a positive int, got {value!r}")
        for name in ("ckpt_every", "eval_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train.{name} must be an int >= 0, got {value!r}")
        if self.seed >= 2**63:  # torch, numpy and the loaders take 63-bit seeds
            raise ValueError(f"train.seed must be below 2**63 = {2**63}, got {self.seed}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"train.batch_size must be at most {MAX_BATCH_SIZE:,} sequences per step "
                             f"(no machine holds more), got {self.batch_size:,}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum "
                f"({self.grad_accum}); batch_size is the global batch per optimizer step"
            )
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"train.precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"train.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}"
            )

    def micro_batch_size(self, world_size: int) -> int:
        """Sequences per forward pass on one rank; raises ValueError when it does not divide."""
        per_step = self.grad_accum * world_size
        if self.batch_size % per_step:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be divisible by grad_accum * "
                f"world_size ({self.grad_accum} * {world_size}); change train.batch_size or "
                "train.grad_accum"
            )
        return self.batch_size // per_step


#: Largest accepted global batch (sequences per optimizer step): beyond any machine, so a typo
#: fails at once instead of gathering the batch's windows for hours.
MAX_BATCH_SIZE = 1 << 20


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to reproduce a run.

    Attributes:
        family: registered family name (see `spikefm.train.family.get_family`).
        model: the family's model config dataclass (`family.model_config_cls`).
        data: the family's data config dataclass (`family.data_config_cls`).
        optim: optimizer and schedule.
        train: loop settings.
    """

    family: str
    model: Any
    data: Any
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise ValueError(f"family must be a non-empty str, got {self.family!r}")
        for name in ("model", "data"):
            value = getattr(self, name)
            if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
                raise TypeError(
                    f"RunConfig.{name} must be a dataclass instance (the family's {name} "
                    f"config), got {type(value).__name__}"
                )
        if not isinstance(self.optim, OptimConfig):
            raise TypeError(f"RunConfig.optim must be OptimConfig, got {type(self.optim).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"RunConfig.train must be TrainConfig, got {type(self.train).__name__}")
        seq_len, max_len = getattr(self.data, "seq_len", None), getattr(self.model, "max_seq_len", None)
        if isinstance(seq_len, int) and isinstance(max_len, int) and seq_len > max_len:
            # checked before anything is allocated: a loader would otherwise gather the windows
            # of an impossible context for minutes before the model rejects them
            raise ValueError(
                f"data.seq_len ({seq_len}) must be <= model.max_seq_len ({max_len}), the longest "
                "context the model supports; lower data.seq_len or raise model.max_seq_len"
            )
        if self.optim.warmup_steps is not None and self.optim.warmup_steps > self.train.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be <= train.steps "
                f"({self.train.steps}); lower optim.warmup_steps or leave it unset (a tenth of the run)"
            )


# ----------------------------------------------------------------------------------------------
# overrides


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"comma-separated {_type_name(args[0])}s"
        return f"{len(args)} comma-separated values ({', '.join(_type_name(a) for a in args)})"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _parse_scalar(text: str, tp: Any) -> Any:
    """Parse `text` as `tp`; raise ValueError (message = expected type) when it does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return text
    if origin is Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError(_type_name(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_scalar(text, arg)
            except ValueError:
                pass
        raise ValueError(_type_name(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        stripped = text.strip().strip("()[]")
        parts = [p.strip() for p in stripped.split(",") if p.strip()] if stripped else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_scalar(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(_type_name(tp))
        return tuple(_parse_scalar(p, a) for p, a in zip(parts, args))
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("bool (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("int") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("float") from None
        if not math.isfinite(value):
            raise ValueError("a finite float (nan and inf are not accepted)")
        return value
    if tp is str:
        return text
    raise ValueError(f"a {_type_name(tp)} (this field type cannot be set from the command line)")


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _valid(obj: Any) -> str:
    return ", ".join(f.name for f in dataclasses.fields(obj))


def _set_path(obj: Any, path: list[str], text: str, full_key: str, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    head = path[0]
    if head not in names:
        if where == "config" and len(path) == 1:  # a key without its section (lr=1e-3)
            owners = [f"{n}.{head}" for n in sorted(names) if dataclasses.is_dataclass(getattr(obj, n))
                      and head in {f.name for f in dataclasses.fields(getattr(obj, n))}]
            hint = f"did you mean {' or '.join(owners)}?" if owners else f"sections: {_valid(obj)}"
            raise ValueError(f"'{head}' names no section: overrides are section.key=value; {hint}")
        kind = "key" if len(path) == 1 else "section"
        name = head if where == "config" else f"{where}.{head}"
        raise ValueError(f"unknown {kind} '{name}'; valid {kind}s in {where}: {_valid(obj)}")
    current = getattr(obj, head)
    sub_where = head if where == "config" else f"{where}.{head}"
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"'{sub_where}' is a value, not a section; set it as {sub_where}=VALUE")
        return dataclasses.replace(obj, **{head: _set_path(current, path[1:], text, full_key, sub_where)})
    if dataclasses.is_dataclass(current):
        raise ValueError(
            f"'{full_key}' is a section; set one of its keys ({_valid(current)}) as "
            f"{full_key}.KEY=VALUE"
        )
    tp = _field_types(obj)[head]
    try:
        value = _parse_scalar(text, tp)
    except ValueError as err:
        raise ValueError(f"invalid value for '{full_key}': expected {err}, got {text!r}") from None
    try:
        return dataclasses.replace(obj, **{head: value})
    except (ValueError, TypeError) as err:
        raise _in_key_words(err, type(obj), where) from None


def _in_key_words(err: Exception, cls: type, where: str) -> Exception:
    """``err``, raised by the ``__post_init__`` of a family's config class, with the class's name
    (``NDTConfig.dim must be ...``) replaced by the section the user typed (``model.dim``), as the
    shared sections word their own messages (``train.steps must be ...``)."""
    if where != "config" and err.args and isinstance(err.args[0], str) and f"{cls.__name__}." in err.args[0]:
        err.args = (err.args[0].replace(f"{cls.__name__}.", f"{where}."), *err.args[1:])
    return err


def check_override_list(overrides: Any) -> list[str]:
    """``overrides`` as a list of strings; a one-line TypeError for a bare string (it was split
    into characters: "override must look like section.key=value, got 't'") or a non-str item."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got the string "
                        f"{overrides!r}; for one override pass [{overrides!r}]")
    items = list(overrides)
    bad = next((o for o in items if not isinstance(o, str)), None)
    if bad is not None:
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got an item of type "
                        f"{type(bad).__name__}: {bad!r}")
    return items


def override_key(item: Any) -> str:
    """The ``section.key`` of a ``section.key=value`` override (``""`` for anything else)."""
    return str(item).partition("=")[0].strip()


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of `cfg` with `section.key=value` overrides applied, in order.

    Walks nested dataclasses (any depth, e.g. `model.num_layers=4`, `optim.betas=0.9,0.99`) and
    parses each value with the field's annotated type: int, float, bool (true/false/1/0/yes/no),
    str, tuples (comma-separated, brackets optional), Literal choices, and Optional (`none`).
    Every dataclass is rebuilt through `dataclasses.replace`, so `__post_init__` validation runs.

    Args:
        cfg: a dataclass instance, usually a RunConfig.
        overrides: strings "dotted.key=value".

    Returns:
        The new config (the input is not modified).

    Raises:
        ValueError: with a one-line message naming the valid sections/keys or the expected type.
    """
    for item in check_override_list(overrides):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        if key == "family" and isinstance(cfg, RunConfig):  # its model, data... are the family's kinds
            raise ValueError(f"--set {item.strip()}: the model family comes from --model (spikefm train --model "
                             f"{text.strip() or 'NAME'}; in Python run_config(family, ...)), not from --set")
        cfg = _set_path(cfg, key.split("."), text.strip(), key, "config")
    return cfg


# ----------------------------------------------------------------------------------------------
# JSON round trip


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (JSON-serialisable: tuples become lists) of a config dataclass."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def config_differences(saved: dict[str, Any], now: dict[str, Any], sections: tuple[str, ...]) -> list[str]:
    """The settings of ``sections`` that differ between two :func:`config_to_dict` dicts, as
    ``section.key`` (sorted within a section; the bare ``section`` where either side is not a dict)."""
    out: list[str] = []
    for section in sections:
        a, b = saved.get(section), now.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{section}.{k}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
        else:
            out.append(section)
    return out


def saved_config_differences(run_dir: str | Path, cfg: RunConfig,
                             sections: tuple[str, ...] | None = None) -> list[str] | None:
    """:func:`config_differences` between the settings recorded in ``RUN_DIR/config.json`` and
    ``cfg`` (``sections`` None: every section of either); None when the folder records none (no
    such file, not JSON, no ``config`` object)."""
    import json

    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(saved, dict):
        return None
    now = config_to_dict(cfg)
    return config_differences(saved, now, tuple(dict.fromkeys([*saved, *now])) if sections is None else sections)


def _from_value(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass_from_dict(tp, value, key)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_value(v, args[0], key) for v in value)
        return tuple(_from_value(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType) and isinstance(value, (list, tuple)):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is tuple:
                return _from_value(value, arg, key)
    return value


def _dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"'{where}' must be a JSON object for {cls.__name__}, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown key '{where}.{unknown[0]}' for {cls.__name__}; valid keys: {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _from_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise _in_key_words(err, cls, where) from None


def config_from_dict(data: dict[str, Any], *, model_cls: type, data_cls: type) -> RunConfig:
    """Inverse of `config_to_dict` for a RunConfig.

    Args:
        data: the dict written by `config_to_dict` (e.g. read from a run's config.json "config").
        model_cls, data_cls: the family's config dataclasses (``family.model_config_cls`` /
            ``.data_config_cls``); :func:`spikefm.families.run_config_from_dict` looks them up
            in the family registry.

    Raises:
        ValueError: unknown keys; TypeError: a section is not an object.
    """
    if not isinstance(data, dict) or "family" not in data:
        raise ValueError("config dict must be a JSON object with a 'family' key")
    valid = ["family", "model", "data", "optim", "train"]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown section '{unknown[0]}'; valid sections: {', '.join(valid)}")
    return RunConfig(
        family=data["family"],
        model=_dataclass_from_dict(model_cls, data.get("model", {}), "model"),
        data=_dataclass_from_dict(data_cls, data.get("data", {}), "data"),
        optim=_dataclass_from_dict(OptimConfig, data.get("optim", {}), "optim"),
        train=_dataclass_from_dict(TrainConfig, data.get("train", {}), "train"),
    )
