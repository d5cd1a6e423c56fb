"""The decoding parts of NEDS runs' losses, per split of each run's own windows: every label's
cross-entropy and accuracy and the behaviour channels' mean squared error (z-scored, as the loss
has it) under the decoding scheme (all behaviour hidden, spikes given). Which part drives the
validation loss that early stopping and ``finetune --strategy auto`` choose by, and whether a head
memorised its training windows.

    python benchmarks/neds_validation_parts.py --data CORPUS --out JSON RUN_DIR [RUN_DIR ...]

A diagnostic, not a score: ``spikefm eval`` is what scores a run.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from spikefm.fileio import write_json_atomic  # noqa: E402


def decoding_parts(run_dir: str, corpus) -> dict:
    """{"session_id", "splits": {split: {"behavior_mse": float or None, "labels": {label:
    {"cross_entropy", "accuracy", "n"}}}}} for the run's only session."""
    from spikefm.families import get
    from spikefm.families.neds.batches import session_arrays
    from spikefm.families.neds.evaluate import neds_predict, run_windows
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    fam = get("neds")
    cfg = load_run_config(run_dir, model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)
    model = load_exported_model(run_dir, fam, cfg)
    (sid,) = list(model.session_units)
    windows = run_windows(run_dir, corpus)
    arrays = {s: session_arrays(w, model.modalities) for s, w in windows.items()}
    w, a = windows[sid], arrays[sid]
    out: dict = {}
    for split in ("train", "val", "test"):
        idx = w.indices(split)
        if idx.size == 0:
            continue
        pred = neds_predict(model, windows, arrays, sid, idx, "decoding")
        beh = pred["behavior_KTC"]
        labels = {}
        for j, lab in enumerate(model.modalities.label_names):
            y = a.labels_KJ[idx, j]
            ok = y >= 0
            p = pred["label_proba"][j][ok]
            picked = np.maximum(p[np.arange(ok.sum()), y[ok]], 1e-12)
            labels[lab] = {"cross_entropy": float(-np.log(picked).mean()),
                           "accuracy": float((p.argmax(1) == y[ok]).mean()), "n": int(ok.sum())}
        out[split] = {"behavior_mse": None if beh is None else float(np.nanmean((beh - a.behavior_KTC[idx]) ** 2)),
                      "labels": labels}
    return {"session_id": sid, "splits": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NEDS run folders of one session (e.g. FT/candidates/*)")
    ap.add_argument("--data", required=True, help="the corpus the runs were trained on")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from spikefm.corpus.reader import Corpus

    corpus = Corpus(args.data)
    res = {run: decoding_parts(run, corpus) for run in args.runs}
    write_json_atomic(args.out, {"what": __doc__.splitlines()[0], "command": "python benchmarks/neds_validation_parts.py "
                                 + shlex.join(sys.argv[1:]), "runs": res, "machine": machine_info()})
    for run, r in res.items():
        cells = []
        for split, parts in r["splits"].items():
            if parts["behavior_mse"] is not None:
                cells.append(f"{split} behaviour MSE {parts['behavior_mse']:.3f}")
            cells += [f"{split} {lab} CE {v['cross_entropy']:.3f} acc {v['accuracy']:.3f}"
                      for lab, v in parts["labels"].items()]
        print(f"{run}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
