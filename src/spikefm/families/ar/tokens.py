"""Neural Pile tokenization: each time bin becomes ``[255, c_1, ..., c_n]`` (numpy only).

The units x bins count matrix is read column by column (time-major): for every bin, the separator
token 255 and then that bin's count for unit 1..n. The vocabulary is the 256 byte values. Counts of
255 or more are clipped to 254 so that 255 only ever means "a new bin starts".
"""
from __future__ import annotations

import numpy as np

SEPARATOR = 255
VOCAB_SIZE = 256
MAX_COUNT_TOKEN = 254


def tokenize(counts: np.ndarray) -> np.ndarray:
    """(num_units, num_bins) counts -> (num_bins * (num_units + 1),) uint8 tokens.

    Counts must be whole numbers >= 0 (any integer or float dtype); a negative count would wrap
    around to 255, the separator, so it is refused rather than cast. Counts above 254 become 254.

    Raises:
        ValueError: not 2-D, or a count that is negative, fractional, NaN or infinite.
        TypeError: not a numeric array.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D (units, bins) array, got shape {counts.shape}")
    num_units, num_bins = counts.shape
    out = np.empty((num_bins, num_units + 1), dtype=np.uint8)
    out[:, 0] = SEPARATOR
    if counts.dtype == np.uint8:
        np.minimum(counts.T, MAX_COUNT_TOKEN, out=out[:, 1:])
    else:
        if counts.dtype.kind not in "biuf":
            raise TypeError(f"counts must be a numeric array of spike counts, got dtype "
                            f"{counts.dtype}; convert it with np.asarray(counts, dtype=np.int64)")
        if counts.dtype.kind == "f":
            if not np.all(np.isfinite(counts)):
                raise ValueError("counts must be finite; found NaN or inf (check the data source)")
            fractional = counts != np.floor(counts)
            if np.any(fractional):
                raise ValueError(f"counts must be whole numbers, found {float(counts[fractional][0])}; "
                                 "round or bin the data into integer counts first")
        if counts.size and counts.min() < 0:
            raise ValueError(f"counts must be >= 0, found {counts.min().item()}: a negative count would "
                             f"become the separator {SEPARATOR}; check the data source")
        if counts.dtype.kind == "b" or (counts.dtype.kind in "iu"
                                        and np.iinfo(counts.dtype).max <= MAX_COUNT_TOKEN):
            out[:, 1:] = counts.T  # int8, bool: every value already fits (254 would not fit int8)
        else:
            out[:, 1:] = np.minimum(counts.T, MAX_COUNT_TOKEN)
    return out.reshape(-1)


def detokenize(tokens: np.ndarray, num_units: int) -> np.ndarray:
    """Inverse of :func:`tokenize`: tokens -> (num_units, num_bins) uint8 counts.

    Raises ValueError unless ``tokens`` is one sequence (1-D, or a batch of one ``(1, L)``; for a
    batch of several, as :func:`generate` returns, call it on each row) of whole numbers in 0..255, its length is a multiple of
    ``num_units + 1`` and every bin starts with the separator (and no count token is the
    separator); the tokens were wrapped into uint8 before (257 read as a count of 1, 1.9 as 1).
    """
    if isinstance(num_units, bool) or not isinstance(num_units, (int, np.integer)) or num_units < 1:
        raise ValueError(f"num_units must be an int >= 1 (units per bin), got {num_units!r}")
    arr = np.asarray(tokens)
    if arr.ndim == 2 and arr.shape[0] == 1:  # a batch of one, as generate returns it
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one sequence (1-D), got shape {arr.shape}; for a batch (B, L) of "
                         "generate, detokenize each row: [detokenize(row, num_units) for row in tokens]")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"tokens must be whole numbers in 0..{SEPARATOR}, got dtype {arr.dtype}")
    if arr.size:
        bad = ~np.isfinite(arr) | (arr != np.floor(arr)) | (arr < 0) | (arr > SEPARATOR) if arr.dtype.kind == "f" \
            else (arr < 0) | (arr > SEPARATOR)
        if np.any(bad):
            raise ValueError(f"tokens must be whole numbers in 0..{SEPARATOR}, found {arr[bad][0].item()!r} at position "
                             f"{int(np.flatnonzero(bad)[0])}: not a spike token (a vocabulary past 256?)")
    tokens = arr.astype(np.uint8)
    width = num_units + 1
    if tokens.size % width:
        raise ValueError(
            f"token count {tokens.size} is not a multiple of num_units + 1 = {width}; "
            "pass the num_units the tokens were made with"
        )
    grid = tokens.reshape(-1, width)
    if grid.size and (np.any(grid[:, 0] != SEPARATOR) or np.any(grid[:, 1:] == SEPARATOR)):
        raise ValueError(
            f"tokens are not laid out as [255, c1..c{num_units}] per bin; "
            "check num_units and that the sequence starts at a bin boundary"
        )
    return np.ascontiguousarray(grid[:, 1:].T)
