"""spikefm.eval.metrics: contracts that the example-based tests in test_metrics.py leave open
(written to kill the mutants benchmarks/mutation/run_mutation.py found surviving them).

Expectations are independent of the code: scipy's Poisson pmf, hand-computed sums, the same input
in another layout or dtype, whole error messages, warnings attributed to a caller (not to
metrics.py; under mutmut an extra trampoline frame sits between, so the exact caller is not
checked).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import poisson

from spikefm.eval import metrics as m

RNG = np.random.default_rng(0)
COUNTS = RNG.poisson(1.5, size=(4, 5, 3)).astype(np.float64)  # trials x bins x neurons
RATES = RNG.uniform(0.5, 3.0, size=COUNTS.shape)


def message(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        call(*args, **kwargs)
    return str(err.value)


# ----------------------------------------------------------------------------- validation


def test_validation_messages_are_exact():
    assert message(m.poisson_log_likelihood, np.ones(2), np.ones(3)) == (
        "rates and counts must have the same shape (..., num_neurons), got rates (2,) and counts (3,); "
        "put neurons on the last axis of both")
    assert message(m.poisson_log_likelihood, 1.0, 1.0) == (
        "rates and counts must have at least one axis (neurons last), got scalars")
    assert message(m.bps_pooled, [np.nan, 1.0, np.nan], [1.0, 1.0, 0.0]) == (
        "rates are NaN at 2 evaluated entries (counts not NaN there); predict a rate everywhere counts "
        "are given, or set counts to NaN to exclude an entry")
    bad_counts = ("counts must be non-negative integers (or NaN for entries not evaluated); got values in "
                  "[{lo}, {hi}] including non-integers or inf; did you swap rates and counts?")
    assert message(m.bps_pooled, [1.0, 1.0], [-1.0, 2.0]) == bad_counts.format(lo=-1.0, hi=2.0)
    assert message(m.bps_pooled, [1.0, 1.0], [0.5, 2.0]) == bad_counts.format(lo=0.5, hi=2.0)
    assert message(m.bps_pooled, [1.0, 1.0], [np.inf, 2.0]) == bad_counts.format(lo=2.0, hi=np.inf)
    assert message(m.bps_pooled, [-0.5, 1.0], [1.0, 2.0]) == (
        "rates must be >= 0 expected counts per bin, got a minimum of -0.5; apply exp/softplus to "
        "log-rates before scoring")
    assert message(m.bps_pooled, np.ones((3, 2)), np.ones((3, 2)), null_rates=[1.0, 1.0, 1.0]) == (
        "null_rates must have one expected count per bin per neuron, shape (2,), got shape (3,)")
    assert message(m.bps_pooled, np.ones((3, 2)), np.ones((3, 2)), null_rates=[[1.0, 1.0, 1.0]]) == (
        "null_rates must have one expected count per bin per neuron, shape (2,), got shape (1, 3)")
    for null, bad in (([np.nan, 1.0], "nan"), ([-1.0, 1.0], "-1.0"), ([np.inf, 1.0], "inf")):  # each on its own
        assert message(m.bps_pooled, np.ones((3, 2)), np.ones((3, 2)), null_rates=null) == (
            f"null_rates must be finite expected counts per bin >= 0, got {bad} at neuron 0; give each "
            "neuron's finite mean count per bin")
    assert message(m.r2_score_pooled, np.ones(2), np.ones(3)) == (
        "predictions and targets must have the same shape (..., channels), got (2,) and (3,)")
    assert message(m.r2_score_pooled, 1.0, 1.0) == "predictions and targets must be arrays, got scalars"
    assert message(m.r2_score_pooled, [np.nan, 1.0], [1.0, 2.0]) == (
        "predictions are NaN where targets are evaluated; set the target to NaN to exclude an entry")


def test_a_zero_null_rate_is_allowed_and_a_column_null_works():
    counts = np.array([[0.0, 1.0], [0.0, 2.0]])
    value = m.bps_pooled(np.full((2, 2), 1.0), counts, null_rates=[0.0, 1.5])
    ll = poisson.logpmf(counts, 1.0).sum() - poisson.logpmf(counts[:, 1], 1.5).sum()  # null 0 -> 0 for k=0
    assert value == pytest.approx(ll / (3 * np.log(2)), rel=1e-12)
    assert m.bps_pooled(np.full((2, 2), 1.0), counts, null_rates=[[0.0], [1.5]]) == value  # (N, 1): flattened


def test_layouts_one_neuron_many_axes_and_dtypes_agree():
    flat = (RATES.reshape(-1, 3), COUNTS.reshape(-1, 3))
    for fn in (m.poisson_log_likelihood, m.bps_pooled, m.bps_per_neuron_mean):
        assert fn(RATES, COUNTS) == fn(*flat)
    np.testing.assert_array_equal(m.bps_per_neuron(RATES, COUNTS), m.bps_per_neuron(*flat))
    np.testing.assert_array_equal(m.poisson_log_likelihood_per_neuron(RATES, COUNTS),
                                  m.poisson_log_likelihood_per_neuron(*flat))
    # one neuron as a 1-D array equals it as an (R, 1) column
    r1, c1 = flat[0][:, 1], flat[1][:, 1]
    assert m.bps_per_neuron(r1, c1).shape == (1,)
    assert m.bps_per_neuron(r1, c1)[0] == m.bps_per_neuron(r1[:, None], c1[:, None])[0]
    assert m.poisson_log_likelihood(r1, c1) == m.poisson_log_likelihood(r1[:, None], c1[:, None])
    # float32 / int inputs are converted to float64 first: identical results
    assert m.poisson_log_likelihood(RATES.astype(np.float32), COUNTS.astype(np.float32)) == \
        m.poisson_log_likelihood(RATES.astype(np.float32).astype(np.float64), COUNTS)
    assert m.bps_pooled(RATES, COUNTS.astype(np.int64)) == m.bps_pooled(RATES, COUNTS)
    assert m.bps_pooled(RATES.astype(np.float32), COUNTS.astype(np.uint8)) == \
        m.bps_pooled(RATES.astype(np.float32).astype(np.float64), COUNTS)
    null32 = np.array([1.1, 0.7, 2.3], dtype=np.float32)
    assert m.bps_pooled(RATES, COUNTS, null_rates=null32) == m.bps_pooled(RATES, COUNTS, null_rates=null32.astype(np.float64))


def test_per_neuron_log_likelihood_matches_scipy():
    rates, counts = RATES.reshape(-1, 3), COUNTS.reshape(-1, 3).copy()
    counts[0, 0] = np.nan
    expected = np.nansum(np.where(np.isnan(counts), np.nan, poisson.logpmf(np.nan_to_num(counts), rates)), axis=0)
    np.testing.assert_allclose(m.poisson_log_likelihood_per_neuron(rates, counts), expected, rtol=1e-12)
    assert m.poisson_log_likelihood_per_neuron(rates, counts).shape == (3,)


def test_user_null_rates_are_used_by_every_bps_variant():
    null = np.array([0.4, 5.0, 1.0])
    rates, counts = RATES.reshape(-1, 3), COUNTS.reshape(-1, 3)
    ll_model = poisson.logpmf(counts, rates).sum(axis=0)
    ll_null = poisson.logpmf(counts, null).sum(axis=0)
    per = (ll_model - ll_null) / (counts.sum(axis=0) * np.log(2))
    np.testing.assert_allclose(m.bps_per_neuron(rates, counts, null_rates=null), per, rtol=1e-12)
    assert m.bps_per_neuron_mean(rates, counts, null_rates=null) == pytest.approx(per.mean(), rel=1e-12)
    assert m.bps_per_neuron_mean(rates, counts, null_rates=null) != m.bps_per_neuron_mean(rates, counts)


# ----------------------------------------------------------------------------- numpy warnings


def test_edge_cases_raise_no_floating_point_warnings():
    """Zero rates meeting spikes, neurons with nothing evaluated, -inf - -inf: the documented
    results, without numpy RuntimeWarnings leaking to the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.poisson_log_likelihood([0.0, 1.0], [1.0, 0.0]) == -np.inf
        counts = np.array([[1.0, np.nan], [2.0, np.nan]])
        per = m.bps_per_neuron(np.ones((2, 2)), counts)  # neuron 1: nothing evaluated (0 / 0)
        assert np.isfinite(per[0]) and np.isnan(per[1])
        both_inf = m.bps_pooled([[0.0]], [[1.0]], null_rates=[0.0])  # -inf - (-inf)
        assert np.isnan(both_inf)
        assert np.isnan(m.bps_per_neuron([[0.0]], [[1.0]], null_rates=[0.0])[0])
        r2 = m.r2_score_pooled(np.ones((3, 2)), np.array([[1.0, np.nan], [2.0, np.nan], [4.0, np.nan]]))
        assert np.isfinite(r2)


def test_metric_warnings_are_exact_and_point_at_the_caller():
    cases = [
        (lambda: m.bps_pooled(np.ones(3), np.zeros(3)),
         "bps_pooled: no spikes in the evaluated counts; returning NaN"),
        (lambda: m.bps_per_neuron_mean(np.ones(3), np.zeros(3)),
         "bps_per_neuron_mean: no neuron has a spike in the evaluated counts; returning NaN"),
        (lambda: m.r2_score_pooled(np.ones(3), np.full(3, 2.0)),
         "r2_score_pooled: targets have zero variance; returning NaN"),
    ]
    for call, text in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = call()
        assert np.isnan(value)
        assert [(str(w.message), w.category) for w in caught] == [(text, RuntimeWarning)]
        assert caught[0].filename != m.__file__  # attributed to a caller, not to metrics.py


def test_r2_matches_the_formula_in_any_layout():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(4, 6, 2))
    pred = true + rng.normal(scale=0.5, size=true.shape)
    flat_t, flat_p = true.reshape(-1, 2), pred.reshape(-1, 2)
    expected = 1 - ((flat_t - flat_p) ** 2).sum() / ((flat_t - flat_t.mean(axis=0)) ** 2).sum()
    assert m.r2_score_pooled(pred, true) == pytest.approx(expected, rel=1e-12)
    assert m.r2_score_pooled(flat_p, flat_t) == pytest.approx(expected, rel=1e-12)
    one = m.r2_score_pooled(flat_p[:, 0], flat_t[:, 0])
    assert one == m.r2_score_pooled(flat_p[:, :1], flat_t[:, :1])
    assert m.r2_score_pooled(pred.astype(np.float32), true) == m.r2_score_pooled(pred.astype(np.float32).astype(np.float64), true)
    assert m.r2_score_pooled(pred, true.astype(np.float32)) == m.r2_score_pooled(pred, true.astype(np.float32).astype(np.float64))
    # total sum of squares exactly 1.0 is an ordinary case (not "zero variance")
    assert m.r2_score_pooled([0.5, -0.5, 0.5, 0.0], [0.5, -0.5, 0.5, -0.5]) == pytest.approx(0.75, rel=1e-12)


# ----------------------------------------------------------------------------- decoding


def _discrete_data(n_per_class: int = 12, noise: float = 0.8, seed: int = 1):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    X = rng.normal(size=(len(y), 3)) * noise
    X[:, 0] += y * 1.5
    return X, y


def test_decode_discrete_defaults_determinism_and_messages():
    X, y = _discrete_data()
    default = m.decode_discrete(X, y)
    explicit = m.decode_discrete(X, y, cv_folds=5, inner_cv_folds=3, Cs=np.logspace(-4, 4, 9), seed=0)
    for key in ("accuracy", "balanced_accuracy", "chance", "n_classes"):
        assert default[key] == explicit[key]
    np.testing.assert_array_equal(default["C_"], explicit["C_"])
    assert len(default["C_"]) == 5 and all(c is not None and c > 0 for c in default["C_"])
    assert np.isin(default["C_"], np.logspace(-4, 4, 9)).all()
    again = m.decode_discrete(X, y)
    assert again["accuracy"] == default["accuracy"] and np.array_equal(again["C_"], default["C_"])
    # a user grid is used as given
    assert set(m.decode_discrete(X, y, Cs=[0.37])["C_"]) == {0.37}
    assert set(m.decode_discrete(X, y, Cs=["0.37"])["C_"]) == {0.37}
    # class counts equal to cv_folds are enough; inner folds of 2 are allowed
    Xs, ys = X[[0, 1, 2, 12, 13, 14]], y[[0, 1, 2, 12, 13, 14]]
    assert m.decode_discrete(Xs, ys, cv_folds=3)["n_classes"] == 2
    assert message(m.decode_discrete, Xs[:4], np.array([0, 0, 1, 1]), cv_folds=2) == (
        "a class has fewer than 2 samples in an outer training fold; lower cv_folds or add samples")
    assert message(m.decode_discrete, X, y, cv_folds=13) == (
        "the smallest class has 12 samples but cv_folds=13; lower cv_folds or drop rare classes")
    assert message(m.decode_discrete, X, np.zeros(len(y))) == "need at least 2 classes to decode, got 1"
    assert message(m.decode_discrete, X[:, 0], y) == (
        "expected features (K, F) and labels (K,), got (24,) and (24,)")
    assert message(m.decode_discrete, X, y[:-1]) == (
        "expected features (K, F) and labels (K,), got (24, 3) and (23,)")
    assert message(m.decode_discrete, X, y[:, None]) == (
        "expected features (K, F) and labels (K,), got (24, 3) and (24, 1)")


def test_decode_discrete_skips_nan_samples_with_a_warning_at_the_caller():
    X, y = _discrete_data()
    labels = y.astype(np.float32)
    labels[3] = np.nan
    X = X.copy()
    X[20, 1] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = m.decode_discrete(X, labels, cv_folds=3)
    assert res["n_classes"] == 2
    warned = [w for w in caught if w.category is RuntimeWarning]
    assert [str(w.message) for w in warned] == ["decode_discrete: skipping 2 of 24 samples with NaN features or targets"]
    assert warned[0].filename != m.__file__
    named = np.where(y == 1, "right", "left")  # any hashable labels
    assert m.decode_discrete(X[~np.isnan(X).any(axis=1)], named[~np.isnan(X).any(axis=1)], cv_folds=3)["n_classes"] == 2


def _continuous_data(noise: float, seed: int = 2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, 3))
    Y = np.stack([X[:, 0] - 2 * X[:, 1], X[:, 2]], axis=1) + rng.normal(scale=noise, size=(40, 2))
    return X, Y


def test_decode_continuous_defaults_determinism_grid_and_messages():
    X, Y = _continuous_data(noise=0.3)
    default = m.decode_continuous(X, Y)
    explicit = m.decode_continuous(X, Y, cv_folds=5, alphas=np.logspace(-4, 4, 9), seed=0)
    assert default["r2"] == explicit["r2"] and len(default["alpha_"]) == 5
    np.testing.assert_array_equal(default["r2_per_target"], explicit["r2_per_target"])
    np.testing.assert_array_equal(default["alpha_"], explicit["alpha_"])
    assert m.decode_continuous(X, Y)["r2"] == default["r2"]  # the split is seeded
    assert m.decode_continuous(X, Y, seed=1)["r2"] != default["r2"]
    assert set(m.decode_continuous(X, Y, alphas=[3.0])["alpha_"]) == {3.0}
    assert set(m.decode_continuous(X, Y, alphas=["3"])["alpha_"]) == {3.0}
    # pure noise: the largest penalty of the default grid; a near-exact fit: the smallest
    rng = np.random.default_rng(5)
    assert max(m.decode_continuous(rng.normal(size=(60, 3)), rng.normal(size=60))["alpha_"]) == 1e4
    Xe, Ye = _continuous_data(noise=1e-6)
    assert set(m.decode_continuous(Xe, Ye)["alpha_"]) == {1e-4}
    # float32 inputs are converted first
    assert m.decode_continuous(X.astype(np.float32), Y)["r2"] == m.decode_continuous(
        X.astype(np.float32).astype(np.float64), Y)["r2"]
    assert m.decode_continuous(X, Y.astype(np.float32))["r2"] == m.decode_continuous(
        X, Y.astype(np.float32).astype(np.float64))["r2"]
    # 1-D targets are one target
    one = m.decode_continuous(X, Y[:, 0])
    assert one["r2_per_target"].shape == (1,) and one["r2"] == m.decode_continuous(X, Y[:, :1])["r2"]
    # features on wildly different scales: standardising first matters
    Xs = X * np.array([1e-4, 1.0, 1e4])
    assert m.decode_continuous(Xs, Y)["r2"] == pytest.approx(m.decode_continuous(X, Y)["r2"], rel=1e-6)
    for bad_x, bad_y in [(X[:, 0], Y), (X, Y[:-1]), (X, Y[:, :, None])]:
        assert message(m.decode_continuous, bad_x, bad_y) == (
            f"expected features (K, F) and targets (K,) or (K, D), got {np.shape(bad_x)} and "
            f"{np.shape(bad_y)}")


def test_decode_continuous_groups_and_nan_rows():
    X, Y = _continuous_data(noise=0.3)
    groups = np.repeat(np.arange(10), 4)
    res = m.decode_continuous(X, Y, groups=groups)
    from sklearn.model_selection import GroupKFold
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(Y)
    for tr, te in GroupKFold(n_splits=5).split(X, Y, groups):
        pred[te] = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 4, 9))).fit(X[tr], Y[tr]).predict(X[te])
    assert res["r2"] == pytest.approx(m.r2_score_pooled(pred, Y), rel=1e-10)
    X2, Y2 = X.copy(), Y.copy()
    X2[0, 0] = np.nan
    Y2[5, 1] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped = m.decode_continuous(X2, Y2)
    warned = [w for w in caught if w.category is RuntimeWarning]
    assert [str(w.message) for w in warned] == ["decode_continuous: skipping 2 of 40 samples with NaN features or targets"]
    assert warned[0].filename != m.__file__
    keep = np.ones(40, bool)
    keep[[0, 5]] = False
    assert skipped["r2"] == m.decode_continuous(X[keep], Y[keep])["r2"]


def test_inputs_go_through_float64_conversion():
    """Every array argument is converted with np.asarray(x, dtype=np.float64) first, so anything
    that converts (numeric strings included) scores exactly like its float64 value."""
    rates, counts = RATES.reshape(-1, 3)[:6], COUNTS.reshape(-1, 3)[:6]
    assert m.bps_pooled(rates.astype(str), counts) == m.bps_pooled(rates.astype(str).astype(np.float64), counts)
    null = np.array([1.25, 0.5, 2.0])
    assert m.bps_pooled(rates, counts, null_rates=null.astype(str)) == m.bps_pooled(rates, counts, null_rates=null)
    pred, true = rates[:, 0], counts[:, 1] + rates[:, 2]
    assert m.r2_score_pooled(pred.astype(str), true) == m.r2_score_pooled(pred.astype(str).astype(np.float64), true)
    assert m.r2_score_pooled(pred, true.astype(str)) == m.r2_score_pooled(pred, true.astype(str).astype(np.float64))
    X, y = _discrete_data()
    as_text = m.decode_discrete(X.astype(str), y, cv_folds=3)
    back = m.decode_discrete(X.astype(str).astype(np.float64), y, cv_folds=3)
    assert as_text["accuracy"] == back["accuracy"] and np.array_equal(as_text["C_"], back["C_"])


def test_decode_continuous_uses_the_given_number_of_folds():
    X, Y = _continuous_data(noise=0.3)
    for folds in (3, 4):
        assert len(m.decode_continuous(X, Y, cv_folds=folds)["alpha_"]) == folds


def test_decode_discrete_is_invariant_to_feature_scales():
    """Features are standardised inside each fit: rescaling a feature changes nothing."""
    X, y = _discrete_data(noise=1.2, seed=4)
    base = m.decode_discrete(X, y, cv_folds=3)
    scaled = m.decode_discrete(X * np.array([1e-3, 1.0, 1e3]), y, cv_folds=3)
    assert scaled["accuracy"] == base["accuracy"] and np.array_equal(scaled["C_"], base["C_"])
