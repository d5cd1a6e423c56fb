"""Linear probes on fixed train/test splits, unit firing statistics, and region classification
from per-unit vectors (numpy / scikit-learn).

Shape legend: K windows, T bins, N units, R rows (samples), F features.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["fit_predict_logistic", "fit_predict_ridge", "firing_statistics", "classify_regions",
           "classification_scores"]


def fit_predict_logistic(X_train, y_train, X_test, *, Cs=np.logspace(-4, 2, 7), folds: int = 3, seed: int = 0,
                         class_weight: str | None = None) -> np.ndarray:
    """L2 logistic regression, C chosen by stratified cross-validation on the training rows only
    (folds drawn on the rows in :func:`~spikefm.eval.metrics.canonical_row_order`, so the result
    does not depend on the order of the training rows); returns (R_test, classes) probabilities
    in ``np.unique(y_train)`` order. ``class_weight="balanced"`` weighs each class by the inverse
    of its share of the training rows (scikit-learn's), so the fit does not lean on class priors."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from spikefm.eval.metrics import canonical_row_order

    X = np.asarray(X_train, dtype=np.float64)
    y = np.asarray(y_train)
    order = canonical_row_order(X, y)  # folds independent of row order
    X, y = X[order], y[order]
    folds = int(min(folds, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 training samples for the logistic probe")
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=list(Cs), cv=StratifiedKFold(folds, shuffle=True, random_state=seed), max_iter=2000,
        class_weight=class_weight))
    with warnings.catch_warnings():  # scikit-learn 1.8+ announces API changes on every fit
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(X, y)
    return model.predict_proba(np.asarray(X_test, dtype=np.float64))


def fit_predict_ridge(X_train, Y_train, X_test, *, alphas=np.logspace(-2, 4, 7)) -> np.ndarray:
    """Ridge regression, alpha by efficient leave-one-out on the training rows only."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
    model.fit(np.asarray(X_train, dtype=np.float64), np.asarray(Y_train, dtype=np.float64))
    return model.predict(np.asarray(X_test, dtype=np.float64))


def firing_statistics(counts_KTN: np.ndarray, bin_ms: int, *, fano_bins: int = 5) -> np.ndarray:
    """(N, 3) per unit: mean rate (Hz), inter-spike-interval CV, Fano factor.

    Computed from binned counts: the ISI CV places the k spikes of a bin evenly inside it (so it
    is coarse below one bin), concatenating windows; the Fano factor is var / mean of the counts
    in ``fano_bins``-bin chunks. A unit with fewer than 3 spikes gets ISI CV 0; a silent unit
    Fano factor 0.

    Raises:
        ValueError: counts that are not (windows, bins, units), or ``fano_bins`` not an int in
            1..bins (a chunk longer than the windows left no chunk, and every Fano factor read 0).
    """
    c = np.asarray(counts_KTN)
    if c.ndim != 3:
        raise ValueError(f"counts must be (windows, bins, units), got shape {c.shape}")
    K, T, N = c.shape
    if isinstance(fano_bins, bool) or not isinstance(fano_bins, (int, np.integer)) or not 1 <= fano_bins <= max(T, 1):
        raise ValueError(f"fano_bins must be an int in 1..{T} (the bins of a window), got {fano_bins!r}")
    rate = c.reshape(-1, N).mean(0) * 1000.0 / bin_ms
    flat = c.reshape(-1, N).astype(np.int64)
    cv = np.zeros(N)
    for u in range(N):
        k = flat[:, u]
        bins = np.repeat(np.arange(k.size), k)
        within = np.concatenate([(np.arange(n) + 0.5) / n for n in k[k > 0]]) if k.sum() else np.zeros(0)
        t = bins + within
        if t.size >= 3:
            isi = np.diff(t)
            cv[u] = isi.std() / isi.mean() if isi.mean() > 0 else 0.0
    m = T // fano_bins
    chunks = c[:, :m * fano_bins].reshape(K, m, fano_bins, N).sum(2).reshape(-1, N).astype(np.float64)
    mean = chunks.mean(0)
    fano = np.where(mean > 0, chunks.var(0) / np.where(mean > 0, mean, 1.0), 0.0)
    return np.stack([rate, cv, fano], axis=1)


def classification_scores(y_true, y_pred, classes) -> dict:
    """Accuracy, balanced accuracy, chance levels and the confusion matrix (rows = true)."""
    from sklearn.metrics import confusion_matrix

    from spikefm.eval.metrics import balanced_accuracy

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    counts = np.array([np.sum(y_true == c) for c in classes])
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "balanced_accuracy": balanced_accuracy(y_true, y_pred),
            "chance": float(counts.max() / counts.sum()), "chance_balanced": 1.0 / len(classes),
            "n": int(len(y_true)), "classes": [str(c) for c in classes],
            "confusion": confusion_matrix(y_true, y_pred, labels=list(classes)).tolist()}


def classify_regions(features_by_session: dict[str, np.ndarray], regions_by_session: dict[str, list[str]], *,
                     seed: int = 0, folds: int = 5, class_weight: str | None = "balanced") -> dict:
    """Region of each unit from its feature vector: standardised L2 logistic regression (C by inner
    cross-validation), outer cross-validation grouped by session (leave-one-session-out, so a
    unit is never classified by a model that saw its session) when there are >= 2 sessions,
    else stratified K-fold over the one session's units (reported as ``grouping``). A region the
    folds cannot learn is left out, with the reason in ``regions_left_out`` (region -> reason):
    across sessions, one recorded in a single session only, or with fewer than 2 units left to
    learn from when one of its sessions is held out; in one session, one with fewer than 3 units
    (each of >= 2 folds must keep 2 of them to learn from).

    Classes are weighted by the inverse of their share of the training units
    (``class_weight="balanced"``, the default): sessions record different mixes of regions, so
    leaving one session out leaves its own regions under-represented in the training fold, and an
    unweighted classifier of uninformative features then predicts the *other* regions, scoring
    far below chance (balanced accuracy 0.05-0.09 for firing statistics on synthetic `ibl`
    sessions before 2026-12-05). ``None`` restores the unweighted fit.

    Returns:
        :func:`classification_scores` plus ``grouping``, ``num_units`` (the units scored),
        ``class_weight`` and ``regions_left_out``.
    """
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")

    sessions = sorted(features_by_session)
    X = np.concatenate([np.asarray(features_by_session[s], dtype=np.float64) for s in sessions])
    y = np.concatenate([np.asarray(regions_by_session[s], dtype=object) for s in sessions]).astype(str)
    g = np.concatenate([[s] * len(regions_by_session[s]) for s in sessions])
    left_out = _unlearnable_regions(y, g, several_sessions=len(sessions) >= 2)
    keep = ~np.isin(y, list(left_out))
    X, y, g = X[keep], y[keep], g[keep]
    classes = np.unique(y)
    if classes.size < 2:
        why = "; ".join(f"{r}: {reason}" for r, reason in sorted(left_out.items()))
        raise ValueError(f"region classification needs >= 2 regions it can learn, found {classes.size} "
                         f"({', '.join(classes.tolist()) or 'none'})" + (f"; left out: {why}" if why else "")
                         + "; give it more sessions, or more units per region")
    if len(sessions) >= 2:
        splits = list(LeaveOneGroupOut().split(X, y, g))
        grouping = "leave-one-session-out"
    else:
        n = int(min(folds, np.unique(y, return_counts=True)[1].min()))
        splits = list(StratifiedKFold(n, shuffle=True, random_state=seed).split(X, y))
        grouping = f"stratified {n}-fold (one session)"
    pred = np.empty(len(y), dtype=object)
    for tr, te in splits:
        # a class with < 2 training units in this fold cannot be fitted (possible with folds < 3)
        names, counts = np.unique(y[tr], return_counts=True)
        tr = tr[np.isin(y[tr], names[counts >= 2])]
        present = np.unique(y[tr])
        if present.size < 2:
            pred[te] = present[0] if present.size else names[counts.argmax()]
            continue
        proba = fit_predict_logistic(X[tr], y[tr], X[te], seed=seed, class_weight=class_weight)
        pred[te] = present[proba.argmax(1)]
    out = classification_scores(y, pred.astype(str), classes)
    out.update(grouping=grouping, num_units=int(len(y)), class_weight=class_weight,
               regions_left_out=dict(sorted(left_out.items())))
    return out


def _unlearnable_regions(y: np.ndarray, g: np.ndarray, *, several_sessions: bool) -> dict[str, str]:
    """Region -> why :func:`classify_regions` cannot learn it (see there)."""
    out: dict[str, str] = {}
    for r in map(str, np.unique(y)):
        in_r = y == r
        total = int(in_r.sum())
        if not several_sessions:
            if total < 3:
                out[r] = f"{total} unit{'s' if total != 1 else ''} in the one session (cross-validation needs >= 3)"
            continue
        held = {s: int((in_r & (g == s)).sum()) for s in np.unique(g[in_r])}
        if len(held) < 2:
            out[r] = f"recorded in one session only ({next(iter(held))}, {total} units)"
            continue
        s_worst = max(held, key=lambda s: (held[s], s))
        if total - held[s_worst] < 2:
            out[r] = (f"{total} units; {total - held[s_worst]} left to learn from when session {s_worst} "
                      "is held out (needs >= 2)")
    return out
