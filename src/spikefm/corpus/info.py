"""``spikefm corpus info``: what a corpus holds, in numbers (the Neural Pile paper's Table 1 and its
token statistics, for any spikefm corpus).

Session-level numbers (sessions, subjects, units, hours, tokens per split, clipped bins) come from
``manifest.json``; the count statistics (fraction of zero bins, marginal probability of each count
0..255) come from one pass over the spike counts, one ``np.bincount`` per record batch.

Example::

    from spikefm import Corpus
    from spikefm.corpus.info import corpus_info, format_info
    print(format_info(corpus_info(Corpus("my_corpus"))))
"""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..tables import render_table
from .reader import Corpus, shard_errors
from .session import is_human_species

#: Number of possible count values (uint8).
NUM_COUNT_VALUES = 256
#: How many leading marginal probabilities the text report shows.
NUM_MARGINALS_SHOWN = 6


def flat_counts(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """All count cells of a ``list<list<uint8>>`` column as one flat uint8 array (zero-copy view
    when the column has one chunk).

    Works on sliced arrays (record batches cut out of a row group): only the cells of the rows in
    ``col`` are returned.
    """
    if isinstance(col, pa.ChunkedArray):
        parts = [flat_counts(c) for c in col.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    if len(col) == 0:
        return np.zeros(0, np.uint8)
    outer = col.offsets.to_numpy()
    inner_list = col.values
    inner = inner_list.offsets.to_numpy()
    v0, v1 = int(inner[outer[0]]), int(inner[outer[-1]])
    values = inner_list.values.slice(v0, v1 - v0)
    return values.to_numpy(zero_copy_only=values.null_count == 0, writable=False)


def count_values(flat: np.ndarray) -> np.ndarray:
    """int64[256] histogram of a flat uint8 array (entry k = cells equal to k).

    ``np.bincount`` converts its input to intp; doing it in cache-sized chunks is ~4x faster than
    one call on a large array.
    """
    hist = np.zeros(NUM_COUNT_VALUES, np.int64)
    step = 1 << 18
    for i in range(0, flat.size, step):
        hist += np.bincount(flat[i:i + step], minlength=NUM_COUNT_VALUES)[:NUM_COUNT_VALUES]
    return hist


def _iter_count_batches(corpus: Corpus, max_rows: int | None,
                        batch_rows: int = 8) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield (split, num_rows, flat uint8 counts) per record batch, train before test, stopping
    after ``max_rows`` rows in all."""
    seen = 0
    for split in corpus.manifest["splits"]:
        for shard in corpus.shards(split):
            with shard_errors(shard):
                pf = pq.ParquetFile(shard)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=["spike_counts"]):
                    if max_rows is not None:
                        if seen >= max_rows:
                            return
                        if seen + batch.num_rows > max_rows:
                            batch = batch.slice(0, max_rows - seen)
                    seen += batch.num_rows
                    yield split, batch.num_rows, flat_counts(batch.column(0))


def count_histogram(corpus: Corpus, *, max_rows: int | None = None, progress: bool = False) -> dict:
    """Histogram of count values over the corpus' cells.

    Args:
        corpus: the corpus to scan.
        max_rows: scan at most this many rows (train shards first, in shard order; rows were
            shuffled at build time, so this is a sample of rows). ``None`` scans everything.
        progress: a progress bar over the rows (a whole published corpus takes minutes).

    Returns:
        ``{"total": int64[256], "by_split": {split: int64[256]}, "rows_scanned": int}`` where
        entry k of a histogram is the number of cells holding count k.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be a positive int or None, got {max_rows!r}")
    from ..progress import progress_bar

    by_split = {s: np.zeros(NUM_COUNT_VALUES, np.int64) for s in corpus.manifest["splits"]}
    rows = 0
    total_rows = sum(int(sp.get("num_rows", 0)) for sp in corpus.manifest["splits"].values())
    with progress_bar(total_rows if max_rows is None else min(max_rows, total_rows), "counting spikes",
                      enabled=progress) as bar:
        for split, n, flat in _iter_count_batches(corpus, max_rows):
            by_split[split] += count_values(flat)
            rows += n
            bar.advance(n)
    total = sum(by_split.values(), np.zeros(NUM_COUNT_VALUES, np.int64))
    return {"total": total, "by_split": by_split, "rows_scanned": rows}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"total": 0, "mean": None, "median": None, "min": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    total = int(a.sum()) if all(isinstance(v, int) for v in values) else float(a.sum())  # units: a count
    return {"total": total, "mean": float(a.mean()), "median": float(np.median(a)),
            "min": float(a.min()), "max": float(a.max())}


def corpus_info(corpus: Corpus, *, max_rows: int | None = None, progress: bool = False) -> dict:
    """Summary statistics of a corpus, JSON-serializable.

    Args:
        corpus: an opened :class:`spikefm.Corpus`.
        max_rows: read at most this many rows for the count statistics (fraction of zero bins,
            token marginals); ``None`` reads all. Manifest numbers always cover the whole corpus.
        progress: a progress bar while the counts are read.

    Returns:
        A dict with keys

        - ``path``, ``bin_ms``, ``num_sessions``, ``num_subjects``, ``num_sources``,
          ``num_human_sessions``;
        - ``sources``: {name: {sessions, subjects, tokens, hours, species}} (tokens = cells);
        - ``species``: {species or "unknown": number of sessions};
        - ``units``: {total, mean, median, min, max} over sessions (units per session);
        - ``session_hours``: {total, mean, median, min, max}; ``hours`` = total
          (num_bins * bin_ms summed over sessions);
        - ``splits``: {split: {rows, tokens, sessions}};
        - ``num_tokens``: all cells of all splits;
        - ``count_stats``: {rows_scanned, cells_scanned, sampled, fraction_zero, mean_count,
          token_counts (256 ints), token_probabilities (256 floats, sum 1),
          by_split: {split: {cells, fraction_zero}}};
        - ``clipped_bins``: cells clipped at 255, summed from the manifest's sessions;
        - ``regions``: {region: units} summed over sessions (largest first);
        - ``trial_tables``: {table: {sessions, trials}}; ``behavior``: {channel: sessions};
        - ``skipped``: the inputs the build or import left out ({input, error}, as the manifest
          lists them).
    """
    m = corpus.manifest
    bin_ms = int(m["bin_ms"])
    sessions = m["sessions"]
    corpus.require_session_keys("num_units", "num_bins", "num_tokens", needed_by="corpus info")

    def hours(s: dict) -> float:
        return int(s["num_bins"]) * int(s.get("bin_ms", bin_ms)) / 3.6e6

    sources: dict[str, dict] = {}
    for s in sessions:
        name = s.get("source_dataset") or "unknown"
        src = sources.setdefault(name, {"sessions": 0, "subjects": set(), "tokens": 0,
                                        "hours": 0.0, "species": set()})
        src["sessions"] += 1
        src["subjects"].add(s.get("subject_id", ""))
        src["tokens"] += int(s["num_tokens"])
        src["hours"] += hours(s)
        src["species"].add(s.get("species") or "unknown")
    for src in sources.values():
        src["subjects"] = len(src["subjects"])
        src["species"] = sorted(src["species"])
    sources = dict(sorted(sources.items(), key=lambda kv: (-kv[1]["tokens"], kv[0])))

    species = Counter((s.get("species") or "unknown") for s in sessions)
    num_human = sum(bool(s.get("is_human", is_human_species(s.get("species", ""))))
                    for s in sessions)
    session_hours = [hours(s) for s in sessions]

    splits = {name: {"rows": int(sp["num_rows"]), "tokens": int(sp["num_tokens"]),
                     "sessions": int(sp["num_sessions"])}
              for name, sp in m["splits"].items()}

    hist = count_histogram(corpus, max_rows=max_rows, progress=progress)
    total = hist["total"]
    cells = int(total.sum())
    probs = (total / cells) if cells else np.zeros(NUM_COUNT_VALUES)
    num_rows = sum(sp["rows"] for sp in splits.values())
    count_stats = {
        "rows_scanned": int(hist["rows_scanned"]),
        "cells_scanned": cells,
        "sampled": int(hist["rows_scanned"]) < num_rows,
        "fraction_zero": float(total[0] / cells) if cells else None,
        "mean_count": float(np.dot(np.arange(NUM_COUNT_VALUES), total) / cells) if cells else None,
        "token_counts": [int(x) for x in total],
        "token_probabilities": [float(x) for x in probs],
        "by_split": {name: {"cells": int(h.sum()),
                            "fraction_zero": float(h[0] / h.sum()) if h.sum() else None}
                     for name, h in hist["by_split"].items()},
    }

    return {
        "path": str(corpus.path),
        "schema_version": m.get("schema_version"),
        "bin_ms": bin_ms,
        "num_sessions": len(sessions),
        "num_subjects": len({(s.get("source_dataset"), s.get("subject_id")) for s in sessions}),
        "num_sources": len(sources),
        "num_human_sessions": int(num_human),
        "sources": sources,
        "species": dict(species.most_common()),
        "units": _summary([int(s["num_units"]) for s in sessions]),
        "hours": float(sum(session_hours)),
        "session_hours": _summary(session_hours),
        "splits": splits,
        "num_tokens": int(sum(sp["tokens"] for sp in splits.values())),
        "count_stats": count_stats,
        "clipped_bins": int(sum(int(s.get("clipped_bins", 0)) for s in sessions)),
        **_contents(sessions),
        "skipped": [{"input": str(k.get("input", "")), "error": str(k.get("error", ""))}
                    for k in m.get("skipped") or [] if isinstance(k, dict)],
    }


def _contents(sessions: list[dict]) -> dict:
    """What the sessions hold beyond counts: units per region, trial tables and behaviour channels."""
    regions: Counter = Counter()
    tables: dict[str, dict[str, int]] = {}
    behavior: Counter = Counter()
    for s in sessions:
        for region, n in (s.get("regions") or {}).items():
            regions[str(region)] += int(n)
        for table, n in (s.get("trial_tables") or {}).items():
            t = tables.setdefault(str(table), {"sessions": 0, "trials": 0})
            t["sessions"] += 1
            t["trials"] += int(n)
        behavior.update(str(c) for c in s.get("behavior_names") or [])
    return {"regions": dict(sorted(regions.items(), key=lambda kv: (-kv[1], kv[0]))),
            "trial_tables": dict(sorted(tables.items())),
            "behavior": dict(sorted(behavior.items()))}


# ---------------------------------------------------------------------------------------------
# Text report


def _num(x: float | None, fmt: str = ",.1f") -> str:
    return "-" if x is None else format(x, fmt)


def _listed(entries: dict | None, show, most: int = 8) -> str:
    """The first ``most`` entries, each as ``show(name, value)`` says, then how many more."""
    if not entries:
        return "none"
    items = list(entries.items())
    more = f", and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(show(k, v) for k, v in items[:most]) + more


def _skipped(item: dict) -> str:
    """A skipped input's error with the input named by its file name (its folders are in --json)."""
    path, error = item.get("input", ""), item.get("error", "")
    text = error.replace(path, Path(path).name) if path else error
    return text if len(text) <= 160 else text[:157] + "..."


def format_info(info: dict, *, max_sources: int = 30) -> str:
    """A plain-text report of :func:`corpus_info`'s dict (fixed-width, fits 100 columns).

    Args:
        info: the dict returned by :func:`corpus_info` (or read back from its JSON).
        max_sources: list at most this many sources (largest first) and say how many were left.
    """
    u, sh, cs = info["units"], info["session_hours"], info["count_stats"]
    out = [f"spikefm corpus  {info['path']}", ""]
    species = ", ".join(f"{k} {v}" for k, v in info["species"].items()) or "-"
    overview = [
        ("sessions", f"{info['num_sessions']:,}  ({info['num_human_sessions']:,} human)"),
        ("subjects", f"{info['num_subjects']:,}"),
        ("sources", f"{info['num_sources']:,}"),
        ("species", species),
        ("units", f"{int(u['total']):,} in all; per session mean {_num(u['mean'])}, "
                  f"median {_num(u['median'], ',.0f')}, min {_num(u['min'], ',.0f')}, "
                  f"max {_num(u['max'], ',.0f')}"),
        ("recording", f"{info['hours']:,.2f} h at {info['bin_ms']} ms bins; per session mean "
                      f"{_num(None if sh['mean'] is None else sh['mean'] * 60)} min, "
                      f"max {_num(None if sh['max'] is None else sh['max'] * 60)} min"),
        ("tokens", f"{info['num_tokens']:,} (units x bins)"),
        ("zero bins", "-" if cs["fraction_zero"] is None else
         f"{100 * cs['fraction_zero']:.2f} % of {cs['cells_scanned']:,} cells"
         + (f" (first {cs['rows_scanned']:,} rows)" if cs["sampled"] else "")),
        ("mean count", _num(cs["mean_count"], ".4f") + " spikes per bin"
         + (" (of the stored counts: clipped bins count 255)" if info["clipped_bins"] else "")),
        ("clipped bins", f"{info['clipped_bins']:,} (counts > 255 stored as 255)"),
        ("regions", _listed(info.get("regions"), lambda k, n: f"{k} {n:,}") + " (units)"),
        ("trial tables", _listed(info.get("trial_tables"),
                                 lambda k, t: f"{k} ({t['trials']:,} trials in {t['sessions']:,} sessions)")),
        ("behaviour", _listed(info.get("behavior"), lambda k, n: f"{k} ({n:,} sessions)")),
        ("skipped", f"{len(info.get('skipped') or [])} input(s)" + (f", e.g. {_skipped(info['skipped'][0])}"
                                                                  if info.get("skipped") else "")),
    ]
    width = max(len(k) for k, _ in overview)
    for k, v in overview:  # long lists wrap under their value
        lines = textwrap.wrap(v, 100 - width - 4, break_on_hyphens=False) or [v]  # a long path is cut too
        out += [f"  {k:<{width}}  {lines[0]}"] + [" " * (width + 4) + line for line in lines[1:]]

    out += [""]
    out.append(render_table(["split", "rows", "sessions", "tokens"],
                            [[name, f"{sp['rows']:,}", f"{sp['sessions']:,}", f"{sp['tokens']:,}"]
                             for name, sp in info["splits"].items()], align="<>>>"))

    out += [""]
    items = list(info["sources"].items())
    rows = [[name, f"{s['sessions']:,}", f"{s['subjects']:,}", f"{s['hours']:,.2f}",
             f"{s['tokens']:,}", ", ".join(s["species"])] for name, s in items[:max_sources]]
    more = [f"... and {len(items) - max_sources} more sources"] if len(items) > max_sources else []
    out.append(render_table(["source", "sessions", "subjects", "hours", "tokens", "species"],
                            rows, align="<>>>><", footer=more))

    if cs["cells_scanned"]:
        probs = cs["token_probabilities"]
        out += [""]
        shown = [[str(k), f"{probs[k]:.4g}"] for k in range(NUM_MARGINALS_SHOWN)]
        tail = sum(probs[NUM_MARGINALS_SHOWN:])
        shown.append([f">={NUM_MARGINALS_SHOWN}", f"{tail:.4g}"])
        out.append(render_table(["count", "probability"], shown, align="<>"))
    return "\n".join(out)


#: How many problems :func:`check_corpus` lists (the count says how many there were).
MAX_PROBLEMS_LISTED = 20


def check_corpus(corpus: Corpus, *, progress: bool = False) -> dict:
    """Read every row of ``corpus`` as training does and compare it with ``manifest.json``.

    Opening a corpus checks only each shard's row count (its footer), and :func:`corpus_info`
    reads only the spike counts; this reads every column of every row, so a shard edited or
    damaged by another tool, or copied from another build, is found before a run meets it.

    Checked: each row's fields fit together (the reader's checks: bin width, count shape, unit ids
    and regions, behaviour shape, trial JSON; the first bad row stops the check with the reader's
    one-line error naming its shard); each row's session is in the manifest, in that split, with
    the manifest's bin width and unit count; per split, the rows, tokens and sessions the manifest
    lists; per session, its tokens and bins summed over its rows.

    Returns:
        ``{"ok": bool, "rows_checked": int, "problems": [str, ...]}``: at most
        :data:`MAX_PROBLEMS_LISTED` problems, then one saying how many more there were.

    Raises:
        ValueError: a row the reader refuses (the corpus is damaged: rebuild it).
    """
    from ..progress import progress_bar

    m = corpus.manifest
    corpus.require_session_keys("num_units", "num_bins", "num_tokens", needed_by="corpus info --check")
    sessions = {s["session_id"]: s for s in m["sessions"]}
    problems: list[str] = []
    seen_tokens = Counter()
    seen_bins: dict[tuple[str, str], int] = Counter()
    rows_checked = 0
    total_rows = sum(int(sp.get("num_rows", 0)) for sp in m["splits"].values())
    with progress_bar(total_rows, "checking rows", enabled=progress) as bar:
        for split, listed in m["splits"].items():
            rows = tokens = 0
            split_sessions = set()
            for row in corpus.iter_rows(split):
                rows += 1
                bar.advance(1)
                tokens += row.spike_counts.size
                sid = row.session_id
                split_sessions.add(sid)
                s = sessions.get(sid)
                where = f"{split} row {rows} (session {sid!r}, segment {row.segment_id!r})"
                if s is None:
                    problems.append(f"{where}: its session is not in manifest.json")
                    continue
                if s.get("split") not in (split, "both"):
                    problems.append(f"{where}: manifest.json puts the session in {s.get('split')!r}")
                if row.bin_ms != int(s.get("bin_ms", m["bin_ms"])):
                    problems.append(f"{where}: bin_ms {row.bin_ms}, manifest.json {int(s.get('bin_ms', m['bin_ms']))}")
                if row.num_units != int(s["num_units"]):
                    problems.append(f"{where}: {row.num_units} units, manifest.json {int(s['num_units'])}")
                seen_tokens[sid] += row.spike_counts.size
                seen_bins[sid] += row.num_bins
            rows_checked += rows
            for what, found, want in (("rows", rows, listed.get("num_rows")),
                                      ("tokens", tokens, listed.get("num_tokens")),
                                      ("sessions", len(split_sessions), listed.get("num_sessions"))):
                if want is not None and found != int(want):
                    problems.append(f"the {split} split holds {found:,} {what}; manifest.json lists {int(want):,}")
    for sid, s in sessions.items():
        if seen_tokens[sid] != int(s["num_tokens"]):
            problems.append(f"session {sid!r}: its rows hold {seen_tokens[sid]:,} tokens; manifest.json "
                            f"lists {int(s['num_tokens']):,}")
        elif seen_bins[sid] != int(s["num_bins"]):
            problems.append(f"session {sid!r}: its rows hold {seen_bins[sid]:,} bins; manifest.json "
                            f"lists {int(s['num_bins']):,}")
    more = len(problems) - MAX_PROBLEMS_LISTED
    if more > 0:
        problems = problems[:MAX_PROBLEMS_LISTED] + [f"... and {more} more"]
    return {"ok": not problems, "rows_checked": rows_checked, "problems": problems}


def format_check(check: dict) -> str:
    """The text lines of :func:`check_corpus`'s result."""
    if check["ok"]:
        return f"check: {check['rows_checked']:,} rows read, every one consistent with manifest.json"
    return "\n".join([f"check: {check['rows_checked']:,} rows read; they disagree with manifest.json "
                      "(rebuild the corpus: spikefm corpus build INPUTS --out DIR --overwrite, or spikefm "
                      "corpus import):"] + [f"  {p}" for p in check["problems"]])
