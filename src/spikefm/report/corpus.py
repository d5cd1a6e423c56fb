"""The corpus section: what ``spikefm corpus info`` prints, as tables and figures, plus rasters.

Numbers come from :func:`spikefm.corpus.info.corpus_info` (cells point into its dict with source
name ``corpus``); rasters are the first bins of the first rows :meth:`Corpus.iter_rows` yields.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from spikefm.corpus.info import _listed, _skipped, corpus_info
from spikefm.corpus.reader import Corpus
from spikefm.report import charts
from spikefm.report.page import Num, Page, pointer
from spikefm.report.provenance import Provenance

#: Sessions drawn as rasters, and the bins shown of each.
RASTER_SESSIONS = 3
RASTER_BINS = 1500
#: Above this many sessions, per-session bars become histograms.
MAX_SESSION_BARS = 120
#: Count values shown one by one in the marginals (the rest pooled into one bar).
MARGINAL_VALUES = 16


def _n(info: dict, *keys, spec: str = ".4f") -> Num:
    value = info
    for k in keys:
        value = value[k]
    return Num(value, spec, src="corpus", path=pointer(*keys))


def corpus_section(page: Page, corpus_dir: str | Path, prov: Provenance, *,
                   title: str = "Corpus") -> dict:
    """Add the corpus section for ``corpus_dir``; returns the :func:`corpus_info` dict."""
    corpus = Corpus(corpus_dir)
    info = corpus_info(corpus)
    m = corpus.manifest
    sec = page.section("corpus", title)
    sec.note(f"{corpus.path}: {info['num_sessions']} sessions at {info['bin_ms']} ms bins.")
    cs = info["count_stats"]
    sec.kv([
        ("sessions", _n(info, "num_sessions")),
        ("human sessions", _n(info, "num_human_sessions")),
        ("subjects", _n(info, "num_subjects")),
        ("sources", _n(info, "num_sources")),
        ("species", ", ".join(f"{k} ({v})" for k, v in info["species"].items()) or "-"),
        ("units in all", _n(info, "units", "total", spec=",.0f")),
        ("units per session (mean)", _n(info, "units", "mean", spec=",.1f")),
        ("units per session (min / max)", f"{info['units']['min'] or 0:,.0f} / {info['units']['max'] or 0:,.0f}"),
        ("recording hours", _n(info, "hours")),
        ("tokens (units x bins)", _n(info, "num_tokens")),
        ("zero bins (fraction)", _n(info, "count_stats", "fraction_zero")),
        ("mean count per bin", _n(info, "count_stats", "mean_count")),
        ("cells scanned", _n(info, "count_stats", "cells_scanned")),
        ("clipped bins (> 255)", _n(info, "clipped_bins")),
        # what the sessions hold beyond counts, as spikefm corpus info lists it
        ("trial tables", _listed(info.get("trial_tables"),
                                 lambda k, t: f"{k} ({t['trials']:,} trials in {t['sessions']:,} sessions)")),
        ("behaviour", _listed(info.get("behavior"), lambda k, n: f"{k} ({n:,} sessions)")),
        ("skipped inputs", f"{len(info.get('skipped') or [])}" + (f", e.g. {_skipped(info['skipped'][0])}"
                                                                  if info.get("skipped") else "")),
    ], key="corpus-overview")
    if cs["sampled"]:
        sec.note(f"count statistics from the first {cs['rows_scanned']:,} rows", warn=True)
    sec.table(["split", "rows", "sessions", "tokens"],
              [[name, _n(info, "splits", name, "rows"), _n(info, "splits", name, "sessions"),
                _n(info, "splits", name, "tokens")] for name in info["splits"]],
              caption="splits", key="corpus-splits")
    sec.table(["source", "sessions", "subjects", "hours", "tokens", "species"],
              [[name, _n(info, "sources", name, "sessions"), _n(info, "sources", name, "subjects"),
                _n(info, "sources", name, "hours"), _n(info, "sources", name, "tokens"),
                ", ".join(s["species"])] for name, s in info["sources"].items()],
              caption="sources", key="corpus-sources")

    sessions = m["sessions"]
    ids = [s["session_id"] for s in sessions]
    units = [int(s["num_units"]) for s in sessions]
    minutes = [int(s["num_bins"]) * int(s.get("bin_ms", info["bin_ms"])) / 60_000 for s in sessions]
    if len(sessions) <= MAX_SESSION_BARS:
        sec.figure(charts.bars(ids, [charts.bar_series("units", units)], y_label="units",
                               x_label="session"), "Units per session (hover for the session).")
        sec.figure(charts.bars(ids, [charts.bar_series("minutes", minutes)], y_label="minutes",
                               x_label="session"), "Recording length per session.")
    else:
        sec.figure(charts.hist(units, x_label="units per session", y_label="sessions"),
                   "Units per session.")
        sec.figure(charts.hist(minutes, x_label="minutes per session", y_label="sessions"),
                   "Recording length per session.")
    species = Counter(s.get("species") or "unknown" for s in sessions)
    sec.figure(charts.bars(list(species), [charts.bar_series("sessions", list(species.values()))],
                           y_label="sessions", x_label="species"), "Sessions per species.")
    regions: Counter = Counter()
    for s in sessions:
        regions.update({r or "unknown": int(n) for r, n in (s.get("regions") or {}).items()})
    if regions:
        top = regions.most_common(40)
        sec.figure(charts.bars([r for r, _ in top], [charts.bar_series("units", [n for _, n in top])],
                               y_label="units", x_label="region"),
                   "Units per brain region, all sessions" + (" (the 40 largest)" if len(regions) > 40 else "") + ".")
    if cs["cells_scanned"]:
        probs = cs["token_probabilities"]
        shown = list(range(MARGINAL_VALUES))
        cats = [str(k) for k in shown] + [f">={MARGINAL_VALUES}"]
        vals = [probs[k] for k in shown] + [sum(probs[MARGINAL_VALUES:])]
        sec.figure(charts.bars(cats, [charts.bar_series("probability", vals)], y_label="probability",
                               x_label="spike count in a bin", log_y=True),
                   "Token marginals: probability of each count value (log scale).")
    sec.end_figures()
    _rasters(sec, corpus)
    prov.add(f"corpus {corpus.path}", [
        ("manifest sha256", corpus.manifest_hash),
        ("schema version", m.get("schema_version")),
        ("built by spikefm", m.get("spikefm_version")),
        ("created (UTC)", m.get("created_utc")),
        ("skipped inputs", len(m.get("skipped") or [])),
    ], details={"build settings": m.get("build"), "skipped inputs": m.get("skipped") or None})
    return info


def _rasters(sec, corpus: Corpus) -> None:
    """Rasters of the first rows of up to :data:`RASTER_SESSIONS` sessions, units sorted by region."""
    seen: set[str] = set()
    for split in corpus.manifest["splits"]:
        for row in corpus.iter_rows(split):
            if row.session_id in seen:
                continue
            seen.add(row.session_id)
            counts = np.asarray(row.spike_counts[:, :RASTER_BINS])
            regions = list(row.unit_regions) or [""] * row.num_units
            order = np.argsort(np.asarray(regions, dtype=object).astype(str), kind="stable")
            labels = [f"{i} ({regions[i]})" if regions[i] else str(i) for i in order]
            t0 = row.t_start_ms / 1000
            sec.figure(charts.raster(counts[order], dt_s=row.bin_ms / 1000, x0_s=t0, row_labels=labels),
                       f"Raster of {row.session_id} ({split} split), {counts.shape[1]} bins from "
                       f"{t0:.2f} s, units sorted by region (darker = more spikes).", wide=True)
            if len(seen) >= RASTER_SESSIONS:
                return
