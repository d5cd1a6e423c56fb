"""Evaluation metrics as pure numpy/scipy/scikit-learn functions (no torch).

Conventions shared by every function here:

* ``rates`` are EXPECTED SPIKE COUNTS PER BIN (what a Poisson model predicts for one bin), not Hz.
  Convert with ``rate_hz * bin_size_ms / 1000``.
* ``rates`` and ``counts`` have the same shape ``(..., N)``: any leading axes (typically
  ``trials x bins``) and neurons on the LAST axis. A 1-D array is one neuron. Corpus arrays are
  the other way round (``CorpusRow.spike_counts`` and the synthetic truth files are
  ``units x bins``): pass their transpose, ``counts.T``.
* NaN in ``counts`` means "not evaluated" (e.g. padding, bins outside the scored window): that entry
  is left out of every sum, of the spike totals and of the null model's mean. ``rates`` may be NaN
  at those entries too; a NaN or infinite rate where ``counts`` is evaluated raises
  ``ValueError`` (a model that silently fails on some bins must not get a better score; mark the
  bin in ``counts``). Null rates (``null_rates``) must be finite too.
* Metrics sum numerators and denominators and divide once. They never clip: a predicted rate of 0
  where a spike occurred has log-likelihood ``-inf``, so the score is ``-inf``. (The Neural Latents
  Benchmark's ``nlb_tools`` instead replaces zero rates by 1e-9 with a warning; give strictly
  positive rates if you need a finite score.) A rate of 0 where no spike occurred is exact (the
  Poisson pmf of 0 at rate 0 is 1) and contributes 0.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from scipy.special import gammaln, xlogy

__all__ = [
    "balanced_accuracy",
    "mean_sd",
    "poisson_log_likelihood",
    "poisson_log_likelihood_per_neuron",
    "bps_pooled",
    "bps_per_neuron",
    "bps_per_neuron_mean",
    "bps_pooled_interval",
    "jackknife_interval",
    "bps_pooled_difference",
    "r2_score_pooled",
    "decode_discrete",
    "decode_continuous",
    "canonical_row_order",
    "wilson_interval",
]

_LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- validation helpers


def _as_rates_counts(rates, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and return (rates_RN, counts_RN, evaluated_RN) with R = all leading axes flattened (rows).

    Non-evaluated entries are replaced by 0 in both arrays so that vectorised sums need no NaN
    handling; ``evaluated`` says which entries count.
    """
    rates = np.asarray(rates, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if rates.shape != counts.shape:
        raise ValueError(
            f"rates and counts must have the same shape (..., num_neurons), got rates {rates.shape} "
            f"and counts {counts.shape}; put neurons on the last axis of both"
        )
    if counts.ndim == 0:
        raise ValueError("rates and counts must have at least one axis (neurons last), got scalars")
    if counts.ndim == 1:
        counts = counts[:, None]
        rates = rates[:, None]
    num_neurons = counts.shape[-1]
    counts = counts.reshape(-1, num_neurons)
    rates = rates.reshape(-1, num_neurons)
    evaluated = ~np.isnan(counts)
    bad_rate = evaluated & np.isnan(rates)
    if bad_rate.any():
        raise ValueError(
            f"rates are NaN at {int(bad_rate.sum())} evaluated entries (counts not NaN there); "
            "predict a rate everywhere counts are given, or set counts to NaN to exclude an entry"
        )
    inf_rate = evaluated & np.isinf(rates)
    if inf_rate.any():
        raise ValueError(
            f"rates must be finite expected counts per bin, got {int(inf_rate.sum())} infinite at "
            "evaluated entries (counts not NaN there); predict finite rates (overflowing exp of "
            "log-rates?), or set counts to NaN to exclude an entry"
        )
    c = counts[evaluated]
    r = rates[evaluated]
    if c.size:
        if np.isinf(c).any() or c.min() < 0 or np.any(c != np.round(c)):
            raise ValueError(
                "counts must be non-negative integers (or NaN for entries not evaluated); "
                f"got values in [{c.min()}, {c.max()}] including non-integers or inf; "
                "did you swap rates and counts?"
            )
        if r.min() < 0:
            raise ValueError(
                f"rates must be >= 0 expected counts per bin, got a minimum of {r.min()}; "
                "apply exp/softplus to log-rates before scoring"
            )
    counts = np.where(evaluated, counts, 0.0)
    rates = np.where(evaluated, rates, 0.0)
    return rates, counts, evaluated


def _check_null_rates(null_N: np.ndarray) -> None:
    bad = ~np.isfinite(null_N) | (null_N < 0)
    if bad.any():
        raise ValueError(f"null_rates must be finite expected counts per bin >= 0, got {null_N[bad][0]} at "
                         f"neuron {int(np.flatnonzero(bad)[0])}; give each neuron's finite mean count per bin")


def _poisson_logpmf(rates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Elementwise log Poisson pmf, log(k!) included; rate 0 gives 0 for k=0 and -inf for k>0."""
    with np.errstate(divide="ignore"):
        return xlogy(counts, rates) - rates - gammaln(counts + 1.0)


def _null_rates_per_neuron(counts_RN: np.ndarray, evaluated_RN: np.ndarray) -> np.ndarray:
    """Each neuron's mean count over its evaluated entries (NaN for a neuron with none)."""
    num_evaluated_N = evaluated_RN.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts_RN.sum(axis=0) / num_evaluated_N


def _ll_sums_per_neuron(rates, counts, null_rates):
    """Per-neuron sums (ll_model_N, ll_null_N, spikes_N) over evaluated entries."""
    rates_RN, counts_RN, evaluated_RN = _as_rates_counts(rates, counts)
    num_neurons = counts_RN.shape[1]
    if null_rates is None:
        null_N = _null_rates_per_neuron(counts_RN, evaluated_RN)
    else:
        null_N = np.asarray(null_rates, dtype=np.float64).reshape(-1)
        if null_N.shape != (num_neurons,):
            raise ValueError(
                f"null_rates must have one expected count per bin per neuron, shape ({num_neurons},), "
                f"got shape {np.shape(null_rates)}"
            )
        _check_null_rates(null_N)
    null_RN = np.where(evaluated_RN, np.broadcast_to(null_N, counts_RN.shape), 0.0)
    ll_model_RN = np.where(evaluated_RN, _poisson_logpmf(rates_RN, counts_RN), 0.0)
    ll_null_RN = np.where(evaluated_RN, _poisson_logpmf(null_RN, counts_RN), 0.0)
    return ll_model_RN.sum(axis=0), ll_null_RN.sum(axis=0), counts_RN.sum(axis=0)


# ----------------------------------------------------------------------------- log-likelihoods


def poisson_log_likelihood(rates, counts) -> float:
    """Total Poisson log-likelihood (nats) of ``counts`` under ``rates``, log(k!) term included.

    Args:
        rates: (..., N) expected counts per bin, >= 0.
        counts: (..., N) observed counts (non-negative integers), NaN = not evaluated.

    Returns:
        ``sum log Poisson(counts; rates)`` over evaluated entries; ``-inf`` if a zero rate meets a
        spike; 0.0 if nothing is evaluated.
    """
    rates_RN, counts_RN, evaluated_RN = _as_rates_counts(rates, counts)
    return float(np.where(evaluated_RN, _poisson_logpmf(rates_RN, counts_RN), 0.0).sum())


def poisson_log_likelihood_per_neuron(rates, counts) -> np.ndarray:
    """(N,) per-neuron total Poisson log-likelihood (nats); same conventions as
    :func:`poisson_log_likelihood`."""
    rates_RN, counts_RN, evaluated_RN = _as_rates_counts(rates, counts)
    return np.where(evaluated_RN, _poisson_logpmf(rates_RN, counts_RN), 0.0).sum(axis=0)


# ----------------------------------------------------------------------------- bits per spike


def bps_pooled(rates, counts, *, null_rates=None) -> float:
    """Bits per spike, pooled over neurons: the Neural Latents Benchmark (co-bps / fp-bps) definition.

    ``bps = sum_{n,s} [LL(rates) - LL(null)] / (ln 2 * sum_{n,s} counts)``, sums over every
    evaluated entry of every neuron, divided once. As in ``nlb_tools.evaluation.bits_per_spike``
    the null model predicts, for each neuron, its mean count per bin over the evaluated data
    (NaN entries excluded). Equivalently, the spike-weighted mean of :func:`bps_per_neuron`, plus the
    log-likelihood of silent neurons divided by the total spike count.

    Silent neurons (no spike in the evaluated data) have a null rate of 0 and null log-likelihood 0;
    they add ``-sum(rates)`` (<= 0) to the numerator and nothing to the denominator, so predicting
    activity for them is penalised. (nlb_tools replaces their zero null rate by 1e-9, a difference
    of about 1e-9 nats per bin.)

    Zero predicted rates are not clipped: a rate of 0 where a spike occurred gives ``-inf``.
    With a user ``null_rates`` that is 0 where a spike occurred, the null is ``-inf`` and the result
    ``+inf`` (or NaN if the model is ``-inf`` too).

    Args:
        rates: (..., N) finite expected counts per bin, >= 0, neurons on the last axis.
        counts: (..., N) observed counts, NaN = not evaluated. Neurons go LAST: a corpus row's
            ``spike_counts`` (or a truth file's rates) is units x bins, so pass ``.T``.
        null_rates: optional (N,) expected counts per bin for the null model (e.g. each neuron's
            mean on training data) instead of the mean over the evaluated data.

    Returns:
        Bits per spike (float). NaN, with a ``RuntimeWarning``, if the evaluated data has no spikes.
    """
    ll_model_N, ll_null_N, spikes_N = _ll_sums_per_neuron(rates, counts, null_rates)
    total_spikes = spikes_N.sum()
    if total_spikes == 0:
        warnings.warn("bps_pooled: no spikes in the evaluated counts; returning NaN", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    with np.errstate(invalid="ignore"):
        return float((ll_model_N.sum() - ll_null_N.sum()) / (total_spikes * _LN2))


def bps_per_neuron(rates, counts, *, null_rates=None) -> np.ndarray:
    """(N,) bits per spike of each neuron, with that neuron's own null model and spike count.

    ``bps_n = sum_s [LL_n(rates) - LL_n(null)] / (ln 2 * sum_s counts_n)``, null = neuron n's mean
    count per bin over its evaluated entries (or ``null_rates[n]``). Silent neurons (no evaluated
    spike) and neurons with no evaluated entry get NaN. Zero rates are not clipped (a zero rate
    where neuron n spiked gives ``-inf`` for that neuron). Shapes and NaN conventions as in
    :func:`bps_pooled`: ``rates`` and ``counts`` are (..., N), neurons on the LAST axis, so a
    corpus row's units x bins ``spike_counts`` (or a truth file's rates) is passed as ``.T``.
    """
    ll_model_N, ll_null_N, spikes_N = _ll_sums_per_neuron(rates, counts, null_rates)
    out_N = np.full(spikes_N.shape, np.nan)
    active = spikes_N > 0
    with np.errstate(invalid="ignore"):
        out_N[active] = (ll_model_N[active] - ll_null_N[active]) / (spikes_N[active] * _LN2)
    return out_N


def bps_per_neuron_mean(rates, counts, *, null_rates=None) -> float:
    """Unweighted mean over neurons WITH spikes of :func:`bps_per_neuron` (Zhang et al. 2024).

    This is the convention of the multi-task-masking (MtM) IBL benchmarks: every active neuron
    counts equally, whatever its firing rate, so it differs from :func:`bps_pooled` (which weights
    neurons by their spike counts and charges silent neurons for predicted activity). Silent
    neurons are excluded. A ``-inf`` neuron makes the mean ``-inf``.

    Returns:
        float; NaN with a ``RuntimeWarning`` if no neuron has a spike.
    """
    per_neuron_N = bps_per_neuron(rates, counts, null_rates=null_rates)
    active = ~np.isnan(per_neuron_N)
    if not active.any():
        warnings.warn("bps_per_neuron_mean: no neuron has a spike in the evaluated counts; "
                      "returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(per_neuron_N[active].mean())


def bps_pooled_interval(rates, counts, *, null_rates=None, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of :func:`bps_pooled` over trials (the first axis): the jackknife
    standard error with a Student-t quantile, ``bps +- t_{K-1} * se``.

    The leave-one-trial-out scores are computed exactly as :func:`bps_pooled` computes the full
    one, the NLB null re-fitted on the K - 1 remaining trials, so the interval includes the null's
    own in-sample noise. On a few test trials (a forward-prediction chunk of 10 bins of 20 trials,
    say) it says whether a score below 0 is distinguishable from 0. Chosen over percentile and BCa
    bootstrap intervals, which cover less on few trials (the in-sample null fits a resample's
    repeated trials too well): in ``python benchmarks/interval_coverage.py`` (simulated test sets,
    500 per K) it covered the expected score of K fresh trials 94 % / 94 % / 92 % of the time at
    K = 10 / 20 / 60 trials, the percentile bootstrap 72 / 80 / 89 %, BCa 73 / 85 / 92 %.

    Args:
        rates, counts: (K, ..., N) as for :func:`bps_pooled`, trials on the first axis (K >= 3).
        null_rates: optional fixed (N,) null, as for :func:`bps_pooled` (not re-fitted).
        level: coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)``; ``(-inf, ...)`` when some trial has a spike at a zero predicted rate;
        ``(nan, nan)`` when a leave-one-out subset has no spike.
    """
    _check_level(level)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[0] < 3:
        raise ValueError(f"rates and counts must be (trials, ..., neurons) with at least 3 trials, got "
                         f"shape {counts.shape}; put the trials on the first axis")
    K = counts.shape[0]
    score = _trial_weighted_bps(rates, counts, null_rates)
    theta = float(score(np.ones((1, K)))[0])
    jack_K = score(1.0 - np.eye(K))
    if np.isnan(jack_K).any() or math.isnan(theta):
        return (math.nan, math.nan)
    if not (np.isfinite(jack_K).all() and math.isfinite(theta)):
        return (-math.inf, theta if math.isfinite(theta) else -math.inf)
    return _jackknife_t(theta, jack_K, level)


def _check_level(level) -> None:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Real) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")


def _jackknife_result(theta: float, jack_K: np.ndarray, level: float) -> dict[str, Any]:
    """``{"value": theta, "ci95": [low, high]}``, the interval nan when a value is not finite."""
    if not (np.isfinite(jack_K).all() and math.isfinite(theta)):
        return {"value": theta, "ci95": [math.nan, math.nan]}
    return {"value": theta, "ci95": list(_jackknife_t(theta, jack_K, level))}


def _jackknife_t(theta: float, jack_K: np.ndarray, level: float) -> tuple[float, float]:
    """``theta +- t_{K-1} * se``, se the jackknife standard error of the leave-one-out values."""
    from scipy.stats import t as student_t

    K = jack_K.size
    se = math.sqrt((K - 1) / K * float(np.sum((jack_K - jack_K.mean()) ** 2)))
    half = float(student_t.ppf(0.5 + level / 2.0, K - 1)) * se
    return (theta - half, theta + half)


def jackknife_interval(statistic, num_trials: int, *, level: float = 0.95) -> dict[str, Any]:
    """A statistic of K trials and its jackknife-t interval: ``{"value", "ci95": [low, high]}``.

    ``statistic(index)`` scores the trials ``index`` (an int array); it is called on all K trials and
    on each leave-one-out subset (K + 1 calls). Use it for paired comparisons on the same test
    trials (the difference of two models' scores), where the trial-to-trial variation both share
    cancels; see :func:`bps_pooled_interval` for why the jackknife and not the bootstrap.
    ``ci95`` is ``[nan, nan]`` when any value is not finite or K < 3; ``level`` other than 0.95
    changes the coverage, not the key.
    """
    _check_level(level)
    if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 1:
        raise ValueError(f"num_trials must be a positive int, got {num_trials!r}")
    K = int(num_trials)
    everything = np.arange(K)
    theta = float(statistic(everything))
    if K < 3:
        return {"value": theta, "ci95": [math.nan, math.nan]}
    jack_K = np.array([float(statistic(np.delete(everything, k))) for k in range(K)])
    return _jackknife_result(theta, jack_K, level)


def bps_pooled_difference(rates_a, rates_b, counts, *, level: float = 0.95) -> dict[str, Any]:
    """:func:`bps_pooled` of ``rates_a`` minus that of ``rates_b`` on the same (K, ..., N) counts,
    ``{"value", "ci95"}`` with a jackknife-t interval over the K trials (as :func:`jackknife_interval`,
    with the leave-one-out scores of :func:`bps_pooled_interval`). The NLB null is the same for both
    models, so it cancels from the difference: a paired comparison, narrower than either score's
    own interval."""
    _check_level(level)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim < 2 or counts.shape[0] < 1:
        raise ValueError(f"rates_a, rates_b and counts must be (trials, ..., neurons) with at least 1 trial, got "
                         f"counts of shape {counts.shape}; put the trials on the first axis")
    K = counts.shape[0]
    score_a, score_b = _trial_weighted_bps(rates_a, counts, None), _trial_weighted_bps(rates_b, counts, None)
    with np.errstate(invalid="ignore"):
        theta = float(score_a(np.ones((1, K)))[0] - score_b(np.ones((1, K)))[0])
        if K < 3:
            return {"value": theta, "ci95": [math.nan, math.nan]}
        leave_one_out = 1.0 - np.eye(K)
        jack_K = score_a(leave_one_out) - score_b(leave_one_out)
    return _jackknife_result(theta, jack_K, level)


def _trial_weighted_bps(rates, counts, null_rates):
    """``score(W)``: :func:`bps_pooled` of trial-weighted data for each row of W (R, K), where
    ``W[r, k]`` copies of trial ``k`` are scored (0 / 1 for a jackknife, counts for a resample)."""
    rates = np.asarray(rates, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    K, N = counts.shape[0], counts.shape[-1]
    rates_RN, counts_RN, evaluated_RN = _as_rates_counts(rates, counts)
    per_trial = rates_RN.shape[0] // K
    ll = np.where(evaluated_RN, xlogy(counts_RN, rates_RN) - rates_RN, 0.0).reshape(K, per_trial, N)
    c = counts_RN.reshape(K, per_trial, N)
    # log(k!) is left out of both models (it cancels in the difference).
    minus_inf_K = np.isneginf(ll).any(axis=(1, 2)).astype(np.float64)
    model_KN = np.where(np.isneginf(ll), 0.0, ll).sum(axis=1)
    spikes_KN = c.sum(axis=1)
    bins_KN = evaluated_RN.reshape(K, per_trial, N).sum(axis=1).astype(np.float64)
    if null_rates is not None:
        null_N = np.asarray(null_rates, dtype=np.float64).reshape(-1)
        if null_N.shape != (N,):
            raise ValueError(f"null_rates must have one expected count per bin per neuron, shape ({N},), got "
                             f"shape {np.shape(null_rates)}")
        _check_null_rates(null_N)

    def score(w_RK: np.ndarray) -> np.ndarray:
        model_RN, spikes_RN, bins_RN = w_RK @ model_KN, w_RK @ spikes_KN, w_RK @ bins_KN
        with np.errstate(divide="ignore", invalid="ignore"):
            if null_rates is None:
                null_RN = np.where(bins_RN > 0, spikes_RN / np.where(bins_RN > 0, bins_RN, 1.0), 0.0)
            else:
                null_RN = np.broadcast_to(null_N, spikes_RN.shape)
            null_ll_RN = xlogy(spikes_RN, null_RN) - null_RN * bins_RN
            total_R = spikes_RN.sum(axis=1)
            bps_R = (model_RN.sum(axis=1) - null_ll_RN.sum(axis=1)) / (total_R * _LN2)
        bps_R[w_RK @ minus_inf_K > 0] = -np.inf
        bps_R[total_R == 0] = np.nan
        return bps_R

    return score


# ----------------------------------------------------------------------------- regression scores


def r2_score_pooled(predictions, targets) -> float:
    """Coefficient of determination pooled over output channels (variance-weighted R²).

    ``R² = 1 - sum (y - y_hat)² / sum (y - mean_c(y))²``, both sums over all evaluated entries and
    channels, ``mean_c`` = each channel's mean over its evaluated entries; divided once. Equals
    scikit-learn's ``r2_score(..., multioutput="variance_weighted")`` when nothing is NaN.

    Args:
        predictions: (..., C) predicted values, channels on the last axis (1-D = one channel).
        targets: (..., C) true values; NaN = not evaluated.

    Returns:
        float; NaN with a ``RuntimeWarning`` if the targets have zero variance.
    """
    pred = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(targets, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(
            f"predictions and targets must have the same shape (..., channels), got "
            f"{pred.shape} and {true.shape}"
        )
    if true.ndim == 0:
        raise ValueError("predictions and targets must be arrays, got scalars")
    if true.ndim == 1:
        pred, true = pred[:, None], true[:, None]
    pred = pred.reshape(-1, pred.shape[-1])
    true = true.reshape(-1, true.shape[-1])
    evaluated = ~np.isnan(true)
    if np.isnan(pred[evaluated]).any():
        raise ValueError("predictions are NaN where targets are evaluated; set the target to NaN "
                         "to exclude an entry")
    true0 = np.where(evaluated, true, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_C = true0.sum(axis=0) / evaluated.sum(axis=0)
    ss_res = np.where(evaluated, (true0 - np.where(evaluated, pred, 0.0)) ** 2, 0.0).sum()
    ss_tot = np.where(evaluated, (true0 - mean_C) ** 2, 0.0).sum()
    if ss_tot == 0:
        warnings.warn("r2_score_pooled: targets have zero variance; returning NaN", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    return float(1.0 - ss_res / ss_tot)


# ----------------------------------------------------------------------------- decoding probes


def canonical_row_order(X, *others) -> np.ndarray:
    """The permutation that sorts samples by their values (the columns of ``X``, then those of
    ``others``, lexicographically). Cross-validation folds drawn on the sorted samples depend on
    the set of samples only, not on the order the caller stacked them in, so a decoder's score
    cannot change when its training rows are permuted. Identical samples stay in their order
    (they are interchangeable). Labels that are not numbers (strings) sort as their
    ``np.unique`` codes."""

    def numeric(o):
        o = np.asarray(o)
        return o if o.dtype.kind in "biuf" else np.unique(o, return_inverse=True)[1].reshape(o.shape)

    cols = [np.asarray(X, dtype=np.float64).reshape(len(X), -1)]
    cols += [numeric(o).reshape(len(X), -1).astype(np.float64) for o in others]
    keys = np.concatenate(cols, axis=1)
    return np.lexsort(keys.T[::-1]) if keys.size else np.arange(len(X))


def _drop_nan_rows(features, *others, what: str):
    """Drop samples with a NaN feature or a NaN (or, among object labels, None) target (warning
    how many)."""
    keep = ~np.isnan(features).any(axis=1)
    for arr in others:
        if arr is not None and np.issubdtype(arr.dtype, np.floating):
            keep &= ~np.isnan(arr.reshape(len(arr), -1)).any(axis=1)
        elif arr is not None and arr.dtype == object and arr.ndim == 1:  # a text label column: None = no value
            keep &= np.array([not (v is None or (isinstance(v, float) and math.isnan(v))) for v in arr], dtype=bool)
    if not keep.all():
        warnings.warn(f"{what}: skipping {int((~keep).sum())} of {keep.size} samples with NaN "
                      "features or targets", RuntimeWarning, stacklevel=3)
    return keep


def mean_sd(values) -> tuple[float | None, float | None, int]:
    """(mean, sample s.d. (ddof 1), n) over the finite numbers of ``values``: None and NaN / inf
    entries (a seed without that score, an interval too few windows leave undefined) are left out
    and not counted; the mean is None with no value left, the s.d. None with fewer than two (one
    value has no spread)."""
    vals = np.asarray([float(v) for v in values if v is not None and np.isfinite(float(v))], dtype=float)
    if vals.size == 0:
        return None, None, 0
    return float(vals.mean()), (float(vals.std(ddof=1)) if vals.size > 1 else None), int(vals.size)


def balanced_accuracy(y_true, y_pred) -> float:
    """Balanced accuracy: the mean over the classes present in ``y_true`` of the share of their
    samples predicted right (scikit-learn's ``balanced_accuracy_score``). A predicted class that
    ``y_true`` lacks only counts as wrong; scikit-learn's warnings about it ('y_pred contains
    classes not in y_true', with no word of which task) and about one class ('A single label was
    found': the score is that class's recall) are not passed on. ValueError (one line) for label
    arrays of other shapes or lengths."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"balanced_accuracy needs y_true and y_pred of one label per sample, the same length; got "
                         f"shapes {y_true.shape} and {y_pred.shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")  # one class: its recall, as defined
        return float(balanced_accuracy_score(y_true, y_pred))


def decode_discrete(
    features_KF,
    labels_K,
    *,
    cv_folds: int = 5,
    inner_cv_folds: int = 3,
    Cs=None,
    seed: int = 0,
) -> dict:
    """Nested cross-validated decoding of a discrete variable with L2 logistic regression.

    Outer ``StratifiedKFold(cv_folds, shuffle=True, random_state=seed)``; in each outer training
    fold a ``GridSearchCV`` over ``C`` (inner ``StratifiedKFold(inner_cv_folds)``) fits
    ``StandardScaler -> LogisticRegression``; the refitted best model predicts the outer test fold.
    Scores are computed once on the pooled out-of-fold predictions, so no sample ever scores a
    model that saw it or chose a hyper-parameter with it.

    Args:
        features_KF: (K samples, F features), e.g. trial-averaged predicted rates.
        labels_K: (K,) class labels (any hashable values; float NaN, or None among object labels,
            = skip the sample).
        cv_folds: outer folds; every class needs at least this many samples.
        inner_cv_folds: folds of the inner search (reduced to the smallest class count of the
            outer training fold when needed, minimum 2).
        Cs: grid of inverse regularisation strengths; default ``np.logspace(-4, 4, 9)``.
        seed: shuffling seed of the outer and inner splits.

    Returns:
        dict with ``accuracy``, ``balanced_accuracy``, ``chance`` (accuracy of always predicting
        the most frequent class; chance for balanced accuracy is ``1 / n_classes``),
        ``n_classes`` and ``C_`` (np.ndarray, the C chosen in each outer fold).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    X = np.asarray(features_KF, dtype=np.float64)
    y = np.asarray(labels_K)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"expected features (K, F) and labels (K,), got {X.shape} and {y.shape}")
    keep = _drop_nan_rows(X, y, what="decode_discrete")
    X, y = X[keep], y[keep]
    classes, y_int = np.unique(y, return_inverse=True)
    order = canonical_row_order(X, y_int)  # folds independent of the samples' order
    X, y_int = X[order], y_int[order]
    class_counts = np.bincount(y_int)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to decode, got {len(classes)}")
    if class_counts.min() < cv_folds:
        raise ValueError(
            f"the smallest class has {class_counts.min()} samples but cv_folds={cv_folds}; "
            "lower cv_folds or drop rare classes"
        )
    Cs = np.logspace(-4, 4, 9) if Cs is None else np.asarray(Cs, dtype=np.float64)
    outer = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    pred = np.empty_like(y_int)
    chosen_C = []
    # Small fits: BLAS thread hand-offs cost more than they give (several-fold slower on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        for train_idx, test_idx in outer.split(X, y_int):
            smallest = np.bincount(y_int[train_idx], minlength=len(classes)).min()
            n_inner = min(inner_cv_folds, int(smallest))
            if n_inner < 2:
                raise ValueError("a class has fewer than 2 samples in an outer training fold; "
                                 "lower cv_folds or add samples")
            search = GridSearchCV(
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                {"logisticregression__C": Cs},
                cv=StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed),
                scoring="accuracy",
            )
            search.fit(X[train_idx], y_int[train_idx])
            pred[test_idx] = search.predict(X[test_idx])
            chosen_C.append(search.best_params_["logisticregression__C"])
    return {
        "accuracy": float(np.mean(pred == y_int)),
        "balanced_accuracy": balanced_accuracy(y_int, pred),
        "chance": float(class_counts.max() / class_counts.sum()),
        "n_classes": int(len(classes)),
        "C_": np.asarray(chosen_C),
    }


def decode_continuous(
    features_KF,
    targets_K,
    *,
    cv_folds: int = 5,
    alphas=None,
    groups=None,
    seed: int = 0,
) -> dict:
    """Cross-validated ridge decoding of continuous targets; alpha chosen inside each training fold.

    Outer ``KFold(cv_folds, shuffle=True, random_state=seed)``, or ``GroupKFold`` when ``groups``
    is given (use the trial index as group when samples are time bins, so that bins of one trial
    never sit on both sides of a split). In each training fold ``StandardScaler -> RidgeCV(alphas)``
    picks alpha by efficient leave-one-out on that fold only. R² is :func:`r2_score_pooled` of the
    pooled out-of-fold predictions.

    Args:
        features_KF: (K samples, F features).
        targets_K: (K,) or (K, D) targets; a sample with any NaN target or feature is skipped.
        cv_folds: number of outer folds.
        alphas: ridge penalties to search; default ``np.logspace(-4, 4, 9)``.
        groups: optional (K,) group ids for ``GroupKFold``.
        seed: shuffling seed (ignored with ``groups``).

    Returns:
        dict with ``r2`` (pooled, variance-weighted over target dims), ``r2_per_target``
        (np.ndarray, (D,)) and ``alpha_`` (np.ndarray, alpha chosen in each outer fold).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold, KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    X = np.asarray(features_KF, dtype=np.float64)
    Y = np.asarray(targets_K, dtype=np.float64)
    if X.ndim != 2 or Y.ndim not in (1, 2) or len(X) != len(Y):
        raise ValueError(f"expected features (K, F) and targets (K,) or (K, D), got {X.shape} and "
                         f"{Y.shape}")
    Y2 = Y.reshape(len(Y), -1)
    keep = _drop_nan_rows(X, Y2, what="decode_continuous")
    X, Y2 = X[keep], Y2[keep]
    order = canonical_row_order(X, Y2)  # folds independent of the samples' order
    X, Y2 = X[order], Y2[order]
    if groups is not None:
        groups = np.asarray(groups)[keep][order]
        splitter = GroupKFold(n_splits=cv_folds)
        splits = splitter.split(X, Y2, groups)
    else:
        splits = KFold(n_splits=cv_folds, shuffle=True, random_state=seed).split(X)
    alphas = np.logspace(-4, 4, 9) if alphas is None else np.asarray(alphas, dtype=np.float64)
    pred = np.empty_like(Y2)
    chosen = []
    with threadpool_limits(limits=1, user_api="blas"):
        for train_idx, test_idx in splits:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
            model.fit(X[train_idx], Y2[train_idx])
            pred[test_idx] = model.predict(X[test_idx]).reshape(len(test_idx), -1)
            chosen.append(float(model[-1].alpha_))
    r2_per_target = np.array([r2_score_pooled(pred[:, d], Y2[:, d]) for d in range(Y2.shape[1])])
    return {"r2": r2_score_pooled(pred, Y2), "r2_per_target": r2_per_target,
            "alpha_": np.asarray(chosen)}


def _whole_number(name: str, value) -> int:
    """``value`` as an int: an int, a numpy integer or an integral float (5.0); one-line ValueError
    otherwise (bools, NaN, infinities, fractions, non-numbers)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and \
            math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name} must be a whole number, got {value!r}; pass a count such as {name}=5")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (e.g. decoding accuracy on ``n`` windows).

    Args:
        successes: whole number in ``[0, n]`` (ints, numpy integers or integral floats).
        n: number of trials, a whole number >= 0; ``(nan, nan)`` for ``n == 0`` (no trial, no
            interval).
        z: the normal quantile of the coverage (1.959964 for 95 %), finite and > 0.

    Raises:
        ValueError: a count that is not a whole number, ``n < 0``, ``successes`` outside
            ``[0, n]``, or a ``z`` that is not a finite positive number.
    """
    successes, n = _whole_number("successes", successes), _whole_number("n", n)
    if isinstance(z, (bool, np.bool_)) or not isinstance(z, numbers.Real) or not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0 (1.959964 for a 95 % interval), got {z!r}")
    if n < 0:
        raise ValueError(f"n must be the number of trials, >= 0, got {n}; pass the count of scored trials")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}; pass the number of hits "
                         f"among the n trials")
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
