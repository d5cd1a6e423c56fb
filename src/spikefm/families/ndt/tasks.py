"""Neural-prediction benchmark for masked models (NDT family) on one session's test windows.

Shape legend: K windows, T bins per window, N units of the session, M masking variants of a task
(e.g. one per held-out neuron), B forward-pass batch, D hidden width, F decoder features.

Every prediction task masks the test windows deterministically, runs the model (``torch.no_grad``,
eval mode, on the model's device), and returns a :class:`TaskPrediction`: predicted expected
counts per bin ``rates`` (K, T, N) with NaN where the task did not score an entry, and ``counts``
with NaN at the same entries, ready for :func:`spikefm.eval.metrics.bps_pooled`. Each entry is
scored by exactly one masked forward pass in which it was hidden from the input.

Tasks (names as used by :func:`run_benchmark`):

* ``co-smoothing``: leave one neuron out: neuron n is hidden in every bin and predicted from all
  other neurons, for every n (``neuron`` prompt, bidirectional). Every entry is scored.
* ``forward-prediction``: the final ``forward_bins`` (10) bins of the window are hidden for every
  neuron and predicted with causal attention and the ``causal`` prompt (Zhang et al. 2024).
* ``forward-prediction-walk``: consecutive ``forward_bins`` chunks from the event bin to the end of
  the window; chunk ``[s, s + forward_bins)`` is predicted with every bin ``>= s`` hidden and causal
  attention, i.e. from all earlier true activity (Jiang et al.'s protocol). The final chunk may be
  shorter. Reported separately from ``forward-prediction``.
* ``inter-region``: each region hidden entirely and predicted from all other regions
  (``inter_region`` prompt); sessions with fewer than 2 regions are skipped.
* ``intra-region``: within each region, each neuron hidden and predicted from the rest of its
  region, with every other region hidden too (``intra_region`` prompt, leave-one-out); sessions
  with fewer than 2 regions are skipped (the model never trains this prompt on them).
* ``<label>-decoding`` (e.g. ``choice-decoding``): L2 logistic regression of a discrete trial
  label from (a) one layer's hidden states averaged over bins and (b) predicted rates averaged over
  bins, both from an unmasked forward pass (``neuron`` prompt). See :func:`decode_label` for the
  train/test protocol.

Region names are taken as given, so a session whose units are all "unknown" has one region.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from spikefm.families.ndt.masking import mask_entries, scheme_id
from spikefm.data.windows import MIN_INIT_RATE, SessionWindows, psth_condition, too_many_values_text
from spikefm.eval.baselines import cosmooth_leave_one_out
from spikefm.eval.metrics import (bps_per_neuron_mean, bps_pooled, bps_pooled_difference, bps_pooled_interval,
                                  canonical_row_order, decode_discrete, wilson_interval)
from spikefm.eval.oracle import ideal_observer_favours_truth, truth_latent_windows, truth_windows
from spikefm.fileio import savez_atomic
from spikefm.progress import NO_STAGES

__all__ = [
    "PREDICTION_TASKS",
    "DEFAULT_TASKS",
    "TaskPrediction",
    "co_smoothing",
    "forward_prediction_last",
    "forward_prediction_walk",
    "walk_start_bin",
    "inter_region",
    "intra_region",
    "task_prompt",
    "decode_label",
    "decode_behavior",
    "wilson_interval",
    "truth_windows",
    "truth_latent_windows",
    "run_benchmark",
    "format_benchmark_table",
]

PREDICTION_TASKS = ("co-smoothing", "forward-prediction", "forward-prediction-walk", "inter-region",
                    "intra-region")
#: Continuous behaviour decoding (every channel of the windows' behaviour).
BEHAVIOR_TASK = "behavior-decoding"
DEFAULT_TASKS = ("co-smoothing", "forward-prediction", "forward-prediction-walk", "inter-region", "intra-region",
                 "choice-decoding", "behavior-decoding")
BPS_METRICS = ("bps_pooled", "bps_per_neuron_mean")


@dataclass
class TaskPrediction:
    """Output of one prediction task on K windows.

    Attributes:
        rates: (K, T, N) float64 predicted expected counts per bin; NaN where not scored.
        counts: (K, T, N) float64 observed counts; NaN where not scored (same entries).
        window_index: (K,) int64 indices of the windows in their :class:`SessionWindows`.
    """

    rates: np.ndarray
    counts: np.ndarray
    window_index: np.ndarray

    @property
    def num_evaluated(self) -> int:
        return int((~np.isnan(self.counts)).sum())


@dataclass
class _Variants:
    """M masking patterns applied to every window: hidden entries, scored entries, prompt, attention."""

    input_MTN: torch.Tensor
    loss_MTN: torch.Tensor
    scheme_M: torch.Tensor
    causal_M: torch.Tensor


def _variants(input_MTN, loss_MTN, scheme: str, causal: bool) -> _Variants:
    M = input_MTN.shape[0]
    # Each entry is scored by one variant only, so the assembled rates are well defined.
    assert M == 0 or int(loss_MTN.sum(0).max()) <= 1
    return _Variants(input_MTN, loss_MTN, torch.full((M,), scheme_id(scheme), dtype=torch.long),
                     torch.full((M,), causal, dtype=torch.bool))


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _check_model_session(model: nn.Module, windows: SessionWindows) -> None:
    units = getattr(model, "session_units", None)
    if units is None:
        return
    sid = windows.session_id
    if sid not in units:
        raise ValueError(f"the model has no session {sid!r}; registered sessions include "
                         f"{list(units)[:10]}; fine-tune it on this session first")
    if units[sid] != windows.num_units:
        raise ValueError(f"the model has {units[sid]} units for session {sid!r} but the windows have "
                         f"{windows.num_units}; cut the windows from the corpus the model was trained on")


class _EvalMode:
    """no_grad + eval mode, restoring the model's training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def _select(windows: SessionWindows, split: str | Sequence[str] | None) -> np.ndarray:
    idx = windows.indices(split)
    if idx.size == 0:
        raise ValueError(f"session {windows.session_id!r} has no windows in split {split!r}; cut more "
                         "windows or change split_fractions")
    return idx


def _run_variants(model: nn.Module, windows: SessionWindows, var: _Variants, split, batch_size: int
                  ) -> TaskPrediction:
    """Apply every variant to every selected window; collect the scored entries' predicted rates."""
    _check_model_session(model, windows)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    idx = _select(windows, split)
    counts_KTN = torch.from_numpy(windows.counts[idx].astype(np.float32))
    K, T, N = counts_KTN.shape
    M = var.input_MTN.shape[0]
    out_KTN = np.full((K, T, N), np.nan, dtype=np.float64)
    device = _model_device(model)
    pairs = [(k, v) for k in range(K) for v in range(M)]
    with _EvalMode(model):
        for i in range(0, len(pairs), batch_size):
            k_B = torch.tensor([p[0] for p in pairs[i:i + batch_size]], dtype=torch.long)
            v_B = torch.tensor([p[1] for p in pairs[i:i + batch_size]], dtype=torch.long)
            B = k_B.numel()
            valid_BN = torch.ones(B, N, dtype=torch.bool, device=device)
            mb = mask_entries(counts_KTN[k_B].to(device), valid_BN, var.input_MTN[v_B].to(device),
                              var.loss_MTN[v_B].to(device), scheme=var.scheme_M[v_B].to(device),
                              causal=var.causal_M[v_B].to(device))
            log_rates_BTN = model(mb.inputs_BTN, valid_BN, [windows.session_id] * B, mb.scheme_B,
                                  mb.causal_B, input_mask_BTN=mb.input_mask_BTN)
            rates_BTN = torch.exp(log_rates_BTN.double()).cpu().numpy()
            loss_BTN = mb.loss_mask_BTN.cpu().numpy()
            for b in range(B):
                k = int(k_B[b])
                out_KTN[k][loss_BTN[b]] = rates_BTN[b][loss_BTN[b]]
    counts = np.where(np.isnan(out_KTN), np.nan, windows.counts[idx].astype(np.float64))
    return TaskPrediction(rates=out_KTN, counts=counts, window_index=idx)


# ---------------------------------------------------------------------------------------------
# Prediction tasks


def co_smoothing(model: nn.Module, windows: SessionWindows, *, split="test", batch_size: int = 256,
                 prompt: str = "neuron") -> TaskPrediction:
    """Leave-one-neuron-out: each neuron predicted from all the others, in every bin.

    The N masked copies of each window are batched (``batch_size`` copies per forward pass).
    ``prompt``: the scheme prompt token given (:func:`task_prompt` picks a trained one).
    """
    T, N = windows.num_bins, windows.num_units
    eye_NN = torch.eye(N, dtype=torch.bool)
    m_MTN = eye_NN[:, None, :].expand(N, T, N)
    return _run_variants(model, windows, _variants(m_MTN, m_MTN, prompt, False), split, batch_size)


def forward_prediction_last(model: nn.Module, windows: SessionWindows, *, forward_bins: int = 10,
                            split="test", batch_size: int = 256) -> TaskPrediction:
    """The final ``forward_bins`` bins hidden for every neuron and predicted causally."""
    T, N = windows.num_bins, windows.num_units
    if not isinstance(forward_bins, int) or not 0 < forward_bins < T:
        raise ValueError(f"forward_bins must be an int in [1, {T - 1}] for {T}-bin windows, got {forward_bins!r}")
    m_MTN = (torch.arange(T) >= T - forward_bins)[None, :, None].expand(1, T, N)
    return _run_variants(model, windows, _variants(m_MTN, m_MTN, "causal", True), split, batch_size)


def walk_start_bin(windows: SessionWindows, forward_bins: int = 10) -> int:
    """First bin of the forward-prediction walk: the event bin, or ``forward_bins`` for continuous
    windows (so the first chunk has some context)."""
    return windows.event_bin if windows.event_bin is not None else forward_bins


def forward_prediction_walk(model: nn.Module, windows: SessionWindows, *, forward_bins: int = 10,
                            start_bin: int | None = None, split="test", batch_size: int = 256
                            ) -> TaskPrediction:
    """Consecutive ``forward_bins`` chunks from ``start_bin`` (default :func:`walk_start_bin`) to the
    window's end, each predicted from all earlier bins (it and all later bins hidden, causal)."""
    T, N = windows.num_bins, windows.num_units
    if not isinstance(forward_bins, int) or forward_bins < 1:
        raise ValueError(f"forward_bins must be a positive int, got {forward_bins!r}")
    s0 = walk_start_bin(windows, forward_bins) if start_bin is None else start_bin
    if not isinstance(s0, int) or not 0 < s0 < T:
        raise ValueError(f"start_bin must be an int in [1, {T - 1}] for {T}-bin windows, got {s0!r}")
    t_T = torch.arange(T)
    starts = list(range(s0, T, forward_bins))
    inp = torch.stack([(t_T >= s)[:, None].expand(T, N) for s in starts])
    loss = torch.stack([((t_T >= s) & (t_T < s + forward_bins))[:, None].expand(T, N) for s in starts])
    return _run_variants(model, windows, _variants(inp, loss, "causal", True), split, batch_size)


def _num_regions(windows: SessionWindows) -> int:
    return len(set(windows.unit_regions))


def _need_regions(windows: SessionWindows, task: str) -> None:
    if _num_regions(windows) < 2:
        raise ValueError(f"{task} needs a session with at least 2 regions; session "
                         f"{windows.session_id!r} has {sorted(set(windows.unit_regions))}")


def inter_region(model: nn.Module, windows: SessionWindows, *, split="test", batch_size: int = 256,
                 prompt: str = "inter_region") -> TaskPrediction:
    """Each region hidden entirely and predicted from the other regions (one variant per region;
    ``prompt``: the scheme prompt token given, :func:`task_prompt`)."""
    _need_regions(windows, "inter-region")
    T, N = windows.num_bins, windows.num_units
    reg_N = torch.from_numpy(windows.region_ids)
    m_MTN = torch.stack([(reg_N == r)[None, :].expand(T, N) for r in torch.unique(reg_N).tolist()])
    return _run_variants(model, windows, _variants(m_MTN, m_MTN, prompt, False), split, batch_size)


def intra_region(model: nn.Module, windows: SessionWindows, *, split="test", batch_size: int = 256,
                 prompt: str = "intra_region") -> TaskPrediction:
    """Each neuron hidden and predicted from the rest of its region, all other regions hidden
    (one variant per neuron; ``prompt``: the scheme prompt token given, :func:`task_prompt`)."""
    _need_regions(windows, "intra-region")
    T, N = windows.num_bins, windows.num_units
    reg_N = torch.from_numpy(windows.region_ids)
    eye_NN = torch.eye(N, dtype=torch.bool)
    hidden_NN = eye_NN | (reg_N[None, :] != reg_N[:, None])  # row n: n itself and other regions
    inp = hidden_NN[:, None, :].expand(N, T, N)
    loss = eye_NN[:, None, :].expand(N, T, N)
    return _run_variants(model, windows, _variants(inp, loss, prompt, False), split, batch_size)


#: The scheme prompt each bidirectional prediction task is trained for (Zhang et al. 2024).
TASK_SCHEMES = {"co-smoothing": "neuron", "inter-region": "inter_region", "intra-region": "intra_region"}
#: For each bidirectional prompt, the prompts a run may have trained instead, most alike first:
#: all three hide whole neurons and predict them from the visible ones with full attention.
_PROMPT_STAND_INS = {"neuron": ("intra_region", "inter_region"), "inter_region": ("neuron", "intra_region"),
                     "intra_region": ("neuron", "inter_region")}


def task_prompt(task: str, trained: Sequence[str] | None) -> str | None:
    """The prompt a bidirectional task is scored with: its own scheme's when the run trained it
    (``trained``: the schemes of its training, None when unknown), else the most alike scheme
    it trained (:data:`_PROMPT_STAND_INS`); a prompt no step trained is still its initial random
    vector, and the task scored with it is out of distribution (inter-region read 0.02 bps
    under the neuron,causal defaults). None for a task without one (causal tasks: ``causal``)."""
    own = TASK_SCHEMES.get(task)
    if own is None or trained is None or own in trained:
        return own
    return next((s for s in _PROMPT_STAND_INS[own] if s in trained), own)


_TASK_FUNCS = {
    "co-smoothing": co_smoothing,
    "forward-prediction": forward_prediction_last,
    "forward-prediction-walk": forward_prediction_walk,
    "inter-region": inter_region,
    "intra-region": intra_region,
}


# ---------------------------------------------------------------------------------------------
# Decoding


def _unmasked_features(model: nn.Module, windows: SessionWindows, layer: int, batch_size: int,
                       per_bin: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(K, D) hidden states of ``layer`` and (K, N) predicted rates, both averaged over bins (or
    (K, T, D) and (K, T, N) per bin with ``per_bin``), for every window, from an unmasked forward
    pass with the ``neuron`` prompt; and the 1-based number of the block ``layer`` indexes
    (``-1``: the last), as ``data.decode_layer`` and the results name blocks."""
    _check_model_session(model, windows)
    counts_KTN = torch.from_numpy(windows.counts.astype(np.float32))
    K, T, N = counts_KTN.shape
    device = _model_device(model)
    hid, rates = [], []
    with _EvalMode(model):
        for i in range(0, K, batch_size):
            x_BTN = counts_KTN[i:i + batch_size].to(device)
            B = x_BTN.shape[0]
            log_rates_BTN, hidden = model(x_BTN, torch.ones(B, N, dtype=torch.bool, device=device),
                                          [windows.session_id] * B,
                                          torch.full((B,), scheme_id("neuron"), dtype=torch.long, device=device),
                                          torch.zeros(B, dtype=torch.bool, device=device), return_hidden=True)
            try:
                h_BTD = hidden[layer]
                block = range(1, len(hidden) + 1)[layer]
            except IndexError:
                raise ValueError(f"layer={layer} is out of range for a model with {len(hidden)} layers") from None
            h_BTD, r_BTN = h_BTD.double(), torch.exp(log_rates_BTN.double())
            hid.append((h_BTD if per_bin else h_BTD.mean(1)).cpu().numpy())
            rates.append((r_BTN if per_bin else r_BTN.mean(1)).cpu().numpy())
    return np.concatenate(hid), np.concatenate(rates), block


def _label_array(windows: SessionWindows, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels as str, present mask) for a label of the windows."""
    if label not in windows.labels:
        many = windows.many_valued.get(label)
        why = f"; {too_many_values_text(label, many)}" if many else ""
        raise ValueError(f"session {windows.session_id!r} has no discrete label {label!r}{why}; labels: "
                         f"{sorted(windows.labels)} (labels exist only for trial-aligned windows)")
    y = windows.labels[label]
    if y.dtype.kind == "f":
        present = ~np.isnan(y)
        y_str = np.array([repr(float(v)) for v in y])
    else:
        present = np.array([v is not None for v in y])
        y_str = np.array([str(v) for v in y])
    return y_str, present


def _fit_predict_logistic(X_train, y_train, X_test, *, Cs, inner_cv_folds, seed) -> tuple[np.ndarray, float]:
    """StandardScaler -> L2 LogisticRegression, C chosen by stratified CV on the training set only
    (the model decode_discrete fits in each outer fold), then refitted and applied to the test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    order = canonical_row_order(X_train, y_train)  # folds independent of row order
    X_train, y_train = np.asarray(X_train)[order], np.asarray(y_train)[order]
    _, cls_counts = np.unique(y_train, return_counts=True)
    n_inner = int(min(inner_cv_folds, cls_counts.min()))
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        {"logisticregression__C": Cs},
        cv=StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed),
        scoring="accuracy",
    )
    search.fit(X_train, y_train)
    return search.predict(X_test), float(search.best_params_["logisticregression__C"])


def _decode_features(features: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, test: np.ndarray,
                     method: str, *, cv_folds: int, Cs, seed: int) -> dict[str, dict]:
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    from spikefm.eval.metrics import balanced_accuracy

    out = {}
    # These fits are tiny (windows x features); BLAS thread hand-off made them ~40x slower on a
    # busy 2-core machine, so they run single-threaded.
    with threadpool_limits(1):
        for name, X in features.items():
            if method == "holdout":
                pred, C = _fit_predict_logistic(X[train], y[train], X[test], Cs=Cs, inner_cv_folds=3, seed=seed)
                out[name] = {"accuracy": float(np.mean(pred == y[test])),
                             "balanced_accuracy": balanced_accuracy(y[test], pred), "C": [C]}
            else:
                keep = np.concatenate([train, test])
                r = decode_discrete(X[keep], y[keep], cv_folds=cv_folds, Cs=Cs, seed=seed)
                out[name] = {"accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"],
                             "C": [float(c) for c in r["C_"]]}
    return out


def decode_label(model: nn.Module, windows: SessionWindows, label: str = "choice", *, layer: int = -1,
                 truth_rates: np.ndarray | None = None, min_test_windows: int = 10, cv_folds: int = 5,
                 Cs=None, seed: int = 0, batch_size: int = 256, classes: Sequence | None = None,
                 ideal_favours: np.ndarray | None = None) -> dict:
    """Decode a discrete window label from the model's hidden states and predicted rates.

    Protocol: when the test windows number at least ``min_test_windows`` and every class has at
    least 3 train+val windows, the decoder (C chosen by 3-fold stratified CV) is trained on the
    train+val windows and scored on the test windows (``method="holdout"``). Otherwise, with too
    few windows for a held-out test set, :func:`spikefm.eval.metrics.decode_discrete`'s nested CV
    runs over all windows (``method="nested-cv"``, ``cv_folds`` lowered to the smallest class count
    when needed, at least 2). Windows without the label are left out.

    Args:
        label: key of ``windows.labels`` (e.g. ``"choice"``).
        layer: index into the model's per-block hidden states (``-1``: last block).
        truth_rates: optional (K_all, T, N) true expected counts for every window: adds an
            ``oracle`` feature set (true rates averaged over bins).
        classes: label values to keep (e.g. ``[-1, 1]`` leaves no-go choices out); None keeps all.
        ideal_favours: optional (K_all,) bool per window, whether the ideal observer of a two-class
            label favours the true class (:func:`spikefm.eval.oracle.ideal_observer_favours_truth`):
            adds ``ideal_observer`` (its accuracy on the scored windows, with a Wilson interval).

    Returns:
        dict with ``label``, ``method``, ``n_train``, ``n_test``, ``n_classes`` (the classes the
        decoder was fitted on), ``n_classes_scored`` (those among the scored windows), ``chance`` (most
        frequent class share among the scored windows), ``decode_layer`` (the block read, 1-based,
        as the results' top level names it), and per feature set
        (``hidden``, ``rates``, maybe ``oracle``): ``accuracy``, ``accuracy_ci95`` (Wilson
        interval over the scored windows), ``balanced_accuracy``, ``C``.
    """
    y, present = _label_array(windows, label)
    if classes is not None:
        keep = {repr(float(c)) if isinstance(c, (int, float)) else str(c) for c in classes}
        present = present & np.isin(y, sorted(keep))
    if not present.all():
        warnings.warn(f"{label}-decoding: {int((~present).sum())} of {present.size} windows of session "
                      f"{windows.session_id!r} have no {label!r} value and are left out", RuntimeWarning,
                      stacklevel=2)
    Cs = np.logspace(-4, 4, 9) if Cs is None else np.asarray(Cs, dtype=np.float64)
    train = np.flatnonzero(present & np.isin(windows.split, ["train", "val"]))
    test = np.flatnonzero(present & (windows.split == "test"))
    classes_tr, counts_tr = np.unique(y[train], return_counts=True)
    if test.size >= min_test_windows and classes_tr.size >= 2 and counts_tr.min() >= 3:
        method = "holdout"
        scored = y[test]
    else:
        method = "nested-cv"
        allk = np.concatenate([train, test])
        values, counts_all = np.unique(y[allk], return_counts=True)
        if counts_all.size < 2 or counts_all.min() < 2:
            rare = [str(v) for v, c in zip(values, counts_all) if c < 2]
            raise ValueError(f"too few windows to decode {label!r} in session {windows.session_id!r}: windows per "
                             f"class {dict(zip(map(str, values), counts_all.tolist()))}; every class needs >= 2 "
                             "windows (and at least 2 classes) to cross-validate" + (
                                 f"; a run trained with --set data.label_classes={label}=V1,V2,... (the classes "
                                 f"decoding keeps) leaves out {', '.join(rare)}" if rare and counts_all.size - len(rare) >= 2
                                 else ""))
        cv_folds = int(min(cv_folds, counts_all.min()))
        scored = y[allk]
    hidden_KD, rates_KN, block = _unmasked_features(model, windows, layer, batch_size)
    features = {"hidden": hidden_KD, "rates": rates_KN}
    if truth_rates is not None:
        features["oracle"] = np.asarray(truth_rates, dtype=np.float64).mean(1)
    res = _decode_features(features, y, train, test, method, cv_folds=cv_folds, Cs=Cs, seed=seed)
    for entry in res.values():
        n = int(scored.size)
        entry["accuracy_ci95"] = list(wilson_interval(int(round(entry["accuracy"] * n)), n))
    _, sc = np.unique(scored, return_counts=True)
    if ideal_favours is not None and sc.size == 2:
        hits = int(np.asarray(ideal_favours, dtype=bool)[test if method == "holdout" else allk].sum())
        n = int(scored.size)
        res["ideal_observer"] = {"accuracy": hits / n, "accuracy_ci95": list(wilson_interval(hits, n))}
    return {"label": label, "method": method, "n_train": int(train.size), "n_test": int(test.size),
            "n_classes": int(np.unique(y[train if method == "holdout" else allk]).size),
            "n_classes_scored": int(sc.size), "chance": float(sc.max() / sc.sum()), "decode_layer": block,
            "cv_folds": cv_folds if method == "nested-cv" else None, **res}


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return 1.0 - float(((true - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan


def check_task_names(tasks: Sequence[str]) -> None:
    """Raise a one-line ValueError for a name that is no task (before any work is done)."""
    for t in tasks:
        if t not in _TASK_FUNCS and not t.endswith("-decoding"):
            raise ValueError(f"unknown task {t!r}; valid: {', '.join(PREDICTION_TASKS)}, {BEHAVIOR_TASK} or "
                             "'<label>-decoding' with a label of the windows")


def decode_behavior(model: nn.Module, windows: SessionWindows, *, layer: int = -1,
                    truth_latents: np.ndarray | None = None, alphas=None, batch_size: int = 256,
                    traces: dict | None = None) -> dict:
    """Decode every continuous behaviour channel, bin by bin, with cross-validated ridge regression.

    Feature sets per bin: the model's hidden states of ``layer`` and its predicted rates (one
    unmasked forward pass, ``neuron`` prompt), the raw binned counts (the baseline) and, with
    ground truth, the true latents (``oracle``). Each ridge (standardised features, alpha chosen
    by leave-one-out CV per channel, :class:`sklearn.linear_model.RidgeCV`) is fitted on the bins
    of the train+val windows and scored on the test windows: ``r2`` pooled over the test bins
    (single trial) and ``psth_r2`` of the test-trial average at each bin. Bins with a missing
    behaviour value are left out (under ``eval --split val`` the ridges are fitted on the train
    windows alone). PSTHs are averaged per condition (the test windows' label that
    :func:`spikefm.data.windows.psth_condition` picks: ``choice``, ``target_angle``, else the
    first with two values) and ``psth_r2`` pools the conditions' bins.

    With ``traces`` (a dict), it is filled with the test windows' ``true`` and ``predicted``
    (decoded from the hidden states) behaviour, (K_test, T, C) float32 (NaN where a channel was
    not decoded or a value is missing), and ``channels``.

    Returns:
        ``{"channels", "n_train", "n_test", "decode_layer" (1-based block), <feature set>: {channel: {"r2", "psth_r2"},
        "mean": {"r2", "psth_r2"}}}``.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if windows.behavior is None or not windows.behavior_names:
        raise ValueError(f"session {windows.session_id!r} has no continuous behaviour to decode")
    train, test = windows.indices(["train", "val"]), windows.indices("test")
    if train.size < 5 or test.size < 2:
        raise ValueError(f"too few windows to decode behaviour in session {windows.session_id!r}: "
                         f"{train.size} train+val and {test.size} test; need 5 and 2")
    alphas = np.logspace(-2, 5, 8) if alphas is None else np.asarray(alphas, dtype=np.float64)
    hidden_KTD, rates_KTN, block = _unmasked_features(model, windows, layer, batch_size, per_bin=True)
    features = {"hidden": hidden_KTD, "rates": rates_KTN, "counts": windows.counts.astype(np.float64)}
    if truth_latents is not None:
        features["oracle"] = np.asarray(truth_latents, dtype=np.float64)
    y_KTC = windows.behavior.astype(np.float64)
    K, T, C = y_KTC.shape
    # PSTHs average the test trials of one condition (e.g. choice or reach target)
    condition = psth_condition({k: np.asarray(v)[test] for k, v in windows.labels.items()})
    groups = [np.arange(test.size)]
    if condition is not None:
        values, present = _label_array(windows, condition)
        groups = [np.flatnonzero(present[test] & (values[test] == v)) for v in np.unique(values[test][present[test]])]
        groups = [g for g in groups if g.size] or [np.arange(test.size)]
    out: dict = {"channels": list(windows.behavior_names), "n_train": int(train.size),
                 "n_test": int(test.size), "decode_layer": block, "psth_condition": condition}
    decoded_kTC = np.full((test.size, T, C), np.nan)
    with threadpool_limits(1):
        for name, X_KTF in features.items():
            entry: dict = {}
            for c, channel in enumerate(windows.behavior_names):
                tr_ok = np.isfinite(y_KTC[train, :, c])
                te_ok = np.isfinite(y_KTC[test, :, c])
                if tr_ok.sum() < 10 or te_ok.sum() < 2:
                    continue
                reg = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
                reg.fit(X_KTF[train][tr_ok], y_KTC[train, :, c][tr_ok])
                pred_kT = reg.predict(X_KTF[test].reshape(test.size * T, -1)).reshape(test.size, T)
                true_kT = y_KTC[test, :, c]
                if name == "hidden":
                    decoded_kTC[:, :, c] = pred_kT
                r2 = _r2(pred_kT[te_ok], true_kT[te_ok])
                psth_pred, psth_true = [], []
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    for group in groups:
                        psth_pred.append(np.nanmean(np.where(te_ok[group], pred_kT[group], np.nan), axis=0))
                        psth_true.append(np.nanmean(np.where(te_ok[group], true_kT[group], np.nan), axis=0))
                psth_pred, psth_true = np.concatenate(psth_pred), np.concatenate(psth_true)
                ok = np.isfinite(psth_true)
                entry[channel] = {"r2": r2, "psth_r2": _r2(psth_pred[ok], psth_true[ok])}
            if entry:
                entry["mean"] = {m: float(np.nanmean([v[m] for v in entry.values()])) for m in ("r2", "psth_r2")}
            out[name] = entry
    if traces is not None:
        traces.update(true=y_KTC[test].astype(np.float32), predicted=decoded_kTC.astype(np.float32),
                      channels=np.array(windows.behavior_names, dtype=str))
    return out


# ---------------------------------------------------------------------------------------------
# Ground truth


# ---------------------------------------------------------------------------------------------
# Benchmark


def _bps(rates, counts) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"bps_pooled": bps_pooled(rates, counts), "bps_per_neuron_mean": bps_per_neuron_mean(rates, counts)}


def _fraction(model: dict, oracle: dict) -> dict[str, float]:
    """model / oracle per metric; NaN unless the oracle's bps is positive and finite (over a
    zero or negative ceiling the ratio has no meaning: a model worse than a negative oracle
    would show as a multiple of it)."""
    out = {}
    for m in BPS_METRICS:
        a, b = model.get(m, math.nan), oracle.get(m, math.nan)
        out[m] = a / b if math.isfinite(b) and b > 0 else math.nan
    return out


def _ci95(rates, counts) -> dict[str, list[float]]:
    """``{"bps_pooled": [low, high]}``: 95 % interval over the trials (empty with under 3 trials)."""
    if counts.shape[0] < 3:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"bps_pooled": list(bps_pooled_interval(rates, counts))}


def _chunk_bps(pred: TaskPrediction, windows: SessionWindows, task: str, forward_bins: int,
               truth_KTN: np.ndarray | None) -> list[dict]:
    """bps of each scored chunk of a forward-prediction task: ``[{"start_bin", "end_bin",
    "model": {...}, "model_ci95": {"bps_pooled": [low, high]}, "model_vs_train_null":
    {"bps_pooled"}, "oracle": {...}}]`` (oracle with ground truth). ``model_ci95`` is the 95 %
    interval over the scored trials (jackknife with a t quantile,
    :func:`~spikefm.eval.metrics.bps_pooled_interval`, the NLB null re-fitted without each trial).

    ``model`` follows the NLB convention: the null is each neuron's mean count over the scored
    entries themselves, a rate fitted on the test data. On a chunk of a few bins of a few test
    trials that in-sample fit is worth several hundredths of a bit per spike (about
    ``0.5 * N / (ln 2 * spikes)`` for N neurons by Wilks' theorem, more when trials vary), so a
    model can score below 0 there while beating every rate learned from other trials.
    ``model_vs_train_null`` scores the same predictions against each neuron's mean count in the
    same bins of the train and val windows (what the model was fitted and selected on; the train
    windows alone under ``eval --split val``, which scores the val windows and leaves the test ones out): an
    out-of-sample null, the time-locked mean rate of the chunk, floored at
    :data:`~spikefm.data.windows.MIN_INIT_RATE` (the floor the models' rates start from) so a neuron
    silent in those bins of every train window but firing in a test window gives a finite score,
    not ``inf``."""
    T = windows.num_bins
    if task == "forward-prediction":
        starts = [T - forward_bins]
    else:
        starts = list(range(walk_start_bin(windows, forward_bins), T, forward_bins))
    fit = np.concatenate([windows.indices("train"), windows.indices("val")])
    chunks = []
    for s0 in starts:
        sl = slice(s0, min(s0 + forward_bins, T))
        chunk = {"start_bin": s0, "end_bin": sl.stop, "model": _bps(pred.rates[:, sl], pred.counts[:, sl]),
                 "model_ci95": _ci95(pred.rates[:, sl], pred.counts[:, sl])}
        if fit.size:
            null_N = np.maximum(windows.counts[fit, sl].astype(np.float64).mean(axis=(0, 1)), MIN_INIT_RATE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                chunk["model_vs_train_null"] = {
                    "bps_pooled": bps_pooled(pred.rates[:, sl], pred.counts[:, sl], null_rates=null_N)}
        if truth_KTN is not None:
            oracle = np.where(np.isnan(pred.counts[:, sl]), np.nan, truth_KTN[:, sl])
            chunk["oracle"] = _bps(oracle, pred.counts[:, sl])
        chunks.append(chunk)
    return chunks


def scored_unit(results: Iterable[dict]) -> str:
    """What one test window is, in words, for results of :func:`run_benchmark`.

    ``"test trials"`` when the windows were aligned to a trial column, ``"test windows"`` when they
    were cut from continuous recording or the results predate the ``align`` record; ``validation``
    for ``test`` when the results say they scored the validation windows (``scored_split: "val"``,
    ``spikefm eval --split val``).
    """
    results = list(results)
    role = "validation" if any(r.get("scored_split") == "val" for r in results) else "test"
    return f"{role} trials" if any(r.get("align") for r in results) else f"{role} windows"


def benchmark_stages(tasks: Sequence[str] | str, baselines: bool) -> int:
    """The progress stages of :func:`run_benchmark`: one per task, one more for the smoothing
    baseline of co-smoothing."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    return len(tasks) + (baselines and "co-smoothing" in tasks)


def run_benchmark(model: nn.Module, windows: SessionWindows, *, tasks: Sequence[str] = DEFAULT_TASKS,
                  truth_rates: np.ndarray | None = None, baselines: bool = True,
                  save_predictions: str | Path | None = None, forward_bins: int = 10, layer: int = -1,
                  smoothing_kernel_sd_ms: float = 50.0, batch_size: int = 256, seed: int = 0,
                  decode_options: dict | None = None, label_classes: dict | None = None,
                  truth_latents: np.ndarray | None = None, truth_readout: dict | None = None,
                  trained_schemes: Sequence[str] | None = None, stages=NO_STAGES) -> dict:
    """Run benchmark tasks on one session's test windows.

    Args:
        model: an NDT (or anything with its ``forward`` signature) that knows this session.
        windows: the session's windows; tasks score the ``"test"`` split.
        tasks: names from :data:`PREDICTION_TASKS` and ``"<label>-decoding"``.
        truth_rates: optional (K_all, T, N) true expected counts for ALL windows (e.g. from
            :func:`truth_windows`): adds ``oracle`` bps and ``fraction_of_oracle`` per task.
        baselines: fit the NLB smoothing baseline (leave-one-out Poisson GLMs on smoothed counts,
            :func:`spikefm.eval.baselines.cosmooth_leave_one_out`) on the train windows and score it
            on co-smoothing.
        save_predictions: a folder: write ``<task>.npz`` with ``rates`` and ``counts`` (K, T, N)
            (``behavior-decoding.npz``: ``true`` and ``predicted`` (K, T, C) and ``channels``),
            NaN where not scored, for each prediction task (temporary name, then rename).
        forward_bins: bins predicted by ``forward-prediction`` and per step of the walk.
        layer: hidden layer used by decoding tasks.
        smoothing_kernel_sd_ms: Gaussian kernel SD of the smoothing baseline.
        batch_size: masked copies per forward pass.
        seed: decoder CV seed.
        decode_options: extra keyword arguments of :func:`decode_label` (``min_test_windows``,
            ``cv_folds``, ``Cs``).
        label_classes: label -> values kept by its decoding task (e.g. ``{"choice": [-1, 1]}``).
        truth_latents: optional (K_all, T, Z) true latents: the oracle of behaviour decoding.
        truth_readout: optional ``{"latent_names", "loadings_NZ", "biases_N", "max_count"}``, the
            synthetic generator's readout (:func:`spikefm.corpus.synth.truth_readout`; with
            ``truth_latents``): a ``<label>-decoding`` task whose
            label is a two-class latent (``choice``) reports the ideal observer's accuracy too.
        trained_schemes: the masking schemes the model was trained with (its run's and its
            pretraining's ``data.schemes``); a bidirectional task whose prompt none of them trained
            is scored with the most alike trained prompt (:func:`task_prompt`; the entry's
            ``prompt`` and ``prompt_untrained`` say so). None: every task its own prompt.
        stages: a :func:`spikefm.progress.stage_bar` display, told as each task (and the smoothing
            baseline) begins: :func:`benchmark_stages` of them.

    Returns:
        ``{"session_id", "num_test_windows", "num_units", "bin_ms", "tasks": {task: entry},
        "skipped": {task: reason}}``. A prediction entry holds ``model`` ({bps_pooled,
        bps_per_neuron_mean}), ``num_evaluated``, and where available ``smoothing``, ``oracle`` and
        ``fraction_of_oracle`` (model / oracle for each metric). A decoding entry is
        :func:`decode_label`'s dict.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    check_task_names(tasks)
    K_all = windows.num_windows
    if truth_rates is not None:
        truth_rates = np.asarray(truth_rates, dtype=np.float64)
        if truth_rates.shape != windows.counts.shape:
            raise ValueError(f"truth_rates must be aligned with all windows, shape {windows.counts.shape}, "
                             f"got {truth_rates.shape}; build it with truth_windows(truth, windows)")
    test = _select(windows, "test")
    out = {"session_id": windows.session_id, "num_test_windows": int(test.size),
           "num_units": windows.num_units, "bin_ms": windows.bin_ms, "num_windows": K_all,
           "align": windows.align, "tasks": {}, "skipped": {}}
    for task in tasks:
        stages.begin(task)
        if task == BEHAVIOR_TASK:
            if windows.behavior is None or not windows.behavior_names:
                out["skipped"][task] = "session has no continuous behaviour"
                continue
            traces: dict = {}
            try:
                out["tasks"][task] = decode_behavior(model, windows, layer=layer, truth_latents=truth_latents,
                                                     batch_size=batch_size, traces=traces)
            except ValueError as exc:
                out["skipped"][task] = str(exc)
                continue
            if save_predictions is not None:
                savez_atomic(Path(save_predictions) / f"{task}.npz", **traces)
            continue
        if task.endswith("-decoding"):
            label = task[: -len("-decoding")]
            favours = None
            if truth_latents is not None and truth_readout and label in truth_readout["latent_names"]:
                favours = ideal_observer_favours_truth(
                    windows.counts, truth_latents, truth_readout["loadings_NZ"], truth_readout["biases_N"],
                    list(truth_readout["latent_names"]).index(label), max_count=truth_readout["max_count"])
            try:
                out["tasks"][task] = decode_label(model, windows, label, layer=layer, truth_rates=truth_rates,
                                                  seed=seed, batch_size=batch_size,
                                                  classes=(label_classes or {}).get(label), ideal_favours=favours,
                                                  **(decode_options or {}))
            except ValueError as exc:
                text = str(exc)
                rare = any(k in text for k in ("fewer than 2 samples", "smallest class has"))
                if label in windows.labels and not rare and "too few windows" not in text:
                    raise
                # One task without enough trials per class is skipped, not every task's results lost.
                what = "trials" if windows.align else "windows"
                out["skipped"][task] = (f"too few {what} of some {label} class in this session to "
                                        f"cross-validate a decoder; longer sessions give more" if rare else text)
            continue
        if task in ("inter-region", "intra-region") and _num_regions(windows) < 2:
            out["skipped"][task] = f"session has {_num_regions(windows)} region(s); needs at least 2"
            continue
        kw = {"forward_bins": forward_bins} if task.startswith("forward") else {}
        prompt = task_prompt(task, trained_schemes)
        if prompt is not None:
            kw["prompt"] = prompt
        pred = _TASK_FUNCS[task](model, windows, split="test", batch_size=batch_size, **kw)
        entry = {"model": _bps(pred.rates, pred.counts), "model_ci95": _ci95(pred.rates, pred.counts),
                 "num_evaluated": pred.num_evaluated}
        if prompt is not None:
            entry["prompt"] = prompt
            if trained_schemes is not None and TASK_SCHEMES[task] not in trained_schemes:
                entry["prompt_untrained"] = TASK_SCHEMES[task]
        if baselines and task == "co-smoothing":
            stages.begin("co-smoothing: smoothing baseline")
            train = windows.indices("train")
            if train.size and windows.num_units >= 2:
                smooth_KTN = cosmooth_leave_one_out(windows.counts[train], windows.counts[test],
                                                    kernel_sd_ms=smoothing_kernel_sd_ms, bin_ms=windows.bin_ms)
                entry["smoothing"] = _bps(smooth_KTN, pred.counts)
                entry["model_minus_smoothing"] = {
                    "bps_pooled": bps_pooled_difference(pred.rates, smooth_KTN, pred.counts)}
        if truth_rates is not None:
            oracle_KTN = np.where(np.isnan(pred.counts), np.nan, truth_rates[test])
            entry["oracle"] = _bps(oracle_KTN, pred.counts)
            entry["fraction_of_oracle"] = _fraction(entry["model"], entry["oracle"])
        if task.startswith("forward"):
            entry["chunks"] = _chunk_bps(pred, windows, task, forward_bins,
                                         None if truth_rates is None else truth_rates[test])
        if save_predictions is not None:
            savez_atomic(Path(save_predictions) / f"{task}.npz", rates=pred.rates, counts=pred.counts)
        out["tasks"][task] = entry
    return out


def _fmt_ci(chunk: dict) -> str:
    """A chunk's ``bps_pooled`` and, where recorded, its 95 % interval: ``0.115 [0.052, 0.180]``."""
    from spikefm.tables import fmt_number

    ci = chunk.get("model_ci95", {}).get("bps_pooled")
    text = fmt_number(chunk["model"]["bps_pooled"])
    return f"{text} [{fmt_number(ci[0])}, {fmt_number(ci[1])}]" if ci else text


def _fmt_diff(d: dict) -> str:
    """``0.066 [0.031, 0.101]`` from ``{"value", "ci95"}``."""
    from spikefm.tables import fmt_number

    lo, hi = d["ci95"]
    return f"{fmt_number(d['value'])} [{fmt_number(lo)}, {fmt_number(hi)}]"


def format_benchmark_table(results_by_model: dict[str, dict]) -> str:
    """One text table of several :func:`run_benchmark` results.

    Rows are task x metric; columns are the models (keys of ``results_by_model``) followed by the
    baselines found in the results (``smoothing``, ``oracle``: taken from the first model's result
    that has them, as they depend on the windows only). Prediction tasks show ``bps_pooled`` and
    ``bps_per_neuron_mean`` and, with an oracle, each model's fraction of it; decoding tasks show
    accuracy and balanced accuracy from hidden states and from rates, and chance. Missing cells
    show ``-``.
    """
    if not results_by_model:
        raise ValueError("results_by_model is empty; give {model name: run_benchmark(...) result}")
    models = list(results_by_model)
    task_order: list[str] = []
    for res in results_by_model.values():
        for t in list(res.get("tasks", {})) + list(res.get("skipped", {})):
            if t not in task_order:
                task_order.append(t)
    baseline_cols: list[str] = []
    for res in results_by_model.values():
        for entry in res.get("tasks", {}).values():
            for b in ("smoothing", "oracle"):  # decoding tasks: the oracle (and ideal observer) only
                present = b in entry and "model" in entry or b == "oracle" and (
                    "oracle" in entry or "ideal_observer" in entry)
                if present and b not in baseline_cols:
                    baseline_cols.append(b)
    columns = models + [b for b in ("smoothing", "oracle") if b in baseline_cols]

    def baseline(task: str, name: str, metric: str):
        for res in results_by_model.values():
            e = res.get("tasks", {}).get(task, {})
            if name in e and metric in e[name]:
                return e[name][metric]
        return None

    from spikefm.tables import fmt_number as _fmt
    from spikefm.tables import render_table

    rows: list[list[str]] = []
    for task in task_order:
        entries = {m: results_by_model[m].get("tasks", {}).get(task) for m in models}
        if task == BEHAVIOR_TASK:
            for feat in ("hidden", "rates", "counts"):
                for metric in ("r2", "psth_r2"):
                    row = [task, f"mean {metric} ({feat})"]
                    row += [_fmt(e[feat]["mean"][metric]) if e and e.get(feat) else "-" for e in entries.values()]
                    row += ["-"] * (len(columns) - len(models))
                    if "oracle" in columns:
                        row[2 + columns.index("oracle")] = _fmt(next(
                            (e["oracle"]["mean"][metric] for e in entries.values() if e and e.get("oracle")), None))
                    rows.append(row)
            continue
        decoding = task.endswith("-decoding") or any(e and "hidden" in e for e in entries.values())
        if decoding:
            for feat in ("hidden", "rates"):
                for metric in ("accuracy", "balanced_accuracy"):
                    row = [task, f"{metric} ({feat})"]
                    row += [_fmt(e[feat][metric]) if e and feat in e else "-" for e in entries.values()]
                    row += [_fmt(baseline(task, "oracle", metric)) if c == "oracle" and feat == "rates" else "-"
                            for c in columns[len(models):]]
                    rows.append(row)
            row = [task, "chance"] + [_fmt(e["chance"]) if e else "-" for e in entries.values()]
            rows.append(row + ["-"] * (len(columns) - len(models)))
            ideal = next((e["ideal_observer"] for e in entries.values() if e and "ideal_observer" in e), None)
            if ideal is not None:  # the bound the spikes' Poisson noise sets, shown in the oracle column
                row = [task, "accuracy (ideal observer of the spikes)"] + ["-"] * len(models)
                row += [_fmt(ideal["accuracy"]) if c == "oracle" else "-" for c in columns[len(models):]]
                rows.append(row)
            continue
        for metric in BPS_METRICS:
            row = [task, metric] + [_fmt(e["model"][metric]) if e else "-" for e in entries.values()]
            row += [_fmt(baseline(task, c, metric)) for c in columns[len(models):]]
            rows.append(row)
        if any(e and "model_minus_smoothing" in e for e in entries.values()):
            row = [task, "bps_pooled minus smoothing [95 % interval]"]
            row += [_fmt_diff(e["model_minus_smoothing"]["bps_pooled"]) if e and "model_minus_smoothing" in e else "-"
                    for e in entries.values()]
            rows.append(row + ["-"] * (len(columns) - len(models)))
        if any(e and "fraction_of_oracle" in e for e in entries.values()):
            for metric in BPS_METRICS:
                row = [task, f"{metric} / oracle"]
                row += [_fmt(e["fraction_of_oracle"][metric]) if e and "fraction_of_oracle" in e else "-"
                        for e in entries.values()]
                rows.append(row + ["-"] * (len(columns) - len(models)))
        first = next((e for e in entries.values() if e and len(e.get("chunks", [])) > 1), None)
        for i, chunk in enumerate(first["chunks"] if first else []):
            row = [task, f"bps_pooled bins {chunk['start_bin']}-{chunk['end_bin'] - 1}"]
            row += [_fmt_ci(e["chunks"][i]) if e and len(e.get("chunks", [])) > i else "-"
                    for e in entries.values()]
            row += [_fmt(chunk["oracle"]["bps_pooled"]) if c == "oracle" and "oracle" in chunk else "-"
                    for c in columns[len(models):]]
            rows.append(row)
        for i, chunk in enumerate(first["chunks"] if first else []):
            if "model_vs_train_null" not in chunk:
                continue
            row = [task, f"bps_pooled bins {chunk['start_bin']}-{chunk['end_bin'] - 1}, train-fitted null"]
            row += [_fmt(e["chunks"][i].get("model_vs_train_null", {}).get("bps_pooled"))
                    if e and len(e.get("chunks", [])) > i else "-" for e in entries.values()]
            rows.append(row + ["-"] * (len(columns) - len(models)))
        if first is None and any(e and len(e.get("chunks", [])) == 1 and "model_vs_train_null" in e["chunks"][0]
                                 for e in entries.values()):
            # one chunk (forward-prediction): its rows are the task's own, but not its out-of-sample null
            row = [task, "bps_pooled, train-fitted null"]
            row += [_fmt(e["chunks"][0].get("model_vs_train_null", {}).get("bps_pooled"))
                    if e and len(e.get("chunks", [])) == 1 else "-" for e in entries.values()]
            rows.append(row + ["-"] * (len(columns) - len(models)))
    skipped = {t: r for res in results_by_model.values() for t, r in res.get("skipped", {}).items()}
    footer = [f"skipped {t}: {reason}" for t, reason in skipped.items()]
    nested = {t: e for res in results_by_model.values() for t, e in res.get("tasks", {}).items()
              if isinstance(e, dict) and e.get("method") == "nested-cv"}
    for t, e in nested.items():  # not a held-out test: say so beside the numbers
        role = scored_unit(results_by_model.values()).split()[0]  # test, or validation (eval --split val)
        footer.append(f"{t}: only {e.get('n_test')} {role} window(s), so the decoder is scored by "
                      f"{e.get('cv_folds')}-fold cross-validation over all {e.get('n_train', 0) + e.get('n_test', 0)} "
                      "windows, the model's training windows among them (not a held-out test)")
    for t, e in {t: e for res in results_by_model.values() for t, e in res.get("tasks", {}).items()
                 if isinstance(e, dict) and "prompt_untrained" in e}.items():
        footer.append(f"{t}: scored with the {e['prompt']} prompt" + (
            f" (the run never trained its own, {e['prompt_untrained']}: data.schemes, or sessions of one region)"
            if e["prompt"] != e["prompt_untrained"]
            else " although the run never trained it (data.schemes): its score is out of distribution"))
    if any(len(e.get("chunks", [])) > 1 for res in results_by_model.values() for e in res.get("tasks", {}).values()):
        footer.append(f"bins a-b: each chunk's bps_pooled [95 % interval over the "
                      f"{scored_unit(results_by_model.values())} (jackknife)]")
    return render_table(["task", "metric"] + columns, rows, align="<<" + ">" * len(columns),
                        footer=footer)
