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
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from spikefm.fileio import (LOCK_NAME, folder_lock, make_folder, remove_stale_temporaries, write_atomic,
                            write_json_atomic)
from spikefm.train.checkpoint import (EXPORT_NAME, RUN_MARKERS, check_run_folder, read_safetensors_header,
                                      write_safetensors)
from spikefm.train.family import family_label

__all__ = ["FinetuneBudget", "OtherFinetune", "train_with_early_stopping", "validation_still_falling", "finetune_strategies", "check_auto_options",
           "one_se_choice",
           "window_losses", "average_weights", "greedy_soup", "write_averaged_run", "STRATEGIES", "SELECT_RULES"]



class OtherFinetune(ValueError):
    """The output folder holds another fine-tuning (other settings, budget or strategy, or a
    finished ``auto`` one): refused, nothing overwritten. A caller that owns the folder (a study)
    may remove it and fine-tune anew; any other error is not this."""


class FinetuneBudget(RuntimeWarning):
    """A fine-tuning's steps or evaluation cadence may have been too few (the validation loss
    still fell at the end, or was lowest at the first evaluation); the advice names flags."""

def _best_path(out_dir: Path) -> Path:
    return out_dir / "best_model.safetensors"


def _save_safetensors_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    write_safetensors(path, {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, {"format": "pt"})


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
    from spikefm.train.loop import validation_metrics

    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    family.init_weights(model)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        metrics = validation_metrics(family, model, cfg)
    if "val_loss" not in metrics:
        if metrics:  # other names scored: the family never returns the one early stopping minimises
            raise ValueError(f"family {family_label(family)!r}: validate() returned no "
                             f"'val_loss' entry (it returned {', '.join(sorted(metrics))}); early stopping minimises "
                             "'val_loss'")
        raise ValueError("the validation data scored nothing; cannot early-stop")
    return metrics["val_loss"]


def train_with_early_stopping(cfg, out_dir: str | os.PathLike, family, *, eval_every: int = 50,
                              patience: int = 3, progress: bool | str = False, stage: str = "",
                              say_finished: bool = True) -> dict[str, Any]:
    """Train a RunConfig with validation early stopping (see the module docstring).

    Args:
        cfg: the RunConfig; ``cfg.train.steps`` is the maximum.
        family: its family; must implement ``validate`` returning a ``"val_loss"`` entry.
        out_dir: a new (or, to continue, the same) run directory.
        eval_every: optimizer steps per segment (between validation evaluations).
        patience: evaluations without a new best before stopping.
        progress: show the loop's progress display (a string: under that label, e.g. the
            candidate's name).
        stage: what the steps count when they are not the whole fine-tuning's (said after the step
            number in the still-falling warning, e.g. ``unfreeze``'s second stage).
        say_finished: say so when ``out_dir`` holds this fine-tuning finished (False for a part of
            a larger one, whose folder the user never named).

    Returns:
        {"out_dir", "best_step", "best_val_loss", "stopped_at", "history": [{"step", "val_loss"}],
        "model_path", "still_improving" (lowest at the last step: more steps may help),
        "best_at_first_evaluation" (lowest at the first evaluation, no later one lower: better
        weights may lie before it; :func:`finetune_strategies` warns)}.
    """
    from spikefm.train.loop import train

    for name, v in (("eval_every", eval_every), ("patience", patience)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not hasattr(family, "validate"):
        raise ValueError(f"family {cfg.family!r} has no validate(); early stopping needs validation data")
    cfg = _segmented(cfg)
    out_dir = Path(out_dir)
    steps = cfg.train.steps
    budget = {"max_steps": steps, "eval_every": eval_every, "patience": patience}
    _check_same_finetune(cfg, out_dir)
    for path in (_best_path(out_dir), out_dir / PROGRESS_NAME, out_dir / "early_stopping.json",
                 out_dir / "finetune.json"):
        remove_stale_temporaries(path)  # a killed earlier run's (the loop removes its own files')
    done = _reuse_finished(out_dir, budget, say=say_finished)
    if done is not None:  # the same command again: the kept weights and history stay as they are
        return done
    # an unfinished one continues only with its own budget (another --steps would mix two runs)
    _check_same_finetune(cfg, out_dir, sections=("train",))
    check = getattr(family, "check_validation_data", None)
    if check is not None:  # no val windows: said before training, not after its first segment
        check(cfg)
    history: list[dict[str, float]] = []
    best_loss, best_step, since_best, step = math.inf, 0, 0, 0
    kept = _read_progress(out_dir, budget)
    if kept is not None:  # interrupted: its validations, best weights and patience count go on
        history, best_step, since_best = kept["history"], kept["best_step"], kept["since_best"]
        best_loss = kept["best_val_loss"] if kept["best_val_loss"] is not None else math.inf
        step = history[-1]["step"]
    while step < steps and since_best < patience:
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
        write_json_atomic(out_dir / PROGRESS_NAME, {  # after the best weights: both say the same
            **budget, "history": history, "best_step": best_step, "since_best": since_best,
            "best_val_loss": best_loss if math.isfinite(best_loss) else None})
    model_path = out_dir / "model.safetensors"
    if _best_path(out_dir).is_file():  # else moved already (a rerun finishing an interrupted end)
        os.replace(_best_path(out_dir), model_path)
    still_improving = len(history) >= 2 and best_step == step and step >= steps
    if still_improving:
        warnings.warn(f"{out_dir}: the validation loss was still falling at the last step ({steps}{stage}); "
                      "more steps may help (raise --steps; --finetune-steps in a study)", FinetuneBudget, stacklevel=2)
    # The lowest loss at the first evaluation, no later one lower: the best weights may lie
    # before it, where nothing was evaluated (said once per fine-tuning, by _say_best_at_first).
    best_at_first = len(history) >= 2 and best_step == history[0]["step"] and history[0]["step"] > 1
    result = {"out_dir": str(out_dir), "best_step": best_step, "best_val_loss": best_loss,
              "stopped_at": step, "max_steps": steps, "eval_every": eval_every, "patience": patience,
              "still_improving": still_improving, "best_at_first_evaluation": best_at_first,
              "history": history, "model_path": str(model_path)}
    write_json_atomic(out_dir / "early_stopping.json", result)
    (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
    return result


#: An unfinished fine-tuning's early-stopping state (budget, validations, best step, patience
#: count), rewritten after every validation so that the same command continues it exactly.
PROGRESS_NAME = "early_stopping_progress.json"


def _read_progress(out_dir: Path, budget: dict[str, int]) -> dict[str, Any] | None:
    """The early-stopping state an interrupted fine-tuning left in ``out_dir``, or None (none, a
    damaged one, or best weights missing: it starts again from the checkpoint, evaluating anew).
    Another budget is refused: continuing would mix two fine-tunings."""
    try:
        rec = json.loads((out_dir / PROGRESS_NAME).read_text())
        history = [{"step": int(h["step"]), "val_loss": float(h["val_loss"])} for h in rec["history"]]
        kept = {"history": history, "best_step": int(rec["best_step"]), "since_best": int(rec["since_best"]),
                "best_val_loss": None if rec["best_val_loss"] is None else float(rec["best_val_loss"])}
        before = {k: rec[k] for k in budget}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if before != budget:
        raise OtherFinetune(f"{out_dir} holds an unfinished fine-tuning ({_budget_text(before)}); nothing is overwritten: "
                         "run the command that made it again to continue it, or use a new --out for "
                         f"{_budget_text(budget)}")
    if not history:
        return None
    if kept["best_val_loss"] is not None and not _best_path(out_dir).is_file():
        # the best weights gone: either lost (start again from the checkpoint) or already moved to
        # model.safetensors by a fine-tuning stopped before its record was written (it had ended:
        # its last validation at the budget, or patience spent); that one is finished from here
        ended = history[-1]["step"] >= budget["max_steps"] or kept["since_best"] >= budget["patience"]
        if not (ended and (out_dir / EXPORT_NAME).is_file()):
            return None
    return kept


def validation_still_falling(run_dir: str | os.PathLike, key: str = "eval/val_loss") -> bool:
    """True when a finished run's last validation evaluation (``metrics.jsonl``) was its best of
    at least two: the run ended while the validation loss was still falling."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    values = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get(key), (int, float)):
            values.append(float(row[key]))
    return len(values) >= 2 and values[-1] <= min(values)


#: Fine-tuning strategies: ``frozen`` trains the new session's parameters on the frozen pretrained
#: core; ``full`` trains everything at ``FULL_LR_SCALE`` times the run's learning rate;
#: ``unfreeze`` does ``frozen`` for half the steps, then ``full`` from there; ``scratch`` trains the
#: same model on the session alone (the single-session baseline); ``auto`` trains the first three
#: (and, with ``soup``, ranks their greedy weight average beside them), keeps the one its selection
#: rule picks on validation windows (:data:`SELECT_RULES`) and trains ``scratch`` beside them for
#: comparison.
STRATEGIES = ("auto", "frozen", "full", "unfreeze", "scratch")
FULL_LR_SCALE = 0.1
#: How ``auto`` picks among its pretrained candidates: ``lowest`` validation loss, or ``one-se``:
#: the most constrained candidate (``frozen``, then ``unfreeze``, then ``full``) whose mean
#: validation loss per window is within one standard error of the lowest (the standard error of
#: the paired per-window difference; needs the family's ``validate_windows``). A family's
#: ``finetune_select`` attribute sets its default (``lowest`` where it has none).
SELECT_RULES = ("lowest", "one-se")
#: ``auto``'s pretrained candidates, from the most to the least constrained.
PRETRAINED_CANDIDATES = ("frozen", "unfreeze", "full")


def average_weights(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of models' weights (floating-point tensors, averaged in float64 and
    cast back; any other tensor taken from the first model, where all must agree).

    Raises:
        ValueError: no states, or states with different parameter names or shapes (one line).
    """
    if not states:
        raise ValueError("average_weights needs at least one set of weights, got none")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            diff = sorted(keys.symmetric_difference(s))[:3]
            raise ValueError(f"cannot average weights with different parameter names: model 0 and model {i} "
                             f"differ in {diff}; the models must share one architecture")
        bad = [k for k in keys if s[k].shape != states[0][k].shape]
        if bad:
            raise ValueError(f"cannot average weights of different shapes: {bad[0]} is "
                             f"{tuple(states[0][bad[0]].shape)} in model 0 and {tuple(s[bad[0]].shape)} in model {i}")
    out = {}
    for k in states[0]:
        t0 = states[0][k]
        if t0.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(t0.dtype)
        else:
            if any(not torch.equal(s[k], t0) for s in states[1:]):
                raise ValueError(f"cannot average the non-floating-point tensor {k}: the models disagree on it")
            out[k] = t0.clone()
    return out


def greedy_soup(states: dict[str, dict[str, torch.Tensor]], losses: dict[str, float], val_loss) -> dict[str, Any]:
    """A greedy weight average ("model soup", Wortsman et al. 2022) of models fine-tuned from one
    start: the models in order of validation loss, each added to the average only where the
    average's validation loss falls below the current one's.

    Args:
        states: name -> weights (one architecture).
        losses: name -> that model's validation loss.
        val_loss: weights -> validation loss (the same measure as ``losses``).

    Returns:
        {"ingredients": names averaged (the lowest first), "val_loss", "state" (averaged weights),
        "tried": [{"add", "val_loss", "kept"}]}; one ingredient means no average was better.
    """
    order = sorted(states, key=lambda n: losses[n])
    ingredients, state, best = [order[0]], states[order[0]], float(losses[order[0]])
    tried = []
    for name in order[1:]:
        trial = average_weights([states[n] for n in ingredients + [name]])
        loss = float(val_loss(trial))
        kept = loss < best
        tried.append({"add": name, "val_loss": loss, "kept": kept})
        if kept:
            ingredients, state, best = ingredients + [name], trial, loss
    return {"ingredients": ingredients, "val_loss": best, "state": state, "tried": tried}


def _lower_lr(cfg, scale: float):
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * scale))


def _reuse_finished(out_dir: Path, budget: dict[str, int], need: str = "history",
                    say: bool = True) -> dict[str, Any] | None:
    """The record of a fine-tuning finished in ``out_dir`` with this ``budget`` (said in one
    line: nothing to do), None when none is finished there; another budget is refused."""
    done = _finished_record(out_dir)
    if done is None or need not in done:
        return None
    before = {k: done.get(k) for k in budget}
    if before != budget:
        raise OtherFinetune(f"{out_dir} already holds a finished fine-tuning ({_budget_text(before)}; it stopped "
                         f"at step {done.get('stopped_at')}); nothing is overwritten: use a new --out for "
                         f"{_budget_text(budget)}")
    if say:
        from spikefm.train.loop import _notice

        _notice(f"{out_dir} is already finished (stopped at step {done.get('stopped_at')} of at most "
                f"{budget['max_steps']}, best at step {done.get('best_step')}); nothing to do", warning=False)
    return done


def _budget_text(b: dict) -> str:
    return f"at most {b['max_steps']} steps, validated every {b['eval_every']}, patience {b['patience']}"


def _finished_record(out_dir: Path) -> dict[str, Any] | None:
    """The early-stopping record of a fine-tuning finished in ``out_dir`` (its best weights
    exported beside it), or None."""
    path = out_dir / "early_stopping.json"
    if not ((out_dir / EXPORT_NAME).is_file() and path.is_file()):
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # damaged: the loop's checks decide what the folder is
    return record if isinstance(record, dict) and "history" in record else None


def _segmented(cfg):
    """``cfg`` as :func:`train_with_early_stopping` trains (and records) it: checkpoints come from
    ``stop_after`` at each segment end, and the loop's own evaluation is not needed."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ckpt_every=0, eval_every=0))


def _check_same_finetune(cfg, out_dir: Path, sections: tuple[str, ...] = ("family", "model", "data", "optim")) -> None:
    """Refuse, in fine-tuning's words, a folder that holds a fine-tuning with other settings
    (another strategy, session or pretrained run; with ``sections=("train",)`` another budget of
    an unfinished one): continuing it would mix two runs."""
    from spikefm.train.config import saved_config_differences

    differs = saved_config_differences(out_dir, cfg, sections)  # None: none yet, or not a run (the
    if differs:  # loop's own checks say what the folder is)
        section = differs[0].split(".")[0]
        what = ", ".join([d for d in differs if d.split(".")[0] == section][:4])
        guess = "another --steps?" if section == "train" else "another strategy, session or pretrained run?"
        raise OtherFinetune(f"{out_dir} holds a fine-tuning made with other settings ({what} differ: {guess}); "
                         "nothing is overwritten: use a new --out, or run the command that made it again to "
                         "continue it")


def _one_strategy(family, strategy: str, run_dir: str, corpus: str, session_id: str, out_dir: Path, *,
                  steps: int, overrides: Sequence[str], eval_every: int, patience: int,
                  progress: bool) -> dict[str, Any]:
    """Train one fine-tuning ``strategy`` into ``out_dir`` with early stopping; its progress
    display is labelled with the strategy's name (``auto`` trains several, one after another)."""
    from spikefm.train.config import apply_overrides

    def config(source: str, freeze: bool, scratch: bool, n: int, lr_scale: float = 1.0):
        cfg = family.finetune_config(source, corpus, session_id, freeze_core=freeze, from_scratch=scratch,
                                     steps=n)
        from spikefm.train.config import RunConfig

        if not isinstance(cfg, RunConfig):
            raise ValueError(f"family {family_label(family)!r}: finetune_config() must "
                             f"return a RunConfig (spikefm.train.config), got {type(cfg).__name__}")
        cfg = apply_overrides(cfg, list(overrides))
        return _lower_lr(cfg, lr_scale) if lr_scale != 1.0 else cfg

    kw = dict(eval_every=eval_every, patience=patience, progress=strategy if progress else False)
    if strategy == "frozen":
        return train_with_early_stopping(config(run_dir, True, False, steps), out_dir, family, **kw)
    if strategy == "scratch":
        return train_with_early_stopping(config(run_dir, False, True, steps), out_dir, family, **kw)
    if strategy == "full":
        return train_with_early_stopping(config(run_dir, False, False, steps, FULL_LR_SCALE), out_dir,
                                         family, **kw)
    # unfreeze: the session parameters first, on the frozen core; then everything, from there
    first = max(1, steps // 2)
    done = _reuse_finished(out_dir, {"max_steps": max(1, steps - first), "eval_every": eval_every,
                                     "patience": patience}, need="stage1")
    stage1 = out_dir.parent / f".{out_dir.name}.stage1"
    if done is not None:  # finished: stage 1 is not trained again
        if stage1.exists():  # stopped after its record, before the tidy-up below: finish that
            _finish_unfreeze(out_dir, run_dir, stage1, done["stage1"])
        return done
    cfg1 = config(run_dir, True, False, first)
    if stage1.exists():
        # an interrupted run's frozen stage: continued (or reused, when finished) with the same
        # settings, else it is this strategy's own scratch folder of another run: started again
        try:
            _check_same_finetune(_segmented(cfg1), stage1, sections=("family", "model", "data", "optim", "train"))
        except OtherFinetune:
            shutil.rmtree(stage1)
    with warnings.catch_warnings():  # stage 2 goes on from stage 1: its "still falling" is not advice
        warnings.filterwarnings("ignore", message=".*the validation loss was still falling", category=RuntimeWarning)
        s1 = train_with_early_stopping(cfg1, stage1, family, **{**kw, "progress": progress and "unfreeze, frozen stage"},
                                       say_finished=False)  # its hidden folder: no 'nothing to do' of it
    s2 = train_with_early_stopping(config(str(stage1), False, False, max(1, steps - first), FULL_LR_SCALE),
                                   out_dir, family, **kw, stage=unfrozen_steps_text({"stage1": s1}))
    s2["stage1"] = {k: s1[k] for k in ("best_step", "best_val_loss", "stopped_at")}
    if s1["best_val_loss"] < s2["best_val_loss"]:
        s2["note"] = "unfreezing did not improve on the frozen stage's validation loss"
    # the record first (a rerun finds it finished), then the provenance and the stage-1 folder: a
    # stop between the two (config.json repointed, the record not yet written) made every rerun
    # refuse the folder as 'made with other settings (data.init_from)'
    write_json_atomic(out_dir / "early_stopping.json", s2)
    _finish_unfreeze(out_dir, run_dir, stage1, s2["stage1"])
    return s2


def stage1_best_step(summary: dict) -> int | None:
    """The frozen stage's best step of an ``unfreeze`` fine-tuning (its summary's ``stage1``);
    None for any other."""
    stage1 = summary.get("stage1")
    return stage1.get("best_step") if isinstance(stage1, dict) else None


def unfrozen_steps_text(summary: dict) -> str:
    """What an ``unfreeze`` summary's steps count, said after a step number: those of its second
    stage, which starts from the frozen stage's best weights (``" of the unfrozen stage, after
    the frozen stage's best step 30"``); "" for any other fine-tuning, whose steps count from 0."""
    first = stage1_best_step(summary)
    return "" if first is None else f" of the unfrozen stage, after the frozen stage's best step {first}"


def unfreeze_best_step(summary: dict) -> str:
    """A fine-tuning's best step as a table shows it: for ``unfreeze``, ``frozen+unfrozen`` (the
    frozen stage's best step, then the second stage's own), where its ``best_step`` alone counts
    the second stage's steps only; else the step."""
    first = stage1_best_step(summary)
    return str(summary["best_step"]) if first is None else f"{first}+{summary['best_step']}"


def _finish_unfreeze(out_dir: Path, run_dir: str, stage1: Path, stage1_summary: dict) -> None:
    """The end of a finished ``unfreeze``: its recorded provenance points at the pretrained run,
    and the frozen stage's folder goes."""
    _record_unfreeze_provenance(out_dir, run_dir, stage1, stage1_summary)
    shutil.rmtree(stage1, ignore_errors=True)


def _record_unfreeze_provenance(out_dir: Path, run_dir: str, stage1: Path, stage1_summary: dict) -> None:
    """Stage 2 of ``unfreeze`` was initialised from the frozen stage's folder, which is deleted
    once it is done; point the run's recorded ``init_from`` (config and family info) at the
    pretrained run instead and keep what stage 1 did under ``finetune_stage1``, so the
    provenance of the weights never names a folder that does not exist."""
    from spikefm.train.checkpoint import rewrite_checkpoint_configs
    from spikefm.train.runinfo import read_run_info

    pretrained = str(Path(run_dir).resolve())

    def repoint(info: dict) -> dict:
        data = info.get("config", {}).get("data", {})
        if isinstance(data, dict) and "init_from" in data:
            data["init_from"] = pretrained
        fam = info.get("family_info")
        if isinstance(fam, dict) and "init_from" in fam:
            fam["init_from"] = pretrained
        info["finetune_stage1"] = {"strategy": "frozen", "deleted_folder": str(stage1.resolve()), **stage1_summary,
                                   "note": "stage 2 (everything trainable) started from this stage's weights: "
                                           "the pretrained core and the session parameters trained on it"}
        return info

    write_json_atomic(out_dir / "config.json", repoint(read_run_info(out_dir)))
    # the checkpoints keep a copy of the run's config (for resuming): the same provenance there
    rewrite_checkpoint_configs(out_dir, repoint)


def one_se_choice(losses: dict[str, Any], order: Sequence[str] = PRETRAINED_CANDIDATES
                  ) -> tuple[str, dict[str, Any]]:
    """The one-standard-error rule: the first candidate of ``order`` whose mean per-window
    validation loss is within one standard error of the lowest mean, the standard error being that
    of the paired per-window difference from the lowest candidate (a small validation set ranks
    candidates noisily; among those it cannot tell apart, keep the most constrained).

    Args:
        losses: candidate -> per-window validation losses (the same windows, in the same order).

    Returns:
        (chosen, {"lowest", "val_loss_mean_per_window", "se_of_difference", "num_windows"}).
    """
    import numpy as np

    arrs = {n: np.asarray(losses[n], dtype=np.float64) for n in order}
    sizes = {a.shape for a in arrs.values()}
    if sizes == {(0,)}:
        raise ValueError("--select one-se: the session has no validation windows to compare the candidates on; "
                         "use --select lowest (select='lowest' in Python) or give the session a validation share "
                         "(--set data.split_fractions=...)")
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"one_se_choice needs one non-empty 1-D array of per-window losses of the same length "
                         f"per candidate; got shapes {({n: a.shape for n, a in arrs.items()})}")
    if not all(np.isfinite(a).all() for a in arrs.values()):
        raise ValueError("one_se_choice: a per-window validation loss is not finite")
    mean = {n: float(a.mean()) for n, a in arrs.items()}
    lowest = min(order, key=lambda n: mean[n])
    k = arrs[lowest].size
    se = {n: float(np.std(arrs[n] - arrs[lowest], ddof=1) / math.sqrt(k)) if k > 1 else 0.0 for n in order}
    chosen = next(n for n in order if mean[n] - mean[lowest] <= se[n])
    return chosen, {"lowest": lowest, "val_loss_mean_per_window": mean, "se_of_difference": se, "num_windows": k}


def window_losses(family, run_dir: str | os.PathLike) -> Any:
    """Per-window validation losses of a finished candidate's kept weights."""
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    cfg = load_run_config(run_dir, model_cls=family.model_config_cls, data_cls=family.data_config_cls)
    model = load_exported_model(run_dir, family, cfg).eval()
    with torch.no_grad():
        return family.validate_windows(model, cfg)


def check_auto_options(strategy: str, *, select: str | None = None, soup: bool | None = None) -> None:
    """ValueError (one line) for a strategy not in :data:`STRATEGIES` and for options that only
    ``auto`` uses (``select``, ``soup``) given with a strategy that trains one candidate; callers
    that do work before fine-tuning check first."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if select is not None and strategy != "auto":
        raise ValueError(f"--select {select} (select={select!r} in Python) chooses among auto's candidates; "
                         f"--strategy {strategy} trains one candidate: drop --select or use --strategy auto")
    if soup and strategy != "auto":
        raise ValueError(f"soup averages auto's candidates; strategy {strategy!r} trains one candidate: "
                         "drop --soup or use --strategy auto")


def check_finetune_overrides(overrides: Sequence[str], run_dir: str | os.PathLike, *,
                             pretrained: Any = None, fixed_data: Sequence[str] = ()) -> None:
    """Refuse ``train.steps``, ``train.eval_every`` and ``train.ckpt_every`` (the fine-tuning's own
    options set them), and ``model.*`` settings (``--set model.dim=128``) in a fine-tuning, in one
    line naming them: the model is the pretrained run's (its weights have that shape, and the single-session
    baseline is the same model to compare with), so they cannot change. Found before any work
    (they failed only when the pretrained core was loaded into a model of another shape).
    Only dropout rates (``model.dropout``, any ``model.*dropout*``), which shape no weight, may
    change; every other model setting is the pretrained model's.

    ``fixed_data`` (the family's ``finetune_fixed_data``) names ``data`` settings that must stay
    the pretrained run's (``pretrained``, its RunConfig): an override giving one of them another
    value is refused too (the same value is accepted)."""
    from spikefm.train.config import override_key as key

    def is_model_shape(o: str) -> bool:
        return (key(o) == "model" or key(o).startswith("model.")) and "dropout" not in key(o).partition(".")[2]

    flags = {"train.steps": "--steps (steps= in Python)", "train.eval_every": "--eval-every (eval_every=)",
             "train.ckpt_every": "nothing: a fine-tuning checkpoints at each validation",
             "data.freeze_core": "--strategy (frozen, full, unfreeze; strategy= in Python)",
             "data.init_from": "the pretrained run it is given (and --strategy scratch: none)",
             "data.sessions": "--session (session_id= in Python)"}
    loop = [str(o).strip() for o in overrides if key(o) in flags]
    # the fine-tuning's own options set them (--set train.steps beat --steps; data.freeze_core beat
    # --strategy, and the record named the strategy it overrode; the others did nothing)
    if loop:
        raise ValueError("; ".join(f"--set {o}: a fine-tuning's {key(o)} comes from {flags[key(o)]}" for o in loop)
                         + "; drop the --set")
    given = [str(o).strip() for o in overrides if is_model_shape(o)]
    if given:
        sets = " ".join(f"--set {o}" for o in given)
        raise ValueError(f"{sets}: the model settings of a fine-tuning come from the pretrained run {run_dir} "
                         f"(its config.json) and cannot change (its weights have that shape; only dropout may); drop the model.* "
                         f"setting{'s' if len(given) > 1 else ''}, or pretrain a run with "
                         f"{'them' if len(given) > 1 else 'it'} (spikefm train ... {sets})")
    if not fixed_data or pretrained is None:
        return
    from spikefm.train.config import apply_overrides

    after = apply_overrides(pretrained, list(overrides))
    changed = [f"data.{k}={getattr(after.data, k)!r} (the pretrained run's: {getattr(pretrained.data, k)!r})"
               for k in fixed_data if getattr(after.data, k) != getattr(pretrained.data, k)]
    if changed:
        raise ValueError(f"{', '.join(changed)}: a fine-tuning of this family keeps the pretrained run's "
                         f"{', '.join(f'data.{k}' for k in fixed_data)} (its evaluation cuts the pretraining "
                         f"sessions' windows with the fine-tuned run's settings); drop the --set, or pretrain a "
                         "run with that setting")


def finetune_strategies(family, run_dir: str | os.PathLike, corpus: str | os.PathLike, session_id: str,
                        out_dir: str | os.PathLike, *, strategy: str = "auto", steps: int = 500,
                        overrides: Sequence[str] = (), eval_every: int = 50, patience: int = 3,
                        progress: bool = False, select: str | None = None, soup: bool | None = None
                        ) -> dict[str, Any]:
    """Fine-tune a finished run to a new session with one strategy (:data:`STRATEGIES`).

    With ``auto`` the candidates train in ``OUT_DIR/candidates/<strategy>/``, the one ``select``
    picks (:data:`SELECT_RULES`; default the family's ``finetune_select``, else ``lowest``) is
    copied to ``OUT_DIR`` (its config, weights, metrics and history), and ``OUT_DIR/finetune.json``
    lists every candidate, how the choice was made (``selection``) and the single-session model's
    validation loss, so what pretraining bought is always in view. With ``soup`` (default the
    family's ``finetune_soup``, else off) ``auto`` also builds the greedy weight average of its
    pretrained candidates (:func:`greedy_soup`; ``OUT_DIR/candidates/soup/`` when it averages two
    or more) and ranks it with them: the candidates start from the same weights, so their average
    is one model of the same shape. Choices use validation windows only.

    Returns:
        The chosen run's early-stopping summary (for the soup, which trained no steps of its own:
        its validation loss, ``ingredients`` and the steps of the candidate whose config it keeps),
        with ``strategy`` and (``auto``) ``candidates``, ``selection``, ``single_session`` and
        ``pretraining_gain`` (single-session minus chosen validation loss).
    """
    check_auto_options(strategy, select=select, soup=soup)  # the strategy's name too
    if not hasattr(family, "finetune_config"):
        raise ValueError(f"the {family.name!r} family does not support fine-tuning to a new session")
    soup = getattr(family, "finetune_soup", False) if soup is None else bool(soup)
    select = select or getattr(family, "finetune_select", "lowest")
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}, got {select!r}")
    if select == "one-se" and not hasattr(family, "validate_windows"):
        raise ValueError(f"--select one-se needs per-window validation losses, which the {family.name!r} family "
                         "does not compute (it has no validate_windows); use --select lowest (select='lowest' in "
                         "Python)")
    out_dir = Path(out_dir)
    if out_dir.exists() and out_dir.resolve() == Path(run_dir).resolve():
        raise ValueError(f"{out_dir} is the pretrained run itself; fine-tuning writes a new run: give "
                         "a new folder (--out); nothing was written")
    _check_session(corpus, session_id)  # before any folder is made for it
    args = dict(steps=steps, overrides=overrides, eval_every=eval_every, patience=patience, progress=progress)
    if strategy != "auto":
        if (out_dir / "candidates").is_dir():  # its finetune.json (candidates, selection) would be replaced
            raise OtherFinetune(f"{out_dir} holds a --strategy auto fine-tuning (candidates/); --strategy {strategy} "
                             "would replace its record; nothing was written: use a new --out, or run --strategy "
                             "auto again (the same command continues or reuses it)")
        check_run_folder(out_dir)  # what the loop checks first, before the export's check
        _check_pretrained_export(Path(run_dir), strategy)
        created = not out_dir.exists()
        make_folder(out_dir, action=f"create the run folder {out_dir}", fix="choose another --out")
        locked = False
        try:
            # the loop locks the folder per segment only: between segments (validation, best
            # weights, records) a second fine-tuning of the same folder would interleave with it
            with folder_lock(out_dir, what="fine-tuning run", name=FINETUNE_LOCK_NAME):
                locked = True
                summary = _one_strategy(family, strategy, str(run_dir), str(corpus), session_id, out_dir, **args)
                summary["strategy"] = strategy
                write_json_atomic(out_dir / "finetune.json", summary)
        except BaseException:
            _remove_if_only_locks(out_dir, created and locked)  # refused at the lock: the holder's folder
            raise
        _say_about_the_kept_run(out_dir, strategy, summary)
        return summary
    _check_auto_out_dir(out_dir)
    _check_pretrained_export(Path(run_dir), strategy)
    created = not out_dir.exists()
    make_folder(out_dir, action=f"create the run folder {out_dir}", fix="choose another --out")
    locked = False
    try:
        with folder_lock(out_dir, what="fine-tuning run"):
            locked = True
            return _auto(family, run_dir, corpus, session_id, out_dir, args, select, soup)
    except BaseException:
        _remove_if_only_locks(out_dir, created and locked)  # refused at the lock: the holder's folder
        raise


#: The lock a one-strategy fine-tuning holds on its folder for its whole length (the training
#: loop's own lock, :data:`~spikefm.fileio.LOCK_NAME`, is held per segment).
FINETUNE_LOCK_NAME = ".spikefm.finetune.lock"


def _remove_if_only_locks(out_dir: Path, created: bool) -> None:
    """Refused (or stopped) before anything was trained: leave no folder this call made that holds
    only lock files."""
    if created and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {LOCK_NAME, FINETUNE_LOCK_NAME}:
        shutil.rmtree(out_dir, ignore_errors=True)


def _check_session(corpus: str | os.PathLike, session_id: str) -> None:
    """A one-line error when a spikefm corpus (one with a manifest) holds no ``session_id``;
    other data folders (a family's own format) are left to the family."""
    if not (Path(corpus) / "manifest.json").is_file():
        return
    from spikefm.corpus.reader import Corpus

    known = Corpus(corpus).session_ids()
    if session_id not in known:
        listed = ", ".join(known[:10]) + (f" ... ({len(known)} in all)" if len(known) > 10 else "")
        raise ValueError(f"session {session_id!r} is not in the corpus {corpus}; its sessions: {listed}; nothing "
                         "was written: give one of them (--session)")


def _check_pretrained_export(run_dir: Path, strategy: str) -> None:
    """Before anything is written: the pretrained run's export is there and readable (a damaged
    file was found only inside the first candidate, as an internal error, with folders left)."""
    export = run_dir / EXPORT_NAME
    if strategy == "scratch" or not (run_dir / "config.json").is_file():
        return  # scratch needs no weights; the family says what a folder that is no run lacks
    if not export.is_file():
        raise ValueError(f"{export} not found; the pretraining run has not finished (resume it with "
                         "spikefm train ... --resume); nothing was written")
    read_safetensors_header(export)  # one line naming the file and its problem


def best_at_first_text(summary: dict) -> str:
    """Why a lowest validation loss at the first evaluation matters, in the words the warning and
    the report use: ``(step S; no later one was lower), so better weights may lie before it...``
    (for ``unfreeze``, its second stage's first steps: the frozen stage's best was evaluated)."""
    if stage1_best_step(summary) is not None:
        return (f"(step {summary.get('best_step')}{unfrozen_steps_text(summary)}; no later one was "
                f"lower), so better weights may lie in the unfrozen stage's first {summary.get('best_step')} steps, "
                "which were never evaluated")
    return (f"(step {summary.get('best_step')}; no later one was lower), so better weights may lie before it, which "
            "was never evaluated")


def _say_about_the_kept_run(out_dir: Path, strategy: str, summary: dict) -> None:
    """The warnings about the weights a fine-tuning keeps (after its record is written): best at the
    first evaluation; an ``unfreeze`` run whose unfrozen stage never reached its frozen stage's lowest
    validation loss, so the weights kept (the unfrozen stage's best) are not the best this
    fine-tuning saw (the frozen stage's folder is gone by then; ``--strategy frozen`` trains that way)."""
    _say_best_at_first(out_dir, strategy, summary)
    stage1 = summary.get("stage1")
    if not isinstance(stage1, dict) or not stage1.get("best_val_loss", math.inf) < summary["best_val_loss"]:
        return
    warnings.warn(f"{out_dir}: unfreezing did not help: the kept weights' validation loss "
                  f"({summary['best_val_loss']:.4f}, step {summary['best_step']}{unfrozen_steps_text(summary)}) is "
                  f"above the frozen stage's best ({stage1['best_val_loss']:.4f}, step {stage1['best_step']}), "
                  "whose weights are not kept; --strategy frozen fine-tunes that way (with all the steps)",
                  FinetuneBudget, stacklevel=3)


def _say_best_at_first(out_dir: Path, strategy: str, summary: dict) -> None:
    """Warn when the kept run's lowest validation loss came at its first evaluation (no later
    one lower): the best weights may lie before it, which was never evaluated."""
    if summary.get("best_at_first_evaluation"):
        warnings.warn(f"{out_dir}: the {strategy} run's lowest validation loss came at its first evaluation "
                      f"{best_at_first_text(summary)}; a smaller --eval-every (now {summary['eval_every']}) "
                      "evaluates earlier steps", FinetuneBudget, stacklevel=3)


def _check_auto_out_dir(out_dir: Path) -> None:
    """``auto`` writes OUT/candidates/ and then copies the chosen run's files into OUT: refuse a
    folder of something else, another run (its weights would be replaced) or a finished
    fine-tuning; a fine-tuning that was interrupted (only candidates/ so far) is run again."""
    if (out_dir / "finetune.json").exists():
        raise OtherFinetune(f"{out_dir} already holds a finished fine-tuning (finetune.json); nothing "
                         "is overwritten: use a new --out")
    check_run_folder(out_dir, allowed=("candidates",))
    if out_dir.is_dir() and not (out_dir / "candidates").is_dir() and any(
            (out_dir / n).exists() for n in RUN_MARKERS):
        raise ValueError(f"{out_dir} holds another training run, whose files fine-tuning would "
                         "replace; nothing was written: use a new --out")


#: The files of a run folder that ``auto`` copies from the chosen candidate (with its weights).
RUN_HISTORY_FILES = ("config.json", "metrics.jsonl", "early_stopping.json")


def _copy_run_files(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Copy those of ``names`` that ``src`` has into ``dst``, each atomically."""
    for fname in names:
        if (src / fname).is_file():
            write_atomic(dst / fname, lambda tmp, f=src / fname: shutil.copyfile(f, tmp))


def write_averaged_run(base: str | os.PathLike, out: str | os.PathLike, state: dict[str, torch.Tensor],
                       record: dict[str, Any] | None = None) -> None:
    """A run folder ``out`` (replaced if there) holding ``state`` as its weights beside the config
    and training metrics of the run ``base``: how a weight average is saved so ``spikefm eval``
    scores it like any run. Its ``early_stopping.json`` is ``base``'s with ``record`` laid over it
    (the average's own validation loss, ``weights_average_of``, ``model_path``), so nothing reads
    ``base``'s best loss as the average's. Built in a sibling folder, then swapped in: an
    interrupted write leaves the earlier folder or none, never a folder without weights."""
    base, out = Path(base), Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _copy_run_files(base, tmp, [n for n in RUN_HISTORY_FILES if n != "early_stopping.json"])
        es_path = base / "early_stopping.json"
        es = json.loads(es_path.read_text()) if es_path.is_file() else {}
        write_json_atomic(tmp / "early_stopping.json", {**es, **(record or {}), "history_of": base.name,
                                                        "model_path": str(out / "model.safetensors")})
        _save_safetensors_atomic(state, tmp / "model.safetensors")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _soup_candidate(family, cand_dir: Path, results: dict) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The greedy soup of ``auto``'s pretrained candidates (:func:`greedy_soup`, their kept
    weights, validated like them): written as the run folder ``cand_dir/soup`` (the lowest
    candidate's config and history, the averaged weights) when it averages two or more of them.

    Returns:
        (its candidate summary, or None when no average validated lower than the lowest
        candidate; {"ingredients", "val_loss", "tried"} either way).
    """
    from safetensors.torch import load_file

    from spikefm.train.runinfo import load_run_config

    names = PRETRAINED_CANDIDATES
    losses = {n: results[n]["best_val_loss"] for n in names}
    base = min(names, key=lambda n: losses[n])
    cfg = load_run_config(cand_dir / base, model_cls=family.model_config_cls, data_cls=family.data_config_cls)
    states = {n: load_file(str(cand_dir / n / "model.safetensors")) for n in names}
    soup = greedy_soup(states, losses, lambda state: _validation_loss(family, cfg, state))
    info = {k: soup[k] for k in ("ingredients", "val_loss", "tried")}
    path = cand_dir / "soup"
    if len(soup["ingredients"]) < 2:
        if path.exists():
            shutil.rmtree(path)
        return None, info
    write_averaged_run(cand_dir / base, path, soup["state"],
                       {"best_val_loss": soup["val_loss"], "weights_average_of": soup["ingredients"]})
    write_json_atomic(path / "soup.json", {**info, "config_and_history_of": base})
    summary = {"best_val_loss": soup["val_loss"], "best_step": results[base]["best_step"],
               "stopped_at": results[base]["stopped_at"], "out_dir": str(path), "ingredients": soup["ingredients"],
               "eval_every": results[base].get("eval_every"),
               # the history (and early_stopping.json) the soup's folder carries is its lowest candidate's
               **{k: results[base][k] for k in ("still_improving", "best_at_first_evaluation") if k in results[base]}}
    return summary, info


def _auto(family, run_dir, corpus, session_id: str, out_dir: Path, args: dict, select: str = "lowest",
          soup: bool = False) -> dict[str, Any]:
    cand_dir = out_dir / "candidates"
    results = {}
    for name in ("frozen", "full", "unfreeze", "scratch"):
        # a candidate of an interrupted run of this command continues, a finished one is kept
        results[name] = _one_strategy(family, name, str(run_dir), str(corpus), session_id, cand_dir / name, **args)
    names = list(PRETRAINED_CANDIDATES)
    soup_info = None
    if soup:
        results_soup, soup_info = _soup_candidate(family, cand_dir, results)
        if results_soup is not None:
            results["soup"] = results_soup
            names.append("soup")
    lowest = min(names, key=lambda n: results[n]["best_val_loss"])
    chosen, selection = lowest, {"rule": select, "lowest": lowest}
    if select == "one-se":
        chosen, info = one_se_choice({n: window_losses(family, cand_dir / n) for n in names}, order=names)
        selection.update({k: v for k, v in info.items() if k != "lowest"}, lowest_per_window=info["lowest"])
    _copy_run_files(cand_dir / chosen, out_dir, ("model.safetensors", *RUN_HISTORY_FILES))
    summary = dict(results[chosen])
    summary.update(strategy=chosen, out_dir=str(out_dir), model_path=str(out_dir / "model.safetensors"),
                   candidates={n: {k: results[n][k] for k in ("best_val_loss", "best_step", "stopped_at", "out_dir",
                                                             "stage1") if k in results[n]}
                               for n in ("frozen", "full", "unfreeze", "soup") if n in results},
                   selection=selection,
                   single_session={k: results["scratch"][k] for k in ("best_val_loss", "best_step", "out_dir")},
                   pretraining_gain=results["scratch"]["best_val_loss"] - results[chosen]["best_val_loss"])
    if soup_info is not None:
        summary["soup"] = soup_info
    write_json_atomic(out_dir / "finetune.json", summary)
    _say_about_the_kept_run(out_dir, chosen, summary)
    if summary["pretraining_gain"] <= 0:
        warnings.warn(f"{out_dir}: pretraining did not help this session: the single-session model's validation "
                      f"loss ({results['scratch']['best_val_loss']:.4f}) is at or below the chosen pretrained "
                      f"candidate's ({chosen}, {results[chosen]['best_val_loss']:.4f}); the single-session model "
                      f"is in {cand_dir / 'scratch'}; pretraining on more sessions may help (README: "
                      "spikefm experiment transfer)", RuntimeWarning, stacklevel=2)
    return summary
