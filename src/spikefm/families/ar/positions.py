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

Unit-count prefix (``LlamaConfig.unit_count_prefix``): the caller, who knows the row a window was
cut from, passes ``prefix_B2`` = (n, phase) per sequence, with phase the index of the window's
first token within its bin (0 when the window starts with a separator; see :func:`window_prefix`).
The model puts one extra position in front of the tokens whose embedding is a learned linear map
of :func:`prefix_features` (nothing is stored in the rows and the prefix is never a scored token).
With the ``"bin"`` layout the known n and phase also make every token's positions exact from the
first token on: no "phase unknown" or "length unknown" states.

Shapes: B batch, L positions (a window, or the whole cached history when generating).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from spikefm.families.ar.tokens import SEPARATOR

__all__ = ["POSITION_LAYOUTS", "STATE_CAP", "NUM_STATES", "BinPositions", "bin_positions",
           "rope_axes", "rope_angles", "PREFIX_FEATURES", "prefix_features", "window_prefix",
           "check_prefix"]

#: Position layouts a :class:`~spikefm.families.ar.model.LlamaConfig` accepts.
POSITION_LAYOUTS = ("plain", "bin")
#: Remaining-count states above this are merged (bins wider than STATE_CAP units still get an
#: exact "separator next" state, r = 0).
STATE_CAP = 255
#: Rows of the state embedding: unknown phase, unknown length, then r = 0..STATE_CAP.
NUM_STATES = STATE_CAP + 3
#: Sinusoid frequencies per prefix number; periods from 2 to 2 * 2048 tokens, geometrically spaced.
_PREFIX_FREQS = 16
#: Width of :func:`prefix_features`: sin and cos of n + 1 and of the phase, plus log(n + 1).
PREFIX_FEATURES = 4 * _PREFIX_FREQS + 1


class BinPositions(NamedTuple):
    """Per-token positions of the ``"bin"`` layout, each (B, L) int64."""

    unit_BL: torch.Tensor
    bin_BL: torch.Tensor
    state_BL: torch.Tensor


def bin_positions(tokens_BL: torch.Tensor, prefix_B2: torch.Tensor | None = None) -> BinPositions:
    """Unit index, bin index and state of every token, from the tokens at or before it.

    Without a prefix, tokens before the first separator of the window get ``unit`` = their offset
    from the window start, ``bin`` = 0 and state 0: the phase is unknown there, and guessing it
    from the first separator would read the future. With ``prefix_B2`` (B, 2) = (n, phase) per row
    (the tokens must start at that phase of bins of n units), ``unit`` counts from the (unseen)
    separator that opened the first token's bin and every state is ``2 + min(n - unit, STATE_CAP)``.
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
    if prefix_B2 is not None:
        n_B1, phase_B1 = prefix_B2[:, :1].long(), prefix_B2[:, 1:].long()
        unit_BL = torch.where(seen_BL, unit_BL, pos_BL + phase_B1)
        state_BL = 2 + (n_B1 - unit_BL).clamp(0, STATE_CAP)
    return BinPositions(unit_BL, bin_BL, state_BL)


def window_prefix(num_units: int, start: int) -> tuple[int, int]:
    """(n, phase) of a window whose first token is token ``start`` of a row of bins of
    ``num_units`` units (a row starts with a separator)."""
    return num_units, start % (num_units + 1)


def check_prefix(prefix_B2, batch_size: int) -> torch.Tensor:
    """``prefix_B2`` as a (B, 2) int64 tensor of (n >= 1, 0 <= phase <= n); ValueError otherwise."""
    if not isinstance(prefix_B2, torch.Tensor) or prefix_B2.dtype.is_floating_point \
            or tuple(prefix_B2.shape) != (batch_size, 2):
        raise ValueError(f"prefix_B2 must be an integer tensor of shape ({batch_size}, 2) holding "
                         "(num_units, phase) per sequence, got "
                         f"{getattr(prefix_B2, 'shape', type(prefix_B2).__name__)}; build it with "
                         "spikefm.families.ar.positions.window_prefix")
    prefix_B2 = prefix_B2.long()
    n_B, phase_B = prefix_B2[:, 0], prefix_B2[:, 1]
    if bool((n_B < 1).any()) or bool((phase_B < 0).any()) or bool((phase_B > n_B).any()):
        raise ValueError(f"prefix_B2 rows must be (num_units >= 1, 0 <= phase <= num_units), got "
                         f"{prefix_B2.tolist()[:4]}")
    return prefix_B2


def prefix_features(prefix_B2: torch.Tensor) -> torch.Tensor:
    """(B, PREFIX_FEATURES) float32 code of (n, phase): sin and cos of the bin length n + 1 and of
    the phase at frequencies spanning periods of 2 to 4096 tokens, and log(n + 1) / log(4096).

    A smooth code rather than a lookup table, so that a unit count never seen in training still
    lands between the codes of its neighbours.
    """
    x_B2 = torch.stack([prefix_B2[:, 0] + 1, prefix_B2[:, 1]], dim=-1).float()
    periods_K = 2.0 * 2048.0 ** (torch.arange(_PREFIX_FREQS, device=prefix_B2.device)
                                 / (_PREFIX_FREQS - 1))
    angles_B2K = x_B2[..., None] * (2 * torch.pi / periods_K)
    log_B1 = torch.log(x_B2[:, :1]) / torch.log(torch.tensor(4096.0))
    return torch.cat([angles_B2K.sin().flatten(1), angles_B2K.cos().flatten(1), log_B1], dim=-1)


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
