"""NDT training batches: windows of several sessions padded to one unit count, with mask seeds.

Shape legend: B batch, T bins per window, N units (padded to the batch maximum).
"""
from __future__ import annotations


import numpy as np
import torch

from spikefm.data.windows import SeededBatchLoader

__all__ = ["mask_seed", "MaskedWindowLoader", "collate_windows", "move_batch"]


def mask_seed(seed: int, rank: int, counter: int) -> int:
    """63-bit seed of the mask generator of one micro-batch (independent streams per rank/batch)."""
    state = np.random.SeedSequence([int(seed), int(rank), int(counter)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class MaskedWindowLoader(SeededBatchLoader):
    """A :class:`~spikefm.data.windows.WindowBatcher` whose batches carry a ``mask_seed``
    (:func:`mask_seed`); resumes exactly (see :class:`~spikefm.data.windows.SeededBatchLoader`)."""

    def __init__(self, batcher, seed: int, rank: int) -> None:
        super().__init__(batcher, seed, rank, seed_fn=mask_seed)


def collate_windows(windows: dict, items: list[tuple[str, int]]) -> dict:
    """A batch (the :class:`~spikefm.data.windows.WindowBatcher` layout) of the given
    (session id, window index) pairs, padded to the largest unit count."""
    ws = [windows[sid] for sid, _ in items]
    B, T, N = len(items), ws[0].num_bins, max(w.num_units for w in ws)
    counts = np.zeros((B, T, N), dtype=np.float32)
    valid = np.zeros((B, N), dtype=bool)
    region = np.full((B, N), -1, dtype=np.int64)
    for b, (w, (_, k)) in enumerate(zip(ws, items)):
        counts[b, :, :w.num_units] = w.counts[k]
        valid[b, :w.num_units] = True
        region[b, :w.num_units] = w.region_ids
    return {"counts_BTN": torch.from_numpy(counts), "unit_valid_BN": torch.from_numpy(valid),
            "region_BN": torch.from_numpy(region), "session_ids": [sid for sid, _ in items],
            "window_index_B": torch.tensor([k for _, k in items], dtype=torch.long)}


def move_batch(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor on ``device`` (other entries as they are)."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
