"""Metrics and oracle checked against independent loop / scipy.stats implementations."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import poisson
from sklearn.metrics import r2_score

from spikefm.families.ar.tokens import SEPARATOR, tokenize
from spikefm.eval.metrics import (
    bps_per_neuron,
    bps_per_neuron_mean,
    bps_pooled,
    decode_continuous,
    decode_discrete,
    poisson_log_likelihood,
    r2_score_pooled,
)
from spikefm.eval.oracle import oracle_bps_pooled
from spikefm.families.ar.oracle import oracle_token_loss, poisson_token_logprob


# ----------------------------------------------------------------------------- reference loops


def _ref_items(rates, counts):
    """Yield (neuron, rate, count) for every evaluated entry, via explicit loops."""
    rates = np.asarray(rates, dtype=float)
    counts = np.asarray(counts, dtype=float)
    for idx in np.ndindex(counts.shape):
        if not math.isnan(counts[idx]):
            yield idx[-1], float(rates[idx]), int(counts[idx])


def _ref_neuron_stats(rates, counts):
    n_neurons = np.shape(counts)[-1]
    spikes = [0] * n_neurons
    bins = [0] * n_neurons
    for n, _, k in _ref_items(rates, counts):
        spikes[n] += k
        bins[n] += 1
    null = [spikes[n] / bins[n] if bins[n] else float("nan") for n in range(n_neurons)]
    ll_model = [0.0] * n_neurons
    ll_null = [0.0] * n_neurons
    for n, r, k in _ref_items(rates, counts):
        ll_model[n] += float(poisson.logpmf(k, r))
        ll_null[n] += float(poisson.logpmf(k, null[n]))
    return ll_model, ll_null, spikes


def _ref_bps_pooled(rates, counts):
    ll_model, ll_null, spikes = _ref_neuron_stats(rates, counts)
    return (sum(ll_model) - sum(ll_null)) / (sum(spikes) * math.log(2))


def _ref_bps_per_neuron_mean(rates, counts):
    ll_model, ll_null, spikes = _ref_neuron_stats(rates, counts)
    vals = [(ll_model[n] - ll_null[n]) / (spikes[n] * math.log(2))
            for n in range(len(spikes)) if spikes[n] > 0]
    return sum(vals) / len(vals)


def _synthetic(seed=0, K=6, T=15, N=5, nan_frac=0.0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.4, size=(K, T, N))
    counts = rng.poisson(rates).astype(float)
    if nan_frac:
        counts[rng.random(counts.shape) < nan_frac] = np.nan
    model = rates * rng.uniform(0.5, 1.5, size=rates.shape)  # an imperfect model
    return rates, counts, model


# ----------------------------------------------------------------------------- log-likelihood / bps


def test_poisson_log_likelihood_matches_scipy():
    _, counts, model = _synthetic(nan_frac=0.2)
    expected = sum(poisson.logpmf(k, r) for _, r, k in _ref_items(model, counts))
    assert poisson_log_likelihood(model, counts) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("nan_frac", [0.0, 0.3])
def test_bps_both_conventions_match_loops(nan_frac):
    _, counts, model = _synthetic(seed=1, nan_frac=nan_frac)
    assert bps_pooled(model, counts) == pytest.approx(_ref_bps_pooled(model, counts), rel=1e-10)
    assert bps_per_neuron_mean(model, counts) == pytest.approx(
        _ref_bps_per_neuron_mean(model, counts), rel=1e-10)


def test_bps_matches_nlb_formula_without_zero_rates():
    # nlb_tools: (nll_null - nll_model) / nansum(spikes) / ln 2 with null = nanmean over (0, 1),
    # written here with numpy whole-array ops and gammaln as in its neg_log_likelihood.
    from scipy.special import gammaln
    _, counts, model = _synthetic(seed=2, nan_frac=0.1)

    def nll(r, s):
        m = ~np.isnan(s)
        r, s = r[m], s[m]
        return np.sum(r - s * np.log(r) + gammaln(s + 1.0))

    null = np.tile(np.nanmean(counts, axis=(0, 1), keepdims=True), counts.shape[:2] + (1,))
    nlb = (nll(null, counts) - nll(model, counts)) / np.nansum(counts) / np.log(2)
    assert bps_pooled(model, counts) == pytest.approx(nlb, rel=1e-10)


def test_nan_entries_equal_computing_on_subset():
    _, counts, model = _synthetic(seed=3, K=8, T=10, N=4)
    # drop whole trials 2 and 5 via NaN; compare with physically removing them
    masked = counts.copy()
    masked[[2, 5]] = np.nan
    model_nan = model.copy()
    model_nan[[2, 5]] = np.nan  # rates may be NaN where counts are not evaluated
    keep = [i for i in range(8) if i not in (2, 5)]
    for fn in (bps_pooled, bps_per_neuron_mean, poisson_log_likelihood):
        assert fn(model_nan, masked) == pytest.approx(fn(model[keep], counts[keep]), rel=1e-12)
    np.testing.assert_allclose(bps_per_neuron(model, masked), bps_per_neuron(model[keep],
                                                                               counts[keep]))
    # scattered NaNs: equal to the loop reference on the evaluated subset
    scattered = counts.copy()
    scattered[np.random.default_rng(0).random(counts.shape) < 0.25] = np.nan
    assert bps_pooled(model, scattered) == pytest.approx(_ref_bps_pooled(model, scattered),
                                                         rel=1e-10)


def test_nan_rate_at_evaluated_entry_raises():
    _, counts, model = _synthetic()
    model[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bps_pooled(model, counts)


def test_true_rates_beat_null_and_null_scores_zero():
    rates, counts, _ = _synthetic(seed=4, K=40, T=50, N=6)
    assert bps_pooled(rates, counts) > 0.05
    assert bps_per_neuron_mean(rates, counts) > 0.05
    assert oracle_bps_pooled(rates, counts) == bps_pooled(rates, counts)
    null = np.broadcast_to(counts.mean(axis=(0, 1)), counts.shape)
    assert bps_pooled(null, counts) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(bps_per_neuron(null, counts), 0.0, atol=1e-12)


def test_silent_neuron_handling():
    rng = np.random.default_rng(5)
    counts = rng.poisson(1.0, size=(4, 10, 3)).astype(float)
    counts[..., 1] = 0  # neuron 1 is silent
    rates = np.full(counts.shape, 1.0)
    per_neuron = bps_per_neuron(rates, counts)
    assert np.isnan(per_neuron[1]) and np.all(np.isfinite(per_neuron[[0, 2]]))
    assert bps_per_neuron_mean(rates, counts) == pytest.approx(np.mean(per_neuron[[0, 2]]))
    # pooled: the silent neuron adds -sum(rates) nats to the numerator, nothing to the denominator
    without = bps_pooled(rates[..., [0, 2]], counts[..., [0, 2]])
    total_spikes = counts.sum()
    expected = without - rates[..., 1].sum() / (total_spikes * math.log(2))
    assert bps_pooled(rates, counts) == pytest.approx(expected, rel=1e-12)
    # predicting exactly zero for the silent neuron costs nothing
    rates0 = rates.copy()
    rates0[..., 1] = 0.0
    assert bps_pooled(rates0, counts) == pytest.approx(without, rel=1e-12)


def test_no_spikes_at_all_gives_nan_with_warning():
    counts = np.zeros((2, 3, 2))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(bps_pooled(np.ones_like(counts), counts))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(bps_per_neuron_mean(np.ones_like(counts), counts))


def test_zero_rate_handling_is_unclipped():
    counts = np.array([[0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    rates = np.array([[0.0, 1.5], [0.5, 0.2], [0.0, 0.9]])
    # zero rate where no spike: exact, contributes log(1) = 0
    expected = sum(poisson.logpmf(k, r) for _, r, k in _ref_items(rates, counts))
    assert poisson_log_likelihood(rates, counts) == pytest.approx(expected)
    assert math.isfinite(bps_pooled(rates, counts))
    # zero rate where a spike occurred: -inf, no clipping to 1e-9
    rates[1, 0] = 0.0
    assert poisson_log_likelihood(rates, counts) == -math.inf
    assert bps_pooled(rates, counts) == -math.inf
    per_neuron = bps_per_neuron(rates, counts)
    assert per_neuron[0] == -math.inf and math.isfinite(per_neuron[1])


def test_conventions_differ_on_constructed_example():
    # neuron 0: many spikes, model slightly better than null; neuron 1: 1 spike, model much better.
    counts = np.array([[5.0, 0.0], [3.0, 0.0], [4.0, 1.0], [4.0, 0.0]])
    rates = np.array([[4.5, 0.01], [3.5, 0.01], [4.0, 0.9], [4.0, 0.01]])
    ln2 = math.log(2)

    def ll(r, k):
        return sum(k_ * math.log(r_) - r_ - math.lgamma(k_ + 1) for r_, k_ in zip(r, k))

    ll_m0, ll_n0 = ll(rates[:, 0], counts[:, 0]), ll([4.0] * 4, counts[:, 0])
    ll_m1, ll_n1 = ll(rates[:, 1], counts[:, 1]), ll([0.25] * 4, counts[:, 1])
    pooled_hand = (ll_m0 + ll_m1 - ll_n0 - ll_n1) / (17 * ln2)
    mean_hand = ((ll_m0 - ll_n0) / (16 * ln2) + (ll_m1 - ll_n1) / (1 * ln2)) / 2
    assert bps_pooled(rates, counts) == pytest.approx(pooled_hand, rel=1e-12)
    assert bps_per_neuron_mean(rates, counts) == pytest.approx(mean_hand, rel=1e-12)
    assert abs(pooled_hand - mean_hand) > 0.2


def test_user_null_rates():
    _, counts, model = _synthetic(seed=6)
    null = np.full(counts.shape[-1], 0.7)
    ll_null = sum(poisson.logpmf(k, 0.7) for _, _, k in _ref_items(model, counts))
    expected = (poisson_log_likelihood(model, counts) - ll_null) / (counts.sum() * math.log(2))
    assert bps_pooled(model, counts, null_rates=null) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="null_rates"):
        bps_pooled(model, counts, null_rates=null[:-1])


def test_input_validation_messages():
    with pytest.raises(ValueError, match="same shape"):
        bps_pooled(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="rates must be >= 0"):
        bps_pooled(-np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-negative integers"):
        bps_pooled(np.ones((2, 3)), np.full((2, 3), 0.5))


# ----------------------------------------------------------------------------- R² and decoding


def test_r2_pooled_matches_sklearn_variance_weighted_and_nan_subset():
    rng = np.random.default_rng(7)
    y = rng.normal(size=(50, 3)) * [1.0, 3.0, 0.5]
    pred = y + rng.normal(size=y.shape)
    assert r2_score_pooled(pred, y) == pytest.approx(
        r2_score(y, pred, multioutput="variance_weighted"), rel=1e-12)
    y_nan = y.copy()
    y_nan[10:20] = np.nan
    keep = np.r_[0:10, 20:50]
    assert r2_score_pooled(pred, y_nan) == pytest.approx(
        r2_score(y[keep], pred[keep], multioutput="variance_weighted"), rel=1e-12)


def _separable(seed=0, n_per_class=30, n_classes=3, F=8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(n_classes, F))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    feats = centers[labels] + rng.normal(size=(labels.size, F))
    return feats, labels


def test_decode_discrete_beats_chance_on_separable_data():
    feats, labels = _separable()
    out = decode_discrete(feats, labels, cv_folds=5, seed=0)
    assert out["accuracy"] > 0.95 and out["balanced_accuracy"] > 0.95
    assert out["chance"] == pytest.approx(1 / 3)
    assert out["n_classes"] == 3 and out["C_"].shape == (5,)


def test_decode_discrete_at_chance_on_shuffled_labels():
    feats, labels = _separable(seed=1, n_per_class=40, n_classes=2)
    rng = np.random.default_rng(2)
    accs = [decode_discrete(feats, rng.permutation(labels), cv_folds=4, seed=s)["balanced_accuracy"]
            for s in range(3)]
    assert abs(np.mean(accs) - 0.5) < 0.15


def test_decode_discrete_rejects_too_small_classes():
    feats, labels = _separable(n_per_class=3)
    with pytest.raises(ValueError, match="cv_folds"):
        decode_discrete(feats, labels, cv_folds=5)


def test_decode_continuous_recovers_linear_target_and_skips_nan():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(200, 6))
    Y = X @ rng.normal(size=(6, 2)) + 0.1 * rng.normal(size=(200, 2))
    Y[:5, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="skipping 5"):
        out = decode_continuous(X, Y, cv_folds=5, seed=0)
    assert out["r2"] > 0.98 and out["r2_per_target"].shape == (2,)
    shuffled = decode_continuous(X[5:], rng.permutation(Y[5:]), cv_folds=5,
                                 groups=np.arange(195) % 7)
    assert shuffled["r2"] < 0.1


# ----------------------------------------------------------------------------- oracle


def test_poisson_token_logprob_aligned_with_tokenize():
    rng = np.random.default_rng(9)
    N, T = 4, 6
    expected = rng.gamma(2.0, 1.0, size=(N, T))
    expected[2, 3] = 260.0
    counts = rng.poisson(expected).clip(0, 255).astype(np.uint8)
    counts[2, 3] = 255  # clipped to token 254
    counts[1, 1] = 254  # exactly 254: also the tail token
    expected[1, 1] = 250.0
    tokens = tokenize(counts)
    logp = poisson_token_logprob(counts, expected)
    assert logp.shape == tokens.shape and logp.dtype == np.float64
    assert np.all(logp[tokens == SEPARATOR] == 0.0)
    # walk the sequence independently: position p -> (bin, unit)
    for p, tok in enumerate(tokens):
        t, slot = divmod(p, N + 1)
        if slot == 0:
            continue
        lam = expected[slot - 1, t]
        want = poisson.logsf(253, lam) if tok == 254 else poisson.logpmf(int(tok), lam)
        assert logp[p] == pytest.approx(want, rel=1e-10), (p, tok)
    assert np.all(logp <= 0)
    assert oracle_token_loss(counts, expected) == pytest.approx(-logp.mean())
    n_count_tokens = N * T
    assert oracle_token_loss(counts, expected, include_separators=False) == pytest.approx(
        -logp.sum() / n_count_tokens)


def test_poisson_token_logprob_zero_rate_and_dtype():
    counts = np.array([[0, 1]], dtype=np.uint8)
    logp = poisson_token_logprob(counts, np.array([[0.0, 0.0]]))
    np.testing.assert_array_equal(logp, [0.0, 0.0, 0.0, -np.inf])
    with pytest.raises(TypeError, match="integer"):
        poisson_token_logprob(counts.astype(float), np.ones((1, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        poisson_token_logprob(np.zeros((2, 3), dtype=np.uint8), np.ones((2, 3)))


# ----------------------------------------------------------------------------- bootstrap interval


def _walk_like(K, seed=3, T=10, N=7):
    rng = np.random.default_rng(seed)
    truth = rng.gamma(2.0, 0.2, size=(K, T, N)) * rng.lognormal(0.0, 0.3, size=(K, 1, 1))
    counts = rng.poisson(truth).astype(float)
    counts[0, :3, 2] = np.nan  # not evaluated: left out of every sum
    rates = truth.mean(axis=0, keepdims=True) * rng.uniform(0.7, 1.3, size=truth.shape)
    return rates, counts


def test_trial_weights_score_resamples_and_jackknife_as_bps_pooled_does():
    from spikefm.eval.metrics import _trial_weighted_bps

    rates, counts = _walk_like(9)
    null = counts[1:].mean(axis=(0, 1)) + 0.01
    for null_rates in (None, null):
        score = _trial_weighted_bps(rates, counts, null_rates)
        idx = np.random.default_rng(0).integers(0, 9, size=(5, 9))
        w = np.stack([np.bincount(i, minlength=9) for i in idx]).astype(float)
        want = [bps_pooled(rates[i], counts[i], null_rates=null_rates) for i in idx]
        np.testing.assert_allclose(score(w), want, rtol=1e-10)
        keep = [np.delete(np.arange(9), k) for k in range(9)]
        np.testing.assert_allclose(score(1.0 - np.eye(9)),
                                   [bps_pooled(rates[i], counts[i], null_rates=null_rates) for i in keep], rtol=1e-10)
        assert score(np.ones((1, 9)))[0] == pytest.approx(bps_pooled(rates, counts, null_rates=null_rates), rel=1e-10)


def test_bps_interval_is_the_jackknife_t_interval_of_leave_one_trial_out_scores():
    from scipy.stats import t as student_t

    from spikefm.eval.metrics import bps_pooled_interval

    rates, counts = _walk_like(20)
    null = counts[1:].mean(axis=(0, 1)) + 0.01
    for null_rates in (None, null):
        point = bps_pooled(rates, counts, null_rates=null_rates)
        loo = np.array([bps_pooled(np.delete(rates, k, 0), np.delete(counts, k, 0), null_rates=null_rates)
                        for k in range(20)])
        se = np.sqrt(19 / 20 * np.sum((loo - loo.mean()) ** 2))  # the jackknife standard error
        for level in (0.95, 0.8):
            q = student_t.ppf(0.5 + level / 2, 19)
            got = bps_pooled_interval(rates, counts, null_rates=null_rates, level=level)
            np.testing.assert_allclose(got, [point - q * se, point + q * se], rtol=1e-9)


def test_bps_interval_narrows_with_trials_and_handles_zero_rates():
    from spikefm.eval.metrics import bps_pooled_interval

    rng = np.random.default_rng(0)

    def width(K):
        truth = rng.gamma(2.0, 0.3, size=(K, 10, 5))
        lo, hi = bps_pooled_interval(truth, rng.poisson(truth).astype(float))
        return hi - lo

    assert width(400) < 0.5 * width(25)
    counts = np.ones((4, 3, 2))
    rates = np.ones((4, 3, 2))
    rates[0, 0, 0] = 0.0  # a spike at rate 0 in trial 0: the score is -inf
    assert bps_pooled_interval(rates, counts) == (-np.inf, -np.inf)
    with pytest.raises(ValueError, match="at least 3 trials"):
        bps_pooled_interval(np.ones((2, 3, 2)), np.ones((2, 3, 2)))
    with pytest.raises(ValueError, match="level"):
        bps_pooled_interval(rates, counts, level=95)


def test_jackknife_interval_of_a_mean_is_the_t_interval():
    from scipy.stats import ttest_1samp

    from spikefm.eval.metrics import jackknife_interval

    d = np.random.default_rng(4).choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=40)  # paired hit differences
    got = jackknife_interval(lambda i: d[i].mean(), d.size)
    ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert got["value"] == pytest.approx(d.mean())
    np.testing.assert_allclose(got["ci95"], [ci.low, ci.high], rtol=1e-9)
    assert np.isnan(jackknife_interval(lambda i: d[i].mean(), 2)["ci95"]).all()
    with pytest.raises(ValueError, match="num_trials"):
        jackknife_interval(lambda i: 0.0, 0)


def test_bps_difference_is_paired_and_narrower_than_either_score():
    from spikefm.eval.metrics import bps_pooled_difference, bps_pooled_interval

    rates, counts = _walk_like(20)
    other = rates * np.random.default_rng(9).uniform(0.8, 1.2, size=rates.shape)
    d = bps_pooled_difference(rates, other, counts)
    assert d["value"] == pytest.approx(bps_pooled(rates, counts) - bps_pooled(other, counts), rel=1e-9)
    # Both scores move together with the trials' shared difficulty; their difference does not.
    lo, hi = bps_pooled_interval(rates, counts)
    assert d["ci95"][1] - d["ci95"][0] < 0.5 * (hi - lo)


def test_ideal_observer_log_ratio_is_the_poisson_likelihood_ratio_per_trial():
    from spikefm.eval.oracle import ideal_observer_log_ratio

    rng = np.random.default_rng(2)
    a = rng.gamma(2.0, 0.3, size=(6, 5, 4))
    b = a * rng.uniform(0.5, 1.5, size=a.shape)
    c = rng.poisson(a).astype(float)
    c[1, 2, 3] = np.nan  # not evaluated
    want = [np.nansum(poisson.logpmf(c[k], a[k]) - poisson.logpmf(c[k], b[k])) for k in range(6)]
    np.testing.assert_allclose(ideal_observer_log_ratio(c, a, b), want, rtol=1e-10)
    # Spikes drawn from a are on average better explained by a (the ratio's mean is the KL divergence).
    many = rng.poisson(np.broadcast_to(a[0], (4000, 5, 4))).astype(float)
    assert np.mean(ideal_observer_log_ratio(many, np.broadcast_to(a[0], many.shape),
                                            np.broadcast_to(b[0], many.shape)) > 0) > 0.5
    with pytest.raises(ValueError, match="share one shape"):
        ideal_observer_log_ratio(c, a, b[:3])


def test_ideal_observer_rejects_mismatched_readouts():
    from spikefm.eval.oracle import ideal_observer_favours_truth

    z, w, b = np.zeros((2, 3, 4)), np.zeros((5, 4)), np.zeros(5)
    c = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"latents must be \(K, T, Z\), loadings \(N, Z\)"):
        ideal_observer_favours_truth(c, z, w[:, :3], b, 0)
    with pytest.raises(ValueError, match="latent must index one of the 4 latents, got 4"):
        ideal_observer_favours_truth(c, z, w, b, 4)
    # every latent 0: no evidence either way, so the seeded coin decides each trial
    assert ideal_observer_favours_truth(c, z, w, b, 0, seed=1).tolist() == \
        (np.random.default_rng(1).random(2) < 0.5).tolist()


def test_infinite_rates_and_null_rates_are_refused_like_nan():
    """An infinite rate (or null rate) gave NaN with a numpy warning instead of an error."""
    from spikefm.eval.metrics import bps_pooled_difference, bps_pooled_interval

    counts = np.ones((5, 3))
    for rates in (np.full((5, 3), np.inf), np.full((5, 3), -np.inf)):
        for fn in (bps_pooled, bps_per_neuron, poisson_log_likelihood):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
                with pytest.raises(ValueError, match=r"rates must be finite expected counts per bin, got 15 "
                                                     r"infinite at evaluated entries"):
                    fn(rates, counts)
    with pytest.raises(ValueError, match="rates must be finite"):
        bps_pooled_interval(np.full((5, 3), np.inf), counts)
    # an infinite rate where the count is not evaluated is left out, as a NaN rate there is
    masked = counts.copy()
    masked[0, 0] = np.nan
    rates = np.ones((5, 3))
    rates[0, 0] = np.inf
    assert np.isfinite(poisson_log_likelihood(rates, masked))
    for null in ([1.0, np.inf, 1.0], [1.0, 1.0, -np.inf]):
        with pytest.raises(ValueError, match="null_rates must be finite expected counts per bin >= 0"):
            bps_pooled(np.ones((5, 3)), counts, null_rates=null)
        with pytest.raises(ValueError, match="null_rates must be finite expected counts per bin >= 0"):
            bps_pooled_interval(np.ones((5, 3)), counts, null_rates=null)


def test_bps_difference_refuses_arrays_without_a_trial_axis_in_one_line():
    """1-D or scalar input raised numpy's IndexError / a broadcasting error."""
    from spikefm.eval.metrics import bps_pooled_difference

    for arr in (np.ones(5), 1.0):
        with pytest.raises(ValueError) as err:
            bps_pooled_difference(arr, arr, arr)
        msg = str(err.value)
        assert "must be (trials, ..., neurons)" in msg and "put the trials on the first axis" in msg
        assert len(msg.splitlines()) == 1
    assert math.isfinite(bps_pooled_difference(np.ones((4, 2)), np.full((4, 2), 0.5),
                                               np.ones((4, 2)))["value"])


def test_wilson_interval_validates_its_counts():
    """wilson_interval(5, 3) and (-1, 3) raised 'math domain error'."""
    from spikefm.eval.metrics import wilson_interval

    for k, n, what in ((5, 3, "successes must lie in [0, n] = [0, 3], got 5"),
                       (-1, 3, "successes must lie in [0, n] = [0, 3], got -1"),
                       (1, -2, "n must be the number of trials, >= 0, got -2"),
                       (1.5, 3, "successes must be a whole number, got 1.5"),
                       (1, math.nan, "n must be a whole number, got nan"),
                       (1, math.inf, "n must be a whole number, got inf"),
                       (True, 3, "successes must be a whole number, got True"),
                       ("2", 3, "successes must be a whole number, got '2'")):
        with pytest.raises(ValueError) as err:
            wilson_interval(k, n)
        assert str(err.value).startswith(what) and len(str(err.value).splitlines()) == 1
    for z in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="z must be a finite number > 0"):
            wilson_interval(1, 3, z)
    assert wilson_interval(np.int64(2), 3.0) == wilson_interval(2, 3)  # numpy ints, integral floats
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))  # no trial, no interval (documented)


def test_metric_docstrings_state_the_axis_convention():
    import spikefm.eval.metrics as metrics

    for doc in (metrics.__doc__, bps_pooled.__doc__, bps_per_neuron.__doc__):
        assert ".T" in doc and "units x bins" in doc


def test_balanced_accuracy_is_the_mean_recall_over_true_classes_without_sklearns_warning():
    """A decoder predicting a class the test windows lack leaked scikit-learn's bare 'y_pred
    contains classes not in y_true' from spikefm eval, naming no task."""
    import warnings

    from spikefm.eval.metrics import balanced_accuracy

    y_true, y_pred = [0, 0, 0, 1, 1], [0, 2, 0, 1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        got = balanced_accuracy(y_true, y_pred)
    assert got == pytest.approx((2 / 3 + 1 / 2) / 2)  # recall of class 0, of class 1; class 2 only costs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's 'A single label was found' passed through
        assert balanced_accuracy([1, 1], [1, 1]) == 1.0 and balanced_accuracy([1, 1], [1, 0]) == 0.5
    with pytest.raises(ValueError, match=r"^balanced_accuracy needs y_true and y_pred of one label per sample, the "
                                         r"same length; got shapes \(3,\) and \(2,\)$"):
        balanced_accuracy([0, 1, 1], [0, 1])


def test_decode_discrete_skips_text_labels_without_a_value():
    """SessionWindows.labels holds None for a trial without a text label; decode_discrete said
    "'<' not supported between instances of 'str' and 'NoneType'" from inside numpy."""
    feats, labels = _separable(n_per_class=20, n_classes=2)
    text = np.array(["L", "R"], dtype=object)[labels]
    text[[0, 25]] = None
    with pytest.warns(RuntimeWarning, match=r"decode_discrete: skipping 2 of 40 samples"):
        got = decode_discrete(feats, text, cv_folds=4, seed=0)
    keep = np.ones(40, dtype=bool)
    keep[[0, 25]] = False
    assert got == decode_discrete(feats[keep], labels[keep], cv_folds=4, seed=0) | {"C_": got["C_"]}


def test_mean_sd_leaves_out_missing_and_undefined_values_and_has_no_sd_for_one():
    import statistics

    from spikefm.eval.metrics import mean_sd

    assert mean_sd([1.0, None, float("nan"), 3.0, float("inf")]) == (2.0, statistics.stdev([1.0, 3.0]), 2)
    assert mean_sd([5]) == (5.0, None, 1)
    assert mean_sd([None, float("nan")]) == (None, None, 0) == mean_sd([])


def test_interval_arguments_take_numpy_numbers_and_refuse_bools():
    """level=np.float32(0.9) was refused as 'not a float'; num_trials=True was taken as 1."""
    from spikefm.eval.metrics import jackknife_interval

    stat = lambda idx: float(np.mean(np.arange(10.0)[idx]))  # noqa: E731
    a = jackknife_interval(stat, 10, level=np.float32(0.9))
    b = jackknife_interval(stat, 10, level=float(np.float32(0.9)))
    assert a == b and a["ci95"][0] < 4.5 < a["ci95"][1]
    with pytest.raises(ValueError, match=r"num_trials must be a positive int, got True"):
        jackknife_interval(stat, True)
    with pytest.raises(ValueError, match=r"level must be a float in \(0, 1\), got True"):
        jackknife_interval(stat, 10, level=True)
