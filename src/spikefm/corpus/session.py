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
