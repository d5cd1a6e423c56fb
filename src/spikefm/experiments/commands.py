"""``spikefm experiment rank-sessions`` and ``spikefm experiment scaling``: their arguments and
what they call (the CLI adds them with :func:`add_parsers`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spikefm.argtypes import nonnegative_int, positive_int
from spikefm.progress import QUIET_HELP

__all__ = ["add_parsers", "seeds_arg"]


def _names(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def seeds_arg(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2 (a count); ``"1,5,9"`` -> those seeds (``"1,,5"``: refused, a seed
    left out by mistake, as :func:`~spikefm.experiments.jobs.seed_list` refuses it)."""
    from spikefm.experiments.jobs import seed_list

    usage = (f"--seeds must be a count N (seeds 0..N-1) or distinct comma-separated seeds >= 0, e.g. 2 or 1,5; "
             f"got {text!r}")
    if "," in text:
        try:
            return seed_list(text, "--seeds")
        except ValueError:
            raise argparse.ArgumentTypeError(usage) from None
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--seeds N needs N >= 1, got {text!r}")
    return list(range(count))


def _gpus(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"--gpus-per-job must be a number >= 0 (0.25 shares a GPU by four), got {text!r}")
    return v


def _lr(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"--finetune-lr must be a number in (0, 1), got {text!r}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    from spikefm.experiments.rank_sessions import LAPTOP

    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--held-out", type=_names, default=None, metavar="S1,S2,...",
                   help="held-out sessions (default: the corpus's test split)")
    p.add_argument("--pretrain-sessions", type=_names, default=None, metavar="S1,S2,...",
                   help="pretraining sessions (default: every other session of the corpus)")
    p.add_argument("--out", required=True, help="study folder (re-running the command resumes it)")
    p.add_argument("--model", default=LAPTOP.family, metavar="FAMILY", help="a masked family (default ndt)")
    p.add_argument("--preset", default=LAPTOP.preset, help=f"model size (default {LAPTOP.preset}; the paper: base)")
    p.add_argument("--protocol", default=None, help="a named protocol of the family, e.g. jiang2025")
    p.add_argument("--schemes", default=None,
                   help=f"pretraining masking schemes (default for {LAPTOP.family}: {LAPTOP.schemes}, "
                        "forward-prediction masking, as the paper; for another --model: its own default)")
    p.add_argument("--pretrain-steps", type=positive_int, default=LAPTOP.pretrain_steps)
    p.add_argument("--finetune-steps", type=positive_int, default=LAPTOP.finetune_steps,
                   help="most fine-tuning steps (early stopping on validation windows)")
    p.add_argument("--finetune-lr", type=_lr, default=LAPTOP.finetune_lr,
                   help=f"fine-tuning learning rate (default {LAPTOP.finetune_lr:g}; only session parameters train)")
    p.add_argument("--eval-every", type=positive_int, default=LAPTOP.eval_every)
    p.add_argument("--patience", type=positive_int, default=LAPTOP.patience)
    p.add_argument("--device", choices=["cpu", "cuda"], default=LAPTOP.device)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a setting of every pretraining run (repeatable)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool here (--workers); ray: a Ray cluster (--address) or a local "
                        "Ray instance (pip install 'spikefm[ray]')")
    p.add_argument("--workers", type=positive_int, default=1, help="jobs at once on this machine (local)")
    p.add_argument("--threads-per-job", type=positive_int, default=None,
                   help="torch threads (Ray: CPUs) per job (default: cores // workers; Ray: 1)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--gpus-per-job", type=_gpus, default=0.0, help="Ray: GPUs per job (e.g. 0.25)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _settings(args):
    from spikefm.experiments.rank_sessions import StudySettings

    return StudySettings(family=args.model, preset=args.preset, schemes=args.schemes,
                         pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
                         eval_every=args.eval_every, patience=args.patience, finetune_lr=args.finetune_lr,
                         overrides=tuple(args.set or ()),
                         protocol=args.protocol, device=args.device)


def _executor(args):
    from spikefm.experiments.jobs import make_executor

    if args.executor == "ray" and args.workers != 1:
        raise ValueError("--workers applies to --executor local; with Ray the cluster's CPUs and "
                         "--threads-per-job decide how many jobs run at once")
    return make_executor(args.executor, workers=args.workers, threads=args.threads_per_job,
                         address=args.address, gpus=args.gpus_per_job, quiet=args.quiet)


def _command() -> str:
    return " ".join(["spikefm", *sys.argv[1:]])


def _failed(exc) -> int:
    print(f"spikefm: error: {exc}", file=sys.stderr)
    return 1


def cmd_rank_sessions(args) -> int:
    from spikefm.experiments.jobs import JobsFailed
    from spikefm.experiments.rank_sessions import print_ranking, rank_sessions

    try:
        study = rank_sessions(args.out, args.data, args.held_out, pool=args.pretrain_sessions,
                              settings=_settings(args), seed=args.seed, top_k=args.top_k,
                              executor=_executor(args), progress=not args.quiet, command=_command())
    except JobsFailed as exc:
        return _failed(exc)
    print_ranking(study)
    print(f"ranking in {Path(args.out) / 'ranking.json'} (CSV and ranking.png beside it)")
    return 0


def cmd_scaling(args) -> int:
    from spikefm.experiments.jobs import JobsFailed
    from spikefm.experiments.scaling import scaling_study

    try:
        scaling_study(args.out, args.data, args.held_out, pool=args.pretrain_sessions, settings=_settings(args),
                      sizes=args.sizes, orders=args.orders, seeds=args.seeds, tasks=args.tasks,
                      metric=args.metric, top_k=args.top_k, rank_top_k=args.rank_top_k,
                      executor=_executor(args), progress=not args.quiet, command=_command())
    except JobsFailed as exc:
        return _failed(exc)
    print(f"study in {Path(args.out) / 'scaling.json'} (table1/table3/scores CSV, figure4.png, "
          "more_sessions.png, ranking files beside it)")
    return 0


def add_parsers(xsub) -> None:
    """Add ``rank-sessions`` and ``scaling`` to the ``spikefm experiment`` sub-parsers."""
    from spikefm.experiments.scaling import DEFAULT_METRIC, DEFAULT_SIZES, ORDERS

    r = xsub.add_parser("rank-sessions", help="rank pretraining sessions for held-out sessions (frozen "
                        "single-session cores, validation loss)")
    _common(r)
    r.add_argument("--seed", type=nonnegative_int, default=0, help="training seed of every run")
    r.add_argument("--top-k", type=positive_int, default=3, help="k of the top-k overlap and precision@k")
    r.set_defaults(func=cmd_rank_sessions)

    s = xsub.add_parser("scaling", help="pretrain on the first k sessions of ranked / random / reverse "
                        "orders, fine-tune to held-out sessions, compare with single-session models")
    _common(s)
    s.add_argument("--sizes", default=DEFAULT_SIZES, help=f"numbers of pretraining sessions (default {DEFAULT_SIZES})")
    s.add_argument("--orders", type=_names, default=list(ORDERS), help="ranked,random,reverse (default all three)")
    s.add_argument("--seeds", type=seeds_arg, default=[0, 1], help="a count N (seeds 0..N-1) or a list (default 2)")
    s.add_argument("--tasks", type=_names, default=None, help="benchmark tasks (default: the family's)")
    s.add_argument("--metric", default=DEFAULT_METRIC, help=f"task of Table 1 and Figure 4 (default {DEFAULT_METRIC})")
    s.add_argument("--top-k", type=positive_int, default=5, help="Table 1's top-k ranked model (default 5)")
    s.add_argument("--rank-top-k", type=positive_int, default=3, help="k of the ranking's precision@k (default 3)")
    s.set_defaults(func=cmd_scaling)
