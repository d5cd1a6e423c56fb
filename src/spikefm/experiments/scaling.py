"""Data-scaling study (Jiang et al. 2025): pretrain on the first k sessions of an order, fine-tune
to held-out sessions with the core frozen, compare with the single-session model.

    spikefm experiment scaling --data CORPUS --held-out S1,S2 --sizes 1,2,3,6,all \\
        --orders ranked,random,reverse --seeds 2 --out DIR --workers 2

1. The session ranking (:mod:`spikefm.experiments.rank_sessions`) with the first seed gives, per
   held-out session, the ``ranked`` order of the pretraining sessions; ``reverse`` is it reversed;
   ``random`` is one independent shuffle per seed (the same for every held-out session).
2. For every seed, held-out session, order and size k: pretrain on the first k sessions (the same
   session set and seed is one job, shared by orders and held-out sessions), fine-tune to the
   held-out session (frozen core, early stopping on its validation windows) and score its test
   windows on the chosen tasks. The single-session model of each held-out session and seed (same
   settings and seed, random core) is the baseline.
3. ``DIR/scores.json`` (and ``scores.csv``) holds every score with its percent improvement over
   the baseline (``100 * (score - baseline) / |baseline|``); ``DIR/scaling.json`` (study JSON,
   what :func:`scaling_study` returns) holds the Table 1 analogue (best improvement per order
   and the top-k ranked model), the Figure 4 analogue (the metric vs number of sessions and vs
   total pretraining trials, a least-squares line on log x through the sizes below the full set,
   its extrapolation to the full set and the full-set model's actual score), the Table 3 analogue
   (baseline vs pretrained on every task) and the "more sessions" curves of every task (random
   order). CSV files and PNG figures beside it.

Seeds are training seeds (initialisation, batches, masks, random order); the windows' train /
validation / test split of each session is fixed (``data.split_seed``), so every model of a
held-out session is scored on the same test windows.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from spikefm.experiments.jobs import Job, run_jobs, study_folder
from spikefm.experiments.rank_sessions import (LAPTOP, RANKING_STARTED, StudySettings, adapt_job, pretrain_job,
                                               ranking_jobs, ranking_settings, session_families, study_sessions,
                                               summarize_ranking, warn_top_k, write_csv, write_ranking_files)

__all__ = ["ORDERS", "parse_sizes", "session_orders", "scaling_jobs", "log_linear_fit", "summarize_scaling",
           "scaling_study", "DEFAULT_SIZES", "DEFAULT_METRIC"]

ORDERS = ("ranked", "random", "reverse")
DEFAULT_SIZES = "1,2,3,6,all"
#: The score of Table 1 and Figure 4 (the paper's forward prediction of held-out activity).
DEFAULT_METRIC = "forward-prediction-walk"


def parse_sizes(text: str | Sequence[Any], num_sessions: int) -> list[int]:
    """``"1,2,3,all"`` -> sorted distinct numbers of sessions; ``all`` (and any size above the
    pool) is the whole pool.

    Raises:
        ValueError: not positive integers or ``all``.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    out = set()
    for item in items:
        if item == "all":
            out.add(num_sessions)
            continue
        try:
            k = int(item)
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"--sizes must be positive integers or 'all', comma-separated (e.g. 1,2,3,6,all); "
                             f"got {item!r} in {text!r}")
        if k > num_sessions:
            warnings.warn(f"--sizes {k}: only {num_sessions} pretraining session(s); size {k} is run as "
                          f"{num_sessions} (all of them)", RuntimeWarning, stacklevel=2)
        out.add(min(k, num_sessions))
    if not out:
        raise ValueError("--sizes names no size; e.g. --sizes 1,2,3,6,all")
    return sorted(out)


def session_orders(ranked: dict[str, list[str]], pool: Sequence[str], orders: Sequence[str],
                   seed: int) -> dict[str, dict[str, list[str]]]:
    """order -> held-out session -> pretraining sessions in that order, for one seed.

    ``random`` is a permutation drawn from ``numpy.random.default_rng([seed, 1])``, the same for
    every held-out session; ``ranked`` / ``reverse`` come from ``ranked`` (held-out -> sessions
    best first)."""
    import numpy as np

    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"--orders must be comma-separated names from {', '.join(ORDERS)}, got {','.join(orders)!r}")
    perm = np.random.default_rng([int(seed), 1]).permutation(len(pool))
    shuffled = [pool[i] for i in perm]
    out: dict[str, dict[str, list[str]]] = {}
    for order in orders:
        out[order] = {}
        for h, best_first in ranked.items():
            out[order][h] = (list(best_first) if order == "ranked" else list(reversed(best_first))
                             if order == "reverse" else list(shuffled))
    return out


def scaling_jobs(settings: StudySettings, corpus: str, ranked: dict[str, list[str]], pool: Sequence[str],
                 sizes: Sequence[int], orders: Sequence[str], seeds: Sequence[int], tasks: Sequence[str] | None,
                 *, corpus_sha256: str | None = None) -> tuple[list[Job], list[dict]]:
    """The scaling jobs and one cell per (seed, held-out, order, size) or baseline:
    ``{"seed", "held_out", "order", "size", "sessions", "pretrain", "job"}``. ``corpus_sha256``:
    of the corpus's ``manifest.json`` (None: read it now)."""
    from spikefm.corpus.reader import manifest_sha256

    digest = corpus_sha256 or manifest_sha256(corpus)
    jobs: list[Job] = []
    cells: list[dict] = []
    for seed in seeds:
        orders_s = session_orders(ranked, pool, orders, seed)
        full = pretrain_job(settings, corpus, pool, seed, corpus_sha256=digest)
        for h in ranked:
            base = adapt_job(settings, full, h, evaluate=True, tasks=tasks, baselines=True, scratch=True)
            jobs += [full, base]
            cells.append({"seed": seed, "held_out": h, "order": "single-session", "size": 0, "sessions": [],
                          "pretrain": None, "job": base.id})
            for order in orders:
                for k in sizes:
                    sessions = orders_s[order][h][:k]
                    pre = pretrain_job(settings, corpus, sessions, seed, corpus_sha256=digest)
                    ft = adapt_job(settings, pre, h, evaluate=True, tasks=tasks)
                    jobs += [pre, ft]
                    cells.append({"seed": seed, "held_out": h, "order": order, "size": k, "sessions": sessions,
                                  "pretrain": pre.id, "job": ft.id})
    return jobs, cells


def log_linear_fit(x: Sequence[float], y: Sequence[float], x_full: float) -> dict[str, Any] | None:
    """Least-squares ``y = intercept + slope * log10(x)`` and its value at ``x_full``.

    Returns None with fewer than two distinct x. ``r2`` is the fit's coefficient of determination.
    """
    import numpy as np

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0)
    xs, ys = xs[keep], ys[keep]
    if np.unique(xs).size < 2:
        return None
    lx = np.log10(xs)
    slope, intercept = np.polyfit(lx, ys, 1)
    resid = ys - (intercept + slope * lx)
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    return {"intercept": float(intercept), "slope_per_log10": float(slope),
            "r2": 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else None,
            "x_full": float(x_full), "predicted_full": float(intercept + slope * math.log10(x_full))}


def _count(values: Sequence[float]) -> int:
    """How many values :func:`_mean_sd` averages (finite ones): the n beside each mean ± s.d."""
    from spikefm.eval.metrics import mean_sd

    return mean_sd(values)[2]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """:func:`spikefm.eval.metrics.mean_sd` with NaN for what is undefined (``_clean`` makes it
    null in the JSON, blank in tables): one value has no spread, its s.d. is not 0."""
    from spikefm.eval.metrics import mean_sd

    mean, sd, _ = mean_sd(values)
    return (float("nan") if mean is None else mean), (float("nan") if sd is None else sd)


def _improvement(score: float, base: float) -> float | None:
    if score is None or base is None or base == 0 or not math.isfinite(score) or not math.isfinite(base):
        return None
    return 100.0 * (score - base) / abs(base)


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summarize_scaling(cells: list[dict], records: dict[str, dict], *, metric: str, pool: Sequence[str],
                      orders: Sequence[str], sizes: Sequence[int], top_k: int,
                      metric_unit: str = "") -> dict[str, Any]:
    """Scores, improvements, Tables 1 and 3, Figure 4 and the more-sessions curves (module
    docstring). ``metric_unit`` (the family's ``task_score_unit``; empty when it has none) goes
    beside the metric on Figure 4's y axis."""
    full_k = len(pool)
    rows = []
    pre_trials: dict[str, int] = {}
    for c in cells:
        res = records[c["job"]]["result"]
        if c["pretrain"]:
            pre_trials[c["pretrain"]] = records[c["pretrain"]]["result"]["total_train_windows"]
        rows.append({**c, "trials": pre_trials.get(c["pretrain"], 0) if c["pretrain"] else 0,
                     "scores": res.get("scores", {}), "reference": res.get("reference"),
                     "best_val_loss": res["best_val_loss"]})
    base = {(r["seed"], r["held_out"]): r for r in rows if r["order"] == "single-session"}
    tasks = list(dict.fromkeys(t for r in rows for t in r["scores"]))
    if metric not in tasks:
        raise ValueError(f"--metric {metric!r} was not scored by any fine-tuned run; scored tasks: "
                         f"{', '.join(tasks) or 'none'} (a decoding task of a label the held-out sessions lack "
                         "scores nothing: check the label's name in spikefm corpus info, or add the task to --tasks)")
    held = list(dict.fromkeys(r["held_out"] for r in rows))
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    scores = []
    for r in rows:
        if r["order"] == "single-session":
            continue
        b = base[(r["seed"], r["held_out"])]["scores"]
        for t, v in r["scores"].items():
            scores.append({"held_out": r["held_out"], "order": r["order"], "size": r["size"], "seed": r["seed"],
                           "trials": r["trials"], "task": t, "score": v, "baseline": b.get(t),
                           "improvement_pct": _improvement(v, b.get(t)), "sessions": " ".join(r["sessions"])})

    def pick(h, order, k, task, field="score"):
        return [s[field] for s in scores if s["held_out"] == h and s["order"] == order and s["size"] == k
                and s["task"] == task]

    # Table 1: best improvement per order (mean over seeds at the best size), the top-k ranked model
    k_top = max([k for k in sizes if k <= top_k] or [min(sizes)])
    table1 = []
    for h in held:
        for order in orders:
            by_k = {k: _mean_sd(pick(h, order, k, metric, "improvement_pct")) for k in sizes}
            best_k = max(by_k, key=lambda k: (by_k[k][0] if math.isfinite(by_k[k][0]) else -math.inf))
            table1.append({"held_out": h, "model": f"{order} (best size)", "size": best_k,
                           "improvement_pct": _clean(by_k[best_k][0]), "sd": _clean(by_k[best_k][1])})
        if "ranked" in orders:
            m, s = _mean_sd(pick(h, "ranked", k_top, metric, "improvement_pct"))
            table1.append({"held_out": h, "model": f"top-{k_top} ranked", "size": k_top,
                           "improvement_pct": _clean(m), "sd": _clean(s)})
        if full_k in sizes:  # else no run pretrained on the full set (--sizes without 'all')
            m, s = _mean_sd(pick(h, orders[0], full_k, metric, "improvement_pct"))
            table1.append({"held_out": h, "model": "all sessions", "size": full_k, "improvement_pct": _clean(m),
                           "sd": _clean(s)})

    # Figure 4: per held-out session and order, the metric vs sessions and vs trials
    figure4: dict[str, Any] = {}
    curves = []
    y_label = f"{metric} ({metric_unit})" if metric_unit else metric
    for h in held:
        b_m, _ = _mean_sd([base[(s, h)]["scores"].get(metric) for s in seeds])
        entry: dict[str, Any] = {"baseline": _clean(b_m), "orders": {}}
        for order in orders:
            entry["orders"][order] = {}
            for axis in ("sessions", "trials"):
                pts = [s for s in scores if s["held_out"] == h and s["order"] == order and s["task"] == metric]
                xkey = "size" if axis == "sessions" else "trials"
                below = [p for p in pts if p["size"] < full_k]
                full_pts = [p for p in pts if p["size"] == full_k]
                x_full = _mean_sd([p[xkey] for p in full_pts])[0] if full_pts else (
                    float(full_k) if axis == "sessions" else float("nan"))
                xs, ys, sds, ns = [], [], [], []
                for k in sizes:
                    at = [p for p in pts if p["size"] == k]
                    if at:
                        xs.append(_mean_sd([p[xkey] for p in at])[0])
                        m, s = _mean_sd([p["score"] for p in at])
                        ys.append(_clean(m))
                        sds.append(_clean(s))
                        ns.append(_count([p["score"] for p in at]))
                fit = log_linear_fit([p[xkey] for p in below], [p["score"] for p in below], x_full) \
                    if math.isfinite(x_full) else None
                curve: dict[str, Any] = {"name": f"{h} {order} vs {axis}", "x": xs, "y": ys, "sd": sds, "n": ns,
                                         "x_label": "pretraining sessions" if axis == "sessions" else
                                         "pretraining trials", "y_label": y_label, "log_x": True}
                if full_pts:  # the measured full set, whether or not a fit extrapolates to it
                    curve["full"] = {"x": x_full, "y": _clean(_mean_sd([p["score"] for p in full_pts])[0])}
                if fit is not None:
                    lo = min(p[xkey] for p in below)
                    hi = max(p[xkey] for p in below)
                    grid = [lo * (hi / lo) ** (i / 20) for i in range(21)] if hi > lo else [lo]
                    line = [fit["intercept"] + fit["slope_per_log10"] * math.log10(g) for g in grid]
                    actual = _mean_sd([p["score"] for p in full_pts])[0] if full_pts else float("nan")
                    fit.update(actual_full=_clean(actual),
                               actual_minus_predicted=_clean(actual - fit["predicted_full"]))
                    curve["fit"] = {"x": grid, "y": line, "label": "linear fit on log x", **fit}
                    curve["extrapolation"] = {"x": [hi, x_full], "y": [line[-1], fit["predicted_full"]],
                                              "label": "extrapolation to the full set"}
                entry["orders"][order][axis] = curve
                curves.append(curve)
        figure4[h] = entry

    # Table 3: baseline vs pretrained (full set and top-k ranked), every task
    table3 = []
    for h in held:
        for t in tasks:
            b = _mean_sd([base[(s, h)]["scores"].get(t) for s in seeds])
            ref = base[(seeds[0], h)].get("reference") or {}
            rec = {"held_out": h, "task": t, "single-session": _clean(b[0]), "single-session sd": _clean(b[1])}
            for name, order, k in (("all sessions", orders[0], full_k), (f"top-{k_top} ranked", "ranked", k_top)):
                if order in orders and k in sizes:
                    m, s = _mean_sd(pick(h, order, k, t))
                    rec[name], rec[f"{name} sd"] = _clean(m), _clean(s)
            for name in ("smoothing", "oracle"):
                if t in (ref.get(name) or {}):
                    rec[name] = ref[name][t]
            table3.append(rec)

    # more sessions: every task, improvement in random order (or the first order asked for)
    order_ms = "random" if "random" in orders else orders[0]
    ms_curves = {}
    for t in tasks:
        xs, ys, sds, ns = [], [], [], []
        for k in sizes:
            vals = [s["improvement_pct"] for s in scores if s["order"] == order_ms and s["size"] == k
                    and s["task"] == t]
            if vals:
                m, sd = _mean_sd(vals)
                xs.append(k)
                ys.append(_clean(m))
                sds.append(_clean(sd))
                ns.append(_count(vals))
        ms_curves[t] = {"x": xs, "y": ys, "sd": sds, "n": ns}
    return {"metric": metric, "metric_unit": metric_unit or None, "full_size": full_k, "top_k": k_top, "table1": table1, "figure4": figure4,
            "curves": curves, "table3": table3,
            "more_sessions": {"order": order_ms, "y": "improvement over single-session (%)", "curves": ms_curves},
            "scores": scores}


#: The settings of a scaling study, written before its first job (hidden: not a result).
STARTED = ".scaling_settings.json"


def scaling_study(out: str | Path, corpus: str | Path, held_out: Sequence[str] | None = None, *,
                  pool: Sequence[str] | None = None, settings: StudySettings = LAPTOP,
                  sizes: str | Sequence[Any] = DEFAULT_SIZES, orders: Sequence[str] = ORDERS,
                  seeds: Sequence[int] = (0, 1), tasks: Sequence[str] | None = None,
                  metric: str = DEFAULT_METRIC, top_k: int = 5, rank_top_k: int = 3, executor=None,
                  progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run (or resume) the ranking, then the scaling study; write ``OUT/scaling.json``,
    ``OUT/ranking.json`` and their CSV and PNG files (module docstring).

    Args:
        out: study folder (jobs in ``OUT/jobs``, shared with a ranking in the same folder).
        corpus, held_out, pool, settings: as :func:`spikefm.experiments.rank_sessions.rank_sessions`.
        sizes: numbers of pretraining sessions (``"1,2,3,all"`` or a list).
        orders: session orders (:data:`ORDERS`).
        seeds: training seeds; the ranking uses the first.
        tasks: benchmark tasks (None: the family's defaults); ``metric`` must be one of them.
        metric: the task of Table 1 and Figure 4.
        top_k: the ranked model of Table 1's "top-k ranked" row (the largest size <= top_k).
        rank_top_k: k of the ranking's overlap and precision@k.
        executor: :func:`spikefm.experiments.jobs.make_executor`'s executor (None: one local worker).
    """
    from spikefm import families
    from spikefm.corpus.reader import manifest_sha256
    from spikefm.experiments.jobs import LocalExecutor, check_study_folder, check_study_settings, name_list, seed_list
    from spikefm.experiments.plots import plot_ranking, plot_scaling, plot_task_curves
    from spikefm.experiments.runs import check_held_out_validation, check_pretrain_spec, missing_decoding_label
    from spikefm.fileio import write_json_atomic
    from spikefm.train.runinfo import machine_info

    seeds = seed_list(seeds)
    orders = name_list(orders, "--orders", "ranked,random")  # one given twice was two curves of one
    families.require_finetuning(settings.family, "a scaling study needs", also=("task_scores",))
    families.require_session_choice(settings.family, "a scaling study needs (pretraining runs on subsets of sessions)")
    if not callable(getattr(families.get(settings.family), "task_scores", None)):
        families.task_scores(settings.family, {})  # its one-line refusal, before any job runs
    if tasks is not None:  # an unknown task failed every fine-tuning job, after the pretraining
        tasks = families.check_tasks(settings.family, name_list(tasks, "--tasks", "co-smoothing,forward-prediction"))
    if tasks is not None and metric not in tasks:  # before any job runs (it was found at the end)
        raise ValueError(f"--metric {metric!r} is not one of the scored tasks ({', '.join(tasks)}); add it to "
                         "--tasks or choose --metric among them")
    if tasks is None:  # the family's default tasks: an unknown metric is no task of the family
        try:
            families.check_tasks(settings.family, [metric])
        except ValueError as exc:  # the family's words, with the flag that gave the name
            raise ValueError(f"--metric: {exc}") from None
    out = Path(out)
    check_study_folder(out)
    held, pool = study_sessions(corpus, held_out, pool)
    size_list = parse_sizes(sizes, len(pool))
    warn_top_k(rank_top_k, len(pool), "--rank-top-k")
    if "ranked" in orders and top_k < min(size_list):  # Table 1's top-k model is one of the sizes trained
        warnings.warn(f"--top-k {top_k}: no size in --sizes ({','.join(map(str, size_list))}) is at most {top_k}, "
                      f"so Table 1's top-k ranked row is the top-{min(size_list)} model; add {top_k} to --sizes for "
                      f"a top-{top_k} model", RuntimeWarning, stacklevel=2)
    session_orders({h: list(pool) for h in held}, pool, orders, seeds[0])  # checks the names early
    digest = manifest_sha256(corpus)
    rjobs, adapt = ranking_jobs(settings, str(corpus), held, pool, seeds[0], corpus_sha256=digest)
    cfg = check_pretrain_spec(rjobs[0].spec, executor)  # before any folder is made or job runs
    check_held_out_validation(cfg, held)
    for h in held:  # a decoding task of a label the held-out session lacks was refused after every job
        problem = missing_decoding_label(corpus, h, tasks if tasks is not None else [metric], cfg)
        if problem is not None:
            label, why = problem
            flag = "--tasks" if tasks is not None and f"{label}-decoding" != metric else "--metric"
            raise ValueError(f"{flag} {label}-decoding: the held-out session {h}'s {why}; nothing was run: choose a "
                             "decoding task of a label it has, or another task")
    study_settings = {**settings.to_dict(), "seeds": seeds, "sizes": size_list, "orders": orders,
                      "tasks": list(tasks) if tasks else None, "metric": metric, "top_k": top_k,
                      "corpus": str(Path(corpus).resolve()), "corpus_sha256": digest, "held_out": held,
                      "pretraining_sessions": pool, "ranking_seed": seeds[0]}
    # the ranking's own settings, as rank-sessions writes them: the same rank-sessions command
    # then resumes in this folder (it was refused: the scaling's settings were recorded)
    rank_settings = ranking_settings(settings, corpus, digest, held, pool, seeds[0], rank_top_k)
    check_study_settings(out / "scaling.json", study_settings, views=("metric", "top_k"))
    # an unfinished study is bound to its settings too (its ranking files are written before
    # scaling.json; another study's run into the folder left them beside its own)
    check_study_settings(out / STARTED, study_settings, views=("metric", "top_k"))
    # a rank-sessions study in the folder, finished or not: its files would be replaced by this ranking's
    check_study_settings(out / "ranking.json", rank_settings, views=("top_k",))
    check_study_settings(out / RANKING_STARTED, rank_settings, views=("top_k",))
    executor = executor or LocalExecutor(1)
    t0 = time.perf_counter()
    with study_folder(out, executor):  # the executor first, then the folder
        write_json_atomic(out / STARTED, {"settings": study_settings})
        write_json_atomic(out / RANKING_STARTED, {"settings": rank_settings})
        records = run_jobs(rjobs, out / "jobs", executor, progress=progress, description="ranking sessions")
        truth_families = session_families(corpus, [*held, *pool])
        ranking = summarize_ranking(records, adapt, held, pool, truth_families, rank_top_k)
        write_ranking_files(out, ranking)
        plot_ranking(ranking, out / "ranking.png")
        ranked = {h: [r["session"] for r in rows] for h, rows in ranking["rankings"].items()}
        sjobs, cells = scaling_jobs(settings, str(corpus), ranked, pool, size_list, orders, seeds, tasks,
                                    corpus_sha256=digest)
        records.update(run_jobs(sjobs, out / "jobs", executor, progress=progress, description="scaling runs"))
        summary = summarize_scaling(cells, records, metric=metric, pool=pool, orders=orders, sizes=size_list,
                                    top_k=top_k, metric_unit=families.task_score_unit(settings.family, metric))
        all_jobs = {j.id for j in [*rjobs, *sjobs]}
        common = {"command": command or " ".join(sys.argv),
                  "settings": study_settings,
                  "jobs": len(all_jobs),
                  "job_wall_s": round(sum(records[j]["timings"]["wall_s"] for j in all_jobs), 1),
                  "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
        study = {"study": "scaling", **common, **{k: v for k, v in summary.items() if k != "scores"}}
        rank_ids = {j.id for j in rjobs}
        write_json_atomic(out / "ranking.json", {
            "study": "rank-sessions", **common, "part_of": "scaling", "settings": rank_settings, "jobs": len(rank_ids),
            "job_wall_s": round(sum(records[j]["timings"]["wall_s"] for j in rank_ids), 1), **ranking})
        _write_scaling_files(out, summary)
        plot_scaling(summary, out / "figure4.png")
        plot_task_curves(summary, out / "more_sessions.png")
        write_json_atomic(out / "scores.json", summary["scores"])
        write_json_atomic(out / "scaling.json", study)
    _print_summary(study)
    return study


def _write_scaling_files(out: Path, summary: dict) -> None:
    cols = ["held_out", "order", "size", "seed", "trials", "task", "score", "baseline", "improvement_pct", "sessions"]
    write_csv(out / "scores.csv", cols, [[s[c] for c in cols] for s in summary["scores"]])
    cols = ["held_out", "model", "size", "improvement_pct", "sd"]
    write_csv(out / "table1.csv", cols, [[r[c] for c in cols] for r in summary["table1"]])
    cols = list(dict.fromkeys(c for r in summary["table3"] for c in r))
    write_csv(out / "table3.csv", cols, [[r.get(c) for c in cols] for r in summary["table3"]])
    rows = []
    for h, entry in summary["figure4"].items():
        for order, axes in entry["orders"].items():
            for axis, c in axes.items():
                f = c.get("fit") or {}
                full = c.get("full") or {}
                rows.append([h, order, axis, f.get("intercept"), f.get("slope_per_log10"), f.get("r2"),
                             f.get("x_full", full.get("x")), f.get("predicted_full"),
                             f.get("actual_full", full.get("y"))])
    write_csv(out / "figure4_fits.csv", ["held_out", "order", "x", "intercept", "slope_per_log10", "r2", "x_full",
                                         "predicted_full", "actual_full"], rows)


def _print_summary(study: dict) -> None:
    from spikefm.tables import render_table

    print(render_table(["held out", "model", "sessions", "improvement %", "s.d."],
                       [[r["held_out"], r["model"], r["size"], r["improvement_pct"], r["sd"]] for r in study["table1"]],
                       title=f"Table 1: {study['metric']} improvement over the single-session model "
                             f"(mean, s.d. over seeds {','.join(map(str, study['settings']['seeds']))})"))
    if study["full_size"] not in study["settings"]["sizes"]:
        print(f"Table 1 has no 'all sessions' row: --sizes did not include all ({study['full_size']} sessions); "
              "add it to pretrain on the full set")
    rows = []
    for h, entry in study["figure4"].items():
        for order, axes in entry["orders"].items():
            f = axes["sessions"].get("fit")
            if f:
                rows.append([h, order, f["slope_per_log10"], f["predicted_full"], f.get("actual_full")])
    if rows:
        print(render_table(["held out", "order", "slope / decade", "extrapolated full", "actual full"], rows,
                           title="Figure 4: linear fit on log(number of sessions)"))
    else:
        below = [k for k in study["settings"]["sizes"] if k < study["full_size"]]
        print(f"Figure 4: no fit (a line on log(number of sessions) needs scores at two or more sizes below "
              f"the full set; --sizes gave {len(below)}: {', '.join(map(str, below)) or 'none'})")
