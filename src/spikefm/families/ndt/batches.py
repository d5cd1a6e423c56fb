"""NDT training batches: windows of several sessions padded to one unit count, with mask seeds.

Shape legend: B batch, T bins per window, N units (padded to the batch maximum).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["mask_seed", "MaskedWindowLoader", "collate_windows", "move_batch"]


def mask_seed(seed: int, rank: int, counter: int) -> int:
    """63-bit seed of the mask generator of one micro-batch (independent streams per rank/batch)."""
    state = np.random.SeedSequence([int(seed), int(rank), int(counter)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class MaskedWindowLoader:
    """Wraps a :class:`~spikefm.data.windows.WindowBatcher`; adds ``mask_seed`` to every batch.

    ``state_dict`` holds the batcher position and the batch counter, so a resumed run draws the
    same windows with the same masks.
    """

    def __init__(self, batcher, seed: int, rank: int) -> None:
        self.batcher, self.seed, self.rank = batcher, int(seed), int(rank)
        self.counter = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batcher)
        batch["mask_seed"] = torch.tensor(mask_seed(self.seed, self.rank, self.counter), dtype=torch.long)
        self.counter += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batcher": self.batcher.state_dict(), "counter": self.counter, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has {self.seed}")
        self.batcher.load_state_dict(state["batcher"])
        self.counter = int(state["counter"])


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
