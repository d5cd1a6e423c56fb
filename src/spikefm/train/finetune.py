"""Fine-tuning with early stopping on validation data, for any family.

A family prepares the run (:meth:`spikefm.train.family.Family.finetune_config`: e.g. new session
parameters on a pretrained core, or the single-session baseline); :func:`train_with_early_stopping`
trains it with the shared loop (:func:`spikefm.train.loop.train`) and keeps the best weights.
:func:`spikefm.families.finetune` does both.

Early stopping: training runs in segments of ``eval_every`` optimizer steps
(``train(..., resume=True, stop_after=k * eval_every)``: every segment ends in a checkpoint and the
next one resumes from it exactly, so the optimisation is the same as one uninterrupted run of
``steps`` steps, learning-rate schedule included). After each segment the family's
``validate(...)["val_loss"]`` (numerator / denominator on its validation data) is computed; the
weights with the lowest value are kept, and training stops once ``patience`` evaluations in a row
brought no improvement, or at ``steps``. ``OUT_DIR/model.safetensors`` then holds the best weights
(not the last), and ``OUT_DIR/early_stopping.json`` the history. Nothing here touches test data.

Example::

    from spikefm import families
    families.finetune("runs/ndt", "corpus", "sub-ibl02_ses-002", "runs/ft", freeze_core=True, steps=400)
    # then: spikefm eval runs/ft --data corpus
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from spikefm.fileio import write_atomic

__all__ = ["train_with_early_stopping"]


def _best_path(out_dir: Path) -> Path:
    return out_dir / "best_model.safetensors"


def _save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def _current_state(out_dir: Path, finished: bool) -> dict[str, torch.Tensor]:
    """Model weights at the end of the last segment (export when finished, else the checkpoint)."""
    from safetensors.torch import load_file

    from spikefm.train.checkpoint import latest_checkpoint

    if finished:
        return load_file(str(out_dir / "model.safetensors"))
    ckpt = latest_checkpoint(out_dir)
    assert ckpt is not None, "a stopped segment always leaves a checkpoint"
    return torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)


def _validation_loss(family, cfg, state: dict[str, torch.Tensor]) -> float:
    """The family's validation loss for given weights (one process)."""
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    family.init_weights(model)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        num, den = family.validate(model, cfg, 0, 1)["val_loss"]
    if den <= 0:
        raise ValueError("the validation data scored nothing; cannot early-stop")
    return num / den


def train_with_early_stopping(cfg, out_dir: str | os.PathLike, family, *, eval_every: int = 50,
                              patience: int = 3, progress: bool = False) -> dict[str, Any]:
    """Train a RunConfig with validation early stopping (see the module docstring).

    Args:
        cfg: the RunConfig; ``cfg.train.steps`` is the maximum.
        family: its family; must implement ``validate`` returning a ``"val_loss"`` entry.
        out_dir: a new (or, to continue, the same) run directory.
        eval_every: optimizer steps per segment (between validation evaluations).
        patience: evaluations without a new best before stopping.
        progress: show the loop's progress display.

    Returns:
        {"out_dir", "best_step", "best_val_loss", "stopped_at", "history": [{"step", "val_loss"}],
        "model_path"}.
    """
    from spikefm.train.loop import train
    from spikefm.fileio import write_json_atomic

    for name, v in (("eval_every", eval_every), ("patience", patience)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not hasattr(family, "validate"):
        raise ValueError(f"family {cfg.family!r} has no validate(); early stopping needs validation data")
    # Checkpoints come from stop_after at each segment end; the loop's own eval is not needed.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ckpt_every=0, eval_every=0))
    out_dir = Path(out_dir)
    steps = cfg.train.steps
    history: list[dict[str, float]] = []
    best_loss, best_step, since_best, step = math.inf, 0, 0, 0
    while step < steps:
        target = min(step + eval_every, steps)
        finished = target >= steps
        summary = train(cfg, out_dir, family, resume=True, stop_after=None if finished else target,
                        progress=progress)
        step = int(summary["step"])
        state = _current_state(out_dir, finished)
        val = _validation_loss(family, cfg, state)
        history.append({"step": step, "val_loss": val})
        if val < best_loss:
            best_loss, best_step, since_best = val, step, 0
            _save_safetensors_atomic(state, _best_path(out_dir))
        else:
            since_best += 1
            if since_best >= patience:
                break
    model_path = out_dir / "model.safetensors"
    os.replace(_best_path(out_dir), model_path)
    result = {"out_dir": str(out_dir), "best_step": best_step, "best_val_loss": best_loss,
              "stopped_at": step, "max_steps": steps, "eval_every": eval_every, "patience": patience,
              "history": history, "model_path": str(model_path)}
    write_json_atomic(out_dir / "early_stopping.json", result)
    return result
