"""Neural Pile tokenization: exact layout, clipping, round trip, errors."""
import numpy as np
import pytest

from spikefm.families.ar.tokens import SEPARATOR, detokenize, tokenize


def test_exact_layout_on_a_hand_made_array():
    counts = np.array([[0, 1, 2],
                       [3, 0, 7]], dtype=np.uint8)  # 2 units x 3 bins
    assert tokenize(counts).tolist() == [255, 0, 3, 255, 1, 0, 255, 2, 7]


def test_counts_of_255_and_more_are_clipped_to_254():
    assert tokenize(np.array([[255, 254, 300]])).tolist() == [255, 254, 255, 254, 255, 254]
    assert SEPARATOR not in tokenize(np.array([[255]], dtype=np.uint8))[1:]


def test_round_trip_for_counts_up_to_254():
    counts = np.random.default_rng(0).integers(0, 255, (17, 40)).astype(np.uint8)
    np.testing.assert_array_equal(detokenize(tokenize(counts), 17), counts)


def test_detokenize_rejects_wrong_unit_count_or_layout():
    tokens = tokenize(np.ones((3, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="multiple of num_units"):
        detokenize(tokens, 4)
    with pytest.raises(ValueError, match="not laid out"):
        detokenize(np.roll(tokens, 1), 3)
    with pytest.raises(ValueError, match="2-D"):
        tokenize(np.zeros(5))


@pytest.mark.parametrize("counts, match", [
    (np.array([[3, -1]], dtype=np.int8), "counts must be >= 0, found -1: a negative count would become the separator 255"),
    (np.array([[3, -1]], dtype=np.int64), "found -1: a negative count"),
    (np.array([[3.0, -2.0]]), "found -2.0: a negative count"),
    ([[0, -255]], "found -255"),  # -255 as uint8 would be 1, silently a valid count
    (np.array([[1.5, 2.0]]), "counts must be whole numbers, found 1.5"),
    (np.array([[np.nan]]), "counts must be finite"),
    (np.array([[np.inf]]), "counts must be finite"),
])
def test_bad_counts_are_refused_not_wrapped(counts, match):
    with pytest.raises(ValueError, match=match) as err:
        tokenize(counts)
    assert "\n" not in str(err.value)


def test_negative_counts_never_become_separators_in_any_signed_dtype():
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.float32, np.float64):
        counts = np.zeros((2, 3), dtype=dtype)
        counts[1, 2] = -1
        with pytest.raises(ValueError, match="negative count"):
            tokenize(counts)
        # the same array without the negative entry tokenizes, separator only at bin starts
        counts[1, 2] = 7
        tokens = tokenize(counts)
        assert tokens.tolist() == [255, 0, 0, 255, 0, 0, 255, 0, 7]


def test_non_numeric_counts_are_a_type_error():
    with pytest.raises(TypeError, match="numeric array of spike counts, got dtype object"):
        tokenize(np.array([[1, None]], dtype=object))
    with pytest.raises(TypeError, match="got dtype <U1"):
        tokenize(np.array([["1", "2"]]))


def test_every_dtype_and_count_matches_an_independent_layout():
    """A per-element loop as the reference: 255, then min(count, 254) of each unit, per bin."""
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 400, (3, 7))

    def reference(c):
        return [v for t in range(c.shape[1]) for v in [255] + [min(int(x), 254) for x in c[:, t]]]

    cases = [np.minimum(counts, 255).astype(np.uint8), counts.astype(np.uint16), counts.astype(np.int32),
             counts.astype(np.uint64), counts.astype(np.float64), np.minimum(counts, 127).astype(np.int8),
             counts > 200]
    for arr in cases:
        assert tokenize(arr).tolist() == reference(arr), arr.dtype


def test_error_messages_are_exact():
    """The whole line a user sees (what was expected, what was found, the fix)."""
    cases = [
        (np.array([[np.nan]]), ValueError, "counts must be finite; found NaN or inf (check the data source)"),
        (np.array([[0.5]]), ValueError,
         "counts must be whole numbers, found 0.5; round or bin the data into integer counts first"),
        (np.array([[-3]]), ValueError,
         "counts must be >= 0, found -3: a negative count would become the separator 255; check the data source"),
        (np.array([["a"]]), TypeError, "counts must be a numeric array of spike counts, got dtype <U1; "
                                       "convert it with np.asarray(counts, dtype=np.int64)"),
        (np.zeros(3), ValueError, "counts must be a 2-D (units, bins) array, got shape (3,)"),
    ]
    for counts, kind, message in cases:
        with pytest.raises(kind) as err:
            tokenize(counts)
        assert str(err.value) == message
    tokens = tokenize(np.ones((3, 4), dtype=np.uint8))
    with pytest.raises(ValueError) as err:
        detokenize(tokens, 4)
    assert str(err.value) == ("token count 16 is not a multiple of num_units + 1 = 5; pass the num_units "
                              "the tokens were made with")
    with pytest.raises(ValueError) as err:
        detokenize(np.roll(tokens, 1), 3)
    assert str(err.value) == ("tokens are not laid out as [255, c1..c3] per bin; check num_units and that "
                              "the sequence starts at a bin boundary")


def test_output_dtypes_and_shapes():
    counts = np.array([[1, 2], [3, 4]], dtype=np.int64)
    tokens = tokenize(counts)
    assert tokens.dtype == np.uint8 and tokens.shape == (6,)
    back = detokenize(tokens.astype(np.int64).tolist(), 2)  # a plain list of ints
    assert back.dtype == np.uint8 and back.shape == (2, 2) and back.tolist() == counts.tolist()
    # one sequence, or a batch of one as generate returns it; a batch of several is refused (its
    # rows were read as consecutive bins of one sequence)
    np.testing.assert_array_equal(detokenize(tokens.reshape(1, 6), 2), counts)
    with pytest.raises(ValueError, match=r"^tokens must be one sequence \(1-D\), got shape \(2, 3\); for a batch "
                                         r"\(B, L\) of generate, detokenize each row"):
        detokenize(tokens.reshape(2, 3), 2)


@pytest.mark.parametrize("tokens, num_units, match", [
    ([255, 257, 3], 2, r"tokens must be whole numbers in 0\.\.255, found 257 at position 1: not a "
                       r"spike token"),
    ([255.0, 1.9, 3.0], 2, r"found 1\.9 at position 1"),
    ([255, -1, 3], 2, r"found -1 at position 1"),
    ([255.0, float("nan"), 3.0], 2, r"found nan at position 1"),
    (["255", "1", "3"], 2, r"tokens must be whole numbers in 0\.\.255, got dtype <U3"),
    ([255, 1, 3], 0, r"num_units must be an int >= 1 \(units per bin\), got 0"),
    ([255, 1, 3], "2", r"num_units must be an int >= 1 \(units per bin\), got '2'"),
])
def test_detokenize_refuses_what_is_no_token_instead_of_wrapping_it(tokens, num_units, match):
    """257 read as a count of 1 and 1.9 as 1 (uint8 wrapping and truncation), silently."""
    with pytest.raises(ValueError, match=match):
        detokenize(np.asarray(tokens), num_units)


def test_detokenize_checks_each_layout_rule_on_its_own():
    good = tokenize(np.array([[1, 2], [3, 4]], dtype=np.uint8))  # [255, 1, 3, 255, 2, 4]
    detokenize(good, 2)
    sep_missing = good.copy()
    sep_missing[3] = 7  # no separator at the second bin, and no 255 among the counts
    with pytest.raises(ValueError, match="not laid out"):
        detokenize(sep_missing, 2)
    for position in (1, 2, 4, 5):  # a 255 in any count column, separators all in place
        count_255 = good.copy()
        count_255[position] = 255
        with pytest.raises(ValueError, match="not laid out"):
            detokenize(count_255, 2)
    assert detokenize(np.zeros(0, np.uint8), 2).shape == (2, 0)
