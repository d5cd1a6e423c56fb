"""Baselines and probes of the NEDS evaluation against known ground truth: multi-session RRR,
firing statistics, region classification, the encoding / decoding scores."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spikefm.eval.probes import classify_regions, firing_statistics
from spikefm.eval.rrr import MultiSessionRRR, select_alpha
from spikefm.families.neds.evaluate import decoding_scores, encoding_scores


def _r2(pred, true):
    return 1 - ((true - pred) ** 2).sum() / ((true - true.mean(0)) ** 2).sum()


def test_rrr_encoder_recovers_a_shared_low_rank_map():
    rng = np.random.default_rng(0)
    F, r = 8, 2
    U = rng.normal(size=(F, r))
    X, Y, truth = {}, {}, {}
    for s, n in (("a", 6), ("b", 9)):
        V = rng.normal(size=(r, n))
        x = rng.normal(size=(400, F))
        truth[s] = x @ U @ V
        X[s], Y[s] = x, truth[s] + 0.05 * rng.normal(size=truth[s].shape)
    full = MultiSessionRRR(rank=2, loss="mse", shared="input", alpha=0.0).fit(X, Y)
    one = MultiSessionRRR(rank=1, loss="mse", shared="input", alpha=0.0).fit(X, Y)
    for s in X:
        assert _r2(full.predict(X[s], s), truth[s]) > 0.99
        assert _r2(one.predict(X[s], s), truth[s]) < 0.95  # rank matters: the test can fail


def test_rrr_poisson_and_decoder_layouts():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 3))
    w = np.array([[0.5, -0.3], [0.2, 0.4], [-0.4, 0.1]])
    rate = np.exp(x @ w - 1.0)
    glm = MultiSessionRRR(rank=None, loss="poisson", alpha=0.0).fit({"s": x}, {"s": rng.poisson(rate)})
    assert np.corrcoef(np.log(glm.predict(x, "s")).ravel(), np.log(rate).ravel())[0, 1] > 0.98
    # decoder: per-session inputs of different widths, a shared output map; classes
    V = rng.normal(size=(2, 3)) * 3
    X, Y = {}, {}
    for s, f in (("a", 5), ("b", 7)):
        X[s] = rng.normal(size=(500, f))
        Y[s] = (X[s] @ rng.normal(size=(f, 2)) @ V).argmax(1)
    dec = MultiSessionRRR(rank=2, loss="xent", shared="output", num_outputs=3, alpha=1e-4).fit(X, Y)
    for s in X:
        assert np.mean(dec.predict(X[s], s).argmax(1) == Y[s]) > 0.9
    with pytest.raises(ValueError, match="rank"):
        MultiSessionRRR(rank=0).fit(X, Y)
    with pytest.raises(ValueError, match="session 'c' was not fitted"):
        dec.predict(X["a"], "c")
    best, alpha = select_alpha(lambda a: MultiSessionRRR(rank=2, loss="xent", shared="output", num_outputs=3, alpha=a),
                               (X, Y), lambda m: -m.alpha, alphas=(1e-3, 1e-1))
    assert alpha == 1e-3 and best.alpha == 1e-3


def test_firing_statistics_refuse_a_fano_chunk_longer_than_the_windows():
    """fano_bins=50 on 10-bin windows left no chunk: the Fano factor of an active unit read 0 (with
    numpy's 'Mean of empty slice'); 2-D counts failed 'not enough values to unpack'."""
    c = np.zeros((2, 10, 1), np.uint8)
    c[:, :5] = 3
    with pytest.raises(ValueError, match=r"^fano_bins must be an int in 1\.\.10 \(the bins of a window\), got 50$"):
        firing_statistics(c, 20, fano_bins=50)
    with pytest.raises(ValueError, match=r"got 0$"):
        firing_statistics(c, 20, fano_bins=0)
    with pytest.raises(ValueError, match=r"^counts must be \(windows, bins, units\), got shape \(10, 1\)$"):
        firing_statistics(c[0], 20)
    # a chunk of the whole window: var / mean of the window sums (15 and 15: Fano 0)
    assert firing_statistics(c, 20, fano_bins=10)[0, 2] == 0.0
    c[1, :5] = 1  # window sums 15 and 5: mean 10, population variance 25
    assert firing_statistics(c, 20, fano_bins=10)[0, 2] == pytest.approx(25 / 10)


def test_firing_statistics_match_poisson_and_regular_trains():
    rng = np.random.default_rng(2)
    K, T = 200, 50
    poisson = rng.poisson(0.1, size=(K, T, 1))
    regular = np.zeros((K, T, 1), dtype=np.int64)
    regular[:, ::5] = 1
    stats = firing_statistics(np.concatenate([poisson, regular], axis=2), bin_ms=20)
    assert np.isclose(stats[0, 0], poisson.mean() * 50) and np.isclose(stats[1, 0], 10.0)
    assert abs(stats[0, 2] - 1.0) < 0.1 and abs(stats[0, 1] - 1.0) < 0.15  # Poisson: Fano 1, ISI CV ~1
    assert stats[1, 2] < 1e-9 and stats[1, 1] < 1e-9  # perfectly regular


def test_region_classification_grouped_by_session():
    rng = np.random.default_rng(3)
    centres = {"CA1": np.array([2.0, 0.0]), "VISp": np.array([0.0, 2.0]), "LP": np.array([-2.0, -2.0])}
    feats, regions = {}, {}
    for s in ("s0", "s1", "s2"):
        regs = list(rng.choice(["CA1", "VISp"], size=40)) + (["LP"] * 5 if s == "s0" else [])
        regions[s] = regs
        feats[s] = np.stack([centres[r] for r in regs]) + 0.5 * rng.normal(size=(len(regs), 2))
    res = classify_regions(feats, regions)
    assert res["grouping"] == "leave-one-session-out"
    assert res["classes"] == ["CA1", "VISp"] and res["num_units"] == 120  # LP only in one session
    assert res["accuracy"] > 0.95 and np.array(res["confusion"]).sum() == 120
    noise = {s: rng.normal(size=f.shape) for s, f in feats.items()}
    res0 = classify_regions(noise, regions)
    assert res0["balanced_accuracy"] < 0.7


def test_regions_with_too_few_units_are_left_out_with_the_reason_not_fatal():
    """A region of 2 units in one session made every feature set fail ('every class needs at least
    2 training samples'); one of 1 unit in one session and many in another sank the cross-session
    fit. Such regions are left out, named with the reason, and the rest is scored as it would be
    without them."""
    rng = np.random.default_rng(5)
    centres = {"CA1": [2.0, 0.0], "VISp": [0.0, 2.0], "PO": [-2.0, 0.0], "MOs": [0.0, -2.0]}
    regions = {"s0": ["CA1"] * 6 + ["VISp"] * 6 + ["MOs"] * 2}
    feats = {"s0": np.array([centres[r] for r in regions["s0"]]) + 0.3 * rng.normal(size=(14, 2))}
    res = classify_regions(feats, regions)
    assert res["regions_left_out"] == {"MOs": "2 units in the one session (cross-validation needs >= 3)"}
    assert res["classes"] == ["CA1", "VISp"] and res["num_units"] == 12
    same = classify_regions({"s0": feats["s0"][:12]}, {"s0": regions["s0"][:12]})
    assert same["accuracy"] == res["accuracy"] and same["confusion"] == res["confusion"]
    # across sessions: PO has 1 unit in s0 and 5 in s1, so holding s1 out leaves 1 to learn from
    regions = {"s0": ["CA1"] * 5 + ["VISp"] * 5 + ["PO"], "s1": ["CA1"] * 5 + ["VISp"] * 5 + ["PO"] * 5}
    feats = {s: np.array([centres[r] for r in regs]) + 0.3 * rng.normal(size=(len(regs), 2))
             for s, regs in regions.items()}
    res = classify_regions(feats, regions)
    assert res["regions_left_out"] == {"PO": "6 units; 1 left to learn from when session s1 is held out (needs >= 2)"}
    assert res["classes"] == ["CA1", "VISp"] and res["num_units"] == 20 and res["accuracy"] > 0.9
    # nothing learnable: one line naming what was left out and why
    with pytest.raises(ValueError, match=r"^region classification needs >= 2 regions it can learn, found 1 \(CA1\); "
                                         r"left out: MOs: 2 units in the one session"):
        classify_regions({"s0": np.zeros((7, 2))}, {"s0": ["CA1"] * 5 + ["MOs"] * 2})
    with pytest.raises(ValueError, match=r"folds must be an int >= 2, got 1"):
        classify_regions(feats, regions, folds=1)
    # two folds over 3-unit classes: a fold may keep 1 unit of a class; that class sits the fold out
    regions = {"s0": ["CA1"] * 3 + ["VISp"] * 3 + ["PO"] * 3}
    feats = {"s0": np.array([centres[r] for r in regions["s0"]]) + 0.1 * rng.normal(size=(9, 2))}
    res = classify_regions(feats, regions, folds=2)
    assert res["grouping"] == "stratified 2-fold (one session)" and np.array(res["confusion"]).sum() == 9


def test_region_classification_of_uninformative_features_sits_at_chance_whatever_the_session_mix():
    """Sessions with different mixes of regions: leaving one out under-represents its regions in
    the training fold. Features that carry no region information must score near balanced
    chance, not below it (the unweighted fit predicts the held-out session's missing regions),
    and informative features must still be read."""
    rng = np.random.default_rng(11)
    names = ["CA1", "LP", "PO", "VISp"]
    mixes = [(0.7, 0.1, 0.1, 0.1), (0.1, 0.7, 0.1, 0.1), (0.1, 0.1, 0.7, 0.1), (0.1, 0.1, 0.1, 0.7),
             (0.4, 0.4, 0.1, 0.1), (0.1, 0.1, 0.4, 0.4)]
    null, weak = [], []
    for rep in range(6):
        regions = {f"s{i}": list(rng.choice(names, size=80, p=m)) for i, m in enumerate(mixes)}
        noise = {s: rng.normal(size=(len(r), 3)) for s, r in regions.items()}
        res = classify_regions(noise, regions, seed=rep)
        assert res["class_weight"] == "balanced"  # recorded with the scores
        null.append(res["balanced_accuracy"])
        centre = {r: rng.normal(size=3) for r in names}
        signal = {s: np.stack([centre[x] for x in r]) + 1.5 * rng.normal(size=(len(r), 3)) for s, r in regions.items()}
        weak.append(classify_regions(signal, regions, seed=rep)["balanced_accuracy"])
    assert abs(np.mean(null) - 0.25) < 0.06, null  # the unweighted fit: 0.09 here
    assert np.mean(weak) > 0.4, weak


def test_encoding_and_decoding_scores_against_formulas():
    rng = np.random.default_rng(4)
    rates = rng.uniform(0.05, 0.5, size=(10, 20, 4))
    counts = rng.poisson(rates)
    s = encoding_scores(rates, counts, np.zeros(10, dtype=int), np.array([True, True, False, True]))
    null = counts.reshape(-1, 4).mean(0)
    ll = lambda r: np.sum(counts * np.log(np.maximum(r, 1e-300)) - r)  # noqa: E731
    expected = (ll(rates) - ll(np.broadcast_to(null, rates.shape))) / (np.log(2) * counts.sum())
    assert np.isclose(s["bps_pooled"], expected) and s["units_scored_r2"] == 3
    y = np.array([0, 1, 1, 1, -1])
    pred = np.array([0, 1, 0, 1, 1])
    d = decoding_scores({"choice": pred}, {"choice": y}, {"choice": 2}, None, None, [], np.zeros(5, dtype=int))
    assert d["choice"]["accuracy"] == 0.75 and d["choice"]["chance"] == 0.75
    assert np.isclose(d["choice"]["balanced_accuracy"], (1.0 + 2 / 3) / 2)


def test_behaviour_psth_r2_averages_the_prediction_over_the_recorded_trials_only():
    """Where a channel was not recorded (NaN) in some bins of some trials, the true PSTH averages the
    other trials; the predicted PSTH averaged every trial, so the two compared different trial
    sets. Checked against a loop over conditions and bins, and against sklearn's r2_score."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(7)
    K, T = 12, 15
    cond = np.array([0, 1] * 6)
    truth = rng.normal(size=(K, T, 1)) + cond[:, None, None]
    pred = truth + rng.normal(scale=0.8, size=(K, T, 1))
    truth[3, 4:9, 0] = np.nan  # one trial of condition 1 unrecorded for five bins
    truth[0, :2, 0] = np.nan
    d = decoding_scores({}, {}, {}, pred, truth, ["wheel"], cond)
    ok = ~np.isnan(truth[..., 0])
    psth_t, psth_p = [], []
    for c in (0, 1):
        for b in range(T):
            rows = (cond == c) & ok[:, b]
            psth_t.append(truth[rows, b, 0].mean())
            psth_p.append(pred[rows, b, 0].mean())
    assert d["wheel"]["r2_psth"] == pytest.approx(r2_score(psth_t, psth_p), rel=1e-12)
    assert d["wheel"]["r2_single_trial"] == pytest.approx(r2_score(truth[ok, 0], pred[ok, 0]), rel=1e-12)
    # a channel constant on the test windows scores nan (as the README says), where it vanished from
    # the results without a word; one never recorded there has nothing to score
    flat = np.ones((K, T, 2))
    flat[..., 1] = np.nan
    d = decoding_scores({}, {}, {}, pred.repeat(2, axis=2), flat, ["still", "unrecorded"], cond)
    assert list(d) == ["still"] and math.isnan(d["still"]["r2_single_trial"]) and math.isnan(d["still"]["r2_psth"])


def test_synth_region_tuning_gives_linearly_decodable_regions_and_keeps_the_rest(tmp_path):
    from spikefm.corpus.synth import load_truth, synthesize

    plain = [load_truth(p) for p in synthesize(tmp_path / "a", num_sessions=3, seed=4, duration_s=20.0,
                                               units_range=(25, 40))]
    tuned = [load_truth(p) for p in synthesize(tmp_path / "b", num_sessions=3, seed=4, duration_s=20.0,
                                               units_range=(25, 40), region_tuning=1.0)]
    assert "region_mean_loadings" not in plain[0]
    for a, b in zip(plain, tuned):
        assert np.array_equal(a["latents"], b["latents"])  # same draws, only the readout differs
        assert list(a["unit_regions"]) == list(b["unit_regions"])
        assert not np.allclose(a["loadings"], b["loadings"])
    # region means are shared by the sessions
    means = {}
    for t in tuned:
        for r, m in zip(t["region_mean_names"], t["region_mean_loadings"]):
            if r in means:
                assert np.array_equal(means[r], m)
            means[r] = m
    scores = {}
    for name, truths in (("plain", plain), ("tuned", tuned)):
        feats = {t["session_id"]: t["loadings"] / np.linalg.norm(t["loadings"], axis=1, keepdims=True) for t in truths}
        regions = {t["session_id"]: list(t["unit_regions"]) for t in truths}
        scores[name] = classify_regions(feats, regions)["balanced_accuracy"]
    assert scores["tuned"] > 0.8 and scores["tuned"] > scores["plain"] + 0.2
    with pytest.raises(ValueError, match="region_tuning"):
        synthesize(tmp_path / "c", num_sessions=1, duration_s=20.0, region_tuning=-1.0)


def test_hidden_state_probe_reads_labels_and_channels_from_the_fit_windows_only():
    """``neds_probe``: a label carried by the mean state of one stretch of the window and a
    channel that is a linear map of the state at the same bin are both recovered; the test
    windows' labels and behaviour never enter the fit (scrambling them changes nothing)."""
    from types import SimpleNamespace

    from spikefm.families.neds.evaluate import neds_probe

    rng = np.random.default_rng(0)
    K, T, D = 160, 20, 6
    y = rng.integers(0, 2, size=K)
    h = rng.normal(size=(K, T, D))
    h[:, 8:12, 2] += np.where(y == 1, 1.5, -1.5)[:, None]  # the label lives in bins 8-11 of dim 2
    beh = (h @ np.array([0.5, -1.0, 0.0, 0.3, 0.0, 0.0]))[..., None]  # (K, T, 1)
    mods = SimpleNamespace(labels=[("choice", [-1, 1])], channels=["wheel"])
    fit, te = np.arange(120), np.arange(120, K)
    a = SimpleNamespace(labels_KJ=y[:, None].copy(), behavior_KTC=beh.copy())
    res = neds_probe(h, a, fit, te, mods)
    assert np.mean(res["labels"]["choice"] == y[te]) >= 0.95
    assert _r2(res["behavior_KTC"].reshape(-1), beh[te].reshape(-1)) > 0.99
    a.labels_KJ[te] = 1 - a.labels_KJ[te]
    a.behavior_KTC[te] = rng.normal(size=a.behavior_KTC[te].shape)
    again = neds_probe(h, a, fit, te, mods)
    np.testing.assert_array_equal(again["labels"]["choice"], res["labels"]["choice"])
    np.testing.assert_array_equal(again["behavior_KTC"], res["behavior_KTC"])


def test_a_channel_the_session_never_recorded_leaves_the_others_decoded():
    """A run's channel all NaN in this session (recorded in other sessions: a corpus of ibl and
    motor sessions, say) removed every row of the ridge fit, so the linear, probe, RRR and oracle
    decoders had no channel at all; each recorded channel is decoded as if alone now."""
    from types import SimpleNamespace

    from spikefm.families.neds.evaluate import neds_probe

    rng = np.random.default_rng(1)
    K, T, D = 120, 10, 4
    h = rng.normal(size=(K, T, D))
    wheel = (h @ np.array([0.5, -1.0, 0.0, 0.3]))[..., None]
    fit, te = np.arange(90), np.arange(90, K)
    alone = neds_probe(h, SimpleNamespace(labels_KJ=np.zeros((K, 0), np.int64), behavior_KTC=wheel),
                       fit, te, SimpleNamespace(labels=[], channels=["wheel"]))
    both = np.concatenate([wheel, np.full_like(wheel, np.nan)], axis=2)  # hand velocity: not in this session
    res = neds_probe(h, SimpleNamespace(labels_KJ=np.zeros((K, 0), np.int64), behavior_KTC=both),
                     fit, te, SimpleNamespace(labels=[], channels=["wheel", "hand_velocity"]))
    np.testing.assert_allclose(res["behavior_KTC"][..., 0], alone["behavior_KTC"][..., 0], rtol=1e-10)
    assert np.isnan(res["behavior_KTC"][..., 1]).all()
    assert _r2(res["behavior_KTC"][..., 0].reshape(-1), wheel[te].reshape(-1)) > 0.99


def test_a_label_a_decoder_cannot_fit_is_named_with_the_reason():
    """A label whose fit windows hold one class (or a class of one window) had no row for that
    decoder and no word why (``--split val`` on short sessions)."""
    from types import SimpleNamespace

    from spikefm.families.neds.evaluate import neds_probe

    K, T, D = 40, 5, 3
    h = np.random.default_rng(0).normal(size=(K, T, D))
    y = np.zeros(K, dtype=np.int64)
    y[:2] = 1  # class 1: one fit window only (window 1); window 0 is a test window
    mods = SimpleNamespace(labels=[("choice", [-1, 1])], channels=[])
    a = SimpleNamespace(labels_KJ=y[:, None], behavior_KTC=np.zeros((K, T, 0)))
    res = neds_probe(h, a, np.arange(1, K), np.arange(1), mods)
    assert "choice" not in res["labels"]
    assert res["skipped"]["choice"] == ("its fit windows hold a choice class in fewer than 2 windows: a "
                                        "classifier needs 2 classes of 2 or more windows each")
    one = SimpleNamespace(labels_KJ=np.zeros((K, 1), dtype=np.int64), behavior_KTC=a.behavior_KTC)
    assert neds_probe(h, one, np.arange(1, K), np.arange(1), mods)["skipped"]["choice"].startswith(
        "its fit windows hold one choice class only")
    y[2] = 1  # now two fit windows of class 1: fitted
    assert "choice" in neds_probe(h, a, np.arange(1, K), np.arange(1), mods)["labels"]


def test_decoding_scores_quietly_count_a_class_the_test_windows_lack(recwarn):
    yt = np.array([0, 0, 0, 1])
    yp = np.array([0, 2, 0, 1])  # class 2 predicted, absent from the test windows
    out = decoding_scores({"block": yp}, {"block": yt}, {"block": 3}, None, None, [], np.zeros(4))
    assert out["block"]["accuracy"] == 0.75
    # balanced accuracy over the classes present: class 0 2/3 right, class 1 1/1
    assert out["block"]["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert not [w for w in recwarn if "y_pred contains classes" in str(w.message)]


def test_psth_features_of_sessions_with_different_conditions_have_one_size():
    """Region features from sessions whose windows hold different trial conditions failed inside
    numpy ("all the input array dimensions ... must match"); a condition a session lacks now
    gets that session's mean over all its windows."""
    from spikefm.families.neds.evaluate import _psth

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4, 2))
    cond = np.array([0, 0, 1, 1, 1, 0])
    both = _psth(x, cond, [0, 1, 2])
    assert both.shape == (12, 2)
    np.testing.assert_allclose(both[:4], x[cond == 0].mean(0))
    np.testing.assert_allclose(both[4:8], x[cond == 1].mean(0))
    np.testing.assert_allclose(both[8:], x.mean(0))  # condition 2: none of these windows
    np.testing.assert_array_equal(_psth(x, cond), both[:8])  # default: the conditions present


def test_an_empty_task_list_is_said_to_be_empty():
    """--tasks "" said "unknown NEDS task(s) []"."""
    from spikefm.families.neds.evaluate import check_task_names

    for empty in ("", " , ", []):
        with pytest.raises(ValueError, match=r"^no NEDS task given \(.*\); name one or more of: encoding, decoding, "
                                             r"region \(or leave --tasks out for all\)$"):
            check_task_names(empty)
    assert check_task_names(None) == ["encoding", "decoding", "region"]
