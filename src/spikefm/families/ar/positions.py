"""Where a token sits inside its bin, derived from the separators on the fly (``positions="bin"``).

A Neural Pile row is ``[255, c_1..c_n]`` per bin, and the only cue to a session's unit count n is
the distance between separators. A plain decoder sees token positions only, so "the same unit one
bin ago" is n + 1 tokens back, a distance it has to learn per session; on a session it was not
trained on it has to infer n first. The ``"bin"`` layout gives every token three extra facts,
computed from the tokens up to and including it (so causality holds, and the token format stays
Neural-Pile compatible):

    unit   index within the bin: 0 for the separator, u for the count of unit u
    bin    number of separators so far (the bin index, relative to the window)
    state  0: no separator seen yet (phase unknown); 1: the bin length n is not known yet (fewer
           than two separators, or the current bin is already longer than the previous one);
           2 + min(r, STATE_CAP): r = n - unit count tokens still to come in this bin, with n the
           length of the previous bin (so r = 0 means "the next token is a separator")

The model rotates some rotary pairs by the token position, some by ``unit`` and some by ``bin``
(pair i uses axis i mod 3), so attention can find "the same unit one bin ago" at a fixed rotary
offset whatever n is, and adds a learned embedding of ``state`` to the token embedding.

Shapes: B batch, L positions (a window, or the whole cached history when generating).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from spikefm.families.ar.tokens import SEPARATOR

__all__ = ["POSITION_LAYOUTS", "STATE_CAP", "NUM_STATES", "BinPositions", "bin_positions",
           "rope_axes", "rope_angles"]

#: Position layouts a :class:`~spikefm.families.ar.model.LlamaConfig` accepts.
POSITION_LAYOUTS = ("plain", "bin")
#: Remaining-count states above this are merged (bins wider than STATE_CAP units still get an
#: exact "separator next" state, r = 0).
STATE_CAP = 255
#: Rows of the state embedding: unknown phase, unknown length, then r = 0..STATE_CAP.
NUM_STATES = STATE_CAP + 3


class BinPositions(NamedTuple):
    """Per-token positions of the ``"bin"`` layout, each (B, L) int64."""

    unit_BL: torch.Tensor
    bin_BL: torch.Tensor
    state_BL: torch.Tensor


def bin_positions(tokens_BL: torch.Tensor) -> BinPositions:
    """Unit index, bin index and state of every token, from the tokens at or before it.

    Tokens before the first separator of the window get ``unit`` = their offset from the window
    start, ``bin`` = 0 and state 0: the phase is unknown there, and guessing it from the first
    separator would read the future.
    """
    if tokens_BL.ndim != 2:
        raise ValueError(f"tokens_BL must be 2-D (batch, length), got shape {tuple(tokens_BL.shape)}")
    B, L = tokens_BL.shape
    device = tokens_BL.device
    pos_BL = torch.arange(L, device=device).expand(B, L)
    is_sep_BL = tokens_BL == SEPARATOR
    # index of the latest separator at or before each position (-1: none yet)
    last_BL = torch.where(is_sep_BL, pos_BL, torch.full_like(pos_BL, -1)).cummax(dim=1).values
    seen_BL = last_BL >= 0
    unit_BL = torch.where(seen_BL, pos_BL - last_BL, pos_BL)
    bin_BL = is_sep_BL.long().cumsum(dim=1)
    # the separator before that one: the latest separator at position last - 1
    prev_BL = torch.where(last_BL >= 1, last_BL.gather(1, (last_BL - 1).clamp(min=0)),
                          torch.full_like(last_BL, -1))
    known_BL = seen_BL & (prev_BL >= 0)
    n_BL = last_BL - prev_BL - 1
    remaining_BL = n_BL - unit_BL
    known_BL = known_BL & (remaining_BL >= 0)
    state_BL = torch.where(known_BL, 2 + remaining_BL.clamp(0, STATE_CAP),
                           torch.where(seen_BL, torch.ones_like(pos_BL), torch.zeros_like(pos_BL)))
    return BinPositions(unit_BL, bin_BL, state_BL)


def rope_axes(head_dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(E/2,) int64: which position each rotary pair turns with, 0 token, 1 unit, 2 bin."""
    return torch.arange(head_dim // 2, device=device) % 3


def rope_angles(inv_freq: torch.Tensor, token_pos_L: torch.Tensor, pos: BinPositions
                ) -> torch.Tensor:
    """(B, L, E/2) rotary angles: pair i turns by ``inv_freq[i]`` times its axis's position.

    Args:
        inv_freq: (E/2,) float32 rotary frequencies.
        token_pos_L: (L,) absolute token positions (they continue across KV-cache calls).
        pos: the bin positions of the same L tokens.
    """
    axes = rope_axes(2 * inv_freq.shape[0], device=inv_freq.device)
    B, L = pos.unit_BL.shape
    stacked_BL3 = torch.stack([token_pos_L.expand(B, L), pos.unit_BL, pos.bin_BL], dim=-1)
    chosen_BLE = stacked_BL3[..., axes].float()  # (B, L, E/2): each pair's own position
    return chosen_BLE * inv_freq
