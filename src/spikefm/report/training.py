"""The training section of a run folder (any family): ``config.json`` + ``metrics.jsonl``, and the
fine-tuning records (``early_stopping.json``, ``finetune.json``) when present.

Cells point into the metrics rows with source name ``metrics:<run folder name>`` and pointers
``/<row index>/<key>`` (rows numbered from 0 in file order, blank lines skipped).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spikefm.report import charts
from spikefm.report.page import Num, Page, pointer
from spikefm.report.provenance import Provenance

#: What metrics.jsonl rows hold (spikefm.train.loop), in the order they are drawn.
TRAIN_CURVES = (("loss", "training loss", False), ("lr", "learning rate", False),
                ("grad_norm", "gradient norm (before clipping)", True),
                ("tokens_per_s", "tokens / s", False), ("mfu", "model FLOP utilisation", False))


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or a one-line ValueError naming it and what was expected."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {what}") from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a killed run, is left out)."""
    rows = []
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; expected one JSON object per line "
                             "(the metrics.jsonl that spikefm train writes)") from None
        if isinstance(row, dict):
            step = row.get("step")
            if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
                raise ValueError(f"{path}: line {i + 1} has step {step!r}; expected an integer step "
                                 "(the metrics.jsonl that spikefm train writes)")
            rows.append(row)
    return rows


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_finetuning(run_dir: str | Path) -> bool:
    """True for a folder that ``spikefm finetune`` wrote (its ``finetune.json`` or
    ``early_stopping.json``)."""
    return any((Path(run_dir) / n).is_file() for n in ("finetune.json", "early_stopping.json"))


def _finetuning_intro(sec, run_dir: Path, info: dict) -> None:
    """What a fine-tuning folder is: the run it started from, the session, the strategy kept, and
    that the curves are that candidate's (``auto`` copies the chosen run's files into OUT)."""
    fam = info.get("family_info") or {}
    sessions = list(fam.get("sessions") or {})
    ft_path = run_dir / "finetune.json"
    ft = read_json(ft_path, "the finetune.json that spikefm finetune writes") if ft_path.is_file() else {}
    strategy = ft.get("strategy") if isinstance(ft, dict) else None
    text = ("A fine-tuning" + (f" of the pretrained run {fam['init_from']}" if fam.get("init_from") else "")
            + (f" to session {', '.join(map(str, sessions))}" if sessions else "") + ".")
    if strategy:
        cands = list(ft.get("candidates") or {})
        rule = (ft.get("selection") or {}).get("rule")
        of = f" of the candidates {', '.join(cands)}" if len(cands) > 1 else ""
        by = f" (selection rule: {rule})" if rule else ""
        text += f" Strategy chosen: {strategy}{of}{by}."
        if cands:
            text += (f" The curves and the early stopping below are the chosen candidate's ({strategy}: its files, "
                     f"copied from candidates/{strategy}); every candidate's best validation loss is in the last table.")
    sec.note(text)


def training_section(page: Page, run_dir: str | Path, prov: Provenance, *, title: str | None = None) -> dict:
    """Add a section for the run in ``run_dir``; returns ``{"info", "rows"}`` (config.json's dict
    and the metrics rows)."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "config.json", "the config.json that spikefm train writes")
    if not isinstance(info, dict):
        raise ValueError(f"{run_dir / 'config.json'}: expected a JSON object, found {type(info).__name__}")
    rows = read_metrics(run_dir / "metrics.jsonl")
    cfg = info.get("config") or {}
    family = info.get("family") or cfg.get("family") or "?"
    src = f"metrics:{run_dir.name}"
    finetuning = is_finetuning(run_dir)
    sec = page.section("training", title or f"{'Fine-tuning' if finetuning else 'Training'}: {run_dir.name} ({family})")
    if finetuning:
        _finetuning_intro(sec, run_dir, info)
    train_rows = [(i, r) for i, r in enumerate(rows) if "loss" in r]
    eval_rows = [(i, r) for i, r in enumerate(rows) if any(k.startswith("eval/") for k in r)]
    steps_total = (cfg.get("train") or {}).get("steps")
    last_i, last = train_rows[-1] if train_rows else (None, {})
    speeds = [r["tokens_per_s"] for _, r in train_rows if _finite(r.get("tokens_per_s"))]

    def cell(key: str, spec: str = ".4f") -> Num | None:
        if last_i is None or not _finite(last.get(key)):
            return None
        return Num(last[key], spec, src=src, path=pointer(last_i, key))

    model = cfg.get("model") or {}
    sec.kv([
        ("run folder", str(run_dir)),
        ("family", family),
        ("model", ", ".join(f"{k} {v}" for k, v in model.items() if isinstance(v, (int, str)))[:300] or None),
        ("steps done / configured", f"{last.get('step', 0):,} / {steps_total:,}" if steps_total else None),
        ("last step", cell("step", ",d")),
        ("last training loss", cell("loss")),
        ("tokens trained", cell("tokens", ",d")),
        ("elapsed (s)", cell("elapsed_s", ",.1f")),
        ("mean tokens / s", Num(sum(speeds) / len(speeds), ",.0f") if speeds else None),
        ("batch size (global)", (cfg.get("train") or {}).get("batch_size")),
        ("learning rate (peak)", Num((cfg.get("optim") or {}).get("lr"), ".4g")),
        ("precision", (cfg.get("train") or {}).get("precision")),
    ], key="training-summary")
    if not train_rows:
        sec.note("metrics.jsonl holds no training rows yet (no step was logged).", warn=True)
    link = f"train-{run_dir.name}"
    for key, label, log_y in TRAIN_CURVES:
        pts = [(r["step"], r[key]) for _, r in train_rows if _finite(r.get(key)) and _finite(r.get("step"))]
        if key == "mfu" and not pts and train_rows:  # no rows at all: nothing was measured yet
            sec.note("MFU: not measured (null in metrics.jsonl: the peak FLOP/s of this run's device was "
                     "unknown; set SPIKEFM_PEAK_FLOPS to the FLOP/s of one device, e.g. 989e12, before "
                     "training to measure it).")
            continue
        if not pts:
            continue
        lines = [charts.series(label, [p[0] for p in pts], [p[1] for p in pts])]
        if key == "loss":
            for name in sorted({k for _, r in eval_rows for k in r if k.startswith("eval/")}):
                ev = [(r["step"], r[name]) for _, r in eval_rows if _finite(r.get(name))]
                if ev:
                    lines.append(charts.series(name, [p[0] for p in ev], [p[1] for p in ev], style="points"))
        sec.figure(charts.xy(lines, x_label="step", y_label=label, log_y=log_y and all(p[1] > 0 for p in pts),
                             link=link), f"{label.capitalize()} per logged step.")
    sec.end_figures()
    _finetuning(sec, run_dir)
    prov.add_run_info(f"run {run_dir}", info)
    return {"info": info, "rows": rows}


def _finetune_notes(sec, ft: dict, soup: dict) -> None:
    """What ``spikefm finetune`` prints under its candidates table: the weight average tried, the
    one-standard-error choice, and the gain over the single-session model (warned when none)."""
    if soup.get("ingredients"):
        ingredients = [str(i) for i in soup["ingredients"]]
        val = soup.get("val_loss")
        sec.note(f"Soup (greedy weight average of the candidates): {' + '.join(ingredients)}"
                 + (f", validation loss {val:.4f}" if _finite(val) else "")
                 + ("" if len(ingredients) > 1 else " (no average validated lower; not a candidate)") + ".")
    sel = ft.get("selection") if isinstance(ft.get("selection"), dict) else {}
    if sel.get("rule") == "one-se":
        sec.note(f"Chosen by the one-standard-error rule: the most constrained candidate whose mean validation loss "
                 f"over {sel.get('num_windows', '?')} windows is within one standard error of the lowest "
                 f"({sel.get('lowest_per_window', sel.get('lowest', '?'))}).")
    gain = ft.get("pretraining_gain")
    if _finite(gain):
        def loss(v: Any) -> str:
            return f"{v:.4f}" if _finite(v) else "?"

        single = (ft.get("single_session") or {}).get("best_val_loss")
        if gain > 0:
            sec.note(f"Pretraining gain over the single-session model: {gain:+.4f} validation loss.")
        else:
            sec.note(f"Pretraining did not help this session: gain {gain:+.4f} validation loss (the single-session "
                     f"model's {loss(single)} is at or below the chosen {ft.get('strategy')}'s "
                     f"{loss(ft.get('best_val_loss'))}).", warn=True)


def _finetuning(sec, run_dir: Path) -> None:
    """Early stopping (``early_stopping.json``) and strategy candidates (``finetune.json``)."""
    es_path = run_dir / "early_stopping.json"
    if es_path.is_file():
        es = read_json(es_path, "the early_stopping.json that spikefm finetune writes")
        hist = [h for h in es.get("history", []) if _finite(h.get("val_loss"))]
        sec.heading("Fine-tuning: validation loss and early stopping")
        from spikefm.train.finetune import best_at_first_text, unfrozen_steps_text

        if es.get("best_at_first_evaluation"):  # spikefm finetune warns of it too, in the same words
            sec.note(f"The lowest validation loss came at the first evaluation {best_at_first_text(es)}; a smaller "
                     f"--eval-every (now {es.get('eval_every', '?')}) evaluates earlier steps.", warn=True)
        src = f"early_stopping:{run_dir.name}"
        # a weight average (the soup) trained no steps: its loss is its own, the history its base's
        avg = es.get("weights_average_of")
        unfrozen = unfrozen_steps_text(es).strip()  # unfreeze: its steps are its second stage's
        of = f" (of {es.get('history_of')})" if avg else f" ({unfrozen})" if unfrozen else ""
        sec.kv([("best validation loss", Num(es.get("best_val_loss"), src=src, path="/best_val_loss")),
                *([("weights", "average of " + " + ".join(map(str, avg)))] if avg else []),
                ("best step" + of, es.get("best_step")), ("stopped at step" + of, es.get("stopped_at")),
                ("maximum steps", es.get("max_steps")), ("patience", es.get("patience"))],
               key="early-stopping")
        if hist:
            sec.figure(charts.xy([charts.series("validation loss", [h["step"] for h in hist],
                                                [h["val_loss"] for h in hist])],
                                 x_label="step", y_label="validation loss",
                                 vlines=[{"x": es.get("best_step"), "name": "best"}]
                                 if _finite(es.get("best_step")) else []),
                       f"Validation loss at each evaluation of {es.get('history_of')}; the kept weights average "
                       "it with the other ingredients." if avg else
                       "Validation loss at each evaluation; the kept checkpoint is the best.")
            sec.end_figures()
    ft_path = run_dir / "finetune.json"
    if ft_path.is_file():
        ft = read_json(ft_path, "the finetune.json that spikefm finetune writes")
        from spikefm.train.finetune import unfreeze_best_step

        cands = dict(ft.get("candidates") or {})
        if ft.get("single_session"):
            cands["single-session"] = ft["single_session"]
        if cands:
            src = f"finetune:{run_dir.name}"
            sec.heading("Fine-tuning strategies (validation windows)")
            soup = ft.get("soup") if isinstance(ft.get("soup"), dict) else {}
            rows = []
            for name, c in cands.items():
                where = ("single_session",) if name == "single-session" else ("candidates", name)
                # the soup trained no steps of its own: it is the weight average of its ingredients
                step = ("average of " + " + ".join(map(str, soup.get("ingredients") or [])) if name == "soup"
                        else unfreeze_best_step(c) if c.get("best_step") is not None else None)
                rows.append([name, Num(c.get("best_val_loss"), src=src, path=pointer(*where, "best_val_loss")),
                             step, "chosen" if name == ft.get("strategy") else
                             "baseline" if name == "single-session" else ""])
            sec.table(["strategy", "best val loss", "best step", ""], rows, key="finetune-candidates")
            _finetune_notes(sec, ft, soup)
