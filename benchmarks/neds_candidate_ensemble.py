"""Would averaging the label probabilities of `spikefm finetune --strategy auto`'s NEDS candidates
read a trial label (choice by default) better than the candidate `auto` keeps? Validation windows
only: a tuning diagnostic, never a headline score.

For each fine-tuning folder (``FT``, written by ``spikefm finetune --strategy auto``) the held-out
session's validation windows are decoded by every candidate (``FT/candidates/{frozen,unfreeze,full,
scratch}``) with the ``decoding`` scheme (all behaviour hidden, every spike given, as ``spikefm eval``
decodes), and the label's accuracy is reported for each candidate, for the one ``auto`` kept, and
for the mean of the class probabilities of several candidate sets (a prediction ensemble, not a
weight average like ``--soup``).

    python benchmarks/neds_candidate_ensemble.py FT [FT ...] --data CORPUS [CORPUS ...] --out JSON

One corpus per folder (the one it was fine-tuned on), in the same order.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

CANDIDATES = ("frozen", "unfreeze", "full", "scratch")
ENSEMBLES = (("unfreeze", "full"), ("frozen", "unfreeze", "full"), CANDIDATES)


def candidate_proba(run_dir: Path, corpus, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, classes) probabilities of ``label`` on the run's val windows and the (K,) true classes."""
    from spikefm.families import get
    from spikefm.families.neds.batches import session_arrays
    from spikefm.families.neds.evaluate import neds_predict, run_windows
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    fam = get("neds")
    model = load_exported_model(run_dir, fam, load_run_config(run_dir, model_cls=fam.model_config_cls,
                                                              data_cls=fam.data_config_cls))
    if label not in model.modalities.label_names:
        raise SystemExit(f"{run_dir} has no label {label!r}; its labels: {model.modalities.label_names}")
    (sid,) = list(model.session_units)
    windows = run_windows(run_dir, corpus)
    arrays = {s: session_arrays(w, model.modalities) for s, w in windows.items()}
    idx = windows[sid].indices("val")
    j = model.modalities.label_names.index(label)
    y = arrays[sid].labels_KJ[idx, j]
    p = neds_predict(model, windows, arrays, sid, idx, "decoding")["label_proba"][j]
    keep = y >= 0  # windows whose label is known
    return p[keep], y[keep]


def main() -> None:
    import json

    from spikefm.corpus.reader import Corpus
    from spikefm.fileio import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ft", type=Path, nargs="+", help="`spikefm finetune --strategy auto` folders of NEDS runs")
    ap.add_argument("--data", nargs="+", required=True, help="the corpus of each folder, in the same order")
    ap.add_argument("--label", default="choice")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if len(args.data) != len(args.ft):
        raise SystemExit(f"--data needs one corpus per folder: got {len(args.data)} for {len(args.ft)} folders")
    per_run = {}
    for ft, data in zip(args.ft, args.data):
        kept = json.loads((ft / "finetune.json").read_text())["strategy"]
        corpus = Corpus(data)
        proba, truth = {}, None
        for name in CANDIDATES:
            proba[name], y = candidate_proba(ft / "candidates" / name, corpus, args.label)
            if truth is not None and not np.array_equal(truth, y):
                raise SystemExit(f"{ft}: the candidates were validated on different windows")
            truth = y
        acc = {name: float((p.argmax(1) == truth).mean()) for name, p in proba.items()}
        acc["auto (kept: " + kept + ")"] = acc.get(kept, float("nan"))
        for combo in ENSEMBLES:
            acc["mean of " + " + ".join(combo)] = float((np.mean([proba[c] for c in combo], 0).argmax(1) == truth).mean())
        per_run[str(ft)] = {"kept": kept, "val_trials": int(truth.size), "accuracy": acc}
        print(f"{ft} ({truth.size} val trials, auto kept {kept}): "
              + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    write_json_atomic(args.out, {"what": __doc__.splitlines()[0], "label": args.label, "split": "val",
                                 "command": "python benchmarks/neds_candidate_ensemble.py " + shlex.join(sys.argv[1:]),
                                 "runs": per_run, "machine": machine_info()})


if __name__ == "__main__":
    main()
