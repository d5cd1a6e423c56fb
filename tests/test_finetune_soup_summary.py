"""``benchmarks/finetune_soup.py``'s summary over fine-tunings: mean ± s.d. of the kept run's and the
greedy soup's NEDS scores, a one-ingredient soup counted with its ingredient's scores."""
from __future__ import annotations

import numpy as np
import pytest

from _benchmark_script import load_benchmark


def _scores(enc: float, choice: float, wheel: float) -> dict:
    return {"encoding": {"neds": {"bps_pooled": enc}},
            "decoding": {"neds": {"choice": {"accuracy": choice}, "wheel_speed": {"r2_single_trial": wheel}}}}


def test_summary_is_mean_and_sd_with_single_ingredient_soups_as_kept():
    summary = load_benchmark("finetune_soup")._summary
    results = {
        "a": {"scores": {"kept": _scores(0.10, 0.90, 0.5), "greedy": _scores(0.12, 1.00, 0.4)}},
        "b": {"scores": {"kept": _scores(0.20, 0.80, 0.7), "greedy": "the weights of full (no average validated lower)"}},
        "c": {"scores": {"kept": _scores(0.30, 1.00, 0.6), "greedy": _scores(0.27, 0.95, 0.65)}},
    }
    s = summary(results)
    kept_enc, soup_enc = np.array([0.10, 0.20, 0.30]), np.array([0.12, 0.20, 0.27])
    assert s["encoding_bps"]["kept_mean"] == pytest.approx(kept_enc.mean())
    assert s["encoding_bps"]["greedy_sd"] == pytest.approx(soup_enc.std(ddof=1))
    assert s["encoding_bps"]["mean_change"] == pytest.approx((0.02 + 0.0 - 0.03) / 3)
    assert s["choice"]["greedy_mean"] == pytest.approx((1.0 + 0.8 + 0.95) / 3)
    assert s["wheel_speed"]["mean_change"] == pytest.approx((-0.1 + 0.0 + 0.05) / 3) and s["wheel_speed"]["n"] == 3
    # not a result it knows (or not scored): no summary
    assert summary({"a": {"scores": {"kept": {"something": {}}}}}) == {}
    assert summary({"a": {}}) == {}


def test_summary_of_ndt_results_reads_co_smoothing_and_the_walks_weakest_chunk():
    summary = load_benchmark("finetune_soup")._summary

    def ndt(cs: float, walk: float, chunks: list[float]) -> dict:
        return {"tasks": {"co-smoothing": {"model": {"bps_pooled": cs}},
                          "forward-prediction-walk": {"model": {"bps_pooled": walk},
                                                      "chunks": [{"model": {"bps_pooled": c}} for c in chunks]}}}

    s = summary({"a": {"scores": {"kept": ndt(0.3, 0.2, [0.1, -0.05, 0.3]), "greedy": ndt(0.32, 0.21, [0.1, 0.02])}},
                 "b": {"scores": {"kept": ndt(0.4, 0.1, [0.2, 0.05]), "greedy": "the weights of frozen"}}})
    assert s["co_smoothing_bps"]["greedy_mean"] == pytest.approx((0.32 + 0.4) / 2)
    assert s["walk_min_chunk_bps"]["kept_mean"] == pytest.approx((-0.05 + 0.05) / 2)
    assert s["walk_min_chunk_bps"]["mean_change"] == pytest.approx((0.02 - -0.05) / 2)
