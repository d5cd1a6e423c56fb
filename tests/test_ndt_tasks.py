"""spikefm.families.ndt.tasks: each task scores exactly the entries it hid, never lets a target see
its own counts, an oracle stand-in scores a fraction of oracle of 1, saved predictions recompute
to the reported bps, decoding follows its train/test protocol, and the table lists every column."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from spikefm import Corpus
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.data.windows import SessionWindows, make_session_windows
from spikefm.eval.baselines import cosmooth_leave_one_out
from spikefm.eval.metrics import bps_per_neuron_mean, bps_pooled, bps_pooled_interval
from spikefm.families.ndt.tasks import (
    PREDICTION_TASKS,
    co_smoothing,
    decode_label,
    format_benchmark_table,
    forward_prediction_last,
    forward_prediction_walk,
    inter_region,
    intra_region,
    run_benchmark,
    truth_windows,  # re-exported from spikefm.eval.oracle
)
from spikefm.families.ndt.model import NDT, NDTConfig

from conftest import random_units, write_nwb

T = 40  # bins per window in the synthetic windows
EVENT_BIN = 10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny forward passes are dominated by thread hand-off on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic_windows(K=20, N=7, regions=("CA1", "CA1", "VISp", "VISp", "VISp", "LP", "LP"), seed=0,
                      rates_TN=None, labels=None, session_id="s0") -> SessionWindows:
    rng = np.random.default_rng(seed)
    if rates_TN is None:
        rates_TN = rng.uniform(0.05, 0.8, size=(T, N))
    counts = rng.poisson(np.broadcast_to(rates_TN, (K, T, N))).astype(np.uint8)
    names = sorted(set(regions))
    split = np.array(["train", "train", "val", "test", "train"] * (K // 5 + 1))[:K]
    return SessionWindows(session_id=session_id, counts=counts, unit_regions=list(regions),
                          region_ids=np.array([names.index(r) for r in regions], dtype=np.int64),
                          t_start_ms=np.arange(K, dtype=np.int64) * 10_000, split=split, bin_ms=20,
                          labels=labels or {}, align="stim_on_time", event_bin=EVENT_BIN,
                          trial_index=np.arange(K))


def tiny_ndt(windows: SessionWindows, seed=0) -> NDT:
    torch.manual_seed(seed)
    cfg = NDTConfig(dim=32, n_layers=2, n_heads=2, mlp_dim=64, token_dim=16, max_bins=100)
    return NDT(cfg, {windows.session_id: windows.num_units}).eval()


class OracleStandIn(nn.Module):
    """Predicts the true expected counts whatever the input; hidden state = the input counts."""

    def __init__(self, rates_TN: np.ndarray, session_id: str):
        super().__init__()
        self.register_buffer("log_TN", torch.log(torch.as_tensor(rates_TN, dtype=torch.float64)))
        self.session_units = {session_id: rates_TN.shape[1]}

    def forward(self, inputs_BTN, unit_valid_BN, session_ids, scheme_B, causal_B, return_hidden=False,
                input_mask_BTN=None):
        out = self.log_TN.expand(inputs_BTN.shape[0], -1, -1)
        return (out, [inputs_BTN]) if return_hidden else out


# --- NaN patterns --------------------------------------------------------------------------------


def test_each_task_scores_exactly_what_it_hid():
    w = synthetic_windows()
    model = tiny_ndt(w)
    test = w.indices("test")
    K, N = test.size, w.num_units
    t_T = np.arange(T)
    expected = {
        co_smoothing: np.ones((K, T, N), bool),
        forward_prediction_last: np.broadcast_to((t_T >= T - 10)[None, :, None], (K, T, N)),
        forward_prediction_walk: np.broadcast_to((t_T >= EVENT_BIN)[None, :, None], (K, T, N)),
        inter_region: np.ones((K, T, N), bool),
        intra_region: np.ones((K, T, N), bool),
    }
    for task, scored in expected.items():
        pred = task(model, w)
        assert pred.rates.shape == (K, T, N), task.__name__
        np.testing.assert_array_equal(~np.isnan(pred.rates), scored, err_msg=task.__name__)
        np.testing.assert_array_equal(~np.isnan(pred.counts), scored, err_msg=task.__name__)
        np.testing.assert_array_equal(pred.counts[scored], w.counts[test].astype(float)[scored])
        assert (pred.rates[scored] > 0).all()
        np.testing.assert_array_equal(pred.window_index, test)
    with pytest.raises(ValueError, match="forward_bins"):
        forward_prediction_last(model, w, forward_bins=T)


def test_forward_walk_chunk_equals_a_direct_masked_forward():
    """Chunk [s, s+10) of the walk is the model's causal prediction with every bin >= s zeroed."""
    w = synthetic_windows()
    model = tiny_ndt(w)
    pred = forward_prediction_walk(model, w, forward_bins=10)
    test = w.indices("test")
    for s in (EVENT_BIN, 30):
        x = torch.tensor(w.counts[test], dtype=torch.float32)
        x[:, s:] = 0
        K = x.shape[0]
        with torch.no_grad():
            log_r = model(x, torch.ones(K, w.num_units, dtype=torch.bool), [w.session_id] * K,
                          torch.full((K,), 1, dtype=torch.long), torch.ones(K, dtype=torch.bool))
        np.testing.assert_allclose(pred.rates[:, s:s + 10], torch.exp(log_r.double())[:, s:s + 10].numpy(),
                                   rtol=1e-5)


def test_predictions_do_not_depend_on_batching():
    w = synthetic_windows(K=10)
    model = tiny_ndt(w)
    a = co_smoothing(model, w, batch_size=1).rates
    b = co_smoothing(model, w, batch_size=1000).rates
    np.testing.assert_allclose(a, b, rtol=1e-5)


# --- leakage --------------------------------------------------------------------------------------


def _perturbed(w: SessionWindows, unit: int | None = None, bins: slice | None = None) -> SessionWindows:
    counts = w.counts.copy()
    if unit is not None:
        counts[:, :, unit] = (counts[:, :, unit] + 3) % 7
    if bins is not None:
        counts[:, bins, :] = (counts[:, bins, :] + 3) % 7
    return dataclasses.replace(w, counts=counts)


def test_leave_one_out_never_sees_its_own_counts():
    w = synthetic_windows()
    model = tiny_ndt(w)
    j = 3  # a VISp unit; CA1 = units 0-1, VISp = 2-4, LP = 5-6
    p = _perturbed(w, unit=j)
    base, pert = co_smoothing(model, w).rates, co_smoothing(model, p).rates
    np.testing.assert_array_equal(base[..., j], pert[..., j])
    for n in set(range(w.num_units)) - {j}:
        assert not np.allclose(base[..., n], pert[..., n]), n
    # intra-region: j's own prediction and every other region's are blind to j
    base, pert = intra_region(model, w).rates, intra_region(model, p).rates
    for n in range(w.num_units):
        same = n == j or w.unit_regions[n] != "VISp"
        assert np.array_equal(base[..., n], pert[..., n]) == same, n
    # inter-region: j's whole region is hidden when it is predicted; other regions see j
    base, pert = inter_region(model, w).rates, inter_region(model, p).rates
    for n in range(w.num_units):
        assert np.array_equal(base[..., n], pert[..., n]) == (w.unit_regions[n] == "VISp"), n


def test_forward_prediction_is_blind_to_the_future():
    w = synthetic_windows()
    model = tiny_ndt(w)
    base = forward_prediction_last(model, w).rates
    np.testing.assert_array_equal(base, forward_prediction_last(model, _perturbed(w, bins=slice(T - 10, T))).rates)
    assert not np.allclose(base[:, -10:], forward_prediction_last(model, _perturbed(w, bins=slice(5, 6))).rates[:, -10:])
    # walk: changing chunk [20, 30) leaves the chunks up to it unchanged and changes the later ones
    walk = forward_prediction_walk(model, w).rates
    walk_p = forward_prediction_walk(model, _perturbed(w, bins=slice(20, 30))).rates
    np.testing.assert_array_equal(walk[:, :30], walk_p[:, :30])
    assert not np.allclose(walk[:, 30:], walk_p[:, 30:])


# --- oracle, saved predictions, baselines -----------------------------------------------------------


def test_oracle_stand_in_scores_fraction_of_oracle_one(tmp_path):
    rates_TN = np.random.default_rng(1).uniform(0.05, 0.9, size=(T, 7))
    w = synthetic_windows(K=25, rates_TN=rates_TN)
    truth = np.broadcast_to(rates_TN, w.counts.shape)
    res = run_benchmark(OracleStandIn(rates_TN, w.session_id), w, tasks=PREDICTION_TASKS,
                        truth_rates=truth, baselines=False, save_predictions=tmp_path / "pred")
    assert set(res["tasks"]) == set(PREDICTION_TASKS) and not res["skipped"]
    for task, entry in res["tasks"].items():
        for m in ("bps_pooled", "bps_per_neuron_mean"):
            assert entry["fraction_of_oracle"][m] == pytest.approx(1.0, rel=1e-9), (task, m)
            assert entry["model"][m] == pytest.approx(entry["oracle"][m], rel=1e-9)
        assert entry["oracle"]["bps_pooled"] > 0  # true rates beat the per-neuron mean
    # a worse model (rates shrunk toward the mean) scores below the oracle
    flat = np.broadcast_to(rates_TN.mean(0, keepdims=True), rates_TN.shape)
    worse = run_benchmark(OracleStandIn(0.5 * rates_TN + 0.5 * flat, w.session_id), w,
                          tasks=["co-smoothing"], truth_rates=truth, baselines=False)
    assert worse["tasks"]["co-smoothing"]["fraction_of_oracle"]["bps_pooled"] < 1.0


def test_saved_predictions_recompute_to_the_reported_bps(tmp_path):
    w = synthetic_windows()
    model = tiny_ndt(w)
    out = tmp_path / "pred"
    res = run_benchmark(model, w, tasks=PREDICTION_TASKS, baselines=False, save_predictions=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.npz" for t in PREDICTION_TASKS)
    for task in PREDICTION_TASKS:
        with np.load(out / f"{task}.npz") as z:
            rates, counts = z["rates"], z["counts"]
        assert rates.shape == counts.shape == (w.indices("test").size, T, w.num_units)
        np.testing.assert_array_equal(np.isnan(rates), np.isnan(counts))
        assert bps_pooled(rates, counts) == res["tasks"][task]["model"]["bps_pooled"]
        assert bps_per_neuron_mean(rates, counts) == res["tasks"][task]["model"]["bps_per_neuron_mean"]


def test_walk_chunks_are_also_scored_against_a_null_fitted_on_train_and_val_windows():
    from scipy.stats import poisson

    rates_TN = np.random.default_rng(3).uniform(0.05, 0.9, size=(T, 7))
    w = synthetic_windows(K=25, rates_TN=rates_TN, seed=5)
    model = tiny_ndt(w)
    res = run_benchmark(model, w, tasks=["forward-prediction-walk"], baselines=False)
    pred = forward_prediction_walk(model, w)
    fit = np.flatnonzero(w.split != "test")
    chunks = res["tasks"]["forward-prediction-walk"]["chunks"]
    assert [c["start_bin"] for c in chunks] == list(range(EVENT_BIN, T, 10))
    for c in chunks:
        sl = slice(c["start_bin"], c["end_bin"])
        r, k = pred.rates[:, sl], pred.counts[:, sl]
        null_N = w.counts[fit, sl].mean(axis=(0, 1))  # the same bins of the train and val windows
        gain = (poisson.logpmf(k, r) - poisson.logpmf(k, np.broadcast_to(null_N, k.shape))).sum()
        assert c["model_vs_train_null"]["bps_pooled"] == pytest.approx(gain / (np.log(2) * k.sum()), rel=1e-9)
        # The NLB null is the best constant rate per neuron on the scored entries themselves, so it
        # is never beaten by the train-fitted one: the NLB score is the lower of the two.
        assert c["model"]["bps_pooled"] <= c["model_vs_train_null"]["bps_pooled"] + 1e-12
        # The chunk's interval over the test trials (the metric itself is checked in test_metrics.py).
        assert c["model_ci95"]["bps_pooled"] == list(bps_pooled_interval(r, k))
    lo, hi = chunks[0]["model_ci95"]["bps_pooled"]
    table = format_benchmark_table({"ndt": res})
    assert f"bins {EVENT_BIN}-{EVENT_BIN + 9}, train-fitted null" in table
    assert f"[{lo:.4f}, {hi:.4f}]" in table and "95 % interval over the test trials (jackknife)" in table
    # Windows cut from continuous recording are not trials, and the footer says so.
    continuous = format_benchmark_table({"ndt": {**res, "align": None}})
    assert "95 % interval over the test windows (jackknife)" in continuous and "test trials" not in continuous
    total = res["tasks"]["forward-prediction-walk"]
    assert total["model_ci95"]["bps_pooled"][0] < total["model"]["bps_pooled"] < total["model_ci95"]["bps_pooled"][1]


def test_smoothing_baseline_is_fitted_on_train_windows_only():
    w = synthetic_windows(K=30, N=4, regions=("A", "A", "B", "B"))
    res = run_benchmark(OracleStandIn(np.full((T, 4), 0.3), w.session_id), w, tasks=["co-smoothing"])
    train, test = w.indices("train"), w.indices("test")
    direct = cosmooth_leave_one_out(w.counts[train], w.counts[test], bin_ms=20)
    assert res["tasks"]["co-smoothing"]["smoothing"]["bps_pooled"] == pytest.approx(
        bps_pooled(direct, w.counts[test].astype(float)), rel=1e-12)
    # The paired difference on the same test windows: the difference of the two scores, and its
    # interval from leave-one-window-out differences (jackknife standard error, t quantile).
    from scipy.stats import t as student_t

    e = res["tasks"]["co-smoothing"]
    diff = e["model_minus_smoothing"]["bps_pooled"]
    assert diff["value"] == pytest.approx(e["model"]["bps_pooled"] - e["smoothing"]["bps_pooled"], rel=1e-9)
    counts = w.counts[test].astype(float)
    model_rates = np.broadcast_to(np.full((T, 4), 0.3), counts.shape)
    K = counts.shape[0]
    loo = [bps_pooled(np.delete(model_rates, k, 0), np.delete(counts, k, 0))
           - bps_pooled(np.delete(direct, k, 0), np.delete(counts, k, 0)) for k in range(K)]
    half = student_t.ppf(0.975, K - 1) * np.sqrt((K - 1) / K * np.sum((np.array(loo) - np.mean(loo)) ** 2))
    np.testing.assert_allclose(diff["ci95"], [diff["value"] - half, diff["value"] + half], rtol=1e-9)
    assert "bps_pooled minus smoothing [95 % interval]" in format_benchmark_table({"m": res})
    # a different train set gives a different baseline (val windows are not used)
    w2 = dataclasses.replace(w, split=np.where(w.split == "val", "train", w.split))
    res2 = run_benchmark(OracleStandIn(np.full((T, 4), 0.3), w.session_id), w2, tasks=["co-smoothing"])
    assert res2["tasks"]["co-smoothing"]["smoothing"]["bps_pooled"] != \
        res["tasks"]["co-smoothing"]["smoothing"]["bps_pooled"]


def test_truth_windows_slices_expected_counts():
    w = synthetic_windows(K=5, N=3, regions=("A", "B", "B"))
    w = dataclasses.replace(w, t_start_ms=np.array([40, 100, 0, 2000, 60], dtype=np.int64))
    exp_NG = np.arange(3 * 200, dtype=np.float32).reshape(3, 200)
    truth = {"expected_counts": exp_NG, "t_start_ms": 20, "bin_ms": 20}
    with pytest.raises(ValueError, match="outside"):  # window at 0 ms precedes the truth's 20 ms start
        truth_windows(truth, w)
    truth0 = {**truth, "t_start_ms": 0}
    got = truth_windows(truth0, w)
    for k, start_ms in enumerate(w.t_start_ms):
        for t in range(T):
            for n in range(3):
                assert got[k, t, n] == exp_NG[n, start_ms // 20 + t]
    with pytest.raises(ValueError, match="ms bins"):
        truth_windows({**truth0, "bin_ms": 10}, w)
    with pytest.raises(ValueError, match="units"):
        truth_windows({**truth0, "expected_counts": exp_NG[:2]}, w)


# --- decoding --------------------------------------------------------------------------------------


def _labelled_windows(K: int, seed=0):
    rng = np.random.default_rng(seed)
    choice = np.where(np.arange(K) % 2 == 0, -1.0, 1.0)
    rates_KTN = np.full((K, T, 5), 0.3)
    rates_KTN[:, :, 0] += 0.6 * (choice > 0)[:, None]  # unit 0 fires more on right choices
    counts = rng.poisson(rates_KTN).astype(np.uint8)
    w = synthetic_windows(K=K, N=5, regions=("A", "A", "B", "B", "B"),
                          labels={"choice": choice, "block_prior": rng.choice([0.2, 0.8], K)})
    return dataclasses.replace(w, counts=counts)


def test_choice_decoding_holdout_on_test_windows():
    w = _labelled_windows(100)
    stand_in = OracleStandIn(np.full((T, 5), 0.3), w.session_id)
    res = decode_label(stand_in, w, "choice")
    assert res["method"] == "holdout"
    assert res["n_train"] == int(np.isin(w.split, ["train", "val"]).sum()) and res["n_test"] == 20
    assert res["hidden"]["accuracy"] > 0.9  # hidden = input counts: unit 0's rate gives the choice
    assert res["rates"]["accuracy"] == pytest.approx(0.5)  # constant rates carry no information
    assert res["chance"] == pytest.approx(0.5)


def test_decoding_falls_back_to_nested_cv_with_few_windows():
    w = _labelled_windows(24)
    res = decode_label(OracleStandIn(np.full((T, 5), 0.3), w.session_id), w, "choice")
    assert res["method"] == "nested-cv" and res["n_train"] + res["n_test"] == 24
    assert res["hidden"]["accuracy"] > 0.75
    # windows without the label are left out, with a warning
    choice = w.labels["choice"].copy()
    choice[:4] = np.nan
    w_missing = dataclasses.replace(w, labels={"choice": choice})
    with pytest.warns(RuntimeWarning, match="4 of 24 windows"):
        res = decode_label(OracleStandIn(np.full((T, 5), 0.3), w.session_id), w_missing, "choice")
    assert res["n_train"] + res["n_test"] == 20
    with pytest.raises(ValueError, match="no discrete label 'stim_side'"):
        decode_label(tiny_ndt(w), w, "stim_side")


def test_decoding_with_ndt_uses_the_chosen_layer():
    w = _labelled_windows(30)
    model = tiny_ndt(w)
    a = decode_label(model, w, "choice", layer=0)
    b = decode_label(model, w, "choice", layer=-1)
    assert set(a) >= {"hidden", "rates", "method", "chance"}
    assert a["rates"] == b["rates"]  # rates do not depend on the layer
    with pytest.raises(ValueError, match="layer=5"):
        decode_label(model, w, "choice", layer=5)


# --- benchmark end to end and the table ---------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_windows(tmp_path_factory):
    root = tmp_path_factory.mktemp("ndt_tasks")
    rng = np.random.default_rng(0)
    units = random_units(rng, 6, 70.0, rate_hz=10.0)
    start = 2.0 + 2.5 * np.arange(26)
    trials = {"start_time": start, "stop_time": start + 2.0, "stim_on_time": start + 0.31,
              "choice": np.where(np.arange(26) % 3 == 0, 1, -1)}
    p = write_nwb(root / "ses.nwb", units, ["CA1", "VISp"] * 3, trials=trials, region_in_units=True)
    build_corpus([str(p)], root / "corpus", BuildConfig(max_row_tokens=6 * 500), progress=False)
    return make_session_windows(Corpus(root / "corpus"), "ses")


def test_run_benchmark_end_to_end_on_corpus_windows(corpus_windows, tmp_path):
    w = corpus_windows
    assert w.num_windows == 26 and w.counts.shape[1:] == (100, 6)
    model = tiny_ndt(w)
    res = run_benchmark(model, w, tasks=list(PREDICTION_TASKS) + ["choice-decoding", "stim_side-decoding"])
    assert res["num_test_windows"] == int((w.split == "test").sum())
    assert set(res["tasks"]) == set(PREDICTION_TASKS) | {"choice-decoding"}
    assert "stim_side-decoding" in res["skipped"]
    for task in PREDICTION_TASKS:
        assert np.isfinite(res["tasks"][task]["model"]["bps_pooled"])
    assert np.isfinite(res["tasks"]["co-smoothing"]["smoothing"]["bps_pooled"])
    assert res["tasks"]["forward-prediction"]["num_evaluated"] == res["num_test_windows"] * 10 * 6
    assert res["tasks"]["forward-prediction-walk"]["num_evaluated"] == res["num_test_windows"] * 75 * 6
    assert res["tasks"]["choice-decoding"]["method"] == "nested-cv"
    e = res["tasks"]["choice-decoding"]
    table = format_benchmark_table({"m": res})  # the fallback is said beside the numbers
    assert (f"choice-decoding: only {e['n_test']} test window(s), so the decoder is scored by {e['cv_folds']}-fold "
            f"cross-validation over all {e['n_train'] + e['n_test']} windows") in table
    json.dumps(res)  # results go into run directories as JSON
    # single-region sessions skip the region tasks
    one = dataclasses.replace(w, unit_regions=["CA1"] * 6, region_ids=np.zeros(6, dtype=np.int64))
    res1 = run_benchmark(model, one, tasks=["inter-region", "intra-region"], baselines=False)
    assert set(res1["skipped"]) == {"inter-region", "intra-region"} and not res1["tasks"]
    with pytest.raises(ValueError, match="at least 2 regions"):
        inter_region(model, one)
    with pytest.raises(ValueError, match="unknown task"):
        run_benchmark(model, w, tasks=["co-smoothing", "cosmoothing"])
    other = NDT(model.cfg, {"other": 6})
    with pytest.raises(ValueError, match="no session 'ses'"):
        co_smoothing(other, w)


def test_format_benchmark_table_has_every_column():
    rates_TN = np.random.default_rng(2).uniform(0.05, 0.9, size=(T, 5))
    w = _labelled_windows(30)
    truth = np.broadcast_to(rates_TN, w.counts.shape)
    tasks = ["co-smoothing", "forward-prediction", "choice-decoding"]
    results = {
        "finetuned": run_benchmark(OracleStandIn(rates_TN, w.session_id), w, tasks=tasks, truth_rates=truth),
        "single-session": run_benchmark(tiny_ndt(w), w, tasks=tasks, truth_rates=truth),
    }
    table = format_benchmark_table(results)
    header = table.splitlines()[0].split()
    assert header == ["task", "metric", "finetuned", "single-session", "smoothing", "oracle"]
    for task in tasks:
        assert task in table
    for metric in ("bps_pooled", "bps_per_neuron_mean", "bps_pooled / oracle", "accuracy (hidden)",
                   "accuracy (rates)", "chance"):
        assert metric in table
    cs = results["single-session"]["tasks"]["co-smoothing"]
    row = next(l for l in table.splitlines() if l.startswith("co-smoothing") and " bps_pooled " in l)
    assert row.split()[2:] == [f"{results['finetuned']['tasks']['co-smoothing']['model']['bps_pooled']:.4f}",
                               f"{cs['model']['bps_pooled']:.4f}", f"{cs['smoothing']['bps_pooled']:.4f}",
                               f"{cs['oracle']['bps_pooled']:.4f}"]
    with pytest.raises(ValueError, match="empty"):
        format_benchmark_table({})


def test_train_fitted_null_is_floored_where_a_neuron_never_fired_in_train_and_val():
    """A neuron silent in a chunk's bins in every train and val window but firing there in a test
    window: the unfloored null has rate 0 where a spike occurred (log-likelihood -inf, score inf).
    The score uses the models' rate floor instead and stays finite."""
    from scipy.stats import poisson

    from spikefm.data.windows import MIN_INIT_RATE

    w = synthetic_windows(K=25, seed=7)
    s0 = EVENT_BIN
    sl = slice(s0, s0 + 10)
    fit = np.flatnonzero(w.split != "test")
    test = np.flatnonzero(w.split == "test")
    w.counts[fit, sl, 0] = 0
    w.counts[test[0], s0 + 2, 0] = 3
    model = tiny_ndt(w)
    res = run_benchmark(model, w, tasks=["forward-prediction-walk"], baselines=False)
    chunk = res["tasks"]["forward-prediction-walk"]["chunks"][0]
    assert chunk["start_bin"] == s0 and np.isfinite(chunk["model_vs_train_null"]["bps_pooled"])
    pred = forward_prediction_walk(model, w)
    r, k = pred.rates[:, sl], pred.counts[:, sl]
    null_N = w.counts[fit, sl].mean(axis=(0, 1))
    assert null_N[0] == 0
    null_N[0] = MIN_INIT_RATE
    gain = (poisson.logpmf(k, r) - poisson.logpmf(k, np.broadcast_to(null_N, k.shape))).sum()
    assert chunk["model_vs_train_null"]["bps_pooled"] == pytest.approx(gain / (np.log(2) * k.sum()), rel=1e-9)


def test_fraction_of_oracle_is_nan_unless_the_oracle_beats_the_null():
    from spikefm.families.ndt.tasks import _fraction

    model = {"bps_pooled": -0.2123, "bps_per_neuron_mean": 0.1}
    # a negative or zero ceiling: no ratio (a bad model would read as 2.9 "times the oracle")
    out = _fraction(model, {"bps_pooled": -0.0731, "bps_per_neuron_mean": 0.0})
    assert math.isnan(out["bps_pooled"]) and math.isnan(out["bps_per_neuron_mean"])
    out = _fraction(model, {"bps_pooled": 0.4, "bps_per_neuron_mean": math.inf})
    assert out["bps_pooled"] == pytest.approx(-0.2123 / 0.4) and math.isnan(out["bps_per_neuron_mean"])


def test_a_label_too_rare_to_cross_validate_is_skipped_not_fatal():
    """On short sessions a class of the choice had too few trials for the decoder's folds, and the
    ValueError ended the whole evaluation (every other task's results lost, after a study's
    training); the task is skipped with the reason and the others are scored."""
    labels = {"choice": np.array([0] * 18 + [1] * 2, dtype=float)}
    w = synthetic_windows(K=20, labels=labels)
    res = run_benchmark(tiny_ndt(w), w, tasks=["co-smoothing", "choice-decoding"], baselines=False)
    assert "co-smoothing" in res["tasks"] and "choice-decoding" not in res["tasks"]
    reason = res["skipped"]["choice-decoding"]
    assert reason == ("too few trials of some choice class in this session to cross-validate a decoder; "
                      "longer sessions give more")
    assert "skipped choice-decoding: too few trials" in format_benchmark_table({"ndt": res})


class _PromptSpy(nn.Module):
    """OracleStandIn that records the scheme prompt of every forward pass."""

    def __init__(self, rates_TN: np.ndarray, session_id: str):
        super().__init__()
        self.inner = OracleStandIn(rates_TN, session_id)
        self.session_units = self.inner.session_units
        self.schemes: list[int] = []

    def forward(self, inputs_BTN, unit_valid_BN, session_ids, scheme_B, causal_B, return_hidden=False,
                input_mask_BTN=None):
        self.schemes += scheme_B.tolist()
        return self.inner(inputs_BTN, unit_valid_BN, session_ids, scheme_B, causal_B, return_hidden, input_mask_BTN)


def test_a_task_whose_prompt_the_run_never_trained_is_scored_with_a_trained_one():
    """The NDT defaults train the neuron and causal schemes only, and inter-/intra-region were
    scored with their own prompts: random vectors no step had trained (out of distribution)."""
    from spikefm.families.ndt.masking import scheme_id
    from spikefm.families.ndt.tasks import task_prompt

    assert task_prompt("inter-region", ["neuron", "causal"]) == "neuron"
    assert task_prompt("intra-region", ["causal", "inter_region"]) == "inter_region"
    assert task_prompt("intra-region", None) == "intra_region" and task_prompt("forward-prediction", ["neuron"]) is None
    assert task_prompt("co-smoothing", ["causal"]) == "neuron"  # nothing alike trained: its own, said so
    w = synthetic_windows()
    rates_TN = np.random.default_rng(3).uniform(0.05, 0.8, size=(T, w.num_units))
    tasks = ["co-smoothing", "inter-region", "intra-region", "forward-prediction"]
    seen = {}
    for trained in (None, ["neuron", "causal"], ["causal"]):
        spy = _PromptSpy(rates_TN, w.session_id)
        res = run_benchmark(spy, w, tasks=tasks, baselines=False, trained_schemes=trained)
        seen[str(trained)] = (set(spy.schemes), res)
    ids, own = seen["None"]
    assert ids == {scheme_id(s) for s in ("neuron", "causal", "inter_region", "intra_region")}
    assert not any("prompt_untrained" in e for e in own["tasks"].values())
    ids, res = seen["['neuron', 'causal']"]
    assert ids == {scheme_id("neuron"), scheme_id("causal")}
    assert [res["tasks"][t].get("prompt") for t in tasks] == ["neuron", "neuron", "neuron", None]
    assert res["tasks"]["inter-region"]["prompt_untrained"] == "inter_region"
    assert "prompt_untrained" not in res["tasks"]["co-smoothing"]
    table = format_benchmark_table({"m": res})
    assert "inter-region: scored with the neuron prompt (the run never trained its own, inter_region: data.schemes, or sessions " \
        "of one region)" \
        in table and "intra-region: scored with the neuron prompt" in table
    _, res = seen["['causal']"]
    assert res["tasks"]["co-smoothing"]["prompt"] == "neuron" and "co-smoothing: scored with the neuron prompt " \
        "although the run never trained it (data.schemes): its score is out of distribution" in format_benchmark_table({"m": res})
    # a real model: the prompt changes the prediction, and the stand-in's is what inter_region(prompt=) gives
    model = tiny_ndt(w)
    res = run_benchmark(model, w, tasks=["inter-region"], baselines=False, trained_schemes=["neuron"])
    direct = inter_region(model, w, prompt="neuron")
    assert res["tasks"]["inter-region"]["model"]["bps_pooled"] == pytest.approx(
        bps_pooled(direct.rates, direct.counts))
    assert not np.allclose(inter_region(model, w).rates, direct.rates, equal_nan=True)


def test_trained_schemes_follow_the_run_and_the_runs_its_core_came_from(tmp_path):
    import json

    from spikefm.families.ndt.evaluate import trained_schemes

    def run(name, schemes, init_from=""):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"config": {"family": "ndt", "data": {"schemes": schemes, "init_from": init_from}}}))
        return str(tmp_path / name)

    pre = run("pre", "all")
    ft = run("ft", "neuron,causal", init_from=pre)
    assert trained_schemes(ft) == ["neuron", "causal", "inter_region", "intra_region"]
    assert trained_schemes(run("alone", "causal,neuron")) == ["neuron", "causal"]
    assert trained_schemes(run("moved", "neuron", init_from=str(tmp_path / "gone"))) == ["neuron"]
    assert trained_schemes(tmp_path / "nothing") is None
    # sessions of one region each: the region samples fell back to neuron masks, their prompts untrained
    one = run("one_region", "all")
    info = json.loads((tmp_path / "one_region" / "config.json").read_text())
    info["family_info"] = {"session_regions": {"a": 1, "b": 0}}
    (tmp_path / "one_region" / "config.json").write_text(json.dumps(info))
    assert trained_schemes(one) == ["neuron", "causal"]
    assert trained_schemes(run("ft_one", "causal", init_from=one)) == ["neuron", "causal"]
    info["family_info"] = {"session_regions": {"a": 1, "b": 2}}  # one session had two: trained
    (tmp_path / "one_region" / "config.json").write_text(json.dumps(info))
    assert trained_schemes(one) == ["neuron", "causal", "inter_region", "intra_region"]


def test_a_decoding_only_table_keeps_its_oracle_column_and_no_chunk_footer_without_chunk_rows():
    """--tasks choice-decoding printed the ideal observer's row with '-' and no oracle column;
    a single forward-prediction chunk printed the 'bins a-b' footer with no chunk rows above it."""
    rates_TN = np.random.default_rng(2).uniform(0.05, 0.9, size=(T, 5))
    w = _labelled_windows(30)
    truth = np.broadcast_to(rates_TN, w.counts.shape)
    res = run_benchmark(OracleStandIn(rates_TN, w.session_id), w, tasks=["choice-decoding"], truth_rates=truth)
    table = format_benchmark_table({"m": res})
    assert table.splitlines()[0].split() == ["task", "metric", "m", "oracle"]
    oracle_acc = res["tasks"]["choice-decoding"]["oracle"]["accuracy"]
    row = next(l for l in table.splitlines() if "accuracy (rates)" in l)
    assert row.split()[-1] == f"{oracle_acc:.4f}"
    res = run_benchmark(OracleStandIn(rates_TN, w.session_id), w, tasks=["forward-prediction"], truth_rates=truth)
    assert len(res["tasks"]["forward-prediction"]["chunks"]) == 1
    table = format_benchmark_table({"m": res})
    assert "bins a-b" not in table
    # ... and its score against the train-fitted null (in the JSON) was not printed at all
    null = res["tasks"]["forward-prediction"]["chunks"][0]["model_vs_train_null"]["bps_pooled"]
    row = next(l for l in table.splitlines() if "bps_pooled, train-fitted null" in l)
    assert row.split()[-2:] == [f"{null:.4f}", "-"]


def test_a_label_too_rare_to_cross_validate_names_the_rare_classes_and_the_way_round():
    """'class counts [3, 4, 1, 5, 6]; need 2 classes with >= 2 windows each' contradicted itself
    (four classes had 2 or more): every class needs 2, and data.label_classes leaves the rare out."""
    from spikefm.families.ndt.tasks import decode_label

    w = synthetic_windows(K=19)
    values = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4], dtype=np.float64)
    w = dataclasses.replace(w, labels={"contrast": values})
    with pytest.raises(ValueError) as err:
        decode_label(tiny_ndt(w), w, "contrast")
    text = str(err.value)
    assert "windows per class {'0.0': 3, '1.0': 4, '2.0': 1, '3.0': 5, '4.0': 6}; every class needs >= 2" in text
    assert text.endswith("a run trained with --set data.label_classes=contrast=V1,V2,... (the classes decoding "
                         "keeps) leaves out 2.0")


def test_a_table_of_validation_windows_says_validation_not_test(corpus_windows):
    """eval --split val footers said 'only 2 test window(s)' and '95 % interval over the test
    trials' of the validation windows they scored."""
    from spikefm.families.ndt.family import NDTFamily

    w = corpus_windows
    res = run_benchmark(tiny_ndt(w), w, tasks=["forward-prediction-walk", "choice-decoding"], baselines=False)
    e = res["tasks"]["choice-decoding"]
    val = NDTFamily().format_results({"m": {"split": "val", "results": res}})
    test = NDTFamily().format_results({"m": {"split": "test", "results": res}})
    assert f"choice-decoding: only {e['n_test']} validation window(s)" in val and "over the validation trials" in val
    assert f"choice-decoding: only {e['n_test']} test window(s)" in test and "over the test trials" in test
    assert "test window(s)" not in val and "test trials" not in val


def test_decoding_counts_the_classes_fitted_and_those_scored_apart():
    """n_classes was the classes among the test windows (2), though the decoder was fitted on 3
    (a class only the train windows hold): NEDS said 3 for the same label."""
    from spikefm.families.ndt.tasks import decode_label

    w = synthetic_windows(K=20)
    test = w.split == "test"
    values = np.where(test, np.arange(20) % 2, np.arange(20) % 3).astype(np.float64)
    assert set(values[test]) == {0.0, 1.0} and set(values[~test]) == {0.0, 1.0, 2.0}
    w = dataclasses.replace(w, labels={"stim": values})
    res = decode_label(tiny_ndt(w), w, "stim", min_test_windows=2)
    assert res["method"] == "holdout" and res["n_classes"] == 3 and res["n_classes_scored"] == 2


def test_a_trial_column_of_too_many_values_is_named_as_no_label():
    from spikefm.data.windows import MAX_LABEL_VALUES
    from spikefm.families.ndt.tasks import decode_label

    w = dataclasses.replace(synthetic_windows(K=20), labels={"choice": np.ones(20)}, many_valued={"trial_num": 180})
    with pytest.raises(ValueError, match=rf"no discrete label 'trial_num'; trial column 'trial_num' has 180 distinct "
                                         rf"values, more than the {MAX_LABEL_VALUES} a discrete label may have"):
        decode_label(tiny_ndt(w), w, "trial_num")
