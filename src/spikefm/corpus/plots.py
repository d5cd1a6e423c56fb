"""``spikefm corpus plot``: figures describing a corpus, in the spirit of the Neural Pile paper's.

Writes PNGs into a folder:

- ``units_per_session.png``: histogram of the number of units per session, mean marked;
- ``session_length.png``: histogram of session durations (minutes), mean marked;
- ``token_marginals.png``: probability of counts 0..9 and of 10 or more together (log scale);
- ``raster_<source>.png``: one example raster per source dataset (its first row's units x the window
  of bins where they spike most, :func:`raster_window`).

matplotlib is imported lazily and used through its object API with the Agg canvas, so plotting
never changes the caller's pyplot backend.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..fileio import corpus_holding, spikefm_folder_kind, write_atomic
from .info import corpus_info, flat_counts
from .reader import Corpus, shard_errors

#: Counts 0..NUM_MARGINALS_PLOTTED-1 appear one by one in token_marginals.png, the rest in one bar.
NUM_MARGINALS_PLOTTED = 10


def new_figure(width_in: float = 6.4, height_in: float = 4.0, *, dpi: float = 100.0, layout: str | None = None):
    """A matplotlib figure on its own Agg canvas, drawn through the object API: the caller's pyplot
    backend (a notebook's inline one, say) is left as it is. Every spikefm figure is made here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _new_figure(width_in: float = 6.4, height_in: float = 4.0):
    return new_figure(width_in, height_in, dpi=120, layout="constrained")


#: The PNG ``Software`` text these figures carry, so a later run knows which files it may replace.
PNG_SOFTWARE = "spikefm corpus plot"


def _save(fig, path: Path) -> Path:
    """Write the figure to ``path`` atomically (temporary name, then rename)."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE}))


def _software(path: Path) -> str:
    """The PNG's ``Software`` text ("" for a file PIL cannot read as an image)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return str(im.info.get("Software", ""))
    except Exception:  # noqa: BLE001 - not an image PIL can read: not one of ours
        return ""


def _made_by_plotting(path: Path) -> bool:
    """``path`` is a PNG written by this module (or by matplotlib, as its figures were before they
    were marked): one that may be replaced."""
    software = _software(path)
    return software == PNG_SOFTWARE or software.startswith("Matplotlib")


def _check_targets(out_dir: Path, names: list[str]) -> None:
    """Refuse a folder of a corpus or run, and files of the figures' names that plotting did not write."""
    kind = spikefm_folder_kind(out_dir)
    if kind:
        raise ValueError(f"{out_dir}: holds {kind}; figures go into a folder of their own: "
                         "give another --out (e.g. figures)")
    foreign = [n for n in names if (out_dir / n).exists() and not _made_by_plotting(out_dir / n)]
    if foreign:
        raise ValueError(f"{out_dir / foreign[0]} exists and is not a figure of spikefm corpus plot"
                         f"{f' (nor are {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; nothing was "
                         "written: move it or give another --out")


def _refuse_corpus_internals(out_dir: Path) -> None:
    """Refuse a folder inside a corpus's own entries (``data/``, ``.versions/``...): the next
    build replaces them (figures in ``data/`` made it refuse to), and ``data/`` is what is shared."""
    held = corpus_holding(out_dir)
    if held is not None:
        corpus, entry = held
        raise ValueError(f"{out_dir} is inside the corpus {corpus} ({entry}/, which its builds replace and which "
                         f"holds its shards only); give a folder of its own for the figures, e.g. {corpus / 'figures'}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unknown"


def _histogram(values: np.ndarray, xlabel: str, title: str, unit: str, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure()
    ax = fig.add_subplot()
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:  # one distinct value: a narrow bar in a readable range
        width = max(0.05 * abs(lo), 0.5)
        bins = np.array([lo - width / 2, lo + width / 2])
        ax.set_xlim(lo - 6 * width, lo + 6 * width)
    elif lo > 0 and hi / lo > 100:
        bins = np.geomspace(lo, hi, 31)
        ax.set_xscale("log")
    else:
        bins = min(30, len(np.unique(values)))
    ax.hist(values, bins=bins, color="#4C72B0", edgecolor="white", linewidth=0.5)
    mean = float(values.mean())
    ax.axvline(mean, color="#C44E52", linestyle="--", linewidth=1.5,
               label=f"mean = {mean:,.1f} {unit}")
    ax.legend(loc="best", frameon=False,
              title=f"{values.size:,} session" + ("s" if values.size != 1 else ""))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if np.all(values == np.round(values)) and ax.get_xscale() == "linear":  # e.g. units per session
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sessions")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def marginal_bars(probs: Sequence[float]) -> tuple[list[str], np.ndarray]:
    """The token-marginals figure's bars: counts 0 .. ``NUM_MARGINALS_PLOTTED - 1`` one by one,
    then one bar ``>=NUM_MARGINALS_PLOTTED`` for the rest (at coarse bins most of the mass), so
    the bars hold every cell. Returns (labels, probabilities)."""
    n = NUM_MARGINALS_PLOTTED
    probs = np.asarray(probs, dtype=np.float64)
    values = np.zeros(n + 1)
    values[:min(n, probs.size)] = probs[:n]
    values[n] = probs[n:].sum()
    return [str(i) for i in range(n)] + [f">={n}"], values


def _marginals(probs: list[float], path: Path, sampled: bool) -> Path:
    fig = _new_figure()
    ax = fig.add_subplot()
    labels, p = marginal_bars(probs)
    k = np.arange(len(labels))
    ax.bar(k, np.where(p > 0, p, np.nan), color="#4C72B0")
    ax.set_yscale("log")
    for x, y in zip(k, p):
        if y > 0:
            ax.text(x, y * 1.3, f"{y:.2g}", ha="center", va="bottom", fontsize=8)
    positive = p[p > 0]
    if positive.size:
        ax.set_ylim(positive.min() / 3, 3.0)
        for x in k[p == 0]:  # log scale cannot show zero; say it
            ax.text(x, positive.min() / 2.5, "0", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(k, labels)
    ax.set_xlabel("spike count in a bin (token)")
    ax.set_ylabel("probability")
    ax.set_title("Marginal token probabilities" + (" (sampled rows)" if sampled else ""))
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _example_rows(corpus: Corpus) -> dict[str, dict]:
    """First row (in shard order, train first) of each source: {source: {counts, session_id,
    t_start_ms, bin_ms}}. Reads the source column of each shard, then one row group per source."""
    wanted = {s.get("source_dataset") or "" for s in corpus.sessions}
    found: dict[str, dict] = {}
    for split in corpus.manifest["splits"]:
        for shard in corpus.shards(split):
            if len(found) == len(wanted):
                return found
            with shard_errors(shard):
                pf = pq.ParquetFile(shard)
                sources = pf.read(columns=["source_dataset"]).column(0)
                uniques = pc.unique(sources).to_pylist()
                todo = [s for s in uniques if (s or "") not in found]
                if not todo:
                    continue
                names = set(pf.schema_arrow.names)
                cols = [c for c in ("spike_counts", "session_id", "source_dataset", "t_start_ms",
                                    "bin_ms") if c in names]
                group_starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                                                for i in range(pf.num_row_groups)])
                for src in todo:
                    mask = pc.is_null(sources) if src is None else pc.equal(sources, src)
                    row = int(pc.index(mask, True).as_py())
                    g = int(np.searchsorted(group_starts, row, side="right") - 1)
                    t = pf.read_row_group(g, columns=cols).slice(row - group_starts[g], 1)
                    col = t.column("spike_counts").combine_chunks()
                    num_units = int(col.value_lengths()[0].as_py())
                    flat = flat_counts(col)
                    found[src or ""] = {
                        "counts": flat.reshape(num_units, flat.size // max(num_units, 1)),
                        "session_id": t.column("session_id")[0].as_py(),
                        "t_start_ms": t.column("t_start_ms")[0].as_py() if "t_start_ms" in cols else 0,
                        "bin_ms": t.column("bin_ms")[0].as_py() if "bin_ms" in cols else corpus.bin_ms,
                    }
    return found


def raster_window(counts: np.ndarray, max_units: int, max_bins: int) -> int:
    """First bin of the example raster's window: of the row's windows of ``max_bins`` bins (every
    start on a grid of a quarter window, and the row's last window), the one where the first
    ``max_units`` units spike most (the earliest of equals). The row's first window could be
    nearly empty (a sparse session, a quiet start) and show a blank raster."""
    num_bins = counts.shape[1]
    if num_bins <= max_bins:
        return 0
    step = max(1, max_bins // 4)
    starts = sorted({*range(0, num_bins - max_bins + 1, step), num_bins - max_bins})
    per_bin = np.concatenate([[0], np.cumsum(counts[:max_units].sum(axis=0, dtype=np.int64))])
    totals = [per_bin[s + max_bins] - per_bin[s] for s in starts]
    return starts[int(np.argmax(totals))]


def _raster(source: str, ex: dict, num_units_total: int, path: Path, max_units: int,
            max_bins: int) -> Path:
    from matplotlib.ticker import MaxNLocator

    first = raster_window(ex["counts"], max_units, max_bins)
    counts = ex["counts"][:max_units, first:first + max_bins]
    n_units, n_bins = counts.shape
    bin_ms = int(ex["bin_ms"])
    t0_s = ((ex["t_start_ms"] or 0) + first * bin_ms) / 1000.0
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    vmax = max(1.0, float(np.percentile(counts, 99.5))) if counts.size else 1.0
    im = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0,
                   vmax=vmax, extent=(t0_s, t0_s + n_bins * bin_ms / 1000.0, n_units - 0.5, -0.5))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole units (one drew -0.4 ... 0.4)
    cb = fig.colorbar(im, ax=ax, pad=0.01, ticks=MaxNLocator(integer=True))
    cb.set_label("spike count" + (f" (clipped at {vmax:g})" if vmax < counts.max() else ""))
    ax.set_xlabel(f"time (s), {bin_ms} ms bins")
    ax.set_ylabel("unit")
    ax.set_title(f"{source or 'unknown source'}: {ex['session_id']}\n"
                 f"{n_units} of {num_units_total} units, {n_bins} bins", fontsize=10)
    return _save(fig, path)


def plot_corpus(corpus: Corpus, out_dir: str | Path, *, max_raster_units: int = 100,
                max_raster_bins: int = 500, max_rows: int | None = None,
                info: dict | None = None) -> list[Path]:
    """Write the corpus figures (see the module docstring) as PNGs into ``out_dir``.

    Args:
        corpus: an opened :class:`spikefm.Corpus`.
        out_dir: folder for the PNGs (created if missing); earlier figures of the same names are
            replaced atomically, an earlier plot's rasters of sources this corpus lacks removed;
            other files of those names, or a corpus or run folder, are refused.
        max_raster_units: at most this many units (the first ones) in each example raster.
        max_raster_bins: at most this many time bins in each raster (the window of the row where its
            units spike most, :func:`raster_window`).
        max_rows: rows scanned for the token marginals (see :func:`corpus_info`); ignored when
            ``info`` is given.
        info: a :func:`corpus_info` result to reuse instead of scanning the corpus again.

    Returns:
        The paths written, in the order listed in the module docstring.
    """
    if max_raster_units < 1 or max_raster_bins < 1:
        raise ValueError("max_raster_units and max_raster_bins must be >= 1, got "
                         f"{max_raster_units} and {max_raster_bins}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder; give a folder for the figures")
    _refuse_corpus_internals(out_dir)
    sessions = corpus.sessions
    if not sessions:
        raise ValueError(f"{corpus.path}: the corpus has no sessions; nothing to plot")
    corpus.require_session_keys("num_units", "num_bins", needed_by="corpus plot")
    examples: list[tuple[str, dict, str]] = []  # (source, example row, file name)
    used: set[str] = set()
    for source, ex in sorted(_example_rows(corpus).items()):
        if ex["counts"].size == 0:
            continue
        name = _slug(source)
        while name in used:  # two sources that differ only in odd characters
            name += "_"
        used.add(name)
        examples.append((source, ex, f"raster_{name}.png"))
    if out_dir.is_dir():
        _check_targets(out_dir, ["units_per_session.png", "session_length.png", "token_marginals.png",
                                 *(name for _, _, name in examples)])
    info = info if info is not None else corpus_info(corpus, max_rows=max_rows)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = [
        _histogram(np.array([s["num_units"] for s in sessions]), "units per session",
                   "Units per session", "units", out_dir / "units_per_session.png"),
        _histogram(np.array([s["num_bins"] * s.get("bin_ms", corpus.bin_ms) / 60_000.0
                             for s in sessions]), "session length (minutes)",
                   "Session length", "min", out_dir / "session_length.png"),
    ]
    cs = info["count_stats"]
    if cs["cells_scanned"]:
        written.append(_marginals(cs["token_probabilities"], out_dir / "token_marginals.png",
                                  cs["sampled"]))
    units_of = {s["session_id"]: int(s["num_units"]) for s in sessions}
    for source, ex, name in examples:
        written.append(_raster(source, ex, units_of.get(ex["session_id"], ex["counts"].shape[0]),
                               out_dir / name, max_raster_units, max_raster_bins))
    for old in out_dir.glob("raster_*.png"):  # an earlier plot's source that this corpus lacks
        if old not in written and _software(old) == PNG_SOFTWARE:
            old.unlink()
    return written
