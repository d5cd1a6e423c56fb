"""NLB smoothing baselines on synthetic low-rank Poisson data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import convolve1d
from sklearn.linear_model import PoissonRegressor

from spikefm.eval.baselines import SmoothingBaseline, cosmooth_leave_one_out, smooth_counts
from spikefm.eval.metrics import bps_pooled

BIN_MS = 20
KERNEL_SD_MS = 60.0


def _low_rank_poisson(seed=0, K=50, T=40, N=24, latent_dim=3):
    """Counts from exp(loadings @ smooth latents + bias); returns (rates_KTN, counts_KTN)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) * BIN_MS / 1000.0
    freqs = rng.uniform(0.5, 2.0, size=latent_dim)
    phases = rng.uniform(0, 2 * np.pi, size=(K, 1, latent_dim))
    latents_KTL = np.sin(2 * np.pi * freqs * t[None, :, None] + phases)
    loadings_LN = rng.normal(scale=0.8, size=(latent_dim, N))
    bias_N = np.log(rng.uniform(0.2, 1.0, size=N))  # 10-50 Hz at 20 ms bins
    rates_KTN = np.exp(latents_KTL @ loadings_LN + bias_N)
    return rates_KTN, rng.poisson(rates_KTN).astype(float)


@pytest.fixture(scope="module")
def data():
    rates, counts = _low_rank_poisson()
    return rates, counts


def test_smooth_counts_matches_explicit_truncated_gaussian():
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, size=(3, 30, 2)).astype(float)
    sd_bins = KERNEL_SD_MS / BIN_MS
    radius = int(3 * sd_bins + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sd_bins) ** 2)
    kernel /= kernel.sum()
    want = np.zeros_like(counts)
    for k in range(3):  # explicit zero-padded convolution, trial by trial
        for n in range(2):
            padded = np.concatenate([np.zeros(radius), counts[k, :, n], np.zeros(radius)])
            want[k, :, n] = [padded[i:i + 2 * radius + 1] @ kernel[::-1] for i in range(30)]
    got = smooth_counts(counts, kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(got, convolve1d(counts, kernel, axis=1, mode="constant"), atol=1e-12)


def test_smoothing_baseline_predicts_heldout_neurons(data):
    rates, counts = data
    heldin, heldout = slice(0, 18), slice(18, 24)
    train, test = slice(0, 40), slice(40, 50)
    model = SmoothingBaseline(kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS, alpha=1e-3)
    assert model.fit(counts[train, :, heldin], counts[train, :, heldout]) is model
    assert model.coef_.shape == (6, 18) and model.intercept_.shape == (6,)
    pred = model.predict(counts[test, :, heldin])
    assert pred.shape == (10, 40, 6) and np.all(pred > 0)
    co_bps = bps_pooled(pred, counts[test, :, heldout])
    oracle = bps_pooled(rates[test, :, heldout], counts[test, :, heldout])
    assert 0.05 < co_bps < oracle
    # shuffled held-in trials carry no information about these trials' held-out activity
    shuffled = counts[test, :, heldin][::-1]
    assert bps_pooled(model.predict(shuffled), counts[test, :, heldout]) < co_bps


def test_smoothing_baseline_contract():
    model = SmoothingBaseline(kernel_sd_ms=40.0)
    assert model.get_params()["kernel_sd_ms"] == 40.0
    assert model.set_params(alpha=0.5) is model and model.alpha == 0.5
    assert not any(k.endswith("_") for k in vars(model))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match="3-D"):
        model.fit(np.zeros((5, 3)), np.zeros((5, 3)))
    from sklearn.base import clone
    assert clone(model).get_params() == model.get_params()


def test_cosmooth_never_uses_the_neuron_itself(data):
    _, counts = data
    train, test = counts[:40], counts[40:].copy()
    base = cosmooth_leave_one_out(train, test, kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS)
    j = 5
    perturbed = test.copy()
    perturbed[..., j] = np.random.default_rng(3).poisson(5.0, size=perturbed[..., j].shape)
    after = cosmooth_leave_one_out(train, perturbed, kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS)
    np.testing.assert_array_equal(after[..., j], base[..., j])
    others = [n for n in range(counts.shape[2]) if n != j]
    assert np.max(np.abs(after[..., others] - base[..., others])) > 1e-3  # the test can fail


def test_cosmooth_matches_per_neuron_sklearn_glm_and_beats_null(data):
    rates, counts = data
    train, test = counts[:40], counts[40:]
    alpha = 1e-2
    pred = cosmooth_leave_one_out(train, test, kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS,
                                  alpha=alpha)
    assert pred.shape == test.shape
    for n in (0, 11):  # independent fit: sklearn PoissonRegressor on the other neurons
        others = [m for m in range(counts.shape[2]) if m != n]
        ref = SmoothingBaseline(kernel_sd_ms=KERNEL_SD_MS, bin_ms=BIN_MS, alpha=alpha,
                                max_iter=5000, tol=1e-8)
        ref.fit(train[..., others], train[..., [n]])
        np.testing.assert_allclose(pred[..., n], ref.predict(test[..., others])[..., 0],
                                   rtol=1e-4)
    assert 0 < bps_pooled(pred, test) < bps_pooled(rates[40:], test)


def test_cosmooth_rejects_mismatched_neurons():
    with pytest.raises(ValueError, match="same neurons"):
        cosmooth_leave_one_out(np.zeros((2, 5, 3)), np.zeros((2, 5, 4)), bin_ms=BIN_MS)
