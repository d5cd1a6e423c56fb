"""NGramModel against an independent plain-Python dict counter, plus its contracts."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from spikefm.families.ar.tokens import tokenize
from spikefm.families.ar import ngram as ngram_module
from spikefm.families.ar.ngram import NGramModel

PAD = 255
TABLES = ("context_keys_", "context_counts_", "ngram_codes_", "ngram_counts_")


def random_rows(
    seed: int, num_rows: int = 8, num_units: int = 4, rate: float = 0.6, large_counts: bool = True
) -> list[np.ndarray]:
    """Rows tokenized from Poisson counts.

    With ``large_counts`` a few counts are drawn up to 300 (clipped to 254), so many token values
    appear, including 127..254 (the general order-9 path); without, every count is < 127 (the
    packed order-9 path).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_rows):
        counts = rng.poisson(rate, size=(num_units, int(rng.integers(2, 25))))
        high = 300 if large_counts else 127
        counts[rng.random(counts.shape) < 0.03] = rng.integers(5, high)
        rows.append(tokenize(counts))
    return rows


@pytest.fixture
def order9_paths(monkeypatch):
    """Records which order-9 counting path each chunk took."""
    calls = Counter()
    real_fits = ngram_module._fits_7_bits

    def spy(stream):
        fits = real_fits(stream)
        calls["packed" if fits else "general"] += 1
        return fits

    monkeypatch.setattr(ngram_module, "_fits_7_bits", spy)
    return calls


# --- the independent reference: a dict keyed by token tuples, one Python step per token ---------


def dict_counts(rows, order):
    pairs, contexts = Counter(), Counter()
    for row in rows:
        toks = [PAD] * (order - 1) + [int(t) for t in row]
        for p in range(order - 1, len(toks)):
            ctx = tuple(toks[p - order + 1 : p])
            pairs[(ctx, toks[p])] += 1
            contexts[ctx] += 1
    return pairs, contexts


def dict_log_prob(row, order, pairs, contexts, alpha, vocab_size):
    toks = [PAD] * (order - 1) + [int(t) for t in row]
    out = []
    for p in range(order - 1, len(toks)):
        ctx = tuple(toks[p - order + 1 : p])
        out.append(math.log((pairs[(ctx, toks[p])] + alpha) / (contexts[ctx] + alpha * vocab_size)))
    return np.array(out)


def model_counts(model):
    """Decode the fitted tables with the layout the module documents (newest token = low byte)."""
    k = model.order - 1

    def decode(key):
        return tuple((int(key) >> (8 * (j - 1))) & 0xFF for j in range(k, 0, -1))

    ctx_tuples = [decode(key) for key in model.context_keys_]
    contexts = Counter(dict(zip(ctx_tuples, model.context_counts_.tolist())))
    pairs = Counter()
    for code, count in zip(model.ngram_codes_.tolist(), model.ngram_counts_.tolist()):
        pairs[(ctx_tuples[code >> 8], code & 0xFF)] = count
    return pairs, contexts


def assert_same_tables(a: NGramModel, b: NGramModel) -> None:
    for name in TABLES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.num_tokens_ == b.num_tokens_


# --- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3, 9])
@pytest.mark.parametrize("alpha, large_counts", [(1.0, True), (0.25, False)])
def test_counts_and_log_probs_match_dict_reference(order, alpha, large_counts, order9_paths):
    train = random_rows(seed=order, large_counts=large_counts)
    test = random_rows(seed=100 + order, num_rows=3)
    model = NGramModel(order=order, alpha=alpha).fit(train)
    if order == 9:
        assert order9_paths == {"packed" if not large_counts else "general": 1}
    pairs, contexts = dict_counts(train, order)

    got_pairs, got_contexts = model_counts(model)
    assert got_pairs == pairs
    assert got_contexts == contexts
    assert model.num_tokens_ == sum(len(r) for r in train)
    assert np.all(model.context_keys_[1:] > model.context_keys_[:-1])
    assert np.all(model.ngram_codes_[1:] > model.ngram_codes_[:-1])

    # Seen rows, then rows with unseen contexts and tokens.
    for row in train[:3] + test:
        expected = dict_log_prob(row, order, pairs, contexts, alpha, 256)
        np.testing.assert_allclose(model.log_prob(row), expected, rtol=1e-12, atol=1e-12)


def test_smaller_vocab_uses_it_in_the_denominator():
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 16, size=int(n)).astype(np.uint8) for n in rng.integers(1, 40, size=6)]
    model = NGramModel(order=3, alpha=0.5, vocab_size=16).fit(rows)
    pairs, contexts = dict_counts(rows, 3)
    for row in rows:
        expected = dict_log_prob(row, 3, pairs, contexts, 0.5, 16)
        np.testing.assert_allclose(model.log_prob(row), expected, rtol=1e-12)
    # The padding separator 255 is allowed in contexts even though it is outside the vocabulary.
    np.testing.assert_allclose(np.exp(model.next_token_log_probs([PAD, PAD])).sum(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("order", [3, 9])
def test_contexts_do_not_cross_rows(order):
    k = order - 1
    a, b = random_rows(seed=7, num_rows=2, num_units=3)
    separate = NGramModel(order=order).fit([a, b])
    joined = NGramModel(order=order).fit([np.concatenate([a, b])])

    # Exactly the first k windows of b change: padded context when separate, a's tail when joined.
    padded_b = [PAD] * k + b.tolist()
    joined_ab = np.concatenate([a, b]).tolist()
    only_separate = Counter((tuple(padded_b[p : p + k]), padded_b[p + k]) for p in range(k))
    only_joined = Counter(
        (tuple(joined_ab[len(a) + p - k : len(a) + p]), joined_ab[len(a) + p]) for p in range(k)
    )
    sep_pairs, _ = model_counts(separate)
    join_pairs, _ = model_counts(joined)
    assert sep_pairs - only_separate + only_joined == join_pairs
    assert only_separate != only_joined  # the test would be vacuous otherwise

    # Scoring follows the same rule: past b's first k tokens the preceding row is irrelevant.
    lp_b = separate.log_prob(b)
    lp_ab = separate.log_prob(np.concatenate([a, b]))[len(a) :]
    np.testing.assert_array_equal(lp_ab[k:], lp_b[k:])
    assert not np.array_equal(lp_ab[:k], lp_b[:k])


@pytest.mark.parametrize("order", [1, 2, 9])
def test_next_token_distribution_sums_to_one_and_matches_log_prob(order):
    rows = random_rows(seed=11)
    model = NGramModel(order=order, alpha=0.3).fit(rows)
    k = order - 1
    row = rows[0]
    padded = np.concatenate([np.full(k, PAD, np.uint8), row])
    seen = np.stack([padded[p : p + k] for p in range(len(row))])
    unseen = np.array([[7] * k, [254] * k], dtype=np.uint8)
    logp = model.next_token_log_probs(np.concatenate([seen, unseen]))
    assert logp.shape == (len(row) + 2, 256)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-12)
    # The distribution after each seen context contains the log_prob of the token that followed.
    np.testing.assert_allclose(logp[np.arange(len(row)), row], model.log_prob(row), rtol=1e-12)
    if k:  # unseen context -> uniform
        np.testing.assert_allclose(logp[-1], -math.log(256), rtol=1e-12)


# --- chunking, truncation, persistence ----------------------------------------------------------


@pytest.mark.parametrize("order, large_counts", [(1, True), (3, True), (9, True), (9, False)])
def test_chunked_fit_equals_one_shot(order, large_counts, order9_paths):
    rows = random_rows(seed=21, num_rows=10, large_counts=large_counts)
    one_shot = NGramModel(order=order).fit(rows)
    tiny = NGramModel(order=order, memory_budget_mb=0.0002)
    assert tiny.chunk_tokens < min(len(r) for r in rows)  # rows really are split across chunks
    assert_same_tables(tiny.fit(iter(rows)), one_shot)
    if order == 9 and large_counts:  # tiny chunks take both paths; their tables must merge
        assert order9_paths["packed"] > 0 and order9_paths["general"] > 1
    medium = NGramModel(order=order, memory_budget_mb=0.01).fit(rows)  # chunks span several rows
    assert_same_tables(medium, one_shot)


@pytest.mark.parametrize("order", [2, 9])
def test_max_tokens_truncates_the_stream_in_order(order):
    rows = random_rows(seed=31, num_rows=5)
    cap = len(rows[0]) + len(rows[1]) + 3

    def stream():
        yield from rows[:3]
        raise AssertionError("rows past the cap must not be read")

    capped = NGramModel(order=order, memory_budget_mb=0.0005).fit(stream(), max_tokens=cap)
    explicit = NGramModel(order=order).fit([rows[0], rows[1], rows[2][:3]])
    assert capped.num_tokens_ == cap
    assert_same_tables(capped, explicit)
    full = NGramModel(order=order).fit(rows, max_tokens=10**9)
    assert full.num_tokens_ == sum(len(r) for r in rows)


def test_save_load_round_trip(tmp_path):
    rows = random_rows(seed=41)
    model = NGramModel(order=9, alpha=0.7, memory_budget_mb=64).fit(rows)
    path = tmp_path / "ngram9.npz"
    model.save(path)
    model.save(path)  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ngram9.npz"]
    loaded = NGramModel.load(path)
    assert loaded.get_params() == model.get_params()
    assert_same_tables(loaded, model)
    for row in random_rows(seed=42, num_rows=3):
        np.testing.assert_array_equal(loaded.log_prob(row), model.log_prob(row))

    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(ValueError, match="not an NGramModel file"):
        NGramModel.load(tmp_path / "other.npz")


# --- estimator contract and errors --------------------------------------------------------------


def test_estimator_contract():
    from sklearn.base import clone

    model = NGramModel(order=99, alpha=-1)  # __init__ stores, never validates
    assert model.order == 99 and not hasattr(model, "ngram_codes_")
    fitted = NGramModel(order=2, alpha=0.5).fit(random_rows(seed=1))
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "ngram_codes_")
    with pytest.raises(ValueError, match="not fitted"):
        copy.log_prob(np.array([255, 1], np.uint8))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"order": 0}, "order must be an int in 1..9"),
        ({"order": 10}, "order must be an int in 1..9"),
        ({"order": 2.0}, "order must be an int"),
        ({"order": 2, "alpha": 0.0}, "alpha must be"),
        ({"order": 2, "alpha": -1.0}, "alpha must be"),
        ({"order": 2, "alpha": float("nan")}, "alpha must be"),
        ({"order": 2, "vocab_size": 257}, "vocab_size must be"),
        ({"order": 2, "memory_budget_mb": 0}, "memory_budget_mb must be"),
    ],
)
def test_bad_parameters_raise_in_fit(params, match):
    with pytest.raises(ValueError, match=match):
        NGramModel(**params).fit(random_rows(seed=2))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0..9"):
        NGramModel(order=2, vocab_size=10).fit([np.array([1, 2, 12])])
    with pytest.raises(ValueError, match="0..255"):
        NGramModel(order=2).fit([np.array([1, 256])])
    with pytest.raises(ValueError, match="1-D token array"):
        NGramModel(order=2).fit([np.zeros((2, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"wrap a single 1-D row as \[row\]"):
        NGramModel(order=2).fit(np.array([255, 1, 2], np.uint8))
    with pytest.raises(TypeError, match="integer tokens"):
        NGramModel(order=2).fit([np.array([1.0, 2.0])])
    with pytest.raises(ValueError, match="no tokens"):
        NGramModel(order=2).fit([np.array([], np.uint8)])
    with pytest.raises(ValueError, match="max_tokens"):
        NGramModel(order=2).fit(random_rows(seed=2), max_tokens=0)


def test_progress_reports_each_chunk(capsys):
    rows = random_rows(seed=51, num_rows=4)
    model = NGramModel(order=3, memory_budget_mb=0.002).fit(rows, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == -(-model.num_tokens_ // model.chunk_tokens)
    assert lines[-1].startswith(f"ngram fit (order 3): {model.num_tokens_:,} tokens")
