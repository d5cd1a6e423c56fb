"""Diagnostic: a fine-tuned NEDS run's own label-head accuracy on each split (train / val / test).

A head that is right on nearly every training trial but much less often on held-out trials is
overfitting its per-window label token. Use it on tuning seeds (it reads test windows).

    python benchmarks/neds_choice_by_split.py RUN_DIR [RUN_DIR ...] --corpus CORPUS_DIR [--label choice]
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="fine-tuned NEDS run directories (one session each)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--label", default="choice")
    args = ap.parse_args()

    import numpy as np

    from spikefm.corpus.reader import Corpus
    from spikefm.families import get
    from spikefm.families.neds.batches import session_arrays
    from spikefm.families.neds.evaluate import neds_predict, run_windows
    from spikefm.train.checkpoint import load_exported_model
    from spikefm.train.runinfo import load_run_config

    fam = get("neds")
    corpus = Corpus(args.corpus)
    for run in args.runs:
        cfg = load_run_config(run, model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)
        model = load_exported_model(run, fam, cfg)
        if len(model.session_units) != 1 or args.label not in model.modalities.label_names:
            raise SystemExit(f"{run}: expected a one-session NEDS run with a {args.label!r} label")
        sid = next(iter(model.session_units))
        windows = run_windows(run, corpus)
        arrays = {sid: session_arrays(windows[sid], model.modalities)}
        j = model.modalities.label_names.index(args.label)
        cells = []
        for split in ("train", "val", "test"):
            idx = windows[sid].indices(split)
            proba = neds_predict(model, windows, arrays, sid, idx, "decoding")["label_proba"][j]
            y = arrays[sid].labels_KJ[idx, j]
            ok = y >= 0
            cells.append(f"{split} {np.mean(proba[ok].argmax(1) == y[ok]):.3f} ({int(ok.sum())} trials)")
        print(f"{run}: {args.label} accuracy  " + "  ".join(cells))


if __name__ == "__main__":
    main()
