"""Token windows for the autoregressive spike language model.

Training (:class:`ARTokenLoader`): rows of a split are read one Parquet row group at a time,
tokenized with :func:`spikefm.families.ar.tokens.tokenize` (vectorized, no per-element Python), their
token streams concatenated and cut into fixed windows of ``seq_len + 1`` tokens (inputs and
shifted targets). The order of row groups is a seeded permutation per epoch; rank ``r`` of
``world_size`` takes every ``world_size``-th group of that permutation, so ranks read distinct
data and the global order depends only on the seed. ``state_dict()`` records (epoch, group cursor,
row cursor, token offset) so a restored loader yields exactly the batches that would have come next.
With ``unit_count_prefix`` every window lies inside one row (the last window of a row ends at the
row's end, overlapping the one before) and the loader also yields each window's (num_units, phase)
prefix (:func:`spikefm.families.ar.positions.window_prefix`).

Evaluation (:func:`iter_eval_windows`): every row is scored separately (contexts never cross rows)
in consecutive windows; every token but the first of each row is predicted exactly once, the
same tokens the n-gram baselines and the oracle are scored on.
"""
from __future__ import annotations

import errno
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from spikefm.corpus.reader import Corpus, _matrices, shard_errors
from spikefm.fileio import CORPUS_CACHE, write_atomic, write_json_atomic
from spikefm.families.ar.positions import window_prefix
from spikefm.families.ar.tokens import SEPARATOR, tokenize


@dataclass(frozen=True)
class _Group:
    shard: Path
    row_group: int


def _row_groups(corpus: Corpus, split: str) -> list[_Group]:
    groups = []
    for shard in corpus.shards(split):
        with shard_errors(shard):
            n = pq.ParquetFile(shard).metadata.num_row_groups
        groups += [_Group(shard, g) for g in range(n)]
    return groups


def _group_rows(group: _Group) -> list[tuple[np.ndarray, str]]:
    """(tokens, session_id) of every row of one Parquet row group."""
    with shard_errors(group.shard):  # a damaged shard: one line naming it and the fix
        table = pq.ParquetFile(group.shard).read_row_group(group.row_group,
                                                           columns=["spike_counts", "session_id"])
    ids = table.column("session_id").to_pylist()
    return [(tokenize(m), s) for m, s in zip(_matrices(table.column("spike_counts")), ids)]


#: Why a token cache may not be writable where the corpus is: a read-only or full file system.
_NO_ROOM_OR_RIGHTS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class TokenCache:
    """A split's rows tokenized once into one flat uint8 file, memory-mapped for training.

    ``CORPUS_DIR/.cache/tokens-{split}-{manifest sha256[:16]}.u8`` holds every row's tokens in shard
    and row-group order; the ``.json`` beside it (written last, so its presence means the cache is
    complete) lists, per row group, the (start, end, session_id) of its rows. A rebuilt corpus has a
    new manifest hash and so a new cache. Costs one byte per token of disk.
    """

    def __init__(self, corpus: Corpus, split: str, groups: list[_Group]):
        folder = corpus.path / CORPUS_CACHE
        stem = f"tokens-{split}-{corpus.manifest_hash[:16]}"
        self.path, index_path = folder / f"{stem}.u8", folder / f"{stem}.json"
        if not index_path.exists():
            self._build(groups, folder, index_path)
        index = _read_index(index_path, self.path, len(groups))
        if isinstance(index, str):  # damaged or not this corpus's (a cache is rebuilt, never trusted)
            warnings.warn(f"{index_path}: {index}; the token cache is built again", RuntimeWarning, stacklevel=2)
            self._build(groups, folder, index_path)
            index = _read_index(index_path, self.path, len(groups))
            if isinstance(index, str):
                raise ValueError(f"{index_path}: {index} after it was built again; delete {folder} and retry")
        self.groups = index
        size = self.path.stat().st_size
        self.tokens = np.memmap(self.path, dtype=np.uint8, mode="r") if size else \
            np.zeros(0, np.uint8)

    def _build(self, groups: list[_Group], folder: Path, index_path: Path) -> None:
        try:
            self._write(groups, folder, index_path)
        except OSError as exc:
            if exc.errno not in _NO_ROOM_OR_RIGHTS:
                raise
            raise ValueError(f"{folder}: the token cache cannot be written there ({exc.strerror or exc}); "
                             "--set data.token_cache=false reads the shards instead (no cache, slower), or make "
                             "the corpus folder writable (or free space there)") from None

    def _write(self, groups: list[_Group], folder: Path, index_path: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        index: list[list[tuple[int, int, str]]] = []

        def write_tokens(tmp: Path) -> None:
            pos = 0
            with open(tmp, "wb") as f:
                for g in groups:
                    rows = []
                    for tokens, sid in _group_rows(g):
                        f.write(tokens.tobytes())
                        rows.append((pos, pos + tokens.size, sid))
                        pos += tokens.size
                    index.append(rows)

        write_atomic(self.path, write_tokens)
        write_json_atomic(index_path, {"groups": index})


def _read_index(index_path: Path, tokens_path: Path, num_groups: int) -> list | str:
    """A token cache's index (per row group, the rows' ``[start, end, session_id]``), or what is
    wrong with it: not JSON, not that shape, another number of row groups, or rows that do not
    tile the token file (a file cut short, or written over)."""
    try:
        groups = json.loads(index_path.read_text())["groups"]
        size = tokens_path.stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    if not isinstance(groups, list) or len(groups) != num_groups:
        return f"lists {len(groups) if isinstance(groups, list) else 'no'} row groups, the corpus has {num_groups}"
    pos = 0
    for rows in groups:
        for row in rows if isinstance(rows, list) else [None]:
            if not (isinstance(row, list) and len(row) == 3 and row[0] == pos and isinstance(row[1], int)
                    and row[1] >= pos):
                return "its rows do not follow each other"
            pos = row[1]
    if pos != size:
        return f"its rows end at byte {pos:,}, the token file {tokens_path.name} holds {size:,}"
    return groups


class ARTokenLoader:
    """Infinite iterator of ``(inputs_BL, targets_BL)`` uint8 token batches from a corpus split
    (widen with ``.long()`` on the model's device).

    Args:
        corpus: a :class:`~spikefm.corpus.reader.Corpus` or its path.
        seq_len: context length L.
        batch_size: windows per batch B (per rank).
        seed: shuffle seed; epochs use ``(seed, epoch)``.
        rank, world_size: this process's share of the data.
        split: corpus split to read (``"train"``).
        sessions: only rows of these sessions.
        token_cache: read through a memory-mapped :class:`TokenCache` (built on first use) instead
            of decoding and tokenizing Parquet row groups every epoch.
        permute_units: augmentation: reorder the units of every row by a random permutation,
            the same for all bins of the row and drawn from (seed, epoch, group, row), so it is
            reproducible and resumes exactly. Units within a bin have no natural order; a model
            trained this way cannot learn one.
        unit_count_prefix: windows never cross a row boundary, and batches are ``(inputs_BL,
            targets_BL, prefix_B2)`` with ``prefix_B2`` the (num_units, phase) of each window's
            first input token. Rows shorter than ``seq_len + 1`` tokens are skipped (with a
            warning).
    """

    def __init__(self, corpus: Corpus | str | Path, *, seq_len: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, split: str = "train",
                 sessions: list[str] | None = None, token_cache: bool = True,
                 permute_units: bool = False, unit_count_prefix: bool = False):
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.sessions = set(sessions) if sessions is not None else None
        self.groups = _row_groups(self.corpus, split)
        # Fewer row groups than ranks (a small corpus: 16 rows a group): every rank reads every
        # group and keeps the rows whose place in the epoch's order is its own (row r of the
        # epoch goes to rank r % world_size), so ranks still read distinct data.
        self.row_sharded = len(self.groups) < world_size
        self._rows_in_group: list[int] = []  # rows of the selected sessions, per group (row sharding)
        if self.row_sharded:
            for g in self.groups:
                with shard_errors(g.shard):
                    ids = pq.ParquetFile(g.shard).read_row_group(g.row_group, columns=["session_id"])
                self._rows_in_group.append(sum(self.sessions is None or sid in self.sessions
                                               for sid in ids.column("session_id").to_pylist()))
            if not sum(self._rows_in_group):
                raise ValueError(f"split {split!r} of {self.corpus.path} has no rows"
                                 f"{' of the selected sessions' if self.sessions is not None else ''}; "
                                 + self.corpus.fill_split_advice(split))
            if sum(self._rows_in_group) < world_size:
                raise ValueError(f"split {split!r} of {self.corpus.path} has {sum(self._rows_in_group)} rows"
                                 f"{' of the selected sessions' if self.sessions is not None else ''}, fewer than "
                                 f"world_size={world_size} (each rank reads rows of its own); use fewer ranks, or "
                                 "rebuild the corpus with more, shorter rows (a smaller --max-row-tokens)")
        self.epoch, self.group_cursor, self.row_cursor, self.token_offset = 0, 0, 0, 0
        self._rows: list[np.ndarray] | None = None
        self.permute_units = bool(permute_units)
        self.unit_count_prefix = bool(unit_count_prefix)
        self._short_rows_warned = False
        self._permuted: tuple[tuple[int, int, int], np.ndarray] | None = None
        self._cache = TokenCache(self.corpus, split, self.groups) if token_cache else None

    # --- position --------------------------------------------------------------------------

    def _my_groups(self, epoch: int) -> list[int]:
        """Indices into ``self.groups`` that this rank reads in ``epoch``, in order (all of them
        when rows are sharded instead of groups)."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
        return perm.tolist() if self.row_sharded else perm[self.rank::self.world_size].tolist()

    def _read_group(self, i: int, first_row: int = 0) -> list[np.ndarray]:
        """The rows of group ``i`` (of the selected sessions) this rank reads; ``first_row``: the
        epoch-order place of the group's first selected row (used when rows are sharded)."""
        if self._cache is not None:
            rows = [(self._cache.tokens[a:b], sid) for a, b, sid in self._cache.groups[i]]
        else:
            rows = _group_rows(self.groups[i])
        rows = [(t, sid) for t, sid in rows if self.sessions is None or sid in self.sessions]
        if self.row_sharded:  # dealt out among the selected rows, so every rank gets some
            rows = [r for j, r in enumerate(rows) if (first_row + j) % self.world_size == self.rank]
        return [t for t, _ in rows]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "group_cursor": self.group_cursor,
                "row_cursor": self.row_cursor, "token_offset": self.token_offset,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["world_size"]) != (self.seed, self.world_size):
            raise ValueError(f"loader state was saved with seed={state['seed']}, "
                             f"world_size={state['world_size']}; this loader has seed={self.seed}, "
                             f"world_size={self.world_size}")
        self.epoch, self.group_cursor = state["epoch"], state["group_cursor"]
        self.row_cursor, self.token_offset = state["row_cursor"], state["token_offset"]
        self._rows = None

    # --- iteration -------------------------------------------------------------------------

    def _current_row(self) -> tuple[np.ndarray, int] | None:
        """The row under the cursors and its group index, moving past finished groups; None
        (after starting the next epoch) when this rank's groups of the epoch are used up."""
        while True:
            groups = self._my_groups(self.epoch)
            if self.group_cursor >= len(groups):
                self.epoch, self.group_cursor, self.row_cursor, self.token_offset = \
                    self.epoch + 1, 0, 0, 0
                return None
            if self._rows is None:
                first = sum(self._rows_in_group[g] for g in groups[:self.group_cursor]) if self.row_sharded else 0
                self._rows = self._read_group(groups[self.group_cursor], first)
            if self.row_cursor < len(self._rows):
                return self._rows[self.row_cursor], groups[self.group_cursor]
            self.group_cursor, self.row_cursor, self.token_offset = self.group_cursor + 1, 0, 0
            self._rows = None

    def _take(self, n: int) -> np.ndarray:
        """The next n tokens of this rank's stream, advancing the cursors."""
        out, got, empty_epochs = [], 0, 0
        while got < n:
            current = self._current_row()
            if current is None:
                empty_epochs = empty_epochs + 1 if got == 0 else 0
                if empty_epochs > 1:
                    raise ValueError("no tokens to read: the selected split/sessions are empty")
                continue
            row, group = current
            if self.permute_units:
                row = self._permuted_row(group, row)
            piece = row[self.token_offset:self.token_offset + (n - got)]
            out.append(piece)
            got += piece.size
            self.token_offset += piece.size
            if self.token_offset >= row.size:
                self.row_cursor, self.token_offset = self.row_cursor + 1, 0
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _take_window(self, n: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The next n tokens of one row and their (num_units, phase) prefix, advancing the cursors;
        a row's last window ends at the row's end (it may overlap the window before)."""
        empty_epochs = 0
        while True:
            current = self._current_row()
            if current is None:
                empty_epochs += 1
                if empty_epochs > 1:
                    raise ValueError(f"no row of the selected split/sessions has the seq_len + 1 = "
                                     f"{n} tokens a unit-count-prefix window needs; lower "
                                     "data.seq_len")
                continue
            row, group = current
            if row.size < n:
                if not self._short_rows_warned:
                    warnings.warn(f"unit-count prefix: skipping rows shorter than seq_len + 1 = {n} "
                                  "tokens (windows never cross rows); lower data.seq_len to use them",
                                  stacklevel=2)
                    self._short_rows_warned = True
                self.row_cursor, self.token_offset = self.row_cursor + 1, 0
                continue
            if self.permute_units:
                row = self._permuted_row(group, row)
            start = min(self.token_offset, row.size - n)
            self.token_offset = start + n
            if self.token_offset >= row.size:
                self.row_cursor, self.token_offset = self.row_cursor + 1, 0
            return row[start:start + n], window_prefix(row_num_units(row), start)

    def _permuted_row(self, group: int, row: np.ndarray) -> np.ndarray:
        """``row`` with its units reordered by the permutation of (seed, epoch, group, row)."""
        key = (self.epoch, group, self.row_cursor)
        if self._permuted is None or self._permuted[0] != key:
            rng = np.random.default_rng([self.seed, *key])
            self._permuted = (key, permute_row_units(row, rng))
        return self._permuted[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Windows are consecutive, non-overlapping stretches of L + 1 tokens. They stay uint8 (one
        # byte a token) until the model's device widens them, so the loader moves 8x less data.
        L = self.seq_len
        if self.unit_count_prefix:
            windows = [self._take_window(L + 1) for _ in range(self.batch_size)]
            t = torch.from_numpy(np.stack([w for w, _ in windows]).astype(np.uint8))
            return t[:, :-1], t[:, 1:], torch.tensor([p for _, p in windows], dtype=torch.int64)
        tokens = np.array(self._take(self.batch_size * (L + 1)), dtype=np.uint8, copy=True)
        t = torch.from_numpy(tokens.reshape(self.batch_size, L + 1))
        return t[:, :-1], t[:, 1:]


def iter_eval_windows(tokens: np.ndarray, seq_len: int) -> Iterator[tuple[int, np.ndarray]]:
    """Windows for scoring one row: yields (start, window) with window = tokens[start:start+L+1]
    for start = 0, L, 2L, ...; the model sees window[:-1] and is scored on window[1:], so each
    token but the first is scored once."""
    for start in range(0, max(tokens.size - 1, 0), seq_len):
        yield start, tokens[start:start + seq_len + 1]


def row_num_units(tokens: np.ndarray) -> int:
    """Units per bin of one tokenized row (it starts with a separator and holds whole bins)."""
    tokens = np.asarray(tokens)
    if tokens.size == 0 or tokens[0] != SEPARATOR:
        raise ValueError("a tokenized row must start with the separator 255")
    later = np.flatnonzero(tokens[1:] == SEPARATOR)
    return int(later[0]) if later.size else int(tokens.size - 1)


def permute_row_units(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of one tokenized row with its units reordered by one random permutation (the same
    in every bin): the tokens of ``counts[perm]`` for the row's ``counts``."""
    n = row_num_units(tokens)
    grid = np.asarray(tokens).reshape(-1, n + 1)
    perm = rng.permutation(n)
    out = grid.copy()
    out[:, 1:] = grid[:, 1:][:, perm]
    return out.reshape(-1)
