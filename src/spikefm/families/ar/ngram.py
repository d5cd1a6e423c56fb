"""Exact add-alpha n-gram baselines over the Neural Pile token vocabulary (numpy only).

An order-``n`` model predicts each token from the ``n - 1`` tokens before it in the same corpus
row::

    P(x | ctx) = (c(ctx, x) + alpha) / (c(ctx) + alpha * vocab_size)

with exact training counts ``c`` (no hashing, no pruning) and add-alpha (Laplace) smoothing, so
every context, seen or not, gives a proper distribution over the vocabulary.

Row boundaries. Contexts never cross rows: each row is left-padded with ``n - 1`` separator tokens
(255) before its windows are read, in ``fit`` and in ``log_prob`` alike. Real tokenized data
(:func:`spikefm.families.ar.tokens.tokenize`) never holds two consecutive 255s -- every separator is
followed by ``num_units >= 1`` count tokens -- so any context with two adjacent 255s comes from
padding and never aliases a context from the middle of a row. (A row starts with 255, so its first
two positions both see the all-separator context; that context simply models "row start".)

Counting. A window of ``n`` tokens is packed into integers, one byte per token with the newest
token in the lowest byte: ``lo = sum_j x[p - j] << 8 j`` for ``j < min(n, 8)``, and for ``n = 9``
the oldest token ``x[p - 8]`` goes to a separate byte ``hi``. Sorting ``(hi, lo)`` therefore sorts
windows by (context, next token). Windows are counted chunk by chunk with ``np.sort`` and run
lengths; windows that would straddle two rows of a chunk are counted too and then subtracted
(cheaper than masking the chunk). For ``n = 9``, a chunk whose tokens are all < 127 or 255 (spike
counts per 20 ms bin practically always are) packs all 9 tokens into one uint64 (7 bits each);
otherwise windows are bucketed by ``hi`` with a radix argsort and each bucket is sorted (about
half the speed). Sorted chunk tables are merged into the running table with
``searchsorted``/``insert``. No Python loop runs per token; the loops left run per chunk, per
``hi`` bucket (at most 256) or per bit.

Memory. ``memory_budget_mb`` bounds the working memory of one chunk (about
``_WORKSET_BYTES_PER_TOKEN`` bytes per token). The count table itself is exact, so it grows with
the number of distinct n-grams seen (16 bytes each while fitting, about 24 after), and a merge
briefly holds it twice.

Fitted tables (the ``.npz`` written by :meth:`NGramModel.save` holds them as they are):

* ``context_keys_`` (C,) uint64, sorted: context ``x[p-n+1 .. p-1]`` packed as
  ``sum_{j=1}^{n-1} x[p - j] << 8 (j - 1)`` (the newest context token is the lowest byte; 0 for
  ``n = 1``). ``context_counts_`` (C,) int64: ``c(ctx)``.
* ``ngram_codes_`` (M,) uint64, sorted: ``(index of ctx in context_keys_) << 8 | x``.
  ``ngram_counts_`` (M,) int64: ``c(ctx, x)``. ``context_counts_`` is the sum of ``ngram_counts_``
  over each context's entries, so probabilities sum to 1 exactly.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from spikefm.argtypes import is_int
from spikefm.families.ar.tokens import SEPARATOR, VOCAB_SIZE
from spikefm.fileio import savez_atomic
from spikefm.progress import progress_bar

__all__ = ["NGramModel", "MAX_ORDER"]

#: Largest supported order: its 8-token context fills one uint64 key.
MAX_ORDER = 9
_PAD_TOKEN = SEPARATOR
# Peak bytes per token while one chunk is counted (stream, uint64 keys and temporaries, bucket
# permutation, run starts, unique keys and counts). Measured with tracemalloc on spike-like data:
# ~19 (orders 1-8 and packed 9), ~35 (general order 9); all-distinct windows add up to ~24.
_WORKSET_BYTES_PER_TOKEN = 64
_FORMAT_VERSION = 1
_U64_8 = np.uint64(8)


# --------------------------------------------------------------------------------------------------
# Packed keys and sorted count tables.
# --------------------------------------------------------------------------------------------------


def _window_keys(stream: np.ndarray, order: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Pack every full window of ``order`` tokens of a uint8 stream.

    Returns ``(hi, lo)`` for predicted positions ``p = order - 1 .. len(stream) - 1``: ``lo`` (uint64)
    holds tokens ``p - min(order, 8) + 1 .. p`` with ``x[p]`` in the lowest byte; ``hi`` (uint8)
    is ``x[p - 8]`` for order 9 and None otherwise.
    """
    k = order - 1
    n = stream.size - k
    if n <= 0:
        return (np.empty(0, np.uint8) if order == MAX_ORDER else None), np.empty(0, np.uint64)
    # Eight bytes ending at x[p], read as a big-endian uint64, put x[p] in the lowest byte: one
    # overlapping (stride 1) view converts every window in a single pass. Orders below 8 read
    # a few bytes too many; zero-fill in front keeps the reads in bounds and a mask drops them.
    extra = max(0, 8 - order)
    buf = np.ascontiguousarray(stream, dtype=np.uint8)
    if extra:
        buf = np.concatenate([np.zeros(extra, np.uint8), buf])
    windows = np.ndarray((n,), dtype=">u8", buffer=buf, offset=max(0, order - 8), strides=(1,))
    lo = windows.astype(np.uint64)
    if order < 8:
        lo &= np.uint64((1 << (8 * order)) - 1)
    hi = stream[:n] if order == MAX_ORDER else None
    return hi, lo


def _context_of(hi: np.ndarray | None, lo: np.ndarray) -> np.ndarray:
    """Context keys (see module docstring) of packed windows."""
    ctx = np.right_shift(lo, _U64_8)
    if hi is not None:
        ctx |= hi.astype(np.uint64) << np.uint64(56)
    return ctx


class _CountTable:
    """Unique packed windows with counts, sorted by ``(bucket, key)``.

    ``offsets[b]:offsets[b + 1]`` is bucket ``b`` (the ``hi`` byte for order 9; one bucket for
    lower orders). Keys within a bucket are unique and ascending.
    """

    __slots__ = ("offsets", "keys", "counts")

    def __init__(self, offsets: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> None:
        self.offsets = offsets
        self.keys = keys
        self.counts = counts

    @property
    def num_buckets(self) -> int:
        return self.offsets.size - 1


def _count_windows(hi: np.ndarray | None, lo: np.ndarray) -> _CountTable:
    """Count the distinct packed windows of one chunk."""
    n = lo.size
    if hi is None:
        keys = np.sort(lo)
        bounds = np.array([0, n], dtype=np.int64)
    else:
        # Radix bucketing on the oldest token (stable argsort of uint8 is a radix sort), then a
        # fast unstable sort of each bucket.
        perm = np.argsort(hi, kind="stable")
        keys = lo[perm]
        bounds = np.searchsorted(hi[perm], np.arange(257)).astype(np.int64)
        del perm
        for b in np.flatnonzero(np.diff(bounds)):
            keys[bounds[b] : bounds[b + 1]].sort()
    run_start = np.empty(n, dtype=bool)
    if n:
        run_start[0] = True
        np.not_equal(keys[1:], keys[:-1], out=run_start[1:])
        run_start[bounds[:-1][bounds[:-1] < n]] = True  # a bucket always opens a new run
    starts = np.flatnonzero(run_start)
    del run_start
    counts = np.diff(np.append(starts, n))
    offsets = np.searchsorted(starts, bounds).astype(np.int64)
    return _CountTable(offsets, keys[starts], counts.astype(np.int64))


def _merge_tables(acc: _CountTable | None, new: _CountTable) -> _CountTable:
    """Sum two count tables; ``acc``'s arrays may be modified in place."""
    if acc is None:
        return new
    assert acc.num_buckets == new.num_buckets
    key_parts, count_parts = [], []
    offsets = np.zeros(acc.num_buckets + 1, dtype=np.int64)
    for b in range(acc.num_buckets):
        ka = acc.keys[acc.offsets[b] : acc.offsets[b + 1]]
        ca = acc.counts[acc.offsets[b] : acc.offsets[b + 1]]
        kb = new.keys[new.offsets[b] : new.offsets[b + 1]]
        cb = new.counts[new.offsets[b] : new.offsets[b + 1]]
        if kb.size == 0:
            keys, counts = ka, ca
        elif ka.size == 0:
            keys, counts = kb, cb
        else:
            pos = np.searchsorted(ka, kb)
            hit = pos < ka.size
            hit[hit] = ka[pos[hit]] == kb[hit]
            ca[pos[hit]] += cb[hit]  # keys are unique, so no index repeats
            miss = ~hit
            keys = np.insert(ka, pos[miss], kb[miss])
            counts = np.insert(ca, pos[miss], cb[miss])
        key_parts.append(keys)
        count_parts.append(counts)
        offsets[b + 1] = offsets[b] + keys.size
    return _CountTable(offsets, np.concatenate(key_parts), np.concatenate(count_parts))


def _drop_zero_counts(table: _CountTable) -> _CountTable:
    keep = table.counts != 0
    if keep.all():
        return table
    kept_before = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return _CountTable(kept_before[table.offsets], table.keys[keep], table.counts[keep])


def _subtract_windows(table: _CountTable, hi: np.ndarray | None, lo: np.ndarray) -> _CountTable:
    """Remove some occurrences (all of them counted in ``table``) of the given windows."""
    wrong = _count_windows(hi, lo)
    wrong.counts = -wrong.counts
    table = _drop_zero_counts(_merge_tables(table, wrong))
    assert table.counts.min(initial=1) > 0, "a subtracted window was not in the table"
    return table


# Order 9 fast path. A 9-token window needs 72 bits, so the general path buckets windows by their
# oldest token with a radix argsort before sorting 64-bit keys. When every token of a chunk is
# < 127 or the separator 255 (spike counts per 20 ms bin virtually always are), 255 is recoded to
# 127 and each token fits in 7 bits: the oldest token's 7 bits then go into the free top bit of
# each of the other 8 bytes, and one np.sort of uint64 keys counts the chunk. The small table of
# distinct windows is unpacked and put back into the canonical (hi, lo) order.
_SPREAD_7_BITS = np.uint64(sum(1 << (7 * i + 7) for i in range(7)))  # bit i -> bit 8 i + 7
_TOP_BITS = np.uint64(0x8080808080808080)
_LOW_7_BITS = np.uint64(0x7F7F7F7F7F7F7F7F)
_RECODED_SEPARATOR = 127


def _fits_7_bits(stream: np.ndarray) -> bool:
    """True when no token lies in 127..254 (so min(x, 127) is injective)."""
    return np.count_nonzero(stream >= _RECODED_SEPARATOR) == np.count_nonzero(stream == SEPARATOR)


def _count_order9_packed(stream: np.ndarray, straddle: np.ndarray | None) -> _CountTable:
    recoded = np.minimum(stream, _RECODED_SEPARATOR)
    hi, keys = _window_keys(recoded, MAX_ORDER)
    keys |= (hi.astype(np.uint64) * _SPREAD_7_BITS) & _TOP_BITS
    del hi, recoded
    table = _count_windows(None, keys)
    if straddle is not None:
        table = _subtract_windows(table, None, keys[straddle])
    del keys
    packed = table.keys
    hi = np.zeros(packed.size, dtype=np.uint64)
    for i in range(7):  # gather the oldest token's bits back, one bit position at a time
        hi |= ((packed >> np.uint64(8 * i + 7)) & np.uint64(1)) << np.uint64(i)
    hi = hi.astype(np.uint8)
    hi[hi == _RECODED_SEPARATOR] = SEPARATOR
    lo = packed & _LOW_7_BITS
    lo_bytes = lo.view(np.uint8)
    lo_bytes[lo_bytes == _RECODED_SEPARATOR] = SEPARATOR
    order = np.lexsort((lo, hi))
    hi = hi[order]
    return _CountTable(
        np.searchsorted(hi, np.arange(257)).astype(np.int64), lo[order], table.counts[order]
    )


# --------------------------------------------------------------------------------------------------
# Validation helpers.
# --------------------------------------------------------------------------------------------------


def _as_token_row(row: Any, vocab_size: int, name: str) -> np.ndarray:
    """Validate one row of tokens and return it as a 1-D uint8 array."""
    arr = np.asarray(row)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D token array (one corpus row), got shape {arr.shape}; "
            "pass an iterable of 1-D arrays, e.g. [row] for a single row"
        )
    if arr.size == 0:
        return np.empty(0, dtype=np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer tokens (uint8), got dtype {arr.dtype}")
    if arr.dtype != np.uint8 or vocab_size < VOCAB_SIZE:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} tokens must lie in 0..{vocab_size - 1} (vocab_size={vocab_size}), "
                f"got range {lo}..{hi}"
            )
    return arr.astype(np.uint8, copy=False)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# The estimator.
# --------------------------------------------------------------------------------------------------


class NGramModel:
    """Exact add-alpha n-gram language model over uint8 tokens (scikit-learn estimator contract).

    Args:
        order: n, the window length; the model conditions on ``order - 1`` previous tokens.
            An int in ``1..9``, checked by :meth:`fit`.
        alpha: add-alpha smoothing pseudo-count, > 0 (1.0 is Laplace smoothing).
        vocab_size: number of token values ``V`` in the smoothing denominator; tokens must lie in
            ``0..V-1``. The padding separator 255 only ever appears in contexts.
        memory_budget_mb: working memory for counting one chunk of tokens, in MiB (the exact count
            table comes on top; see the module docstring).

    Fitted attributes: ``context_keys_``, ``context_counts_``, ``ngram_codes_``, ``ngram_counts_``
    (layout in the module docstring) and ``num_tokens_`` (number of training positions counted).
    """

    def __init__(
        self, order: int, alpha: float = 1.0, vocab_size: int = VOCAB_SIZE, memory_budget_mb: float = 1024.0
    ) -> None:
        self.order = order
        self.alpha = alpha
        self.vocab_size = vocab_size
        self.memory_budget_mb = memory_budget_mb

    # -- scikit-learn plumbing ---------------------------------------------------------------------

    _PARAM_NAMES = ("order", "alpha", "vocab_size", "memory_budget_mb")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters, as scikit-learn's ``clone`` expects."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def set_params(self, **params: Any) -> "NGramModel":
        """Set constructor parameters; unknown names raise ValueError."""
        for name, value in params.items():
            if name not in self._PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}; valid: {', '.join(self._PARAM_NAMES)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        if not is_int(self.order) or not 1 <= self.order <= MAX_ORDER:
            raise ValueError(
                f"order must be an int in 1..{MAX_ORDER} (an (order-1)-token context must fit in a "
                f"uint64 key), got {self.order!r}"
            )
        if not _is_real(self.alpha) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(
                f"alpha must be a finite number > 0 (1.0 = Laplace smoothing), got {self.alpha!r}"
            )
        if not is_int(self.vocab_size) or not 1 <= self.vocab_size <= VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an int in 1..{VOCAB_SIZE}, got {self.vocab_size!r}")
        if not math.isfinite(self.alpha * self.vocab_size):  # the smoothing's denominator
            raise ValueError(f"alpha {self.alpha!r} is too large: alpha x {self.vocab_size} tokens overflows a float "
                             f"(every probability would read 0); give at most {1e300:g}, e.g. 1.0 (Laplace smoothing)")
        if not _is_real(self.memory_budget_mb) or not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be a number > 0, got {self.memory_budget_mb!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "ngram_codes_"):
            raise ValueError(
                f"this {type(self).__name__} is not fitted yet; call fit(sequences) or load(path) first"
            )

    @property
    def chunk_tokens(self) -> int:
        """Tokens counted per chunk under ``memory_budget_mb``."""
        self._check_params()
        return max(1, int(self.memory_budget_mb * 2**20) // _WORKSET_BYTES_PER_TOKEN)

    # -- fitting -----------------------------------------------------------------------------------

    def fit(
        self, sequences: Iterable[np.ndarray], max_tokens: int | None = None, progress: bool = False,
        expected_tokens: int | None = None,
    ) -> "NGramModel":
        """Count n-grams over corpus rows.

        Args:
            sequences: iterable of 1-D uint8 token arrays, one per corpus row (read once, in order).
                Empty rows are allowed and contribute nothing.
            max_tokens: count at most this many positions: rows are taken in order and the row
                that crosses the cap keeps only its prefix; later rows are not read.
            progress: a progress display of the tokens counted (:func:`spikefm.progress.progress_bar`:
                a bar on a terminal; in a log, plain lines once the fit has run a few seconds).
            expected_tokens: the tokens ``sequences`` hold, when known, for the display's total
                and time left (``max_tokens`` caps it).

        Returns:
            self, with the fitted attributes set.
        """
        self._check_params()
        if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
            raise ValueError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")
        if isinstance(sequences, np.ndarray) and sequences.ndim == 1 and sequences.dtype != object:
            raise ValueError("sequences must be an iterable of rows; wrap a single 1-D row as [row]")
        order = int(self.order)
        k = order - 1
        chunk_tokens = self.chunk_tokens
        pad = np.full(k, _PAD_TOKEN, dtype=np.uint8)

        table: _CountTable | None = None
        parts: list[np.ndarray] = []  # each: k context tokens then the tokens to count
        buffered = 0
        counted = 0

        def flush() -> None:
            nonlocal table, parts, buffered, counted
            table = _merge_tables(table, self._count_parts(parts, order))
            counted += buffered
            bar.advance(buffered)
            parts, buffered = [], 0

        known = [t for t in (expected_tokens, max_tokens) if t is not None]
        total = min(known) if known else None
        with progress_bar(total, f"fitting the {order}-gram (tokens)", enabled=progress) as bar:
            for index, row in enumerate(sequences):
                row = _as_token_row(row, self.vocab_size, f"sequences[{index}]")
                if max_tokens is not None:
                    row = row[: max_tokens - counted - buffered]
                if row.size == 0:
                    continue
                padded = np.concatenate([pad, row])
                start = 0
                while start < row.size:
                    # A row longer than the chunk is split; each piece carries its k-token context.
                    take = min(row.size - start, chunk_tokens - buffered)
                    parts.append(padded[start : start + k + take])
                    buffered += take
                    start += take
                    if buffered == chunk_tokens:
                        flush()
                if max_tokens is not None and counted + buffered >= max_tokens:
                    break  # before asking the iterable for a row that would not be used
            if parts:
                flush()
        if table is None:
            raise ValueError("sequences held no tokens to count; pass at least one non-empty row")
        self._set_tables(table, order)
        self.num_tokens_ = counted
        return self

    @staticmethod
    def _count_parts(parts: list[np.ndarray], order: int) -> _CountTable:
        k = order - 1
        stream = np.concatenate(parts)
        straddle = None
        if len(parts) > 1 and k:
            # Windows ending in a later part's k context tokens straddle two parts. Counting them
            # and subtracting their (small) table is cheaper than masking the whole chunk.
            part_starts = np.cumsum([p.size for p in parts[:-1]])
            straddle = (part_starts[:, None] + np.arange(k)).ravel() - k
        if order == MAX_ORDER and _fits_7_bits(stream):
            return _count_order9_packed(stream, straddle)
        hi, lo = _window_keys(stream, order)
        table = _count_windows(hi, lo)
        if straddle is not None:
            table = _subtract_windows(table, None if hi is None else hi[straddle], lo[straddle])
        return table

    def _set_tables(self, table: _CountTable, order: int) -> None:
        keys, counts = table.keys, table.counts
        hi = None
        if order == MAX_ORDER:
            hi = np.repeat(np.arange(256, dtype=np.uint8), np.diff(table.offsets))
        ctx = _context_of(hi, keys)
        del hi
        new_ctx = np.empty(keys.size, dtype=bool)
        new_ctx[0] = True
        np.not_equal(ctx[1:], ctx[:-1], out=new_ctx[1:])
        starts = np.flatnonzero(new_ctx)
        self.context_keys_ = ctx[starts]
        self.context_counts_ = np.add.reduceat(counts, starts).astype(np.int64)
        ctx_index = np.cumsum(new_ctx, dtype=np.uint64) - np.uint64(1)
        self.ngram_codes_ = (ctx_index << _U64_8) | (keys & np.uint64(0xFF))
        self.ngram_counts_ = counts.astype(np.int64, copy=False)

    # -- scoring -----------------------------------------------------------------------------------

    def _lookup(self, ctx: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Natural-log P(nxt | ctx) for parallel arrays of context keys and next tokens."""
        keys, codes = self.context_keys_, self.ngram_codes_
        ci = np.searchsorted(keys, ctx)
        ci_safe = np.minimum(ci, keys.size - 1)
        ctx_seen = (ci < keys.size) & (keys[ci_safe] == ctx)
        c_ctx = np.where(ctx_seen, self.context_counts_[ci_safe], 0)
        code = (ci_safe.astype(np.uint64) << _U64_8) | nxt.astype(np.uint64)
        pi = np.searchsorted(codes, code)
        pi_safe = np.minimum(pi, codes.size - 1)
        pair_seen = ctx_seen & (pi < codes.size) & (codes[pi_safe] == code)
        c_pair = np.where(pair_seen, self.ngram_counts_[pi_safe], 0)
        alpha = float(self.alpha)
        return np.log(c_pair + alpha) - np.log(c_ctx + alpha * self.vocab_size)

    def log_prob(self, sequence: np.ndarray) -> np.ndarray:
        """Log-probability of every token of one row given its (padded) in-row context.

        Args:
            sequence: (L,) uint8 tokens of one corpus row.

        Returns:
            (L,) float64, natural-log ``P(sequence[i] | sequence[i-order+1 : i])`` with the row
            left-padded by separators exactly as in :meth:`fit`.
        """
        self._check_fitted()
        row = _as_token_row(sequence, self.vocab_size, "sequence")
        k = self.order - 1
        padded = np.concatenate([np.full(k, _PAD_TOKEN, dtype=np.uint8), row])
        hi, lo = _window_keys(padded, self.order)
        return self._lookup(_context_of(hi, lo), row)

    def next_token_log_probs(self, contexts: np.ndarray) -> np.ndarray:
        """Log-distribution over the vocabulary after given contexts.

        Args:
            contexts: (B, order-1) or (order-1,) tokens, oldest first (values 0..255; padding 255
                allowed).

        Returns:
            (B, vocab_size) or (vocab_size,) float64 natural-log probabilities; each row sums to 1
            after ``exp``.
        """
        self._check_fitted()
        k = self.order - 1
        arr = np.asarray(contexts)
        single = arr.ndim == 1
        arr2 = arr.reshape(1, -1) if single else arr
        if arr2.ndim != 2 or arr2.shape[1] != k:
            raise ValueError(
                f"contexts must have shape (B, {k}) or ({k},) for order {self.order}, got {arr.shape}"
            )
        if arr2.size and (not np.issubdtype(arr2.dtype, np.integer) or arr2.min() < 0 or arr2.max() > 255):
            raise ValueError("contexts must hold integer tokens in 0..255")
        ctx = np.zeros(arr2.shape[0], dtype=np.uint64)
        for j in range(1, k + 1):  # per context position (<= 8), not per token
            ctx |= arr2[:, k - j].astype(np.uint64) << np.uint64(8 * (j - 1))
        vocab = np.arange(self.vocab_size, dtype=np.uint64)
        out = self._lookup(np.repeat(ctx, vocab.size), np.tile(vocab, ctx.size))
        out = out.reshape(ctx.size, vocab.size)
        return out[0] if single else out

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the parameters and fitted tables to ``path`` (.npz), atomically (temp + rename)."""
        self._check_fitted()
        savez_atomic(
            path,
            format_version=np.int64(_FORMAT_VERSION),
            order=np.int64(self.order),
            alpha=np.float64(self.alpha),
            vocab_size=np.int64(self.vocab_size),
            memory_budget_mb=np.float64(self.memory_budget_mb),
            num_tokens_=np.int64(self.num_tokens_),
            context_keys_=self.context_keys_,
            context_counts_=self.context_counts_,
            ngram_codes_=self.ngram_codes_,
            ngram_counts_=self.ngram_counts_,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NGramModel":
        """Read a model written by :meth:`save`."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            version = int(data["format_version"]) if "format_version" in data.files else None
            if version != _FORMAT_VERSION:
                raise ValueError(
                    f"{path} is not an NGramModel file of format {_FORMAT_VERSION} (found {version!r}); "
                    "re-fit and save the model with this version of spikefm"
                )
            model = cls(
                order=int(data["order"]),
                alpha=float(data["alpha"]),
                vocab_size=int(data["vocab_size"]),
                memory_budget_mb=float(data["memory_budget_mb"]),
            )
            model._check_params()
            model.num_tokens_ = int(data["num_tokens_"])
            model.context_keys_ = data["context_keys_"].astype(np.uint64, copy=False)
            model.context_counts_ = data["context_counts_"].astype(np.int64, copy=False)
            model.ngram_codes_ = data["ngram_codes_"].astype(np.uint64, copy=False)
            model.ngram_counts_ = data["ngram_counts_"].astype(np.int64, copy=False)
        return model
