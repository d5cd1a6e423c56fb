"""Figure specs for the page's chart script (:mod:`spikefm.report.assets`), with size budgets.

Each function returns a JSON-able dict. Long traces are decimated to :data:`MAX_POINTS` points
per series and rasters to :data:`MAX_RASTER_CELLS` cells (bins are summed, then clipped to the
display range), so that no report comes near the 5 MB limit.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Sequence

import numpy as np

#: Points kept per line series (every k-th point, the last one always kept).
MAX_POINTS = 1500
#: Cells kept per raster (units x bins), after summing neighbouring bins.
MAX_RASTER_CELLS = 120_000


def _floats(values: Sequence[Any]) -> list[float | None]:
    out = []
    for v in values:
        out.append(None if v is None else float(v))
    return out


def series(name: str, x: Sequence[Any], y: Sequence[Any], *, style: str = "line",
           color: str | None = None, markers: bool = True) -> dict:
    """One series of an :func:`xy` chart; ``style`` is ``line``, ``dash``, ``dot`` or ``points``.
    A short ``line`` (at most 60 points) marks each point, unless ``markers`` is False (a fitted
    curve sampled at points that are not measurements). Series longer than :data:`MAX_POINTS`
    keep every k-th point and the last."""
    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"series {name!r}: x has {len(x)} values, y has {len(y)}")
    if len(x) > MAX_POINTS:
        step = math.ceil(len(x) / MAX_POINTS)
        keep = list(range(0, len(x), step))
        if keep[-1] != len(x) - 1:
            keep.append(len(x) - 1)
        x, y = [x[i] for i in keep], [y[i] for i in keep]
    out = {"name": name, "x": _floats(x), "y": _floats(y), "style": style}
    if color:
        out["color"] = color
    if not markers:
        out["markers"] = False
    return out


def xy(series_list: Sequence[dict], *, x_label: str, y_label: str, log_x: bool = False,
       log_y: bool = False, hlines: Sequence[dict] = (), vlines: Sequence[dict] = (),
       link: str | None = None, height: int | None = None, x_ticks: Sequence[float] | None = None) -> dict:
    """Lines/points on linear or log axes. ``hlines``/``vlines``: ``{"y"|"x", "name"}``.
    ``x_ticks``: the x values to mark (e.g. the numbers of sessions plotted, so that no tick
    falls between two whole numbers); default: evenly spaced ticks."""
    spec = {"kind": "xy", "series": list(series_list), "x_label": x_label, "y_label": y_label,
            "log_x": log_x, "log_y": log_y, "hlines": list(hlines), "vlines": list(vlines)}
    if x_ticks is not None:
        spec["x_ticks"] = sorted({float(t) for t in x_ticks})
    if link:
        spec["link"] = link
    if height:
        spec["height"] = height
    return spec


def bar_series(name: str, values: Sequence[Any], *, err: Sequence[Any] | None = None,
               lo: Sequence[Any] | None = None, hi: Sequence[Any] | None = None,
               points: Sequence[Sequence[Any]] | None = None, color: str | None = None,
               colors: Sequence[str | None] | None = None) -> dict:
    """One series of a :func:`bars` chart: a value per category, optional symmetric errors
    (``err``) or intervals (``lo``, ``hi``), optional individual points per category, and
    optional ``colors`` of its bars one by one (say what they mean with :func:`bars`' ``legend``)."""
    out: dict = {"name": name, "values": _floats(values)}
    if err is not None:
        out["err"] = _floats(err)
    if lo is not None and hi is not None:
        out["lo"], out["hi"] = _floats(lo), _floats(hi)
    if points is not None:
        out["points"] = [_floats(p) for p in points]
    if color:
        out["color"] = color
    if colors is not None:
        if len(colors) != len(values):
            raise ValueError(f"bar series {name!r} has {len(values)} values and {len(colors)} colours")
        out["colors"] = list(colors)
    return out


def far_from_zero(values: Sequence[Any]) -> bool:
    """True when the finite ``values`` share a sign and lie further from 0 than they spread (as
    scores of -0.3638 and -0.3664 do): bars drawn from 0 would make them look equal, so chart them
    with ``bars(..., zero=False)``."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if len(v) < 2 or not (all(x > 0 for x in v) or all(x < 0 for x in v)):
        return False
    return min(abs(x) for x in v) > max(v) - min(v)


def bars(categories: Sequence[Any], series_list: Sequence[dict], *, y_label: str,
         x_label: str = "", hlines: Sequence[dict] = (), log_y: bool = False,
         points_label: str = "points", height: int | None = None, zero: bool = True,
         legend: Sequence[dict] | None = None) -> dict:
    """Grouped bars: one group per category, one bar per series.

    ``zero=False``: the value axis spans the values only (bars grow from its start, not from 0;
    say so in the caption). ``legend``: ``[{"name", "color"}]`` shown instead of the series' names
    (for bars coloured one by one, :func:`bar_series`' ``colors``)."""
    for s in series_list:
        if len(s["values"]) != len(categories):
            raise ValueError(f"bar series {s['name']!r} has {len(s['values'])} values for "
                             f"{len(categories)} categories")
    spec = {"kind": "bars", "categories": [str(c) for c in categories], "series": list(series_list),
            "y_label": y_label, "x_label": x_label, "hlines": list(hlines), "log_y": log_y,
            "points_label": points_label}
    if not zero:
        spec["zero"] = False
    if legend is not None:
        spec["legend"] = [dict(item) for item in legend]
    if height:
        spec["height"] = height
    return spec


def hist(values: Sequence[float] | np.ndarray, *, x_label: str, y_label: str = "count",
         bins: int = 30, vlines: Sequence[dict] = ()) -> dict:
    """Histogram of the finite ``values`` (non-finite ones are left out; say so in the caption)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        edges, counts = np.array([0.0, 1.0]), np.array([0])
    else:
        lo, hi = float(v.min()), float(v.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"kind": "hist", "edges": [float(e) for e in edges], "counts": [int(c) for c in counts],
            "x_label": x_label, "y_label": y_label, "vlines": list(vlines)}


def _b64(levels: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(levels, dtype=np.uint8).tobytes()).decode("ascii")


def raster(matrix_NT: np.ndarray, *, dt_s: float, x0_s: float = 0.0, x_label: str = "time (s)",
           y_label: str = "unit", kind: str = "counts", vmax: float | None = None,
           row_labels: Sequence[str] | None = None, vlines: Sequence[dict] = (),
           link: str | None = None, value_name: str | None = None, height: int | None = None,
           max_cells: int = MAX_RASTER_CELLS) -> dict:
    """A rows x bins matrix as a raster (``kind="counts"``: white for 0, grey to black up to
    ``vmax``, default the largest count; pass one ``vmax`` to rasters shown side by side so equal
    counts look alike) or a heat map (``kind="rates"``: a colour ramp from 0 to ``vmax``, default
    the 99.5th percentile).

    Neighbouring bins are summed when rows x bins exceeds ``max_cells`` (``dx`` grows to match).
    NaN shows as 0. Integer counts up to 255 are stored exactly for the hover read-out; other
    values as uint8 levels ``round(value / vmax * 255)`` with ``scale = vmax / 255``, and the spec
    keeps ``vmax`` (the value of the top colour, per summed bin) and, when it was not given,
    ``vmax_is`` (how it was chosen) for the colour bar and the figure's caption.
    """
    if kind not in ("counts", "rates"):
        raise ValueError(f"kind must be 'counts' or 'rates', got {kind!r}")
    m = np.asarray(matrix_NT, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"a raster needs a non-empty 2-D array (rows, bins), got shape {m.shape}")
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    rows, cols = m.shape
    group = max(1, math.ceil(rows * cols / max_cells))
    if group > 1:
        usable = max(group, (cols // group) * group)
        m = np.pad(m, ((0, 0), (0, max(0, usable - cols))))[:, :usable]
        m = m.reshape(rows, usable // group, group).sum(axis=2)
        cols, dt_s = m.shape[1], dt_s * group
    spec: dict = {"kind": "raster", "colors": kind, "rows": int(rows), "cols": int(cols),
                  "x0": float(x0_s), "dx": float(dt_s), "bins_summed": int(group),
                  "x_label": x_label, "y_label": y_label, "vlines": list(vlines),
                  "value_name": value_name or ("count" if kind == "counts" else "rate")}
    top = float(m.max())
    if kind == "counts" and top <= 255 and np.all(m == np.round(m)):
        spec["values"] = _b64(m)  # exact counts for the read-out
        black = max(top if vmax is None else float(vmax) * group, 1.0)  # summed bins sum vmax too
        spec["data"] = _b64(np.where(m > 0, np.minimum(60 + 195 * m / black, 255), 0))
        spec["scale"] = 1.0
    else:
        if vmax is None:
            vmax = float(np.percentile(m, 99.5)) if kind == "rates" else top
            spec["vmax_is"] = "the 99.5th percentile" if kind == "rates" else "the largest value"
        vmax = max(float(vmax), 1e-12)
        spec["data"] = _b64(np.clip(np.round(m / vmax * 255), 0, 255))
        spec["scale"] = vmax / 255
        spec["vmax"] = vmax
    if row_labels is not None:
        spec["row_labels"] = [str(r) for r in row_labels]
    if link:
        spec["link"] = link
    if height:
        spec["height"] = height
    return spec
