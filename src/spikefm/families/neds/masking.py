"""NEDS multi-task masks as pure functions, and the per-modality loss.

Shape legend: B batch, T bins, N units, C continuous channels, J labels.

Schemes (one drawn per sample, never one per batch):

* ``encoding``: every spike bin hidden; behaviour and labels given (predict neurons from behaviour);
* ``decoding``: every behaviour bin and label hidden; spikes given (predict behaviour);
* ``spike``: ``round(ratio * T)`` random bins of the spike tokens hidden, behaviour given;
* ``behavior``: per continuous channel ``round(ratio * T)`` random bins hidden, each label hidden
  with probability ``ratio``; spikes given;
* ``cross``: the same ``round(ratio * T)`` random bins hidden in the spikes and in every channel,
  each label hidden with probability ``ratio``.

Entries missing in the data (NaN behaviour, a trial without the label, continuous windows without
labels) are hidden too but never scored. Nothing here modifies its inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SCHEMES", "NUM_SCHEMES", "DEFAULT_SCHEME_WEIGHTS", "draw_schemes", "Masks", "make_masks", "neds_loss"]

SCHEMES: tuple[str, ...] = ("encoding", "decoding", "spike", "behavior", "cross")
NUM_SCHEMES = len(SCHEMES)

#: Default relative probability of each scheme (``data.scheme_weights=()``): the two schemes the
#: evaluation asks for (encoding, decoding) 0.35 each, the random ones 0.1 each. Chosen on the
#: validation windows of synthetic seed 1 (benchmarks/bench_neds.py): against uniform drawing it
#: raised the decoding scores of the pretrained sessions.
DEFAULT_SCHEME_WEIGHTS: dict[str, float] = {"encoding": 0.35, "decoding": 0.35, "spike": 0.1, "behavior": 0.1,
                                            "cross": 0.1}


def draw_schemes(batch_size: int, allowed: list[str], generator: torch.Generator,
                 weights: list[float] | tuple[float, ...] | None = None) -> torch.Tensor:
    """(B,) int64 scheme ids (indices into :data:`SCHEMES`), drawn independently per sample.

    Args:
        batch_size: B.
        allowed: scheme names to draw from.
        generator: the random stream (CPU).
        weights: relative probability of each name in ``allowed`` (same length, >= 0, positive
            sum); None = uniform.
    """
    ids = torch.tensor([SCHEMES.index(s) for s in allowed], dtype=torch.long)
    if weights is None:
        return ids[torch.randint(len(ids), (batch_size,), generator=generator)]
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if w.shape != (len(ids),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"scheme weights must be {len(ids)} finite numbers >= 0 with a positive sum (one per "
                         f"scheme of {allowed}), got {list(weights)}")
    return ids[torch.multinomial(w, batch_size, replacement=True, generator=generator)]


@dataclass
class Masks:
    """Which entries the model does not see (``*_hidden``) and which the loss scores (``*_scored``).

    Attributes:
        scheme_B: scheme id per sample.
        spike_hidden_BT, behavior_hidden_BTC, label_hidden_BJ: bool, hidden from the model.
        spike_scored_BTN, behavior_scored_BTC, label_scored_BJ: bool, hidden by the mask AND present
            in the data (valid unit / non-NaN value / label present).
    """

    scheme_B: torch.Tensor
    spike_hidden_BT: torch.Tensor
    behavior_hidden_BTC: torch.Tensor
    label_hidden_BJ: torch.Tensor
    spike_scored_BTN: torch.Tensor
    behavior_scored_BTC: torch.Tensor
    label_scored_BJ: torch.Tensor


def _random_bins(B: int, T: int, ratio: float, generator: torch.Generator, extra: int = 1) -> torch.Tensor:
    """(B, extra, T) bool: exactly max(1, round(ratio * T)) True bins per row, uniformly chosen."""
    k = max(1, int(round(ratio * T)))
    order = torch.rand(B, extra, T, generator=generator).argsort(dim=-1)
    return order < k


def make_masks(scheme_B: torch.Tensor, *, num_bins: int, unit_valid_BN: torch.Tensor,
               behavior_valid_BTC: torch.Tensor, label_valid_BJ: torch.Tensor, ratio: float,
               generator: torch.Generator) -> Masks:
    """The masks of one batch (see the module docstring); a pure function of its arguments.

    Args:
        scheme_B: int64 scheme ids.
        num_bins: T.
        unit_valid_BN: bool, real (non-padding) units.
        behavior_valid_BTC: bool, recorded behaviour values.
        label_valid_BJ: bool, labels the trial has.
        ratio: the mask ratio in (0, 1] of the random schemes.
        generator: the random stream (CPU).
    """
    B, T = int(scheme_B.shape[0]), int(num_bins)
    C, J = int(behavior_valid_BTC.shape[-1]), int(label_valid_BJ.shape[-1])
    s = scheme_B.cpu()[:, None]
    enc, dec, spk, beh, crs = (s == SCHEMES.index(n) for n in SCHEMES)
    rand_spike_BT = _random_bins(B, T, ratio, generator)[:, 0]
    rand_beh_BCT = _random_bins(B, T, ratio, generator, extra=max(C, 1))[:, :C]
    rand_cross_BT = _random_bins(B, T, ratio, generator)[:, 0]
    rand_label_BJ = torch.rand(B, J, generator=generator) < ratio
    spike_mask_BT = enc | (spk & rand_spike_BT) | (crs & rand_cross_BT)
    beh_mask_BTC = (dec[..., None] | (beh[..., None] & rand_beh_BCT.transpose(1, 2))
                    | (crs[..., None] & rand_cross_BT[..., None]))
    label_mask_BJ = dec | ((beh | crs) & rand_label_BJ)
    dev = unit_valid_BN.device
    spike_mask_BT, beh_mask_BTC, label_mask_BJ = (m.to(dev) for m in (spike_mask_BT, beh_mask_BTC, label_mask_BJ))
    return Masks(
        scheme_B=scheme_B,
        spike_hidden_BT=spike_mask_BT,
        behavior_hidden_BTC=beh_mask_BTC | ~behavior_valid_BTC,
        label_hidden_BJ=label_mask_BJ | ~label_valid_BJ,
        spike_scored_BTN=spike_mask_BT[..., None] & unit_valid_BN[:, None, :],
        behavior_scored_BTC=beh_mask_BTC & behavior_valid_BTC,
        label_scored_BJ=label_mask_BJ & label_valid_BJ,
    )


def neds_loss(out: dict, counts_BTN: torch.Tensor, behavior_BTC: torch.Tensor, labels_BJ: torch.Tensor,
              masks: Masks, *, spike_weight: float = 1.0, behavior_weight: float = 1.0,
              label_weight: float = 1.0, label_prior_logp_BJ: torch.Tensor | None = None,
              label_capped_J: Sequence[bool] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-modality losses, each averaged over its scored entries, then summed with weights.

    Spikes: Poisson NLL ``exp(r) - y r`` (without the constant ``log y!``) per scored (bin, unit).
    Behaviour: mean squared error per scored entry of each channel, averaged over the channels
    that have scored entries. Labels: cross-entropy per scored label, averaged over labels that
    have scored entries. A modality with no scored entry contributes 0.

    ``label_prior_logp_BJ`` (validation only, ``data.val_label_cap``): the log probability a
    class-prior predictor gives each window's true label; each label's cross-entropy is then capped
    at that predictor's cross-entropy on the same scored entries, so a label the model predicts
    worse than its class frequencies costs what knowing nothing costs, and no more.
    ``label_capped_J`` (with ``label_prior_logp_BJ``) takes that decision from outside instead: label
    ``j`` costs the predictor's cross-entropy where it is true and the model's where false. Scoring
    the windows of a batch one at a time with the batch's decisions gives per-window losses whose
    mean is the batch's capped loss (a per-window minimum would instead reward a head that is
    confidently right on some windows and confidently wrong on the others).

    Returns:
        (loss, stats) with ``loss/spike``, ``loss/behavior``, ``loss/label`` (floats, 0 when
        nothing was scored), ``count/...`` (the numbers of scored entries) and ``label_capped``
        (per label, whether the predictor's cross-entropy was used; all false without priors).
    """
    lr = out["log_rates_BTN"].float()
    m = masks.spike_scored_BTN
    nll = torch.exp(lr) - counts_BTN.float() * lr
    n_spike = m.sum()
    spike = torch.where(m, nll, 0.0).sum() / n_spike.clamp(min=1)
    zero = lr.sum() * 0.0
    beh_terms = []
    mb = masks.behavior_scored_BTC
    if mb.shape[-1]:
        err = (out["behavior_BTC"].float() - torch.nan_to_num(behavior_BTC.float())) ** 2
        per_c_num = torch.where(mb, err, 0.0).sum(dim=(0, 1))
        per_c_den = mb.sum(dim=(0, 1))
        have = per_c_den > 0
        if have.any():
            beh_terms.append((per_c_num[have] / per_c_den[have]).mean())
    behavior = beh_terms[0] if beh_terms else zero
    lab_terms = []
    capped = [False] * len(out["label_logits"])
    if label_capped_J is not None and (label_prior_logp_BJ is None or len(label_capped_J) != len(capped)):
        raise ValueError(f"label_capped_J needs label_prior_logp_BJ and one entry per label ({len(capped)}); "
                         f"got {None if label_capped_J is None else len(label_capped_J)} entries"
                         f"{' without priors' if label_prior_logp_BJ is None else ''}")
    for j, logits in enumerate(out["label_logits"]):
        sel = masks.label_scored_BJ[:, j]
        if sel.any():
            ce = F.cross_entropy(logits[sel].float(), labels_BJ[sel, j].long())
            if label_prior_logp_BJ is not None:
                prior_ce = -label_prior_logp_BJ[sel, j].float().mean()
                capped[j] = bool(prior_ce < ce) if label_capped_J is None else bool(label_capped_J[j])
                ce = prior_ce if capped[j] else ce
            lab_terms.append(ce)
    label = torch.stack(lab_terms).mean() if lab_terms else zero
    loss = spike_weight * spike + behavior_weight * behavior + label_weight * label
    stats = {"loss/spike": float(spike.detach()), "loss/behavior": float(behavior.detach()),
             "loss/label": float(label.detach()), "count/spike": int(n_spike),
             "count/behavior": int(mb.sum()), "count/label": int(masks.label_scored_BJ.sum()),
             "label_capped": capped}
    return loss, stats
