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
