"""Study sections: ``spikefm experiment transfer``'s ``transfer.json``, and any other study JSON
rendered from what it holds.

A transfer study shows its settings, each seed's held-out session, and for every headline metric
a table of the seeds with their mean and s.d. and a bar chart (mean ± s.d., seeds as points).

Other studies (a JSON object with a ``"study"`` name) are drawn from their shape, so a new study
gets a report by writing these conventions:

- top-level numbers and text: a table of settings;
- ``"curves"``: a list of ``{"name", "x", "y", "x_label", "y_label", "log_x", "log_y",
  "fit": {"x", "y", "label"}, "extrapolation": {"x", "y", "label"}}`` (scaling curves: points,
  the fitted curve, its extrapolation dashed), each also shown as a table;
- a curve's ``"hlines"``: ``[{"y", "name"}]`` reference values drawn as horizontal lines (a
  scaling study's single-session baseline, added from its ``figure4``); x ticks are the plotted
  x values when they are whole numbers (numbers of sessions);
- a list of flat objects (e.g. a session ranking): a table, and a bar chart of ``"score"`` (or
  ``"improvement_pct"``) in list order, each bar named by the records' text fields, coloured by
  ``"same_family"`` when the records hold it; scores that share a sign far from 0 are charted on
  an axis that spans them only, so that close scores do not look equal;
- an object of flat objects: a table (one row per key);
- anything else: collapsed JSON.

A top-level ``"top_k"`` that differs from ``settings.top_k`` is shown as the top_k used beside the
one requested, with why; cells shown as ``-`` (null: not computed) get a note saying why.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from spikefm.experiments.plots import RANKING_COLORS
from spikefm.report import charts
from spikefm.report.page import Num, Page, Section, json_safe, pointer
from spikefm.report.provenance import Provenance

_SCALAR = (str, int, float, bool, type(None))
#: The columns of a list of records that are its result, charted in this order of preference.
_CHARTED = ("score", "improvement_pct")
#: Why a transfer study's table shows nan, by row name or column header (Section.table's nan_why).
_TRANSFER_NAN = (("95 % CI", "a 95 % CI is nan on a seed with fewer than 3 test windows (the jackknife needs "
                  "3) or with a leave-one-out subset without spikes; the mean and s.d. over seeds leave such "
                  "seeds out (n in transfer.json counts the seeds used)"),
                 ("seed", "a seed's value is nan when its evaluation gave nan (its section below says more); the "
                          "mean and s.d. over seeds leave it out"))
#: Why a transfer study's table shows - (None), by row name or column header (Section.table's blank_why).
_TRANSFER_BLANK = (("seed", "a seed's value is - where its evaluation did not score that column (a task or "
                    "baseline it skipped: its section below says why)"),
                   ("mean", "a mean and s.d. over seeds are - where no seed has a value (a nan is none)"),
                   ("sd", "an s.d. over seeds is - where fewer than two seeds have a value (one value has no "
                          "spread)"))
#: Colours of a ranking's bars by ``same_family`` (own family of the held-out session, other,
#: unknown): the study's own PNG's (spikefm.experiments.plots.RANKING_COLORS).
_FAMILY_COLORS = {k: color for k, (color, _) in RANKING_COLORS.items()}


#: What a session ranking's validation loss is, per family (a ranking.json without a family is
#: the NDT's: the only family before NEDS could rank).
_RANKING_LOSS = {
    "ndt": "the masked Poisson NLL per scored entry on the held-out session's validation windows",
    "neds": ("on the held-out session's validation windows, NEDS's weighted sum of the spike Poisson NLL, the "
             "behaviour MSE and the label cross-entropy over its validation schemes, so it mixes the modalities"),
}


def study_section(page: Page, obj: dict, prov: Provenance, *, src: str = "study",
                  title: str | None = None) -> Section:
    """Add the section of one study JSON object."""
    name = str(obj.get("study") or "study")
    sec = page.section("study", title or f"Study: {name}")
    if name == "transfer" and isinstance(obj.get("per_seed"), dict):
        _transfer(sec, obj, src)
    else:
        names, note = _top_k(obj)
        settings = obj.get("settings") if isinstance(obj.get("settings"), dict) else {}
        ctx = {"study": name, "names": names, "notes": [note] if note else [], "blank_why": _blank_why(obj),
               "family": settings.get("family")}
        _generic(sec, _scaling_curves(obj) if name == "scaling" else obj, src, ctx=ctx)
    prov.add(f"study {name}", [("command", obj.get("command"))],
             details={"settings": obj.get("settings"), "machine": obj.get("machine")})
    return sec


def _transfer_shape_problem(obj: dict) -> str | None:
    """Where a transfer study JSON holds something other than an object where the report reads
    one (each seed, its metrics and each metric; the means and s.d. per metric and column, which
    may be null), or None."""
    for s, r in obj["per_seed"].items():
        bad = _non_object(f"per_seed.{s}", r, 0) or _non_object(f"per_seed.{s}.metrics", r.get("metrics", {}), 1)
        if bad:
            return bad
    return _non_object("mean_sd", obj.get("mean_sd") or {}, 2, null=True)


def _non_object(where: str, value: Any, depth: int, null: bool = False) -> str | None:
    """``"WHERE is TYPE"`` for the first of ``value`` and its values ``depth`` levels down that is
    not a dict (below the top, a null is accepted with ``null``), else None."""
    if not isinstance(value, dict):
        return f"{where} is {type(value).__name__}"
    for key, inner in value.items() if depth else ():
        if not (null and inner is None):
            bad = _non_object(f"{where}.{key}", inner, depth - 1, null)
            if bad:
                return bad
    return None


def _transfer(sec: Section, obj: dict, src: str) -> None:
    settings = obj.get("settings") or {}
    # settings as written (60.0 s, not a 4-decimal number cell); long values wrap (the kv CSS)
    sec.kv([("command", obj.get("command"))] + [(k, v if isinstance(v, (int, str)) else repr(v)
                                                 if isinstance(v, float) else json.dumps(v))
                                               for k, v in settings.items()], key="study-settings")
    per_seed: dict = obj["per_seed"]
    seeds = list(per_seed)
    bad = _transfer_shape_problem(obj)
    if bad is not None:  # the study writes objects there; a hand-edited or damaged file may not
        raise ValueError(f"{src}: {bad}, expected an object (what the transfer study writes); the file was edited or "
                         "damaged: rerun the study to write it again")

    def scored_on(r: dict) -> str | None:  # what the benchmarks were computed on (transfer.json since 2026-12-06)
        ev = r.get("evaluation") or {}
        fr = ev.get("split_fractions")
        parts = [f"{ev['window_bins']} bins" if ev.get("window_bins") is not None else None,
                 f"split {':'.join(f'{f:g}' for f in fr)}" if fr else None,
                 f"decoding block {ev['decode_layer']}" if ev.get("decode_layer") is not None else None,
                 f"{ev['split']} windows" if ev.get("split") else None]  # what a family records, no more
        return ", ".join(p for p in parts if p) or None

    sec.table(["seed", "held-out session", "units", "test windows", "strategy", "scored on", "wall (s)"],
              [[s, r.get("session_id"), r.get("num_units"), r.get("num_test_windows"), r.get("strategy"),
                scored_on(r), Num(r.get("wall_s"), ",.1f", src=src, path=pointer("per_seed", s, "wall_s"))]
               for s, r in per_seed.items()], caption="seeds (one synthetic dataset each)", key="study-seeds")
    metrics = list(dict.fromkeys(m for r in per_seed.values() for m in r.get("metrics", {})))
    mean_sd = obj.get("mean_sd") or {}
    for metric in metrics:
        # n_scored is a count of windows, not a model: left out as in the printed table
        cols = list(dict.fromkeys(c for r in per_seed.values() for c in r.get("metrics", {}).get(metric, {})
                                  if c != "n_scored"))
        rows = []
        for s in seeds:
            vals = per_seed[s].get("metrics", {}).get(metric, {})
            rows.append([f"seed {s}"] + [Num(vals.get(c), src=src, path=pointer("per_seed", s, "metrics", metric, c))
                                         if vals.get(c) is not None else None for c in cols])
        for stat in ("mean", "sd"):
            rows.append([stat] + [Num(mean_sd[metric][c][stat], src=src, path=pointer("mean_sd", metric, c, stat))
                                  if ((mean_sd.get(metric) or {}).get(c) or {}).get(stat) is not None
                                  and not (stat == "sd" and mean_sd[metric][c].get("n") == 1) else None
                                  for c in cols])
        sec.heading(metric)
        sec.table(["", *cols], rows, caption=f"{metric}: per seed, mean and s.d. over seeds "
                  f"{', '.join(seeds)}", key=f"study-{metric}", nan_why=_TRANSFER_NAN, blank_why=_TRANSFER_BLANK)
        # a column with no finite value (a CI on seeds of 2 test windows) would be an empty slot
        shown = [c for c in cols if (mean_sd.get(metric) or {}).get(c)
                 and any(_finite(v) for v in [mean_sd[metric][c].get("mean")] +
                         [per_seed[s].get("metrics", {}).get(metric, {}).get(c) for s in seeds])]
        if shown:
            sec.figure(charts.bars(shown, [charts.bar_series(
                "mean over seeds", [mean_sd[metric][c]["mean"] for c in shown],
                err=[mean_sd[metric][c]["sd"] if mean_sd[metric][c].get("n", 2) > 1 else None for c in shown],
                points=[[per_seed[s].get("metrics", {}).get(metric, {}).get(c) for s in seeds] for c in shown])],
                y_label=metric.split(" ", 1)[-1], points_label="seeds"),
                f"{metric}: mean ± s.d. over seeds (bars), each seed a point.")
            sec.end_figures()


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _numeric(v) and math.isfinite(v)


def _flat(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, _SCALAR) for x in v.values())


def _top_k(obj: dict) -> tuple[dict[tuple, str], str | None]:
    """Names for a study's ``top_k`` and ``settings.top_k`` when they differ (the k used and the k
    requested), and a note saying why they differ; ``({}, None)`` when they agree."""
    settings = obj.get("settings") if isinstance(obj.get("settings"), dict) else {}
    used, asked = obj.get("top_k"), settings.get("top_k")
    if not (_numeric(used) and _numeric(asked)) or used == asked:
        return {}, None
    pool = settings.get("pretraining_sessions")
    n = len(pool) if isinstance(pool, list) else None
    few = f"only {n} pretraining session{'' if n == 1 else 's'} exist" if n is not None and n < asked else ""
    sizes = settings.get("sizes")
    if obj.get("study") == "scaling" and isinstance(sizes, list) and used > asked:
        why = f"no number of sessions in sizes ({', '.join(map(str, sizes))}) is at most {asked}, so the smallest is used"
    elif obj.get("study") == "scaling" and isinstance(sizes, list):
        why = (f"the top-k ranked model uses the largest number of sessions in sizes ({', '.join(map(str, sizes))}) "
               f"that is at most {asked}" + (f"; {few}" if few else ""))
    elif few:
        why = f"{few}, so precision@{used} and the top-{used} overlap are reported"
    else:
        why = "the study capped it"
    return ({("top_k",): "top_k used", ("settings", "top_k"): "top_k requested"},
            f"top_k: {asked} requested (settings), {used} used: {why}.")


def _blank_why(obj: dict) -> list[tuple[str, str]]:
    """Why a generic study's table shows ``-`` (a null: not computed), by column header or row name."""
    settings = obj.get("settings") if isinstance(obj.get("settings"), dict) else {}
    seeds = settings.get("seeds", [settings["seed"]] if "seed" in settings else None)
    ran = (f"; this study ran {len(seeds)} seed{'' if len(seeds) == 1 else 's'} ({', '.join(map(str, seeds))})"
           if isinstance(seeds, list) and seeds else "")
    sd = f"a s.d. is - where fewer than 2 values were averaged (n = 1){ran}"
    return [("sd", sd), ("s.d.", sd),
            ("smoothing", "smoothing is - for a task without a smoothing baseline (only co-smoothing has one)"),
            ("oracle", "oracle is - for a task the corpus's ground truth does not score"),
            ("", "- is a value the study did not compute (null in its file)")]


def _scaling_curves(obj: dict) -> dict:
    """A scaling study whose Figure 4 curves draw the held-out session's single-session baseline
    (``figure4[held_out]["baseline"]``) as a horizontal line (the y label, with the metric's unit,
    is the study's own)."""
    curves, fig4 = obj.get("curves"), obj.get("figure4")
    if not isinstance(curves, list) or not isinstance(fig4, dict):
        return obj
    out = []
    for c in curves:
        if isinstance(c, dict):
            c = dict(c)
            held = next((h for h in sorted(fig4, key=len, reverse=True) if str(c.get("name", "")).startswith(f"{h} ")),
                        None)
            base = (fig4.get(held) or {}).get("baseline") if held is not None else None
            if _finite(base):
                c["hlines"] = [{"y": base, "name": "single-session baseline"}]
        out.append(c)
    return {**obj, "curves": out}


def _generic(sec: Section, obj: dict, src: str, keys: tuple = (), *, ctx: dict | None = None) -> None:
    ctx = ctx or {}
    names = ctx.get("names") or {}
    scalars = [(k, v) for k, v in obj.items() if isinstance(v, _SCALAR)]
    if scalars:
        sec.kv([(names.get((*keys, k), k), Num(v, src=src, path=pointer(*keys, k)) if _numeric(v) else v)
                for k, v in scalars])
    if not keys:
        for note in ctx.get("notes") or []:
            sec.note(note)
    blank = ctx.get("blank_why") or ()
    for k, v in obj.items():
        if isinstance(v, _SCALAR):
            continue
        if k == "curves" and isinstance(v, list) and all(isinstance(c, dict) and "x" in c and "y" in c for c in v):
            for i, c in enumerate(v):
                _curve(sec, c, src, (*keys, k, i), blank)
        elif k == "curves" and isinstance(v, dict) and v and \
                all(isinstance(c, dict) and "x" in c and "y" in c for c in v.values()):
            y = str(obj.get("y", "y"))
            # improvement over the single-session model: that model is at 0 %
            zero = [{"y": 0, "name": "single-session model"}] if y.startswith("improvement over single-session") else []
            for name, c in v.items():  # named curves (scaling's more_sessions: one per task)
                _curve(sec, {"x_label": "pretraining sessions", "y_label": y, "hlines": zero,
                             "log_x": True, "over": "held-out sessions and seeds", **c, "name": str(name)},
                       src, (*keys, k, name), blank)
        elif isinstance(v, list) and v and all(_flat(r) for r in v):
            _records(sec, str(k), v, src, (*keys, k), ctx)
        elif isinstance(v, dict) and v and all(_flat(r) for r in v.values()):
            cols = list(dict.fromkeys(c for r in v.values() for c in r))
            sec.table(["", *cols], [[name] + [Num(r.get(c), src=src, path=pointer(*keys, k, name, c))
                                              if _numeric(r.get(c)) else r.get(c) for c in cols]
                                    for name, r in v.items()], caption=str(k), key=f"study-{k}", blank_why=blank)
        elif isinstance(v, dict) and len(keys) < 2:
            sec.heading(str(k), 4)
            _generic(sec, v, src, (*keys, k), ctx=ctx)
        else:
            sec.details(str(k), json.dumps(json_safe(v), indent=2))


def _records(sec: Section, name: str, records: list[dict], src: str, keys: tuple, ctx: dict | None = None) -> None:
    ctx = ctx or {}
    cols = list(dict.fromkeys(c for r in records for c in r))
    sec.table(cols, [[Num(r.get(c), src=src, path=pointer(*keys, i, c)) if _numeric(r.get(c)) else r.get(c)
                      for c in cols] for i, r in enumerate(records)], caption=name, key=f"study-{name}",
              blank_why=ctx.get("blank_why") or ())
    # a chart only of a column that is the records' result (a ranking's score, an improvement):
    # the first numeric column may be a size, and rows of different tasks mix units
    value = next((c for c in _CHARTED if c in cols and any(_numeric(r.get(c)) for r in records)), None)
    labels = [c for c in cols if all(isinstance(r.get(c), str) for r in records)]
    if value and len(records) <= 200:
        cats = [" / ".join(str(r.get(c)) for c in labels) if labels else str(i + 1) for i, r in enumerate(records)]
        values = [r.get(value) for r in records]
        caption = f"{name}: {value} of each entry, in order."
        if value == "score" and ctx.get("study") == "rank-sessions":
            loss = _RANKING_LOSS.get(ctx.get("family") or "ndt",
                                     f"the {ctx.get('family')} family's validation loss on the held-out session's "
                                     "validation windows")
            caption = (f"{name}: the score of each pretraining session for the held-out session {name}, in rank order: "
                       f"minus the best validation loss ({loss}) of that session's pretrained core, frozen, with new "
                       "session parameters fitted to the held-out session; higher is better.")
        zero = not (value == "score" and charts.far_from_zero(values))
        if not zero:
            caption += (" The value axis spans the scores, not 0: each bar grows from the axis's start, so compare "
                        "where the bars end.")
        colors, legend = None, None
        if "same_family" in cols:
            fam = [r.get("same_family") if isinstance(r.get("same_family"), bool) else None for r in records]
            colors = [_FAMILY_COLORS[f] for f in fam]
            legend = [{"name": "own family (same_family true)", "color": _FAMILY_COLORS[True]},
                      {"name": "other family", "color": _FAMILY_COLORS[False]}]
            if None in fam:
                legend.append({"name": "family unknown", "color": _FAMILY_COLORS[None]})
            caption += " Colour: whether the session is of the held-out session's ground-truth family (same_family)."
        sec.figure(charts.bars(cats, [charts.bar_series(value, values, colors=colors)],
                               y_label=value, x_label=" / ".join(labels) or "rank", zero=zero, legend=legend),
                   caption)
        sec.end_figures()


def _curve(sec: Section, c: dict, src: str, keys: tuple, blank_why: Sequence[tuple[str, str]] = ()) -> None:
    name = str(c.get("name") or f"curve {keys[-1] + 1}")
    lines = [charts.series(name, c["x"], c["y"], style="points")]
    for part, style in (("fit", "line"), ("extrapolation", "dash")):
        p = c.get(part)
        if isinstance(p, dict) and "x" in p and "y" in p:
            # the fit is sampled at points of its own: drawn as a line, not as measurements
            lines.append(charts.series(str(p.get("label") or part), p["x"], p["y"], style=style, markers=False))
    hlines = [h for h in c.get("hlines") or [] if isinstance(h, dict) and _finite(h.get("y"))]
    # whole numbers of sessions (or trials): ticks at the values plotted, none at 1.2 sessions
    xs = [x for x in c["x"] if _finite(x)]
    whole = bool(xs) and all(float(x).is_integer() for x in xs)
    sec.figure(charts.xy(lines, x_label=str(c.get("x_label", "x")), y_label=str(c.get("y_label", "y")),
                         log_x=bool(c.get("log_x")), log_y=bool(c.get("log_y")), hlines=hlines,
                         x_ticks=xs if whole else None),
               f"{name}: measured points" + (", the fit and its extrapolation (dashed)" if len(lines) > 1
                                             else " (no fitted line)")
               + "".join(f"; the dashed horizontal line: {h.get('name', 'reference')} ({h['y']:.4g})" for h in hlines)
               + ".")
    sec.end_figures()
    # the spread and the count beside each mean, when the study records them (scaling curves)
    extra = [k for k in ("sd", "n") if isinstance(c.get(k), list) and len(c[k]) == len(c["y"])]
    sec.table([str(c.get("x_label", "x")), str(c.get("y_label", "y")),
               *({"sd": "s.d.", "n": "n"}[k] for k in extra)],
              [[Num(x, ".4g", src=src, path=pointer(*keys, "x", i)), Num(y, src=src, path=pointer(*keys, "y", i)),
                *(Num(c[k][i], ".4g" if k == "n" else ".4f", src=src, path=pointer(*keys, k, i)) for k in extra)]
               for i, (x, y) in enumerate(zip(c["x"], c["y"]))],
              caption=name + (f" (mean, s.d. and n over {c.get('over', 'seeds')})" if extra else ""),
              key=f"curve-{name}", blank_why=blank_why)
    if isinstance(c.get("fit"), dict):
        params = {k: v for k, v in c["fit"].items() if k not in ("x", "y", "label")}
        if params:
            sec.kv([(f"fit {k}", Num(v, ".4g", src=src, path=pointer(*keys, "fit", k)) if _numeric(v) else str(v))
                    for k, v in params.items()])


def study_seed_results(study_dir: Path) -> list[tuple[str, Path]]:
    """(seed name, results JSON) of each ``seed_*/results_<family>.json`` under a study folder."""
    return [(p.parent.name, p) for p in sorted(study_dir.glob("seed_*/results_*.json"))]
