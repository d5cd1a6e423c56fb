"""benchmarks/neds_variant_summary.py: mean ± s.d. over the seeds every variant has, pooled across
files, against numbers computed here."""
from __future__ import annotations

import json
import statistics

import pytest

from tests._benchmark_script import load_benchmark

summarize = load_benchmark("neds_variant_summary").summarize


def _block(enc, choice, wheel):
    return {"encoding_bps_pooled": {"neds": enc, "linear": 0.0},
            "decoding": {"neds": {"choice": {"accuracy": choice}, "wheel_speed": {"r2_single_trial": wheel}}}}


def _variant(enc, choice, wheel):
    return {"fine-tuned": _block(enc, choice, wheel), "single-session": _block(enc / 2, choice, wheel / 2)}


def test_summary_pools_files_and_keeps_only_seeds_every_variant_has(tmp_path):
    a = {"per_seed": {"5": {"variants": {"doc": _variant(0.2, 1.0, 0.6), "cap": _variant(0.3, 1.0, 0.7)}},
                      "7": {"variants": {"doc": _variant(0.1, 0.7, 0.2), "cap": _variant(0.12, 0.85, 0.3)}}}}
    b = {"per_seed": {"9": {"variants": {"doc": _variant(0.04, 0.9, 0.5), "cap": _variant(0.02, 0.95, 0.6)}},
                      "11": {"variants": {"doc": _variant(9.0, 0.0, 9.0)}}}}  # no cap: left out
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    res = summarize([tmp_path / "a.json", tmp_path / "b.json"])
    assert res["seeds"] == ["5", "7", "9"]
    m, sd, n = res["cap"]["fine-tuned"]["encoding_bps"]
    assert n == 3 and m == pytest.approx((0.3 + 0.12 + 0.02) / 3) and sd == pytest.approx(statistics.stdev([0.3, 0.12, 0.02]))
    assert res["doc"]["single-session"]["wheel_speed"][0] == pytest.approx((0.3 + 0.1 + 0.25) / 3)
    assert res["doc"]["fine-tuned"]["choice"][0] == pytest.approx((1.0 + 0.7 + 0.9) / 3)
