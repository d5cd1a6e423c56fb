"""Choosing the NEDS fine-tuning strategy on VALIDATION windows (never test): one synthetic seed,
the ``bench_neds.py`` recipe, ``spikefm finetune --strategy auto`` (which trains the ``frozen``,
``full``, ``unfreeze`` and single-session ``scratch`` candidates), each candidate scored on the
held-out session's val windows (``spikefm eval --split val``) beside the linear, RRR and oracle
baselines fitted on train windows only.

    python benchmarks/neds_tune_strategies.py --seed 1 --duration-s 1000 --work /tmp/neds_tune
    # a fine-tuning variant of the same pretrained run, in its own folder:
    python benchmarks/neds_tune_strategies.py --seed 1 --duration-s 1000 --work /tmp/neds_tune \
        --finetune-set data.label_weight=0 --finetune-dir ft_lw0
    # the fine-tuning step budget of `spikefm finetune` (1500) instead of the benchmark's 300:
    python benchmarks/neds_tune_strategies.py --seed 1 --steps 1500 --choice-signal 0.5 --work /tmp/neds_tune \
        --finetune-steps 1500 --finetune-dir ft1500
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration-s", type=float, default=1000.0, help="session length (longer: more val windows)")
    ap.add_argument("--work", type=Path, required=True, help="folder for data and runs (reused when present)")
    ap.add_argument("--sessions", type=int, default=5, help="synthetic sessions (the last is held out)")
    ap.add_argument("--steps", type=int, default=600, help="pretraining steps")
    ap.add_argument("--choice-signal", type=float, default=1.0,
                    help="spikefm.corpus.synth choice_signal (amplitude of the choice latent)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="extra overrides of the pretraining run, e.g. data.label_weight=5 (repeatable)")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE", dest="ft_overrides",
                    help="overrides of the fine-tuning runs only, e.g. data.label_weight=0 (repeatable)")
    ap.add_argument("--finetune-dir", default="ft",
                    help="folder under --work for the fine-tuning (another name keeps several variants of one "
                         "pretrained run side by side)")
    ap.add_argument("--finetune-steps", type=int, default=300, help="maximum steps of each fine-tuning candidate")
    ap.add_argument("--eval-every", type=int, default=50, help="fine-tuning: steps between validation evaluations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON of every candidate's val scores")
    args = ap.parse_args()

    import torch

    from spikefm import families
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.fileio import write_json_atomic

    torch.set_num_threads(args.threads)
    root = args.work
    if not (root / "corpus" / "manifest.json").exists():
        synthesize(root / "nwb", num_sessions=args.sessions, seed=args.seed, duration_s=args.duration_s, preset="ibl",
                   region_tuning=1.0, choice_signal=args.choice_signal)
        build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    corpus = str(root / "corpus")
    *pre_ids, held = Corpus(corpus).session_ids()
    overrides = ["data.window_bins=50", "data.pre_ms=200", "data.sessions=" + ",".join(pre_ids),
                 "train.batch_size=16", "train.ckpt_every=0", "train.log_every=50", f"train.seed={args.seed}",
                 "train.eval_every=0", "optim.lr=2e-3", f"train.steps={args.steps}", "model.dropout=0.2",
                 # the README's tuning runs predate this default (2026-12-05); --set data.val_label_cap=true
                 "data.val_label_cap=false", *args.overrides]
    t0 = time.perf_counter()
    if not (root / "pre" / "model.safetensors").exists():
        families.train(families.run_config("neds", preset="tiny", corpus=corpus, overrides=overrides),
                       root / "pre", progress=False)
    ft = root / args.finetune_dir
    if not (ft / "finetune.json").exists():
        families.finetune(root / "pre", corpus, held, ft, strategy="auto", steps=args.finetune_steps,
                          eval_every=args.eval_every, patience=3, overrides=args.ft_overrides)
    summary = json.loads((ft / "finetune.json").read_text())
    print(f"auto chose {summary['strategy']}; validation losses: "
          + ", ".join(f"{k} {v['best_val_loss']:.4f}" for k, v in summary["candidates"].items())
          + f", single-session {summary['single_session']['best_val_loss']:.4f}")
    scores = {}
    for name in ("frozen", "full", "unfreeze", "scratch"):
        res = families.evaluate(ft / "candidates" / name, corpus, tasks=["encoding", "decoding"],
                                split="val", baselines=name == "frozen")["results"]
        scores[name] = res
        for model, enc in res["encoding"].items():
            dec = res["decoding"].get(model, {})
            cells = [f"encoding bps {enc['bps_pooled']:.4f}"] + [
                f"{t} {v['accuracy']:.3f}" if "accuracy" in v else f"{t} R2 {v['r2_single_trial']:.3f}"
                for t, v in dec.items()]
            print(f"{name if model == 'neds' else model:10s} " + "  ".join(cells))
    if args.out:
        write_json_atomic(args.out, {"seed": args.seed, "duration_s": args.duration_s, "sessions": args.sessions,
                                     "steps": args.steps, "choice_signal": args.choice_signal,
                                     "overrides": args.overrides, "finetune_overrides": args.ft_overrides,
                                     "finetune_steps": args.finetune_steps, "eval_every": args.eval_every,
                                     "split": "val",
                                     "chosen": summary["strategy"], "finetune": summary, "scores": scores,
                                     "wall_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
