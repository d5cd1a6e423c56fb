"""Tests of spikefm.corpus.synth: real NWB files, ground truth, statistics, determinism."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from spikefm.corpus import synth  # noqa: E402
from spikefm.corpus.binning import bin_edges_s, bin_spikes  # noqa: E402

IBL = dict(num_sessions=3, seed=11, preset="ibl", num_families=2, duration_s=120.0)
MOTOR = dict(num_sessions=2, seed=5, preset="motor", num_families=1, duration_s=100.0)
SPONT = dict(num_sessions=2, seed=2, preset="spontaneous", num_families=1, duration_s=60.0)
CONFIGS = {"ibl": IBL, "motor": MOTOR, "spontaneous": SPONT}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{preset: (out_dir, nwb paths)} for the three small configurations above."""
    out = {}
    for name, cfg in CONFIGS.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, synth.synthesize(d, **cfg))
    return out


def read(path):
    """(nwbfile metadata dict, per-unit spike times, trials dataframe or None) from an NWB file."""
    return _read(str(path))


@functools.lru_cache(maxsize=None)
def _read(path):
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        units = nwb.units
        spikes = [np.asarray(units["spike_times"][i]) for i in range(len(units))]
        electrodes = np.asarray(nwb.electrodes["location"][:])
        unit_electrodes = [int(units["electrodes"][i].index[0]) for i in range(len(units))]
        info = dict(
            identifier=nwb.identifier,
            session_id=nwb.session_id,
            start=nwb.session_start_time,
            species=nwb.subject.species,
            subject_id=nwb.subject.subject_id,
            brain_region=np.asarray(units["brain_region"][:]),
            unit_electrode_location=electrodes[unit_electrodes],
            group_locations={g.name: g.location for g in nwb.electrode_groups.values()},
            intervals=sorted(nwb.intervals),
            processing=sorted(nwb.processing),
            behavior={},
        )
        if "behavior" in nwb.processing:
            for name, ts in nwb.processing["behavior"].data_interfaces.items():
                info["behavior"][name] = dict(
                    data=np.asarray(ts.data[:]),
                    timestamps=None if ts.timestamps is None else np.asarray(ts.timestamps[:]),
                    rate=ts.rate,
                    starting_time=ts.starting_time,
                    unit=ts.unit,
                )
        trials = None if nwb.trials is None else nwb.trials.to_dataframe()
    return info, spikes, trials


def histogram_counts(spikes, num_bins):
    edges = bin_edges_s(0, num_bins, 20)
    return np.array([np.histogram(s, bins=edges)[0] for s in spikes])


# ---------------------------------------------------------------------------------------------
# Layout and NWB contents
# ---------------------------------------------------------------------------------------------
def test_layout_is_dandi_like_and_atomic(written):
    d, paths = written["ibl"]
    assert paths == sorted(d.glob("sub-*/sub-*_ses-*.nwb"))
    assert len(paths) == IBL["num_sessions"] and [p.name for p in paths] == [
        "sub-ibl01_ses-000.nwb", "sub-ibl01_ses-001.nwb", "sub-ibl02_ses-002.nwb"
    ]
    assert sorted(p.name for p in d.iterdir()) == ["sub-ibl01", "sub-ibl02"]  # ceil(3 / 2) subjects
    for p in paths:
        assert p.parent.name == p.name.split("_")[0]
        assert synth.truth_path(p) == p.with_name(p.stem + ".truth.npz")
        assert synth.truth_path(p).is_file()
    # Nothing but finished files: no temporary names left behind.
    assert sorted(f.name for f in d.rglob("*") if f.is_file()) == sorted(
        [p.name for p in paths] + [p.stem + ".truth.npz" for p in paths]
    )


def test_files_pass_nwb_schema_validation(written):
    for preset in synth.PRESETS:
        assert pynwb.validate(path=str(written[preset][1][0])) == []


def test_ibl_nwb_contents(written):
    _, paths = written["ibl"]
    for p in paths:
        info, spikes, trials = read(p)
        truth = synth.load_truth(p)
        assert info["session_id"] == p.stem == truth["session_id"]
        assert info["subject_id"] == p.parent.name[len("sub-"):] == truth["subject_id"]
        assert info["species"] == "Mus musculus"
        assert info["start"].tzinfo is not None
        regions = list(truth["unit_regions"])
        assert list(info["brain_region"]) == regions
        assert list(info["unit_electrode_location"]) == regions
        assert set(info["group_locations"].values()) == set(regions)
        assert 2 <= len(set(regions)) <= 4 and set(regions) <= set(synth.REGIONS["ibl"])
        assert 40 <= len(spikes) <= 200
        assert info["intervals"] == ["blocks", "trials"]

        expected_cols = {"start_time", "stop_time", "stim_on_time", "contrast", "stim_side",
                         "choice", "block_prior", "reward", "feedback_time"}
        assert expected_cols <= set(trials.columns)
        start, stop, stim = trials.start_time.values, trials.stop_time.values, trials.stim_on_time.values
        assert np.all(stim - 0.5 >= start) and np.all(stim + 1.5 <= stop)
        assert np.all(start[1:] >= stop[:-1]) and stop[-1] <= IBL["duration_s"] and start[0] >= 0
        assert np.all((np.diff(stim) > 2.0) & (np.diff(stim) < 4.0))
        assert len(trials) >= 30
        assert set(trials.stim_side) <= {-1, 1} and set(trials.choice) <= {-1, 1}
        assert set(np.round(trials.block_prior, 6)) <= {0.2, 0.5, 0.8}
        assert 0.65 < np.mean(trials.choice == trials.stim_side) < 1.0
        np.testing.assert_array_equal(trials.reward, (trials.choice == trials.stim_side).astype(int))
        assert np.all((trials.feedback_time > stim) & (trials.feedback_time < stop))

        wheel, whisk = info["behavior"]["wheel_speed"], info["behavior"]["whisker_motion_energy"]
        assert wheel["timestamps"] is not None and wheel["unit"] == "rad/s"
        assert np.all(np.diff(wheel["timestamps"]) > 0)
        assert 0.008 <= np.median(np.diff(wheel["timestamps"])) <= 0.012
        assert whisk["rate"] == pytest.approx(60.0) and whisk["timestamps"] is None
        assert whisk["data"].shape == (int((IBL["duration_s"] - whisk["starting_time"]) * 60),)
        # The wheel turns in the chosen direction right after movement onset.
        ts, v = wheel["timestamps"], wheel["data"]
        signs = [np.sign(v[(ts > m) & (ts < m + 0.25)].mean()) for m in trials.first_movement_time]
        assert np.mean(np.array(signs) == trials.choice.values) > 0.95


def test_motor_nwb_contents(written):
    _, paths = written["motor"]
    for p in paths:
        info, spikes, trials = read(p)
        assert info["species"] == "Macaca mulatta"
        assert set(info["brain_region"]) == {"M1", "PMd"}
        assert {"start_time", "stop_time", "go_cue_time", "move_onset_time", "target_angle"} <= set(
            trials.columns
        )
        assert np.all(trials.start_time.values[1:] >= trials.stop_time.values[:-1])
        directions = np.round(trials.target_angle.values / (np.pi / 4), 9)
        assert set(directions) <= set(range(8)) and len(set(directions)) >= 4
        hv = info["behavior"]["hand_velocity"]
        assert hv["data"].ndim == 2 and hv["data"].shape[1] == 2 and hv["timestamps"] is None
        assert info["behavior"]["hand_position"]["timestamps"] is not None
        t = hv["starting_time"] + np.arange(len(hv["data"])) / hv["rate"]
        for _, tr in trials.iterrows():
            seg = hv["data"][(t >= tr.move_onset_time) & (t < tr.move_onset_time + 0.35)]
            speed = np.hypot(seg[:, 0], seg[:, 1])
            # Outward reach toward the target, with a bell-shaped speed profile.
            mean_v = seg.mean(axis=0)
            err = np.angle(np.exp(1j * (math.atan2(mean_v[1], mean_v[0]) - tr.target_angle)))
            assert abs(err) < 0.2
            assert speed[0] < 0.5 * speed.max() and 0 < np.argmax(speed) < len(speed) - 1


def test_spontaneous_has_no_task_or_behavior(written):
    _, paths = written["spontaneous"]
    for p in paths:
        info, spikes, trials = read(p)
        assert trials is None and info["intervals"] == [] and "behavior" not in info["processing"]
        assert info["species"] == "Mus musculus"
        assert set(info["brain_region"]) == {"CA1", "DG", "mPFC"}


# ---------------------------------------------------------------------------------------------
# Spikes against the truth
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", synth.PRESETS)
def test_counts_are_poisson_samples_of_the_truth(written, preset):
    _, paths = written[preset]
    info, spikes, _ = read(paths[0])
    truth = synth.load_truth(paths[0])
    lam = truth["expected_counts"].astype(np.float64)
    num_units, num_bins = lam.shape
    assert truth["bin_ms"] == 20 and truth["t_start_ms"] == 0
    assert num_bins == round(CONFIGS[preset]["duration_s"] / 0.02)
    counts = histogram_counts(spikes, num_bins)
    # Every spike is counted, and the package's own binning agrees with np.histogram.
    assert counts.sum() == sum(len(s) for s in spikes)
    flat_t = np.concatenate(spikes)
    flat_u = np.repeat(np.arange(num_units), [len(s) for s in spikes])
    np.testing.assert_array_equal(bin_spikes(flat_t, flat_u, num_units, 0.0, num_bins * 0.02), counts)
    # Spikes are sorted, inside the session, and at least 1 us from their bin's edges.
    edges = bin_edges_s(0, num_bins, 20)
    for s in spikes:
        assert np.all(np.diff(s) >= 0)
        k = np.searchsorted(edges, s, side="right") - 1
        assert np.all(s - edges[k] >= 0.999e-6) and np.all(edges[k + 1] - s >= 0.999e-6)
    assert flat_t.min() > 0 and flat_t.max() < num_bins * 0.02

    total, expected_total = counts.sum(), lam.sum()
    assert abs(total - expected_total) < 4 * math.sqrt(expected_total)
    assert np.corrcoef(counts.mean(axis=1), lam.mean(axis=1))[0, 1] > 0.98
    # Pooled dispersion sum((c - lam)^2) / sum(lam) is 1 for Poisson counts (sd here < 0.02).
    dispersion = ((counts - lam) ** 2).sum() / lam.sum()
    assert 0.93 < dispersion < 1.07

    # The time-varying truth explains the counts better than per-unit constant rates, and better
    # than the truth shifted by 0.5 s (so the bins are aligned in time).
    def loglik(rate):
        return (counts * np.log(rate) - rate).sum()

    const = np.broadcast_to(lam.mean(axis=1, keepdims=True), lam.shape)
    gain_bits_per_spike = (loglik(lam) - loglik(const)) / total / math.log(2)
    assert gain_bits_per_spike > 0.05
    assert loglik(lam) > loglik(np.roll(lam, 25, axis=1))


def test_expected_counts_follow_the_log_linear_model(written):
    for preset in synth.PRESETS:
        truth = synth.load_truth(written[preset][1][0])
        z = truth["latents"].astype(np.float64)
        assert z.shape == (truth["expected_counts"].shape[1], len(truth["latent_names"]))
        log_rate = truth["biases"][:, None] + truth["loadings"].astype(np.float64) @ z.T
        model = np.minimum(np.exp(log_rate), synth.MAX_EXPECTED_COUNT)
        np.testing.assert_allclose(truth["expected_counts"], model, rtol=2e-4, atol=1e-7)
        assert truth["expected_counts"].dtype == np.float32 and truth["latents"].dtype == np.float32
        # Units load only on their own region's private latents.
        names = list(truth["latent_names"])
        for u, region in enumerate(truth["unit_regions"]):
            for j, name in enumerate(names):
                if name.rsplit("_", 1)[0] in synth.REGIONS[preset] and name.rsplit("_", 1)[0] != region:
                    assert truth["loadings"][u, j] == 0


@pytest.mark.parametrize("preset", synth.PRESETS)
def test_zero_bin_fraction_like_real_data(written, preset):
    for p in written[preset][1]:
        _, spikes, _ = read(p)
        counts = histogram_counts(spikes, synth.load_truth(p)["expected_counts"].shape[1])
        assert 0.85 <= np.mean(counts == 0) <= 0.92


# ---------------------------------------------------------------------------------------------
# Determinism, seeds, families
# ---------------------------------------------------------------------------------------------
def test_deterministic_and_seed_sensitive(written, tmp_path):
    _, paths = written["ibl"]
    # Same seed (and fewer sessions): identical files for the sessions both runs wrote.
    again = synth.synthesize(tmp_path / "again", **{**IBL, "num_sessions": 2})
    for p, q in zip(paths[:2], again):
        assert p.relative_to(p.parents[1]) == q.relative_to(q.parents[1])
        a, b = synth.load_truth(p), synth.load_truth(q)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        (ia, sa, ta), (ib, sb, tb) = read(p), read(q)
        assert ia["identifier"] == ib["identifier"]
        assert all(np.array_equal(x, y) for x, y in zip(sa, sb)) and len(sa) == len(sb)
        assert ta.equals(tb)
        # byte-identical too (hdmf's object ids were random uuid4s: every rerun changed the
        # files' sha256, recorded in the corpus manifest)
        assert p.read_bytes() == q.read_bytes()
    other = synth.synthesize(
        tmp_path / "other", **{**IBL, "num_sessions": 1, "num_families": 1, "seed": 12}
    )
    a, b = synth.load_truth(paths[0]), synth.load_truth(other[0])
    assert a["expected_counts"].shape != b["expected_counts"].shape or not np.array_equal(
        a["expected_counts"], b["expected_counts"]
    )
    assert not np.array_equal(a["dynamics_A"], b["dynamics_A"])
    assert read(paths[0])[0]["identifier"] != read(other[0])[0]["identifier"]


def test_families_share_dynamics_but_not_readouts(written):
    truths = [synth.load_truth(p) for p in written["ibl"][1]]
    assert [t["family"] for t in truths] == [0, 1, 0] and all(t["num_families"] == 2 for t in truths)
    shared_keys = ["dynamics_A", "dynamics_noise_sd", "family_param_values"] + [
        k for k in truths[0] if k.startswith("kernel_")
    ]
    for key in shared_keys:
        np.testing.assert_array_equal(truths[0][key], truths[2][key], err_msg=key)
    assert not np.array_equal(truths[0]["dynamics_A"], truths[1]["dynamics_A"])
    assert not np.array_equal(truths[0]["kernel_stim"], truths[1]["kernel_stim"])
    assert truths[0]["loadings"].shape != truths[2]["loadings"].shape or not np.array_equal(
        truths[0]["loadings"], truths[2]["loadings"]
    )
    # With one family, every session shares the dynamics.
    motor = [synth.load_truth(p) for p in written["motor"][1]]
    assert [t["family"] for t in motor] == [0, 0]
    np.testing.assert_array_equal(motor[0]["dynamics_A"], motor[1]["dynamics_A"])
    # The shared oscillator really has the family's frequency: the latent's lag-1 rotation
    # estimated by least squares from each session matches the family's matrix.
    for t in (truths[0], truths[2]):
        names = list(t["latent_names"])
        z = t["latents"][:, [names.index("osc_0"), names.index("osc_1")]].astype(np.float64)
        fit, *_ = np.linalg.lstsq(z[:-1], z[1:], rcond=None)
        np.testing.assert_allclose(fit.T, t["dynamics_A"][:2, :2], atol=0.06)


# ---------------------------------------------------------------------------------------------
# Decodability: what the benchmarks rely on
# ---------------------------------------------------------------------------------------------
def test_choice_is_decodable_from_spikes(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    (p,) = synth.synthesize(tmp_path, num_sessions=1, seed=4, preset="ibl", duration_s=240.0)
    _, spikes, trials = read(p)
    counts = histogram_counts(spikes, synth.load_truth(p)["expected_counts"].shape[1])
    bins = (trials.first_movement_time.values / 0.02).astype(int)
    X = np.log1p(np.stack([counts[:, b - 10:b + 15].sum(axis=1) for b in bins]))
    y = trials.choice.values
    acc = cross_val_score(LogisticRegression(C=0.1, max_iter=2000), X, y, cv=5).mean()
    majority = max(np.mean(y == 1), np.mean(y == -1))
    assert acc > max(0.75, majority + 0.1)


def test_choice_signal_scales_only_the_choice_latent_and_its_decodability(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    kw = dict(num_sessions=1, seed=4, preset="ibl", duration_s=240.0)
    (p1,) = synth.synthesize(tmp_path / "full", **kw)
    (p0,) = synth.synthesize(tmp_path / "none", choice_signal=0.0, **kw)
    (ph,) = synth.synthesize(tmp_path / "half", choice_signal=0.5, **kw)
    t1, t0, th = (synth.load_truth(p) for p in (p1, p0, ph))
    c = list(t1["latent_names"]).index("choice")
    assert np.abs(t1["latents"][:, c]).max() > 0.5
    np.testing.assert_allclose(th["latents"][:, c], 0.5 * t1["latents"][:, c])
    assert not np.any(t0["latents"][:, c])
    others = np.arange(t1["latents"].shape[1]) != c
    assert np.array_equal(t1["latents"][:, others], t0["latents"][:, others])  # same draws otherwise
    accs = {}
    for name, p in (("full", p1), ("none", p0)):
        _, spikes, trials = read(p)
        assert np.array_equal(trials.choice.values, read(p1)[2].choice.values)
        counts = histogram_counts(spikes, t1["expected_counts"].shape[1])
        bins = (trials.first_movement_time.values / 0.02).astype(int)
        X = np.log1p(np.stack([counts[:, b - 10:b + 15].sum(axis=1) for b in bins]))
        y = trials.choice.values
        accs[name] = cross_val_score(LogisticRegression(C=0.1, max_iter=2000), X, y, cv=5).mean()
    majority = max(np.mean(y == 1), np.mean(y == -1))
    assert accs["full"] > max(0.75, majority + 0.1)
    assert accs["none"] < majority + 0.1  # nothing in the spikes tells the choice apart
    with pytest.raises(ValueError, match="choice_signal"):
        synth.synthesize(tmp_path / "bad", num_sessions=1, duration_s=20.0, choice_signal=float("nan"))
    assert not (tmp_path / "bad").exists()


def test_hand_velocity_is_decodable_from_spikes(written):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_predict

    p = written["motor"][1][0]
    info, spikes, _ = read(p)
    num_bins = synth.load_truth(p)["expected_counts"].shape[1]
    counts = histogram_counts(spikes, num_bins)
    hv = info["behavior"]["hand_velocity"]
    t = hv["starting_time"] + np.arange(len(hv["data"])) / hv["rate"]
    centres = (np.arange(num_bins) + 0.5) * 0.02
    y = np.stack([np.interp(centres, t, hv["data"][:, d]) for d in range(2)], axis=1)
    smooth = np.apply_along_axis(lambda c: np.convolve(c, np.ones(5) / 5, "same"), 1, counts).T
    X = np.concatenate([np.roll(smooth, -lag, axis=0) for lag in (0, 3, 6)], axis=1)
    pred = cross_val_predict(Ridge(alpha=10.0), X, y, cv=5)
    r2 = 1 - ((pred - y) ** 2).sum(axis=0) / ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    assert np.all(r2 > 0.2)


def test_regions_are_coupled_but_not_redundant(written):
    from sklearn.linear_model import Ridge

    for p in written["ibl"][1]:
        truth = synth.load_truth(p)
        log_lam = np.log(truth["expected_counts"].astype(np.float64)).T
        regions = truth["unit_regions"]
        for region in np.unique(regions):
            target, source = log_lam[:, regions == region], log_lam[:, regions != region]
            fit = Ridge(alpha=1.0).fit(source, target)
            r2 = 1 - ((fit.predict(source) - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
            # Noise-free rates: shared latents make regions predictable from each other, private
            # latents keep them from being copies.
            assert 0.2 < r2 < 0.95, (p.name, region, r2)


# ---------------------------------------------------------------------------------------------
# Arguments and truth loading
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="visual"), "ibl, motor, spontaneous"),
        (dict(num_sessions=0), "num_sessions"),
        (dict(num_sessions=True), "num_sessions"),
        (dict(num_families=0), "num_families"),
        (dict(num_sessions=2, num_families=3), "num_families"),
        (dict(duration_s=5.0), "duration_s"),
        (dict(duration_s=float("nan")), "duration_s"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.synthesize(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_load_truth_accepts_either_path_and_rejects_others(written, tmp_path):
    p = written["spontaneous"][1][0]
    a, b = synth.load_truth(p), synth.load_truth(synth.truth_path(p))
    assert a.keys() == b.keys()
    assert isinstance(a["bin_ms"], int) and isinstance(a["session_id"], str)
    assert a["preset"] == "spontaneous" and a["seed"] == SPONT["seed"]
    assert a["unit_ids"].shape == a["unit_regions"].shape == (a["expected_counts"].shape[0],)
    with pytest.raises(ValueError, match=".nwb or .truth.npz"):
        synth.load_truth(tmp_path / "counts.csv")
    with pytest.raises(FileNotFoundError):
        synth.load_truth(tmp_path / "missing.nwb")


def _osc_hz(A):
    """The oscillator's frequency (Hz) from the rotation in its 2x2 block of the VAR matrix."""
    return math.atan2(A[1, 0], A[0, 0]) / (2 * math.pi * synth.BIN_MS / 1000)


def _onset_lag_bins(fam, name):
    """The first bin lag at which the family's event kernel is non-zero (its response latency)."""
    offset, k = fam.kernels[name]
    return offset + int(np.argmax(k > 0))


@pytest.mark.parametrize("preset", ["ibl", "motor", "spontaneous"])
def test_several_families_are_separated_not_left_to_chance(preset):
    # Whatever the seed, family f's oscillator lies in the f-th of K disjoint log bands: frequencies
    # strictly increase with the family index, and consecutive ones differ by a clear factor.
    for seed in range(6):
        fams = [synth._make_family(preset, f, ss, 3, seed)
                for f, ss in enumerate(np.random.SeedSequence(seed).spawn(3))]
        hz = [_osc_hz(f.A) for f in fams]
        lo, hi = synth._FAMILY_OSC_HZ[preset]
        assert all(lo <= h <= hi for h in hz)
        assert all(b / a > (hi / lo) ** (0.3 / 3) for a, b in zip(hz, hz[1:])), hz
        if preset != "spontaneous":
            name = {"ibl": "stim", "motor": "go"}[preset]
            lags = [_onset_lag_bins(f, name) for f in fams]
            assert lags == sorted(lags) and lags[0] < lags[-1], lags
        regions = [set(f.regions) for f in fams]
        if preset == "ibl":  # three of five regions each; neighbours share exactly one
            assert all(len(r) == 3 for r in regions)
            assert len(regions[0] & regions[1]) == 1 and len(regions[1] & regions[2]) == 1
        else:
            assert all(r == set(synth.REGIONS[preset]) for r in regions)
    # One family keeps the preset's narrower range and every region.
    one = synth._make_family("ibl", 0, np.random.SeedSequence(0), 1, 0)
    assert 1.5 <= _osc_hz(one.A) <= 3.0 and one.regions == synth.REGIONS["ibl"]


def test_ibl_sessions_record_their_familys_regions(written):
    for p in written["ibl"][1]:
        t = synth.load_truth(p)
        assert len(t["family_regions"]) == 3
        assert set(t["unit_regions"]) <= set(t["family_regions"])
        assert 2 <= len(set(t["unit_regions"])) <= 3


def test_truth_readout_reproduces_the_expected_counts_for_kept_units(written):
    d, paths = next(iter(written.values()))
    t = synth.load_truth(paths[0])
    r = synth.truth_readout(t)
    lam = np.minimum(np.exp(np.asarray(t["latents"], dtype=np.float64) @ r["loadings_NZ"].T + r["biases_N"]),
                     r["max_count"])
    np.testing.assert_allclose(lam.T, t["expected_counts"], rtol=1e-4)  # float32 storage
    keep = np.array([0, 2])
    sub = synth.truth_readout(t, keep, 2)
    np.testing.assert_array_equal(sub["loadings_NZ"], r["loadings_NZ"][keep])
    np.testing.assert_array_equal(sub["biases_N"], r["biases_N"][keep])
    assert synth.truth_readout(t, None, 2) is None  # 2 units asked, the truth has more, none picked
    assert synth.truth_readout({"latents": t["latents"]}) is None


def test_a_rerun_removes_temporaries_left_by_a_killed_run(tmp_path):
    """A synth killed mid-write left ``.NAME.nwb.tmp-PID`` (MBs) that reruns never removed. A rerun
    removes those of processes that no longer run and keeps a live writer's."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    folder = tmp_path / "sub-spontaneous01"
    folder.mkdir()
    stale = [folder / f".sub-spontaneous01_ses-000.nwb.tmp-{dead}",
             folder / f".sub-spontaneous01_ses-000.truth.npz.tmp-{dead}"]
    live = folder / f".sub-spontaneous01_ses-000.nwb.tmp-{os.getppid()}"  # a running process
    for p in (*stale, live):
        p.write_bytes(b"partial")
    paths = synth.synthesize(tmp_path, num_sessions=1, seed=0, preset="spontaneous", duration_s=10.0,
                             units_range=(15, 16), progress=False)
    assert [p.name for p in paths] == ["sub-spontaneous01_ses-000.nwb"]
    assert not any(p.exists() for p in stale) and live.read_bytes() == b"partial"


def test_a_seed_past_64_bits_is_refused_before_any_file(tmp_path):
    """--seed 99999999999999999999 wrote a recording, then failed on its ground truth with an
    internal OverflowError."""
    from spikefm.corpus.synth import synthesize

    with pytest.raises(ValueError, match=r"^seed \(--seed\) must be a whole number in 0\.\.9223372036854775807 "):
        synthesize(tmp_path / "s", num_sessions=1, seed=2**63, duration_s=10.0)
    assert not (tmp_path / "s").exists()
