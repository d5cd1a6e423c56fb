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
                       duration_s=args.duration_s, progress=not args.quiet)
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


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="spikefm", description=__doc__.splitlines()[0])
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

    q = sub.add_parser("quickstart", help="synthesize, build, inspect, train and evaluate")
    q.add_argument("--out", default="quickstart")
    q.add_argument("--fast", action="store_true", help="smallest sizes (used by the tests)")
    q.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        if os.environ.get("SPIKEFM_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"spikefm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikefm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
