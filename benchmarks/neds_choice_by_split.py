"""Diagnostic: a fine-tuned NEDS run's choice read-outs on each split (train / val / test).

For each run: the model's own label head (``neds`` in ``spikefm eval``) on every split, and two
linear read-outs scored on val (fitted on train) and on test (fitted on train + val): the
``neds_probe`` decoder of the spike-token hidden states and the ``linear`` baseline on windowed
counts. A head that is right on nearly every training trial but much less often on held-out
trials is overfitting its label token. It reads test windows: use it on tuning seeds only.

    python benchmarks/neds_choice_by_split.py RUN_DIR [RUN_DIR ...] --corpus CORPUS_DIR [--label choice] [--out JSON]
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="fine-tuned NEDS run directories (one session each)")
    ap.add_argument("--corpus", required=True, action="extend", nargs="+",
                    help="the corpus of the runs (one for all, or one per run in the same order; "
                         "--corpus C1 C2 or --corpus C1 --corpus C2)")
    ap.add_argument("--label", default="choice")
    ap.add_argument("--out", default=None, help="also write the accuracies to this JSON")
    args = ap.parse_args()
    if len(args.corpus) not in (1, len(args.runs)):
        raise SystemExit(f"give --corpus once or once per run ({len(args.runs)}), got {len(args.corpus)}")

    import numpy as np

    from spikefm.corpus.reader import Corpus
    from spikefm.families import get
    from spikefm.families.neds.batches import session_arrays
    from spikefm.families.neds.evaluate import _chunked, _lagged, _linear_readout, neds_predict, neds_probe, run_windows
    from spikefm.fileio import write_json_atomic
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    fam = get("neds")
    results = {}
    for i, run in enumerate(args.runs):
        corpus = Corpus(args.corpus[i if len(args.corpus) > 1 else 0])
        cfg = load_run_config(run, model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)
        model = load_exported_model(run, fam, cfg)
        if len(model.session_units) != 1 or args.label not in model.modalities.label_names:
            raise SystemExit(f"{run}: expected a one-session NEDS run with a {args.label!r} label")
        sid = next(iter(model.session_units))
        windows = run_windows(run, corpus)
        w = windows[sid]
        arrays = {sid: session_arrays(w, model.modalities)}
        mods = model.modalities
        j = mods.label_names.index(args.label)
        y = arrays[sid].labels_KJ[:, j]
        everything = np.arange(w.num_windows)
        pred = neds_predict(model, windows, arrays, sid, everything, "decoding", return_hidden=True)
        idx = {s: w.indices(s) for s in ("train", "val", "test")}
        row = {"n": {s: int((y[v] >= 0).sum()) for s, v in idx.items()}, "head": {}, "neds_probe": {}, "linear": {}}
        for split, v in idx.items():
            ok = v[y[v] >= 0]
            row["head"][split] = float(np.mean(pred["label_proba"][j][ok].argmax(1) == y[ok]))
        for split, fit in (("val", idx["train"]), ("test", np.concatenate([idx["train"], idx["val"]]))):
            ok = idx[split][y[idx[split]] >= 0]
            readouts = {"neds_probe": neds_probe(pred["hidden_KTD"], arrays[sid], fit, ok, mods),
                        "linear": _linear_readout(_chunked(w.counts), _lagged(w.counts), arrays[sid], fit, ok, mods)}
            for name, r in readouts.items():
                row[name][split] = float(np.mean(r["labels"][args.label] == y[ok]))
        results[str(run)] = row
        cells = "  ".join(f"{name} " + " ".join(f"{s} {v:.3f}" for s, v in row[name].items())
                          for name in ("head", "neds_probe", "linear"))
        print(f"{run}: {args.label} accuracy  {cells}  (trials {row['n']})")
    if args.out:
        write_json_atomic(args.out, {"label": args.label, "runs": results})


if __name__ == "__main__":
    main()
