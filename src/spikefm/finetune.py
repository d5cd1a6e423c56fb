"""Fine-tune a pretrained NDT on a held-out session, and the single-session baseline.

:func:`finetune` adds fresh session parameters (per-unit embedding, read-in, session token,
read-out) for the new session, loads the pretrained shared core (``data.init_from``), optionally
freezes it (``data.freeze_core``), and trains with the shared loop
(:func:`spikefm.train.loop.train`) on the session's train windows.
:func:`train_single_session` trains the same architecture from scratch on that session only.

Early stopping (both functions): training runs in segments of ``eval_every`` optimizer steps
(``train(..., resume=True, stop_after=k * eval_every)``: every segment ends in a checkpoint and the
next one resumes from it exactly, so the optimisation is the same as one uninterrupted run of
``steps`` steps, learning-rate schedule included). After each segment the masked Poisson NLL on the
session's ``val`` windows (fixed masks, :meth:`NDTFamily.evaluate`) is computed; the weights with
the lowest value are kept, and training stops once ``patience`` evaluations in a row brought no
improvement, or at ``steps``. ``OUT_DIR/model.safetensors`` then holds the best weights (not the
last), and ``OUT_DIR/early_stopping.json`` the history. Nothing here touches the test windows.

Example::

    from spikefm.finetune import finetune
    finetune("runs/ndt", "corpus", "sub-ibl02_ses-002", "runs/ft", freeze_core=True, steps=400)
    # then: spikefm eval runs/ft --data corpus
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .fileio import write_atomic

__all__ = ["finetune", "train_single_session", "train_with_early_stopping"]


def _best_path(out_dir: Path) -> Path:
    return out_dir / "best_model.safetensors"


def _save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def _current_state(out_dir: Path, finished: bool) -> dict[str, torch.Tensor]:
    """Model weights at the end of the last segment (export when finished, else the checkpoint)."""
    from safetensors.torch import load_file

    from .train.checkpoint import latest_checkpoint

    if finished:
        return load_file(str(out_dir / "model.safetensors"))
    ckpt = latest_checkpoint(out_dir)
    assert ckpt is not None, "a stopped segment always leaves a checkpoint"
    return torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)


def _validation_loss(family, cfg, state: dict[str, torch.Tensor]) -> float:
    """Pooled masked NLL per scored entry on the val windows, for given weights (one process)."""
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    family.init_weights(model)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        num, den = family.evaluate(model, cfg, 0, 1)["val_loss"]
    if den <= 0:
        raise ValueError("no entry of the val windows was scored; cannot early-stop")
    return num / den


def train_with_early_stopping(cfg, out_dir: str | os.PathLike, *, eval_every: int = 50, patience: int = 3,
                              progress: bool = False) -> dict[str, Any]:
    """Train an NDT RunConfig with validation early stopping (see the module docstring).

    Args:
        cfg: a RunConfig of family ``"ndt"``; ``cfg.train.steps`` is the maximum.
        out_dir: a new (or, to continue, the same) run directory.
        eval_every: optimizer steps per segment (between validation evaluations).
        patience: evaluations without a new best before stopping.
        progress: show the loop's progress display.

    Returns:
        {"out_dir", "best_step", "best_val_loss", "stopped_at", "history": [{"step", "val_loss"}],
        "model_path"}.
    """
    from .loading import register_families
    from .train.family import get_family
    from .train.loop import train
    from .fileio import write_json_atomic

    for name, v in (("eval_every", eval_every), ("patience", patience)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if cfg.family != "ndt":
        raise ValueError(f"early stopping here is for NDT runs, got family {cfg.family!r}")
    register_families()
    # Checkpoints come from stop_after at each segment end; the loop's own eval is not needed.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ckpt_every=0, eval_every=0))
    out_dir = Path(out_dir)
    family = get_family("ndt")
    steps = cfg.train.steps
    history: list[dict[str, float]] = []
    best_loss, best_step, since_best, step = math.inf, 0, 0, 0
    while step < steps:
        target = min(step + eval_every, steps)
        finished = target >= steps
        summary = train(cfg, out_dir, resume=True, stop_after=None if finished else target, progress=progress)
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


def _ndt_data_cfg_cls():
    from .train.ndt_family import NDTDataConfig

    return NDTDataConfig


def finetune(run_dir: str | os.PathLike, corpus_dir: str | os.PathLike, session_id: str,
             out_dir: str | os.PathLike, *, freeze_core: bool = False, steps: int = 500,
             overrides: Sequence[str] = (), patience: int = 3, eval_every: int = 50,
             progress: bool = False) -> dict[str, Any]:
    """Fine-tune the pretrained NDT in ``run_dir`` on ``session_id`` of ``corpus_dir``.

    The new run keeps the pretrained run's model config, window/masking options, optimizer and
    batch settings (``overrides`` such as ``"optim.lr=1e-3"`` change them), trains only on
    ``session_id`` and starts from the pretrained core (frozen with ``freeze_core``).

    Args:
        run_dir: finished NDT run directory (``config.json`` + ``model.safetensors``).
        corpus_dir: corpus holding ``session_id`` (usually the pretraining corpus, whose test split
            holds the held-out sessions).
        session_id: the session to adapt to.
        out_dir: new run directory (evaluate it with ``spikefm eval OUT_DIR --data CORPUS``).
        freeze_core: train the session parameters only.
        steps: maximum optimizer steps.
        overrides: ``section.key=value`` strings applied last.
        patience, eval_every: early stopping (module docstring).
        progress: show the loop's progress display.

    Returns:
        :func:`train_with_early_stopping`'s summary.
    """
    from .loading import register_families
    from .train.config import RunConfig, apply_overrides
    from .train.runinfo import load_run_config

    register_families()
    pre = load_run_config(run_dir)
    if pre.family != "ndt":
        raise ValueError(f"{run_dir} is a {pre.family!r} run; fine-tuning needs an NDT run")
    if not (Path(run_dir) / "model.safetensors").is_file():
        raise ValueError(f"{run_dir}/model.safetensors not found; the pretraining run has not finished")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    data = dataclasses.replace(pre.data, corpus=str(corpus_dir), sessions=session_id,
                               init_from=str(Path(run_dir).resolve()), freeze_core=bool(freeze_core))
    optim = dataclasses.replace(pre.optim, warmup_steps=min(pre.optim.warmup_steps, steps // 10))
    train_cfg = dataclasses.replace(pre.train, steps=steps)
    cfg = RunConfig(family="ndt", model=pre.model, data=data, optim=optim, train=train_cfg)
    cfg = apply_overrides(cfg, list(overrides))
    return train_with_early_stopping(cfg, out_dir, eval_every=eval_every, patience=patience, progress=progress)


def train_single_session(corpus_dir: str | os.PathLike, session_id: str, out_dir: str | os.PathLike, *,
                         like_run: str | os.PathLike | None = None, preset: str = "tiny", steps: int = 500,
                         overrides: Sequence[str] = (), patience: int = 3, eval_every: int = 50,
                         progress: bool = False) -> dict[str, Any]:
    """The single-session baseline: the NDT trained from scratch on ``session_id`` only.

    Args:
        corpus_dir, session_id, out_dir: as in :func:`finetune`.
        like_run: an NDT run whose model, window/masking, optimizer and batch settings to copy (so
            the baseline matches a fine-tuned model exactly); otherwise ``preset`` and defaults.
        preset: NDT preset when ``like_run`` is None.
        steps, overrides, patience, eval_every, progress: as in :func:`finetune`.

    Returns:
        :func:`train_with_early_stopping`'s summary.
    """
    from .loading import register_families
    from .models.ndt import ndt_preset
    from .train.config import RunConfig, apply_overrides
    from .train.runinfo import load_run_config

    register_families()
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if like_run is not None:
        pre = load_run_config(like_run)
        if pre.family != "ndt":
            raise ValueError(f"{like_run} is a {pre.family!r} run; like_run must be an NDT run")
        data = dataclasses.replace(pre.data, corpus=str(corpus_dir), sessions=session_id, init_from="",
                                   freeze_core=False)
        optim = dataclasses.replace(pre.optim, warmup_steps=min(pre.optim.warmup_steps, steps // 10))
        cfg = RunConfig(family="ndt", model=pre.model, data=data, optim=optim,
                        train=dataclasses.replace(pre.train, steps=steps))
    else:
        from .train.config import OptimConfig, TrainConfig

        cfg = RunConfig(family="ndt", model=ndt_preset(preset),
                        data=_ndt_data_cfg_cls()(corpus=str(corpus_dir), sessions=session_id),
                        optim=OptimConfig(warmup_steps=min(100, steps // 10)), train=TrainConfig(steps=steps))
    cfg = apply_overrides(cfg, list(overrides))
    return train_with_early_stopping(cfg, out_dir, eval_every=eval_every, patience=patience, progress=progress)
