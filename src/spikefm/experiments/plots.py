"""PNG figures of the ranking and scaling studies (matplotlib, Agg; written atomically).

``spikefm report STUDY_DIR`` draws the same numbers interactively from the study JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_ranking", "plot_scaling", "plot_task_curves"]

_ORDER_COLORS = {"ranked": "tab:blue", "random": "tab:orange", "reverse": "tab:green"}


def _figure(figsize: tuple[float, float]):
    from spikefm.corpus.plots import new_figure  # its own canvas: the caller's backend is left alone

    return new_figure(*figsize)


def _log_x(ax, xs) -> None:
    """A log x axis with a tick, labelled as a plain integer, at each x value ``xs`` plotted (a log
    locator put a labelled tick only at powers of ten: sizes 1, 2, 3 showed "1.0" alone and a
    trials axis between two powers of ten none)."""
    import math

    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    ax.set_xscale("log")
    ticks = sorted({float(x) for x in xs if x is not None and math.isfinite(x) and x > 0})
    if not ticks:
        return
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{round(x):d}" for x in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) > 6:
        ax.tick_params(axis="x", labelrotation=45)


def _save(fig, path: Path) -> Path:
    from spikefm.fileio import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path


#: A ranking bar's colour by its session's ``same_family`` (own family of the held-out session,
#: another, unknown): the colours and words of the HTML report's ranking chart.
RANKING_COLORS = {True: ("#2ca02c", "own family"), False: ("#ff7f0e", "other family"),
                  None: ("#9aa5b1", "family unknown")}


def plot_ranking(summary: dict[str, Any], path: str | Path) -> Path:
    """One panel per held-out session: each pretraining session's score (minus the best
    validation loss after fine-tuning its frozen core), best first, drawn from a little below the
    lowest score;
    colour = whether the session shares the held-out session's ground-truth family (as in the
    HTML report), with a legend."""
    from matplotlib.patches import Patch

    rankings = summary["rankings"]
    n = len(rankings)
    fig = _figure((max(6.0, 0.45 * max(len(r) for r in rankings.values()) + 2), 2.6 * n))
    axes = fig.subplots(n, 1, squeeze=False)
    for ax, (h, rows) in zip(axes[:, 0], rankings.items()):
        scores = [r["score"] for r in rows]
        span = max(scores) - min(scores)
        base = min(scores) - 0.05 * (span or abs(min(scores)) or 1.0)  # the lowest bar stays visible
        kinds = [r.get("same_family") if "family" in r else None for r in rows]
        ax.bar(range(len(rows)), [s - base for s in scores], color=[RANKING_COLORS[k][0] for k in kinds])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["session"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"score above {base:.4g}\n(score: minus val. loss)", fontsize=8)
        ax.legend(handles=[Patch(color=RANKING_COLORS[k][0], label=RANKING_COLORS[k][1])
                           for k in dict.fromkeys(kinds)], fontsize=7, loc="upper right")
        title = f"held out: {h}"
        gt = summary.get("ground_truth")
        if gt:
            p = gt["precision"][h]
            k = summary["top_k"]
            title += f" (family {p['family']}; precision@{k} {p['precision_at_' + str(k)]:.2f})"
        ax.set_title(title, fontsize=9)
    fig.suptitle("pretraining sessions ranked by validation loss of the frozen core (score = minus that loss; "
                 "higher = better)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def _spread(sd: list | None) -> list | None:
    """Error bars from a curve's s.d. list; a point of one value (s.d. None) gets none."""
    return None if sd is None else [float("nan") if v is None else v for v in sd]


def _curve_points(ax, curve: dict, color: str, label: str) -> None:
    ax.errorbar(curve["x"], curve["y"], yerr=_spread(curve.get("sd")), fmt="o", color=color, label=label, capsize=3)
    fit = curve.get("fit")
    if fit:
        ax.plot(fit["x"], fit["y"], "-", color=color, alpha=0.7)
    ext = curve.get("extrapolation")
    if ext:
        ax.plot(ext["x"], ext["y"], "--", color=color, alpha=0.7)
    full = curve.get("full")
    if full and full.get("y") is not None:
        ax.plot([full["x"]], [full["y"]], marker="*", markersize=14, color=color, markeredgecolor="black",
                linestyle="none")


def plot_scaling(summary: dict[str, Any], path: str | Path) -> Path:
    """Figure 4 analogue: the chosen metric vs number of pretraining sessions (left) and vs their
    total training trials (right), per held-out session (rows) and order (colours); mean ± s.d.
    over seeds, the linear fit on log x (solid), its extrapolation to the full set (dashed) and
    the full-set model (star); the single-session baseline as a grey line."""
    per_held = summary["figure4"]
    n = len(per_held)
    fig = _figure((11, 3.4 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, (h, entry) in enumerate(per_held.items()):
        for col, axis in enumerate(("sessions", "trials")):
            ax = axes[row, col]
            xs = []
            for order, curves in entry["orders"].items():
                _curve_points(ax, curves[axis], _ORDER_COLORS.get(order, "tab:purple"), order)
                xs += [*curves[axis]["x"], (curves[axis].get("full") or {}).get("x")]
            if entry.get("baseline") is not None:
                ax.axhline(entry["baseline"], color="gray", linestyle=":", label="single-session")
            _log_x(ax, xs)
            ax.set_xlabel("pretraining sessions" if axis == "sessions" else "pretraining trials (train windows)")
            unit = summary.get("metric_unit")  # on a line of its own: one line overran the panel
            ax.set_ylabel(f"{summary['metric']}\n({unit})" if unit else summary["metric"], fontsize=8)
            ax.set_title(f"held out {h}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle("score vs pretraining data: fit on log x (solid), extrapolation (dashed), full set (star)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_task_curves(summary: dict[str, Any], path: str | Path) -> Path:
    """The "more sessions" curves: every task's score (percent improvement over the
    single-session model, mean over held-out sessions and seeds) vs sessions in random order."""
    curves = summary["more_sessions"]["curves"]
    fig = _figure((7, 4))
    ax = fig.subplots()
    for task, c in curves.items():
        ax.errorbar(c["x"], c["y"], yerr=_spread(c.get("sd")), marker="o", capsize=3, label=task)
    ax.axhline(0.0, color="gray", linestyle=":")
    _log_x(ax, [x for c in curves.values() for x in c["x"]])
    ax.set_xlabel(f"pretraining sessions ({summary['more_sessions']['order']} order)")
    ax.set_ylabel("improvement over single-session (%)")
    ax.legend(fontsize=7)
    ax.set_title("more sessions: every task", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
