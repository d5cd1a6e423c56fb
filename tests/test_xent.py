"""CrossEntropyAccumulator against hand computation, and its reduction contract."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spikefm.families.ar.xent import CrossEntropyAccumulator, format_table

LN2 = math.log(2.0)


def test_result_equals_hand_computation():
    acc = CrossEntropyAccumulator()
    # p = 1/2 for the separators, 1/4 and 1/8 for the counts (all exact in binary).
    acc.add(np.log([0.5, 0.25, 0.125, 0.5]), np.array([255, 0, 3, 255]), source="a")
    acc.add(np.log([0.25]), np.array([1], np.uint8), source="b")
    res = acc.result()

    overall = res["overall"]
    assert overall["separators"]["num_tokens"] == 2
    assert overall["counts"]["num_tokens"] == 3
    assert overall["all"]["num_tokens"] == 5
    assert overall["separators"]["bits"] == pytest.approx(1.0)  # -log2(1/2)
    assert overall["counts"]["bits"] == pytest.approx((2 + 3 + 2) / 3)
    assert overall["all"]["bits"] == pytest.approx((1 + 2 + 3 + 1 + 2) / 5)
    assert overall["all"]["nats"] == pytest.approx(overall["all"]["bits"] * LN2)

    a, b = res["per_source"]["a"], res["per_source"]["b"]
    assert a["counts"]["bits"] == pytest.approx(2.5) and a["all"]["bits"] == pytest.approx(7 / 4)
    assert b["counts"]["bits"] == pytest.approx(2.0) and b["all"]["num_tokens"] == 1
    # A source without separators reports no mean rather than 0.
    assert b["separators"] == {"nats": None, "bits": None, "num_tokens": 0}
    assert sorted(res["per_source"]) == ["a", "b"]


def random_batches(seed: int, num_batches: int = 12):
    rng = np.random.default_rng(seed)
    for i in range(num_batches):
        n = int(rng.integers(1, 200))
        tokens = np.where(rng.random(n) < 0.2, 255, rng.integers(0, 10, n))
        logprob = -rng.exponential(2.0, n)
        yield logprob, tokens, ["ibl", "allen", "steinmetz"][i % 3]


def test_merge_equals_one_accumulator_over_all_data():
    whole, left, right = CrossEntropyAccumulator(), CrossEntropyAccumulator(), CrossEntropyAccumulator()
    all_lp, all_tok = [], []
    for i, (lp, tok, source) in enumerate(random_batches(seed=0)):
        whole.add(lp, tok, source)
        (left if i % 2 else right).add(lp, tok, source)
        all_lp.append(lp)
        all_tok.append(tok)
    merged = left.merge(right)
    assert _close(merged.result(), whole.result())

    # And both equal a direct pooled formula.
    lp, tok = np.concatenate(all_lp), np.concatenate(all_tok)
    overall = whole.result()["overall"]
    assert overall["all"]["nats"] == pytest.approx(-lp.mean(), rel=1e-12)
    assert overall["separators"]["nats"] == pytest.approx(-lp[tok == 255].mean(), rel=1e-12)
    assert overall["counts"]["bits"] == pytest.approx(-lp[tok != 255].mean() / LN2, rel=1e-12)


def _close(a, b) -> bool:
    """Recursive approx comparison of nested result dicts."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def test_state_dict_round_trip_through_json():
    acc = CrossEntropyAccumulator()
    for lp, tok, source in random_batches(seed=2):
        acc.add(lp, tok, source)
    restored = CrossEntropyAccumulator()
    restored.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.result() == acc.result()
    with pytest.raises(ValueError, match="version"):
        restored.load_state_dict({"sources": {}})


def test_bad_inputs_raise():
    acc = CrossEntropyAccumulator()
    with pytest.raises(ValueError, match="same shape"):
        acc.add(np.zeros(3), np.zeros(4, np.uint8), "a")
    with pytest.raises(ValueError, match="<= 0"):
        acc.add(np.array([-1.0, 0.5]), np.array([1, 2]), "a")  # losses passed instead of log-probs
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.array([np.nan]), np.array([1]), "a")
    with pytest.raises(TypeError, match="source"):
        acc.add(np.array([-1.0]), np.array([1]), 3)
    assert acc.result()["per_source"] == {}  # nothing was added by the failed calls


def test_infinite_loss_is_not_clipped():
    acc = CrossEntropyAccumulator()
    acc.add(np.array([-np.inf, -1.0]), np.array([1, 255]), "a")
    res = acc.result()["overall"]
    assert res["counts"]["nats"] == math.inf and res["separators"]["nats"] == pytest.approx(1.0)


def test_format_table_shows_bits_side_by_side():
    one, two = CrossEntropyAccumulator(), CrossEntropyAccumulator()
    one.add(np.log([0.5, 0.25]), np.array([255, 4]), "a")
    two.add(np.log([0.125]), np.array([4]), "b")
    text = format_table({"1-gram": one.result(), "9-gram model": two.result()}, title="test split")
    lines = text.splitlines()
    assert lines[0] == "test split"
    assert "1-gram" in lines[1] and "9-gram model" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["all"] == ["1.5000", "3.0000"]
    assert rows["counts"] == ["2.0000", "3.0000"]
    assert rows["separators"] == ["1.0000", "-"]
    per_source = format_table({"1-gram": one.result(), "9-gram model": two.result()}, title="t", source="b")
    assert per_source.splitlines()[0] == "t [b]"
    assert per_source.splitlines()[3].split()[1:] == ["-", "3.0000"]


def test_ngram_log_probs_feed_the_accumulator():
    from spikefm.families.ar.tokens import tokenize
    from spikefm.families.ar.ngram import NGramModel

    rng = np.random.default_rng(5)
    rows = [tokenize(rng.poisson(0.5, (5, 30))) for _ in range(4)]
    model = NGramModel(order=3).fit(rows[:3])
    acc = CrossEntropyAccumulator()
    lp = model.log_prob(rows[3])
    acc.add(lp, rows[3], "held_out")
    res = acc.result()["per_source"]["held_out"]
    assert res["all"]["nats"] == pytest.approx(-lp.mean(), rel=1e-12)
    assert res["separators"]["num_tokens"] == 30 and res["counts"]["num_tokens"] == 150
