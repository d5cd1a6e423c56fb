"""The ``spikefm`` command: parse arguments, call one function. Run ``spikefm -h``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _units_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX like 40,200, got {text!r}") from None
    return lo, hi


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {v}")
    return v


# --- commands ----------------------------------------------------------------------------------


def cmd_synth(args) -> int:
    from .corpus.synth import synthesize

    paths = synthesize(args.out_dir, num_sessions=args.sessions, seed=args.seed,
                       preset=args.preset, num_families=args.families,
                       duration_s=args.duration_s, units_range=args.units,
                       progress=not args.quiet)
    print(f"wrote {len(paths)} NWB files (+ .truth.npz ground truth) under {args.out_dir}")
    for p in paths:
        print(f"  {p}")
    return 0


def cmd_corpus_build(args) -> int:
    from .corpus.build import BuildConfig, build_corpus

    cfg = BuildConfig(bin_ms=args.bin_ms, max_row_tokens=args.max_row_tokens,
                      test_fraction=args.test_fraction, split=args.split, seed=args.seed,
                      workers=args.workers, strict=args.strict, source_dataset=args.source,
                      cache_dir=args.cache_dir)
    report = build_corpus(args.inputs, args.out, cfg, progress=not args.quiet)
    m = report.manifest
    print(f"corpus at {args.out}: {m['num_sessions']} sessions "
          f"({report.num_staged_now} built now, {report.num_reused} reused)")
    for split, s in m["splits"].items():
        print(f"  {split:5s}: {s['num_sessions']:4d} sessions {s['num_rows']:5d} rows "
              f"{s['num_tokens']:>14,d} tokens  {len(s['shards'])} shards")
    if m["num_human_sessions"]:
        print(f"  {m['num_human_sessions']} human session(s): check consent/licence terms "
              "before sharing")
    if report.skipped:
        print(f"{len(report.skipped)} input(s) skipped; listed under \"skipped\" in "
              f"{args.out}/manifest.json", file=sys.stderr)
        return 1
    return 0


def cmd_corpus_info(args) -> int:
    from .corpus.info import corpus_info, format_info
    from .corpus.reader import Corpus

    info = corpus_info(Corpus(args.corpus_dir))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_corpus_plot(args) -> int:
    from .corpus.plots import plot_corpus
    from .corpus.reader import Corpus

    for p in plot_corpus(Corpus(args.corpus_dir), args.out):
        print(p)
    return 0


def cmd_corpus_import(args) -> int:
    from .corpus.importer import import_neural_pile

    m = import_neural_pile(args.source, args.out, cache_dir=args.cache_dir,
                           progress=not args.quiet)
    print(f"imported {m['num_sessions']} sessions into {args.out}: "
          + ", ".join(f"{k} {v['num_tokens']:,} tokens" for k, v in m["splits"].items()))
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart

    run_quickstart(args.out, fast=args.fast)
    return 0


def _run_config(args):
    from .loading import register_families
    from .train.config import RunConfig, apply_overrides
    from .train.family import get_family

    register_families()
    family = get_family(args.model)
    model_cfg = family.preset(args.preset)
    cfg = RunConfig(family=args.model, model=model_cfg, data=family.data_config_cls(corpus=args.data))
    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "sessions", None):
        overrides.append(f"data.sessions={args.sessions}")
    return apply_overrides(cfg, overrides)


def cmd_train(args) -> int:
    from .corpus.reader import Corpus
    from .train.loop import train

    Corpus(args.data)  # fail early, in one line, when --data is not a corpus
    cfg = _run_config(args)
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(f"trained {summary['step']} steps ({summary['tokens']:,} tokens, "
          f"{summary['elapsed_s']:.0f} s), last loss {summary['loss']:.4f}; run in {args.out}")
    return 0


def cmd_finetune(args) -> int:
    from .finetune import finetune, train_single_session

    if args.from_scratch:
        s = train_single_session(args.data, args.session, args.out, like_run=args.run_dir,
                                 steps=args.steps, overrides=args.set, patience=args.patience,
                                 eval_every=args.eval_every, progress=not args.quiet)
    else:
        s = finetune(args.run_dir, args.data, args.session, args.out, freeze_core=args.freeze_core,
                     steps=args.steps, overrides=args.set, patience=args.patience,
                     eval_every=args.eval_every, progress=not args.quiet)
    print(f"best val loss {s['best_val_loss']:.4f} at step {s['best_step']} "
          f"(stopped at step {s['stopped_at']}); run in {args.out}")
    return 0


def _ngram_orders(text: str) -> list[int]:
    try:
        orders = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected orders like 1,9, got {text!r}") from None
    if any(not 1 <= o <= 9 for o in orders):
        raise argparse.ArgumentTypeError(f"n-gram orders must be in 1..9, got {text!r}")
    return orders


def cmd_eval(args) -> int:
    from .corpus.reader import Corpus
    from .loading import load_model

    corpus = Corpus(args.data)
    model = load_model(args.run_dir)
    family = getattr(getattr(model, "run_config", None), "family", "ar")
    if family == "ndt":
        from .eval.ndt_runner import run_ndt_eval

        return run_ndt_eval(args, model, corpus)
    from .eval.ar_eval import evaluate_model, evaluate_ngram, evaluate_oracle, fit_ngram, \
        write_results
    from .eval.xent import format_table

    seq_len = model.run_config.data.seq_len if hasattr(model, "run_config") else args.seq_len
    results = {"model": evaluate_model(model, corpus, split=args.split, seq_len=seq_len,
                                       max_tokens=args.max_tokens, progress=not args.quiet)}
    for order in args.ngram or []:
        ng = fit_ngram(corpus, order, max_train_tokens=args.max_train_tokens)
        results[f"{order}-gram"] = evaluate_ngram(ng, corpus, split=args.split,
                                                  max_tokens=args.max_tokens)
    oracle = evaluate_oracle(corpus, split=args.split, max_tokens=args.max_tokens)
    if oracle is not None:
        results["oracle"] = oracle
    print(format_table(results, title=f"cross-entropy on {args.split} (bits/token)"))
    if args.out:
        write_results(args.out, {"run_dir": str(args.run_dir), "corpus": str(args.data),
                                 "split": args.split, "results": results})
    return 0


def cmd_ngram(args) -> int:
    from .corpus.reader import Corpus
    from .eval.ar_eval import evaluate_ngram, evaluate_oracle, fit_ngram, write_results
    from .eval.xent import format_table

    corpus = Corpus(args.data)
    ng = fit_ngram(corpus, args.order, alpha=args.alpha, max_train_tokens=args.max_train_tokens,
                   progress=not args.quiet)
    results = {f"{args.order}-gram": evaluate_ngram(ng, corpus, split=args.split,
                                                    max_tokens=args.max_tokens)}
    oracle = evaluate_oracle(corpus, split=args.split, max_tokens=args.max_tokens)
    if oracle is not None:
        results["oracle"] = oracle
    print(format_table(results, title=f"cross-entropy on {args.split} (bits/token)"))
    if args.out:
        write_results(args.out, {"corpus": str(args.data), "order": args.order,
                                 "alpha": args.alpha, "split": args.split, "results": results})
    return 0


def cmd_generate(args) -> int:
    from .generation import generate_to_file

    out = generate_to_file(args.run_dir, num_units=args.units, num_bins=args.bins,
                           prompt=args.prompt, prompt_bins=args.prompt_bins,
                           temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                           out=args.out)
    for p in out:
        print(f"wrote {p}")
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="spikefm", description="spikefm: corpora, training and benchmarks for foundation "
        "models of spiking neural population activity.")
    p.add_argument("--version", action="version", version=f"spikefm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write synthetic NWB recordings with ground-truth rates")
    s.add_argument("out_dir")
    s.add_argument("--sessions", type=_positive_int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--preset", choices=["ibl", "motor", "spontaneous"], default="ibl")
    s.add_argument("--families", type=_positive_int, default=1,
                   help="sessions drawn from K groups sharing latent dynamics")
    s.add_argument("--duration-s", type=float, default=300.0, help="length of each session")
    s.add_argument("--units", type=_units_range, default=(40, 200), metavar="MIN,MAX",
                   help="units per session, drawn uniformly (default 40,200)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("corpus", help="build, inspect, plot or import corpora")
    csub = c.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    b = csub.add_parser("build", help="NWB files / folders / dandi:ID -> corpus shards")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".nwb file, folder (searched recursively), or dandi:ID[@VERSION][/GLOB]")
    b.add_argument("--out", required=True, help="corpus folder")
    b.add_argument("--bin-ms", type=_positive_int, default=20)
    b.add_argument("--max-row-tokens", type=_positive_int, default=10_000_000)
    b.add_argument("--test-fraction", type=_fraction, default=0.01)
    b.add_argument("--split", choices=["session", "row"], default="session",
                   help="session: no session in both splits; row: the Neural Pile's row split")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=_positive_int, default=1)
    b.add_argument("--strict", action="store_true", help="any bad input: write nothing, fail")
    b.add_argument("--source", default=None, help="source_dataset name for every input")
    b.add_argument("--cache-dir", default=None, help="DANDI download cache")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_corpus_build)

    i = csub.add_parser("info", help="summary statistics of a corpus")
    i.add_argument("corpus_dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_corpus_info)

    pl = csub.add_parser("plot", help="PNG figures of a corpus")
    pl.add_argument("corpus_dir")
    pl.add_argument("--out", required=True, help="figure folder")
    pl.set_defaults(func=cmd_corpus_plot)

    im = csub.add_parser("import", help="the published Neural Pile (HF repo or folder) -> corpus")
    im.add_argument("source", help="e.g. eminorhan/neural-pile-primate, or a local folder")
    im.add_argument("--out", required=True)
    im.add_argument("--cache-dir", default=None)
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=cmd_corpus_import)

    t = sub.add_parser("train", help="train a model family on a corpus (torchrun for many GPUs)")
    t.add_argument("--model", default="ar", help="model family: ar or ndt")
    t.add_argument("--preset", default="tiny", help="model size preset of the family")
    t.add_argument("--data", required=True, help="corpus folder")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--steps", type=_positive_int, default=None)
    t.add_argument("--sessions", default=None, help="ndt: comma-separated session ids")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. optim.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run (or a Hugging Face Llama folder) on a corpus")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--out", default=None, help="results.json")
    e.add_argument("--max-tokens", type=_positive_int, default=None,
                   help="score only the first rows up to this many tokens")
    e.add_argument("--ngram", type=_ngram_orders, default=None, metavar="ORDERS",
                   help="ar: also fit and score these n-gram baselines, e.g. 1,9")
    e.add_argument("--max-train-tokens", type=_positive_int, default=None)
    e.add_argument("--seq-len", type=_positive_int, default=512,
                   help="context for Hugging Face models (runs use their own)")
    e.add_argument("--tasks", default=None,
                   help="ndt: comma-separated benchmark tasks (default: co-smoothing, forward-prediction, "
                        "forward-prediction-walk, inter-region, intra-region, choice-decoding)")
    e.add_argument("--session", default=None, help="ndt: the session to evaluate")
    e.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="ndt: write DIR/<task>.npz with rates and counts")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("finetune", help="ndt: adapt a pretrained run to a held-out session")
    f.add_argument("run_dir", help="pretrained NDT run folder")
    f.add_argument("--data", required=True, help="corpus holding the session")
    f.add_argument("--session", required=True, help="session id to adapt to")
    f.add_argument("--out", required=True, help="new run folder")
    mode = f.add_mutually_exclusive_group()
    mode.add_argument("--freeze-core", action="store_true", help="train the session parameters only")
    mode.add_argument("--from-scratch", action="store_true",
                      help="single-session baseline: RUN_DIR's settings, random initialisation")
    f.add_argument("--steps", type=_positive_int, default=500, help="maximum optimizer steps")
    f.add_argument("--eval-every", type=_positive_int, default=50,
                   help="steps between validation evaluations (early stopping)")
    f.add_argument("--patience", type=_positive_int, default=3,
                   help="evaluations without improvement before stopping")
    f.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. optim.lr=1e-3 (repeatable)")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_finetune)

    n = sub.add_parser("ngram", help="fit and score an n-gram baseline (Laplace smoothing)")
    n.add_argument("--data", required=True)
    n.add_argument("--order", type=int, choices=range(1, 10), required=True, metavar="N")
    n.add_argument("--alpha", type=float, default=1.0)
    n.add_argument("--split", default="test", choices=["train", "test"])
    n.add_argument("--max-train-tokens", type=_positive_int, default=None)
    n.add_argument("--max-tokens", type=_positive_int, default=None)
    n.add_argument("--out", default=None)
    n.add_argument("--quiet", action="store_true")
    n.set_defaults(func=cmd_ngram)

    g = sub.add_parser("generate", help="sample spike arrays from an AR model (KV cache)")
    g.add_argument("run_dir")
    g.add_argument("--units", type=_positive_int, required=True)
    g.add_argument("--bins", type=_positive_int, required=True)
    g.add_argument("--prompt", default=None, metavar="CORPUS_DIR:SESSION_ID:START_BIN")
    g.add_argument("--prompt-bins", type=_positive_int, default=25)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=_positive_int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="FILE.npz")
    g.set_defaults(func=cmd_generate)

    q = sub.add_parser("quickstart", help="synthesize, build, inspect, train and evaluate")
    q.add_argument("--out", default="quickstart")
    q.add_argument("--fast", action="store_true", help="smallest sizes (used by the tests)")
    q.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        if os.environ.get("SPIKEFM_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"spikefm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikefm: interrupted", file=sys.stderr)
        return 130
    if "torch" in sys.modules:  # a torchrun worker that finished: leave without C++ teardown
        from .train.dist import exit_worker

        exit_worker(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
