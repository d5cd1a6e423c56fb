"""NEDS inputs: the modalities of a run, per-session arrays (z-scored behaviour, label classes) and
training batches with mask seeds.

Shape legend: K windows of a session, B batch, T bins, N units, C channels, J labels.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from spikefm.data.windows import SeededBatchLoader, too_many_values_text

from spikefm.families.neds.model import Modalities
from spikefm.progress import warn_once

__all__ = ["AUTO_LABELS", "resolve_modalities", "parse_label_spec", "SessionArrays", "session_arrays",
           "collate", "NEDSLoader", "batch_seed"]

#: Trial labels ``labels=auto`` uses where the sessions hold them: choice and block (IBL-style
#: tasks), reach target (centre-out reaching).
AUTO_LABELS = ("choice", "block_prior", "target_angle")

def parse_label_spec(text: str) -> list[tuple[str, tuple[float, ...] | None]]:
    """``"choice=-1,1;block_prior"`` -> [("choice", (-1.0, 1.0)), ("block_prior", None)]. Labels
    are separated by ``;``; names without classes may also be separated by commas
    (``"choice,block_prior"``, as ``data.behavior`` lists channels)."""
    out = []
    parts = [p.strip() for p in str(text).split(";") if p.strip()]
    parts = [q.strip() for p in parts for q in ([p] if "=" in p else p.split(","))]
    for part in parts:
        name, sep, vals = part.partition("=")
        values = None
        if sep:
            try:
                values = tuple(sorted(float(v) for v in vals.split(",") if v.strip()))
            except ValueError:
                values = ()
            if len(values) < 2:
                raise ValueError(f"data.labels: {part!r} must list at least two numeric classes, e.g. "
                                 "'choice=-1,1' (separate labels with ';': 'choice=-1,1;block_prior')")
        if not name.strip():
            raise ValueError(f"data.labels must look like 'choice;block_prior' or 'choice=-1,1', got {text!r}")
        if sep and "," in name:  # "a,b=1,2": the classes would name one label called "a,b"
            names = [n.strip() for n in name.split(",") if n.strip()]
            if len(names) < 2:  # "choice,=-1,1": a stray comma
                raise ValueError(f"data.labels: {part!r} has a comma before its '='; write the label and its "
                                 f"classes as '{names[0] if names else 'choice'}={vals}'")
            raise ValueError(f"data.labels: {part!r} gives classes after a comma-separated list of labels; "
                             "when a label has classes, separate the labels with ';': "
                             f"{';'.join(names[:-1])};{names[-1]}={vals}")
        out.append((name.strip(), values))
    return out


def _numeric_values(windows: dict, name: str) -> set[float]:
    """The numeric values label ``name`` takes in any session's windows."""
    seen: set[float] = set()
    for w in windows.values():
        arr = w.labels.get(name)
        if arr is not None:
            seen |= {float(v) for v in arr if isinstance(v, (int, float)) and not math.isnan(v)}
    return seen


def _as_labels(windows: dict, names: list[str]) -> str:
    """Why trial columns ``names`` are no labels when they have too many values (``""`` else)."""
    many = {}
    for w in windows.values():
        for name in names:
            if name in getattr(w, "many_valued", {}):
                many[name] = max(many.get(name, 0), w.many_valued[name])
    if not many:
        return ""
    return " as a discrete label (" + "; ".join(too_many_values_text(n, k) for n, k in many.items()) + ")"


def resolve_modalities(windows: dict, behavior: str, labels: str, *, missing_ok: bool = False) -> Modalities:
    """The channels and labels of a run from its windows and the ``data.behavior`` /
    ``data.labels`` options (``auto``: every channel of the sessions; the :data:`AUTO_LABELS`
    they hold; ``""``: none; or an explicit list).

    An explicit channel or label that no session holds is an error, or with ``missing_ok`` (a run
    that starts from a pretrained one, which must keep its channels and labels) a warning: such
    entries are missing everywhere, so nothing of them is scored or measured."""
    have_channels = sorted({c for w in windows.values() for c in w.behavior_names})
    if behavior == "auto":
        channels = have_channels
    else:
        channels = [c.strip() for c in behavior.split(",") if c.strip()]
        missing = [c for c in channels if c not in have_channels]
        if missing and not missing_ok:
            raise ValueError(f"data.behavior names {missing}, which no session holds; channels in the "
                             f"data: {', '.join(have_channels) or '(none)'}")
        if missing:
            warn_once(f"the session(s) {', '.join(sorted(windows))} hold none of the pretrained run's "
                      f"channel(s) {', '.join(missing)}: they stay in the model but are never scored, "
                      "so fine-tuning learns from the spikes (and any labels present) and nothing of "
                      "them is decoded", about="channels", stacklevel=3)
    present = {name for w in windows.values() for name in w.labels}
    spec = ([(n, None) for n in AUTO_LABELS if len(_numeric_values(windows, n)) >= 2] if labels == "auto"
            else parse_label_spec(labels))  # auto: a label of one value in every session is no label
    out = []
    # a label given with its classes that no session holds: refused on a new run, warned about on one
    # that keeps a pretrained run's labels (its one session may lack some)
    absent = [name for name, values in spec if values is not None and name not in present]
    if absent and not missing_ok:
        raise ValueError(f"data.labels names {', '.join(repr(n) for n in absent)}, which none of the session(s) "
                         f"hold{_as_labels(windows, absent)}; labels present: {', '.join(sorted(present)) or '(none)'}")
    if absent:
        warn_once(f"data.labels names {', '.join(repr(n) for n in absent)}, which none of the session(s) "
                  f"{', '.join(sorted(windows))} hold: kept in the model but never scored or decoded (labels "
                  f"present: {', '.join(sorted(present)) or '(none)'})", about="labels", stacklevel=3)
    for name, values in spec:
        if values is None:
            seen = _numeric_values(windows, name)
            if len(seen) < 2:
                continuous = windows and all(getattr(w, "align", "") is None for w in windows.values())
                raise ValueError(f"data.labels: label {name!r} has {len(seen)} numeric value(s) in the "
                                 f"data{_as_labels(windows, [name])}; labels present: "
                                 f"{', '.join(sorted(present)) or '(none)'}"
                                 + ("; windows cut from continuous recording (data.align=) carry no trial labels: "
                                    "set data.labels= (none), or align the windows to a trial event"
                                    if continuous else ""))
            values = tuple(sorted(seen))
        out.append((name, tuple(float(v) for v in values)))
    return Modalities(channels=tuple(channels), labels=tuple(out))


@dataclass
class SessionArrays:
    """One session's model inputs beside its :class:`~spikefm.data.windows.SessionWindows`.

    Attributes:
        behavior_KTC: float32 z-scored channels (NaN where not recorded or not in the session).
        labels_KJ: int64 class index (-1 where the trial has no such label or its value is
            not a known class).
        mean_C, sd_C: the z-scoring of each channel (from the session's train windows).
    """

    behavior_KTC: np.ndarray
    labels_KJ: np.ndarray
    mean_C: np.ndarray
    sd_C: np.ndarray


def session_arrays(w, modalities: Modalities) -> SessionArrays:
    """Behaviour and labels of a session's windows in the run's modality order."""
    K, T = w.num_windows, w.num_bins
    C = len(modalities.channels)
    raw = np.full((K, T, C), np.nan, dtype=np.float64)
    for c, name in enumerate(modalities.channels):
        if w.behavior is not None and name in w.behavior_names:
            raw[:, :, c] = w.behavior[:, :, w.behavior_names.index(name)]
    train = w.indices("train")
    ref = raw[train] if train.size else raw
    with np.errstate(all="ignore"), _quiet():
        mean = np.nanmean(ref.reshape(-1, C), axis=0) if C else np.zeros(0)
        sd = np.nanstd(ref.reshape(-1, C), axis=0) if C else np.zeros(0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    z = ((raw - mean) / sd).astype(np.float32)
    labels = np.full((K, len(modalities.labels)), -1, dtype=np.int64)
    for j, (name, values) in enumerate(modalities.labels):
        arr = w.labels.get(name)
        if arr is None:
            continue
        other: dict[float, int] = {}
        for k in range(K):
            v = arr[k]
            if isinstance(v, (int, float)) and not math.isnan(v):
                hit = [i for i, c in enumerate(values) if math.isclose(float(v), c, rel_tol=1e-9, abs_tol=1e-9)]
                if hit:
                    labels[k, j] = hit[0]
                else:
                    other[float(v)] = other.get(float(v), 0) + 1
        if other:  # e.g. a block prior the pretraining sessions never had
            warnings.warn(f"session {w.session_id!r}: {sum(other.values())} of {K} window(s) have {name} "
                          f"{', '.join(f'{v:g}' for v in sorted(other))}, not among the run's classes "
                          f"{', '.join(f'{c:g}' for c in values)}: they are left out of training and of the "
                          f"{name} scores (set data.labels={name}=... when pretraining to include them)",
                          RuntimeWarning, stacklevel=2)
    return SessionArrays(behavior_KTC=z, labels_KJ=labels, mean_C=mean, sd_C=sd)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def collate(windows: dict, arrays: dict[str, SessionArrays], items: list[tuple[str, int]]) -> dict:
    """A batch of (session id, window index) pairs, spikes padded to the largest unit count.

    Keys: ``counts_BTN`` float32, ``unit_valid_BN`` bool, ``behavior_BTC`` float32 (0 where
    missing), ``behavior_valid_BTC`` bool, ``labels_BJ`` int64 (0 where missing),
    ``label_valid_BJ`` bool, ``session_ids`` list, ``window_index_B`` int64.
    """
    ws = [windows[sid] for sid, _ in items]
    B, T, N = len(items), ws[0].num_bins, max(w.num_units for w in ws)
    counts = np.zeros((B, T, N), dtype=np.float32)
    valid = np.zeros((B, N), dtype=bool)
    beh = np.stack([arrays[sid].behavior_KTC[k] for sid, k in items])
    lab = np.stack([arrays[sid].labels_KJ[k] for sid, k in items])
    for b, (w, (_, k)) in enumerate(zip(ws, items)):
        counts[b, :, :w.num_units] = w.counts[k]
        valid[b, :w.num_units] = True
    return {"counts_BTN": torch.from_numpy(counts), "unit_valid_BN": torch.from_numpy(valid),
            "behavior_BTC": torch.from_numpy(np.nan_to_num(beh, nan=0.0)),
            "behavior_valid_BTC": torch.from_numpy(~np.isnan(beh)),
            "labels_BJ": torch.from_numpy(np.maximum(lab, 0)), "label_valid_BJ": torch.from_numpy(lab >= 0),
            "session_ids": [sid for sid, _ in items],
            "window_index_B": torch.tensor([k for _, k in items], dtype=torch.long)}


def batch_seed(seed: int, rank: int, counter: int) -> int:
    """Seed of the mask generator of one micro-batch of one rank (63 bits)."""
    words = np.random.SeedSequence([int(seed), int(rank), int(counter), 0x4E454453]).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1))


class NEDSLoader(SeededBatchLoader):
    """Infinite training batches: a :class:`~spikefm.data.windows.WindowBatcher` for the order,
    :func:`collate` for the content, and a ``mask_seed`` per batch (:func:`batch_seed`; exact
    resume, see :class:`~spikefm.data.windows.SeededBatchLoader`)."""

    def __init__(self, batcher, windows: dict, arrays: dict[str, SessionArrays], seed: int, rank: int) -> None:
        self.windows, self.arrays = windows, arrays
        super().__init__(batcher, seed, rank, seed_fn=batch_seed, transform=self._collate)

    def _collate(self, b: dict) -> dict:
        return collate(self.windows, self.arrays, list(zip(b["session_ids"], b["window_index_B"].tolist())))
