"""Benchmark: does NEDS read choice better through Bayes' rule on its spike model than through its head?

The ideal observer of ``spikefm eval`` reads the synthetic choice from the spikes' likelihood under
each choice (``benchmarks/choice_observers.py``), and a generative classifier can beat a
discriminative one on a few hundred trials. NEDS models the spikes given behaviour, so it offers
the same kind of read-out: for each test window and each choice c, the Poisson log-likelihood of
the window's counts under the rates NEDS predicts with the choice token set to c, plus the log
prior of c (class shares of the fit windows); the larger wins. Scored here, on the held-out
session of the NEDS benchmark's recipe (``bench_neds.py``: ``ibl`` preset, 5 sessions of 1,000 s,
``region_tuning=1``, ``choice_signal=0.5``, 1,500 pretraining steps, ``spikefm finetune``'s
``auto``):

* ``head``: the fine-tuned model's choice head under the decoding scheme (the benchmark's
  ``neds_finetuned`` choice accuracy);
* ``bayes_encoding``: every spike hidden (the encoding scheme), every other behaviour channel and
  label hidden too, so only the spikes are read, like the decoders;
* ``bayes_encoding_given_behaviour``: the same with the trial's other behaviour and labels shown
  (the encoding scheme as trained; it reads the true wheel, whisker and block of the test trial,
  so it is not a decoder of the spikes alone and is reported only to show what the choice token
  does in the model's encoding);
* ``pseudo_likelihood``: 30 % of the bins' spikes hidden at random (8 draws per window; the
  within-spike scheme), behaviour hidden, the log-likelihood of the hidden bins summed;
* ``linear``: the benchmark's logistic decoder of counts (5 stretches of the window), fitted on the
  train and val windows (on the train windows when the val windows are scored).

    python benchmarks/neds_generative_readout.py --work DIR                    # tuning seeds 1,5,6,7; test and val windows
    python benchmarks/neds_generative_readout.py --seeds 1 --work DIR --out /tmp/x.json

``--work`` keeps the data and runs (``DIR/s<seed>/{nwb,corpus,neds_pre,neds_ft}``) and reuses what a
previous call finished. Writes ``benchmarks/results/neds_generative_readout.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

READOUTS = ("bayes_encoding", "bayes_encoding_given_behaviour", "pseudo_likelihood")


def train_seed(seed: int, root: Path, recipe) -> tuple[str, Path]:
    """Data and the fine-tuned NEDS of one seed (as ``bench_neds.py`` makes them); reused when there."""
    from spikefm import families
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize

    if not (root / "corpus" / "manifest.json").is_file():
        synthesize(root / "nwb", num_sessions=recipe.sessions, seed=seed, duration_s=recipe.duration_s,
                   preset="ibl", region_tuning=recipe.region_tuning, choice_signal=recipe.choice_signal)
        build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    corpus = str(root / "corpus")
    *pre_ids, held = Corpus(corpus).session_ids()
    if not (root / "neds_ft" / "finetune.json").is_file():
        overrides = [f"data.window_bins={recipe.window_bins}", f"data.pre_ms={recipe.pre_ms}",
                     f"train.batch_size={recipe.batch_size}", "train.ckpt_every=0", "train.log_every=50",
                     f"train.seed={seed}", "train.eval_every=0", f"optim.lr={recipe.lr}", f"train.steps={recipe.steps}",
                     "data.sessions=" + ",".join(pre_ids), *recipe.neds_set,
                     f"data.val_label_cap={recipe.neds_val_label_cap}"]
        if not (root / "neds_pre" / "model.safetensors").is_file():
            cfg = families.run_config("neds", preset=recipe.preset, corpus=corpus, overrides=overrides)
            families.train(cfg, root / "neds_pre", progress=False)
        families.finetune(root / "neds_pre", corpus, held, root / "neds_ft", strategy=recipe.strategy,
                          steps=recipe.finetune_steps, eval_every=recipe.eval_every, patience=recipe.patience)
    return corpus, root / "neds_ft"


def _log_likelihoods(model, windows, arrays, sid, index, label_j, cls, *, spike_frac, show_behaviour, draws, seed):
    """(K,) summed Poisson log-likelihood (up to the counts' constant) of each window's hidden
    spikes with label ``label_j`` shown as class ``cls``."""
    import torch

    from spikefm.families.neds.batches import collate

    b = collate(windows, arrays, [(sid, int(k)) for k in index])
    B, T, _ = b["counts_BTN"].shape
    labels = b["labels_BJ"].clone()
    labels[:, label_j] = cls
    if show_behaviour:
        beh_hidden, lab_hidden = ~b["behavior_valid_BTC"], ~b["label_valid_BJ"]
    else:
        beh_hidden, lab_hidden = torch.ones_like(b["behavior_valid_BTC"]), torch.ones_like(b["label_valid_BJ"])
    lab_hidden = lab_hidden.clone()
    lab_hidden[:, label_j] = False
    g = torch.Generator().manual_seed(seed)
    total = np.zeros(B)
    with torch.no_grad():
        for _ in range(draws):
            hidden = torch.ones(B, T, dtype=torch.bool) if spike_frac >= 1 else torch.rand(B, T, generator=g) < spike_frac
            out = model(b["counts_BTN"], hidden, b["session_ids"], b["behavior_BTC"], beh_hidden, labels, lab_hidden)
            log_rate = out["log_rates_BTN"].float()
            ll = (b["counts_BTN"] * log_rate - torch.exp(log_rate)) * b["unit_valid_BN"][:, None, :] * hidden[:, :, None]
            total += ll.sum((1, 2)).double().numpy()
    return total


def score_seed(run: Path, corpus: str, split: str, label: str = "choice") -> dict:
    from spikefm import families
    from spikefm.corpus.reader import Corpus
    from spikefm.eval.probes import fit_predict_logistic
    from spikefm.families.neds.batches import session_arrays
    from spikefm.families.neds.evaluate import _chunked, neds_predict, run_windows

    model = families.load_model(run)
    sid = next(iter(model.session_units))
    windows = run_windows(run, Corpus(corpus))
    mods = model.modalities
    arrays = {s: session_arrays(w, mods) for s, w in windows.items()}
    w, a = windows[sid], arrays[sid]
    j = mods.label_names.index(label)
    y = a.labels_KJ[:, j]
    idx = {s: w.indices(s) for s in ("train", "val", "test")}
    if split == "val":  # nothing fitted here sees the scored windows
        fit, scored = idx["train"], idx["val"]
    else:
        fit, scored = np.concatenate([idx["train"], idx["val"]]), idx["test"]
    fit, scored = fit[y[fit] >= 0], scored[y[scored] >= 0]
    truth = y[scored]
    acc = {"head": float(np.mean(neds_predict(model, windows, arrays, sid, scored, "decoding")["label_proba"][j]
                                 .argmax(1) == truth))}
    X = _chunked(w.counts.astype(np.float64))
    acc["linear"] = float(np.mean(np.unique(y[fit])[fit_predict_logistic(X[fit], y[fit], X[scored]).argmax(1)] == truth))
    classes = np.arange(len(mods.labels[j][1]))
    log_prior = np.log(np.maximum(np.bincount(y[fit], minlength=classes.size), 1) / fit.size)
    settings = {"bayes_encoding": dict(spike_frac=1.0, show_behaviour=False, draws=1),
                "bayes_encoding_given_behaviour": dict(spike_frac=1.0, show_behaviour=True, draws=1),
                "pseudo_likelihood": dict(spike_frac=0.3, show_behaviour=False, draws=8)}
    for name, kw in settings.items():
        ll = np.stack([_log_likelihoods(model, windows, arrays, sid, scored, j, c, seed=0, **kw) for c in classes], 1)
        acc[name] = float(np.mean((ll + log_prior).argmax(1) == truth))
    return {"session": sid, "split": split, "windows": int(scored.size), "accuracy": acc}


def main() -> None:
    import bench_neds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,5,6,7", help="synthetic seeds (default: NEDS tuning seeds)")
    ap.add_argument("--splits", default="val,test", help="windows scored: val and/or test")
    ap.add_argument("--work", type=Path, required=True, help="folder for data and runs (reused when present)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "neds_generative_readout.json")
    args = ap.parse_args()
    recipe = bench_neds.parse_args([])  # bench_neds.py's defaults: one recipe for both
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = [s for s in args.splits.split(",") if s]
    if not seeds or any(s not in ("val", "test") for s in splits) or not splits:
        raise SystemExit(f"--splits takes val and/or test, got {args.splits!r}")
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for seed in seeds:
        corpus, run = train_seed(seed, args.work / f"s{seed}", recipe)
        for split in splits:
            rows.append({"seed": seed, **score_seed(run, corpus, split)})
            print(f"seed {seed} {split} ({rows[-1]['windows']} windows): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1]["accuracy"].items()), flush=True)
    summary = {}
    for split in splits:
        for name in rows[0]["accuracy"]:
            v = [r["accuracy"][name] for r in rows if r["split"] == split]
            summary[f"{split} / {name}"] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    from spikefm.fileio import write_json_atomic

    out = {"command": "python benchmarks/neds_generative_readout.py " + " ".join(sys.argv[1:]), "seeds": seeds,
           "per_seed": rows, "summary": summary, "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    for k, s in summary.items():
        print(f"{k:45s} {s['mean']:.3f} ± {s['sd']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
