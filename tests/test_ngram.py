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
        ({"order": 2, "alpha": 1e308}, r"alpha 1e\+308 is too large: alpha x 256 tokens overflows"),
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


def test_progress_counts_the_tokens_as_chunks_are_counted(capsys, monkeypatch):
    from spikefm import progress

    rows = random_rows(seed=51, num_rows=4)
    total = sum(r.size for r in rows)
    model = NGramModel(order=3, memory_budget_mb=0.002).fit(rows, progress=True, expected_tokens=total)
    assert capsys.readouterr().err == ""  # a fit of a few seconds says nothing in a log
    clock = iter(range(0, 10**6, 10))  # every call 10 "seconds" later
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    NGramModel(order=3, memory_budget_mb=0.002).fit(rows, progress=True, expected_tokens=total)
    lines = capsys.readouterr().err.strip().splitlines()
    assert model.chunk_tokens < total and len(lines) >= 2  # several chunks, one line per tenth
    assert lines[-1].startswith(f"spikefm: fitting the 3-gram (tokens): {total:,}/{total:,} (100%)")
    # max_tokens caps the total
    NGramModel(order=3, memory_budget_mb=0.002).fit(rows, progress=True, expected_tokens=total, max_tokens=total // 2)
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"spikefm: fitting the 3-gram (tokens): {total // 2:,}/{total // 2:,} (100%)")


# --- counts at the 7-bit boundary of the packed order-9 path ------------------------------------


def boundary_rows(values, seed: int = 0, num_rows: int = 6) -> list[np.ndarray]:
    """Rows whose counts include each of `values` (127 = the recoded separator's code, 128, 254)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_rows):
        counts = rng.poisson(0.4, size=(3, 12))
        mask = rng.random(counts.shape) < 0.25
        counts[mask] = rng.choice(values, size=int(mask.sum()))
        counts[i % 3, i % 12] = values[i % len(values)]  # every value appears
        rows.append(tokenize(counts))
    return rows


@pytest.mark.parametrize("values", [[127], [128], [254], [126, 127], [127, 128, 254], [255]])
@pytest.mark.parametrize("budget_mb", [1024.0, 0.0003])
def test_order9_counts_at_the_7_bit_boundary_match_dict_reference(values, budget_mb, order9_paths):
    """Token 127 is what the packed path recodes the separator to; counts of 127 and above must
    take the general path, and every table must equal the plain dict counter, whatever mix of
    chunks (packed and general) the budget makes."""
    rows = boundary_rows(values)
    assert any(np.isin(r, values if values != [255] else [254]).any() for r in rows)
    model = NGramModel(order=9, memory_budget_mb=budget_mb).fit(rows)
    pairs, contexts = dict_counts(rows, 9)
    got_pairs, got_contexts = model_counts(model)
    assert got_pairs == pairs and got_contexts == contexts
    general_only = NGramModel(order=9, memory_budget_mb=budget_mb)
    with pytest.MonkeyPatch.context() as mp:  # the exact general path for every chunk
        mp.setattr(ngram_module, "_fits_7_bits", lambda stream: False)
        general_only.fit(rows)
    assert_same_tables(model, general_only)
    for row in rows[:2]:
        expected = dict_log_prob(row, 9, pairs, contexts, 1.0, 256)
        np.testing.assert_allclose(model.log_prob(row), expected, rtol=1e-12, atol=1e-12)
    has_127_up = any(((r >= 127) & (r != 255)).any() for r in rows)
    assert order9_paths["general"] > 0 if has_127_up else order9_paths["general"] == 0


def test_fits_7_bits_is_exactly_no_token_in_127_to_254():
    for value in range(256):
        stream = np.array([255, 3, value, 0], dtype=np.uint8)
        assert ngram_module._fits_7_bits(stream) == (value < 127 or value == 255), value


def test_packed_and_general_paths_agree_on_rows_that_fit_7_bits():
    rows = boundary_rows([126, 100, 1])
    packed = NGramModel(order=9).fit(rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ngram_module, "_fits_7_bits", lambda stream: False)
        general = NGramModel(order=9).fit(rows)
    assert_same_tables(packed, general)
    pairs, _ = dict_counts(rows, 9)
    assert model_counts(packed)[0] == pairs


# --- contracts found open by mutation testing (benchmarks/mutation/run_mutation.py) -------------


def test_parameters_defaults_repr_and_set_params():
    model = NGramModel(order=3)
    assert model.get_params() == {"order": 3, "alpha": 1.0, "vocab_size": 256, "memory_budget_mb": 1024.0}
    assert repr(NGramModel(order=3, alpha=0.5)) == \
        "NGramModel(order=3, alpha=0.5, vocab_size=256, memory_budget_mb=1024.0)"
    assert model.set_params(alpha=0.25, order=2) is model
    assert (model.order, model.alpha) == (2, 0.25)
    with pytest.raises(ValueError) as err:
        model.set_params(beta=1)
    assert str(err.value) == "unknown parameter 'beta'; valid: order, alpha, vocab_size, memory_budget_mb"
    assert model.alpha == 0.25 and not hasattr(model, "beta")
    for bad in ({"alpha": "1.0"}, {"memory_budget_mb": "5"}, {"alpha": True}):
        with pytest.raises(ValueError):
            NGramModel(order=2, **bad).fit([np.array([255, 1], np.uint8)])
    one = NGramModel(order=2, vocab_size=1).fit([np.zeros(5, np.uint8)])  # a one-token vocabulary
    np.testing.assert_allclose(one.log_prob(np.zeros(3, np.uint8)), 0.0, atol=1e-12)


def test_exact_messages():
    model = NGramModel(order=3)
    with pytest.raises(ValueError) as err:
        model.log_prob(np.array([255, 1], np.uint8))
    assert str(err.value) == "this NGramModel is not fitted yet; call fit(sequences) or load(path) first"
    with pytest.raises(ValueError) as err:
        model.fit([np.array([255, 1], np.uint8), np.zeros((2, 2), np.uint8)])
    assert str(err.value) == ("sequences[1] must be a 1-D token array (one corpus row), got shape (2, 2); "
                              "pass an iterable of 1-D arrays, e.g. [row] for a single row")
    with pytest.raises(ValueError) as err:
        model.fit(np.array([255, 1, 2], np.uint8))
    assert str(err.value) == "sequences must be an iterable of rows; wrap a single 1-D row as [row]"
    with pytest.raises(ValueError) as err:
        model.fit([np.array([], np.uint8)])
    assert str(err.value) == "sequences held no tokens to count; pass at least one non-empty row"
    model.fit([np.array([255, 1, 2], np.uint8)])
    with pytest.raises(ValueError) as err:
        model.log_prob(np.zeros((2, 2), np.uint8))
    assert str(err.value).startswith("sequence must be a 1-D token array (one corpus row), got shape (2, 2)")
    with pytest.raises(ValueError) as err:
        model.next_token_log_probs(np.zeros((1, 2, 1), np.uint8))
    assert str(err.value) == "contexts must have shape (B, 2) or (2,) for order 3, got (1, 2, 1)"
    for contexts in ([[-1, 3]], [[1.0, 2.0]], [[256, 3]], [[300, -4]]):
        with pytest.raises(ValueError) as err:
            model.next_token_log_probs(np.array(contexts))
        assert str(err.value) == "contexts must hold integer tokens in 0..255"
    assert model.next_token_log_probs(np.array([[255, 255]])).shape == (1, 256)


def test_short_empty_and_unseen_rows():
    rows = random_rows(seed=61)
    for order in (1, 2, 5, 9):
        model = NGramModel(order=order).fit(rows)
        for row in (np.array([255], np.uint8), np.array([7], np.uint8)):
            pairs, contexts = dict_counts(rows, order)
            np.testing.assert_allclose(model.log_prob(row), dict_log_prob(row, order, pairs, contexts, 1.0, 256),
                                       rtol=1e-12)
        empty = model.log_prob(np.array([], np.uint8))
        assert empty.shape == (0,) and empty.dtype == np.float64
        assert model.next_token_log_probs(np.zeros((0, order - 1), np.uint8)).shape == (0, 256)
        assert model.next_token_log_probs(np.full(order - 1, 255, np.uint8)).shape == (256,)
        # contexts above every key in the table (all 254s) are unseen: uniform
        high = np.full(12, 254, np.uint8)
        if order > 1:
            np.testing.assert_allclose(model.log_prob(high)[order - 1:], -np.log(256), rtol=1e-12)
    # rows of one token and empty rows (any dtype) count as they are and do not stop the fit
    a, b = rows[0], rows[1]
    with_short = NGramModel(order=3).fit([a, np.array([]), np.array([9]), b])
    pairs, _ = dict_counts([a, [9], b], 3)
    assert model_counts(with_short)[0] == pairs and with_short.num_tokens_ == len(a) + 1 + len(b)
    assert NGramModel(order=2).fit(rows, max_tokens=1).num_tokens_ == 1


def test_table_dtypes_and_the_token_row_helper(tmp_path):
    model = NGramModel(order=9).fit(random_rows(seed=71))
    dtypes = {name: getattr(model, name).dtype for name in TABLES}
    assert dtypes == {"context_keys_": np.uint64, "context_counts_": np.int64,
                      "ngram_codes_": np.uint64, "ngram_counts_": np.int64}
    model.save(tmp_path / "m.npz")
    loaded = NGramModel.load(tmp_path / "m.npz")
    assert {name: getattr(loaded, name).dtype for name in TABLES} == dtypes
    row = ngram_module._as_token_row(np.array([255, 3, 7], dtype=np.int64), 256, "row")
    assert row.dtype == np.uint8 and row.tolist() == [255, 3, 7]
    assert ngram_module._as_token_row([], 256, "row").dtype == np.uint8


def test_fit_is_quiet_without_progress(capsys):
    NGramModel(order=2).fit(random_rows(seed=81))
    assert capsys.readouterr() == ("", "")


def test_load_keeps_every_parameter_and_refuses_pickles(tmp_path):
    model = NGramModel(order=4, alpha=0.3, vocab_size=200, memory_budget_mb=7.5).fit(
        [r[r < 200] for r in random_rows(seed=91)])
    model.save(tmp_path / "m.npz")
    loaded = NGramModel.load(tmp_path / "m.npz")
    assert loaded.get_params() == {"order": 4, "alpha": 0.3, "vocab_size": 200, "memory_budget_mb": 7.5}
    assert loaded.num_tokens_ == model.num_tokens_
    with np.load(tmp_path / "m.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["context_keys_"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(ValueError, match="allow_pickle"):
        NGramModel.load(tmp_path / "evil.npz")
    np.savez(tmp_path / "old.npz", **{**arrays, "format_version": np.int64(0)})
    with pytest.raises(ValueError) as err:
        NGramModel.load(tmp_path / "old.npz")
    assert str(err.value) == (f"{tmp_path / 'old.npz'} is not an NGramModel file of format 1 (found 0); "
                              "re-fit and save the model with this version of spikefm")


def test_ngram_results_json_records_its_options_and_the_absolute_corpus(tmp_path, monkeypatch, capsys):
    """results.json held the corpus as typed (relative to a working directory it does not record)
    and no word of --max-tokens or --max-train-tokens, which choose the tokens fitted and scored."""
    import json

    from spikefm.cli import main
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=2, seed=0, duration_s=10.0, units_range=(20, 22))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.5), progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["ngram", "--data", "corpus", "--order", "2", "--max-tokens", "300", "--max-train-tokens", "900",
                 "--out", "res.json", "--quiet"]) == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert {k: res[k] for k in ("corpus", "order", "split", "max_tokens", "max_train_tokens")} == {
        "corpus": str((tmp_path / "corpus").resolve()), "order": 2, "split": "test", "max_tokens": 300,
        "max_train_tokens": 900}
    # the scored tokens are the ones max_tokens chose: whole bins, up to one bin beyond it
    scored = res["results"]["2-gram"]["overall"]["all"]["num_tokens"]
    assert 300 - 1 <= scored < 300 + 23
