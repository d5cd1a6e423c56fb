"""The one training loop shared by every spikefm model family.

    from spikefm.train.loop import train
    summary = train(cfg, "runs/ar-small", family)         # one process, CPU or one GPU
    # or, resolving the family from the registry: spikefm.families.train(cfg, "runs/ar-small")
    # torchrun --nproc_per_node 8 -m spikefm.cli train ... # same function, FSDP2 across 8 GPUs

What happens, in order: build the model on the meta device and initialise it on CPU with
cfg.train.seed (identical on every rank and world size), wrap each family block for activation
checkpointing and torch.compile, shard with FSDP2 when there are several processes, build AdamW and
the lr schedule, restore the latest checkpoint when resuming, then for each optimizer step run
`grad_accum` micro-steps (forward under bf16 autocast, backward of loss / grad_accum, gradient
all-reduce only on the last micro-step), clip, step, log, evaluate and checkpoint. At the end the
full model is exported to RUN_DIR/model.safetensors.

RUN_DIR contents: config.json (runinfo), metrics.jsonl, checkpoints/step_*/ (each verified by its
manifest.json, see checkpoint.py), model.safetensors, and .spikefm.lock (the folder lock; empty
while no process trains there).

metrics.jsonl rows (rank 0, every log_every steps and at the last step):
    step          optimizer steps completed
    loss          mean training loss of this step (over micro-steps and ranks)
    lr            learning rate used by this step
    grad_norm     global L2 gradient norm before clipping
    tokens        cumulative tokens trained on (all ranks), from the family's stats["tokens"]
    tokens_per_s  tokens / second over the steps since the previous row (all ranks)
    mfu           model FLOP utilisation: achieved FLOP/s (family.flops_per_batch summed over
                  micro-steps and ranks) / (peak FLOP/s of one device * world size). The peak
                  is SPIKEFM_PEAK_FLOPS (FLOP/s per device) when set, else the data-sheet figure
                  of a GPU in PEAK_FLOPS, else a matmul probe measured at start-up in the run's
                  precision or float32, whichever is faster (always on CPU; see train/mfu.py);
                  config.json's "peak_flops" says which, so mfu is a number on every device.
    elapsed_s     wall-clock seconds of training so far (summed over resumed segments)
    + the family's extra stats (mean over micro-steps and ranks)
Evaluation rows hold "step" and "eval/<name>" values instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spikefm.progress import format_duration
from spikefm.fileio import LOCK_NAME, first_line, folder_lock, make_folder, write_bytes_atomic, write_json_atomic
from spikefm.train import dist as d
from spikefm.train.checkpoint import (
    CHECKPOINT_DIR,
    EXPORT_NAME,
    check_run_folder,
    export_model,
    exported_step,
    list_checkpoints,
    load_checkpoint,
    other_world_size,
    prune_checkpoints,
    read_json_file,
    read_safetensors_header,
    save_checkpoint,
    select_checkpoint,
    world_size_message,
)
from spikefm.train.config import RunConfig, config_differences, config_to_dict
from spikefm.train.family import Family, check_family_config, family_label
from spikefm.train.optim import apply_settings, build_optimizer, build_scheduler
from spikefm.train.runinfo import run_info

__all__ = ["train", "PEAK_FLOPS", "device_peak_flops", "resolve_peak_flops", "seed_everything", "build_model",
           "TrainingDiverged", "validation_metrics"]


class TrainingDiverged(FloatingPointError, ValueError):
    """The training loss became NaN or infinite (a ValueError too: the fix is in the config)."""


class _DivergedToo(TrainingDiverged, d.SaidByRankZero):
    """:class:`TrainingDiverged` on a rank other than 0: the ranks agree on the step (all-reduced),
    so the message is rank 0's, which says it once for the torchrun job."""

# Dense (no sparsity) peak FLOP/s per device from vendor data sheets: (name substring,
# bf16 tensor-core peak, fp32 non-tensor-core peak). Matched in order on
# torch.cuda.get_device_name(), so more specific names come first.
PEAK_FLOPS: list[tuple[str, float | None, float | None]] = [
    ("H100 PCIe", 756e12, 51.2e12),
    ("H100 NVL", 835e12, 60.0e12),
    ("H100", 989e12, 66.9e12),  # SXM
    ("H200", 989e12, 66.9e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("A10G", 70e12, 31.2e12),
    ("A10", 125e12, 31.2e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("V100", None, 15.7e12),  # no bf16 support
]


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak dense FLOP/s of one device for `precision`, or None when unknown (CPU included)."""
    override = _peak_override()
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in PEAK_FLOPS:
        if key in name:
            return bf16 if precision == "bf16" else fp32
    return None


def resolve_peak_flops(device: torch.device, precision: str) -> dict[str, Any]:
    """The peak FLOP/s that MFU divides by, and where it came from.

    Returns ``{"value": FLOP/s per device, "precision", "source": "override" | "datasheet" |
    "probe", "probe": probe_peak_flops(...) (only for "probe")}``; the probe's averaged over
    ranks so every rank divides by the same number.
    """
    peak = device_peak_flops(device, precision)
    if peak is not None:
        source = "override" if _peak_override() is not None else "datasheet"
        return {"value": peak, "precision": precision, "source": source}
    from spikefm.train.mfu import probe_peak_flops

    probe = probe_peak_flops(device)
    # The faster of the run's precision and float32: a bf16 run on a CPU without bf16
    # instructions may do its matmuls in float32 kernels (spikefm.families.ar.cpu_matmul), and
    # MFU against the slow emulated bf16 GEMM would then exceed 100 %.
    value = max(v for v in (probe.get(precision), probe["fp32"]) if v)
    value = d.all_reduce_mean([value])[0]
    return {"value": value, "precision": precision, "source": "probe", "probe": probe}


def _peak_override() -> float | None:
    """SPIKEFM_PEAK_FLOPS as a positive finite number, or None when unset."""
    text = os.environ.get("SPIKEFM_PEAK_FLOPS", "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"SPIKEFM_PEAK_FLOPS must be a positive number of FLOP/s per device (e.g. "
                         f"989e12), got {text!r}; fix or unset it")
    return value


def _check_loader_corpus(loader, run_desc: dict) -> None:
    """A loader reading a corpus (``loader.corpus``) reads the one the run records: a corpus
    rebuilt between the run's description and its loaders (each rank opens it, some after the
    token cache is built) was trained on while config.json named the other."""
    corpus = getattr(loader, "corpus", None)
    got = getattr(corpus, "manifest_hash", None)
    want = (run_desc.get("family_info") or {}).get("corpus_manifest_sha256")
    if isinstance(got, str) and isinstance(want, str) and got != want:
        raise ValueError(f"the corpus {corpus.path} changed while this run was starting (rebuilt? its manifest is no "
                         "longer the one the run recorded); nothing was trained: run the command again")


@contextlib.contextmanager
def _callers_random_state():
    """Training seeds python's, numpy's and torch's global generators (:func:`seed_everything`);
    give the caller's states back afterwards, so a notebook's random streams do not restart from
    ``train.seed`` after every run (the CUDA ones only where CUDA is already initialised)."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _checkpoint_block(block: nn.Module) -> None:
    """Make `block` recompute its activations in backward (non-reentrant torch.utils.checkpoint).

    The instance's forward is replaced, so hooks on `block` (FSDP2's unshard/reshard) still run
    around the whole call, and recomputation happens inside the block's own backward while its
    parameters are unsharded.
    """
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def checkpointed_forward(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed_forward


def build_model(family: Family, cfg: RunConfig, info: d.DistInfo) -> nn.Module:
    """Build, initialise, wrap and (with several processes) shard the family's model.

    Initialisation runs on CPU with the global RNG seeded by cfg.train.seed, so it is the same on
    every rank, device and world size. This costs one full fp32 copy of the model in host memory
    per rank during start-up; fine for models of a few billion parameters.
    """
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(cfg.train.seed)
    with torch.no_grad():
        family.init_weights(model)
    blocks = family.blocks(model)
    members = {id(m) for m in model.modules()}
    if not all(id(b) in members for b in blocks):
        raise ValueError(f"family {family.name!r}: blocks(model) returned modules that are not in the model")
    if cfg.train.activation_checkpointing:
        for block in blocks:
            _checkpoint_block(block)
    if cfg.train.compile:
        for block in blocks:
            block.compile()
    if info.distributed:
        d.apply_fsdp(model, blocks, info.mesh, d.default_mp_policy(cfg.train.precision, info.device))
    else:
        model.to(info.device)
    return model


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def _notice(message: str, *, warning: bool = True) -> None:
    """One line on stderr (rank 0 calls it): what a user must know but that does not stop the run."""
    prefix = "spikefm: warning: " if warning else "spikefm: "
    print(prefix + " ".join(message.split()), file=sys.stderr, flush=True)


#: Our files in RUN_DIR that are written under a temporary name (fileio.write_atomic).
_ATOMIC_NAMES = ("config.json", "metrics.jsonl", EXPORT_NAME)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries of our own files left by a killed process (the caller holds the folder lock,
    so no other spikefm process is writing them)."""
    for name in _ATOMIC_NAMES:
        for tmp in out_dir.glob(f".{name}.tmp-*"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()


def _check_resume_config(cfg: RunConfig, path: Path, corpus_hash: str | None = None, *,
                         finished: bool = False, from_checkpoint: bool = True) -> None:
    """Refuse to continue a run (its config.json at ``path``) with another family/model/data
    config, or (``from_checkpoint``) another ``train.seed``; note changed optim/train settings
    (``apply_settings`` puts them into effect)."""
    if not path.is_file():
        return
    saved = read_json_file(path, what="run description")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} is not a spikefm run description; {path.parent} is not a "
                         "spikefm run folder: choose a new --out")
    where = path.parent
    fam_info = saved.get("family_info") if isinstance(saved.get("family_info"), dict) else {}
    before = fam_info.get("corpus_manifest_sha256")
    saved = saved["config"]
    now = config_to_dict(cfg)
    data_now, data_saved = now.get("data"), saved.get("data")
    if isinstance(data_now, dict) and isinstance(data_saved, dict) and isinstance(fam_info.get("corpus"), str) \
            and isinstance(data_now.get("corpus"), str) and data_now["corpus"] != data_saved.get("corpus") \
            and _same_path(data_now["corpus"], fam_info["corpus"]):
        now = {**now, "data": {**data_now, "corpus": data_saved.get("corpus")}}  # ./corpus, corpus/, its full path
    differs = config_differences(saved, now, ("family", "model", "data"))
    if differs:
        section = differs[0].split(".")[0]
        first = differs[0].split(".", 1)
        values = ""
        if len(first) == 2 and isinstance(saved.get(section), dict) and isinstance(now.get(section), dict):
            values = (f" ({first[1]}: {saved[section].get(first[1])!r} in the run, "
                      f"{now[section].get(first[1])!r} now)")
        raise ValueError(
            f"cannot resume from {where}: '{section}' differs from the checkpoint's config"
            f"{values}; resume with the same family/model/data config or start a new run directory"
        )
    if corpus_hash and isinstance(before, str) and before != corpus_hash and not finished:
        here = data_now.get("corpus") if isinstance(data_now, dict) else None
        here = str(Path(here).resolve()) if isinstance(here, str) and here else fam_info.get("corpus")
        moved = ("" if _same_path(str(here), str(fam_info.get("corpus")))
                 else f" (the run started on {fam_info.get('corpus')})")
        _notice(f"resuming from {where}: the corpus at {here}{moved} changed since the run "
                f"started (manifest sha256 {before[:12]}... -> {corpus_hash[:12]}...; rebuilt or "
                "re-imported): training continues on its current contents")
    changed = config_differences(saved, now, ("optim", "train"))
    if "train.seed" in changed and from_checkpoint and not finished:  # the checkpoint's loader order follows it
        raise ValueError(f"cannot resume from {where} with train.seed={now['train'].get('seed')!r}: the run's "
                         f"batch order was drawn with train.seed={saved.get('train', {}).get('seed')!r}, which "
                         "a resume keeps; resume without that setting, or start a new run directory for "
                         "another seed")
    if changed and finished:
        _notice(f"{where} is finished; the changed settings ({', '.join(changed)}) change nothing, "
                "since no step is left to train")
    elif changed:
        warmup = ""
        if now["optim"].get("warmup_steps") is None and saved.get("train", {}).get("steps") != now["train"]["steps"]:
            warmup = f"; the warm-up is now a tenth of {now['train']['steps']} steps"
        _notice(f"resuming from {where} with changed settings: {', '.join(changed)}; they apply "
                f"from the checkpoint's step on (the lr is the one their schedule gives there{warmup})")


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _make_run_dir(out_dir: Path) -> None:
    """Create the run folder, or say in one line why it cannot be."""
    make_folder(out_dir, action=f"create the run folder {out_dir}", fix="choose another --out")


def _is_run_description(path: Path) -> bool:
    """``path`` is a config.json that spikefm's training wrote (not some other program's)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and isinstance(saved.get("config"), dict) and "family" in saved


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _finished_summary(out_dir: Path, cfg: RunConfig, world_size: int, step: int | None) -> dict[str, Any]:
    """The summary of a run that had finished before this call (from its metrics and export)."""
    header, _ = read_safetensors_header(out_dir / EXPORT_NAME)
    last = next((r for r in reversed(_metric_rows(out_dir / "metrics.jsonl")) if "loss" in r), {})
    return {
        "out_dir": str(out_dir),
        "step": cfg.train.steps if step is None else step,
        "loss": last.get("loss", math.nan),
        "tokens": int(last.get("tokens", 0)),
        "elapsed_s": float(last.get("elapsed_s", 0.0)),
        "world_size": world_size,
        "num_params": sum(math.prod(t["shape"]) for t in header.values()),
        "resumed_from": cfg.train.steps if step is None else step,
        "stopped_early": False,
        "model_path": str(out_dir / EXPORT_NAME),
        "already_finished": True,
    }


def _prepare_run_dir(out_dir: Path, cfg: RunConfig, resume: bool, world_size: int,
                     stack: contextlib.ExitStack, corpus_hash: str | None = None) -> dict[str, Any]:
    """Rank 0: create and lock the run folder, then decide what this call does.

    Returns {"ckpt": checkpoint path or None, "notes": one-line warnings, "finished": the summary
    of a run that is already finished (nothing to do) or None, "created": whether this call made
    the folder (a refusal before anything is written removes it again)}.
    """
    check_run_folder(out_dir)  # before the lock file is put into someone else's folder
    created = not out_dir.exists()
    _make_run_dir(out_dir)
    stack.enter_context(folder_lock(out_dir, what="training run"))
    plan = _plan_run(out_dir, cfg, resume, world_size, corpus_hash)
    return {**plan, "created": created and plan["finished"] is None and plan["ckpt"] is None}


def _remove_new_run_dir(out_dir: Path) -> None:
    """Remove the run folder this call created, if it holds nothing but its lock file."""
    if {p.name for p in out_dir.iterdir()} <= {LOCK_NAME}:
        shutil.rmtree(out_dir, ignore_errors=True)


def _plan_run(out_dir: Path, cfg: RunConfig, resume: bool, world_size: int,
              corpus_hash: str | None) -> dict[str, Any]:
    """:func:`_prepare_run_dir`'s decision, in the locked folder."""
    _remove_stale_temporaries(out_dir)
    export = out_dir / EXPORT_NAME
    if export.exists():
        if not resume:
            raise ValueError(f"{out_dir} already holds a finished run ({EXPORT_NAME}); nothing is "
                             "overwritten: use a new run directory (--out)")
        step = exported_step(out_dir)
        if step is not None and step != cfg.train.steps:
            raise ValueError(f"{out_dir} is a run finished at step {step}; continuing it to "
                             f"train.steps={cfg.train.steps} would replace its {EXPORT_NAME}: "
                             "train in a new run directory (--out)")
        _check_resume_config(cfg, out_dir / "config.json", corpus_hash, finished=True)
        return {"ckpt": None, "notes": [], "finished": _finished_summary(out_dir, cfg, world_size, step)}
    found = list_checkpoints(out_dir)
    if not found and _is_run_description(out_dir / "config.json") and not _metric_rows(out_dir / "metrics.jsonl"):
        # A run that stopped before logging a step or saving a checkpoint (bad settings met in
        # step 1): nothing to keep, and refusing it would lock the folder against the corrected command.
        return {"ckpt": None, "finished": None,
                "notes": [f"{out_dir} holds a run that stopped before logging a step or saving a "
                          "checkpoint; starting anew"]}
    if not resume:
        if found:
            raise ValueError(f"{out_dir} already holds checkpoints; pass resume=True (--resume) to "
                             "continue that run, or use a new run directory (--out)")
        held = [n for n in ("config.json", "metrics.jsonl", CHECKPOINT_DIR) if (out_dir / n).exists()]
        if held:
            raise ValueError(f"{out_dir} already holds a training run ({', '.join(held)}); pass "
                             "--resume to continue it, or use a new run directory (--out)")
        return {"ckpt": None, "notes": [], "finished": None}
    ckpt, ckpt_world_size, notes = select_checkpoint(out_dir)
    if ckpt is not None and ckpt_world_size != world_size:
        raise ValueError(world_size_message(ckpt, ckpt_world_size, world_size))
    at = next((s for s, p in found if Path(p) == Path(ckpt)), None) if ckpt is not None else None
    if at is not None and at > cfg.train.steps:
        raise ValueError(f"cannot resume from {ckpt}: it is at step {at}, past train.steps="
                         f"{cfg.train.steps}; give --steps {at} or more")
    _check_resume_config(cfg, (ckpt if ckpt is not None else out_dir) / "config.json", corpus_hash,
                         from_checkpoint=ckpt is not None)  # none: it starts again at step 0
    # An interrupted save may have left one checkpoint too many (the newest, the one resumed
    # from, is always kept).
    prune_checkpoints(out_dir, cfg.train.ckpt_keep)
    return {"ckpt": None if ckpt is None else str(ckpt), "notes": notes, "finished": None}


def _check_train_arguments(cfg: RunConfig, out_dir: Any, family: Family, resume: Any,
                           progress: Any, stop_after: Any) -> None:
    check_family_config(family, cfg)
    if cfg.train.eval_every and not hasattr(family, "validate"):
        raise ValueError(
            f"train.eval_every={cfg.train.eval_every} but family {cfg.family!r} has no validate(); "
            "set train.eval_every=0"
        )
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        raise ValueError(f"out_dir must be a non-empty path (the run folder), got {out_dir!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if not isinstance(progress, (bool, str)) or progress == "":
        raise TypeError(f"progress must be True, False or the display's label (a non-empty string), got {progress!r}")
    if stop_after is not None and (not isinstance(stop_after, int) or isinstance(stop_after, bool)
                                   or stop_after < 1):
        raise ValueError(f"stop_after must be a positive int or None, got {stop_after!r}")
    _peak_override()
    if cfg.train.tensorboard:
        _tensorboard_writer_class()


def _check_loader_protocol(family, loader) -> None:
    """The family's training loader can be checkpointed and resumed: an iterator with
    ``state_dict()`` / ``load_state_dict()`` whose state torch loads back with ``weights_only``
    (plain numbers, strings, lists, dicts, tensors). A loader without them failed at the first
    checkpoint, hundreds of steps in; a state holding numpy scalars saved, then never resumed."""
    import io

    name = family_label(family)
    missing = [m for m in ("__next__", "state_dict", "load_state_dict") if not callable(getattr(loader, m, None))]
    if missing:
        raise ValueError(f"family {name!r}: train_loader() must return an iterator with state_dict() and "
                         f"load_state_dict() (checkpoints save where it is); {type(loader).__name__} lacks "
                         f"{', '.join(missing)}")
    buf = io.BytesIO()
    try:
        torch.save(loader.state_dict(), buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch refuses, said in one line
        raise ValueError(f"family {name!r}: train_loader().state_dict() must hold only what torch.load("
                         f"weights_only=True) reads back (ints, floats, strings, lists, dicts, tensors; not numpy "
                         f"numbers or arrays), or no run of it can resume ({_unpickler_refusal(exc)})") from None


def _unpickler_refusal(exc: BaseException) -> str:
    """What torch's weights-only loader refused, in its own words: the ``WeightsUnpickler error``
    line of its many-line message (the type it would not load), else the message's first line."""
    import re

    found = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please use|\n|$)", str(exc))
    return found.group(1) if found else first_line(exc, 200)


def _merge_stats(parts) -> dict[str, float]:
    """``{key: mean}`` of ``{key: [sum, count]}`` (one dict, or one per rank), keys sorted."""
    parts = [parts] if isinstance(parts, dict) else parts
    total: dict[str, list[float]] = {}
    for part in parts:
        for key, (value, count) in part.items():
            acc = total.setdefault(key, [0.0, 0])
            acc[0] += value
            acc[1] += count
    return {k: total[k][0] / total[k][1] for k in sorted(total) if total[k][1]}


def _is_number(value) -> bool:
    """A real number the loop can add up: int, float, numpy number or one-element tensor (no bool)."""
    return (isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))) or (
        isinstance(value, torch.Tensor) and value.numel() == 1)


def _checked_loss(family, out, check: bool):
    """``family.loss``'s ``(loss, stats)``, its shape checked on the run's first step: a 0-d
    floating tensor and a dict with an int ``"tokens"`` and numbers (mistakes failed later, inside
    backward or the logging, as "internal error ... report it")."""
    if not check:
        return out
    expected = "(a 0-d floating tensor, {'tokens': int, other names: numbers})"
    name = family_label(family)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"family {name!r}: loss() must return {expected}, got {type(out).__name__}"
                         + (f" of {len(out)}" if isinstance(out, tuple) else ""))
    loss, stats = out
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.is_floating_point()):
        found = (f"a tensor of shape {tuple(loss.shape)} ({loss.dtype})" if isinstance(loss, torch.Tensor)
                 else type(loss).__name__)
        raise ValueError(f"family {name!r}: loss() must return {expected}; its loss is {found} (reduce it to "
                         "one number, e.g. .mean())")
    if not isinstance(stats, dict) or "tokens" not in stats:
        raise ValueError(f"family {name!r}: loss() must return {expected}; its stats are "
                         + (f"a dict without 'tokens' (keys: {', '.join(map(str, stats)) or 'none'})"
                            if isinstance(stats, dict) else type(stats).__name__))
    for key, value in stats.items():
        if not _is_number(value):
            raise ValueError(f"family {name!r}: loss() stats must be numbers ({expected}); {key!r} is "
                             f"{type(value).__name__} {value!r:.60}")
    return out


def _checked_flops(family, value) -> float:
    """``family.flops_per_batch``'s number as a float, or a one-line error naming it."""
    try:
        flops = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"family {family_label(family)!r}: flops_per_batch() must return a number (FLOPs of "
                         f"the batch, 0 if unknown), got {type(value).__name__}") from None
    return flops


def validation_metrics(family: Family, model: nn.Module, cfg: RunConfig, rank: int = 0,
                       world_size: int = 1) -> dict[str, float]:
    """The family's validation metrics (see :mod:`spikefm.train.family`): its ``validate`` sums of
    every rank added up, each name's numerator / denominator (names nothing scored are left out),
    and what its ``combine_validation`` makes of those. Called on every rank at once."""
    sums = family.validate(model, cfg, rank, world_size)

    def pair(v) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v)

    if not isinstance(sums, dict) or not all(pair(v) for v in sums.values()):
        bad = next(f"{k!r}: {v!r:.60}" for k, v in sums.items() if not pair(v)) if isinstance(sums, dict) \
            else type(sums).__name__
        raise ValueError(f"family {family_label(family)!r}: validate() must return {{name: (numerator, "
                         f"denominator)}} sums (the loop divides them after adding them over ranks), got {bad}")
    names = sorted(sums)
    flat = d.all_reduce_sum([v for n in names for v in sums[n]])
    means = {n: flat[2 * i] / flat[2 * i + 1] for i, n in enumerate(names) if flat[2 * i + 1] > 0}
    combine = getattr(family, "combine_validation", None)
    return {**means, **combine(means)} if combine is not None else means


def _tensorboard_writer_class():
    """torch's SummaryWriter, or a one-line error naming the missing package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("train.tensorboard=true needs the tensorboard package, which is not "
                         "installed; pip install 'spikefm[tensorboard]' or drop --tensorboard") from None
    return SummaryWriter


class _TensorBoard:
    """Mirrors metrics.jsonl rows as TensorBoard scalars (tag = the row's key, x = its step).
    On resume, events after the checkpoint's step are purged, as metrics.jsonl rows are."""

    def __init__(self, out_dir: Path, start_step: int, resumed: bool = False) -> None:
        # a resume drops what was logged after its step, from step 1 on when no checkpoint was
        # reached (the killed run's events stayed beside the new ones: every tag twice)
        purge = start_step + 1 if (start_step or resumed) else None
        self.writer = _tensorboard_writer_class()(log_dir=str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        step = row["step"]
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _rewrite_metrics(path: Path, keep_through_step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (a killed run may have logged them)."""
    if not path.exists():
        return
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if row.get("step", 0) <= keep_through_step:
                rows.append(line)
    write_bytes_atomic(path, "".join(r + "\n" for r in rows).encode())


class _Display:
    """Progress of a run on rank 0: a rich bar with ETA on a terminal; otherwise (logs, CI, pipes)
    a plain line on the first logging step past each tenth of the run, or `plain_every_s` seconds
    after the last line, with ETA; nothing when disabled. Every logged row still goes to
    metrics.jsonl."""

    def __init__(self, enabled: bool, total: int, start: int, plain_every_s: float = 60.0, *,
                 label: str = "train", transient: bool = False) -> None:
        self.bar = None
        self.plain = False
        self.total, self.start, self.label = total, start, label
        self.plain_every_s = plain_every_s
        self.t0 = self.t_printed = time.perf_counter()
        self.next_fraction = 0.1 * (int(10 * start / total) + 1) if total else 1.0
        self.text = ""
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            self.plain = True
            return
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        self.console = console
        # a segment of a longer run (fine-tuning between validations) leaves no finished bar behind
        whole = Column(no_wrap=True)  # the step count and ETA are never cut (the figures are, below)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(table_column=whole),
            TimeRemainingColumn(table_column=Column(no_wrap=True)), TextColumn("{task.fields[figures]}"),
            console=console, transient=transient,
        )
        # the label as the description: a TextColumn's own text is formatted ('{1}' in it raised)
        self.task = self.bar.add_task(escape(label), total=total, completed=start, figures="")
        self.bar.start()

    def _figures(self) -> str:
        """The last logged figures, cut to what the terminal leaves beside the label, the bar, the
        step count and the ETA (a narrow terminal cut those instead: '30… 0:0…')."""
        room = self.console.width - (len(self.label) + 2 * len(str(self.total)) + 1 + 7 + 12 + 4)
        if len(self.text) <= room:
            return self.text
        return self.text[:room - 1] + "\u2026" if room >= 12 else ""

    def update(self, step: int, row: dict[str, Any] | None) -> None:
        if row is not None:
            mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            self.text = (f"loss {row['loss']:.4f} lr {row['lr']:.2e} gnorm {row['grad_norm']:.3f} "
                         f"tok/s {row['tokens_per_s']:.3g} mfu {mfu}")
        if self.bar is not None:
            self.bar.update(self.task, completed=step, figures=self._figures())
        elif self.plain and row is not None:  # only on logging steps, so the figures are this step's
            now = time.perf_counter()
            due = step / self.total >= self.next_fraction - 1e-9 or now - self.t_printed >= self.plain_every_s
            if due or step == self.total:
                while self.next_fraction <= step / self.total + 1e-9:
                    self.next_fraction += 0.1
                self.t_printed = now
                done = step - self.start
                eta = (now - self.t0) / done * (self.total - step) if done > 0 else math.nan
                print(f"{self.label} step {step}/{self.total} ({100 * step / self.total:.0f}%, ETA "
                      f"{format_duration(eta)}): {self.text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()



def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike,
    family: Family,
    *,
    resume: bool = False,
    progress: bool | str = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train `cfg` into run directory `out_dir` (see the module docstring for its contents).

    Run it directly for one process, or under `torchrun` for several (FSDP2, one process per
    GPU, or gloo on CPU). The process group, when one was created, is left alive for the caller.

    The config and the data (``family.describe``) are checked before anything is written, so a
    refused call leaves no folder behind. Rank 0 then holds :func:`spikefm.fileio.folder_lock` on
    out_dir for the whole call: a second ``train`` into the same folder fails at once, naming the
    holder's PID. Nothing in out_dir is overwritten unless resuming. Python's, numpy's and torch's
    global random generators are seeded from ``train.seed`` for the run and given back to the
    caller's states when it returns (CUDA's where CUDA was initialised before the call).

    Args:
        cfg: the run configuration.
        out_dir: run directory, created if missing.
        family: the model family (``spikefm.families.get(cfg.family)``); the loop knows nothing
            else about the model.
        resume: continue from the newest intact checkpoint in out_dir (damaged ones are moved
            aside to ``checkpoints/damaged-*`` with a one-line warning; start fresh when there is
            none). The checkpoint must come from the same world size and family/model/data config
            (refused in one line otherwise). A finished run (``model.safetensors`` exported) is
            reported as finished and left as it is. Without resume, an out_dir that already holds
            a run (checkpoints, config.json, metrics.jsonl or model.safetensors) is an error.
        progress: show a progress bar (plain log lines when stderr is not a terminal) on rank 0;
            a string shows it under that label (``"frozen"``: a fine-tuning candidate) instead of
            ``train``.
        stop_after: stop once this many steps are done, writing a checkpoint there and skipping
            the export, as a preemption would (used to test resumption).

    Returns:
        Summary: out_dir, step, loss (last logged), tokens, elapsed_s, world_size, num_params,
        resumed_from (step or None), stopped_early, model_path (None when stopped early), and
        already_finished=True when a finished run was resumed (nothing was done).

    Raises:
        ValueError: a refused input or folder (one line); TrainingDiverged (a ValueError) when the
            loss becomes NaN or infinite.
    """
    _check_train_arguments(cfg, out_dir, family, resume, progress, stop_after)
    with contextlib.ExitStack() as stack:  # holds the run folder's lock (rank 0) until the end
        stack.enter_context(_callers_random_state())
        return _train(cfg, Path(out_dir), family, resume=resume, progress=progress,
                      stop_after=stop_after, stack=stack)


def _train(cfg: RunConfig, out_dir: Path, family: Family, *, resume: bool, progress: bool | str,
           stop_after: int | None, stack: contextlib.ExitStack) -> dict[str, Any]:
    tc = cfg.train
    # Everything that can be refused is checked before the ranks connect (each meets the same
    # error, which rank 0 alone prints) and before the run folder is created or locked: the
    # family's description reads the data (a bad --data fails here and leaves nothing behind).
    _, world_size = d.env_rank_world()
    try:
        tc.micro_batch_size(world_size)  # raises a clear error when the batch does not divide
    except ValueError:
        other = other_world_size(out_dir, world_size) if resume else None
        if other is not None:  # the cause, not the batch it makes indivisible (else, under the lock, below)
            raise ValueError(world_size_message(*other, world_size)) from None
        raise
    described = family.describe(cfg)
    try:
        json.dumps(described)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"family {family_label(family)!r}: describe() must return a dict that JSON can write "
                         f"(strings, numbers, lists, dicts: it goes into config.json), but {exc}") from None
    run_desc = run_info(cfg, described, world_size)
    info = d.init_distributed(tc.device)
    rank, world_size, device = info.rank, info.world_size, info.device

    # Rank 0 creates and locks the folder and decides (fresh / resume from which checkpoint /
    # already finished); the others learn the outcome, or the error, from one broadcast, so a
    # refusal ends every rank at once instead of leaving them waiting in a collective.
    plan: dict[str, Any] | None = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            plan = _prepare_run_dir(out_dir, cfg, resume, world_size, stack,
                                    (run_desc.get("family_info") or {}).get("corpus_manifest_sha256"))
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = exc
            plan = {"error": " ".join(str(exc).split()) or type(exc).__name__}
    plan = d.broadcast_object(plan)
    if failure is not None:
        raise failure
    d.raise_rank_zero_error(plan.get("error"))
    if rank == 0:
        for note in plan["notes"]:
            _notice(note)
    if plan["finished"] is not None:
        if rank == 0:
            done = plan["finished"]
            _notice(f"{out_dir} is already finished (step {done['step']} of {tc.steps}, "
                    f"{EXPORT_NAME} exported); nothing to do", warning=False)
        return plan["finished"]
    ckpt = plan["ckpt"]

    seed_everything(tc.seed)
    model = build_model(family, cfg, info)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    loader, error = None, None
    try:
        loader = family.train_loader(cfg, rank, world_size)
        _check_loader_protocol(family, loader)
        _check_loader_corpus(loader, run_desc)
    except (ValueError, OSError) as exc:  # e.g. data that cannot feed these ranks, a cache unwritable
        error = exc
    refusals = d.all_gather_object(None if error is None else " ".join(str(error).split()) or type(error).__name__)
    if any(refusals):  # one line for the job, not one per rank
        if rank == 0 and plan.get("created"):
            _remove_new_run_dir(out_dir)  # leave no folder behind that this call made
        first = next(r for r, e in enumerate(refusals) if e)
        if world_size == 1 or (rank == 0 and first == 0 and not isinstance(error, d.SaidByRankZero)):
            raise error
        d.raise_rank_zero_error(refusals[first] if first == 0 else f"(rank {first}) {refusals[first]}")
    seed_everything(tc.seed + rank)  # dropout etc. differ between ranks from here on

    start_step, tokens_total, elapsed_before = 0, 0, 0.0
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
        apply_settings(optimizer, scheduler, cfg.optim, tc.steps)  # this run's lr, schedule, decay
        start_step, tokens_total = state["step"], state.get("tokens", 0)
        elapsed_before = state.get("elapsed_s", 0.0)

    peak_info = resolve_peak_flops(device, tc.precision)
    peak = peak_info["value"]
    run_desc = {**run_desc, "peak_flops": peak_info}
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        write_json_atomic(out_dir / "config.json", run_desc)
        if ckpt is not None or resume:
            _rewrite_metrics(metrics_path, start_step)
        elif metrics_path.exists():
            metrics_path.unlink()
    d.barrier()
    metrics_file = open(metrics_path, "a") if rank == 0 else None
    board = _TensorBoard(out_dir, start_step, resumed=ckpt is not None or resume) \
        if rank == 0 and tc.tensorboard else None

    fsdp = info.distributed
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    last_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
    display = _Display(bool(progress) and rank == 0, tc.steps, start_step,
                       label=progress if isinstance(progress, str) else "train",
                       transient=stop_after is not None and stop_after < tc.steps)

    def log(row: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        if board is not None:
            board.write(row)

    model.train()
    t_start = time.perf_counter()
    t_last, tokens_since, flops_since = t_start, 0, 0.0
    last_loss = None
    # the first step whose loss or gradient norm was not finite (0: none yet), kept on the device
    # (no host sync per step) and checked where the loop syncs anyway: at logging steps and before
    # each checkpoint, so a checkpoint never holds the weights a NaN update made
    first_bad = torch.zeros((), device=device)

    def diverged(step: int) -> TrainingDiverged:
        first = d.all_reduce_min([float(first_bad) if float(first_bad) > 0 else math.inf])[0]
        at = f"at step {int(first)}" if math.isfinite(first) else "on another rank"
        return (TrainingDiverged if rank == 0 else _DivergedToo)(
            f"the loss or gradient norm was NaN or infinite {at} (found at step {step}); "
            "lower optim.lr or check the data, then resume from the last checkpoint "
            "(--resume; checkpoints hold no such step) or start a new run directory")

    def check_finite(step: int) -> None:
        if d.all_reduce_sum([1.0 if float(first_bad) > 0 else 0.0])[0] > 0:
            raise diverged(step)

    try:
        for step in range(start_step + 1, last_step + 1):
            loss_sum = torch.zeros((), device=device)
            extra_sum: dict[str, list[float]] = {}  # key -> [sum, micro-steps that reported it]
            for micro in range(tc.grad_accum):
                batch = _to_device(next(loader), device)
                if fsdp:  # reduce-scatter gradients only after the last micro-step
                    model.set_requires_gradient_sync(micro == tc.grad_accum - 1)
                with autocast:
                    loss, stats = _checked_loss(family, family.loss(model, batch, cfg), step == start_step + 1)
                (loss / tc.grad_accum).backward()
                loss_sum += loss.detach().float()
                tokens_since += int(stats["tokens"])
                flops_since += _checked_flops(family, family.flops_per_batch(model, batch, cfg))
                for key, value in stats.items():
                    if key != "tokens":
                        acc = extra_sum.setdefault(key, [0.0, 0])
                        acc[0] += float(value)
                        acc[1] += 1
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            finite = torch.isfinite(loss_sum) & torch.isfinite(torch.as_tensor(grad_norm, device=device).float())
            first_bad = torch.where((first_bad == 0) & ~finite, torch.full_like(first_bad, step), first_bad)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            row = None
            if step % tc.log_every == 0 or step == last_step:
                loss_mean, = d.all_reduce_mean([loss_sum.item() / tc.grad_accum])
                # a family's own stats: each key averaged over the micro-steps (of every rank) that
                # reported it; gathered as objects, since ranks may report different keys
                extras = _merge_stats(extra_sum if world_size == 1 else d.all_gather_object(extra_sum))
                tokens_g, flops_g, bad_g = d.all_reduce_sum([tokens_since, flops_since,
                                                              1.0 if float(first_bad) > 0 else 0.0])
                if bad_g > 0:  # the first bad step (a non-finite loss or gradient norm on any rank), which
                    raise diverged(step)  # may lie between logging steps
                now = time.perf_counter()
                dt = max(now - t_last, 1e-9)
                tokens_total += int(tokens_g)
                row = {
                    "step": step,
                    "loss": loss_mean,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "tokens": tokens_total,
                    "tokens_per_s": tokens_g / dt,
                    "mfu": (flops_g / dt) / (peak * world_size) if peak else None,
                    "elapsed_s": elapsed_before + now - t_start,
                    **extras,
                }
                log(row)
                last_loss = loss_mean
                t_last, tokens_since, flops_since = now, 0, 0.0
            display.update(step, row)

            if tc.eval_every and step % tc.eval_every == 0:
                model.eval()
                with torch.no_grad(), autocast:
                    metrics = validation_metrics(family, model, cfg, rank, world_size)
                model.train()
                d.reshard(model)  # as after a training step: validation leaves FSDP2 units gathered
                log({"step": step, **{f"eval/{n}": v for n, v in metrics.items()}})

            if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == stop_after:
                check_finite(step)
                tokens_ckpt = tokens_total + int(d.all_reduce_sum([tokens_since])[0])
                save_checkpoint(
                    out_dir, step, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
                    trainer_state={"tokens": tokens_ckpt,
                                   "elapsed_s": elapsed_before + time.perf_counter() - t_start},
                    info=run_desc, keep=tc.ckpt_keep,
                )
    finally:
        display.close()
        if metrics_file is not None:
            metrics_file.close()
        if board is not None:
            board.close()

    stopped_early = last_step < tc.steps
    if last_step > start_step:
        check_finite(last_step)  # no export of weights a NaN update made
    model_path = None if stopped_early else export_model(out_dir, model, step=last_step)
    return {
        "out_dir": str(out_dir),
        "step": max(last_step, start_step),
        "loss": last_loss,
        "tokens": tokens_total,
        "elapsed_s": elapsed_before + time.perf_counter() - t_start,
        "world_size": world_size,
        "num_params": num_params,
        "resumed_from": None if ckpt is None else start_step,
        "stopped_early": stopped_early,
        "model_path": None if model_path is None else str(model_path),
    }
