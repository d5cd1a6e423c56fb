"""Diagnostic: an NDT run's forward-prediction walk, chunk by chunk, beside a predictor that knows
only each neuron's PSTH on the train windows (and, on synthetic data, the true rates).

Every number is ``bps_pooled`` against the NLB null (each neuron's mean count over the scored
entries). The PSTH predictor shows how strong that in-sample null is on a session: where even the
trial-averaged time course scores below 0, the trial-to-trial state dominates the chunk, and only
a model that reads the trial's past can score above 0. Use ``--split val`` to look without
touching the test windows.

    python benchmarks/ndt_walk_chunks.py RUN_DIR --data CORPUS_DIR [--session ID] [--split val|test] [--out JSON]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def walk_chunks(run_dir: str, corpus_dir: str, session: str | None, split: str) -> dict:
    from spikefm.corpus.reader import Corpus
    from spikefm.data.windows import MIN_INIT_RATE
    from spikefm.eval.metrics import bps_pooled
    from spikefm.families import load_model
    from spikefm.families.ndt.evaluate import (pick_session, scored_as_test, session_truth_rates,
                                               session_windows_for_run)
    from spikefm.families.ndt.tasks import forward_prediction_walk, walk_start_bin

    model = load_model(run_dir)
    corpus = Corpus(corpus_dir)
    sid = pick_session(model, session)
    w = scored_as_test(session_windows_for_run(run_dir, corpus, sid), split)  # as `spikefm eval --split`
    pred = forward_prediction_walk(model, w)
    truth = session_truth_rates(corpus, w)
    psth_TN = np.maximum(w.counts[w.indices("train")].astype(np.float64).mean(0), MIN_INIT_RATE)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for s in range(walk_start_bin(w), w.num_bins, 10):
            sl = slice(s, min(s + 10, w.num_bins))
            counts = pred.counts[:, sl]
            row = {"bins": [s, sl.stop - 1], "model": bps_pooled(pred.rates[:, sl], counts),
                   "train_psth": bps_pooled(np.broadcast_to(psth_TN[sl], counts.shape), counts)}
            if truth is not None:
                row["oracle"] = bps_pooled(truth[pred.window_index][:, sl], counts)
            rows.append(row)
    return {"run_dir": str(run_dir), "session_id": sid, "split": split, "windows": int(pred.counts.shape[0]),
            "chunks": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a fine-tuned NDT run directory")
    ap.add_argument("--data", required=True, help="the corpus the run was trained on")
    ap.add_argument("--session", default=None, help="session to score (default: the run's only session)")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--out", default=None, help="also write the chunks to this JSON")
    args = ap.parse_args()
    res = walk_chunks(args.run, args.data, args.session, args.split)
    print(f"{res['session_id']}: {res['split']} windows {res['windows']}")
    for r in res["chunks"]:
        extra = f"  oracle {r['oracle']:+.3f}" if "oracle" in r else ""
        print(f"bins {r['bins'][0]:3d}-{r['bins'][1]:3d}  model {r['model']:+.3f}  train PSTH {r['train_psth']:+.3f}{extra}")
    if args.out:
        from spikefm.fileio import write_json_atomic

        write_json_atomic(args.out, {**res, "command": "python benchmarks/ndt_walk_chunks.py " + " ".join(sys.argv[1:]),
                                     "machine": machine_info()})


if __name__ == "__main__":
    main()
