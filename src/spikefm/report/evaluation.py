"""Evaluation sections: the tables ``spikefm eval`` prints, as HTML with figures.

Accepted JSON shapes (all that spikefm writes):

- ``spikefm eval --out`` of an autoregressive run: ``{"family": "ar", "run_dir", "split",
  "results": {"model": xent, "<n>-gram": xent, "oracle": xent}}`` (xent = a cross-entropy
  summary with ``overall`` and ``per_source``), and the quickstart's ``results_ar.json``,
  ``{name: xent}``;
- ``spikefm eval --out`` of a masked run: ``{"family": "ndt", "run_dir", "corpus",
  "session_id", "results": benchmark}`` (benchmark = ``run_benchmark``'s ``{"tasks", "skipped",
  ...}``), a bare benchmark, and the quickstart's ``results_ndt.json``, ``{name: benchmark}``;
- ``spikefm eval --out`` of a NEDS run: ``{"family": "neds", "run_dir", "corpus", "session_id",
  "results": {"encoding": {model: scores}, "decoding": {model: {target: scores}}, "region":
  {features: scores}, "comparisons": ...}}`` (:func:`spikefm.families.neds.evaluate.evaluate_run`),
  and a NEDS transfer study's ``results_neds.json``, ``{name: results}``.

Saved predictions (``spikefm eval --save-predictions DIR``: ``DIR/<task>.npz`` with ``rates`` and
``counts``, K x T x N, NaN where not scored) add per-neuron bits-per-spike histograms, true rasters
beside predicted rates and PSTHs per condition (conditions are the test windows' trial labels,
cut again from the corpus with the run's saved window split). ``DIR/behavior-decoding.npz`` with
``true`` and ``predicted`` (K x T x C) and ``channels`` adds decoded-vs-true behaviour traces.
A ``generated.npz`` (``spikefm generate``: ``counts`` and, when prompted, ``prompt`` and
``real``) adds generated-vs-real rasters.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from spikefm.report import charts
from spikefm.report.page import Num, Page, Section, pointer

AR_KINDS = ("all", "counts", "separators")
BPS_METRICS = ("bps_pooled", "bps_per_neuron_mean")
BASELINES = ("smoothing", "oracle")
NEDS_TASKS = ("encoding", "decoding", "region")
#: Units drawn as single-unit PSTHs (the most active ones), and test bins drawn in rasters.
PSTH_UNITS = 4
RASTER_MAX_BINS = 2000
#: Why a results table shows nan, by the row name or column header of the cell (Section.table).
ORACLE_NAN = ("/ oracle", "a fraction of the oracle is nan when the oracle's bits per spike is not positive (a "
              "fraction of a zero or negative ceiling has no meaning)")
CI_NAN = ("95 % ", "a 95 % interval is nan with fewer than 3 scored windows (the jackknife needs 3) or when a "
          "leave-one-out subset has no spike")
BPS_NAN = ("", "bits per spike are nan where no spike was scored")
BPS_INF = ("", "bits per spike are -inf where a model predicted a rate of 0 in a bin where the unit spiked "
               "(a Poisson likelihood of 0)")
_PAIRED = ("is a model's paired difference from the smoothing baseline on the same windows: none in a baseline's "
           "column, nor for a model scored without the baselines (a study scores them once, beside its first model)")
#: Why an NDT task table shows - (a value not computed), by row name (Section.table's blank_why).
PREDICTION_BLANK = (("/ oracle", "a fraction of the oracle is a model's own: none in a baseline's column"),
                    ("minus smoothing", f"bps_pooled minus smoothing {_PAIRED}"),
                    ("95 % ", f"the 95 % interval of bps_pooled minus smoothing {_PAIRED}"),
                    ("train-fitted null", "the train-fitted null scores a model's predictions: none in a baseline's "
                                          "column"),
                    ("entries scored", "entries scored counts a model's scored entries: the baselines score the same "
                                       "ones"),
                    ("", "a model's column is - where its results hold no score of this task"))
CHUNK_BLANK = (("95 % ", "a model's 95 % interval is - for a chunk its results hold none of"),
               ("train-fitted null", "the train-fitted null is - for a chunk the model's results hold none of"),
               ("oracle", "the oracle is - for a chunk the results hold no ground truth of"),
               ("", "a model's column is - where its results hold fewer chunks"))
DECODING_BLANK = (("ideal observer", "the ideal observer reads the spikes given the true latents: a bound, shown in "
                                     "the oracle's column only"),
                  ("(hidden)", "the oracle decodes from the true rates, so it has no hidden-state rows; a model's "
                               "hidden-state cell is - where its results hold no such decoder"),
                  ("(rates)", "a model's rates cell is - where its results hold no decoder of its predicted rates"),
                  ("", "chance, windows scored and method are the models' decoders' (the oracle's decodes the same "
                       "windows)"))


def neds_nan_why(split: str) -> dict[str, list[tuple[str, str]]]:
    """Why each NEDS table may show nan (``spikefm eval`` writes NaN where a score is undefined),
    by table: ``encoding``, ``label``, ``r2_single_trial``, ``r2_psth``, ``region``, ``comparisons``."""
    return {
        "encoding": [("bps", f"bits per spike are nan where no spike was scored in the {split} windows"),
                     ("r2", "R² is nan when no unit reaches the R² rate threshold on the train windows (units in "
                            "R² 0) or every such unit's target is constant over the scored windows (smoothed "
                            f"counts for single-trial R², per-condition means for PSTH R²: R² of a constant target "
                            "is undefined; scikit-learn would give 0 or 1)")],
        "label": [("balanced accuracy", f"balanced accuracy is nan when the {split} windows hold one class of the "
                                        "label (scikit-learn would return that class's recall)"),
                  ("95 % ", "a Wilson interval is nan with no scored trial")],
        "r2_single_trial": [("", "single-trial R² is nan when the channel is constant over the scored "
                                 f"{split} bins (R² of a constant target is undefined; scikit-learn would give 0 or 1)")],
        "r2_psth": [("", "PSTH R² is nan when the channel's per-condition mean trace is constant (R² of a "
                         "constant target is undefined; scikit-learn would give 0 or 1), and for windows cut from "
                         "continuous recording (no trials to average)")],
        "region": [("", "a region score is nan when no unit was classified")],
        "comparisons": [CI_NAN, ("difference", "a difference is nan when either of its two scores is nan (see the "
                                               "tables above)")],
    }


@dataclass
class Evaluation:
    """Results of one JSON file, normalized: ``models`` maps a column name to its result and
    ``where`` to the keys of that result inside the file (for JSON pointers)."""

    family: str
    models: dict[str, dict]
    where: dict[str, tuple]
    meta: dict = field(default_factory=dict)
    src: str = "results"

    def ptr(self, model: str, *keys: Any) -> str:
        return pointer(*self.where[model], *keys)


def _is_xent(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("overall"), dict)


def _is_bench(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("tasks"), dict)


def _is_neds(v: Any) -> bool:
    return isinstance(v, dict) and not _is_bench(v) and any(isinstance(v.get(t), dict) for t in NEDS_TASKS)


def parse_evaluation(obj: Any, *, src: str = "results") -> Evaluation | None:
    """The :class:`Evaluation` in a results JSON, or None when ``obj`` holds none."""
    if not isinstance(obj, dict) or not obj:
        return None
    meta = {k: v for k, v in obj.items() if k != "results"}
    results = obj.get("results")
    if isinstance(results, dict) and results:
        run_name = Path(str(obj.get("run_dir") or "model")).name or "model"
        # a run folder named like a baseline ("oracle", "smoothing", "1-gram") keeps its own column
        taken = set(BASELINES) | {k for k in results if k != "model"}
        if run_name in taken:
            run_name = f"{run_name} (model)"
        if _is_neds(results):  # by its shape: a plugin built on NEDS names itself in "family"
            return Evaluation("neds", {run_name: results}, {run_name: ("results",)}, meta, src)
        if all(_is_xent(v) for v in results.values()):
            names = {k: (run_name if k == "model" else k) for k in results}
            return Evaluation("ar", {names[k]: v for k, v in results.items()},
                              {names[k]: ("results", k) for k in results}, meta, src)
        if _is_bench(results):
            return Evaluation("ndt", {run_name: results}, {run_name: ("results",)}, meta, src)
        family = obj.get("family")
        if isinstance(family, str) and family and family not in BUILT_IN_FAMILIES:
            # a plugin family's own results (spikefm eval --out): shown as the numbers they hold
            return Evaluation(family, {run_name: results}, {run_name: ("results",)}, meta, src)
    if _is_bench(obj):
        return Evaluation("ndt", {"model": obj}, {"model": ()}, {}, src)
    if all(_is_xent(v) for v in obj.values()):
        return Evaluation("ar", dict(obj), {k: (k,) for k in obj}, {}, src)
    if all(_is_bench(v) for v in obj.values()):
        return Evaluation("ndt", dict(obj), {k: (k,) for k in obj}, {}, src)
    if all(_is_neds(v) for v in obj.values()):  # a NEDS transfer study's results_neds.json
        return Evaluation("neds", dict(obj), {k: (k,) for k in obj}, {}, src)
    return None


def evaluation_section(page: Page, ev: Evaluation, *, title: str = "Evaluation") -> Section:
    """Add the section of one :class:`Evaluation`: its tables and figures (add saved predictions
    with :func:`predictions_panel`, generated rasters with :func:`generation_panel`)."""
    sec = page.section(f"evaluation-{ev.family}", title)
    where = ", ".join(f"{k} {ev.meta[k]}" for k in ("run_dir", "corpus", "session_id", "split")
                      if ev.meta.get(k))
    if where:
        sec.note(where)
    if ev.family == "ar":
        _ar_tables(sec, ev)
    elif ev.family == "neds":
        _neds_tables(sec, ev)
    elif ev.family == "ndt":
        _ndt_tables(sec, ev)
    else:
        _numbers_table(sec, ev)
    return sec


#: The families whose results the report draws with tables and figures of their own; another
#: family's results are shown as the numbers they hold (:func:`_numbers_table`).
BUILT_IN_FAMILIES = ("ar", "ndt", "neds")
#: The most numbers one results table of another family shows (its caption says how many more the JSON holds).
NUMBERS_SHOWN = 500


def _numbers(obj: Any, keys: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(keys, value) of every number (None: not computed) in nested dicts and lists, in order."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, (*keys, k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, (*keys, i))
    elif obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)):
        yield keys, obj


def _numbers_table(sec: Section, ev: Evaluation) -> None:
    """The results of a family the report has no tables for (a plugin's): every number they hold,
    named by its keys, each cell pointing at its place in the JSON."""
    for name, res in ev.models.items():
        found = list(_numbers(res))
        if not found:
            sec.note(f"{name}: the results hold no numbers")
            continue
        rows = [[" / ".join(str(k) for k in keys) or "(the results)",
                 Num(v, src=ev.src, path=ev.ptr(name, *keys))] for keys, v in found[:NUMBERS_SHOWN]]
        caption = (f"every number in the {ev.family!r} family's results (the report has no tables of its own "
                   "for this family; names are the JSON keys)")
        if len(found) > NUMBERS_SHOWN:
            caption += f"; the first {NUMBERS_SHOWN:,} of {len(found):,}, the rest are in the JSON"
        sec.table(["result", name], rows, caption=caption, key=f"numbers-{name}",
                  nan_why=(("", "nan is a value the family computed as undefined (NaN in the JSON); its "
                                "documentation says when"),),
                  inf_why=(("", "inf is a value the family computed as unbounded (Infinity in the JSON); its "
                                "documentation says when"),),
                  blank_why=(("", "- is a value the family left empty (null)"),))


# --- autoregressive: cross-entropy -------------------------------------------------------------


#: Why an AR table shows - (a null: no token of that kind was scored), by row name (Section.table's blank_why).
_AR_BLANK = (("separators", "separators is - where no separator was scored: a row's first token (its first bin's "
                            "separator) is never scored, so rows cut to one bin (a small --max-tokens) score none"),
             ("counts", "counts is - where no count token was scored"),
             ("all", "all is - where no token was scored"))


def _ar_tables(sec: Section, ev: Evaluation) -> None:
    names = list(ev.models)
    split = ev.meta.get("split", "test")
    for unit, title in (("bits", f"cross-entropy on the {split} split (bits/token)"),
                        ("nats", "cross-entropy (nats/token)")):
        rows = [[kind] + [Num(ev.models[n]["overall"].get(kind, {}).get(unit), src=ev.src,
                              path=ev.ptr(n, "overall", kind, unit)) for n in names] for kind in AR_KINDS]
        sec.table(["", *names], rows, caption=title, key=f"xent-{unit}", blank_why=_AR_BLANK)
    counts = {ev.models[n]["overall"].get("all", {}).get("num_tokens") for n in names}
    sec.table(["", *names], [[kind] + [Num(ev.models[n]["overall"].get(kind, {}).get("num_tokens"), src=ev.src,
                                           path=ev.ptr(n, "overall", kind, "num_tokens")) for n in names]
                             for kind in AR_KINDS],
              caption="tokens scored (the same for every model)" if len(counts) == 1 else
              "tokens scored (the same tokens for every model; a units-permuted column scores them once per "
              "permutation)", key="xent-tokens")
    sources = sorted({s for r in ev.models.values() for s in r.get("per_source", {})})
    if len(sources) > 1:
        for source in sources:
            rows = [[kind] + [Num(ev.models[n].get("per_source", {}).get(source, {}).get(kind, {}).get("bits"),
                                  src=ev.src, path=ev.ptr(n, "per_source", source, kind, "bits")) for n in names]
                    for kind in AR_KINDS]
            sec.table(["", *names], rows, caption=f"bits/token, source {source}", key=f"xent-source-{source}",
                      blank_why=_AR_BLANK)
    sec.figure(charts.bars(list(AR_KINDS), [charts.bar_series(n, [ev.models[n]["overall"].get(k, {}).get("bits")
                                                                   for k in AR_KINDS]) for n in names],
                           y_label="bits / token", x_label="tokens"),
               "Cross-entropy of the model and the baselines on the same tokens (lower is better; "
               "the oracle scores the true rates).")
    sec.end_figures()


def _scored(ev: Evaluation) -> str:
    """The windows an evaluation scored: ``test`` (the headline) or ``val`` (choosing settings)."""
    return str(ev.meta.get("split") or "test")


# --- NEDS: encoding, decoding and region identity -----------------------------------------------


def _neds_tables(sec: Section, ev: Evaluation) -> None:
    """Every table ``spikefm eval`` prints for a NEDS run, one per task, with its figures; a file
    of several runs (a transfer study's ``results_neds.json``: fine-tuned and single-session) gets
    them for each run, under its name."""
    several = len(ev.models) > 1
    for run, res in ev.models.items():
        if several:
            sec.heading(run)
        # a results file of several runs keeps each run's setup beside its results
        meta = ev.meta or {k: v for k, v in res.items() if k not in (*NEDS_TASKS, "comparisons", "skipped")}
        _neds_run(sec, ev, run, res, meta, f"-{run}" if several else "")


def _neds_run(sec: Section, ev: Evaluation, run: str, res: dict, meta: dict, suffix: str) -> None:
    split = meta.get("split", "test")
    windows = meta.get("num_windows") or {}
    sec.kv([("session", meta.get("session_id")), ("scored windows", f"{split} ({windows.get(split)} windows)"
                                                   if windows.get(split) is not None else split),
            ("windows (train / val / test)", " / ".join(str(windows.get(k, "?")) for k in ("train", "val", "test"))
             if windows else None),
            ("RRR rank", meta.get("rank")), ("R² units: mean rate at least (Hz)", meta.get("min_rate_hz")),
            ("oracle (ground truth)", meta.get("oracle"))], key="neds-setup" + suffix)
    if len(meta.get("baseline_sessions") or []) == 1 and any("rrr" in (res.get(t) or {}) for t in ("encoding",
                                                                                                   "decoding")):
        sec.note("rrr was fitted on this one session (the corpus holds no other session of the run or of the run it "
                 "was fine-tuned from), so it is a single-session baseline here", warn=True)

    def num(value, *keys, spec=".4f"):
        return Num(value, spec, src=ev.src, path=ev.ptr(run, *keys))

    why = neds_nan_why(split)

    enc = res.get("encoding") or {}
    mods = meta.get("modalities") if isinstance(meta.get("modalities"), dict) else None
    # what the encoders are given: the run's channels and labels (and the time in the window);
    # a run without either predicts spikes from the time in the window alone
    channels = list(mods.get("channels") or []) if mods else []
    labels_given = list(mods.get("labels") or {}) if mods else []
    if mods is None:
        short, given = "behaviour", "behaviour alone"
    elif channels and labels_given:
        short = given = "behaviour channels and trial labels"
    elif channels:
        short = given = "behaviour channels"
    elif labels_given:
        short, given = "trial labels", f"the trial labels ({', '.join(labels_given)}): the run has no behaviour channels"
    else:
        short, given = "time in window only", ("the time in the window alone: the run has no behaviour channels or "
                                               "trial labels")
    if enc:
        sec.heading(f"encoding (spikes given {short})")
        metrics = ("bps_pooled", "bps_per_neuron_mean", "r2_single_trial", "r2_psth")
        sec.table(["model", *metrics, "units in R²"],
                  [[m, *(num(v.get(k), "encoding", m, k) for k in metrics),
                    num(v.get("units_scored_r2"), "encoding", m, "units_scored_r2", spec=",d")] for m, v in enc.items()],
                  caption=f"encoding on the {split} windows (bits per spike; R² of rates against smoothed counts "
                          "and of PSTHs per condition)", key="neds-encoding" + suffix, nan_why=why["encoding"])
        sec.figure(charts.bars(list(enc), [charts.bar_series("bps_pooled", [v.get("bps_pooled") for v in enc.values()])],
                               y_label="bits per spike (pooled)", x_label="model"),
                   f"Encoding: spikes predicted from {given}, by each model (higher is better; the oracle "
                   "scores the true rates).")
        sec.end_figures()
    dec = res.get("decoding") or {}
    targets: list[str] = []
    for v in dec.values():
        targets += [t for t in v if t not in targets]
    labels = [t for t in targets if any("accuracy" in dec[m].get(t, {}) for m in dec)]
    channels = [t for t in targets if t not in labels]
    if labels:
        sec.heading("decoding: trial labels (behaviour hidden, spikes given)")
    for t in labels:
        rows = [[m, num(e.get("accuracy"), "decoding", m, t, "accuracy"),
                 num((e.get("accuracy_ci95") or [None, None])[0], "decoding", m, t, "accuracy_ci95", 0),
                 num((e.get("accuracy_ci95") or [None, None])[1], "decoding", m, t, "accuracy_ci95", 1),
                 num(e.get("balanced_accuracy"), "decoding", m, t, "balanced_accuracy"),
                 num(e.get("chance"), "decoding", m, t, "chance"),
                 num(e.get("chance_balanced"), "decoding", m, t, "chance_balanced"),
                 num(e.get("n"), "decoding", m, t, "n", spec=",d")]
                for m, v in dec.items() if (e := v.get(t))]
        # balanced accuracy is at chance at 1 / classes, not at the majority class's share
        sec.table(["model", "accuracy", "95 % low", "95 % high", "balanced accuracy", "chance", "balanced chance",
                   "trials"], rows,
                  caption=f"{t}: accuracy with its 95 % Wilson interval; chance = the {split} windows' majority class "
                          "(compare accuracy with it), balanced chance = 1 / the classes present (compare balanced "
                          "accuracy with it)", key=f"neds-label-{t}{suffix}", nan_why=why["label"])
        have = [m for m in dec if dec[m].get(t)]
        ci = [dec[m][t].get("accuracy_ci95") or [None, None] for m in have]
        chance = dec[have[0]][t].get("chance")
        sec.figure(charts.bars(have, [charts.bar_series("accuracy", [dec[m][t].get("accuracy") for m in have],
                                                        lo=[c[0] for c in ci], hi=[c[1] for c in ci])],
                               y_label="accuracy", x_label="model",
                               hlines=[{"y": chance, "name": "chance"}] if chance is not None else []),
                   f"{t}: accuracy of each decoder with its 95 % Wilson interval; the dashed line is chance.")
    if labels:
        sec.end_figures()
    if channels:
        sec.heading("decoding: continuous behaviour")
        have = [m for m in dec if any(dec[m].get(c) for c in channels)]
        for kind in ("r2_single_trial", "r2_psth"):
            sec.table(["model", *channels],
                      [[m, *(num((dec[m].get(c) or {}).get(kind), "decoding", m, c, kind) for c in channels)]
                       for m in have], caption=f"{kind.replace('_', ' ')} of each channel", key=f"neds-{kind}{suffix}",
                      nan_why=why[kind])
        sec.figure(charts.bars(channels, [charts.bar_series(m, [(dec[m].get(c) or {}).get("r2_single_trial")
                                                                for c in channels]) for m in have],
                               y_label="R² (single trial)", x_label="channel"),
                   "Continuous behaviour decoded from the spikes: single-trial R² of each channel, per model.",
                   wide=True)
        sec.end_figures()
    comps = res.get("comparisons") or {}
    rows = []
    for task, pairs in comps.items():
        for pair, targets_ in pairs.items():
            for target, metrics in ({"spikes": targets_} if task == "encoding" else targets_).items():
                for metric, v in metrics.items():
                    keys = ("comparisons", task, pair) + (() if task == "encoding" else (target,)) + (metric,)
                    ci = v.get("ci95") or [None, None]
                    rows.append([task, pair, target, metric, num(v.get("value"), *keys, "value"),
                                 num(ci[0], *keys, "ci95", 0), num(ci[1], *keys, "ci95", 1)])
    if rows:
        sec.heading(f"paired differences (NEDS minus each baseline, same {split} windows)")
        sec.table(["task", "pair", "target", "metric", "difference", "95 % low", "95 % high"], rows,
                  caption=f"differences with 95 % intervals over the {split} windows (an interval that excludes 0 is "
                          "a resolved difference)", key="neds-comparisons" + suffix, nan_why=why["comparisons"])
    for task, reason in (res.get("skipped") or {}).items():
        sec.note(f"{task}: skipped ({reason})")
    reg = {k: v for k, v in (res.get("region") or {}).items() if isinstance(v, dict)}
    if reg:
        sec.heading("region classification from per-unit features")
        ok = {k: v for k, v in reg.items() if "error" not in v}
        if ok:
            sec.table(["features", "units", "accuracy", "balanced accuracy", "chance", "balanced chance"],
                      [[k, num(v.get("num_units"), "region", k, "num_units", spec=",d"),
                        num(v.get("accuracy"), "region", k, "accuracy"),
                        num(v.get("balanced_accuracy"), "region", k, "balanced_accuracy"),
                        num(v.get("chance"), "region", k, "chance"),
                        num(v.get("chance_balanced"), "region", k, "chance_balanced")] for k, v in ok.items()],
                      caption="a linear classifier per feature set; folds: "
                              + (", ".join(dict.fromkeys(str(v.get("grouping")) for v in ok.values()
                                                         if v.get("grouping"))) or "not recorded"),
                      key="neds-region" + suffix, nan_why=why["region"])
        for k, v in reg.items():
            if "error" in v:
                sec.note(f"{k}: not scored ({v['error']})")
        left = dict(item for v in ok.values() for item in (v.get("regions_left_out") or {}).items())
        if left:
            sec.note("regions left out (the folds cannot learn them): "
                     + "; ".join(f"{k} ({reason})" for k, reason in left.items()))
        if ok:
            first = next(iter(ok.values()))
            sec.figure(charts.bars(list(ok), [charts.bar_series("balanced accuracy",
                                                                [v.get("balanced_accuracy") for v in ok.values()])],
                                   y_label="balanced accuracy", x_label="features",
                                   hlines=[{"y": first.get("chance_balanced"), "name": "chance"}]
                                   if first.get("chance_balanced") is not None else []),
                       "Region of each unit from each feature set: balanced accuracy; the dashed line is chance.")
            sec.end_figures()
        for k, v in ok.items():
            classes, conf = v.get("classes"), v.get("confusion")
            if classes and conf:
                sec.table(["true \\ predicted", *classes],
                          [[c, *(num(x, "region", k, "confusion", i, j, spec=",d") for j, x in enumerate(row))]
                           for i, (c, row) in enumerate(zip(classes, conf))],
                          caption=f"{k}: confusion matrix (units; rows are the true regions)", key=f"neds-confusion-{k}{suffix}")


# --- masked models: the neural-prediction benchmark --------------------------------------------


def _task_order(ev: Evaluation) -> list[str]:
    order: list[str] = []
    for r in ev.models.values():
        for t in list(r.get("tasks", {})) + list(r.get("skipped", {})):
            if t not in order:
                order.append(t)
    return order


def _baseline(ev: Evaluation, task: str, name: str) -> tuple[str, dict] | None:
    """(model whose entry holds it, the baseline's dict) from the first model that has it."""
    for model, r in ev.models.items():
        e = r.get("tasks", {}).get(task, {})
        if isinstance(e.get(name), dict):
            return model, e[name]
    return None


def _ndt_tables(sec: Section, ev: Evaluation) -> None:
    names = list(ev.models)
    first = next(iter(ev.models.values()))
    sec.kv([("session", first.get("session_id")), ("units", first.get("num_units")),
            (f"{_scored(ev)} windows", first.get("num_test_windows")), ("windows in all", first.get("num_windows")),
            ("bin (ms)", first.get("bin_ms")), ("oracle (ground truth)", ev.meta.get("oracle"))],
           key="benchmark-setup")
    summary_tasks = [t for t in _task_order(ev) if any("model" in r.get("tasks", {}).get(t, {})
                                                        for r in ev.models.values())]
    if summary_tasks:
        cols = names + [b for b in BASELINES if any(_baseline(ev, t, b) for t in summary_tasks)]
        series = []
        for c in cols:
            vals = []
            for t in summary_tasks:
                if c in ev.models:
                    vals.append(ev.models[c].get("tasks", {}).get(t, {}).get("model", {}).get("bps_pooled"))
                else:
                    b = _baseline(ev, t, c)
                    vals.append(b[1].get("bps_pooled") if b else None)
            series.append(charts.bar_series(c, vals))
        sec.figure(charts.bars(summary_tasks, series, y_label="bits per spike (pooled)", x_label="task"),
                   "bps_pooled of every prediction task: the models, the smoothing baseline and the oracle.",
                   wide=True)
        sec.end_figures()
    for task in _task_order(ev):
        entries = {n: ev.models[n].get("tasks", {}).get(task) for n in names}
        present = {n: e for n, e in entries.items() if e}
        sec.heading(task)
        if not present:
            reasons = {ev.models[n].get("skipped", {}).get(task) for n in names} - {None}
            sec.note(f"skipped: {'; '.join(sorted(reasons))}")
            continue
        if any("channels" in e for e in present.values()):
            _behavior_task(sec, ev, task, present)
        elif any("hidden" in e and "chance" in e for e in present.values()):
            _decoding_task(sec, ev, task, present)
        else:
            _prediction_task(sec, ev, task, entries)
        for n in names:
            if task in ev.models[n].get("skipped", {}):
                sec.note(f"{n}: skipped ({ev.models[n]['skipped'][task]})")


def _prediction_task(sec: Section, ev: Evaluation, task: str, entries: dict) -> None:
    names = list(entries)
    bases = [(b, _baseline(ev, task, b)) for b in BASELINES]
    bases = [(b, found) for b, found in bases if found]
    header = ["metric", *names, *(b for b, _ in bases)]
    rows = []
    for metric in BPS_METRICS:
        row: list[Any] = [metric]
        row += [Num(e["model"].get(metric), src=ev.src, path=ev.ptr(n, "tasks", task, "model", metric))
                if e else None for n, e in entries.items()]
        row += [Num(d.get(metric), src=ev.src, path=ev.ptr(owner, "tasks", task, b, metric))
                for b, (owner, d) in bases]
        rows.append(row)
    if any(e and "fraction_of_oracle" in e for e in entries.values()):
        for metric in BPS_METRICS:
            row = [f"{metric} / oracle"]
            row += [Num(e["fraction_of_oracle"].get(metric), src=ev.src,
                        path=ev.ptr(n, "tasks", task, "fraction_of_oracle", metric))
                    if e and "fraction_of_oracle" in e else None for n, e in entries.items()]
            rows.append(row + [None] * len(bases))
    if any(e and "model_minus_smoothing" in e for e in entries.values()):
        # paired on the same test windows; jackknife interval over the windows
        for label, key in (("bps_pooled minus smoothing", "value"), ("  95 % low", 0), ("  95 % high", 1)):
            row = [label]
            for n, e in entries.items():
                d = (e or {}).get("model_minus_smoothing", {}).get("bps_pooled")
                if not d:
                    row.append(None)
                elif key == "value":
                    row.append(Num(d["value"], src=ev.src,
                                   path=ev.ptr(n, "tasks", task, "model_minus_smoothing", "bps_pooled", "value")))
                else:
                    row.append(Num(d["ci95"][key], src=ev.src,
                                   path=ev.ptr(n, "tasks", task, "model_minus_smoothing", "bps_pooled", "ci95", key)))
            rows.append(row + [None] * len(bases))
    if not any(e and len(e.get("chunks", [])) > 1 for e in entries.values()) and any(
            e and len(e.get("chunks", [])) == 1 and "model_vs_train_null" in e["chunks"][0] for e in entries.values()):
        # one chunk (forward-prediction): no chunk table, so its out-of-sample null is a row here
        rows.append(["bps_pooled, train-fitted null"] + [
            Num(e["chunks"][0]["model_vs_train_null"]["bps_pooled"], src=ev.src,
                path=ev.ptr(n, "tasks", task, "chunks", 0, "model_vs_train_null", "bps_pooled"))
            if e and len(e.get("chunks", [])) == 1 and "model_vs_train_null" in e["chunks"][0] else None
            for n, e in entries.items()] + [None] * len(bases))
    rows.append(["entries scored"] + [Num(e.get("num_evaluated"), src=ev.src,
                                          path=ev.ptr(n, "tasks", task, "num_evaluated")) if e else None
                                      for n, e in entries.items()] + [None] * len(bases))
    sec.table(header, rows, caption=f"{task}: bits per spike on the {_scored(ev)} windows", key=f"task-{task}",
              nan_why=[ORACLE_NAN, CI_NAN, BPS_NAN], inf_why=[BPS_INF], blank_why=PREDICTION_BLANK)
    first = next((e for e in entries.values() if e and len(e.get("chunks", [])) > 1), None)
    bin_ms = next(iter(ev.models.values())).get("bin_ms") or 20
    if first:
        chunk_rows, lines = [], []
        # the same predictions against each neuron's mean count in those bins of the train and
        # val windows (an out-of-sample null; the headline columns use the NLB in-sample null)
        null_fitted = {n: e for n, e in entries.items()
                       if e and any("model_vs_train_null" in c for c in e.get("chunks", []))}
        # each chunk's 95 % interval over the scored trials, or windows when they were cut from
        # continuous recording (jackknife, NLB null re-fitted without each one)
        unit = "trials" if any(m.get("align") for m in ev.models.values()) else "windows"
        with_ci = {n: e for n, e in entries.items()
                   if e and any(c.get("model_ci95", {}).get("bps_pooled") for c in e.get("chunks", []))}
        for i, ch in enumerate(first["chunks"]):
            row = [f"bins {ch['start_bin']}-{ch['end_bin'] - 1}"]
            row += [Num(e["chunks"][i]["model"]["bps_pooled"], src=ev.src,
                        path=ev.ptr(n, "tasks", task, "chunks", i, "model", "bps_pooled"))
                    if e and len(e.get("chunks", [])) > i else None for n, e in entries.items()]
            for n, e in with_ci.items():
                ci = e["chunks"][i].get("model_ci95", {}).get("bps_pooled") if len(e["chunks"]) > i else None
                row += [Num(ci[j], src=ev.src, path=ev.ptr(n, "tasks", task, "chunks", i, "model_ci95",
                                                           "bps_pooled", j)) if ci else None for j in (0, 1)]
            row += [Num(e["chunks"][i]["model_vs_train_null"]["bps_pooled"], src=ev.src,
                        path=ev.ptr(n, "tasks", task, "chunks", i, "model_vs_train_null", "bps_pooled"))
                    if len(e.get("chunks", [])) > i and "model_vs_train_null" in e["chunks"][i] else None
                    for n, e in null_fitted.items()]
            owner = next(n for n, e in entries.items() if e is first)
            row.append(Num(ch["oracle"]["bps_pooled"], src=ev.src,
                           path=ev.ptr(owner, "tasks", task, "chunks", i, "oracle", "bps_pooled"))
                       if "oracle" in ch else None)
            chunk_rows.append(row)
        for n, e in entries.items():
            if e and e.get("chunks"):
                lines.append(charts.series(n, [c["start_bin"] * bin_ms / 1000 for c in e["chunks"]],
                                           [c["model"]["bps_pooled"] for c in e["chunks"]]))
        if "oracle" in first["chunks"][0]:
            lines.append(charts.series("oracle", [c["start_bin"] * bin_ms / 1000 for c in first["chunks"]],
                                       [c["oracle"]["bps_pooled"] for c in first["chunks"]], style="dash"))
        ci_cols = [f"{n} 95 % {side}" for n in with_ci for side in ("low", "high")]
        sec.table(["chunk", *names, *ci_cols, *(f"{n} (train-fitted null)" for n in null_fitted), "oracle"],
                  chunk_rows,
                  caption=f"{task}: bps_pooled per chunk (NLB null: each neuron's mean count over the scored "
                          f"entries; 95 % low / high: jackknife interval over the {_scored(ev)} {unit}, the NLB null "
                          f"re-fitted without each {unit[:-1]}; train-fitted null: its mean count in the same bins of "
                          + ("the train and val windows)" if _scored(ev) == "test" else
                             "the train windows; the test windows are left out)"),
                  key=f"chunks-{task}", nan_why=[CI_NAN, BPS_NAN], inf_why=[BPS_INF], blank_why=CHUNK_BLANK)
        sec.figure(charts.xy(lines, x_label="chunk start (s into the window)", y_label="bps_pooled"),
                   f"{task}: bits per spike of each predicted chunk, given all earlier true activity.")
    series = [charts.bar_series(n, [e["model"].get(m) for m in BPS_METRICS])
              for n, e in entries.items() if e]
    series += [charts.bar_series(b, [d.get(m) for m in BPS_METRICS]) for b, (_, d) in bases]
    sec.figure(charts.bars(list(BPS_METRICS), series, y_label="bits per spike", x_label="metric"),
               f"{task}: both bits-per-spike conventions, models beside the baselines.")
    sec.end_figures()


def _decoding_task(sec: Section, ev: Evaluation, task: str, present: dict) -> None:
    names = list(present)
    oracle_owner = next((n for n, e in present.items() if isinstance(e.get("oracle"), dict)), None)
    header = ["metric", *names] + (["oracle"] if oracle_owner else [])
    rows = []
    for feat in ("hidden", "rates"):
        for metric in ("accuracy", "balanced_accuracy"):
            row: list[Any] = [f"{metric} ({feat})"]
            row += [Num(e[feat].get(metric), src=ev.src, path=ev.ptr(n, "tasks", task, feat, metric))
                    if isinstance(e.get(feat), dict) else None for n, e in present.items()]
            if oracle_owner:
                o = present[oracle_owner]["oracle"]
                row.append(Num(o.get(metric), src=ev.src, path=ev.ptr(oracle_owner, "tasks", task, "oracle", metric))
                           if feat == "rates" else None)
            rows.append(row)
    rows.append(["chance"] + [Num(e.get("chance"), src=ev.src, path=ev.ptr(n, "tasks", task, "chance"))
                              for n, e in present.items()] + ([None] if oracle_owner else []))
    ideal_owner = next((n for n, e in present.items() if isinstance(e.get("ideal_observer"), dict)), None)
    if ideal_owner and oracle_owner:  # the bound the spikes' Poisson noise sets, in the oracle column
        rows.append(["accuracy (ideal observer of the spikes)"] + [None] * len(names) + [
            Num(present[ideal_owner]["ideal_observer"].get("accuracy"), src=ev.src,
                path=ev.ptr(ideal_owner, "tasks", task, "ideal_observer", "accuracy"))])
    # nested cross-validation scores every window (the footer of spikefm eval says so), a held-out
    # test its n_test
    rows.append([f"{_scored(ev)} windows scored"]
                + [(e.get("n_train") or 0) + (e.get("n_test") or 0) if e.get("method") == "nested-cv" else e.get("n_test")
                   for e in present.values()] + ([None] if oracle_owner else []))
    rows.append(["method"] + [e.get("method") for e in present.values()] + ([None] if oracle_owner else []))
    sec.table(header, rows, caption=f"{task}: accuracy of a logistic regression (label "
              f"{next(iter(present.values())).get('label')})", key=f"task-{task}", blank_why=DECODING_BLANK)
    nested = [n for n, e in present.items() if e.get("method") == "nested-cv"]
    for n in nested:  # as spikefm eval's footer says it: these are not held-out scores
        e = present[n]
        sec.note(f"{n}: only {e.get('n_test')} {_scored(ev)} window(s), so the decoder is scored by "
                 f"{e.get('cv_folds')}-fold cross-validation over all {(e.get('n_train') or 0) + (e.get('n_test') or 0)} "
                 "windows, the model's training windows among them (not a held-out test)", warn=True)
    cats, vals, lo, hi = [], [], [], []
    for n, e in present.items():
        for feat in ("hidden", "rates"):
            if isinstance(e.get(feat), dict):
                cats.append(f"{n} ({feat})")
                vals.append(e[feat].get("accuracy"))
                ci = e[feat].get("accuracy_ci95") or [None, None]
                lo.append(ci[0])
                hi.append(ci[1])
    if oracle_owner:
        o = present[oracle_owner]["oracle"]
        ci = o.get("accuracy_ci95") or [None, None]
        cats.append("oracle (true rates)")
        vals.append(o.get("accuracy"))
        lo.append(ci[0])
        hi.append(ci[1])
    chance = next(iter(present.values())).get("chance")
    has_ci = any(v is not None for v in lo)
    sec.figure(charts.bars(cats, [charts.bar_series("accuracy", vals, lo=lo if has_ci else None,
                                                    hi=hi if has_ci else None)],
                           y_label="accuracy", hlines=[{"y": chance, "name": "chance"}] if chance is not None else []),
               f"{task}: accuracy with its 95 % Wilson interval; the dashed line is chance."
               + (" Cross-validated over every window, the model's training windows among them, not a held-out "
                  "test (see the note above)." if nested else ""))
    sec.end_figures()


def _behavior_task(sec: Section, ev: Evaluation, task: str, present: dict) -> None:
    names = list(present)
    first_name, first = next(iter(present.items()))
    channels = list(first.get("channels", []))
    cols: list[tuple[str, str, str]] = []  # (column title, model, feature set)
    for n in names:
        cols += [(f"{n} hidden", n, "hidden"), (f"{n} rates", n, "rates")]
    cols += [(label, first_name, feat) for label, feat in (("raw counts", "counts"), ("oracle (latents)", "oracle"))
             if isinstance(first.get(feat), dict) and first.get(feat)]
    rows = []
    for ch in channels + ["mean"]:
        for metric in ("r2", "psth_r2"):
            row: list[Any] = [ch, metric]
            for _, n, feat in cols:
                v = present[n].get(feat, {}).get(ch, {}).get(metric) if isinstance(present[n].get(feat), dict) else None
                row.append(Num(v, src=ev.src, path=ev.ptr(n, "tasks", task, feat, ch, metric)) if v is not None else None)
            rows.append(row)
    sec.table(["channel", "metric", *(c[0] for c in cols)], rows,
              caption=f"{task}: R\u00b2 of ridge decoders, single trial (r2) and of the test-trial "
                      f"average per {first.get('psth_condition') or 'window'} (psth_r2)", key=f"task-{task}",
              blank_why=(("", "a cell is - where that model's results hold no decoder of that feature set (or no "
                              "score of that channel)"),))
    for metric in ("r2", "psth_r2"):
        series = []
        for title, n, feat in cols:
            d = present[n].get(feat) or {}
            series.append(charts.bar_series(title, [d.get(ch, {}).get(metric) for ch in channels + ["mean"]]))
        sec.figure(charts.bars(channels + ["mean"], series, y_label=metric, x_label="behaviour channel"),
                   f"{task}: {metric} per channel and feature set.")
    sec.end_figures()


# --- saved predictions -------------------------------------------------------------------------


@dataclass
class TestWindows:
    """What the report needs of the windows an evaluation scored (its ``split``: the session's test
    windows, or its val windows after ``eval --split val``), cut again from the corpus."""

    labels: dict[str, np.ndarray]
    event_bin: int | None
    bin_ms: int
    unit_regions: list[str]
    behavior: np.ndarray | None
    behavior_names: list[str]
    num_windows: int


def load_test_windows(run_dir: str | Path, corpus_dir: str | Path, session_id: str,
                      split: str = "test") -> TestWindows:
    """The ``split`` windows (``test``, or ``val`` for an ``eval --split val``) of ``session_id``
    as the run split them (``config.json``'s ``family_info.window_options`` and
    ``window_splits``); ValueError when that is not possible."""
    if split not in ("test", "val"):
        raise ValueError(f"the results name split {split!r}; expected 'test' or 'val'")
    from spikefm.corpus.reader import Corpus
    from spikefm.data.windows import apply_splits, load_all_windows
    from spikefm.report.training import read_json

    info = read_json(Path(run_dir) / "config.json", "the config.json of the evaluated run")
    fam = info.get("family_info") or {}
    opts, splits = dict(fam.get("window_options") or {}), fam.get("window_splits") or {}
    if not opts or session_id not in splits:
        raise ValueError(f"{run_dir}/config.json records no window split for session {session_id!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = apply_splits(load_all_windows(Corpus(corpus_dir), [session_id], require_table=False, **opts),
                         {session_id: splits[session_id]})[session_id]
    test = w.indices(split)
    return TestWindows(labels={k: np.asarray(v)[test] for k, v in w.labels.items()}, event_bin=w.event_bin,
                       bin_ms=w.bin_ms, unit_regions=list(w.unit_regions),
                       behavior=None if w.behavior is None else w.behavior[test],
                       behavior_names=list(w.behavior_names), num_windows=int(test.size))


def predictions_panel(sec: Section, ev: Evaluation, pred_dir: Path, windows: TestWindows | None) -> None:
    """Per-neuron bps, rasters and PSTHs from ``pred_dir/<task>.npz`` of the first model."""
    from spikefm.eval.metrics import bps_pooled, bps_per_neuron

    model = next(iter(ev.models))
    bench = ev.models[model]
    files = [(t, pred_dir / f"{t}.npz") for t in bench.get("tasks", {})
             if t != "behavior-decoding" and (pred_dir / f"{t}.npz").is_file()]  # traces: drawn below
    sec.heading(f"Saved predictions of {model} ({pred_dir})")
    if not files:
        sec.note(f"no <task>.npz predictions in {pred_dir} for the tasks of {model}", warn=True)
        return
    rows, loaded = [], {}
    for task, path in files:
        z = read_npz(path, ("rates", "counts"), "the <task>.npz of spikefm eval --save-predictions")
        rates, counts = z["rates"].astype(np.float64), z["counts"].astype(np.float64)
        loaded[task] = (rates, counts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_neuron = bps_per_neuron(rates, counts)
            pooled = bps_pooled(rates, counts)
        active = per_neuron[~np.isnan(per_neuron)]
        mean = float(active.mean()) if active.size else math.nan
        entry = bench["tasks"][task]["model"]
        rows.append([task, int(active.size), Num(mean), Num(entry.get("bps_per_neuron_mean"), src=ev.src,
                     path=ev.ptr(model, "tasks", task, "model", "bps_per_neuron_mean")),
                     Num(pooled), Num(entry.get("bps_pooled"), src=ev.src,
                                      path=ev.ptr(model, "tasks", task, "model", "bps_pooled"))])
        if not (_close(mean, entry.get("bps_per_neuron_mean")) and _close(pooled, entry.get("bps_pooled"))):
            sec.note(f"{path}: the bits per spike recomputed from these predictions differ from the "
                     "results JSON; they may come from another evaluation", warn=True)
        finite = active[np.isfinite(active)]
        left_out = f" ({active.size - finite.size} neurons at -inf left out)" if finite.size < active.size else ""
        sec.figure(charts.hist(finite, x_label="bits per spike of one neuron", y_label="neurons", bins=25,
                               vlines=[{"x": mean, "name": "mean"}] if math.isfinite(mean) else []),
                   f"{task}: bits per spike of each neuron with spikes ({active.size} neurons){left_out}.")
    sec.end_figures()
    sec.table(["task", "neurons with spikes", "bps_per_neuron_mean (recomputed)", "bps_per_neuron_mean (JSON)",
               "bps_pooled (recomputed)", "bps_pooled (JSON)"], rows,
              caption="bits per spike recomputed from the saved predictions (spikefm.eval.metrics) "
                      "beside the results file", key="predictions-check")
    task = "co-smoothing" if "co-smoothing" in loaded else next(iter(loaded))
    rates, counts = loaded[task]
    if windows is not None and windows.num_windows != counts.shape[0]:
        sec.note(f"the corpus gives {windows.num_windows} {_scored(ev)} windows, the predictions hold "
                 f"{counts.shape[0]}; conditions and regions are not shown", warn=True)
        windows = None
    _prediction_rasters(sec, task, rates, counts, windows, ev.models[model].get("bin_ms") or 20)
    _psths(sec, task, rates, counts, windows, ev.models[model].get("bin_ms") or 20, scored=_scored(ev))
    _behavior_traces(sec, pred_dir, windows, "behavior-decoding" in bench.get("tasks", {}))


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return True
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _prediction_rasters(sec: Section, task: str, rates_KTN, counts_KTN, windows, bin_ms: int) -> None:
    K, T, N = counts_KTN.shape
    k_max = max(1, min(K, RASTER_MAX_BINS // max(T, 1)))
    scored = ~np.isnan(counts_KTN[:k_max])
    true_NX = np.where(scored, counts_KTN[:k_max], 0).transpose(2, 0, 1).reshape(N, -1)
    pred_NX = np.where(scored, rates_KTN[:k_max], 0).transpose(2, 0, 1).reshape(N, -1)
    regions = windows.unit_regions if windows is not None else [""] * N
    order = np.argsort(np.asarray(regions, dtype=str), kind="stable")
    labels = [f"{i} ({regions[i]})" if regions[i] else str(i) for i in order]
    edges = [{"x": k * T * bin_ms / 1000, "name": "", "color": "rgba(214,39,40,0.45)"} for k in range(1, k_max)]
    link = f"pred-{task}"
    sec.figure(charts.raster(true_NX[order], dt_s=bin_ms / 1000, x_label="time (s), test windows end to end",
                             row_labels=labels, vlines=edges, link=link),
               f"{task}: true spike counts of the held-out entries, {k_max} of {K} test windows "
               "(units sorted by region).", wide=True)
    heat = charts.raster(pred_NX[order], dt_s=bin_ms / 1000, x_label="time (s), test windows end to end",
                         kind="rates", row_labels=labels, vlines=edges, link=link, value_name="predicted count / bin")
    per = "bin" if heat["bins_summed"] == 1 else f"{heat['bins_summed']} summed bins"
    sec.figure(heat, f"{task}: the model's predicted rates for the same entries (zoom is shared). Colour: dark "
                     f"purple = 0, yellow = {heat['vmax']:.5g} predicted count per {per} ({heat['vmax_is']} of "
                     "the shown rates; higher rates are yellow too).", wide=True)
    sec.end_figures()


def _psths(sec: Section, task: str, rates_KTN, counts_KTN, windows, bin_ms: int, *, scored: str = "test") -> None:
    K, T, N = counts_KTN.shape
    event = windows.event_bin if windows is not None and windows.event_bin is not None else 0
    t_s = [(b - event) * bin_ms / 1000 for b in range(T)]
    groups: list[tuple[str, np.ndarray]] = [(f"all {scored} windows", np.arange(K))]
    cond_name = None
    if windows is not None:
        from spikefm.data.windows import psth_condition

        cond_name = psth_condition(windows.labels)
    if cond_name is not None:
        values = windows.labels[cond_name]
        present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        groups = [(f"{cond_name}={_label(v)}", np.flatnonzero(values == v))
                  for v in sorted(set(present), key=str)] or groups
    scored = ~np.isnan(counts_KTN)

    def mean_over(idx, arr_KTN):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.where(scored[idx], arr_KTN[idx], np.nan), axis=0)  # (T, N)

    def lines(unit_slice):
        out = []
        for i, (name, idx) in enumerate(groups):
            with warnings.catch_warnings():  # bins no unit was scored in (forward prediction's context)
                warnings.simplefilter("ignore", RuntimeWarning)
                true_T = np.nanmean(mean_over(idx, counts_KTN)[:, unit_slice], axis=1)
                pred_T = np.nanmean(mean_over(idx, rates_KTN)[:, unit_slice], axis=1)
            color = _color(i)
            out.append(charts.series(f"{name} true", t_s, _nan_none(true_T), style="points", color=color))
            out.append(charts.series(f"{name} predicted", t_s, _nan_none(pred_T), color=color))
        return out

    where = (f"per {cond_name}" if cond_name else
             f"over all {scored} windows (no condition labels: the windows could not be cut again, see the note "
             "above)" if windows is None else f"over all {scored} windows (they carry no condition labels)")
    x_label = "time from the event (s)" if windows is not None and windows.event_bin is not None else "time in window (s)"
    vl = [{"x": 0.0, "name": "event"}] if windows is not None and windows.event_bin is not None else []
    sec.figure(charts.xy(lines(slice(None)), x_label=x_label, y_label="mean count / bin", vlines=vl),
               f"{task}: population PSTH {where}: true mean count (points) and predicted rate (line).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        activity = np.nanmean(np.where(scored, counts_KTN, np.nan), axis=(0, 1))
    top = [int(u) for u in np.argsort(-np.nan_to_num(activity, nan=-1))[:PSTH_UNITS]]
    for u in top:
        label = f"unit {u}" + (f" ({windows.unit_regions[u]})" if windows is not None and windows.unit_regions[u] else "")
        sec.figure(charts.xy(lines(slice(u, u + 1)), x_label=x_label, y_label="count / bin", vlines=vl, height=200),
                   f"{task}: PSTH of {label}, one of the {PSTH_UNITS} most active units.")
    sec.end_figures()


def _label(v: Any) -> str:
    return str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)


def _color(i: int) -> str:
    return ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")[i % 6]


def read_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles); a damaged file or a missing key is one ValueError."""
    import zipfile

    if Path(path).is_file() and not zipfile.is_zipfile(path):  # numpy would offer allow_pickle: unsafe advice
        raise ValueError(f"{path}: not an .npz (a zip of arrays: spikefm writes no other kind); expected {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"{path}: not a readable .npz ({detail}); expected {what}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no {', '.join(repr(k) for k in missing)} array; expected {what}")
    # a zip member that is no .npy comes back as its bytes
    odd = [k for k in keys if arrays[k].dtype.kind not in "biuf"]
    if odd:
        raise ValueError(f"{path}: its {odd[0]!r} holds no numbers (a {arrays[odd[0]].dtype} value); expected {what}")
    return arrays


def _nan_none(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def _behavior_traces(sec: Section, pred_dir: Path, windows: TestWindows | None, evaluated: bool = True) -> None:
    path = pred_dir / "behavior-decoding.npz"
    if path.is_file() and not evaluated:  # a file of another evaluation in the same folder
        sec.note(f"{path}: not drawn: this evaluation did not run behavior-decoding, so the file comes from "
                 "another one", warn=True)
        return
    if not path.is_file():
        if windows is not None and windows.behavior is not None:
            sec.note("decoded behaviour traces: not saved by this evaluation (no behavior-decoding.npz "
                     "among the predictions); the R\u00b2 tables above summarise them")
        return
    z = read_npz(path, ("true", "predicted"), "the behavior-decoding.npz of spikefm eval "
                 "--save-predictions")
    true_KTC, pred_KTC = z["true"].astype(np.float64), z["predicted"].astype(np.float64)
    names = [str(c) for c in z["channels"]] if "channels" in z else \
        [f"channel {c}" for c in range(true_KTC.shape[2])]
    K, T, C = true_KTC.shape
    k_max = max(1, min(K, RASTER_MAX_BINS // max(T, 1)))
    dt = (windows.bin_ms if windows is not None else 20) / 1000
    t = [i * dt for i in range(k_max * T)]
    for c, name in enumerate(names):
        sec.figure(charts.xy([charts.series("true", t, _nan_none(true_KTC[:k_max, :, c].ravel())),
                              charts.series("decoded", t, _nan_none(pred_KTC[:k_max, :, c].ravel()))],
                             x_label="time (s), test windows end to end", y_label=name, link="behaviour"),
                   f"Decoded vs true {name} on {k_max} test windows.", wide=True)
    sec.end_figures()


# --- autoregressive generation -----------------------------------------------------------------


def generation_panel(sec: Section, path: Path, *, bin_ms: int | None = None) -> None:
    """Generated next to real rasters (``spikefm generate``'s .npz) and their simple statistics.

    The time axis uses the bin width the .npz records (``bin_ms``, written by ``spikefm
    generate``), else ``bin_ms``, else it counts bins. Real and generated rasters share one grey
    scale (black = the largest count of either)."""
    arrays = read_npz(path, ("counts",), "the .npz that spikefm generate writes")
    if "bin_ms" in arrays and np.ndim(arrays["bin_ms"]) == 0 and float(arrays["bin_ms"]) > 0:
        bin_ms = float(arrays["bin_ms"])
    gen = arrays["counts"].astype(np.float64)
    prompt = arrays.get("prompt")
    real = arrays.get("real")
    if real is not None and real.size == 0:  # a prompt at the session's end: nothing followed it
        real = None
    P = 0 if prompt is None else prompt.shape[1]
    sec.heading(f"Generated activity ({path.name})")
    dt, x_label = (bin_ms / 1000, "time (s)") if bin_ms else (1.0, "time (bins; width not recorded)")
    mark = [{"x": P * dt, "name": "prompt ends"}] if P else []
    gen_full = gen if prompt is None else np.concatenate([prompt, gen], axis=1)
    real_full = None if real is None else real if prompt is None else np.concatenate([prompt, real], axis=1)
    top = max(float(a.max()) for a in (gen_full, real_full) if a is not None and a.size)
    shared = f" Grey scale shared by both rasters: black = {top:g} spikes in a bin." if real is not None else ""
    if real is not None:
        sec.figure(charts.raster(real_full, dt_s=dt, x_label=x_label, vlines=mark, link="generated", vmax=top),
                   f"Real activity: the {P} prompt bins and the {real.shape[1]} bins that followed.{shared}",
                   wide=True)
    after = (f"after the same {P} prompt bins" if real is not None else f"after {P} prompt bins") if P else \
        "from nothing (no prompt)"
    sec.figure(charts.raster(gen_full, dt_s=dt, x_label=x_label, vlines=mark, link="generated", vmax=top),
               f"Generated by the model {after} ({gen.shape[1]} bins, {gen.shape[0]} units).{shared}", wide=True)
    sec.end_figures()
    rows = [["generated", Num(float(gen.mean())), Num(float((gen == 0).mean())), int(gen.max())]]
    if real is not None:
        r = real.astype(np.float64)
        rows.insert(0, ["real", Num(float(r.mean())), Num(float((r == 0).mean())), int(r.max())])
        n = min(r.shape[1], gen.shape[1])
        real_N, gen_N = r[:, :n].mean(axis=1), gen[:, :n].mean(axis=1)
        top = float(max(real_N.max(), gen_N.max(), 1e-3))
        sec.figure(charts.xy([charts.series("units", real_N, gen_N, style="points"),
                              charts.series("equal", [0, top], [0, top], style="dash")],
                             x_label="real mean count / bin", y_label="generated mean count / bin"),
                   "Mean count of each unit, real vs generated (one point per unit).")
    sec.table(["", "mean count / bin", "zero bins (fraction)", "largest count"], rows,
              caption="generated vs real bins (after the prompt)" if real is not None else
              "generated bins" + (" (after the prompt)" if P else "") + ": no real bins to compare with "
              "(generate --prompt CORPUS:SESSION:BIN gives them)", key="generation-stats")
