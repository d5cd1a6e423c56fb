"""Per-sample masking schemes and the masked Poisson loss for masked modeling (NDT family).

Shape legend (README "Conventions"): B batch, T time bins, N units (padded to the batch maximum).

The four training schemes follow the multi-task masking recipe (Zhang et al. 2024):

- ``neuron``: a random subset of the sample's valid units is masked in every bin (co-smoothing).
- ``causal``: bins are masked for every unit and the model attends causally (forward
  prediction). Which bins, by ``causal_mode``: ``random`` (default of the NDT family): a random
  ``causal_ratio`` of the time steps, so every position of the window is trained to be predicted
  from the (partly visible) past, as the benchmark's forward-prediction walk scores it;
  ``prefix``: every bin from a random start on (the start uniform over the last ``causal_ratio``
  of the window); ``mixed``: ``random`` or ``prefix``, drawn per sample with equal odds (the
  prefix half practises predicting several bins in a row, as the walk's chunks ask);
  ``last``: the final ``causal_ratio`` of the bins (the first NDT recipe, which
  never trains the positions before them); ``spans``: runs of :data:`SPAN_BINS` bins on a grid
  with a random offset, a random ``causal_ratio`` of the runs hidden, so each hidden run is
  predicted from the visible past before it, as a walk chunk is.
- ``inter_region``: one brain region present in the sample is masked entirely; it is the target.
- ``intra_region``: every unit outside one target region is masked in the input (context removed,
  not scored) and a random ``intra_ratio`` of the target region's units is masked and scored.

Contracts kept by every function here, which the public reference code did not keep:

- Masks are drawn per sample from an explicit ``torch.Generator``; nothing is shared across the
  batch and nothing depends on global RNG state.
- Mask draws depend only on shapes, ``unit_valid_BN`` and ``region_BN``, never on the counts, so
  changing counts at target entries cannot change which entries are masked.
- Inputs are zero at every masked entry and at padding; targets are the original counts.
- Padding (``unit_valid_BN`` False) never enters the loss mask.
- :func:`masked_poisson_loss` averages within each scheme and then combines schemes with explicit
  weights, so a scheme that masks more entries does not weigh more.

A sample whose valid units carry fewer than two distinct regions (region ids ``>= 0``) cannot do
``inter_region`` or ``intra_region``; it falls back to ``neuron`` masking and its entry in the
returned ``scheme_B`` says ``neuron`` (the scheme actually applied, which is also the prompt the
model should see and the bucket the loss should average it into).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

SCHEMES: tuple[str, ...] = ("neuron", "causal", "inter_region", "intra_region")
NUM_SCHEMES = len(SCHEMES)
#: How the ``causal`` scheme picks its masked bins (see the module docstring).
CAUSAL_MODES: tuple[str, ...] = ("random", "prefix", "last", "mixed", "spans")
#: Length (bins) of the hidden runs of ``causal_mode="spans"``: the forward-prediction walk's chunk.
SPAN_BINS = 10


def _expect(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ValueError unless ``t`` is a tensor of exactly this shape and dtype."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        kind = str(dtype).removeprefix("torch.")
        raise ValueError(f"{name} must be a {kind} tensor of shape {shape}, got {got}")

__all__ = [
    "SCHEMES",
    "NUM_SCHEMES",
    "CAUSAL_MODES",
    "scheme_id",
    "draw_schemes",
    "MaskedBatch",
    "apply_masks",
    "mask_entries",
    "mask_units",
    "mask_last_bins",
    "mask_region",
    "mask_within_region",
    "masked_poisson_loss",
]


def scheme_id(name: str) -> int:
    """Index of a scheme name in :data:`SCHEMES`; ValueError listing valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"scheme name must be a str, got {type(name).__name__}")
    try:
        return SCHEMES.index(name)
    except ValueError:
        raise ValueError(f"unknown masking scheme {name!r}; valid schemes: {', '.join(SCHEMES)}") from None


def _resolve_scheme_names(schemes: str | Sequence[str]) -> list[str]:
    if isinstance(schemes, str):
        schemes = [schemes]
    names = list(schemes)
    if not names:
        raise ValueError(f"schemes must name at least one of {SCHEMES} or 'all', got an empty list")
    if "all" in names:
        if len(names) != 1:
            raise ValueError(f"'all' cannot be combined with other schemes, got {names}")
        return list(SCHEMES)
    for name in names:
        scheme_id(name)
    if len(set(names)) != len(names):
        raise ValueError(f"schemes contains duplicates: {names}")
    return names


def draw_schemes(
    batch_size: int, schemes: str | Sequence[str], generator: torch.Generator
) -> torch.Tensor:
    """Draw one masking scheme per sample, uniformly over ``schemes``.

    Args:
        batch_size: number of samples B (>= 0).
        schemes: scheme names from :data:`SCHEMES`, or ``"all"`` / ``["all"]`` for every scheme.
        generator: seeded generator; the draw is made on its device.

    Returns:
        LongTensor_B of scheme ids (indices into :data:`SCHEMES`), on the generator's device.
    """
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    ids = torch.tensor([scheme_id(n) for n in _resolve_scheme_names(schemes)], dtype=torch.long)
    pick_B = torch.randint(len(ids), (batch_size,), generator=generator, device=generator.device)
    return ids.to(pick_B.device)[pick_B]


@dataclass
class MaskedBatch:
    """A batch ready for a masked model and :func:`masked_poisson_loss`.

    Attributes:
        inputs_BTN: float counts with every masked entry and all padding set to 0.
        targets_BTN: the original counts (the tensor that was passed in, not a copy).
        loss_mask_BTN: bool, True at entries that are scored; never True at padding.
        causal_B: bool, True where the model must attend causally.
        scheme_B: int64 scheme ids actually applied (after the single-region fallback).
        input_mask_BTN: bool, True at valid entries zeroed in the input (a superset of
            ``loss_mask_BTN``; for ``intra_region`` it also holds the unscored context).
    """

    inputs_BTN: torch.Tensor
    targets_BTN: torch.Tensor
    loss_mask_BTN: torch.Tensor
    causal_B: torch.Tensor
    scheme_B: torch.Tensor
    input_mask_BTN: torch.Tensor


def _check_batch(counts_BTN: torch.Tensor, unit_valid_BN: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(counts_BTN, torch.Tensor) or counts_BTN.ndim != 3:
        raise ValueError(
            "counts_BTN must be a 3-D (batch, bins, units) tensor, got "
            f"{tuple(counts_BTN.shape) if isinstance(counts_BTN, torch.Tensor) else type(counts_BTN)}"
        )
    if not counts_BTN.is_floating_point():
        raise TypeError(f"counts_BTN must be a float tensor, got {counts_BTN.dtype}; call .float()")
    B, T, N = counts_BTN.shape
    _expect("unit_valid_BN", unit_valid_BN, (B, N), torch.bool)
    return B, T, N


def _check_ratio(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a float in (0, 1], got {value!r}")


def _random_subset(
    candidates_BN: torch.Tensor, k_B: torch.Tensor, scores_BN: torch.Tensor
) -> torch.Tensor:
    """Per row, the ``k_B[b]`` candidates with the lowest uniform scores (a uniform random subset)."""
    scores_BN = scores_BN.masked_fill(~candidates_BN, 2.0)  # non-candidates sort last
    rank_BN = scores_BN.argsort(dim=1).argsort(dim=1)
    return candidates_BN & (rank_BN < k_B[:, None])


def _span_mask(time_scores_BT: torch.Tensor, ratio: float, pos_T: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the bins of a random ``ratio`` of the runs of :data:`SPAN_BINS` bins (grid offset
    from the last score of each row, runs chosen by the first scores), at least one run."""
    B, T = time_scores_BT.shape
    L = SPAN_BINS
    offset_B = torch.floor(time_scores_BT[:, -1] * L).long().clamp(0, L - 1)
    run_BT = (pos_T[None, :] + offset_B[:, None]) // L  # run index of each bin
    n_runs = (T + L - 2) // L + 1 if T else 0  # runs of the largest offset, L - 1 (no device sync)
    # runs present in each row (the first run may be cut short by the offset; every row has them all
    # but possibly an empty last one)
    present_BR = torch.zeros((B, n_runs), dtype=torch.bool, device=pos_T.device)
    present_BR.scatter_(1, run_BT, True)
    scores_BR = time_scores_BT[:, torch.arange(n_runs, device=pos_T.device) % T]
    chosen_BR = _random_subset(present_BR, _num_to_mask(present_BR.sum(1), ratio), scores_BR)
    return chosen_BR.gather(1, run_BT)


def _num_to_mask(total_B: torch.Tensor, ratio: float) -> torch.Tensor:
    """round(ratio * total), at least 1 and at most total (0 when total is 0)."""
    k_B = torch.round(total_B.to(torch.float64) * ratio).long()
    return torch.minimum(k_B.clamp_min(1), total_B)


def _pick_region(
    unit_valid_BN: torch.Tensor, region_BN: torch.Tensor, scores_BN: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly pick one region per sample among the distinct regions of its valid units.

    Returns (target_region_B, num_regions_B); target is -1 where a sample has no region.
    """
    big = torch.iinfo(torch.long).max
    keyed_BN = torch.where(unit_valid_BN & (region_BN >= 0), region_BN, torch.full_like(region_BN, big))
    sorted_BN, _ = keyed_BN.sort(dim=1)
    first_BN = sorted_BN != big
    first_BN[:, 1:] &= sorted_BN[:, 1:] != sorted_BN[:, :-1]
    num_regions_B = first_BN.sum(dim=1)
    pos_B = scores_BN.masked_fill(~first_BN, -1.0).argmax(dim=1)
    target_B = sorted_BN.gather(1, pos_B[:, None]).squeeze(1)
    target_B = torch.where(num_regions_B > 0, target_B, torch.full_like(target_B, -1))
    return target_B, num_regions_B


def apply_masks(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    region_BN: torch.Tensor,
    scheme_B: torch.Tensor,
    generator: torch.Generator,
    *,
    neuron_ratio: float = 0.3,
    causal_ratio: float = 0.3,
    intra_ratio: float = 0.5,
    causal_mode: str = "last",
) -> MaskedBatch:
    """Mask each sample with its own scheme and its own random draw.

    Args:
        counts_BTN: float spike counts, zero at padded units.
        unit_valid_BN: bool, True for real units.
        region_BN: int64 region id per unit (>= 0), -1 for padding or unknown region.
        scheme_B: int64 scheme ids (see :func:`draw_schemes`).
        generator: seeded generator; three (B, N) and then one (B, T) uniform tensors are drawn
            from it on every call, whatever the schemes (and one (B,) more with
            ``causal_mode="mixed"``), so the stream advances identically for equal shapes.
        neuron_ratio: fraction of valid units masked by ``neuron`` (rounded, at least one unit).
        causal_ratio: ``causal`` masks this fraction of the bins (rounded, at least one bin): random
            time steps (``causal_mode="random"``), the last ones (``"last"``), every bin from a
            start drawn uniformly over the last ``causal_ratio`` of the window (``"prefix"``), or
            random / prefix drawn per sample (``"mixed"``), or runs of :data:`SPAN_BINS` bins
            (``"spans"``: the window cut into runs at a random offset, ``round(causal_ratio *
            runs)`` of them hidden, at least one).
        causal_mode: one of :data:`CAUSAL_MODES`.
        intra_ratio: fraction of the target region's units scored by ``intra_region``
            (rounded, at least one unit).

    Returns:
        :class:`MaskedBatch`. Valid units with region -1 can never be a target region; in
        ``intra_region`` they count as "outside the target" and are masked from the input.
    """
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    _expect("region_BN", region_BN, (B, N), torch.long)
    _expect("scheme_B", scheme_B, (B,), torch.long)
    if B and (int(scheme_B.min()) < 0 or int(scheme_B.max()) >= NUM_SCHEMES):
        raise ValueError(f"scheme_B ids must lie in [0, {NUM_SCHEMES}) (schemes {SCHEMES}), got {scheme_B.tolist()}")
    _check_ratio("neuron_ratio", neuron_ratio)
    _check_ratio("causal_ratio", causal_ratio)
    _check_ratio("intra_ratio", intra_ratio)
    if causal_mode not in CAUSAL_MODES:
        raise ValueError(f"causal_mode must be one of {', '.join(CAUSAL_MODES)}, got {causal_mode!r}")

    device = counts_BTN.device
    gdev = generator.device
    neuron_scores_BN = torch.rand((B, N), generator=generator, device=gdev).to(device)
    region_scores_BN = torch.rand((B, N), generator=generator, device=gdev).to(device)
    intra_scores_BN = torch.rand((B, N), generator=generator, device=gdev).to(device)
    time_scores_BT = torch.rand((B, T), generator=generator, device=gdev).to(device)
    prefix_B = (torch.rand((B,), generator=generator, device=gdev).to(device) < 0.5
                if causal_mode == "mixed" else None)

    valid_BN = unit_valid_BN.to(device)
    region_BN = region_BN.to(device)
    scheme_B = scheme_B.to(device)

    # neuron: random subset of valid units, all bins
    neuron_units_BN = _random_subset(valid_BN, _num_to_mask(valid_BN.sum(1), neuron_ratio), neuron_scores_BN)

    # causal: k bins per sample (all valid units), chosen by causal_mode
    k_causal = min(max(1, round(causal_ratio * T)), T) if T else 0
    pos_T = torch.arange(T, device=device)
    if causal_mode == "last":
        future_BT = (pos_T >= T - k_causal)[None, :].expand(B, T)
    else:
        random_BT = _random_subset(torch.ones((B, T), dtype=torch.bool, device=device),
                                   torch.full((B,), k_causal, dtype=torch.long, device=device), time_scores_BT)
        # prefix: every bin from a start uniform over the last k bins
        start_B = T - 1 - torch.floor(time_scores_BT[:, 0] * k_causal).long().clamp_max(max(k_causal - 1, 0))
        suffix_BT = pos_T[None, :] >= start_B[:, None]
        if causal_mode == "random":
            future_BT = random_BT
        elif causal_mode == "spans":
            future_BT = _span_mask(time_scores_BT, causal_ratio, pos_T)
        elif causal_mode == "prefix":
            future_BT = suffix_BT
        else:  # mixed
            future_BT = torch.where(prefix_B[:, None], suffix_BT, random_BT)

    # region schemes, with the single-region fallback to neuron
    target_region_B, num_regions_B = _pick_region(valid_BN, region_BN, region_scores_BN)
    is_region_scheme_B = (scheme_B == scheme_id("inter_region")) | (scheme_B == scheme_id("intra_region"))
    fallback_B = is_region_scheme_B & (num_regions_B < 2)
    scheme_B = torch.where(fallback_B, torch.full_like(scheme_B, scheme_id("neuron")), scheme_B)
    target_BN = valid_BN & (region_BN == target_region_B[:, None])
    intra_units_BN = _random_subset(target_BN, _num_to_mask(target_BN.sum(1), intra_ratio), intra_scores_BN)

    is_s = [(scheme_B == i)[:, None] for i in range(NUM_SCHEMES)]  # each (B, 1)
    n_, c_, inter_, intra_ = is_s
    loss_units_BN = (n_ & neuron_units_BN) | (inter_ & target_BN) | (intra_ & intra_units_BN)
    input_units_BN = loss_units_BN | (intra_ & valid_BN & ~target_BN)
    causal_BN = c_ & valid_BN  # units masked at the future bins

    loss_mask_BTN = loss_units_BN[:, None, :] | (causal_BN[:, None, :] & future_BT[:, :, None])
    input_mask_BTN = input_units_BN[:, None, :] | (causal_BN[:, None, :] & future_BT[:, :, None])
    keep_BTN = valid_BN[:, None, :] & ~input_mask_BTN
    inputs_BTN = torch.where(keep_BTN, counts_BTN, torch.zeros((), dtype=counts_BTN.dtype, device=device))
    return MaskedBatch(
        inputs_BTN=inputs_BTN,
        targets_BTN=counts_BTN,
        loss_mask_BTN=loss_mask_BTN,
        causal_B=c_.squeeze(1),
        scheme_B=scheme_B,
        input_mask_BTN=input_mask_BTN,
    )


# ----------------------------------------------------------------------------------------------
# Deterministic masks for evaluation


def _as_scheme_B(scheme: str | torch.Tensor, B: int, device: torch.device) -> torch.Tensor:
    if isinstance(scheme, str):
        return torch.full((B,), scheme_id(scheme), dtype=torch.long, device=device)
    _expect("scheme (when not a name)", scheme, (B,), torch.long)
    return scheme.to(device)


def _as_causal_B(causal: bool | torch.Tensor, B: int, device: torch.device) -> torch.Tensor:
    if isinstance(causal, bool):
        return torch.full((B,), causal, dtype=torch.bool, device=device)
    _expect("causal (when not a bool)", causal, (B,), torch.bool)
    return causal.to(device)


def mask_entries(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    input_mask_BTN: torch.Tensor,
    loss_mask_BTN: torch.Tensor | None = None,
    *,
    scheme: str | torch.Tensor = "neuron",
    causal: bool | torch.Tensor = False,
) -> MaskedBatch:
    """Mask arbitrary given entries (the general deterministic form used by the helpers below).

    Args:
        counts_BTN, unit_valid_BN: as in :func:`apply_masks`.
        input_mask_BTN: bool, entries to zero in the input.
        loss_mask_BTN: bool, entries to score; defaults to ``input_mask_BTN``. Must be a subset
            of ``input_mask_BTN`` (scoring a visible entry would leak the target); padding is
            dropped from both.
        scheme: prompt scheme for every sample (name) or per sample (LongTensor_B).
        causal: causal attention for every sample (bool) or per sample (BoolTensor_B).
    """
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    device = counts_BTN.device
    for name, m in (("input_mask_BTN", input_mask_BTN), ("loss_mask_BTN", loss_mask_BTN)):
        if m is not None:
            _expect(name, m, (B, T, N), torch.bool)
    valid_B1N = unit_valid_BN.to(device)[:, None, :]
    input_mask_BTN = input_mask_BTN.to(device) & valid_B1N
    if loss_mask_BTN is None:
        loss_mask_BTN = input_mask_BTN
    else:
        loss_mask_BTN = loss_mask_BTN.to(device) & valid_B1N
        if bool((loss_mask_BTN & ~input_mask_BTN).any()):
            raise ValueError(
                "loss_mask_BTN scores entries that are visible in the input; mask them in input_mask_BTN too"
            )
    keep_BTN = valid_B1N & ~input_mask_BTN
    inputs_BTN = torch.where(keep_BTN, counts_BTN, torch.zeros((), dtype=counts_BTN.dtype, device=device))
    return MaskedBatch(
        inputs_BTN=inputs_BTN,
        targets_BTN=counts_BTN,
        loss_mask_BTN=loss_mask_BTN,
        causal_B=_as_causal_B(causal, B, device),
        scheme_B=_as_scheme_B(scheme, B, device),
        input_mask_BTN=input_mask_BTN,
    )


def mask_units(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    unit_mask_BN: torch.Tensor,
    *,
    scheme: str | torch.Tensor = "neuron",
) -> MaskedBatch:
    """Mask the given units in every bin and score them (co-smoothing, e.g. leave-one-out).

    Args:
        unit_mask_BN: bool, True for units to hold out (padding is ignored).
    """
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    _expect("unit_mask_BN", unit_mask_BN, (B, N), torch.bool)
    m_BTN = unit_mask_BN.to(counts_BTN.device)[:, None, :].expand(B, T, N)
    return mask_entries(counts_BTN, unit_valid_BN, m_BTN, scheme=scheme, causal=False)


def mask_last_bins(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    num_bins: int,
    *,
    causal: bool = True,
) -> MaskedBatch:
    """Mask and score the final ``num_bins`` bins of every valid unit (forward prediction).

    Uses the ``causal`` prompt; ``causal=True`` (default) also sets causal attention, matching
    the training scheme.
    """
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    if not isinstance(num_bins, int) or not 0 < num_bins <= T:
        raise ValueError(f"num_bins must be an int in [1, {T}] (the window has {T} bins), got {num_bins!r}")
    future_T = torch.arange(T, device=counts_BTN.device) >= T - num_bins
    m_BTN = future_T[None, :, None].expand(B, T, N)
    return mask_entries(counts_BTN, unit_valid_BN, m_BTN, scheme="causal", causal=causal)


def _check_region_args(region_BN: torch.Tensor, target_region_B: torch.Tensor, B: int, N: int) -> None:
    _expect("region_BN", region_BN, (B, N), torch.long)
    _expect("target_region_B", target_region_B, (B,), torch.long)


def mask_region(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    region_BN: torch.Tensor,
    target_region_B: torch.Tensor,
) -> MaskedBatch:
    """Hold out one given region per sample entirely and score it (``inter_region`` evaluation)."""
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    _check_region_args(region_BN, target_region_B, B, N)
    device = counts_BTN.device
    target_BN = region_BN.to(device) == target_region_B.to(device)[:, None]
    return mask_units(counts_BTN, unit_valid_BN, target_BN, scheme="inter_region")


def mask_within_region(
    counts_BTN: torch.Tensor,
    unit_valid_BN: torch.Tensor,
    region_BN: torch.Tensor,
    target_region_B: torch.Tensor,
    unit_mask_BN: torch.Tensor,
) -> MaskedBatch:
    """``intra_region`` evaluation: hide every unit outside the target region (unscored) and hide
    and score the units of ``unit_mask_BN`` that lie inside the target region."""
    B, T, N = _check_batch(counts_BTN, unit_valid_BN)
    _check_region_args(region_BN, target_region_B, B, N)
    _expect("unit_mask_BN", unit_mask_BN, (B, N), torch.bool)
    device = counts_BTN.device
    target_BN = region_BN.to(device) == target_region_B.to(device)[:, None]
    scored_BN = target_BN & unit_mask_BN.to(device)
    hidden_BN = scored_BN | ~target_BN
    return mask_entries(
        counts_BTN,
        unit_valid_BN,
        hidden_BN[:, None, :].expand(B, T, N),
        scored_BN[:, None, :].expand(B, T, N),
        scheme="intra_region",
        causal=False,
    )


# ----------------------------------------------------------------------------------------------
# Loss


def masked_poisson_loss(
    log_rates_BTN: torch.Tensor,
    targets_BTN: torch.Tensor,
    loss_mask_BTN: torch.Tensor,
    scheme_B: torch.Tensor,
    scheme_weights: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Poisson NLL averaged within each scheme, then a weighted mean over the schemes present.

    ``loss = sum_s w_s * L_s / sum_s w_s`` over schemes s with at least one scored entry in the
    batch, where ``L_s`` is the mean of ``exp(l) - y * l`` (``poisson_nll_loss`` with
    ``log_input=True, full=False``) over scored entries of samples with scheme s. Unscored
    entries may hold any value, even inf or nan (e.g. in targets at padding); they are selected
    away, not multiplied, and get zero gradient.

    Args:
        log_rates_BTN: predicted log expected counts per bin.
        targets_BTN: observed counts.
        loss_mask_BTN: bool, entries to score.
        scheme_B: int64 scheme id per sample.
        scheme_weights: weight per scheme name (missing names weigh 1.0; default all 1.0).
            Weights must be >= 0 and the schemes present must not all weigh 0.

    Returns:
        (loss, stats): a 0-d tensor, and a dict with ``loss/{scheme}`` (mean NLL, float) and
        ``count/{scheme}`` (scored entries, as float) for each scheme present. With no scored
        entry at all the loss is a zero that still carries a graph to ``log_rates_BTN``.
    """
    if log_rates_BTN.shape != targets_BTN.shape or loss_mask_BTN.shape != targets_BTN.shape:
        raise ValueError(
            "log_rates_BTN, targets_BTN and loss_mask_BTN must share one (B, T, N) shape, got "
            f"{tuple(log_rates_BTN.shape)}, {tuple(targets_BTN.shape)}, {tuple(loss_mask_BTN.shape)}"
        )
    if loss_mask_BTN.dtype != torch.bool:
        raise TypeError(f"loss_mask_BTN must be bool, got {loss_mask_BTN.dtype}")
    B = targets_BTN.shape[0]
    _expect("scheme_B", scheme_B, (B,), torch.long)
    weights = {name: 1.0 for name in SCHEMES}
    for name, w in (scheme_weights or {}).items():
        scheme_id(name)
        if not isinstance(w, (int, float)) or not float(w) >= 0.0:
            raise ValueError(f"scheme weight for {name!r} must be a number >= 0, got {w!r}")
        weights[name] = float(w)

    device = log_rates_BTN.device
    zero = torch.zeros((), dtype=log_rates_BTN.dtype, device=device)
    # Select before the NLL too, so a non-finite value at an unscored entry (padding) cannot
    # reach the loss or its gradient (where's backward would give inf * 0 = nan otherwise).
    log_rates_BTN = torch.where(loss_mask_BTN, log_rates_BTN, zero)
    targets_BTN = targets_BTN.to(log_rates_BTN.dtype)
    nll_BTN = F.poisson_nll_loss(log_rates_BTN, targets_BTN, log_input=True, full=False, reduction="none")
    nll_BTN = torch.where(loss_mask_BTN, nll_BTN, zero)
    zeros_S = torch.zeros(NUM_SCHEMES, dtype=nll_BTN.dtype, device=device)
    scheme_B = scheme_B.to(device)
    sum_S = zeros_S.index_add(0, scheme_B, nll_BTN.sum(dim=(1, 2)))
    count_S = zeros_S.index_add(0, scheme_B, loss_mask_BTN.sum(dim=(1, 2)).to(nll_BTN.dtype))
    present_S = count_S > 0
    mean_S = sum_S / count_S.clamp_min(1.0)
    w_S = torch.tensor([weights[n] for n in SCHEMES], dtype=nll_BTN.dtype, device=device) * present_S
    if bool(present_S.any()) and float(w_S.sum()) <= 0.0:
        present = [n for n, p in zip(SCHEMES, present_S.tolist()) if p]
        raise ValueError(f"every scheme present in the batch ({present}) has weight 0; give one a positive weight")
    # With nothing scored, w_S is all zero and the loss is an exact 0 that keeps its graph.
    loss = (w_S * mean_S).sum() / w_S.sum().clamp_min(torch.finfo(nll_BTN.dtype).tiny)

    stats: dict[str, float] = {}
    for name, p, m, c in zip(SCHEMES, present_S.tolist(), mean_S.detach().tolist(), count_S.tolist()):
        if p:
            stats[f"loss/{name}"] = m
            stats[f"count/{name}"] = c
    return loss, stats
