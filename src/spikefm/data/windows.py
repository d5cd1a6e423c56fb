"""Windows of ``T`` bins for masked modeling (NDT family): cutting, splits, and a mixed-session batcher.

Shape legend (the project's, README "Conventions"): K windows of one session, T bins per window,
N units of a session (padded to the batch maximum in batches), C behaviour channels, G bins of a
session's whole grid, B batch.

A session's rows (chunks of at most ``max_row_tokens``, possibly spread over the corpus's
``train`` and ``test`` splits) are put back on the session's bin grid, then cut into windows.
A session that ``spikefm corpus import`` could not put on one timeline (its manifest entry has
``segments_ordered: false``: segments not numbered 0..k-1, or rows of different unit counts, all
starting at 0 ms) is refused, naming it and the ``--sessions`` fix: cutting each of its rows
alone was left out, since rows of different units cannot share one session's read-out and rows
of unknown order would give windows the same start times, which saved splits match by.

* **trial-aligned** (``align="stim_on_time"``): one window per trial, starting ``pre_ms`` before
  the trial's event. The event time (seconds, float) is converted once to integer microseconds
  (``rint(t * 1e6)``); its bin is ``(event_us - grid_start_us) // bin_us``, i.e. the bin that
  holds the event, and the window starts ``pre_ms // bin_ms`` bins earlier, so the event sits at
  window bin ``event_bin = pre_ms // bin_ms``. (Microseconds rather than milliseconds so that an
  event at 1.0199 s falls in the bin [1.000, 1.020) that holds it, not in the next one.) Trials
  whose event is missing (NaN) or whose window leaves the recording are skipped, counted in
  ``SessionWindows.skipped`` and reported with a warning.
* **continuous** (``align=None``, or when the session has no trial table): windows every
  ``stride_bins`` bins (default ``window_bins``: non-overlapping) over the recording, from its
  first bin; bins after the last whole window are not used (fewer than ``window_bins``; a
  session of 3,000 bins cut into 70-bin windows gives 42 and leaves its last 60 bins out).

Each session's windows get a seeded train/val/test split (seed derived from ``seed`` and the
session id, so adding a session does not reshuffle the others). :func:`save_splits` writes which
windows (by start time) are in which split; :func:`apply_splits` restores it in a later run.

:class:`WindowBatcher` yields batches that may mix sessions, padded to the batch's largest unit
count, in a seeded order with exact resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from spikefm.argtypes import is_int
import torch

from spikefm.corpus.reader import Corpus, CorpusRow
from spikefm.fileio import write_bytes_atomic

__all__ = [
    "SPLIT_NAMES",
    "SessionWindows",
    "make_session_windows",
    "load_all_windows",
    "session_label_names",
    "val_items",
    "save_splits",
    "load_splits",
    "apply_splits",
    "WindowBatcher",
    "SeededBatchLoader",
]

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
#: Floor of the mean count per bin behind :meth:`SessionWindows.train_log_rates` (a unit silent in
#: every train window would otherwise start at log 0 = -inf).
MIN_INIT_RATE = 1e-3
#: A trial column becomes a label when it has at most this many distinct values (one is enough:
#: a session whose every trial had one choice still carries that choice, a class a run knows).
MAX_LABEL_VALUES = 10
_SPLITS_FORMAT_VERSION = 1


@dataclass
class SessionWindows:
    """All windows of one session.

    Attributes:
        session_id: the corpus session id.
        counts: (K, T, N) spike counts per bin (uint8 as read from the corpus).
        unit_regions: (N,) region name per unit.
        region_ids: (N,) int64 index of each unit's region in ``region_names``.
        t_start_ms: (K,) int64 start of each window on the session clock (ms).
        split: (K,) str array, each ``"train"``, ``"val"`` or ``"test"``.
        bin_ms: bin width (ms).
        labels: name -> (K,) discrete trial labels (trial-aligned windows only). Numeric columns
            are float64 with NaN where the trial has no value; text columns are object arrays
            with None there.
        behavior: (K, T, C) float32 behaviour on the window bins (NaN where not recorded), or
            None when the session has none.
        behavior_names: (C,) channel names.
        align: the trial column the windows are aligned to, or None for continuous windows.
        event_bin: window bin that holds the event (``pre_ms // bin_ms``), None if continuous.
        trial_index: (K,) int64 row of each window's trial in the session's trial table (sorted
            by start time, duplicates across corpus rows removed); -1 for continuous windows.
        skipped: reason -> number of trials (or continuous windows) left out.
        unit_index: (N,) int64 index of each kept unit in the session's units (all of them unless
            a firing-rate filter dropped some).
        units_dropped: number of units left out by the firing-rate filter.
        many_valued: trial columns of more than :data:`MAX_LABEL_VALUES` distinct values over the
            windows' trials (name -> values): not discrete labels, so not in ``labels``.
    """

    session_id: str
    counts: np.ndarray
    unit_regions: list[str]
    region_ids: np.ndarray
    t_start_ms: np.ndarray
    split: np.ndarray
    bin_ms: int
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    behavior: np.ndarray | None = None
    behavior_names: list[str] = field(default_factory=list)
    align: str | None = None
    event_bin: int | None = None
    trial_index: np.ndarray | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    unit_index: np.ndarray | None = None
    units_dropped: int = 0
    many_valued: dict[str, int] = field(default_factory=dict)

    @property
    def num_windows(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_bins(self) -> int:
        return int(self.counts.shape[1])

    @property
    def num_units(self) -> int:
        return int(self.counts.shape[2])

    @property
    def region_names(self) -> list[str]:
        """Sorted unique region names; ``region_ids`` index into this list."""
        return sorted(set(self.unit_regions))

    def indices(self, split: str | Sequence[str] | None) -> np.ndarray:
        """(k,) int64 indices of the windows in ``split`` (a name, several names, or None = all)."""
        if split is None:
            return np.arange(self.num_windows, dtype=np.int64)
        names = [split] if isinstance(split, str) else list(split)
        for s in names:
            if s not in SPLIT_NAMES:
                raise ValueError(f"split must be one of {SPLIT_NAMES} (or None for all), got {s!r}")
        return np.flatnonzero(np.isin(self.split, names)).astype(np.int64)

    def train_log_rates(self) -> np.ndarray | None:
        """(N,) float64 log of each unit's mean count per bin over the train windows, floored at
        :data:`MIN_INIT_RATE`; None when the session has no train windows. The masked families
        start a new session's read-out bias here, so their first steps are not spent finding
        firing rates."""
        train = self.indices("train")
        if train.size == 0:
            return None
        mean_N = np.asarray(self.counts[train], dtype=np.float64).reshape(-1, self.num_units).mean(axis=0)
        return np.log(np.maximum(mean_N, MIN_INIT_RATE))


# ---------------------------------------------------------------------------------------------
# Reassembling a session


@dataclass
class _SessionGrid:
    """One session put back on its bin grid: counts_NG over G grid bins, valid_G marks covered bins."""

    counts_NG: np.ndarray
    valid_G: np.ndarray
    behavior_CG: np.ndarray | None
    behavior_names: list[str]
    t0_ms: int
    bin_ms: int
    unit_regions: list[str]
    trials: dict[str, dict[str, list]]


#: Why a family's validation cannot run on windows that hold no val window, and the fixes (train:
#: the option to skip validation; fine-tuning always validates, so only more data helps there).
NO_VAL_WINDOWS = ("the sessions have no val windows (too few windows for the val share of "
                  "data.split_fractions); use longer sessions (or more trials), raise that val share, or, "
                  "when pretraining, set train.eval_every=0 (fine-tuning always validates)")


def val_items(windows_by_session: dict[str, "SessionWindows"]) -> list[tuple[str, int]]:
    """(session id, window index) of every val window, sessions in sorted order: what a family's
    validation scores. Raises ValueError (:data:`NO_VAL_WINDOWS`) when there is none."""
    items = [(sid, int(k)) for sid in sorted(windows_by_session) for k in windows_by_session[sid].indices("val")]
    if not items:
        raise ValueError(NO_VAL_WINDOWS)
    return items


def _collect_rows(corpus: Corpus, session_ids: Sequence[str]) -> dict[str, list[CorpusRow]]:
    """Rows of the given sessions from every split of the corpus, one pass over the shards (an id
    the corpus lacks is refused by :meth:`Corpus.iter_rows`)."""
    wanted = set(session_ids)
    rows: dict[str, list[CorpusRow]] = {s: [] for s in session_ids}
    for split in corpus.manifest["splits"]:
        for row in corpus.iter_rows(split, sessions=wanted):
            rows[row.session_id].append(row)
    return rows


def _merge_trials(rows: list[CorpusRow]) -> dict[str, dict[str, list]]:
    """Union of the rows' trial tables (a trial overlapping two chunks appears in both), sorted by
    start time."""
    seen: dict[str, dict[str, tuple]] = {}
    columns: dict[str, list[str]] = {}
    for row in rows:
        for table, cols in row.trials.items():
            names = columns.setdefault(table, list(cols))
            for c in cols:
                if c not in names:
                    names.append(c)
            n = len(cols.get("start_time", []))
            for i in range(n):
                rec = {c: cols[c][i] for c in cols}
                key = json.dumps(rec, sort_keys=True)
                seen.setdefault(table, {})[key] = rec
    out = {}
    for table, recs in seen.items():
        def key(rec: dict) -> tuple[float, str]:
            start = _float_or_nan(rec.get("start_time"))
            return (math.inf if math.isnan(start) else start, json.dumps(rec, sort_keys=True))

        items = sorted(recs.values(), key=key)
        out[table] = {c: [r.get(c) for r in items] for c in columns[table]}
    return out


def _float_or_nan(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def _imported(corpus: Corpus) -> bool:
    """Whether the corpus came from ``spikefm corpus import`` (not built from NWB files)."""
    return bool((corpus.manifest.get("build") or {}).get("importer"))


def _usable_hint(corpus: Corpus, refused: set[str]) -> str:
    """``--sessions`` with a few train sessions whose rows are on one timeline, for a fix."""
    ok = [s["session_id"] for s in corpus.sessions
          if s.get("segments_ordered") is not False and s["session_id"] not in refused
          and s["split"] in ("train", "both")]
    if not ok:
        return "no session of its train split is usable"
    return "e.g. --sessions " + ",".join(ok[:5]) + (f" ({len(ok)} usable in all)" if len(ok) > 5 else "")


def _check_one_timeline(corpus: Corpus, rows: dict[str, list[CorpusRow]]) -> None:
    """Refuse sessions whose rows the import could not put on one timeline (the manifest's
    ``segments_ordered`` is false: segments not numbered 0..k-1, or rows of different unit
    counts; every such row starts at 0 ms). Windows are cut on one bin grid per session, and
    these rows' order and units do not fit one, so such a session is named, with the fix."""
    unordered = {s["session_id"] for s in corpus.sessions if s.get("segments_ordered") is False}
    bad = [sid for sid in rows if len(rows[sid]) > 1 and sid in unordered]
    if not bad:
        return
    sid = bad[0]
    units = sorted({r.num_units for r in rows[sid]})
    what = (f"units {'/'.join(map(str, units))} differ across them" if len(units) > 1
            else "their order is unknown")
    others = f" (and {', '.join(bad[1:4])}{' ...' if len(bad) > 4 else ''}, the same)" if len(bad) > 1 else ""
    raise ValueError(f"session {sid!r}: its {len(rows[sid])} rows cannot be joined on one timeline "
                     f"({what}): it was imported with segments not numbered 0..k-1 or with different "
                     "unit counts across rows, so manifest.json records segments_ordered false and "
                     "every row starts at 0 ms; windows need one timeline per session: leave it out"
                     f"{others} with --sessions (data.sessions), {_usable_hint(corpus, set(bad))}")


def _assemble(session_id: str, rows: list[CorpusRow], *, imported: bool = False) -> _SessionGrid:
    """Put a session's rows back on its bin grid. ``imported``: the corpus came from ``corpus
    import`` (a rebuild is not the fix there: the rows are the published ones)."""
    if not rows:
        raise ValueError(f"session {session_id!r} has no rows in the corpus")
    fix = ("the corpus was imported, so importing again gives the same rows: leave this session "
           "out with --sessions (data.sessions)") if imported else "rebuild the corpus"
    rows = sorted(rows, key=lambda r: r.t_start_ms)
    bin_ms = int(rows[0].bin_ms)
    num_units = rows[0].num_units
    for r in rows:
        if int(r.bin_ms) != bin_ms or r.num_units != num_units:
            raise ValueError(f"session {session_id!r}: rows disagree on bin_ms/num_units "
                             f"({r.bin_ms} ms, {r.num_units} units vs {bin_ms} ms, {num_units} units); "
                             f"{fix}")
        if (int(r.t_start_ms) - int(rows[0].t_start_ms)) % bin_ms:
            raise ValueError(f"session {session_id!r}: row starting at {r.t_start_ms} ms is off the "
                             f"{bin_ms} ms bin grid; {fix}")
    t0_ms = int(rows[0].t_start_ms)
    end_ms = max(int(r.t_start_ms) + r.num_bins * bin_ms for r in rows)
    G = (end_ms - t0_ms) // bin_ms
    counts_NG = np.zeros((num_units, G), dtype=np.uint8)
    valid_G = np.zeros(G, dtype=bool)
    beh_names = list(rows[0].behavior_names)
    has_beh = bool(beh_names) and all(r.behavior is not None and list(r.behavior_names) == beh_names
                                      for r in rows)
    behavior_CG = np.full((len(beh_names), G), np.nan, dtype=np.float32) if has_beh else None
    for r in rows:
        a = (int(r.t_start_ms) - t0_ms) // bin_ms
        b = a + r.num_bins
        if valid_G[a:b].any():
            raise ValueError(f"session {session_id!r}: rows overlap at {r.t_start_ms} ms; the corpus "
                             + ("holds rows of this session twice (two copies of a file in the "
                                "imported folder?); leave this session out with --sessions "
                                "(data.sessions) or import the folder without the copies" if imported
                                else "holds this session twice? Rebuild it"))
        counts_NG[:, a:b] = r.spike_counts
        valid_G[a:b] = True
        if behavior_CG is not None:
            behavior_CG[:, a:b] = r.behavior
    return _SessionGrid(counts_NG=counts_NG, valid_G=valid_G, behavior_CG=behavior_CG,
                        behavior_names=beh_names if has_beh else [], t0_ms=t0_ms, bin_ms=bin_ms,
                        unit_regions=[str(x) for x in rows[0].unit_regions] or ["unknown"] * num_units,
                        trials=_merge_trials(rows))


# ---------------------------------------------------------------------------------------------
# Cutting windows


def _is_time_column(name: str) -> bool:
    return name in ("start_time", "stop_time") or name.endswith("_time") or name.endswith("_times")


def _present(values) -> list:
    """The values of a label that a trial has (None and NaN are a missing value)."""
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _discrete_labels(trials: dict[str, list], keep: np.ndarray, max_values: int = MAX_LABEL_VALUES,
                     many_valued: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Trial columns with 1..max_values distinct values (missing excluded), for the kept trials;
    a column of more values (no discrete label) goes into ``many_valued`` (name -> values) when given."""
    labels = {}
    for name, values in trials.items():
        if _is_time_column(name):
            continue
        vals = [values[i] for i in keep]
        present = _present(vals)
        if not present:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present) or \
                all(isinstance(v, bool) for v in present):
            arr = np.array([math.nan if v is None else float(v) for v in vals], dtype=np.float64)
        elif all(isinstance(v, str) for v in present):
            arr = np.array([v for v in vals], dtype=object)
        else:
            continue
        n_unique = len(set(present))
        if n_unique <= max_values:
            labels[name] = arr
        elif many_valued is not None:
            many_valued[name] = n_unique
    return labels


def too_many_values_text(name: str, num_values: int) -> str:
    """Why trial column ``name`` is no discrete label (see :attr:`SessionWindows.many_valued`)."""
    return (f"trial column {name!r} has {num_values} distinct values, more than the {MAX_LABEL_VALUES} a discrete "
            "label may have: bin it into fewer classes in the trial table")


def session_label_names(corpus: Corpus | str | Path, session_id: str, trial_table: str = "trials") -> list[str]:
    """The discrete labels trial-aligned windows of a session can carry: the columns of its trial
    table ``trial_table`` with 1..``MAX_LABEL_VALUES`` distinct values (time columns left out),
    over all its trials (windows keep their own trials, so theirs may be fewer); sorted."""
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    trials = _merge_trials(_collect_rows(corpus, [session_id])[session_id]).get(trial_table, {})
    n = max((len(v) for v in trials.values()), default=0)
    return sorted(_discrete_labels(trials, np.arange(n)))


#: The trial labels a PSTH is split by first, when the windows carry them with two values or more.
PSTH_LABELS_FIRST = ("choice", "target_angle")


def psth_condition(labels: dict[str, np.ndarray]) -> str | None:
    """The trial label within whose values a PSTH averages windows (averaging across conditions
    would cancel what they encode): ``choice``, then ``target_angle``, then the others by name,
    the first with at least two distinct values among these windows (one value splits nothing);
    None when no label has."""
    for name in dict.fromkeys((*PSTH_LABELS_FIRST, *sorted(labels))):
        if name in labels and len(set(_present(np.asarray(labels[name]).tolist()))) >= 2:
            return name
    return None


def _session_seed(seed: int, session_id: str) -> list[int]:
    return [int(seed), zlib.crc32(session_id.encode("utf-8"))]


def _assign_split(num_windows: int, fractions: tuple[float, float, float], seed: int,
                  session_id: str) -> np.ndarray:
    """Seeded split: round(K * val) val windows, round(K * test) test windows, the rest train."""
    perm = np.random.default_rng(_session_seed(seed, session_id)).permutation(num_windows)
    n_test = int(round(num_windows * fractions[2]))
    n_val = min(int(round(num_windows * fractions[1])), num_windows - n_test)
    split = np.full(num_windows, "train", dtype=object)
    split[perm[:n_test]] = "test"
    split[perm[n_test:n_test + n_val]] = "val"
    return split.astype(str)


def _check_fractions(split_fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(x) for x in split_fractions)
    except TypeError:
        fr = ()
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-9):
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test) "
                         f"summing to 1, got {split_fractions!r}")
    return fr


#: Event columns that ``align="auto"`` uses, the first one a session's trial table holds: stimulus
#: onset (IBL-style tasks), the go cue or target onset (reaching tasks), else the trial start.
AUTO_ALIGN = ("stim_on_time", "go_cue_time", "target_on_time", "start_time")

#: Window options and their defaults (the defaults reproduce windows cut before the options existed).
WINDOW_DEFAULTS = dict(window_bins=100, align="stim_on_time", pre_ms=500, table="trials", stride_bins=None,
                       split_fractions=(0.7, 0.1, 0.2), seed=0, event_rounding="floor", drop_nogo=False,
                       rt_range_ms=None, min_rate_hz=0.0)


def _trial_filters(trials: dict[str, list], trial_index: np.ndarray, align: str, *, drop_nogo: bool,
                   rt_range_ms) -> tuple[np.ndarray, dict[str, int]]:
    """Drop no-go trials (choice 0 or missing) and reaction-time outliers (first_movement_time -
    the aligned event outside ``rt_range_ms``); returns the kept trial indices and the counts."""
    skipped = {}
    keep = np.ones(trial_index.size, dtype=bool)
    if drop_nogo:
        if "choice" not in trials:
            raise ValueError("drop_nogo needs a 'choice' trial column; this session has "
                             f"{sorted(trials)}; set drop_nogo=false")
        choice = np.array([_float_or_nan(trials["choice"][i]) for i in trial_index])
        nogo = ~np.isfinite(choice) | (choice == 0)
        skipped["no_go"] = int((keep & nogo).sum())
        keep &= ~nogo
    if rt_range_ms is not None:
        if "first_movement_time" not in trials:
            raise ValueError("rt_range_ms needs a 'first_movement_time' trial column; this session has "
                             f"{sorted(trials)}; leave rt_range_ms unset")
        lo, hi = rt_range_ms
        move = np.array([_float_or_nan(trials["first_movement_time"][i]) for i in trial_index])
        event = np.array([_float_or_nan(trials[align][i]) for i in trial_index])
        rt_ms = (move - event) * 1000.0
        out = ~np.isfinite(rt_ms) | (rt_ms < lo) | (rt_ms > hi)
        skipped["reaction_time_outlier"] = int((keep & out).sum())
        keep &= ~out
    return trial_index[keep], skipped


def _check_window_options(event_rounding, rt_range_ms, min_rate_hz) -> None:
    if event_rounding not in ("floor", "nearest"):
        raise ValueError(f"event_rounding must be 'floor' (the event's bin starts the event bin) or "
                         f"'nearest' (window edges on the bin edge nearest the event), got {event_rounding!r}")
    if rt_range_ms is not None:
        ok = isinstance(rt_range_ms, (tuple, list)) and len(rt_range_ms) == 2 and \
            all(isinstance(v, (int, float)) and math.isfinite(v) for v in rt_range_ms) and rt_range_ms[0] < rt_range_ms[1]
        if not ok:
            raise ValueError(f"rt_range_ms must be (min, max) milliseconds with min < max, got {rt_range_ms!r}")
    if isinstance(min_rate_hz, bool) or not isinstance(min_rate_hz, (int, float)) or \
            not (math.isfinite(min_rate_hz) and min_rate_hz >= 0):
        raise ValueError(f"min_rate_hz must be a finite number >= 0, got {min_rate_hz!r}")


def _windows_from_grid(grid: _SessionGrid, session_id: str, *, window_bins: int, align: str | None,
                       pre_ms: int, table: str, stride_bins: int | None,
                       split_fractions: tuple[float, float, float], seed: int,
                       event_rounding: str = "floor", drop_nogo: bool = False, rt_range_ms=None,
                       min_rate_hz: float = 0.0) -> SessionWindows:
    _check_window_options(event_rounding, rt_range_ms, min_rate_hz)
    bin_ms = grid.bin_ms
    G = grid.valid_G.size
    skipped: dict[str, int] = {}
    labels: dict[str, np.ndarray] = {}
    many_valued: dict[str, int] = {}
    event_bin = None
    trials = grid.trials.get(table) if align is not None else None
    if align is not None and trials is None:
        others = sorted(grid.trials)
        hint = f" (its trial tables: {', '.join(others)}; name one with data.trial_table=NAME)" if others else ""
        warnings.warn(f"session {session_id!r} has no {table!r} trial table{hint}; cutting continuous "
                      f"windows of {window_bins} bins instead of windows aligned to {align!r}",
                      RuntimeWarning, stacklevel=3)
        align = None
    if align == "auto" and trials is not None:
        align = next((c for c in AUTO_ALIGN if c in trials), None)
        if align is None:
            warnings.warn(f"session {session_id!r}: no event column among {', '.join(AUTO_ALIGN)}; cutting "
                          f"continuous windows", RuntimeWarning, stacklevel=3)
    if align is not None:
        if align not in trials:
            raise ValueError(f"session {session_id!r}: trial table {table!r} has no column {align!r}; "
                             f"columns: {sorted(trials)}; pass align=<one of them>, or an empty align (data.align=) "
                             "for continuous windows")
        if pre_ms % bin_ms:
            raise ValueError(f"pre_ms must be a multiple of bin_ms={bin_ms}, got {pre_ms}")
        event_bin = pre_ms // bin_ms
        if event_bin >= window_bins:
            raise ValueError(f"pre_ms={pre_ms} ({event_bin} bins) leaves no bin at or after the event "
                             f"in a {window_bins}-bin window; lower pre_ms or raise window_bins")
        event_s = np.array([_float_or_nan(v) for v in trials[align]], dtype=np.float64)
        has_event = np.isfinite(event_s)
        event_us = np.zeros(event_s.size, dtype=np.int64)
        event_us[has_event] = np.rint(event_s[has_event] * 1e6).astype(np.int64)
        bin_us = bin_ms * 1000
        if event_rounding == "nearest":  # the event within half a bin of the event bin's start
            start_bin = (event_us - grid.t0_ms * 1000 + bin_us // 2) // bin_us - event_bin
        else:  # the event inside the event bin
            start_bin = (event_us - grid.t0_ms * 1000) // bin_us - event_bin
        inside = has_event & (start_bin >= 0) & (start_bin + window_bins <= G)
        ok = inside.copy()
        for i in np.flatnonzero(inside):
            ok[i] = bool(grid.valid_G[start_bin[i]:start_bin[i] + window_bins].all())
        skipped = {"missing_event": int((~has_event).sum()),
                   "outside_recording": int((has_event & ~inside).sum()),
                   "gap_in_recording": int((inside & ~ok).sum())}
        trial_index = np.flatnonzero(ok).astype(np.int64)
        trial_index, filtered = _trial_filters(trials, trial_index, align, drop_nogo=drop_nogo,
                                               rt_range_ms=rt_range_ms)
        skipped.update(filtered)
        starts = start_bin[trial_index]
        labels = _discrete_labels(trials, trial_index, many_valued=many_valued)
    else:
        stride = window_bins if stride_bins is None else stride_bins
        if not is_int(stride) or stride < 1:
            raise ValueError(f"stride_bins must be a positive int, got {stride_bins!r}")
        stride = int(stride)
        cand = np.arange(0, G - window_bins + 1, stride, dtype=np.int64)
        ok = np.array([grid.valid_G[s:s + window_bins].all() for s in cand], dtype=bool)
        skipped = {"gap_in_recording": int((~ok).sum())}
        starts = cand[ok]
        trial_index = np.full(starts.size, -1, dtype=np.int64)
    if any(skipped.values()):
        what = "trials" if align is not None else "windows"
        warnings.warn(f"session {session_id!r}: skipped {what}: "
                      + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items() if v),
                      RuntimeWarning, stacklevel=3)
    if starts.size == 0:
        warnings.warn(f"session {session_id!r}: no window of {window_bins} bins fits", RuntimeWarning,
                      stacklevel=3)

    unit_index = np.arange(grid.counts_NG.shape[0], dtype=np.int64)
    if min_rate_hz > 0:
        covered = grid.valid_G.sum()
        rate_hz = grid.counts_NG[:, grid.valid_G].sum(axis=1) / max(covered * bin_ms / 1000.0, 1e-12)
        unit_index = np.flatnonzero(rate_hz >= min_rate_hz).astype(np.int64)
        if unit_index.size == 0:
            raise ValueError(f"session {session_id!r}: no unit fires at >= {min_rate_hz} Hz (max "
                             f"{rate_hz.max():.3g} Hz); lower min_rate_hz")
    idx_KT = starts[:, None] + np.arange(window_bins)[None, :]
    counts_KTN = np.ascontiguousarray(grid.counts_NG[unit_index][:, idx_KT].transpose(1, 2, 0))
    behavior = None
    if grid.behavior_CG is not None:
        behavior = np.ascontiguousarray(grid.behavior_CG[:, idx_KT].transpose(1, 2, 0))
    unit_regions = [grid.unit_regions[i] for i in unit_index]
    names = sorted(set(unit_regions))
    region_ids = np.array([names.index(r) for r in unit_regions], dtype=np.int64)
    split = _assign_split(starts.size, split_fractions, seed, session_id)
    _warn_cross_split_overlap(session_id, starts, split, window_bins, bin_ms, continuous=align is None)
    return SessionWindows(
        session_id=session_id,
        counts=counts_KTN,
        unit_regions=unit_regions,
        region_ids=region_ids,
        t_start_ms=(grid.t0_ms + starts * bin_ms).astype(np.int64),
        split=split,
        bin_ms=bin_ms,
        labels=labels,
        behavior=behavior,
        behavior_names=list(grid.behavior_names) if behavior is not None else [],
        align=align,
        event_bin=event_bin,
        trial_index=trial_index,
        skipped=skipped,
        unit_index=unit_index,
        units_dropped=int(grid.counts_NG.shape[0] - unit_index.size),
        many_valued=many_valued,
    )


def _warn_cross_split_overlap(session_id: str, starts: np.ndarray, split: np.ndarray, window_bins: int,
                              bin_ms: int, *, continuous: bool) -> None:
    """Warn when held-out (val / test) windows share bins with train windows: trials closer than
    the window length (or a continuous stride below it) put some held-out spikes in training."""
    train = np.sort(starts[split == "train"])
    held = starts[split != "train"]
    # a held-out window shares bins with a train window starting within window_bins of it
    n_near = np.searchsorted(train, held + window_bins, "left") - np.searchsorted(train, held - window_bins, "right")
    shared = np.flatnonzero(n_near > 0)
    if shared.size:
        fix = "a stride of at least window_bins" if continuous else "fewer bins per window (data.window_bins)"
        why = "a stride shorter than" if continuous else "events closer than"
        warnings.warn(f"session {session_id!r}: {shared.size} val/test window(s) share bins with train windows "
                      f"({why} the {window_bins * bin_ms / 1000:g} s window), so part of their spikes is "
                      f"trained on; use {fix}", RuntimeWarning, stacklevel=4)




def _check_window_args(window_bins, pre_ms) -> tuple[int, int]:
    """``(window_bins, pre_ms)`` as Python ints (numpy integers accepted), or a one-line ValueError."""
    if not is_int(window_bins) or window_bins < 1:
        raise ValueError(f"window_bins must be a positive int, got {window_bins!r}")
    if not is_int(pre_ms) or pre_ms < 0:
        raise ValueError(f"pre_ms must be a non-negative int (milliseconds), got {pre_ms!r}")
    return int(window_bins), int(pre_ms)


def make_session_windows(corpus: Corpus | str | Path, session_id: str, *, window_bins: int = 100,
                         align: str | None = "stim_on_time", pre_ms: int = 500, table: str = "trials",
                         stride_bins: int | None = None,
                         split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                         seed: int = 0, event_rounding: str = "floor", drop_nogo: bool = False,
                         rt_range_ms: tuple[float, float] | None = None,
                         min_rate_hz: float = 0.0) -> SessionWindows:
    """Cut one session of a corpus into windows of ``window_bins`` bins (see the module docstring).

    Args:
        corpus: a :class:`~spikefm.corpus.reader.Corpus` or its path.
        session_id: the session; its rows are read from every corpus split.
        window_bins: T, bins per window (default 100 = 2 s at 20 ms).
        align: trial column holding the event time (s) to align to, or None for continuous windows.
            A session without ``table`` falls back to continuous windows (with a warning).
        pre_ms: window start before the event (ms, a multiple of the bin width).
        table: trial table holding ``align``.
        stride_bins: step between continuous windows (default ``window_bins``, no overlap; a
            smaller stride makes overlapping windows that can land on both sides of the split).
        split_fractions: (train, val, test) fractions of the windows, summing to 1.
        seed: split seed (combined with the session id).
        event_rounding: ``"floor"``: the event lies inside the event bin (up to one bin before
            its end); ``"nearest"``: window edges on the bin edge nearest the event (within half
            a bin).
        drop_nogo: leave out trials whose ``choice`` is 0 or missing.
        rt_range_ms: keep trials whose ``first_movement_time`` - event lies in (min, max) ms.
        min_rate_hz: leave out units whose mean rate over the recording is below this.

    Returns:
        :class:`SessionWindows`.
    """
    window_bins, pre_ms = _check_window_args(window_bins, pre_ms)
    fr = _check_fractions(split_fractions)
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    rows = _collect_rows(corpus, [session_id])
    _check_one_timeline(corpus, rows)
    grid = _assemble(session_id, rows[session_id], imported=_imported(corpus))
    return _windows_from_grid(grid, session_id, window_bins=window_bins,
                              align=align, pre_ms=pre_ms, table=table, stride_bins=stride_bins,
                              split_fractions=fr, seed=seed, event_rounding=event_rounding,
                              drop_nogo=drop_nogo, rt_range_ms=None if rt_range_ms is None else tuple(rt_range_ms),
                              min_rate_hz=min_rate_hz)


def _check_table_named(rows: dict[str, list[CorpusRow]], table: str, align: str | None) -> None:
    """A trial table named other than the default that none of the sessions has is a typo, not a
    request for continuous windows: refused in one line naming the tables the sessions do have.
    (The default table missing from some or all sessions keeps the per-session fallback.)"""
    if align is None or table == WINDOW_DEFAULTS["table"] or \
            any(table in row.trials for rs in rows.values() for row in rs):
        return
    present = sorted({t for rs in rows.values() for row in rs for t in row.trials})
    have = f"their trial tables: {', '.join(present)}" if present else "they have no trial table"
    fix = "name one of them with data.trial_table=NAME" if present else "leave data.trial_table unset"
    raise ValueError(f"trial table {table!r}: none of the {len(rows)} sessions has it ({have}); {fix}, "
                     "or pass an empty align (data.align=) for continuous windows")


def load_all_windows(corpus: Corpus | str | Path, session_ids: Sequence[str] | None = None, *,
                     require_table: bool = True, **kw) -> dict[str, SessionWindows]:
    """:func:`make_session_windows` for several sessions (default: all), reading the shards once.

    ``require_table``: a ``table`` other than the default that none of the sessions holds is
    refused (a typo would train on continuous windows); False to cut a finished run's windows
    again as its training did (its sessions then fell back to continuous windows, with a warning).

    Returns:
        session id -> :class:`SessionWindows`, in the order of ``session_ids``.
    """
    corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    if session_ids is None:
        session_ids = corpus.session_ids()
    if isinstance(session_ids, str):
        raise TypeError(f"session_ids must be a list of session ids, got the string {session_ids!r}; "
                        f"for one session pass [{session_ids!r}]")
    opts = dict(WINDOW_DEFAULTS)
    unknown = set(kw) - set(opts)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; valid: {sorted(opts)}")
    opts.update(kw)
    if opts["rt_range_ms"] is not None:
        opts["rt_range_ms"] = tuple(opts["rt_range_ms"])
    opts["window_bins"], opts["pre_ms"] = _check_window_args(opts["window_bins"], opts["pre_ms"])
    opts["split_fractions"] = _check_fractions(opts["split_fractions"])
    rows = _collect_rows(corpus, list(session_ids))
    _check_one_timeline(corpus, rows)
    if require_table:
        _check_table_named(rows, opts["table"], opts["align"])
    imported = _imported(corpus)
    return {s: _windows_from_grid(_assemble(s, rows[s], imported=imported), s, **opts) for s in session_ids}


# ---------------------------------------------------------------------------------------------
# Saved splits


def save_splits(path: str | Path, windows_by_session: dict[str, SessionWindows]) -> None:
    """Write which windows are in which split, as JSON (temporary name, then rename).

    Format: ``{"version": 1, "sessions": {id: {"bin_ms", "window_bins", "align", "t_start_ms":
    [...], "split": [...]}}}``; windows are identified by their start time on the session clock.
    """
    obj = {"version": _SPLITS_FORMAT_VERSION, "sessions": {
        sid: {"bin_ms": int(w.bin_ms), "window_bins": w.num_bins, "align": w.align,
              "t_start_ms": [int(x) for x in w.t_start_ms], "split": [str(x) for x in w.split]}
        for sid, w in windows_by_session.items()}}
    write_bytes_atomic(path, (json.dumps(obj, separators=(",", ":")) + "\n").encode())


def load_splits(path: str | Path) -> dict[str, dict]:
    """Read a :func:`save_splits` file. Returns session id -> {"t_start_ms", "split", ...}."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read saved splits ({exc}); expected a file written by "
                         "save_splits") from None
    if not isinstance(obj, dict) or obj.get("version") != _SPLITS_FORMAT_VERSION or "sessions" not in obj:
        raise ValueError(f"{path}: not a splits file of version {_SPLITS_FORMAT_VERSION}")
    return obj["sessions"]


def apply_splits(windows_by_session: dict[str, SessionWindows],
                 splits: dict[str, dict] | str | Path) -> dict[str, SessionWindows]:
    """Give windows the splits saved by :func:`save_splits` (matched by window start time).

    Every session in ``windows_by_session`` must be in ``splits`` with exactly the same windows
    (sessions only in ``splits`` are ignored); otherwise the data changed since the splits were
    saved and ValueError says how.

    Returns:
        a new dict of copies of the windows with their ``split`` replaced.
    """
    if isinstance(splits, (str, Path)):
        splits = load_splits(splits)
    out = {}
    for sid, w in windows_by_session.items():
        if sid not in splits:
            raise ValueError(f"session {sid!r} is not in the saved splits; saved sessions: "
                             f"{sorted(splits)[:10]}")
        saved = splits[sid]
        if int(saved.get("bin_ms", w.bin_ms)) != w.bin_ms or \
                int(saved.get("window_bins", w.num_bins)) != w.num_bins:
            raise ValueError(f"session {sid!r}: splits were saved for {saved.get('window_bins')}-bin "
                             f"windows of {saved.get('bin_ms')} ms, these are {w.num_bins} bins of "
                             f"{w.bin_ms} ms; cut the windows with the same options")
        t_saved = np.asarray(saved["t_start_ms"], dtype=np.int64)
        s_saved = np.asarray(saved["split"], dtype=str)
        if t_saved.shape != s_saved.shape or not np.isin(s_saved, SPLIT_NAMES).all():
            raise ValueError(f"session {sid!r}: malformed saved splits")
        # Match as multisets: the j-th window starting at time t matches the j-th saved one.
        o_saved = np.argsort(t_saved, kind="stable")
        o_now = np.argsort(w.t_start_ms, kind="stable")
        if t_saved.size != w.num_windows or not np.array_equal(t_saved[o_saved], w.t_start_ms[o_now]):
            extra = np.setdiff1d(w.t_start_ms, t_saved).size
            gone = np.setdiff1d(t_saved, w.t_start_ms).size
            raise ValueError(f"session {sid!r}: windows differ from the saved splits ({t_saved.size} "
                             f"saved, {w.num_windows} now; {extra} start times new, {gone} missing); "
                             "cut the windows from the same corpus with the same options")
        split = np.empty(w.num_windows, dtype=s_saved.dtype)
        split[o_now] = s_saved[o_saved]
        out[sid] = dataclasses.replace(w, split=split.astype(str))
    return out


# ---------------------------------------------------------------------------------------------
# Batches


class WindowBatcher:
    """Infinite iterator of batches of windows that may mix sessions.

    Each epoch is a seeded permutation (``default_rng([seed, epoch])``) of all windows of
    ``split`` over all sessions (sessions in sorted id order, windows in index order, before
    shuffling); rank ``r`` of ``world_size`` takes every ``world_size``-th window of it, so ranks
    never share a window within an epoch. Batches run across epoch ends.

    Batch dict:
        ``counts_BTN`` float32 (zeros at padding), ``unit_valid_BN`` bool, ``region_BN`` int64
        (-1 at padding), ``session_ids`` list[str], ``window_index_B`` int64 (index of each window
        in its :class:`SessionWindows`). N is the batch's largest unit count.

    Args:
        windows_by_session: session id -> :class:`SessionWindows` (equal ``num_bins``).
        batch_size: windows per batch (per rank).
        seed: order seed.
        split: ``"train"``, ``"val"``, ``"test"``, or None for every window.
        rank, world_size: this process's share.
    """

    def __init__(self, windows_by_session: dict[str, SessionWindows], *, batch_size: int, seed: int = 0,
                 split: str | None = "train", rank: int = 0, world_size: int = 1):
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not is_int(world_size) or world_size < 1 or not is_int(rank) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not windows_by_session:
            raise ValueError("windows_by_session is empty; give at least one session")
        bins = {w.num_bins for w in windows_by_session.values()}
        if len(bins) != 1:
            raise ValueError(f"all sessions must have windows of the same length, got {sorted(bins)} "
                             "bins; cut them with one window_bins")
        self.windows = windows_by_session
        self.batch_size, self.seed, self.split = batch_size, int(seed), split
        self.rank, self.world_size = rank, world_size
        self._session_order = sorted(windows_by_session)
        sess, idx = [], []
        for j, sid in enumerate(self._session_order):
            k = windows_by_session[sid].indices(split)
            sess.append(np.full(k.size, j, dtype=np.int64))
            idx.append(k)
        self._item_session = np.concatenate(sess)
        self._item_window = np.concatenate(idx)
        n = self._item_session.size
        if n == 0:
            raise ValueError(f"split {split!r} has no window in its {len(windows_by_session)} session(s); give it a "
                             "share (data.split_fractions is train, val, test) or longer sessions")
        if n < world_size:
            raise ValueError(f"split {split!r} has {n} windows over {len(windows_by_session)} sessions, "
                             f"fewer than world_size={world_size}; use fewer ranks or more data")
        self.num_windows = n
        self.epoch, self.pos = 0, 0
        self._cache_epoch, self._cache = -1, np.zeros(0, dtype=np.int64)

    def _mine(self, epoch: int) -> np.ndarray:
        if epoch != self._cache_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._cache, self._cache_epoch = perm[self.rank::self.world_size], epoch
        return self._cache

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_windows": self.num_windows, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        got = {k: state.get(k) for k in ("seed", "rank", "world_size", "num_windows", "split")}
        have = {k: getattr(self, k) for k in got}
        if got != have:
            raise ValueError(f"batcher state was saved with {got}; this batcher has {have}; build it "
                             "from the same windows, split, seed, rank and world size")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        items = []
        while len(items) < self.batch_size:
            mine = self._mine(self.epoch)
            take = mine[self.pos:self.pos + self.batch_size - len(items)]
            items.extend(take.tolist())
            self.pos += take.size
            if self.pos >= mine.size:
                self.epoch, self.pos = self.epoch + 1, 0
        return self._collate(items)

    def _collate(self, items: list[int]) -> dict:
        B = len(items)
        ws = [self.windows[self._session_order[self._item_session[i]]] for i in items]
        ks = [int(self._item_window[i]) for i in items]
        T = ws[0].num_bins
        N = max(w.num_units for w in ws)
        counts = np.zeros((B, T, N), dtype=np.float32)
        valid = np.zeros((B, N), dtype=bool)
        region = np.full((B, N), -1, dtype=np.int64)
        for b, (w, k) in enumerate(zip(ws, ks)):
            n = w.num_units
            counts[b, :, :n] = w.counts[k]
            valid[b, :n] = True
            region[b, :n] = w.region_ids
        return {"counts_BTN": torch.from_numpy(counts), "unit_valid_BN": torch.from_numpy(valid),
                "region_BN": torch.from_numpy(region), "session_ids": [w.session_id for w in ws],
                "window_index_B": torch.tensor(ks, dtype=torch.long)}


class SeededBatchLoader:
    """Wraps a batch iterator with ``state_dict`` / ``load_state_dict`` (a :class:`WindowBatcher`):
    each batch, passed through ``transform``, gets a ``mask_seed`` (int64 tensor) of
    ``seed_fn(seed, rank, counter)``, so every micro-batch of every rank has its own mask stream.
    ``state_dict`` holds the wrapped position and the batch counter: a resumed run draws the same
    windows with the same masks. The masked families' training loaders are this class.
    """

    def __init__(self, batcher, seed: int, rank: int, seed_fn, transform=None) -> None:
        self.batcher, self.seed, self.rank = batcher, int(seed), int(rank)
        self.seed_fn, self.transform = seed_fn, transform
        self.counter = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batcher)
        if self.transform is not None:
            batch = self.transform(batch)
        batch["mask_seed"] = torch.tensor(self.seed_fn(self.seed, self.rank, self.counter), dtype=torch.long)
        self.counter += 1
        return batch

    def state_dict(self) -> dict:
        return {"batcher": self.batcher.state_dict(), "counter": self.counter, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has {self.seed}")
        self.batcher.load_state_dict(state["batcher"])
        self.counter = int(state["counter"])
