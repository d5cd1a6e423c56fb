"""Synthetic recordings written as real NWB files, with the ground truth next to them.

``synthesize(OUT_DIR, ...)`` writes a DANDI-like tree::

    OUT_DIR/
      sub-ibl01/sub-ibl01_ses-000.nwb          # pynwb file, looks like a user's recording
      sub-ibl01/sub-ibl01_ses-000.truth.npz    # expected counts, latents, readout (see below)
      sub-ibl01/sub-ibl01_ses-001.nwb
      sub-ibl02/...

Generative model (per session, 20 ms bins on edges ``k * 20 ms`` from the session reference time):

* Latents ``z_TL`` (``truth["latents"]``, names in ``truth["latent_names"]``) of three kinds:
  task-driven ones (event kernels at stimulus onsets, choices, feedback, go cues; hand or wheel
  velocity), autonomous ones (a noisy damped oscillator, a shared AR(1) latent, and per-region
  private latents that form one coupled VAR(1), so each region is partly predictable from the
  others), and a slow AR(1) drift. Sessions of one *family* (session ``i`` is in family
  ``i % num_families``) share every dynamics parameter: the VAR matrix and noise, the task kernels
  and the behaviour-to-neural lags; their unit counts and readouts differ. With several families
  the families are made to differ, not left to chance draws from one range: family ``f`` of ``K``
  takes its oscillator frequency and its stimulus (``ibl``) or go-cue (``motor``) response latency
  from the ``f``-th of ``K`` log-spaced bands of a wider range, and ``ibl`` sessions record two or
  three regions of their family's three (a seeded rotation over the five by two, so families f
  and f+1 share one region; with three families it wraps and the third shares two with the first).
  One family (the default) draws exactly as before.
* Each unit belongs to one region and reads out the shared latents (weighted by a region profile)
  plus its own region's private latents: ``log lambda_u(t) = bias_u + loadings_u @ z(t)``, where
  ``lambda`` is the expected count in the bin. The rate is constant inside each bin. Biases are
  tuned so that about 87-90 % of (unit, bin) cells are expected to be zero, as in real 20 ms data;
  expected counts are capped at ``MAX_EXPECTED_COUNT`` (250 Hz).
* Counts are ``Poisson(lambda)`` and each spike is placed uniformly at random inside its bin, but
  at least ``SPIKE_EDGE_MARGIN_S`` (1 microsecond) away from both bin edges: float64 rounding of
  ``k * 0.02`` is ~1e-13 s, so binning the NWB spike times on the edges ``k * 20 / 1000`` (as
  ``np.histogram`` or :func:`spikefm.corpus.binning.bin_spikes` do) recovers exactly the sampled
  counts. Spike times are therefore always > 0.

Truth file keys (``load_truth``): ``expected_counts`` float32 (num_units, num_bins), ``bin_ms``
(20), ``t_start_ms`` (0), ``family``, ``num_families``, ``latents`` float32 (num_bins,
num_latents), ``latent_names``, ``unit_regions``, ``unit_ids``, ``loadings`` (num_units,
num_latents), ``biases`` (num_units,), ``session_id``, ``subject_id``, ``preset``, ``seed``,
``session_index``, ``dynamics_A`` / ``dynamics_noise_sd`` / ``dynamics_names`` (the family's VAR(1)
over the autonomous latents), ``kernel_<name>`` and ``kernel_<name>_offset_bins`` (the family's
event kernels, sampled per 20 ms bin starting at that lag), ``family_param_names`` /
``family_param_values`` (other family scalars, e.g. behaviour lags), ``family_regions`` (the regions
the family's sessions record from).

This module uses numpy, pynwb and h5py only (corpus/ never imports torch).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from ..argtypes import is_int
from ..fileio import remove_stale_temporaries, write_atomic

PRESETS = ("ibl", "motor", "spontaneous")

BIN_MS = 20
_BIN_S = BIN_MS / 1000.0
#: Spikes are kept this far (seconds) from both edges of their 20 ms bin; see the module docstring.
SPIKE_EDGE_MARGIN_S = 1e-6
#: Cap on the expected count per 20 ms bin (250 Hz), so counts never approach uint8 clipping.
MAX_EXPECTED_COUNT = 5.0
MIN_DURATION_S = 10.0
#: Most units x bins one synthetic session may have (its float arrays take ~40 bytes per cell):
#: e.g. 1,000 units for 11 hours. Larger requests fail at once instead of allocating until killed.
MAX_SESSION_CELLS = 200_000_000
#: Default range of units per session (inclusive).
UNITS_RANGE = (40, 200)
#: Range from which each session's expected fraction of zero (unit, bin) cells is drawn.
ZERO_FRACTION_RANGE = (0.87, 0.90)

REGIONS = {
    "ibl": ("VISp", "CA1", "LP", "MOs", "PO"),
    "motor": ("M1", "PMd"),
    "spontaneous": ("CA1", "DG", "mPFC"),
}
SPECIES = {"ibl": "Mus musculus", "motor": "Macaca mulatta", "spontaneous": "Mus musculus"}
_PRIVATE_PER_REGION = 2
#: With several families, family f's oscillator frequency is drawn from the f-th of K log-spaced
#: bands of this range (Hz), so that families differ in their dynamics, not only by chance.
_FAMILY_OSC_HZ = {"ibl": (1.0, 6.0), "motor": (0.7, 4.0), "spontaneous": (4.0, 12.0)}
#: ... and every region reads the oscillator out this many times more strongly than one family does.
_FAMILY_OSC_GAIN = 3.0
_SHARED_AR_NAME = {"ibl": "whisk", "motor": "engagement", "spontaneous": "state"}
_TASK_LATENTS = {
    "ibl": ("stim", "choice", "move", "reward"),
    "motor": ("vel_x", "vel_y", "speed", "prep_cos", "prep_sin", "go"),
    "spontaneous": ("ripple",),
}
#: Latents whose loadings are mostly positive (activity rises with them); the others are signed.
_UNSIGNED_LATENTS = {"stim", "move", "speed", "go", "ripple", "whisk", "engagement", "state"}

# How strongly each region reads out each shared latent (private latents have weight 1 in their own
# region and 0 elsewhere); a latent not listed gets _DEFAULT_WEIGHT. These make the regions'
# subspaces differ: VISp follows the stimulus, MOs the choice, M1 the hand velocity, and so on.
_DEFAULT_WEIGHT = 0.3
_REGION_PROFILES = {
    "ibl": {
        "VISp": {"stim": 2.5, "choice": 0.6, "move": 0.6, "reward": 0.4,
                 "osc_0": 0.5, "osc_1": 0.5, "whisk": 0.5},
        "CA1": {"stim": 0.5, "choice": 0.7, "move": 0.7, "reward": 1.2,
                "osc_0": 1.0, "osc_1": 1.0, "whisk": 0.4},
        "LP": {"stim": 1.5, "choice": 0.7, "move": 1.0, "reward": 0.4,
               "osc_0": 0.5, "osc_1": 0.5, "whisk": 0.8},
        "MOs": {"stim": 0.7, "choice": 2.0, "move": 1.4, "reward": 0.8,
                "osc_0": 0.4, "osc_1": 0.4, "whisk": 0.6},
        "PO": {"stim": 0.8, "choice": 0.7, "move": 1.0, "reward": 0.4,
               "osc_0": 0.5, "osc_1": 0.5, "whisk": 1.2},
    },
    "motor": {
        "M1": {"vel_x": 2.0, "vel_y": 2.0, "speed": 1.2, "prep_cos": 0.6, "prep_sin": 0.6, "go": 0.6,
               "osc_0": 0.8, "osc_1": 0.8, "engagement": 0.5},
        "PMd": {"vel_x": 0.9, "vel_y": 0.9, "speed": 0.8, "prep_cos": 1.8, "prep_sin": 1.8, "go": 1.2,
                "osc_0": 0.6, "osc_1": 0.6, "engagement": 0.5},
    },
    "spontaneous": {
        "CA1": {"ripple": 2.0, "osc_0": 1.2, "osc_1": 1.2, "state": 0.6},
        "DG": {"ripple": 1.0, "osc_0": 1.0, "osc_1": 1.0, "state": 0.6},
        "mPFC": {"ripple": 0.5, "osc_0": 0.4, "osc_1": 0.4, "state": 1.0},
    },
}
_SESSION_START = datetime(2024, 1, 1, 9, 0, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def synthesize(
    out_dir: str | os.PathLike,
    *,
    num_sessions: int = 4,
    seed: int = 0,
    preset: str = "ibl",
    num_families: int = 1,
    duration_s: float = 300.0,
    units_range: tuple[int, int] = UNITS_RANGE,
    progress: bool = False,
    region_tuning: float = 0.0,
    choice_signal: float = 1.0,
) -> list[pathlib.Path]:
    """Write ``num_sessions`` synthetic NWB recordings and their truth files under ``out_dir``.

    Session ``i`` belongs to subject ``i // 2`` and to family ``i % num_families``; its content
    depends only on (seed, preset, num_families, duration_s, units_range, region_tuning,
    choice_signal, i), not on ``num_sessions``, so asking for more sessions adds files without
    changing the earlier ones. Each file is written to a temporary name and renamed.

    Args:
        out_dir: output directory (created if missing).
        num_sessions: number of sessions, >= 1.
        seed: non-negative int; the whole output is a deterministic function of it.
        preset: one of ``PRESETS``: ``"ibl"`` (mouse decision task, wheel and whisker
            behaviour), ``"motor"`` (macaque centre-out reaching, hand velocity) or
            ``"spontaneous"`` (mouse, no task, no behaviour).
        num_families: number of groups of sessions sharing latent dynamics, 1..num_sessions.
        duration_s: session length in seconds (>= 10), rounded to whole 20 ms bins.
        units_range: (min, max) units per session, drawn uniformly per session; each region gets
            at least 5 units, so min must be >= 5 x the preset's largest number of regions.
        progress: print one line per written session to stderr.
        region_tuning: strength of a region-specific mean readout (0, the default, leaves the
            output exactly as without it). Region profiles only scale each latent's loadings, and
            signed loadings are symmetric about 0, so a region is then mostly told apart by the
            loading magnitudes. With ``region_tuning=a > 0`` every unit's loadings get ``a * m_r``
            (times the region profile) added, where ``m_r`` ~ N(0, I) over the latents is drawn
            once per region from ``(seed, region)`` and shared by every session, so units of one
            region share a tuning direction (linearly decodable ground truth for region
            classification). ``m_r`` is stored in the truth file as ``region_mean_loadings``.
        choice_signal: ``ibl`` only (another value with another preset is warned about and has no
            effect): amplitude of the choice latent (the neural correlate of the
            animal's actual choice, +-``choice_signal`` around the first movement); 1.0, the default,
            leaves the output exactly as without it. Every unit's modulation depth is normalised
            afterwards, so a smaller value gives the choice a smaller share of each unit's
            modulation: choice is then decodable from spikes on fewer trials (in the NEDS
            benchmark's held-out sessions a linear decoder is 79-96 % correct at 1.0 and 58-82 % at
            0.5). The wheel's sign follows the choice, so signed wheel decoding is harder too.

    Returns:
        The written ``.nwb`` paths, sorted.

    Raises:
        ValueError: an argument is out of range (the message names the valid choices).
    """
    _validate(num_sessions, seed, preset, num_families, duration_s)
    _validate_units(units_range, preset)
    if isinstance(region_tuning, bool) or not isinstance(region_tuning, (int, float)) \
            or not math.isfinite(region_tuning) or region_tuning < 0:
        raise ValueError(f"region_tuning must be a finite number >= 0, got {region_tuning!r}")
    if isinstance(choice_signal, bool) or not isinstance(choice_signal, (int, float)) \
            or not math.isfinite(choice_signal) or choice_signal < 0:
        raise ValueError(f"choice_signal must be a finite number >= 0, got {choice_signal!r}; "
                         "1.0 is the default strength")
    if choice_signal != 1.0 and preset != "ibl":
        warnings.warn(f"choice_signal={choice_signal!r} has no effect on the {preset!r} preset (it scales the "
                      "'ibl' preset's choice latent; the others have no choice)", RuntimeWarning, stacklevel=2)
    num_bins = int(round(float(duration_s) * 1000.0 / BIN_MS))
    if units_range[1] * num_bins > MAX_SESSION_CELLS:
        raise ValueError(
            f"a synthetic session may have at most {MAX_SESSION_CELLS:,} cells (units x {BIN_MS} ms "
            f"bins, about {MAX_SESSION_CELLS * 40 / 1e9:.0f} GB of memory), got up to {units_range[1]:,} "
            f"units x {num_bins:,} bins (--units {units_range[0]},{units_range[1]}, --duration-s "
            f"{duration_s:g}); use fewer units (--units) or shorter sessions (--duration-s)")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    family_ss, session_ss = np.random.SeedSequence(seed).spawn(2)
    families = [_make_family(preset, f, ss, num_families, seed)
                for f, ss in enumerate(family_ss.spawn(num_families))]
    session_seeds = session_ss.spawn(num_sessions)
    width = max(3, len(str(num_sessions - 1)))

    paths = []
    for i in range(num_sessions):
        subject_id = f"{preset}{i // 2 + 1:02d}"
        stem = f"sub-{subject_id}_ses-{i:0{width}d}"
        nwb_path = out / f"sub-{subject_id}" / f"{stem}.nwb"
        nwb_path.parent.mkdir(parents=True, exist_ok=True)
        ses = _simulate_session(
            families[i % num_families], num_bins, np.random.default_rng(session_seeds[i]),
            tuple(units_range), region_tuning=float(region_tuning), seed=int(seed),
            choice_signal=float(choice_signal),
        )
        meta = dict(
            session_id=stem, subject_id=subject_id, preset=preset, seed=int(seed),
            session_index=i, num_families=num_families, duration_s=float(duration_s),
        )
        for target in (truth_path(nwb_path), nwb_path):  # left by an interrupted earlier run
            remove_stale_temporaries(target)
        # Truth first: an .nwb that exists always has its truth file beside it.
        write_atomic(truth_path(nwb_path), lambda p: _write_truth(p, ses, meta))
        write_atomic(nwb_path, lambda p: _write_nwb(p, ses, meta))
        if progress:
            print(
                f"[synth] {nwb_path} ({ses.expected.shape[0]} units, {num_bins * BIN_MS / 1000:g} s, "
                f"{ses.spike_times.size} spikes, family {ses.family.index})",
                file=sys.stderr,
            )
        paths.append(nwb_path)
    return sorted(paths)


def truth_path(nwb_path: str | os.PathLike) -> pathlib.Path:
    """The truth file of an NWB file: ``<stem>.truth.npz`` in the same folder."""
    p = pathlib.Path(nwb_path)
    return p.with_name(p.stem + ".truth.npz")


def load_truth(nwb_or_truth_path: str | os.PathLike) -> dict:
    """Load a truth file, given it or its ``.nwb``.

    Returns:
        {key: value}: numpy arrays for arrays; Python int/float/str for scalars (``bin_ms``,
        ``t_start_ms``, ``family``, ``num_families``, ``session_id``, ``subject_id``, ``preset``,
        ``seed``, ``session_index``). Keys are listed in the module docstring.
    """
    p = pathlib.Path(nwb_or_truth_path)
    if p.name.endswith(".truth.npz"):
        tp = p
    elif p.suffix == ".nwb":
        tp = truth_path(p)
    else:
        raise ValueError(f"expected a .nwb or .truth.npz path, got {str(p)!r}")
    if not tp.exists():
        raise FileNotFoundError(f"no truth file at {tp}; was {p.name} written by spikefm synth?")
    out = {}
    with np.load(tp, allow_pickle=False) as z:
        for k in z.files:
            v = z[k]
            out[k] = v.item() if v.ndim == 0 else v
    return out


def truth_readout(truth: dict, unit_index=None, num_units: int | None = None) -> dict | None:
    """The generator's readout for a corpus's units: ``{"latent_names", "loadings_NZ", "biases_N",
    "max_count"}``, where the expected counts are ``min(exp(latents @ loadings.T + biases),
    max_count)``. ``unit_index`` picks the units a firing-rate filter kept when ``num_units`` of them
    remain; None when the truth holds no readout or its units do not match ``num_units``."""
    if "loadings" not in truth or "latent_names" not in truth or "biases" not in truth:
        return None
    w_NZ = np.asarray(truth["loadings"], dtype=np.float64)
    b_N = np.asarray(truth["biases"], dtype=np.float64)
    if num_units is not None and unit_index is not None and w_NZ.shape[0] != num_units \
            and len(unit_index) == num_units:
        w_NZ, b_N = w_NZ[unit_index], b_N[unit_index]
    if num_units is not None and w_NZ.shape[0] != num_units:
        return None
    return {"latent_names": [str(x) for x in truth["latent_names"]], "loadings_NZ": w_NZ, "biases_N": b_N,
            "max_count": MAX_EXPECTED_COUNT}


# --------------------------------------------------------------------------------------------
# Validation and file writing
# --------------------------------------------------------------------------------------------


def min_units(preset: str) -> int:
    """The fewest units a session of ``preset`` may have (5 per region it samples)."""
    return 5 * (4 if preset == "ibl" else len(REGIONS[preset]))


def _validate_units(units_range, preset: str) -> None:
    min_units_ = min_units(preset)
    ok = (isinstance(units_range, (tuple, list)) and len(units_range) == 2
          and all(is_int(x) for x in units_range) and min_units_ <= units_range[0] <= units_range[1])
    if not ok:
        raise ValueError(f"units_range (--units) must be two ints MIN,MAX with {min_units_} <= MIN <= "
                         f"MAX for preset {preset!r} (5 units per region at least), got {units_range!r}")


#: The largest seed: each session's .truth.npz stores it as an int64.
_MAX_SEED = 2**63 - 1


def _validate(num_sessions, seed, preset, num_families, duration_s) -> None:
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    if not is_int(num_sessions) or num_sessions < 1:
        raise ValueError(f"num_sessions (--sessions) must be an int >= 1, got {num_sessions!r}")
    if not is_int(seed) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed (--seed) must be a whole number in 0..{_MAX_SEED} (the ground truth files store it as "
                         f"a 64-bit integer), got {seed!r}")
    if not is_int(num_families) or not 1 <= num_families <= num_sessions:
        raise ValueError(
            f"num_families (--families) must be an int in [1, num_sessions={num_sessions}] so that "
            f"every family gets a session, got {num_families!r}"
        )
    check_duration(duration_s)


def check_duration(duration_s) -> None:
    """Refuse a session length the generator does not make (not a number, or under
    :data:`MIN_DURATION_S`), in one line naming ``--duration-s``."""
    if (
        isinstance(duration_s, bool)
        or not isinstance(duration_s, (int, float, np.integer, np.floating))
        or not math.isfinite(duration_s)
        or duration_s < MIN_DURATION_S
    ):
        raise ValueError(
            f"duration_s (--duration-s) must be a finite number >= {MIN_DURATION_S:g} seconds, "
            f"got {duration_s!r}"
        )


def _write_truth(path: pathlib.Path, ses: "_Session", meta: dict) -> None:
    fam = ses.family
    arrays = dict(
        expected_counts=ses.expected,
        bin_ms=np.int64(BIN_MS),
        t_start_ms=np.int64(0),
        family=np.int64(fam.index),
        num_families=np.int64(meta["num_families"]),
        latents=ses.latents,
        latent_names=np.array(ses.latent_names, dtype=str),
        unit_regions=np.array(ses.unit_regions, dtype=str),
        unit_ids=np.array(ses.unit_ids, dtype=str),
        loadings=ses.loadings.astype(np.float32),
        biases=ses.biases.astype(np.float32),
        session_id=np.str_(meta["session_id"]),
        subject_id=np.str_(meta["subject_id"]),
        preset=np.str_(meta["preset"]),
        seed=np.int64(meta["seed"]),
        session_index=np.int64(meta["session_index"]),
        dynamics_A=fam.A,
        dynamics_noise_sd=fam.noise_sd,
        dynamics_names=np.array(fam.state_names, dtype=str),
        family_param_names=np.array(list(fam.params), dtype=str),
        family_param_values=np.array(list(fam.params.values()), dtype=np.float64),
        family_regions=np.array(fam.regions, dtype=str),
    )
    if ses.region_means is not None:  # only with region_tuning > 0: default truth files unchanged
        arrays["region_mean_loadings"] = ses.region_means.astype(np.float32)
        arrays["region_mean_names"] = np.array(ses.regions, dtype=str)
    for name, (offset, kernel) in fam.kernels.items():
        arrays[f"kernel_{name}"] = kernel
        arrays[f"kernel_{name}_offset_bins"] = np.int64(offset)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_nwb(path: pathlib.Path, ses: "_Session", meta: dict) -> None:
    from hdmf.common import DynamicTableRegion, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.file import Subject
    from pynwb.misc import Units

    preset, i = meta["preset"], meta["session_index"]
    key = (
        f"spikefm-synth|{preset}|seed={meta['seed']}|families={meta['num_families']}|"
        f"duration={meta['duration_s']!r}|session={i}"
    )
    identifier = str(uuid.UUID(hashlib.sha256(key.encode()).hexdigest()[:32]))
    start = _SESSION_START + timedelta(days=i)
    subj = int(meta["subject_id"][len(preset):]) - 1
    subj_rng = np.random.default_rng([meta["seed"], subj, 7])  # same attributes for every session
    if preset == "motor":
        age = f"P{int(subj_rng.integers(5, 12))}Y"
    else:
        age = f"P{int(subj_rng.integers(60, 180))}D"
    nwb = NWBFile(
        session_description=f"spikefm synthetic '{preset}' session (ground truth in the .truth.npz "
        f"file beside this one)",
        identifier=identifier,
        session_start_time=start,
        file_create_date=[start],
        session_id=meta["session_id"],
        lab="spikefm synthetic",
        institution="spikefm",
        experiment_description=f"generated by spikefm.corpus.synth, preset={preset}, "
        f"seed={meta['seed']}, family={ses.family.index}",
        subject=Subject(
            subject_id=meta["subject_id"],
            species=SPECIES[preset],
            sex=str(subj_rng.choice(["F", "M"])),
            age=age,
            description="synthetic subject",
        ),
    )
    device = nwb.create_device(name="probe0", description="synthetic silicon probe")
    groups = {}
    for region in ses.regions:
        groups[region] = nwb.create_electrode_group(
            name=f"group_{region}", description=f"electrodes in {region}", location=region,
            device=device,
        )
    for u, region in enumerate(ses.unit_regions):
        nwb.add_electrode(group=groups[region], location=region, rel_y=float(20 * u))
    # The units table is built from whole columns: hdmf converts list-backed columns (what
    # add_unit fills) one element at a time, which is ~10x slower for 10^5 spikes.
    num_units = len(ses.unit_ids)
    bounds = np.searchsorted(ses.spike_units, np.arange(num_units + 1))
    spike_times = VectorData(name="spike_times", description="spike times (s)", data=ses.spike_times)
    electrodes = DynamicTableRegion(
        name="electrodes", description="the electrode of each unit",
        data=np.arange(num_units), table=nwb.electrodes,
    )
    columns = [
        spike_times,
        VectorIndex(name="spike_times_index", data=bounds[1:], target=spike_times),
        electrodes,
        VectorIndex(name="electrodes_index", data=np.arange(1, num_units + 1), target=electrodes),
        VectorData(name="electrode_group", description="electrode group of each unit",
                   data=[groups[r] for r in ses.unit_regions]),
        VectorData(name="brain_region", description="brain region of the unit (Allen acronym)",
                   data=np.array(ses.unit_regions, dtype=object)),
    ]
    nwb.units = Units(
        name="units", id=np.arange(num_units), columns=columns,
        description="synthetic units (one electrode each)", electrode_table=nwb.electrodes,
    )

    if ses.trials:
        cols = ses.trials
        for name in cols:
            if name not in ("start_time", "stop_time"):
                nwb.add_trial_column(name=name, description=_TRIAL_COLUMN_DOC.get(name, name))
        n = len(cols["start_time"])
        for t in range(n):
            nwb.add_trial(**{name: _py(v[t]) for name, v in cols.items()})
    if ses.blocks:
        table = TimeIntervals(name="blocks", description="blocks of constant stimulus prior")
        table.add_column(name="block_prior", description="probability that the stimulus is on the left")
        for t in range(len(ses.blocks["start_time"])):
            table.add_row(**{name: _py(v[t]) for name, v in ses.blocks.items()})
        nwb.add_time_intervals(table)
    if ses.behavior:
        module = nwb.create_processing_module(name="behavior", description="behavioural signals")
        for b in ses.behavior:
            kwargs = dict(name=b["name"], data=b["data"], unit=b["unit"], description=b["description"])
            if "timestamps" in b:
                kwargs["timestamps"] = b["timestamps"]
            else:
                kwargs["starting_time"] = b["starting_time"]
                kwargs["rate"] = b["rate"]
            module.add(TimeSeries(**kwargs))

    # the settings the identifier names, and the spikes themselves (which every other option,
    # --units, region tuning, choice signal, changes)
    content = hashlib.sha256(np.ascontiguousarray(ses.spike_times).tobytes()).hexdigest()
    _deterministic_object_ids(nwb, json.dumps(meta, sort_keys=True, default=str) + content)
    with warnings.catch_warnings():
        # `path` is write_atomic's temporary name; the file is renamed to *.nwb right after.
        warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)


def _deterministic_object_ids(nwb, settings: str) -> None:
    """Give every container an object id derived from ``settings`` (the file's generator settings
    and a digest of its spikes) and the container's place in the file (hdmf draws random uuid4s),
    so that a seed gives byte-identical files and other settings other ids."""
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"spikefm-synth/{nwb.identifier}/{settings}")
    for i, obj in enumerate(nwb.all_children()):
        ident = uuid.uuid5(base, f"{i}/{type(obj).__name__}/{obj.name}")
        obj._AbstractContainer__object_id = str(ident)  # hdmf keeps it in this private attribute
    nwb.all_children()  # rebuild hdmf's id index with the new ids


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


_TRIAL_COLUMN_DOC = {
    "stim_on_time": "stimulus onset (s)",
    "contrast": "stimulus contrast in [0, 1]",
    "stim_side": "stimulus side: -1 left, +1 right",
    "choice": "choice: -1 left, +1 right",
    "block_prior": "probability that the stimulus is on the left in this block (0.2/0.5/0.8)",
    "reward": "1 if the choice matched the stimulus side, else 0",
    "feedback_time": "time of feedback (s)",
    "first_movement_time": "wheel movement onset (s)",
    "target_on_time": "target appearance (s)",
    "go_cue_time": "go cue (s)",
    "move_onset_time": "hand movement onset (s)",
    "target_angle": "reach direction in radians, one of k * pi / 4",
}


# --------------------------------------------------------------------------------------------
# Families: shared latent dynamics
# --------------------------------------------------------------------------------------------
@dataclass
class _Family:
    preset: str
    index: int
    state_names: list[str]
    A: np.ndarray  # (D, D) VAR(1) matrix over the autonomous latents, per 20 ms bin
    noise_sd: np.ndarray  # (D,)
    kernels: dict[str, tuple[int, np.ndarray]]  # name -> (offset in bins, kernel per bin)
    params: dict[str, float] = field(default_factory=dict)
    regions: tuple[str, ...] = ()  # the regions its sessions record from
    osc_gain: float = 1.0  # multiplies every region's readout weight of the oscillator


def _ar_coef(tau_s: float) -> float:
    return math.exp(-_BIN_S / tau_s)


def _kernel(offset_s: float, length_s: float, fn) -> tuple[int, np.ndarray]:
    """An event kernel sampled at bin lags ``offset + j`` (bin centres), normalized to peak 1."""
    offset = int(round(offset_s / _BIN_S))
    lags_s = (offset + np.arange(int(round(length_s / _BIN_S)))) * _BIN_S + _BIN_S / 2
    k = fn(lags_s)
    return offset, k / np.abs(k).max()


def _alpha(t, latency, tau):
    x = np.clip(t - latency, 0.0, None) / tau
    return x * np.exp(1.0 - x)


def _band(lo: float, hi: float, index: int, num_families: int, u: float) -> float:
    """A value in the ``index``-th of ``num_families`` equal log-spaced bands of [lo, hi]."""
    return lo * (hi / lo) ** ((index + u) / num_families)


def _make_family(preset: str, index: int, ss: np.random.SeedSequence, num_families: int = 1,
                 seed: int = 0) -> _Family:
    rng = np.random.default_rng(ss)
    regions = REGIONS[preset]
    names = ["osc_0", "osc_1", "drift", _SHARED_AR_NAME[preset]]
    names += [f"{r}_p{j}" for r in regions for j in range(_PRIVATE_PER_REGION)]
    D = len(names)
    A = np.zeros((D, D))
    noise = np.zeros(D)

    osc_hz = {"ibl": (1.5, 3.0), "motor": (1.0, 2.0), "spontaneous": (6.0, 8.0)}[preset]
    rho = _ar_coef(rng.uniform(0.3, 1.0))
    osc_f = rng.uniform(*osc_hz)
    if num_families > 1:  # separated families: the f-th of K log bands of a wider range, and a
        # coherent oscillator (damping time 1.5-3 s) that every region reads out strongly
        osc_f = _band(*_FAMILY_OSC_HZ[preset], index, num_families, rng.uniform(0.15, 0.85))
        rho = _ar_coef(rng.uniform(1.5, 3.0))
    w = 2 * math.pi * osc_f * _BIN_S
    A[:2, :2] = rho * np.array([[math.cos(w), -math.sin(w)], [math.sin(w), math.cos(w)]])
    noise[:2] = math.sqrt(1 - rho**2)
    a = _ar_coef(rng.uniform(40.0, 120.0))  # slow drift
    A[2, 2], noise[2] = a, math.sqrt(1 - a**2)
    a = _ar_coef(rng.uniform(0.5, 2.0))  # shared AR(1)
    A[3, 3], noise[3] = a, math.sqrt(1 - a**2)

    # Private latents: AR(1) per latent plus coupling between regions (never within), so that one
    # region's private activity is partly predictable from the others' past, and only partly.
    P = len(regions) * _PRIVATE_PER_REGION
    a_priv = np.exp(-_BIN_S / rng.uniform(0.1, 0.8, size=P))
    C = rng.normal(0.0, 0.012, size=(P, P))
    region_of = np.repeat(np.arange(len(regions)), _PRIVATE_PER_REGION)
    C[region_of[:, None] == region_of[None, :]] = 0.0
    B = np.diag(a_priv) + C
    radius = np.abs(np.linalg.eigvals(B)).max()
    if radius > 0.995:
        C *= (0.995 - a_priv.max()) / max(radius - a_priv.max(), 1e-9)
        B = np.diag(a_priv) + C
    A[4:, 4:] = B
    noise[4:] = np.sqrt(1 - a_priv**2)

    kernels: dict[str, tuple[int, np.ndarray]] = {}
    params: dict[str, float] = {}
    if preset == "ibl":
        lat, tau = rng.uniform(0.04, 0.08), rng.uniform(0.05, 0.12)
        if num_families > 1:
            lat = _band(0.03, 0.16, index, num_families, rng.uniform(0.15, 0.85))
        sustain = rng.uniform(0.2, 0.4)
        kernels["stim"] = _kernel(
            0.0, 0.6, lambda t: _alpha(t, lat, tau) + sustain * (t > lat) * np.exp(-t / 0.4)
        )
        ramp, decay = rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.5)
        kernels["choice"] = _kernel(
            -ramp, ramp + 1.0,
            lambda t: np.where(t < 0.1, np.clip((t + ramp) / (ramp + 0.1), 0, 1),
                               np.exp(-(t - 0.1) / decay)),
        )
        tau_r = rng.uniform(0.1, 0.25)
        kernels["reward"] = _kernel(0.0, 0.8, lambda t: _alpha(t, 0.03, tau_r))
        params["move_lead_s"] = rng.uniform(0.05, 0.15)
        params["psychometric_width"] = rng.uniform(0.06, 0.12)
        params["lapse"] = rng.uniform(0.02, 0.08)
        params["prior_bias"] = rng.uniform(1.0, 2.5)
    elif preset == "motor":
        lat, tau = rng.uniform(0.08, 0.15), rng.uniform(0.06, 0.15)
        if num_families > 1:
            lat = _band(0.05, 0.25, index, num_families, rng.uniform(0.15, 0.85))
        kernels["go"] = _kernel(0.0, 0.6, lambda t: _alpha(t, lat, tau))
        params["velocity_lead_s"] = rng.uniform(0.06, 0.14)
        params["prep_rise_s"] = rng.uniform(0.1, 0.3)
        params["prep_decay_s"] = rng.uniform(0.1, 0.3)
    else:
        width = rng.uniform(0.02, 0.04)
        kernels["ripple"] = _kernel(-0.1, 0.2, lambda t: np.exp(-0.5 * (t / width) ** 2))
        params["ripple_rate_hz"] = rng.uniform(0.2, 0.5)
    regions = _family_regions(preset, index, num_families, seed)
    osc_gain = _FAMILY_OSC_GAIN if num_families > 1 else 1.0
    return _Family(preset, index, names, A, noise, kernels, params, regions, osc_gain)


def _family_regions(preset: str, index: int, num_families: int, seed: int) -> tuple[str, ...]:
    """Regions a family's sessions record from: all of the preset's, or with several ``ibl``
    families, three of the five per family (a seeded rotation by two: families f and f+1 share one
    region; with three families the third wraps round and shares two with the first)."""
    all_regions = REGIONS[preset]
    if num_families == 1 or preset != "ibl":
        return tuple(all_regions)
    key = int.from_bytes(hashlib.sha256(b"family-regions").digest()[:4], "little")
    perm = np.random.default_rng([int(seed), key]).permutation(len(all_regions))
    picked = sorted(int(perm[(2 * index + j) % len(all_regions)]) for j in range(3))
    return tuple(all_regions[j] for j in picked)


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------
@dataclass
class _Session:
    family: _Family
    regions: list[str]
    unit_regions: list[str]
    unit_ids: list[str]
    latent_names: list[str]
    latents: np.ndarray  # (num_bins, num_latents) float32
    loadings: np.ndarray  # (num_units, num_latents)
    biases: np.ndarray  # (num_units,)
    expected: np.ndarray  # (num_units, num_bins) float32
    spike_times: np.ndarray  # (num_spikes,) float64, grouped by unit, increasing within a unit
    spike_units: np.ndarray  # (num_spikes,) int64, non-decreasing
    trials: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray]
    behavior: list[dict]
    region_means: np.ndarray | None = None  # (len(regions), num_latents), with region_tuning > 0


def _simulate_var(fam: _Family, num_bins: int, rng: np.random.Generator) -> np.ndarray:
    """(num_bins, D) autonomous latents, started near stationarity (N(0, I) plus a 5 s burn-in)."""
    burn = 250
    D = len(fam.state_names)
    eps = rng.standard_normal((burn + num_bins, D)) * fam.noise_sd
    x = rng.standard_normal(D)
    A = fam.A
    out = np.empty((burn + num_bins, D))
    for t in range(burn + num_bins):
        x = A @ x + eps[t]
        out[t] = x
    return out[burn:]


def _event_latent(num_bins: int, event_s: np.ndarray, amp: np.ndarray, kernel) -> np.ndarray:
    offset, k = kernel
    z = np.zeros(num_bins)
    if len(event_s) == 0:
        return z
    idx = np.floor(np.asarray(event_s) / _BIN_S).astype(np.int64)[:, None] + offset + np.arange(len(k))
    vals = np.asarray(amp, dtype=np.float64)[:, None] * k[None, :]
    ok = (idx >= 0) & (idx < num_bins)
    np.add.at(z, idx[ok], vals[ok])
    return z


def _min_jerk_vel(tau):
    """Minimum-jerk speed profile on [0, 1] (bell shaped, integral 1, peak 1.875 at 0.5)."""
    inside = (tau >= 0) & (tau <= 1)
    return np.where(inside, 30 * tau**2 * (1 - tau) ** 2, 0.0)


def _min_jerk_pos(tau):
    t = np.clip(tau, 0.0, 1.0)
    return 10 * t**3 - 15 * t**4 + 6 * t**5


def _trial_starts(duration_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back trials of 2.5-3.5 s that end before the session does."""
    n_max = int(duration_s / 2.5) + 2
    lengths = rng.uniform(2.5, 3.5, size=n_max)
    bounds = rng.uniform(0.2, 1.0) + np.concatenate([[0.0], np.cumsum(lengths)])
    num_trials = int(np.sum(bounds[1:] <= duration_s - 0.05))
    return bounds[:num_trials], bounds[1:num_trials + 1]


def _ibl_task(fam, num_bins, duration_s, rng, state, state_names, choice_signal: float = 1.0):
    p = fam.params
    start, stop = _trial_starts(duration_s, rng)
    n = len(start)
    stim_on = start + rng.uniform(0.5, 0.8, size=n)
    # Blocks: an unbiased first block, then alternating 0.2 / 0.8 blocks of 15-60 trials.
    values, lengths = [0.5], [int(rng.integers(10, 30))]
    v = float(rng.choice([0.2, 0.8]))
    while sum(lengths) < n:
        values.append(v)
        lengths.append(int(rng.integers(15, 61)))
        v = 0.2 if v == 0.8 else 0.8
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    last = np.minimum(np.cumsum(lengths), n) - 1
    keep = first < n
    first, last, values = first[keep], last[keep], np.array(values)[keep]
    prior = np.repeat(values, last - first + 1)
    stim_side = np.where(rng.random(n) < prior, -1, 1)  # block_prior = P(stimulus on the left)
    contrast = rng.choice([0.0, 0.0625, 0.125, 0.25, 1.0], p=[0.1, 0.2, 0.2, 0.2, 0.3], size=n)
    signed = stim_side * contrast
    logit = signed / p["psychometric_width"] + p["prior_bias"] * (0.5 - prior)
    p_right = p["lapse"] + (1 - 2 * p["lapse"]) / (1 + np.exp(-logit))
    choice = np.where(rng.random(n) < p_right, 1, -1)
    rt = np.clip(rng.lognormal(math.log(0.3), 0.35, size=n), 0.12, 0.9)
    move = stim_on + rt
    feedback = np.minimum(move + rng.uniform(0.08, 0.25, size=n), stim_on + 1.45)
    reward = (choice == stim_side).astype(np.int64)
    peak = rng.uniform(3.0, 8.0, size=n)
    mdur = rng.uniform(0.25, 0.5, size=n)

    def wheel(t):
        k = np.searchsorted(move, t, side="right") - 1
        kc = np.clip(k, 0, None)
        tau = (t - move[kc]) / mdur[kc]
        v = choice[kc] * peak[kc] * _min_jerk_vel(tau) / 1.875
        return np.where(k >= 0, v, 0.0)

    centers = (np.arange(num_bins) + 0.5) * _BIN_S
    z = {
        "stim": _event_latent(num_bins, stim_on, 2.0 * np.sqrt(contrast) + 0.1, fam.kernels["stim"]),
        "choice": _event_latent(num_bins, move, choice_signal * choice, fam.kernels["choice"]),
        "move": np.abs(wheel(centers + p["move_lead_s"])) / 4.0,
        "reward": _event_latent(num_bins, feedback, 2 * reward - 1.0, fam.kernels["reward"]),
    }
    trials = dict(
        start_time=start, stop_time=stop, stim_on_time=stim_on, contrast=contrast,
        stim_side=stim_side.astype(np.int64), choice=choice.astype(np.int64), block_prior=prior,
        reward=reward, feedback_time=feedback, first_movement_time=move,
    )
    blocks = dict(start_time=start[first], stop_time=stop[last], block_prior=values)
    # Wheel: irregular ~100 Hz encoder timestamps. Whisker motion energy: 60 Hz video, driven by
    # the shared "whisk" latent (which units also read out) and by wheel movements.
    ts = rng.uniform(0.0, 0.01) + np.cumsum(rng.uniform(0.008, 0.012, size=int(duration_s * 100) + 10))
    ts = ts[ts < duration_s]
    wheel_v = wheel(ts) + rng.normal(0.0, 0.05, size=ts.size)
    me_rate, me_start = 60.0, 0.0125
    me_t = me_start + np.arange(int((duration_s - me_start) * me_rate)) / me_rate
    whisk = np.interp(me_t, centers, state[:, state_names.index("whisk")])
    drive = 0.8 * whisk + 0.3 * np.abs(wheel(me_t)) + rng.normal(0.0, 0.2, size=me_t.size)
    me = np.log1p(np.exp(1.0 + drive))
    behavior = [
        dict(name="wheel_speed", data=wheel_v, timestamps=ts, unit="rad/s",
             description="signed wheel angular velocity (positive = rightward choice turn)"),
        dict(name="whisker_motion_energy", data=me, starting_time=me_start, rate=me_rate,
             unit="a.u.", description="motion energy of the whisker pad in video"),
    ]
    return z, trials, blocks, behavior


def _motor_task(fam, num_bins, duration_s, rng):
    p = fam.params
    start, stop = _trial_starts(duration_s, rng)
    n = len(start)
    target_on = start + rng.uniform(0.1, 0.2, size=n)
    go = target_on + rng.uniform(0.4, 0.8, size=n)
    move = go + rng.uniform(0.2, 0.35, size=n)
    reach = rng.uniform(0.35, 0.5, size=n)
    ret_dur = rng.uniform(0.35, 0.45, size=n)
    ret = np.maximum(move + reach + 0.05, stop - 0.1 - ret_dur - rng.uniform(0.0, 0.3, size=n))
    k_dir = rng.integers(0, 8, size=n)
    angle = k_dir * (np.pi / 4)
    u = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    dist = rng.uniform(0.08, 0.12, size=n)  # metres

    def hand(t):
        """(position, velocity) of the hand at times t: out to the target, hold, back."""
        k = np.clip(np.searchsorted(start, t, side="right") - 1, 0, None)
        t1 = (t - move[k]) / reach[k]
        t2 = (t - ret[k]) / ret_dur[k]
        speed = dist[k] * (_min_jerk_vel(t1) / reach[k] - _min_jerk_vel(t2) / ret_dur[k])
        frac = dist[k] * (_min_jerk_pos(t1) - _min_jerk_pos(t2))
        valid = (t >= start[0])[:, None]
        return (np.where(valid, frac[:, None] * u[k], 0.0), np.where(valid, speed[:, None] * u[k], 0.0))

    centers = (np.arange(num_bins) + 0.5) * _BIN_S
    _, vel = hand(centers + p["velocity_lead_s"])
    v_norm = 0.25
    k = np.clip(np.searchsorted(start, centers, side="right") - 1, 0, None)
    rise = 1 - np.exp(-np.clip(centers - target_on[k], 0, None) / p["prep_rise_s"])
    after = np.clip(centers - move[k], 0, None)
    prep = np.where(centers >= target_on[k], rise * np.exp(-after / p["prep_decay_s"]), 0.0)
    prep = np.where(centers >= start[0], prep, 0.0)
    z = {
        "vel_x": vel[:, 0] / v_norm,
        "vel_y": vel[:, 1] / v_norm,
        "speed": np.hypot(vel[:, 0], vel[:, 1]) / v_norm,
        "prep_cos": 1.5 * prep * np.cos(angle[k]),
        "prep_sin": 1.5 * prep * np.sin(angle[k]),
        "go": _event_latent(num_bins, go, np.ones(n), fam.kernels["go"]),
    }
    trials = dict(
        start_time=start, stop_time=stop, target_on_time=target_on, go_cue_time=go,
        move_onset_time=move, target_angle=angle,
    )
    rate = 100.0
    vt = np.arange(int(duration_s * rate)) / rate
    _, hv = hand(vt)
    hv = hv + rng.normal(0.0, 0.003, size=hv.shape)
    pt = rng.uniform(0.0, 0.01) + np.cumsum(rng.uniform(0.009, 0.011, size=int(duration_s * 100) + 10))
    pt = pt[pt < duration_s]
    hp, _ = hand(pt)
    behavior = [
        dict(name="hand_velocity", data=hv, starting_time=0.0, rate=rate, unit="m/s",
             description="2-D hand velocity (x, y)"),
        dict(name="hand_position", data=hp, timestamps=pt, unit="m",
             description="2-D hand position (x, y) relative to the centre target"),
    ]
    return z, trials, {}, behavior


def _spontaneous_task(fam, num_bins, duration_s, rng):
    n = rng.poisson(fam.params["ripple_rate_hz"] * duration_s)
    events = np.sort(rng.uniform(0.0, duration_s, size=n))
    amp = rng.uniform(0.7, 1.5, size=n)
    return {"ripple": _event_latent(num_bins, events, amp, fam.kernels["ripple"])}, {}, {}, []


def _region_mean(seed: int, region: str, num_latents: int) -> np.ndarray:
    """The region's mean readout direction (a separate stream: the main draws are untouched)."""
    key = int.from_bytes(hashlib.sha256(f"region-tuning|{region}".encode()).digest()[:4], "little")
    return np.random.default_rng([int(seed), key]).standard_normal(num_latents)


def _simulate_session(fam: _Family, num_bins: int, rng: np.random.Generator,
                      units_range: tuple[int, int] = UNITS_RANGE, *, region_tuning: float = 0.0,
                      seed: int = 0, choice_signal: float = 1.0) -> _Session:
    preset = fam.preset
    duration_s = num_bins * _BIN_S
    state = _simulate_var(fam, num_bins, rng)
    if preset == "ibl":
        task, trials, blocks, behavior = _ibl_task(
            fam, num_bins, duration_s, rng, state, fam.state_names, choice_signal=choice_signal
        )
    elif preset == "motor":
        task, trials, blocks, behavior = _motor_task(fam, num_bins, duration_s, rng)
    else:
        task, trials, blocks, behavior = _spontaneous_task(fam, num_bins, duration_s, rng)
    latent_names = list(_TASK_LATENTS[preset]) + fam.state_names
    z_TL = np.column_stack([task[k] for k in _TASK_LATENTS[preset]] + [state])

    # Regions and units.
    all_regions = REGIONS[preset]
    if preset == "ibl":
        pool = fam.regions or all_regions
        r = int(rng.integers(2, min(4, len(pool)) + 1))
        regions = [pool[j] for j in sorted(rng.choice(len(pool), size=r, replace=False))]
    else:
        regions = list(all_regions)
    num_units = int(rng.integers(units_range[0], units_range[1] + 1))
    share = rng.dirichlet(np.full(len(regions), 3.0))
    per_region = 5 + rng.multinomial(num_units - 5 * len(regions), share)
    unit_regions = [reg for reg, c in zip(regions, per_region) for _ in range(c)]
    unit_ids = [f"{reg}_{j:03d}" for reg, c in zip(regions, per_region) for j in range(c)]

    # Readout: region profile x per-unit random weights; private latents of the own region only.
    profile = np.zeros((len(regions), len(latent_names)))
    for ri, reg in enumerate(regions):
        for li, name in enumerate(latent_names):
            owner = name.rpartition("_")[0]
            if owner in all_regions:  # a private latent, named "<region>_p<j>"
                profile[ri, li] = 1.0 if owner == reg else 0.0
            else:
                profile[ri, li] = _REGION_PROFILES[preset][reg].get(name, _DEFAULT_WEIGHT)
                if name in ("osc_0", "osc_1"):
                    profile[ri, li] *= fam.osc_gain
    region_idx = np.repeat(np.arange(len(regions)), per_region)
    w = rng.standard_normal((num_units, len(latent_names)))
    unsigned = np.array([n in _UNSIGNED_LATENTS for n in latent_names])
    flip = np.where(rng.random((num_units, len(latent_names))) < 0.85, 1.0, -1.0)
    w = np.where(unsigned[None, :], np.abs(w) * flip, w) * profile[region_idx]
    region_means = None
    if region_tuning > 0:
        region_means = np.stack([_region_mean(seed, reg, len(latent_names)) for reg in regions])
        w = w + region_tuning * region_means[region_idx] * profile[region_idx]
    m_TU = z_TL @ w.T
    # Each unit's log-rate modulation gets its own depth (std 0.4-1.1 nats).
    depth = rng.uniform(0.4, 1.1, size=num_units)
    scale = depth / np.maximum(m_TU.std(axis=0), 1e-9)
    w *= scale[:, None]
    m_TU *= scale[None, :]
    # Baseline rates: log-normal across units, then one shift that sets the expected zero fraction.
    rate_hz = np.clip(rng.lognormal(math.log(3.0), 1.0, size=num_units), 0.05, 80.0)
    bias = np.log(rate_hz * _BIN_S) - np.log(np.exp(m_TU).mean(axis=0))
    log_lam = m_TU + bias[None, :]
    target_zero = rng.uniform(*ZERO_FRACTION_RANGE)
    sub = log_lam[:: max(1, num_bins // 2000)]

    def zero_fraction(c):
        return np.exp(-np.minimum(np.exp(sub + c), MAX_EXPECTED_COUNT)).mean()

    lo, hi = -10.0, 10.0  # zero_fraction decreases in c
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if zero_fraction(mid) > target_zero else (lo, mid)
    bias += 0.5 * (lo + hi)
    expected_UT = np.minimum(np.exp(m_TU.T + bias[:, None]), MAX_EXPECTED_COUNT).astype(np.float32)

    # Poisson counts from exactly the stored float32 expectations, spikes uniform in their bin.
    counts = rng.poisson(expected_UT.astype(np.float64))
    unit_nz, bin_nz = np.nonzero(counts)
    reps = counts[unit_nz, bin_nz]
    spike_units = np.repeat(unit_nz, reps).astype(np.int64)
    spike_bins = np.repeat(bin_nz, reps).astype(np.int64)
    left_edge = (spike_bins * BIN_MS) / 1000.0  # the same float edges as binning.bin_edges_s
    spike_times = left_edge + SPIKE_EDGE_MARGIN_S + rng.random(spike_bins.size) * (
        _BIN_S - 2 * SPIKE_EDGE_MARGIN_S
    )
    order = np.lexsort((spike_times, spike_units))
    return _Session(
        family=fam, regions=regions, unit_regions=unit_regions, unit_ids=unit_ids,
        latent_names=latent_names, latents=z_TL.astype(np.float32), loadings=w, biases=bias,
        expected=expected_UT, spike_times=spike_times[order], spike_units=spike_units[order],
        trials=trials, blocks=blocks, behavior=behavior, region_means=region_means,
    )
