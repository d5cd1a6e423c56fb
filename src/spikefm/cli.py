"""The ``spikefm`` command: parse arguments, call one function. Run ``spikefm -h``."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path


from spikefm.argtypes import finite_float as _finite_float  # noqa: F401  (used by parsers below)
from spikefm.argtypes import fraction as _fraction
from spikefm.argtypes import int_list as _int_list
from spikefm.argtypes import name as _name
from spikefm.argtypes import nonnegative_float as _nonnegative_float
from spikefm.argtypes import nonnegative_int as _nonnegative_int
from spikefm.argtypes import positive_float as _positive_float
from spikefm.argtypes import positive_int as _positive_int
from spikefm.argtypes import positive_int_at_most as _positive_int_at_most
from spikefm.argtypes import units_range as _units_range
from spikefm.fileio import check_output_file, check_results_file, spikefm_folder_kind
from spikefm.progress import QUIET_HELP


# --- commands ----------------------------------------------------------------------------------


#: What `spikefm synth` records in OUT_DIR: the settings of the recordings it wrote there.
SYNTH_RECORD = ".spikefm-synth.json"


def _synth_name_width(sessions: int) -> int:
    """Digits of the session numbers in synth's file names (``spikefm.corpus.synth.synthesize``)."""
    return max(3, len(str(sessions - 1)))


def check_synth_out(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to overwrite recordings in ``out`` that the same settings did not write. A rerun of
    the same command (also after an interruption) rewrites identical files, and more ``sessions``
    with the same other settings only add files: both are allowed."""
    for d in (out, *out.parents):  # a file where the folder (or one above it) would be
        if d.exists() and not d.is_dir():
            where = f"{d}" if d == out else f"{out}: {d}"
            raise ValueError(f"{where} is a file, not a folder; give OUT_DIR a folder (new or one "
                             "that holds synthetic recordings)")
    if not out.is_dir():
        return
    kind = spikefm_folder_kind(out)
    if kind:
        raise ValueError(f"{out}: holds {kind}; synth writes recordings into a folder of their "
                         "own (corpus build would refuse the mix): give another OUT_DIR")
    if overwrite:
        return
    from spikefm.corpus.nwb import nwb_paths

    existing = nwb_paths(out)
    if not existing:
        return
    record = out / SYNTH_RECORD
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        old = None
    def same(d):  # more sessions only add files while their names keep the same number of digits
        return isinstance(d, dict) and {k: v for k, v in d.items() if k != "sessions"} == \
            {k: v for k, v in settings.items() if k != "sessions"} and isinstance(d.get("sessions"), int) and \
            _synth_name_width(d["sessions"]) == _synth_name_width(settings["sessions"])
    if same(old) and settings["sessions"] < old["sessions"]:
        raise ValueError(f"{out}: already holds the recordings of --sessions {old['sessions']} with these settings; "
                         f"--sessions {settings['sessions']} would leave the other {old['sessions'] - settings['sessions']} "
                         "beside them (corpus build reads every NWB file in the folder); nothing was changed: use "
                         f"another folder, or --overwrite to keep only {settings['sessions']}")
    if not same(old):
        what = "other settings" if old is not None else \
            "no spikefm synth record of its settings (another program, or a spikefm before 2026-12-06)"
        raise ValueError(f"{out}: already holds {len(existing)} NWB recording(s) with {what} (e.g. "
                         f"{existing[0].relative_to(out)}); nothing was changed: pass --overwrite to replace "
                         "them, or give another folder")


def _remove_stale_synth(out: Path, kept: list) -> None:
    """After ``synth --overwrite``: remove the recordings synth wrote (``sub-*/sub-*_ses-*.nwb``
    with their ``.truth.npz`` beside them) that this run did not write again, so the folder holds
    exactly the requested sessions; any other NWB file is named in a warning (corpus build would
    read it)."""
    import re
    import warnings

    from spikefm.corpus.nwb import nwb_paths

    kept = {Path(p).resolve() for p in kept}
    ours = re.compile(r"^sub-[^/]+_ses-\d+\.nwb$")
    others = []
    for nwb in nwb_paths(out):
        if nwb.resolve() in kept:
            continue
        # synth's: its name, its place and its ground truth beside it (a user's recording has none)
        if ours.match(nwb.name) and nwb.parent.parent == out and nwb.with_suffix(".truth.npz").is_file():
            nwb.unlink()
            nwb.with_suffix(".truth.npz").unlink(missing_ok=True)
            if nwb.parent.is_dir() and not any(nwb.parent.iterdir()):
                nwb.parent.rmdir()
        else:
            others.append(nwb)
    if others:
        warnings.warn(f"{out}: {len(others)} other NWB file(s) stay beside the new recordings (e.g. "
                      f"{others[0].relative_to(out)}); corpus build reads every NWB file in the folder: move "
                      "them if they are not meant to be in the corpus", stacklevel=2)


def cmd_synth(args) -> int:
    from spikefm.corpus.synth import synthesize
    from spikefm.fileio import write_bytes_atomic, write_json_atomic

    out = Path(args.out_dir)
    settings = {"sessions": args.sessions, "seed": args.seed, "preset": args.preset, "families": args.families,
                "duration_s": args.duration_s, "units": list(args.units), "region_tuning": args.region_tuning,
                "choice_signal": args.choice_signal}
    if args.choice_signal != 1.0 and args.preset != "ibl":  # the flag would change nothing
        raise ValueError(f"--choice-signal applies to --preset ibl only (its choice latent); the {args.preset!r} "
                         f"preset has no choice, got --choice-signal {args.choice_signal:g}: drop the flag or use "
                         "--preset ibl")
    check_synth_out(out, settings, args.overwrite)
    record = out / SYNTH_RECORD
    previous = record.read_bytes() if record.is_file() else None
    made = [d for d in (out, *out.parents) if not d.exists()]  # removed again if nothing is synthesized
    try:  # the record first, so that an interrupted run can be run again as it was
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, settings)
        paths = synthesize(args.out_dir, num_sessions=args.sessions, seed=args.seed,
                           preset=args.preset, num_families=args.families,
                           duration_s=args.duration_s, units_range=args.units,
                           region_tuning=args.region_tuning, choice_signal=args.choice_signal,
                           progress=not args.quiet)
    except ValueError:  # bad arguments: nothing was synthesized, the record goes back to what it was
        if previous is None:
            record.unlink(missing_ok=True)
        else:
            write_bytes_atomic(record, previous)
        for d in made:  # nothing written, nothing left: the empty folders this command made
            if any(d.iterdir()):
                break
            d.rmdir()
        raise
    if args.overwrite:  # the recordings an earlier synth wrote here beyond these are stale
        _remove_stale_synth(out, paths)
    print(f"wrote {len(paths)} NWB files (+ .truth.npz ground truth) under {args.out_dir}")
    for p in paths:
        print(f"  {p}")
    return 0


def cmd_corpus_build(args) -> int:
    from spikefm.corpus.build import BuildConfig, build_corpus

    cfg = BuildConfig(bin_ms=args.bin_ms, max_row_tokens=args.max_row_tokens,
                      test_fraction=args.test_fraction, split=args.split, seed=args.seed,
                      workers=args.workers, strict=args.strict, source_dataset=args.source_dataset,
                      cache_dir=args.cache_dir, spikes_past_end=args.spikes_past_end,
                      overwrite=args.overwrite, executor=args.executor, ray_address=args.address)
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
        print(f"spikefm: error: {len(report.skipped)} input(s) skipped; listed under \"skipped\" in "
              f"{args.out}/manifest.json; the other {m['num_sessions']} session(s) were built: fix "
              "or remove the skipped inputs and run again (built sessions are reused)",
              file=sys.stderr)
        return 1
    return 0


def cmd_corpus_info(args) -> int:
    from spikefm.corpus.info import corpus_info, format_info
    from spikefm.corpus.reader import Corpus

    corpus = Corpus(args.corpus_dir)
    info = corpus_info(corpus, max_rows=args.max_rows, progress=not args.quiet)
    if args.check:
        from spikefm.corpus.info import check_corpus, format_check

        info["check"] = check_corpus(corpus, progress=not args.quiet)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    if args.check and not args.json:
        print(format_check(info["check"]))
    return 0 if not args.check or info["check"]["ok"] else 1


def cmd_corpus_plot(args) -> int:
    from spikefm.corpus.plots import plot_corpus
    from spikefm.corpus.reader import Corpus

    for p in plot_corpus(Corpus(args.corpus_dir), args.out):
        print(p)
    return 0


def cmd_corpus_import(args) -> int:
    from spikefm.corpus.importer import import_neural_pile

    m = import_neural_pile(args.source, args.out, cache_dir=args.cache_dir,
                           progress=not args.quiet, overwrite=args.overwrite)
    print(f"imported {m['num_sessions']} sessions into {args.out}: "
          + ", ".join(f"{k} {v['num_tokens']:,} tokens" for k, v in m["splits"].items()))
    return 0


#: What ``spikefm quickstart`` writes into OUT, and the corpus each of its runs is trained on.
QUICKSTART_NAMES = ("nwb", "corpus", "figures", "run_ar", "results_ar.json", "generated.npz",
                    "generated.png", "nwb_ndt", "corpus_sessions", "run_ndt_pretrain",
                    "run_ndt_finetune", "run_ndt_single", "results_ndt.json", "predictions_ndt",
                    "report.html")
QUICKSTART_RUNS = {"run_ar": "corpus", "run_ndt_pretrain": "corpus_sessions",
                   "run_ndt_finetune": "corpus_sessions", "run_ndt_single": "corpus_sessions"}


def check_quickstart_out(out: str | Path) -> None:
    """The quickstart replaces its own runs when run again: refuse a folder holding anything it
    did not write, or a run folder of the same name trained on another corpus (a user's run)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a folder for the quickstart (--out)")
    other = sorted(p.name for p in out.iterdir()
                   if not p.name.startswith(".") and p.name not in QUICKSTART_NAMES)
    if other:
        raise ValueError(f"{out}: folder has files the quickstart did not write (found {other[0]!r}); "
                         "nothing was changed: give a new or empty folder, or an earlier quickstart's (--out)")
    for name, corpus in QUICKSTART_RUNS.items():
        run = out / name
        if not run.is_dir() or not [p for p in run.iterdir() if not p.name.startswith(".")]:
            continue  # absent, or made by a quickstart killed before it wrote anything there
        # a finished run's description, or (a fine-tuning stopped before it chose) its candidates'
        described = [run / "config.json"] if (run / "config.json").is_file() else \
            sorted(run.glob("candidates/*/config.json"))
        for path in described or [run / "config.json"]:
            trained_on = _quickstart_corpus_of(path, out / corpus)
            if trained_on is not True:
                raise ValueError(f"{run} is not a run the quickstart made (trained on "
                                 f"{trained_on or 'an unknown corpus'}, not {out / corpus}); the quickstart "
                                 "would replace it: nothing was changed, give another --out")


def _quickstart_corpus_of(config: Path, corpus: Path) -> str | bool | None:
    """True when the run described by ``config`` was trained on ``corpus`` (the absolute path
    recorded at training time, or a copy of that corpus: the same manifest); else the corpus it
    names (None: unknown)."""
    from spikefm.corpus.reader import manifest_sha256

    try:
        info = json.loads(config.read_text())
        fam = info.get("family_info") or {}
        trained_on = fam.get("corpus") or info["config"]["data"]["corpus"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if Path(trained_on).resolve() == corpus.resolve():
        return True
    try:  # a quickstart folder copied or moved: its runs name the old place of the same corpus
        same = fam.get("corpus_manifest_sha256") == manifest_sha256(corpus)
    except OSError:
        same = False
    return True if same else str(trained_on)


def cmd_quickstart(args) -> int:
    from spikefm.quickstart import run_quickstart

    check_quickstart_out(args.out)
    run_quickstart(args.out, fast=args.fast)
    return 0


def cmd_train(args) -> int:
    from spikefm import families

    if not Path(args.data).is_dir():  # before torchrun's ranks connect (a missing corpus made rank 1 wait)
        raise ValueError(f"--data {args.data}: no such folder, so not a spikefm corpus; give the corpus "
                         "folder (spikefm corpus build ... --out DIR, or spikefm corpus import)")

    from spikefm.train.config import override_key

    overrides = list(args.set or [])
    for flag, key, value in (("--steps", "train.steps", args.steps), ("--sessions", "data.sessions", args.sessions)):
        if value is None or value == "":
            continue
        said = [o for o in overrides if override_key(o) == key]
        if said:  # the flag came last and won without a word
            raise ValueError(f"{flag} {value} and --set {said[-1].strip()} both set {key}; give one of them")
        overrides.append(f"{key}={value}")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    recorded = None
    if args.resume and args.preset is None and args.protocol is None and (Path(args.out) / "config.json").is_file():
        try:
            recorded = families.load_run_config(args.out)
        except (ValueError, OSError):
            recorded = None  # not a run's description: train's own checks say what the folder is
    family = args.model or (recorded.family if recorded is not None else families.DEFAULT_FAMILY)
    if args.sessions and family in families.names() and not families.picks_sessions(family):
        raise ValueError(f"--sessions picks the sessions of a model with per-session parameters (--model ndt or neds); "
                         f"the {family} family trains on the corpus's train split: drop --sessions")
    if recorded is not None and args.model in (None, recorded.family):
        # continue with the run's own settings (a bare --resume must not fall back to the
        # defaults); the flags given change them, and the loop names what changed
        from spikefm.train.config import apply_overrides

        cfg = apply_overrides(recorded, [f"data.corpus={args.data}", *overrides])
    else:
        cfg = families.run_config(args.model or families.DEFAULT_FAMILY, preset=args.preset,
                                  corpus=args.data, overrides=overrides, protocol=args.protocol)
    if args.resume and os.environ.get("RANK", "0") == "0":
        from spikefm.fileio import folder_in_use
        from spikefm.train.checkpoint import EXPORT_NAME, list_checkpoints

        out = Path(args.out)
        runnable = not out.exists() or (out.is_dir() and (not any(out.iterdir()) or (out / "config.json").is_file()))
        if runnable and not list_checkpoints(out) and not (out / EXPORT_NAME).exists() \
                and not folder_in_use(out):  # a requeued job's first start, or a mistyped --out (other
            # folders, and one another training holds, are refused by train itself)
            print(f"spikefm: warning: --resume: {out} holds no checkpoint to continue, so training starts at "
                  "step 0 (if you meant to continue another run, check --out)", file=sys.stderr)
    summary = families.train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun the summary is rank 0's to print
        return 0
    loss = summary.get("loss")  # None: resumed from a checkpoint at the last step, only exported
    last = f"last loss {loss:.4f}" if loss is not None else "no step was left to run (exported the last checkpoint)"
    print(f"trained {summary['step']} steps ({summary['tokens']:,} tokens, "
          f"{summary['elapsed_s']:.0f} s), {last}; run in {args.out}")
    from spikefm.train.finetune import validation_still_falling

    if summary.get("model_path") and validation_still_falling(args.out):
        print(f"spikefm: warning: the validation loss was still falling at step {summary['step']}; "
              "more steps may help (--steps)", file=sys.stderr)
    return 0


def cmd_finetune(args) -> int:
    from spikefm import families
    from spikefm.train.finetune import unfreeze_best_step, unfrozen_steps_text

    s = families.finetune(args.run_dir, args.data, args.session, args.out, strategy=args.strategy,
                          freeze_core=args.freeze_core, from_scratch=args.from_scratch,
                          steps=args.steps, patience=args.patience,
                          overrides=list(args.set or []) + (["train.tensorboard=true"] if args.tensorboard else []),
                          eval_every=args.eval_every, progress=not args.quiet, select=args.select,
                          soup=args.soup)
    if "candidates" in s:
        from spikefm.tables import render_table

        rows = [[name, c["best_val_loss"], "-" if name == "soup" else unfreeze_best_step(c),  # an average: no steps
                 "<- chosen" if name == s["strategy"] else ""] for name, c in s["candidates"].items()]
        rows.append(["single-session", s["single_session"]["best_val_loss"], s["single_session"]["best_step"],
                     "baseline"])
        print(render_table(["strategy", "val loss", "best step", ""], rows, align="<>><",
                           title="fine-tuning candidates (validation windows)"))
        if any("+" in str(r[2]) for r in rows):
            print("(unfreeze's best step: the frozen stage's best step + the step after unfreezing, counted from "
                  "those weights)")
        if s.get("soup"):
            print(f"soup (greedy weight average): {' + '.join(s['soup']['ingredients'])}, val loss "
                  f"{s['soup']['val_loss']:.4f}" + ("" if len(s["soup"]["ingredients"]) > 1 else
                                                     " (no average validated lower; not a candidate)"))
        sel = s.get("selection", {})
        if sel.get("rule") == "one-se":
            print(f"chosen by the one-standard-error rule: the most constrained candidate whose mean validation "
                  f"loss over {sel['num_windows']} windows is within one standard error of the lowest "
                  f"({sel['lowest_per_window']})")
        print(f"pretraining gain over the single-session model: {s['pretraining_gain']:+.4f} val loss")
    if s["strategy"] == "soup":
        print(f"best val loss {s['best_val_loss']:.4f}: the weight average of {', '.join(s['ingredients'])} "
              f"(strategy soup); run in {args.out}")
    else:
        print(f"best val loss {s['best_val_loss']:.4f} at step {s['best_step']} "
              f"(stopped at step {s['stopped_at']}{unfrozen_steps_text(s)}, strategy {s['strategy']}); run in {args.out}")
    return 0


#: `spikefm eval` options passed to the family's evaluate() when given (None = not given).
EVAL_OPTIONS = ("split", "ngram", "max_tokens", "max_train_tokens", "seq_len", "tasks", "session",
                "save_predictions", "decode_layer", "permutations", "compare_run", "compare_data")


def check_predictions_folder(path: Path) -> None:
    """``--save-predictions DIR`` writes ``<task>.npz`` files: DIR must be new or hold only such
    files (and results JSON), and may not be a corpus's folder or its ``data/`` (a rebuild refuses
    foreign files there), a run folder or a folder of recordings."""
    from spikefm.corpus.manifest import read_manifest

    flag = f"--save-predictions {path}"
    for d in (path.absolute(), *path.absolute().parents):
        if (d / "manifest.json").is_file():
            try:
                read_manifest(d)  # a spikefm corpus (a checkpoint's manifest.json is not one)
            except ValueError:
                continue
            raise ValueError(f"{flag}: that is inside the corpus {d}; files written there would break its "
                             "next build: give a folder of its own, e.g. predictions/")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}: is a file, not a folder; give a folder for the <task>.npz files")
    if path.is_dir():
        from spikefm.train.checkpoint import RUN_MARKERS

        if any((path / n).exists() for n in RUN_MARKERS):
            raise ValueError(f"{flag}: that is a run folder; predictions go into a folder of their own, "
                             "e.g. predictions/; nothing was written")
        other = sorted(p.name for p in path.iterdir()  # earlier predictions, results and reports
                       if not p.name.startswith(".") and p.suffix not in (".npz", ".json", ".html", ".htm"))
        if other:
            raise ValueError(f"{flag}: the folder holds other files (found {other[0]!r}"
                             f"{f' and {len(other) - 1} more' if len(other) > 1 else ''}); give a new folder "
                             "or one holding only earlier predictions (*.npz), results (*.json) and reports "
                             "(*.html); nothing was written")


def is_eval_results(obj: dict) -> bool:
    """``spikefm eval --out`` JSON (it names the family, and the built-in families' hold
    ``results``), not ``spikefm ngram --out``'s (``order``) nor a run's config.json (``config``)."""
    return ("family" in obj or "results" in obj) and "order" not in obj and "config" not in obj


def cmd_eval(args) -> int:
    import inspect

    from spikefm import families
    from spikefm.fileio import write_json_atomic

    if args.out:
        check_output_file(args.out, (".json",), "--out")
        check_results_file(args.out, "--out", "the results of an earlier spikefm eval", is_eval_results)
    if args.save_predictions:
        check_predictions_folder(Path(args.save_predictions))
    fam = families.family_of_run(args.run_dir)
    options = {k: getattr(args, k) for k in EVAL_OPTIONS if getattr(args, k) is not None}
    if "progress" in inspect.signature(fam.evaluate).parameters:
        options["progress"] = not args.quiet
    families.check_evaluate_options(fam, options, flags=EVAL_OPTIONS)
    results = families.stamp_family(fam, families.checked_results(
        fam, fam.evaluate(str(args.run_dir), str(args.data), **options)))
    name = Path(args.run_dir).name or "model"
    # a run folder named like a baseline column ("oracle", "1-gram") keeps its own column
    if name in {"smoothing", "oracle"} | (set(results.get("results") or {}) - {"model", "model-permuted"}):
        name = f"{name} (model)"
    print(families.format_results({name: results}, fam.name))
    if args.out:  # named by its family (a plugin's results may not say it): a rerun knows the file for its own
        write_json_atomic(Path(args.out), results if "family" in results else {"family": fam.name, **results})
    return 0


def _seed_list(text: str) -> list[int]:
    from spikefm.experiments.jobs import seed_list

    try:
        _int_list(text)  # an empty item ("1,,2") or a non-integer refused as in every int list
        return seed_list(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_experiment_transfer(args) -> int:
    from spikefm.experiments.transfer import transfer_study

    options = {k: v for k, v in (("family", args.model), ("pretrain_steps", args.pretrain_steps),
                                 ("protocol", args.protocol), ("soup", args.soup), ("tasks", args.tasks or None),
                                 ("preset", args.preset), ("eval_every", args.eval_every))
               if v is not None}
    # every setting is checked before the folder is made or any data synthesized (transfer_study)
    transfer_study(args.out, seeds=args.seeds, sessions=args.sessions, duration_s=args.duration_s,
                   synth_preset=args.synth_preset,
                   finetune_steps=args.finetune_steps, strategy=args.strategy,
                   overrides=list(args.set or []), quiet=args.quiet,
                   command=" ".join(["spikefm", *sys.argv[1:]]), **options)
    print(f"summary in {Path(args.out) / 'transfer.json'}")
    return 0


def cmd_report(args) -> int:
    from spikefm.report import write_report

    check_output_file(args.out, (".html", ".htm"), "--out")

    command = " ".join(["spikefm", "report", str(args.path), "--out", str(args.out)]
                       + (["--predictions", str(args.predictions)] if args.predictions else [])
                       + (["--generated", str(args.generated)] if args.generated else []))
    out = write_report(args.path, args.out, predictions=args.predictions, generated=args.generated,
                       command=command)
    print(f"report: {out} ({out.stat().st_size / 1e6:.2f} MB; open it in a browser, no network needed)")
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from spikefm import __version__

    p = _Parser(
        prog="spikefm", description="spikefm: corpora, training and benchmarks for foundation "
        "models of spiking neural population activity.")
    p.add_argument("--version", action="version", version=f"spikefm {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks (anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write synthetic NWB recordings with ground-truth rates")
    s.add_argument("out_dir")
    s.add_argument("--sessions", type=_positive_int, default=12,
                   help="number of sessions (default 12: enough for NDT pretraining on the corpus's train "
                        "split to beat a single-session model on the held-out one; with 4 it did not, README)")
    s.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    s.add_argument("--preset", choices=["ibl", "motor", "spontaneous"], default="ibl",
                   help="task structure and behaviour (default ibl)")
    s.add_argument("--families", type=_positive_int, default=1,
                   help="sessions drawn from K groups sharing latent dynamics (default 1)")
    from spikefm.corpus import synth as _synth

    s.add_argument("--duration-s", type=float, default=300.0,
                   help=f"length of each session in seconds (default 300: about 100 trials; at least "
                        f"{_synth.MIN_DURATION_S:g})")
    s.add_argument("--units", type=_units_range, default=_synth.UNITS_RANGE, metavar="MIN,MAX",
                   help="units per session, drawn uniformly (default %s; MIN at least %s)" % (
                       ",".join(map(str, _synth.UNITS_RANGE)),
                       ", ".join(f"{_synth.min_units(p)} for {p}" for p in _synth.PRESETS)))
    s.add_argument("--region-tuning", type=_nonnegative_float, default=0.0, metavar="A",
                   help="strength of a region-specific mean readout shared by the sessions (0, the "
                        "default, leaves the output unchanged; the NEDS benchmark uses 1)")
    s.add_argument("--choice-signal", type=_nonnegative_float, default=1.0, metavar="C",
                   help="ibl: amplitude of the choice latent (1.0, the default, leaves the output "
                        "unchanged; the NEDS benchmark uses 0.5, where a linear decoder is 58-82%% correct)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace recordings in OUT_DIR written by other settings (a rerun of the same command "
                        "needs no flag)")
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("corpus", help="build, inspect, plot or import corpora")
    csub = c.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    b = csub.add_parser("build", help="NWB files / folders / dandi:ID -> corpus shards")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".nwb file, folder (searched recursively), or dandi:ID[@VERSION][/GLOB]")
    b.add_argument("--out", required=True, help="corpus folder")
    b.add_argument("--bin-ms", type=_positive_int_at_most(60_000, " ms (one minute)"), default=20,
                   help="bin width in ms (default 20, the Neural Pile's)")
    b.add_argument("--max-row-tokens", type=_positive_int, default=10_000_000,
                   help="most tokens (units x bins) per corpus row; longer sessions are chunked (default 10,000,000)")
    b.add_argument("--test-fraction", type=_fraction, default=0.01,
                   help="test share (default 0.01): with --split session, of the tokens, whole sessions until it is "
                        "reached (a floor); with --split row, of the rows; at least one session or row")
    b.add_argument("--split", choices=["session", "row"], default="session",
                   help="session: no session in both splits; row: the Neural Pile's row split")
    b.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the train/test split (default 0)")
    b.add_argument("--workers", type=_positive_int, default=1,
                   help="files converted at once by local processes (default 1); with --executor ray and no "
                        "--address, the CPUs of the local Ray instance (left at 1, Ray takes every core)")
    b.add_argument("--strict", action="store_true", help="any bad input: write nothing, fail")
    b.add_argument("--source", dest="source_dataset", type=_name, default=None,
                   help="source_dataset name for every input (default: each input's folder name)")
    b.add_argument("--cache-dir", default=None,
                   help="DANDI download cache (default $SPIKEFM_DANDI_CACHE or ~/.cache/spikefm/dandi)")
    b.add_argument("--spikes-past-end", choices=["drop", "error"], default="drop",
                   help="spike times after the recording's end (its trials, behaviour and a "
                        "robust spike-time bound): leave them out and count them in the "
                        "manifest (drop), or skip the file (error)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace a corpus in --out that was built from other inputs or settings")
    b.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: --workers processes here; ray: one Ray task per file on a cluster "
                        "(--address) or a local Ray instance (pip install 'spikefm[ray]')")
    b.add_argument("--address", default=None, help="Ray cluster address (--executor ray)")
    b.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    b.set_defaults(func=cmd_corpus_build)

    i = csub.add_parser("info", help="summary statistics of a corpus")
    i.add_argument("corpus_dir")
    i.add_argument("--json", action="store_true", help="print the numbers as JSON")
    i.add_argument("--max-rows", type=_positive_int, default=None, metavar="N",
                   help="read only the first N rows (shuffled at build time: a sample) for the zero fraction "
                        "and token marginals (default: all; a large corpus takes minutes); the rest comes "
                        "from the manifest")
    i.add_argument("--check", action="store_true",
                   help="also read every column of every row and compare it with manifest.json (a corpus "
                        "copied, downloaded or edited by another tool); exit status 1 if anything disagrees")
    i.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    i.set_defaults(func=cmd_corpus_info)

    pl = csub.add_parser("plot", help="PNG figures of a corpus")
    pl.add_argument("corpus_dir")
    pl.add_argument("--out", required=True, help="figure folder")
    pl.set_defaults(func=cmd_corpus_plot)

    im = csub.add_parser("import", help="the published Neural Pile (HF repo or folder) -> corpus")
    im.add_argument("source", help="e.g. eminorhan/neural-pile-primate, or a local folder")
    im.add_argument("--out", required=True)
    im.add_argument("--cache-dir", default=None)
    im.add_argument("--overwrite", action="store_true",
                    help="replace a corpus in --out that was built from NWB files or imported from another source")
    im.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    im.set_defaults(func=cmd_corpus_import)

    t = sub.add_parser("train", help="train a model family on a corpus (torchrun for many GPUs)")
    from spikefm import families as _families  # the registry (plugins included), torch-free

    t.add_argument("--model", default=None, metavar="FAMILY",
                   help=f"model family: {', '.join(_families.names())} (default {_families.DEFAULT_FAMILY})")
    t.add_argument("--preset", default=None, help="model size preset of the family (default: the family's default, e.g. "
                   "tiny-bin-prefix for ar, tiny for ndt and neds)")
    t.add_argument("--protocol", default=None, metavar="NAME",
                   help="a family's named protocol of published settings (e.g. jiang2025), "
                        "applied before --set")
    t.add_argument("--data", required=True, help="corpus folder")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="optimizer steps of the whole run, as --set train.steps=N (default: the family's for "
                        "the preset: 250 for ar's tiny presets, 1000 for its larger ones, 8000 for ndt, 1500 "
                        "for neds)")
    t.add_argument("--sessions", default=None,
                   help="comma-separated session ids, for families trained per session")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. optim.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to OUT/tensorboard (pip install 'spikefm[tensorboard]')")
    t.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run (or a Hugging Face Llama folder) on a corpus")
    e.add_argument("run_dir", metavar="RUN_DIR",
                   help="run folder (spikefm train --out or spikefm finetune --out) or a Hugging Face Llama folder")
    e.add_argument("--data", required=True, metavar="CORPUS_DIR",
                   help="corpus folder to score on (spikefm corpus build --out); masked models (ndt, neds): the "
                        "corpus holding the run's session")
    e.add_argument("--out", default=None, help="results.json")
    e.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="token models (ar): the corpus split to score, train or test (default test; "
                        "a corpus has no val split, so ar refuses val); masked models (ndt, neds), the "
                        "only ones that accept val: the run's test windows (default) or val windows "
                        "(to choose settings)")
    e.add_argument("--max-tokens", type=_positive_int, default=None,
                   help="token models: score only the first rows, cut at whole bins once this many tokens "
                        "are reached (up to one bin, units + 1 tokens, more)")
    e.add_argument("--ngram", type=_int_list, default=None, metavar="ORDERS",
                   help="token models: also fit and score these n-gram baselines, e.g. 1,9")
    e.add_argument("--max-train-tokens", type=_positive_int, default=None,
                   help="token models, with --ngram: fit the n-grams on the train split's first rows up to "
                        "this many tokens (default: all of it)")
    e.add_argument("--seq-len", type=_positive_int, default=None,
                   help="context of a Hugging Face model (runs use their own; default: the training "
                        "context save_hf recorded in its config.json, else 512 within the model's limit)")
    e.add_argument("--tasks", default=None,
                   help="masked models: comma-separated benchmark tasks (ndt default: co-smoothing, "
                        "forward-prediction, forward-prediction-walk, inter-region, intra-region, "
                        "choice-decoding, behavior-decoding; neds default: encoding, decoding, region)")
    e.add_argument("--session", default=None, help="masked models: the session to evaluate")
    e.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="ndt runs: write DIR/<task>.npz with rates and counts")
    e.add_argument("--decode-layer", type=int, default=None, metavar="BLOCK",
                   help="ndt runs: transformer block (1-based) the decoding tasks read "
                        "(default: the run's data.decode_layer; 0 = the last)")
    e.add_argument("--permutations", type=_positive_int, default=None, metavar="K",
                   help="autoregressive models: also score the data with its units in K random "
                        "orders (did the model learn a unit order?)")
    e.add_argument("--compare-run", default=None, metavar="RUN_DIR",
                   help="autoregressive models: also score this run (e.g. the same recipe trained "
                        "on a corpus built with --split row) and print both side by side")
    e.add_argument("--compare-data", default=None, metavar="CORPUS_DIR",
                   help="the corpus for --compare-run (default: the one it was trained on)")
    e.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("finetune", help="adapt a pretrained run to a held-out session")
    f.add_argument("run_dir", help="pretrained run folder (a family with per-session parameters)")
    f.add_argument("--data", required=True, help="corpus holding the session")
    f.add_argument("--session", required=True, help="session id to adapt to")
    f.add_argument("--out", required=True, help="new run folder")
    mode = f.add_mutually_exclusive_group()
    mode.add_argument("--strategy", default=None, choices=["auto", "frozen", "full", "unfreeze", "scratch"],
                      help="auto (default): train a frozen core, full fine-tuning at a lower learning "
                           "rate and an unfreezing schedule, keep the best on validation, and the "
                           "single-session model beside them (OUT/finetune.json)")
    mode.add_argument("--freeze-core", action="store_true", help="train the session parameters only")
    mode.add_argument("--from-scratch", action="store_true",
                      help="single-session baseline: RUN_DIR's settings, random initialisation")
    f.add_argument("--steps", type=_positive_int, default=1500,
                   help="maximum optimizer steps of each candidate (default %(default)s)")
    f.add_argument("--eval-every", type=_positive_int, default=250,
                   help="steps between validation evaluations (early stopping; default %(default)s)")
    f.add_argument("--patience", type=_positive_int, default=3,
                   help="evaluations without improvement before stopping (default %(default)s)")
    f.add_argument("--select", default=None, choices=["lowest", "one-se"],
                   help="how auto picks its candidate: the lowest validation loss, or one-se: the most "
                        "constrained (frozen, unfreeze, full) within one standard error of it, which needs "
                        "per-window validation losses: neds has them, ndt refuses one-se "
                        "(default: the family's default, lowest for every family today)")
    f.add_argument("--soup", action=argparse.BooleanOptionalAction, default=None,
                   help="auto also ranks the greedy weight average of its pretrained candidates "
                        "(candidates/soup; default: the family's: on for ndt, off for neds)")
    f.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files in each candidate's run folder")
    f.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. optim.lr=1e-3 (repeatable)")
    f.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    f.set_defaults(func=cmd_finetune)

    from spikefm.families import commands

    for command in commands():
        c_parser = sub.add_parser(command.name, help=command.help)
        command.add_arguments(c_parser)
        c_parser.set_defaults(func=command.run)

    x = sub.add_parser("experiment", help="multi-run studies (transfer, session ranking, data scaling)")
    xsub = x.add_subparsers(dest="experiment", required=True, metavar="STUDY")
    from spikefm.experiments.transfer import QUICKSTART_SIZES as qs

    tr = xsub.add_parser("transfer", help="pretrain, fine-tune to a held-out session, compare with "
                         "the single-session model, smoothing and the oracle, over synthetic seeds")
    tr.add_argument("--out", required=True, help="study folder (one sub-folder per seed)")
    tr.add_argument("--seeds", type=_seed_list, default=[1, 2, 3], help="synthetic-data seeds (1,2,3)")
    tr.add_argument("--model", default=None, metavar="FAMILY",
                    help="a masked family with per-session parameters (default: the study's)")
    tr.add_argument("--preset", default=None,
                    help="model size preset (default: the --protocol's, else the family's: tiny for ndt and neds)")
    tr.add_argument("--protocol", default=None, help="a named protocol of the family, e.g. jiang2025")
    tr.add_argument("--synth-preset", default="ibl", choices=["ibl", "motor"], help="synthetic task")
    tr.add_argument("--sessions", type=_positive_int, default=qs["sessions"])
    tr.add_argument("--duration-s", type=_positive_float, default=qs["duration_s"])
    tr.add_argument("--pretrain-steps", type=_positive_int, default=None, help="default: the family's")
    tr.add_argument("--finetune-steps", type=_positive_int, default=qs["finetune_steps"])
    tr.add_argument("--eval-every", type=_positive_int, default=None,
                    help="fine-tuning steps between validations (default: a sixth of --finetune-steps, at least 10)")
    tr.add_argument("--strategy", default="auto", choices=["auto", "frozen", "full", "unfreeze"],
                    help="fine-tuning strategy (auto: chosen on validation windows)")
    tr.add_argument("--soup", action=argparse.BooleanOptionalAction, default=None,
                    help="auto fine-tuning also ranks the greedy weight average of its pretrained "
                         "candidates (default: the family's, as spikefm finetune)")
    tr.add_argument("--tasks", default=None, help="benchmark tasks (default: the family's)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a setting of the pretraining run (repeatable)")
    tr.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    tr.set_defaults(func=cmd_experiment_transfer)
    from spikefm.experiments.commands import add_parsers as add_study_parsers

    add_study_parsers(xsub)  # rank-sessions, scaling

    r = sub.add_parser("report", help="one self-contained HTML report of a corpus, run, evaluation "
                       "results JSON or study folder")
    r.add_argument("path", metavar="PATH", help="corpus folder, run folder, results JSON (spikefm eval "
                   "--out) or study folder (spikefm experiment transfer / rank-sessions / scaling --out)")
    r.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    r.add_argument("--predictions", default=None, metavar="DIR",
                   help="saved predictions of the evaluation (spikefm eval --save-predictions DIR); "
                        "default: a predictions/ or <stem>_predictions/ folder beside the JSON")
    r.add_argument("--generated", default=None, metavar="NPZ",
                   help="generated spikes to draw beside real ones (spikefm generate --out); "
                        "default: generated.npz beside an AR results JSON")
    r.set_defaults(func=cmd_report)

    q = sub.add_parser("quickstart", help="synthesize, build, inspect, train and evaluate")
    q.add_argument("--out", default="quickstart", help="folder for everything it writes (default ./quickstart); "
                   "running it again replaces its runs")
    q.add_argument("--fast", action="store_true", help="smallest sizes that run every step (seconds; used by the "
                   "tests): its numbers say nothing about the models")
    q.set_defaults(func=cmd_quickstart)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one line (no usage block): ``spikefm CMD: error: ...``."""

    def error(self, message: str):
        # under torchrun every rank parses the same line: rank 0 says what is wrong with it
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n"
                  if os.environ.get("RANK", "0") == "0" or not _under_torchrun() else None)


#: What to do about an OS error the user's paths or machine can cause, by errno.
_OS_HINTS = {
    "ENOENT": "check the path",
    "ENOTDIR": "a part of the path is a file, not a folder; choose another path",
    "EEXIST": "something of that name is in the way; choose another path or move it",
    "EISDIR": "that is a folder; give a file path",
    "EACCES": "choose a folder you can read and write, or fix its permissions",
    "EPERM": "choose a folder you can read and write, or fix its permissions",
    "EROFS": "the file system is read-only; choose a writable folder",
    "ELOOP": "a symbolic link points back to itself; fix or remove the link",
    "ENAMETOOLONG": "use a shorter path",
    "ENOSPC": "free space there (nothing was half-written: writes go to temporary names)",
    "EDQUOT": "free space in your quota (nothing was half-written: writes go to temporary names)",
}


def _is_out_of_space(exc: BaseException) -> bool:
    """A failed write for want of space that a library reports as its own error type."""
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError (torch.OutOfMemoryError on GPUs)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError)
                and ("can't allocate memory" in text or "out of memory" in text.lower())))


def _one_line(exc: BaseException) -> str:
    import errno

    if isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        msg = f"{exc.strerror}{where}"
        hint = _OS_HINTS.get(errno.errorcode.get(exc.errno or 0, ""))
        if hint:
            msg += f"; {hint}"
    elif isinstance(exc, MemoryError) or _is_out_of_memory(exc):
        import re

        wanted = re.search(r"allocate (\d+) bytes", str(exc))
        size = f" (tried to allocate {int(wanted.group(1)) / 1e9:.3g} GB)" if wanted else ""
        msg = (f"out of memory{size}; use smaller sizes (fewer units, bins or sessions, a smaller model "
               "or batch, e.g. --set train.batch_size=...) or a machine with more memory")
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


def _unraisable(hook_args) -> None:
    """A Ctrl-C that lands in a garbage-collector callback is swallowed by Python (a traceback
    'Exception ignored in ...' and the command goes on); deliver it again to the main thread,
    where it ends the command with the one 'interrupted' line."""
    if hook_args.exc_type is not None and issubclass(hook_args.exc_type, KeyboardInterrupt):
        import _thread
        import threading

        # from another thread, a moment later: raised here, it would be swallowed again
        threading.Timer(0.05, _thread.interrupt_main).start()
        return
    sys.__unraisablehook__(hook_args)


def _leave_on_ctrl_c(code: int) -> None:
    """The command has finished and written everything: a Ctrl-C during interpreter teardown
    (seconds with torch loaded) ends the process at once with the command's own exit status,
    instead of killing it by SIGINT with no message. Once the exit callbacks have run, the
    interpreter puts a Python handler back to SIGINT's default action for the rest of its
    teardown; from there on Ctrl-C is ignored (:func:`_ignore_ctrl_c_in_the_last_teardown`)."""
    import os
    import signal

    def leave(*_):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        signal.signal(signal.SIGINT, leave)
    except ValueError:  # not the main thread (main() called from a library user's thread)
        return
    _FINISHED.append(code)


#: Set once a command-line run has finished (its exit status): the teardown ignores Ctrl-C.
_FINISHED: list[int] = []


def _ignore_ctrl_c_in_the_last_teardown() -> None:
    """The last exit callback (registered when this module is imported, before torch's): past it
    the interpreter resets Python's SIGINT handlers to the default action, which killed a
    finished command by SIGINT (status 130, no line); an ignored SIGINT it leaves ignored."""
    if _FINISHED:
        import signal

        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:
            pass


atexit.register(_ignore_ctrl_c_in_the_last_teardown)


#: Parsed attributes that name files or folders, and how the command line spells them.
_PATH_ARGS = {"out": "--out", "out_dir": "OUT_DIR", "data": "--data", "run_dir": "RUN_DIR",
              "corpus_dir": "CORPUS_DIR", "inputs": "INPUT", "path": "PATH", "source": "SOURCE",
              "cache_dir": "--cache-dir", "save_predictions": "--save-predictions",
              "compare_run": "--compare-run", "compare_data": "--compare-data",
              "predictions": "--predictions", "generated": "--generated"}


def _check_paths(args: argparse.Namespace) -> None:
    """An empty path (``--out ""``, a shell variable that was not set) is refused: the file
    system reads it as the current folder, where a corpus or run would land among other files."""
    for name, flag in _PATH_ARGS.items():
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and not v.strip():
                raise ValueError(f"{flag}: an empty path ({v!r}); give a file or folder name "
                                 "('.' for the current folder)")


def main(argv: list[str] | None = None) -> int:
    """Run one ``spikefm`` command. Every failure prints one line ``spikefm: error: ...`` and
    returns 2 (bad input) or 1 (an operation failed: file system, memory, an internal error);
    ``--debug`` (anywhere on the line) or SPIKEFM_DEBUG=1 shows the traceback instead."""
    code = _main(argv)
    if argv is None and "torch" in sys.modules:
        # a torchrun worker that failed or was interrupted, its process group still open: leave now
        # (interpreter teardown with a live gloo group aborted the rank, SIGABRT, in place of this
        # status); a finished command has already left through exit_worker
        from spikefm.train.dist import exit_worker

        exit_worker(code, barrier=False)
    return code


def _main(argv: list[str] | None) -> int:
    import os

    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("SPIKEFM_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    if from_command_line and not debug:
        import warnings

        from spikefm.progress import warning_line

        warnings.showwarning = warning_line
        sys.unraisablehook = _unraisable
    args = None
    try:
        args = build_parser().parse_args(argv)
        _check_paths(args)
        _check_torchrun(args)
        code = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return _interrupted(args)
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns failures into one line
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return 141  # the reader of our output left (spikefm ... | head): quietly, as shell tools do
        if debug:
            raise
        if _caused_by_ctrl_c(exc):  # e.g. torch.save's writer failing as Ctrl-C unwound it
            return _interrupted(args)
        if _said_by_rank_zero(exc):
            _wait_for_rank_zero()
            return 2  # rank 0 prints it: one line for the torchrun job
        if isinstance(exc, (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError,
                            IsADirectoryError, PermissionError)):
            # bad input is the same on every rank of a torchrun job: said once, by rank 0
            _error_line(_one_line(exc), every_rank=False)
            return 2
        if isinstance(exc, (OSError, MemoryError)) or _is_out_of_memory(exc):
            _error_line(_one_line(exc))
            return 1
        if _is_out_of_space(exc):  # a library's own error type for a full disk (safetensors')
            _error_line(f"no space left on the device ({_one_line(exc)[:160]}); {_OS_HINTS['ENOSPC']}")
            return 1
        if _is_peer_lost(exc):
            _error_line(f"another process of this torchrun job stopped, so this one cannot go on "
                        f"({_one_line(exc)[:160]}); its error line, or torchrun's summary of how it ended, says "
                        "why: fix that and run the same command with --resume")
            return 1
        _error_line(f"internal error ({type(exc).__name__}: {_one_line(exc)}); rerun with --debug for the "
                    "traceback and report it")
        return 1
    if from_command_line:
        _leave_on_ctrl_c(code)
    if "torch" in sys.modules:  # a torchrun worker that finished: leave without C++ teardown
        from spikefm.train.dist import exit_worker

        exit_worker(code)
    return code


def _interrupted(args) -> int:
    """Ctrl-C: the one line saying how to go on (rank 0 of a torchrun job only: Ctrl-C reaches
    every rank); exit status 130."""
    import os

    if os.environ.get("RANK", "0") != "0" and _under_torchrun():
        return 130
    again = {"train": "continue it with the same command and --resume",
             "corpus": "run the command again (builds reuse finished sessions)"}.get(
        getattr(args, "command", None),
        "run the same command again (fine-tuning continues from its last validation; studies reuse their "
        "finished seeds or jobs)")
    if getattr(args, "corpus_command", None) == "import":  # an import starts over
        again = "run the command again (an import starts over; a corpus that was there is kept as it was)"
    _error_line(f"interrupted (Ctrl-C); nothing was half-written (writes go to temporary names); {again}",
                every_rank=False)
    return 130


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """An error raised while a KeyboardInterrupt was being handled or unwound (its context or
    cause chain holds one): the interrupt, not the error, is what happened."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _stdout_closed() -> bool:
    """Standard output is a pipe whose reader has gone; if so, it is pointed at /dev/null (so the
    interpreter's final flush raises nothing more)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poll.poll(0))  # a pipe without its reader
        if closed:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        return closed
    except (OSError, ValueError, AttributeError):  # no file descriptor, or no poll on this system
        return False


#: How long a torchrun rank that leaves an error for rank 0 to say waits before it exits itself.
SILENT_RANK_WAIT_S = 10.0


def _wait_for_rank_zero() -> None:
    """A rank that leaves its error for rank 0 to say waits for rank 0 to say it and exit
    (torchrun then ends this rank). Leaving first, its failure made torchrun stop rank 0 before
    rank 0's line was written (seen under load: a refusal with no error line at all)."""
    import time

    time.sleep(SILENT_RANK_WAIT_S)


def _error_line(message: str, *, every_rank: bool = True) -> None:
    """``spikefm: error: MESSAGE`` on stderr in one write (the lines of several torchrun ranks ran
    together when the newline was a write of its own). A torchrun rank other than 0 says it with
    its rank, or not at all when ``every_rank`` is False and its process group was never started
    (bad arguments or settings: every rank meets the same error, which rank 0 says)."""
    rank = os.environ.get("RANK", "0")
    if rank != "0" and not every_rank and _under_torchrun() and not _group_started():
        _wait_for_rank_zero()
        return
    where = f"(rank {rank}) " if rank != "0" else ""
    sys.stderr.write(f"spikefm: error: {where}{message}\n")
    sys.stderr.flush()


def _check_torchrun(args) -> None:
    """Only ``spikefm train`` shards over the processes of a torchrun job; any other command there
    would run once per process (eval printed its table twice, finetune's ranks raced for one file)."""
    command = getattr(args, "command", None)
    if _under_torchrun() and command != "train":
        raise ValueError(f"spikefm {command} runs in one process, and this is one of the "
                         f"{os.environ.get('WORLD_SIZE')} processes of a torchrun job; run it without torchrun "
                         "(only spikefm train shards a model over processes)")


def _said_by_rank_zero(exc: BaseException) -> bool:
    """A refusal rank 0 met and sent to this rank (``spikefm.train.dist.SaidByRankZero``)."""
    dist_module = sys.modules.get("spikefm.train.dist")  # loaded by whatever raised it
    return dist_module is not None and isinstance(exc, dist_module.SaidByRankZero)


def _under_torchrun() -> bool:
    """A worker of a multi-process torchrun job (other launchers set RANK too, and their ranks may
    meet different errors: those say theirs)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID")) and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def _group_started() -> bool:
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _is_peer_lost(exc: BaseException) -> bool:
    """A collective failed because another rank of the job died (gloo: connection reset or
    closed by peer; NCCL: a remote process exited / the communicator was aborted)."""
    if "RANK" not in os.environ:
        return False
    text = str(exc).lower()
    return any(k in text for k in ("connection reset by peer", "connection closed by peer",
                                    "remote process exited", "communicator was aborted", "broken pipe"))


if __name__ == "__main__":
    sys.exit(main())
