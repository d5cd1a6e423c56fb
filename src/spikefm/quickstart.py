"""``spikefm quickstart``: the whole path on synthetic NWB data, offline, in minutes on a laptop.

1. ``spikefm synth`` writes a few NWB sessions with ground-truth rates;
2. ``spikefm corpus build`` turns them into a corpus (a fifth of the rows held out);
3. ``spikefm corpus info`` / ``plot`` describe it;
4. the 1-gram and 9-gram baselines are fitted on the training sessions;
5. the ``tiny`` autoregressive model trains for a few minutes on the CPU;
6. model, n-grams and the oracle (the true rates) are scored on the same held-out tokens;
7. a short raster is sampled from the model, prompted with real bins;
8. a ``tiny`` masked NDT is pretrained on all sessions but one, fine-tuned on the held-out one
   (new session parameters on a frozen core, early stopping on its validation trials), and
   benchmarked against the same model trained on that session alone, the smoothing baseline and
   the oracle (:func:`spikefm.experiments.transfer.transfer`).

Everything lands under ``OUT`` (default ``./quickstart``); re-running reuses the built corpus.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterator


#: Said at the start and end of ``--fast``: its sizes only check that every step runs.
FAST_NOTE = ("(--fast: every size is the smallest that runs each step, so its numbers, negative bits "
             "per spike and nan included, say nothing about the models; the full quickstart's are "
             "in the README)")


#: Each recording folder of the quickstart and the corpus built from it.
_BUILT_FROM = {"nwb": "corpus", "nwb_ndt": "corpus_sessions"}


#: Sizes of steps 1-7 (step 8's are the transfer study's), by ``fast``.
SIZES = {True: dict(sessions=3, duration_s=40.0, steps=40, eval_tokens=30_000),
         False: dict(sessions=4, duration_s=120.0, steps=400, eval_tokens=300_000)}


def _recordings(fast: bool) -> dict[str, int]:
    """The synthetic sessions each of the quickstart's recording folders holds in this mode."""
    from spikefm.experiments.transfer import FAST_SIZES, QUICKSTART_SIZES

    return {"nwb": SIZES[fast]["sessions"], "nwb_ndt": (FAST_SIZES if fast else QUICKSTART_SIZES)["sessions"]}


#: Written into a recording folder before the quickstart synthesizes into it: the folder is its own.
MADE_HERE = ".quickstart-synth.json"


def mark_recordings(folder: Path, fast: bool) -> None:
    """Say (before synthesizing) that the quickstart makes ``folder``, so a later run may replace it."""
    from spikefm.fileio import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MADE_HERE, {"fast": fast})


def check_recordings(out: str | Path, fast: bool) -> list[str]:
    """Recording folders of OUT that this mode cannot reuse (another mode's, e.g. a ``--fast``
    run's 3 short sessions, which the full quickstart reused and reported on; or a synthesis
    that was interrupted) are removed with the corpus built from them, so they are made again,
    when the quickstart made them (:data:`MADE_HERE`); anything else is refused in one line.
    Returns what was removed (each said in one line)."""
    out = Path(out)
    removed = []
    for folder, expected in _recordings(fast).items():
        found = len(list((out / folder).rglob("*.nwb"))) if (out / folder).is_dir() else 0
        if not found or found == expected:
            continue
        if not (out / folder / MADE_HERE).is_file():
            raise ValueError(f"{out / folder} holds {found} recordings the quickstart did not make (it makes "
                             f"{expected}); nothing was changed: give another --out")
        print(f"spikefm: {out / folder} holds {found} recordings, not the {expected} this run makes (another "
              f"mode's, or an interrupted synthesis): made again, with {out / _BUILT_FROM[folder]}", flush=True)
        for name in (folder, _BUILT_FROM[folder]):
            shutil.rmtree(out / name, ignore_errors=True)
        removed.append(folder)
    return removed


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_quickstart(out: str | Path = "quickstart", *, fast: bool = False) -> dict:
    """Run the quickstart; ``fast`` shrinks every size (used by the tests). Returns the results."""
    import torch

    from spikefm import families
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.info import corpus_info, format_info
    from spikefm.corpus.plots import plot_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.families.ar.generation import PastTrainedContext
    from spikefm.fileio import write_json_atomic

    t0 = time.time()
    out = Path(out)
    sizes = SIZES[bool(fast)]
    check_recordings(out, fast)
    if fast:
        print(FAST_NOTE, flush=True)

    _say(f"1/8 synthesizing {sizes['sessions']} NWB sessions ({sizes['duration_s']:.0f} s each)")
    nwb_dir = out / "nwb"
    if not (nwb_dir.exists() and any(nwb_dir.rglob("*.nwb"))):
        mark_recordings(nwb_dir, fast)
        # 20-60 units: a tiny model sees several bins per 256-token context and learns in minutes.
        synthesize(nwb_dir, num_sessions=sizes["sessions"], seed=0,
                   duration_s=sizes["duration_s"], units_range=(20, 60))
    print(f"NWB files and ground truth in {nwb_dir}")

    _say("2/8 building the corpus (row-level split, as the Neural Pile paper)")
    # With only a few sessions a session-level split asks the model to generalize to a unit count
    # it has never seen; the paper's row split holds out chunks of every session instead.
    corpus_dir = out / "corpus"
    report = build_corpus([str(nwb_dir)], corpus_dir,
                          BuildConfig(test_fraction=0.2, split="row", max_row_tokens=50_000,
                                      seed=0), progress=False)
    corpus = Corpus(corpus_dir)
    print(f"{corpus}")

    _say("3/8 corpus info and plots")
    info = corpus_info(corpus)
    print(format_info(info))
    figs = plot_corpus(corpus, out / "figures", info=info)
    print("figures: " + ", ".join(str(p) for p in figs))

    _say("4/8 n-gram baselines (1-gram, 9-gram) fitted on the training rows, and the oracle")
    ar = families.get("ar")
    baselines = ar.evaluate_baselines(str(corpus_dir), ngram=(1, 9), max_tokens=sizes["eval_tokens"])
    for name, res in baselines.items():
        print(f"{name}: {res['overall']['all']['bits']:.4f} bits/token")

    _say(f"5/8 training the tiny autoregressive model ({sizes['steps']} steps on the CPU)")
    run_dir = out / "run_ar"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = families.run_config("ar", preset="tiny", corpus=str(corpus_dir), overrides=[
        "data.seq_len=256", "optim.lr=3e-3", "optim.warmup_steps=20", f"train.steps={sizes['steps']}",
        "train.batch_size=8", "train.log_every=50", f"train.ckpt_every={sizes['steps']}",
        "train.device=cpu", "train.precision=bf16"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a 2-core laptop
    try:
        summary = families.train(cfg, run_dir, progress=True)
    finally:
        torch.set_num_threads(threads)
    print(f"trained {summary['step']} steps, {summary['tokens']:,} tokens in "
          f"{summary['elapsed_s']:.0f} s; run directory {run_dir}")

    _say("6/8 cross-entropy on the held-out rows (same tokens for every model)")
    evaluated = ar.evaluate(str(run_dir), str(corpus_dir), max_tokens=sizes["eval_tokens"],
                            baselines=baselines)
    print(ar.format_results({"tiny AR": evaluated}))
    results = {"tiny AR": evaluated["results"]["model"],
               **{k: v for k, v in evaluated["results"].items() if k != "model"}}
    write_json_atomic(out / "results_ar.json", results)

    _say("7/8 sampling a raster from the model, prompted with real bins")
    session = corpus.session_ids("test")[0]
    units = corpus.session(session)["num_units"]
    generate = {c.name: c for c in families.commands()}["generate"]
    parser = argparse.ArgumentParser(prog="spikefm generate")
    generate.add_arguments(parser)  # the CLI's own options and defaults, so none is restated here
    with _held_back(PastTrainedContext) as past:
        generate.run(parser.parse_args([str(run_dir), "--units", str(units), "--bins", "10" if fast else "25",
                                        "--prompt", f"{corpus_dir}:{session}:0", "--prompt-bins", "5",
                                        "--out", str(out / "generated.npz")]))
    if past:  # the tiny model's short training windows are the quickstart's choice, said as such
        print(f"note: the raster runs past the {cfg.data.seq_len} tokens of context the tiny model was trained "
              "on (the quickstart trains on short windows to be quick): its later bins show how it extrapolates")
    ndt_results = _ndt_step(out, fast)
    from spikefm.report import write_quickstart_report

    print(f"\nreport (open it in a browser): {write_quickstart_report(out)}")
    print(f"\nquickstart finished in {time.time() - t0:.0f} s; everything is under {out}/")
    if fast:
        print(FAST_NOTE)
    return {"results": results, "ndt_results": ndt_results, "report": report, "figures": figs}


@contextlib.contextmanager
def _held_back(category: type[Warning]) -> Iterator[list[Warning]]:
    """Warnings of ``category`` are collected (the caller says them its own way) instead of shown;
    every other warning is shown as usual, when it happens (the filters, and their de-duplication,
    apply as before)."""
    held: list[Warning] = []
    show = warnings.showwarning

    def showwarning(message, cat, filename, lineno, file=None, line=None):
        if issubclass(cat, category):
            held.append(message)
        else:
            show(message, cat, filename, lineno, file, line)

    warnings.showwarning = showwarning
    try:
        yield held
    finally:
        warnings.showwarning = show


def _ndt_step(out: Path, fast: bool) -> dict:
    from spikefm.experiments.transfer import FAST_SIZES, QUICKSTART_SIZES, transfer
    from spikefm.train.finetune import FinetuneBudget

    sizes = FAST_SIZES if fast else QUICKSTART_SIZES
    if not any((out / "nwb_ndt").rglob("*.nwb")):
        mark_recordings(out / "nwb_ndt", fast)  # transfer() synthesizes into it
    _say(f"8/8 masked NDT: {sizes['sessions']} more synthetic sessions ({out / 'nwb_ndt'}, {sizes['duration_s']:.0f} s "
         "each); pretrain on all but the held-out one(s), fine-tune to a held-out one, compare with the same "
         "model trained on it alone")
    with _held_back(FinetuneBudget) as budget:
        results = transfer(out, **sizes)
    if budget:  # their advice names flags of spikefm finetune, which the quickstart does not take
        first = str(budget[0]).split("; ")[0]
        print(f"note: {len(budget)} fine-tuning run(s) of the quickstart might have used more steps or earlier "
              f"evaluations (e.g. {first}); its budgets are fixed"
              + (" (--fast: the smallest that run)" if fast else "")
              + ": spikefm finetune RUN --data CORPUS --session ID --out DIR --steps N trains longer")
    return results
