"""``spikefm eval RUN_DIR --data CORPUS`` of a NEDS run: encoding, decoding and region
classification on one session's held-out test windows, with baselines on the same splits.

Shape legend: K windows, T bins, N units, C channels, J labels, F features, Z true latents.

Windows are cut again with the run's window options and given the splits saved in its
``config.json`` (and, for a fine-tuned run, those of its pretrained run for the other sessions,
which the multi-session baselines train on). Tasks:

* ``encoding``: spikes predicted from behaviour and labels (every spike bin hidden):
  ``bps_pooled``, ``bps_per_neuron_mean``, single-trial R² of rates against Gaussian-smoothed
  counts (sd ``SMOOTH_SD_BINS`` bins) and PSTH R² (trial averages per class of the first label),
  both averaged over units with a mean rate >= ``min_rate_hz`` on the train windows.
* ``decoding``: behaviour predicted from spikes (every behaviour entry hidden): accuracy and
  balanced accuracy per label with chance levels; single-trial and PSTH R² per channel. Two
  NEDS read-outs: ``neds``, the model's own label heads and channel outputs (the NEDS paper's),
  and ``neds_probe``, linear decoders of its spike-token hidden states fitted on the train and
  val windows exactly as the ``linear`` baseline is fitted on counts (the hidden-state protocol
  of Jiang et al. 2025).
* ``region``: each unit's region from its vector in the model's session read-in / read-out, by a
  linear classifier cross-validated by session, against the same classifier on firing
  statistics (mean rate, ISI CV, Fano factor).

``comparisons`` (with baselines): the model's own read-out minus each baseline on the same test
windows, ``{"value", "ci95"}`` with a jackknife-t interval over the windows (paired, so the
windows' shared difficulty cancels): encoding ``bps_pooled``, and per label ``accuracy`` and per
channel ``r2_single_trial``. An interval that holds 0 means the test windows cannot tell the two
apart.

Baselines: ``linear`` (single session: Poisson GLM encoder with L2 chosen on val windows;
logistic / ridge decoders with cross-validated penalties), ``rrr`` (multi-session reduced-rank
encoder and decoder, rank option), ``oracle`` on synthetic data (true rates; decoders on the true
latents) and ``ideal_observer`` (two-class labels with a latent of their name, ``choice``: the
likelihood-ratio observer of the spikes given every other true latent, the bound Poisson noise sets
on any spike decoder, where the latent decoder's 1.0 ignores that noise).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from spikefm.eval.metrics import (balanced_accuracy, bps_per_neuron_mean, bps_pooled, bps_pooled_difference,
                                  jackknife_interval, r2_score_pooled, wilson_interval)
from spikefm.families.neds.family import _inherited_splits, _run_info
from spikefm.progress import NO_STAGES as _NO_STAGES
from spikefm.progress import stage_bar

__all__ = ["TASKS", "check_task_names", "evaluate_run", "format_results", "transfer_headline", "run_windows", "neds_predict", "neds_probe",
           "encoding_scores", "decoding_scores"]

TASKS = ("encoding", "decoding", "region")
#: Fewer train or validation windows than this for the baselines: ``evaluate_run`` warns.
FEW_WINDOWS = 5
SMOOTH_SD_BINS = 2.0
_LAGS = 2  # per-bin decoders read bins t-2 .. t+2
_CHUNKS = 5  # label decoders read the counts summed in 5 chunks of the window


def check_task_names(tasks: Sequence[str] | str | None) -> list[str]:
    """The task names of ``tasks`` (a comma list or a sequence; None: all of :data:`TASKS`), or a
    one-line ValueError naming those that are no NEDS task."""
    names = list(TASKS) if tasks is None else [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)
                                               if t.strip()]
    if not names:
        raise ValueError(f"no NEDS task given ({tasks!r}); name one or more of: {', '.join(TASKS)} (or leave "
                         "--tasks out for all)")
    bad = [t for t in names if t not in TASKS]
    if bad:
        raise ValueError(f"unknown NEDS task(s) {bad}; tasks: {', '.join(TASKS)}")
    return names


def run_windows(run_dir, corpus) -> dict:
    """Session id -> windows with saved splits: the run's sessions and (fine-tuned runs) those of
    the runs it was initialised from (``inherited_window_splits`` in its config; for runs saved
    before that field, read from its ``init_from`` run), so the multi-session baselines see the
    pretraining sessions whichever fine-tuning strategy was chosen (``unfreeze`` starts from a
    frozen stage that is deleted afterwards)."""
    from spikefm.data.windows import apply_splits, load_all_windows

    info = _run_info(run_dir)
    splits = dict(info["window_splits"])
    inherited = info.get("inherited_window_splits")
    if inherited is None and info.get("init_from"):
        inherited = _inherited_splits(info["init_from"], splits)
    for sid, s in (inherited or {}).items():
        splits.setdefault(sid, s)
    opts = dict(info["window_options"])
    opts["split_fractions"] = tuple(opts["split_fractions"])
    if info.get("corpus_manifest_sha256") not in (None, corpus.manifest_hash):
        warnings.warn(f"{corpus.path} is not the corpus the run was trained on; windows are matched to the "
                      "saved splits by start time", RuntimeWarning, stacklevel=2)
    ids = [s for s in splits if s in set(corpus.session_ids())]
    return apply_splits(load_all_windows(corpus, ids, require_table=False, **opts), splits)  # as training cut them


def _truth(corpus, w) -> dict | None:
    """The session's synthetic truth on the windows ``w`` (true expected counts, latents and the
    readout of the kept units), or None for real data or a truth that does not fit the windows."""
    from spikefm.corpus.synth import truth_readout
    from spikefm.eval.oracle import session_truth, truth_latent_windows, truth_windows

    t = session_truth(corpus, w.session_id)
    if t is None:
        return None
    try:
        rates, latents = truth_windows(t, w), truth_latent_windows(t, w)
    except ValueError:
        return None
    return {"rates_KTN": rates, "latents_KTZ": latents, "readout": truth_readout(t, w.unit_index, w.num_units)}


def _ideal_observer(truth: dict, te: np.ndarray, counts_KTN: np.ndarray, label_true: dict, mods) -> dict | None:
    """Test predictions of the ideal observer of every two-class label that has a signed latent of
    the same name in the synthetic truth (``choice``): the class whose rates, the label's latent
    flipped or not and every other latent at its true value, give the counts the higher Poisson
    likelihood (:func:`spikefm.eval.oracle.ideal_observer_favours_truth`)."""
    from spikefm.eval.oracle import ideal_observer_favours_truth

    readout = truth["readout"]
    if readout is None or truth["latents_KTZ"] is None:
        return None
    labels = {}
    for name, values in mods.labels:
        if len(values) != 2 or name not in readout["latent_names"] or name not in label_true:
            continue
        favours = ideal_observer_favours_truth(counts_KTN, truth["latents_KTZ"][te], readout["loadings_NZ"],
                                               readout["biases_N"], readout["latent_names"].index(name),
                                               max_count=readout["max_count"])
        y = label_true[name]
        labels[name] = np.where(y < 0, y, np.where(favours, y, 1 - y))
    return {"labels": labels, "behavior_KTC": None} if labels else None


# ---------------------------------------------------------------------------------------------
# NEDS predictions


def neds_predict(model, windows: dict, arrays: dict, session_id: str, index: np.ndarray, scheme: str,
                 batch_size: int = 64, return_hidden: bool = False) -> dict[str, np.ndarray]:
    """Predictions of every window in ``index`` with one scheme for all (``encoding`` or
    ``decoding`` hide everything of one modality, so no randomness is involved).

    Returns:
        {"rates_KTN", "behavior_KTC" (z-scored), "label_proba": list of (K, classes)}, and with
        ``return_hidden`` ``"hidden_KTD"``, the final states of the spike tokens.
    """
    from spikefm.families.neds.batches import collate
    from spikefm.families.neds.masking import SCHEMES, make_masks

    device = next(model.parameters()).device
    rates, beh, hidden, probs = [], [], [], [[] for _ in model.modalities.labels]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(index), batch_size):
            items = [(session_id, int(k)) for k in index[i:i + batch_size]]
            b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in collate(windows, arrays, items).items()}
            scheme_B = torch.full((len(items),), SCHEMES.index(scheme), dtype=torch.long)
            m = make_masks(scheme_B, num_bins=b["counts_BTN"].shape[1], unit_valid_BN=b["unit_valid_BN"],
                           behavior_valid_BTC=b["behavior_valid_BTC"], label_valid_BJ=b["label_valid_BJ"],
                           ratio=1.0, generator=torch.Generator().manual_seed(0))
            out = model(b["counts_BTN"], m.spike_hidden_BT, b["session_ids"], b["behavior_BTC"],
                        m.behavior_hidden_BTC, b["labels_BJ"], m.label_hidden_BJ, return_hidden=return_hidden)
            rates.append(torch.exp(out["log_rates_BTN"].float()).cpu().numpy())
            if return_hidden:
                hidden.append(out["hidden_BTD"].float().cpu().numpy())
            beh.append(out["behavior_BTC"].float().cpu().numpy())
            for j, logits in enumerate(out["label_logits"]):
                probs[j].append(torch.softmax(logits.float(), -1).cpu().numpy())
    n = windows[session_id].num_units
    out = {"rates_KTN": np.concatenate(rates)[..., :n].astype(np.float64),
           "behavior_KTC": np.concatenate(beh).astype(np.float64),
           "label_proba": [np.concatenate(p) for p in probs]}
    if return_hidden:
        out["hidden_KTD"] = np.concatenate(hidden).astype(np.float64)
    return out


# ---------------------------------------------------------------------------------------------
# Scores


def _smooth(x_KTN: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(x_KTN.astype(np.float64), SMOOTH_SD_BINS, axis=1, mode="nearest")


def _r2_per_column(pred_RQ: np.ndarray, true_RQ: np.ndarray) -> np.ndarray:
    ss_res = ((true_RQ - pred_RQ) ** 2).sum(0)
    ss_tot = ((true_RQ - true_RQ.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def _conditions(labels_KJ: np.ndarray) -> np.ndarray:
    """Condition of each window for PSTHs: the class of the first label (-1 missing), else 0."""
    return labels_KJ[:, 0] if labels_KJ.shape[1] else np.zeros(len(labels_KJ), dtype=np.int64)


def _psth(x_KTQ: np.ndarray, cond_K: np.ndarray, groups: Sequence[int] | None = None) -> np.ndarray:
    """Per-condition means over windows, stacked along bins; ``groups``: the conditions, in order
    (default the labelled ones present); one the windows lack gets the mean over all windows, so
    sessions with different conditions give features of one size."""
    if groups is None:
        groups = [c for c in np.unique(cond_K) if c >= 0 or len(np.unique(cond_K)) == 1]
    return np.concatenate([np.nanmean(x_KTQ[cond_K == c] if (cond_K == c).any() else x_KTQ, axis=0)
                           for c in groups])


def encoding_scores(rates_KTN: np.ndarray, counts_KTN: np.ndarray, cond_K: np.ndarray | None,
                    keep_N: np.ndarray) -> dict:
    """bps (pooled, per-neuron mean) over every unit; R² (single trial vs smoothed counts, PSTH)
    averaged over the ``keep_N`` units. ``cond_K`` None (continuous windows: no trials to
    average): PSTH R² is nan."""
    counts = counts_KTN.astype(np.float64)
    out = {"bps_pooled": bps_pooled(rates_KTN, counts), "bps_per_neuron_mean": bps_per_neuron_mean(rates_KTN, counts)}
    N = counts.shape[-1]
    r2_st = _r2_per_column(rates_KTN[..., keep_N].reshape(-1, keep_N.sum()),
                           _smooth(counts)[..., keep_N].reshape(-1, keep_N.sum()))
    r2_psth = (_r2_per_column(_psth(rates_KTN[..., keep_N], cond_K), _psth(counts[..., keep_N], cond_K))
               if cond_K is not None else np.full(int(keep_N.sum()), np.nan))
    out.update(r2_single_trial=float(np.nanmean(r2_st)) if keep_N.any() else float("nan"),
               r2_psth=float(np.nanmean(r2_psth)) if keep_N.any() and cond_K is not None else float("nan"),
               units_scored_r2=int(keep_N.sum()), units=int(N))
    return out


def decoding_scores(label_pred: dict[str, np.ndarray], label_true: dict[str, np.ndarray], num_classes: dict[str, int],
                    beh_pred_KTC: np.ndarray | None, beh_true_KTC: np.ndarray | None, channels: Sequence[str],
                    cond_K: np.ndarray | None) -> dict:
    """Per label: accuracy (with its 95 % Wilson interval: test sets are small), balanced accuracy,
    chance (majority class of the test windows) and balanced chance (1 / classes present); per
    channel: single-trial R² (pooled over bins) and PSTH R² (nan for ``cond_K`` None: continuous
    windows have no trials to average)."""

    out: dict[str, Any] = {}
    for name, y in label_true.items():
        ok = y >= 0
        if ok.sum() == 0:
            continue
        yt, yp = y[ok], label_pred[name][ok]
        present = np.unique(yt)
        hits = int(np.sum(yt == yp))
        balanced = balanced_accuracy(yt, yp) if present.size > 1 else float("nan")
        out[name] = {"accuracy": hits / yt.size, "accuracy_ci95": list(wilson_interval(hits, int(yt.size))),
                     "balanced_accuracy": balanced,
                     "chance": float(np.bincount(yt).max() / yt.size), "chance_balanced": 1.0 / present.size,
                     "n": int(yt.size), "classes": int(num_classes[name])}
    if beh_pred_KTC is not None:
        for c, name in enumerate(channels):
            t = beh_true_KTC[..., c]
            if np.isnan(t).all():  # not recorded in these windows: nothing to score
                continue
            # a channel constant on these windows scores R² nan (the README's rule, which the
            # report's nan notes give), where it was left out without a word
            # Both PSTHs average the same entries: the prediction where the truth was recorded
            # (averaging it over every trial compared two different sets of trials).
            p = np.where(np.isnan(t), np.nan, beh_pred_KTC[..., c])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                st = r2_score_pooled(p.ravel(), t.ravel())
                ps = (r2_score_pooled(_psth(p[..., None], cond_K).ravel(), _psth(t[..., None], cond_K).ravel())
                      if cond_K is not None else float("nan"))
            out[name] = {"r2_single_trial": st, "r2_psth": ps}
    return out


# ---------------------------------------------------------------------------------------------
# Baseline features


def _enc_features(w, a, num_classes: Sequence[int]) -> np.ndarray:
    """(K, T, F): z-scored channels (0 where missing), label one-hots, one-hot of the bin."""
    K, T = w.num_windows, w.num_bins
    parts = [np.nan_to_num(a.behavior_KTC.astype(np.float64))]
    for j, k in enumerate(num_classes):
        oh = np.zeros((K, k))
        ok = a.labels_KJ[:, j] >= 0
        oh[np.flatnonzero(ok), a.labels_KJ[ok, j]] = 1.0
        parts.append(np.repeat(oh[:, None, :], T, axis=1))
    parts.append(np.broadcast_to(np.eye(T)[None], (K, T, T)))
    return np.concatenate(parts, axis=2)


def _lag(x_KTF: np.ndarray) -> np.ndarray:
    """(K, T, F * (2 * _LAGS + 1)): features at bins t-_LAGS .. t+_LAGS (zeros beyond the window)."""
    T = x_KTF.shape[1]
    pad = np.pad(x_KTF, ((0, 0), (_LAGS, _LAGS), (0, 0)))
    return np.concatenate([pad[:, i:i + T] for i in range(2 * _LAGS + 1)], axis=2)


def _lagged(counts_KTN: np.ndarray) -> np.ndarray:
    """(K, T, N * (2 * _LAGS + 1)) log1p counts at bins t-_LAGS .. t+_LAGS."""
    return _lag(np.log1p(counts_KTN.astype(np.float64)))


def _chunked(counts_KTN: np.ndarray) -> np.ndarray:
    """(K, N * _CHUNKS) counts summed in _CHUNKS consecutive stretches of the window."""
    K, T, N = counts_KTN.shape
    edges = np.linspace(0, T, _CHUNKS + 1).astype(int)
    return np.concatenate([counts_KTN[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:])], axis=1).astype(np.float64)


def _rows(x_KT: np.ndarray) -> np.ndarray:
    return x_KT.reshape(-1, x_KT.shape[-1])


def _poisson_ll(rates, counts) -> float:
    r = np.maximum(rates, 1e-12)
    return float(np.sum(counts * np.log(r) - r))


def _fit_windows(windows, sid, idx) -> dict[str, np.ndarray]:
    """The windows each session's multi-session baseline is fitted on: the train windows, and for
    the target session ``idx["train"]`` (with --split val, the train windows less those that
    choose the penalty: fitting on them too chose the smallest penalty every time)."""
    return {s: idx["train"] if s == sid else windows[s].indices("train") for s in windows}


def _encoders(windows, arrays, sid, rank, idx, num_classes, stages=_NO_STAGES) -> dict[str, np.ndarray]:
    """Predicted test rates (K_test, T, N) of the linear GLM and the multi-session RRR encoder,
    each with its L2 penalty chosen by the validation log-likelihood of the target session.
    ``stages``: the evaluation's progress (two stages: the GLM, the RRR)."""
    from spikefm.eval.rrr import MultiSessionRRR, select_alpha

    w = windows[sid]
    X = {s: _enc_features(windows[s], arrays[s], num_classes) for s in windows}
    tr = _fit_windows(windows, sid, idx)
    Xtr = {s: _rows(X[s][tr[s]]) for s in windows if tr[s].size}
    Ytr = {s: _rows(windows[s].counts[tr[s]].astype(np.float64)) for s in Xtr}
    Xval, Yval = _rows(X[sid][idx["val"]]), _rows(w.counts[idx["val"]].astype(np.float64))
    K, T, N = len(idx["test"]), w.num_bins, w.num_units
    out = {}
    score = (lambda m: _poisson_ll(m.predict(Xval, sid), Yval)) if len(Xval) else (lambda m: 0.0)
    stages.begin("encoding: linear GLM")
    glm, _ = select_alpha(lambda a: MultiSessionRRR(rank=None, loss="poisson", alpha=a),
                          ({sid: Xtr[sid]}, {sid: Ytr[sid]}), score, on_fit=stages.part)
    out["linear"] = glm.predict(_rows(X[sid][idx["test"]]), sid).reshape(K, T, N)
    stages.begin(f"encoding: RRR over {len(Xtr)} sessions")
    rrr, _ = select_alpha(lambda a: MultiSessionRRR(rank=rank, loss="poisson", shared="input", alpha=a),
                          (Xtr, Ytr), score, on_fit=stages.part)
    out["rrr"] = rrr.predict(_rows(X[sid][idx["test"]]), sid).reshape(K, T, N)
    return out


def _linear_readout(Xlab_KF: np.ndarray, Xbin_KTF: np.ndarray, a, fit_idx: np.ndarray, te: np.ndarray, mods
                    ) -> dict[str, Any]:
    """Linear read-outs fitted on the ``fit_idx`` windows, predicted on ``te``: a logistic
    regression per label on the per-window features ``Xlab_KF`` and a ridge regression of every
    channel on the per-bin features ``Xbin_KTF`` (penalties cross-validated on the fit windows).
    Returns {"labels": {name: class index (K_te,)}, "behavior_KTC": z-scored (K_te, T, C) or None}."""
    from spikefm.eval.probes import fit_predict_logistic, fit_predict_ridge

    res: dict[str, Any] = {"labels": {}, "behavior_KTC": None, "skipped": {}}
    for j, (lab, _) in enumerate(mods.labels):
        y = a.labels_KJ[:, j]
        ok = fit_idx[y[fit_idx] >= 0]
        present = np.unique(y[ok])
        if present.size < 2 or np.bincount(y[ok])[present].min() < 2:
            held = ("no labelled window" if present.size == 0 else f"one {lab} class only" if present.size == 1
                    else f"a {lab} class in fewer than 2 windows")
            res["skipped"][lab] = f"its fit windows hold {held}: a classifier needs 2 classes of 2 or more windows each"
            continue
        classes = np.unique(y[ok])
        res["labels"][lab] = classes[fit_predict_logistic(Xlab_KF[ok], y[ok], Xlab_KF[te]).argmax(1)]
    C = len(mods.channels)
    if C:
        Y = _rows(a.behavior_KTC[fit_idx])
        cols = _recorded(Y)  # the session's channels (another session's leave no row here)
        ok = cols.any() & ~np.isnan(Y[:, cols]).any(1)
        if ok.sum() > 10:
            K, T = len(te), Xbin_KTF.shape[1]
            pred = np.full((K * T, C), np.nan)
            pred[:, cols] = fit_predict_ridge(_rows(Xbin_KTF[fit_idx])[ok], Y[ok][:, cols],
                                              _rows(Xbin_KTF[te])).reshape(K * T, -1)
            res["behavior_KTC"] = pred.reshape(K, T, C)
    return res


def _recorded(Y_RC: np.ndarray) -> np.ndarray:
    """(C,) bool: the channels recorded in some row of ``Y_RC``."""
    return ~np.isnan(Y_RC).all(0) if Y_RC.size else np.zeros(Y_RC.shape[1], dtype=bool)


def neds_probe(hidden_KTD: np.ndarray, a, fit_idx: np.ndarray, te: np.ndarray, mods) -> dict[str, Any]:
    """The ``neds_probe`` read-out (the hidden-state protocol of Jiang et al. 2025): linear
    decoders of NEDS's final spike-token states under the decoding scheme, fitted on the
    ``fit_idx`` windows like the ``linear`` baseline is on counts: labels from the states
    summed in ``_CHUNKS`` stretches of the window (standardised before the fit, so sums and
    means are the same features), channels from the states at bins t-``_LAGS`` .. t+``_LAGS``.
    ``hidden_KTD`` covers every window of the session (index K)."""
    return _linear_readout(_chunked(hidden_KTD), _lag(hidden_KTD), a, fit_idx, te, mods)


def _decoders(windows, arrays, sid, rank, idx, mods, latents_KTZ=None, stages=_NO_STAGES) -> dict[str, dict]:
    """Test predictions of the linear, RRR and (with true latents) oracle decoders:
    {model: {"labels": {name: class index (K,)}, "behavior_KTC": z-scored (K, T, C)}}.
    ``stages``: the evaluation's progress (its decoding stages, as :func:`_num_stages` counts them)."""
    from spikefm.eval.rrr import MultiSessionRRR, select_alpha

    w, a = windows[sid], arrays[sid]
    fit_idx = np.concatenate([idx["train"], idx["val"]])
    te = idx["test"]
    K, T, C = len(te), w.num_bins, len(mods.channels)
    feats = {"linear": (_chunked(w.counts), _lagged(w.counts))}
    if latents_KTZ is not None:
        feats["oracle"] = (_chunked(latents_KTZ), _lag(latents_KTZ))
    out = {}
    for name, (Xlab, Xbin) in feats.items():
        stages.begin(f"decoding: {name}")
        out[name] = _linear_readout(Xlab, Xbin, a, fit_idx, te, mods)
    # Multi-session RRR: per-session input maps, a shared output map, trained on every session's
    # train windows; penalty chosen on the target session's val windows.
    res = {"labels": {}, "behavior_KTC": None}
    fit_windows = _fit_windows(windows, sid, idx)
    sessions = [s for s in windows if fit_windows[s].size]
    val = idx["val"]
    for j, (lab, values) in enumerate(mods.labels):
        stages.begin(f"decoding: RRR {lab}")
        X, Y = {}, {}
        for s in sessions:
            t = fit_windows[s]
            y = arrays[s].labels_KJ[t, j]
            if (y >= 0).sum() >= 2:
                X[s], Y[s] = _chunked(windows[s].counts[t][y >= 0]), y[y >= 0]
        if sid not in X or np.unique(Y[sid]).size < 2:
            res.setdefault("skipped", {})[lab] = (f"the session's fit windows hold fewer than 2 {lab} classes "
                                                  "with labels")
            continue
        yv = a.labels_KJ[val, j]
        Xv = _chunked(w.counts[val])

        def score(m, yv=yv, Xv=Xv):
            ok = yv >= 0
            return float(np.mean(m.predict(Xv[ok], sid).argmax(1) == yv[ok])) if ok.any() else 0.0

        m, _ = select_alpha(lambda al, k=len(values): MultiSessionRRR(rank=rank, loss="xent", shared="output",
                                                                      num_outputs=k, alpha=al), (X, Y), score,
                            on_fit=stages.part)
        res["labels"][lab] = m.predict(_chunked(w.counts[te]), sid).argmax(1)
    cols = _recorded(_rows(a.behavior_KTC[fit_windows[sid]])) if C else np.zeros(0, dtype=bool)
    if C:
        stages.begin("decoding: RRR behaviour")
    if cols.any():  # the target session's channels; a session lacking one of them is left out
        X, Y = {}, {}
        for s in sessions:
            t = fit_windows[s]
            xs, ys = _rows(_lagged(windows[s].counts[t])), _rows(arrays[s].behavior_KTC[t])[:, cols]
            ok = ~np.isnan(ys).any(1)
            if ok.sum() > 10:
                X[s], Y[s] = xs[ok], ys[ok]
        if sid in X:
            yv, xv = _rows(a.behavior_KTC[val])[:, cols], _rows(_lagged(w.counts[val]))
            okv = ~np.isnan(yv).any(1)

            def score(m):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    return r2_score_pooled(m.predict(xv[okv], sid), yv[okv]) if okv.sum() > 1 else 0.0

            m, _ = select_alpha(lambda al: MultiSessionRRR(rank=rank, loss="mse", shared="output", alpha=al),
                                (X, Y), score, on_fit=stages.part)
            pred = np.full((K * T, C), np.nan)
            pred[:, cols] = np.asarray(m.predict(_rows(_lagged(w.counts[te])), sid)).reshape(K * T, -1)
            res["behavior_KTC"] = pred.reshape(K, T, C)
    out["rrr"] = res
    return out


# ---------------------------------------------------------------------------------------------
# The evaluation


def _num_stages(names: Sequence[str], baselines: bool, oracle: bool, mods) -> int:
    """The progress stages of :func:`evaluate_run` (each ``stages.begin`` it and its helpers call)."""
    n = 0
    if "encoding" in names:
        n += 1 + 2 * baselines  # the model; the GLM and the RRR
    if "decoding" in names:
        n += 1  # the model and its probe
        if baselines:  # linear (and oracle) read-outs, an RRR per label and one for the channels, the observer
            n += 1 + 2 * oracle + len(mods.labels) + bool(mods.channels)
    return n + ("region" in names)


def evaluate_run(run_dir: str, corpus: str, *, tasks: Sequence[str] | str | None = None, session: str | None = None,
                 baselines: bool = True, split: str = "test", min_rate_hz: float = 0.5, rank: int = 3,
                 progress: bool = False) -> dict[str, Any]:
    """Score a finished NEDS run (see the module docstring).

    Args:
        run_dir: the run directory.
        corpus: the corpus directory.
        tasks: names from :data:`TASKS` (list or comma-separated); None = all.
        session: the session to score; None = the run's only session.
        baselines: include the linear, RRR and oracle baselines.
        split: ``"test"`` (the headline) or ``"val"`` (for choosing settings: the val windows are
            scored, and the baselines are fitted on train windows only, their penalties chosen on
            the last eighth of them).
        min_rate_hz: units at or above this mean rate (train windows) enter the R² averages.
        rank: rank of the RRR baselines.
        progress: a progress display of the evaluation's stages (the model's passes, each
            baseline's fits, the region task) on stderr.

    Returns:
        JSON-serialisable {"family": "neds", "session_id", "tasks", "results": {task: {model:
        scores}}, ...}.
    """
    from spikefm.corpus.reader import Corpus
    from spikefm.families import get
    from spikefm.families.neds.batches import session_arrays
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    fam = get("neds")
    if split not in ("test", "val"):
        raise ValueError(f"NEDS runs are scored on their test (or, to choose settings, val) windows; got split "
                         f"{split!r}, expected 'test' or 'val'")
    names = check_task_names(tasks)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    cfg = load_run_config(run_dir, model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)
    model = load_exported_model(run_dir, fam, cfg)  # built from the run's record: no windows read
    known = list(model.session_units)
    if session is None:
        if len(known) != 1:
            raise ValueError(f"the run has {len(known)} sessions; pick one with --session: {', '.join(known)}")
        session = known[0]
    if session not in known:
        raise ValueError(f"the run has no session {session!r}; its sessions: {', '.join(known)}; fine-tune it on "
                         "that session first (spikefm finetune)")
    corpus = Corpus(corpus)
    windows = run_windows(run_dir, corpus)
    if session not in windows:
        raise ValueError(f"{corpus.path} holds no session {session!r} (the run's); evaluate the run on the corpus it "
                         f"was trained on (--data; its config.json names it: {cfg.data.corpus})")
    mods = model.modalities
    arrays = {s: session_arrays(w, mods) for s, w in windows.items()}
    w, a = windows[session], arrays[session]
    idx = {s: w.indices(s) for s in ("train", "val", "test")}
    num_windows = {k: int(v.size) for k, v in idx.items()}
    if split == "val":  # score val; nothing fitted here sees it (the baselines' own val: train's last eighth)
        tr = idx["train"]
        cut = tr.size - max(1, tr.size // 8)
        idx = {"train": tr[:cut], "val": tr[cut:], "test": idx["val"]}
    te = idx["test"]
    if te.size == 0:
        raise ValueError(f"session {session!r} has no {split} windows; raise data.split_fractions' {split} share")
    if baselines and min(idx["train"].size, idx["val"].size) < FEW_WINDOWS:
        warnings.warn(f"session {session!r} has {idx['train'].size} train and {idx['val'].size} validation windows "
                      f"for the baselines (fewer than {FEW_WINDOWS}): their fits and penalties rest on too few "
                      "windows to be trusted (a longer session, or more trials, gives more)", RuntimeWarning,
                      stacklevel=2)
    truth = _truth(corpus, w) if baselines else None
    cond = _conditions(a.labels_KJ[te]) if w.align is not None else None  # continuous: no PSTH
    skipped: dict[str, str] = {}
    if "decoding" in names and not (mods.channels or mods.labels):
        names = [t for t in names if t != "decoding"]
        skipped["decoding"] = ("the run decodes no behaviour channel or trial label: its data.behavior and "
                               "data.labels select none (the corpus records none for its sessions, or those "
                               "settings left them out)")
    elif "decoding" in names and not (np.isfinite(a.behavior_KTC).any() or (a.labels_KJ >= 0).any()):
        # a run fine-tuned to a session without the pretrained run's channels and labels keeps them
        names = [t for t in names if t != "decoding"]
        skipped["decoding"] = (f"session {session!r} holds none of the run's behaviour channels or trial "
                               "labels, so there is nothing of it to decode")
    results: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    with stage_bar(_num_stages(names, baselines, truth is not None, mods), f"scoring {session}",
                   enabled=progress) as stages:
        if "encoding" in names:
            stages.begin("encoding: NEDS")
            train_rate = w.counts[idx["train"]].reshape(-1, w.num_units).mean(0) * 1000.0 / w.bin_ms
            keep = train_rate >= min_rate_hz
            counts = w.counts[te]
            preds = {"neds": neds_predict(model, windows, arrays, session, te, "encoding")["rates_KTN"]}
            if baselines:
                preds.update(_encoders(windows, arrays, session, rank, idx, mods.num_classes, stages))
                if truth is not None:
                    preds["oracle"] = truth["rates_KTN"][te]
            results["encoding"] = {k: encoding_scores(v, counts, cond, keep) for k, v in preds.items()}
            if baselines:
                comparisons["encoding"] = {
                    f"neds - {k}": {"bps_pooled": bps_pooled_difference(preds["neds"], v, counts)}
                    for k, v in preds.items() if k not in ("neds", "oracle")}
        if "decoding" in names:
            # One pass over the fit and test windows: the heads' test outputs, and every hidden state
            # the probe is fitted on (fit windows) and scored on (test windows).
            stages.begin("decoding: NEDS and its probe")
            fit_idx = np.concatenate([idx["train"], idx["val"]])
            scored = np.concatenate([fit_idx, te])
            p = neds_predict(model, windows, arrays, session, scored, "decoding", return_hidden=True)
            on_te = slice(fit_idx.size, None)
            label_true = {lab: a.labels_KJ[te, j] for j, (lab, _) in enumerate(mods.labels)}
            ncls = dict(zip(mods.label_names, mods.num_classes))
            raw_true = a.behavior_KTC[te] * a.sd_C + a.mean_C
            models = {"neds": {"labels": {lab: p["label_proba"][j][on_te].argmax(1)
                                          for j, lab in enumerate(mods.label_names)},
                               "behavior_KTC": p["behavior_KTC"][on_te]}}
            hidden = np.zeros((w.num_windows, w.num_bins, model.cfg.dim))
            hidden[scored] = p["hidden_KTD"]
            models["neds_probe"] = neds_probe(hidden, a, fit_idx, te, mods)
            if baselines:
                models.update(_decoders(windows, arrays, session, rank, idx, mods,
                                        None if truth is None else truth["latents_KTZ"], stages))
                if truth is not None:
                    stages.begin("decoding: ideal observer")
                ideal = None if truth is None else _ideal_observer(truth, te, w.counts[te], label_true, mods)
                if ideal is not None:
                    models["ideal_observer"] = ideal
            # behaviour back in its own units (the models predict it z-scored per session)
            beh = {name: None if m["behavior_KTC"] is None else m["behavior_KTC"] * a.sd_C + a.mean_C
                   for name, m in models.items()}
            results["decoding"] = {
                name: decoding_scores(m["labels"], {k: v for k, v in label_true.items() if k in m["labels"]}, ncls,
                                      beh[name], raw_true, mods.channels, cond) for name, m in models.items()}
            for lab, y in label_true.items():  # why a label has no row, for every model or for one
                if not (y >= 0).any():
                    skipped[f"decoding {lab}"] = f"none of the {te.size} {split} windows has a {lab} label"
                    continue
                for name, m in models.items():
                    why = m.get("skipped", {}).get(lab)
                    if why:
                        skipped[f"decoding {lab} ({name})"] = why
            if baselines:
                comparisons["decoding"] = {
                    f"neds - {k}": _paired_decoding(models["neds"]["labels"], m["labels"], beh["neds"], beh[k],
                                                    label_true, raw_true, mods.channels)
                    for k, m in models.items() if k not in ("neds", "neds_probe", "oracle", "ideal_observer")}
        if "region" in names:
            stages.begin("region classification")
            results["region"] = region_task(model, windows, arrays, splits=("train", "val") if split == "val" else None)
    if comparisons:
        results["comparisons"] = comparisons
    if skipped:
        results["skipped"] = skipped
    return {"family": "neds", "run_dir": str(Path(run_dir).resolve()), "corpus": str(corpus.path.resolve()),
            "corpus_manifest_sha256": corpus.manifest_hash, "session_id": session,
            "num_units": int(model.session_units[session]), "tasks": names,
            "oracle": truth is not None, "rank": rank, "min_rate_hz": min_rate_hz,
            "modalities": mods.to_json(), "num_windows": num_windows, "split": split,
            # the sessions the multi-session baselines (rrr) were fitted on: the run's and those it was
            # initialised from; a single-session run (no init_from) has its own only
            "baseline_sessions": sorted(windows) if baselines else [],
            "results": results}


def _paired_decoding(labels_a: dict, labels_b: dict, pa: np.ndarray | None, pb: np.ndarray | None,
                     label_true: dict, raw_true_KTC: np.ndarray, channels: Sequence[str]) -> dict[str, Any]:
    """Per label: accuracy of ``a`` minus ``b`` on the same windows; per channel: single-trial R²
    of ``a`` minus ``b`` (``pa``, ``pb``: (K, T, C) behaviour in its own units, or None); each
    ``{"value", "ci95"}`` (jackknife over the windows)."""
    out: dict[str, Any] = {}
    for name, y in label_true.items():
        if name not in labels_a or name not in labels_b:
            continue
        ok = y >= 0
        d = (labels_a[name][ok] == y[ok]).astype(float) - (labels_b[name][ok] == y[ok])
        if d.size:  # not clipped to [-1, 1]: an interval past it says how few the windows are
            out[name] = {"accuracy": jackknife_interval(lambda i, d=d: d[i].mean(), d.size)}
    if pa is None or pb is None:
        return out
    for c, name in enumerate(channels):
        t = raw_true_KTC[..., c]
        if np.isnan(t).all() or np.nanstd(t) == 0:
            continue

        def diff(i, c=c, t=t):
            return (r2_score_pooled(pa[i, :, c].ravel(), t[i].ravel())
                    - r2_score_pooled(pb[i, :, c].ravel(), t[i].ravel()))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = {"r2_single_trial": jackknife_interval(diff, t.shape[0])}
    return out


def _psth_features(x_KTQ: np.ndarray, cond_K: np.ndarray, groups: Sequence[int] | None = None) -> np.ndarray:
    """(Q, conditions * T) per-column PSTHs per condition (``groups``, see :func:`_psth`), z-scored
    per column."""
    p = _psth(x_KTQ, cond_K, groups).T
    sd = p.std(1, keepdims=True)
    return (p - p.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def region_task(model, windows: dict, arrays: dict, splits: Sequence[str] | None = None) -> dict:
    """Region classification of every unit of the model's sessions, one linear classifier and
    leave-one-session-out folds for every feature set, from every window of each session (or the
    windows of ``splits``: ``eval --split val`` leaves the test windows out):

    * ``embedding``: the unit's read-in column and read-out row (:meth:`NEDS.unit_embeddings`);
    * ``embedding_tuning``: the read-out row applied to the model's hidden states averaged per
      condition (first label) and bin, i.e. the unit's model PSTH, z-scored per unit;
    * ``firing_stats`` (baseline): mean rate, ISI CV, Fano factor;
    * ``psth_counts`` (baseline): the unit's observed PSTH per condition, z-scored, smoothed.
    """
    from spikefm.eval.probes import classify_regions, firing_statistics
    from spikefm.families.neds.batches import collate

    used = {s: (np.arange(windows[s].num_windows) if splits is None else windows[s].indices(list(splits)))
            for s in model.session_units if s in windows}
    sessions = [s for s, idx in used.items() if idx.size]
    regions = {s: list(windows[s].unit_regions) for s in sessions}
    feats: dict[str, dict[str, np.ndarray]] = {k: {} for k in ("embedding", "embedding_tuning", "firing_stats",
                                                               "psth_counts")}
    device = next(model.parameters()).device
    model.eval()
    # one condition list for every session, so their PSTH features have one size
    conds = {s: _conditions(arrays[s].labels_KJ[used[s]]) for s in sessions}
    seen = {int(c) for s in sessions for c in np.unique(conds[s])}
    groups = sorted(c for c in seen if c >= 0) or sorted(seen)
    for s in sessions:
        w, idx = windows[s], used[s]
        cond = conds[s]
        feats["embedding"][s] = model.unit_embeddings(s).float().cpu().numpy()
        feats["firing_stats"][s] = firing_statistics(w.counts[idx], w.bin_ms, fano_bins=min(5, w.num_bins))
        feats["psth_counts"][s] = _psth_features(_smooth(w.counts[idx]), cond, groups)
        hidden = []
        with torch.no_grad():
            for i in range(0, idx.size, 64):
                b = collate(windows, arrays, [(s, int(k)) for k in idx[i:i + 64]])
                b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
                B, T = b["counts_BTN"].shape[:2]
                out = model(b["counts_BTN"], torch.zeros(B, T, dtype=torch.bool, device=device), b["session_ids"],
                            b["behavior_BTC"], ~b["behavior_valid_BTC"], b["labels_BJ"], ~b["label_valid_BJ"],
                            return_hidden=True)
                hidden.append(out["hidden_BTD"].float().cpu().numpy())
        h_KTD = np.concatenate(hidden)
        wout = model.stitcher(s).read_out.weight.detach().float().cpu().numpy()  # (n, D)
        feats["embedding_tuning"][s] = _psth_features(h_KTD @ wout.T, cond, groups)
    out = {}
    for name, f in feats.items():
        try:
            out[name] = classify_regions(f, regions)
        except ValueError as exc:
            hint = ("" if len(sessions) > 1 else " (this run knows one session, so only that session's units are "
                    "classified: the pretrained run's evaluation classifies the units of all its sessions)")
            out[name] = {"error": str(exc) + hint}
    return out


def _cell(x) -> str:
    from spikefm.tables import fmt_number

    return fmt_number(x, ".3f")


def format_results(results_by_run: dict[str, dict[str, Any]]) -> str:
    """Text tables of :func:`evaluate_run` results: one row per (run, model, metric)."""
    from spikefm.tables import render_table

    rows = []
    for run, r in results_by_run.items():
        res = r.get("results", r)
        for model, s in res.get("encoding", {}).items():
            rows.append([run, "encoding", model, "spikes", _cell(s["bps_pooled"]), _cell(s["bps_per_neuron_mean"]),
                         _cell(s["r2_single_trial"]), _cell(s["r2_psth"])])
        for model, s in res.get("decoding", {}).items():
            for target, v in s.items():
                if "accuracy" in v:
                    rows.append([run, "decoding", model, target, f"acc {_cell(v['accuracy'])}",
                                 f"bal {_cell(v['balanced_accuracy'])}", f"chance {_cell(v['chance'])}", ""])
                else:
                    rows.append([run, "decoding", model, target, "", "", _cell(v["r2_single_trial"]),
                                 _cell(v["r2_psth"])])
        for task in ("encoding", "decoding"):
            for pair, targets in res.get("comparisons", {}).get(task, {}).items():
                for target, metrics in ({"spikes": targets} if task == "encoding" else targets).items():
                    for metric, v in metrics.items():
                        lo, hi = v["ci95"]
                        ci = f"95 % [{_cell(lo)}, {_cell(hi)}]" if np.isfinite([lo, hi]).all() else \
                            "95 %: too few windows"
                        rows.append([run, f"{task} difference", pair, target,
                                     f"{metric} {_cell(v['value'])}", ci, "", ""])
        for model, v in res.get("region", {}).items():
            if "error" in v:
                rows.append([run, "region", model, "units", "not scored (below)", "", "", ""])
            else:
                rows.append([run, "region", model, f"{v['num_units']} units", f"acc {_cell(v['accuracy'])}",
                             f"bal {_cell(v['balanced_accuracy'])}", f"chance {_cell(v['chance'])}",
                             f"bal. chance {_cell(v['chance_balanced'])}"])
    notes = [f"{run}: rrr was fitted on this one session (the corpus holds no other session of the run or of the "
             "run it was fine-tuned from), so it is a single-session baseline here" for run, r in results_by_run.items()
             if len(r.get("baseline_sessions") or []) == 1
             and any("rrr" in r.get("results", r).get(t, {}) for t in ("encoding", "decoding"))]
    notes += [f"{run}: {task} skipped: {why}" for run, r in results_by_run.items()
              for task, why in r.get("results", r).get("skipped", {}).items()]
    for run, r in results_by_run.items():
        region = r.get("results", r).get("region", {})
        errors: dict[str, list[str]] = {}  # one line per reason (every feature set fails alike on one session)
        for model, v in region.items():
            if "error" in v:
                errors.setdefault(v["error"], []).append(model)
        notes += [f"{run}: region {', '.join(models)} not scored: {why}" for why, models in errors.items()]
        left = dict(item for v in region.values() for item in (v.get("regions_left_out") or {}).items())
        if left:
            notes.append(f"{run}: regions left out of region classification: "
                         + "; ".join(f"{k} ({why})" for k, why in left.items()))
    scored = []
    for run, r in results_by_run.items():
        split, n = r.get("split", "test"), (r.get("num_windows") or {}).get(r.get("split", "test"))
        where = f"session {r['session_id']}, " if r.get("session_id") else ""
        scored.append(f"{run}: {where}{split} windows" + (f" ({n})" if n is not None else ""))
    table = render_table(["run", "task", "model", "target", "bps / acc", "bps/neuron / bal", "R² single / chance",
                          "R² PSTH"], rows, title=f"NEDS evaluation ({'; '.join(scored)})")
    return "\n".join([table, *notes])


#: Column names of :func:`transfer_headline` for the models of :func:`evaluate_run`'s results.
_HEADLINE_COLUMNS = {"neds_probe": "probe", "ideal_observer": "ideal observer"}


def transfer_headline(res: dict) -> dict[str, dict[str, Any]]:
    """The numbers of one seed of a transfer study (``res``: ``{"fine-tuned": results,
    "single-session": results}``, each :func:`evaluate_run`'s ``results``): encoding bits per
    spike, each label's accuracy, each behaviour channel's single-trial R² and the region
    classifiers' balanced accuracy, per model and baseline (``{metric: {column: value or None}}``;
    the baselines and references come from the fine-tuned run's benchmark, on the same windows)."""
    ft, ss = res["fine-tuned"], res.get("single-session", {})
    rows: dict[str, dict[str, Any]] = {}

    def columns(section: str, pick) -> dict[str, Any]:
        row = {"fine-tuned": pick(ft.get(section, {}).get("neds")),
               "single-session": pick(ss.get(section, {}).get("neds"))}
        for name, scores in ft.get(section, {}).items():
            if name != "neds" and pick(scores) is not None:  # a baseline without this metric: no column
                row[_HEADLINE_COLUMNS.get(name, name)] = pick(scores)
        return row

    def get(*keys):
        def pick(d):
            for k in keys:
                if not isinstance(d, dict) or d.get(k) is None:
                    return None
                d = d[k]
            return d
        return pick

    for metric in ("bps_pooled", "bps_per_neuron_mean"):
        if "encoding" in ft:
            row = columns("encoding", get(metric))
            diff = ft.get("comparisons", {}).get("encoding", {}).get("neds - linear", {}).get(metric)
            if metric == "bps_pooled" and diff:  # paired on the same test windows, jackknife interval
                row["fine-tuned minus linear, 95 % CI low"], row["fine-tuned minus linear, 95 % CI high"] = \
                    diff["ci95"]
            rows[f"encoding {metric}"] = row
    for target, scores in ft.get("decoding", {}).get("neds", {}).items():
        if "accuracy" in scores:
            row = columns("decoding", get(target, "accuracy"))
            row.update(chance=scores.get("chance"), n_scored=scores.get("n"))
            rows[f"{target} accuracy"] = row
        else:
            rows[f"{target} R² (single trial)"] = columns("decoding", get(target, "r2_single_trial"))
    if "region" in ft:
        row = {"fine-tuned": get("embedding", "balanced_accuracy")(ft["region"]),
               "single-session": get("embedding", "balanced_accuracy")(ss.get("region", {}))}
        for name, scores in ft["region"].items():
            if name != "embedding":
                row[name.replace("_", " ")] = get("balanced_accuracy")(scores)
        row["chance"] = get("embedding", "chance_balanced")(ft["region"])
        rows["region balanced accuracy"] = row
    return rows
