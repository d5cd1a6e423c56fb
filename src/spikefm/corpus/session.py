"""An in-memory recording session, as read from an NWB file (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BehaviorSeries:
    """One behavioural time series as found in a file.

    Attributes:
        name: Name recorded in the corpus (``wheel_speed``; a 2-D series gives ``name_0``...).
        timestamps_s: (num_samples,) float64 seconds from the session reference time, increasing.
        values: (num_samples,) or (num_samples, num_dims) float array.
    """

    name: str
    timestamps_s: np.ndarray
    values: np.ndarray


@dataclass
class SessionRecord:
    """Everything spikefm keeps from one recording.

    Attributes:
        session_id, subject_id, source_dataset: Neural Pile identifiers (strings).
        species: e.g. ``"Mus musculus"``; ``""`` when the file does not say.
        spike_times_s: (num_spikes,) float64, all units' spikes, seconds from session reference.
        unit_index: (num_spikes,) int64 unit number in ``[0, num_units)`` of each spike.
        unit_ids: (num_units,) unit identifiers as strings.
        unit_regions: (num_units,) brain region of each unit (``"unknown"`` when absent).
        trials: {table name: {column: 1-D array}}; times in seconds.
        behavior: behavioural time series found in the file.
        provenance: where the data came from (path, sha256, dandiset, version, asset path).
        license: licence string when known, else ``""``.
        notes: one line per thing of the file that was left out (a behaviour series of an
            unusable shape or type), for the build to show as warnings.
        obs_intervals: per unit, the (k, 2) [start, stop) seconds it was observed
            (``units.obs_intervals``), or None when the file does not say (observed throughout).
    """

    session_id: str
    subject_id: str
    source_dataset: str
    species: str
    spike_times_s: np.ndarray
    unit_index: np.ndarray
    unit_ids: list[str]
    unit_regions: list[str]
    trials: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    behavior: list[BehaviorSeries] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    license: str = ""
    notes: list[str] = field(default_factory=list)
    obs_intervals: list[np.ndarray] | None = None

    @property
    def num_units(self) -> int:
        return len(self.unit_ids)

    @property
    def is_human(self) -> bool:
        return is_human_species(self.species)


def is_human_species(species: str) -> bool:
    """True for human recordings (``Homo sapiens``, NCBI taxon 9606, or "human")."""
    s = (species or "").strip().lower()
    return s in {"homo sapiens", "human", "ncbitaxon:9606"} or s.endswith("/ncbitaxon_9606")


#: A silence of all units together must last longer than this, and longer than all the recording
#: before it, to end the recording (see :func:`recording_end_s`).
END_SILENCE_MIN_S = 60.0
#: The share of the latest spikes searched for that silence.
END_TAIL_FRACTION = 0.01


def spike_time_bound_s(spike_times_s: np.ndarray) -> float:
    """The last spike before the recording's spikes stop: a robust bound on the spike times.

    Among the latest ``END_TAIL_FRACTION`` of the spikes (all units together, in time order,
    starting at the spike at that quantile), find the first silence longer than both
    ``END_SILENCE_MIN_S`` and the time from the first spike to where it starts; the bound is the
    spike before it, or the last spike when there is no such silence. A few stray times far past
    the others (fewer than 1 % of the spikes) therefore do not move it, while real spikes never
    come after a silence longer than all the recording before them. O(num_spikes): one partition,
    and a sort of the last 1 % only.
    """
    t = np.asarray(spike_times_s, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("no spike times: the bound of an empty spike train is undefined")
    k = int((t.size - 1) * (1.0 - END_TAIL_FRACTION))
    t_first = float(t.min())
    t_k = float(np.partition(t, k)[k])
    tail = np.concatenate(([t_k], np.sort(t[t > t_k])))
    ends = long_silences(tail, t_first)
    return float(tail[ends[0]] if ends.size else tail[-1])


def long_silences(times_s: np.ndarray, t_first_s: float) -> np.ndarray:
    """Indices ``i`` of sorted activity times ``times_s`` after which all is silent for longer than
    both ``END_SILENCE_MIN_S`` and all the recording before (from ``t_first_s`` to ``times_s[i]``):
    a silence real spikes never come after."""
    return np.flatnonzero(np.diff(times_s) > np.maximum(times_s[:-1] - t_first_s, END_SILENCE_MIN_S))


def recording_end_s(rec: SessionRecord) -> tuple[float, str]:
    """When the recording ends, to tell stray spike times from real ones.

    The latest of: the robust spike-time bound (:func:`spike_time_bound_s`); the latest finite
    ``start_time`` / ``stop_time`` of any trial or interval table; the last timestamp of any
    behavioural series. Spikes after it are "past the end" (``--spikes-past-end``).

    Returns:
        (end in seconds from the session reference time, what set it: ``"spike times"``,
        ``"trials"`` or ``"behaviour"``).
    """
    candidates = [(spike_time_bound_s(rec.spike_times_s), "spike times")]
    for cols in rec.trials.values():
        for name in ("start_time", "stop_time"):
            v = np.asarray(cols.get(name, []), dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                candidates.append((float(v.max()), "trials"))
    for series in rec.behavior:
        if len(series.timestamps_s):
            candidates.append((float(series.timestamps_s[-1]), "behaviour"))
    return max(candidates, key=lambda c: c[0])
