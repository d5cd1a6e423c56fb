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
   the oracle (:func:`ndt_transfer`).

Everything lands under ``OUT`` (default ``./quickstart``); re-running reuses the built corpus.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_quickstart(out: str | Path = "quickstart", *, fast: bool = False) -> dict:
    """Run the quickstart; ``fast`` shrinks every size (used by the tests). Returns the results."""
    import torch

    from .corpus.build import BuildConfig, build_corpus
    from .corpus.info import corpus_info, format_info
    from .corpus.plots import plot_corpus
    from .corpus.reader import Corpus
    from .corpus.synth import synthesize
    from .eval.ar_eval import evaluate_model, evaluate_ngram, evaluate_oracle, fit_ngram, \
        write_results
    from .eval.xent import format_table
    from .generation import generate_to_file
    from .loading import load_model, register_families
    from .models.llama import llama_preset
    from .train.ar_family import ARDataConfig
    from .train.config import OptimConfig, RunConfig, TrainConfig
    from .train.loop import train

    t0 = time.time()
    out = Path(out)
    sizes = dict(sessions=3, duration_s=40.0, steps=40, eval_tokens=30_000) if fast else \
        dict(sessions=4, duration_s=120.0, steps=400, eval_tokens=300_000)

    _say(f"1/8 synthesizing {sizes['sessions']} NWB sessions ({sizes['duration_s']:.0f} s each)")
    nwb_dir = out / "nwb"
    if not (nwb_dir.exists() and any(nwb_dir.rglob("*.nwb"))):
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

    _say("4/8 n-gram baselines (1-gram, 9-gram) fitted on the training rows")
    results = {}
    for order in (1, 9):
        ng = fit_ngram(corpus, order)
        results[f"{order}-gram"] = evaluate_ngram(ng, corpus, max_tokens=sizes["eval_tokens"])
        print(f"{order}-gram: {results[f'{order}-gram']['overall']['all']['bits']:.4f} bits/token")

    _say(f"5/8 training the tiny autoregressive model ({sizes['steps']} steps on the CPU)")
    register_families()
    run_dir = out / "run_ar"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = RunConfig(family="ar", model=llama_preset("tiny"),
                    data=ARDataConfig(corpus=str(corpus_dir), seq_len=256),
                    optim=OptimConfig(lr=3e-3, warmup_steps=20),
                    train=TrainConfig(steps=sizes["steps"], batch_size=8, log_every=50,
                                      ckpt_every=sizes["steps"], device="cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a 2-core laptop
    try:
        summary = train(cfg, run_dir, progress=True)
    finally:
        torch.set_num_threads(threads)
    print(f"trained {summary['step']} steps, {summary['tokens']:,} tokens in "
          f"{summary['elapsed_s']:.0f} s; run directory {run_dir}")

    _say("6/8 cross-entropy on the held-out rows (same tokens for every model)")
    model = load_model(run_dir)
    results = {"tiny AR": evaluate_model(model, corpus, seq_len=256,
                                         max_tokens=sizes["eval_tokens"]), **results}
    oracle = evaluate_oracle(corpus, max_tokens=sizes["eval_tokens"])
    if oracle is not None:
        results["oracle"] = oracle
    print(format_table(results, title="cross-entropy on the test split (bits/token)"))
    write_results(out / "results_ar.json", results)

    _say("7/8 sampling a raster from the model, prompted with real bins")
    session = corpus.session_ids("test")[0]
    units = corpus.session(session)["num_units"]
    paths = generate_to_file(run_dir, num_units=units, num_bins=10 if fast else 25,
                             prompt=f"{corpus_dir}:{session}:0", prompt_bins=5,
                             out=out / "generated.npz")
    print("wrote " + ", ".join(str(p) for p in paths))
    ndt_results = _ndt_step(out, fast)
    print(f"\nquickstart finished in {time.time() - t0:.0f} s; everything is under {out}/")
    return {"results": results, "ndt_results": ndt_results, "report": report, "figures": figs}


#: Settings of the quickstart's NDT comparison (see :func:`ndt_transfer`).
NDT_SIZES = dict(sessions=12, duration_s=300.0, pretrain_steps=8000, finetune_steps=1500)
NDT_FAST_SIZES = dict(sessions=3, duration_s=40.0, pretrain_steps=60, finetune_steps=40)


def _ndt_step(out: Path, fast: bool) -> dict:
    sizes = NDT_FAST_SIZES if fast else NDT_SIZES
    _say(f"8/8 masked NDT: pretrain on {sizes['sessions']} synthetic sessions but the held-out "
         "one(s), fine-tune on a held-out one")
    return ndt_transfer(out, **sizes)


def ndt_transfer(out: str | Path, *, sessions: int = 12, duration_s: float = 300.0,
                 pretrain_steps: int = 8000, finetune_steps: int = 1500, seed: int = 1,
                 schemes: str = "neuron", neuron_ratio: float = 0.1,
                 freeze_core: bool = True,
                 tasks: tuple[str, ...] = ("co-smoothing", "choice-decoding"),
                 ) -> dict:
    """Pretrain a ``tiny`` NDT on synthetic sessions, fine-tune on a held-out one, benchmark it.

    Writes ``sessions`` synthetic NWB sessions (one family, so they share latent dynamics; 30-80
    units) under ``OUT/nwb_ndt`` (reused if present), builds a corpus whose test split (about one
    session in ``sessions``; ``OUT/corpus_sessions``) is held out, pretrains on the train split
    (``OUT/run_ndt_pretrain``), fine-tunes on the first held-out session's train trials with early stopping on its validation trials
    (``OUT/run_ndt_finetune``; only the session parameters when ``freeze_core``), trains the same
    model from scratch on that session alone (``OUT/run_ndt_single``), and scores both on the
    held-out session's test trials with the smoothing baseline and the oracle (true rates).

    Defaults are the quickstart's. Masking: ``schemes`` at ``neuron_ratio`` (one unit in ten
    hidden per neuron-masked sample); see the README for how these were chosen.

    Returns:
        ``{"fine-tuned": run_benchmark(...), "single-session": run_benchmark(...)}``, also
        written to ``OUT/results_ndt.json``; the table is printed.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from .corpus.build import BuildConfig, build_corpus
    from .corpus.reader import Corpus
    from .corpus.synth import synthesize
    from .eval.ndt_runner import session_truth_rates, session_windows_for_run
    from .eval.ndt_tasks import format_benchmark_table, run_benchmark
    from .fileio import write_json_atomic
    from .finetune import finetune, train_single_session
    from .loading import load_model, register_families
    from .models.ndt import ndt_preset
    from .train.config import OptimConfig, RunConfig, TrainConfig
    from .train.loop import train
    from .train.ndt_family import NDTDataConfig

    if not isinstance(sessions, int) or isinstance(sessions, bool) or sessions < 2:
        raise ValueError(f"sessions must be an int >= 2 (pretraining sessions plus a held-out one), "
                         f"got {sessions!r}")
    out = Path(out)
    register_families()
    nwb_dir = out / "nwb_ndt"
    if not nwb_dir.exists() or not any(nwb_dir.rglob("*.nwb")):
        synthesize(nwb_dir, num_sessions=sessions, seed=seed, duration_s=duration_s,
                   units_range=(30, 80))
    corpus_dir = out / "corpus_sessions"
    build_corpus([str(nwb_dir)], corpus_dir,
                 BuildConfig(test_fraction=1.0 / sessions - 1e-9, seed=0), progress=False)
    corpus = Corpus(corpus_dir)
    held_out = corpus.session_ids("test")[0]
    print(f"pretraining sessions: {', '.join(corpus.session_ids('train'))}; held out: {held_out}")
    runs = {name: out / f"run_ndt_{name}" for name in ("pretrain", "finetune", "single")}
    for path in runs.values():
        if path.exists():
            shutil.rmtree(path)
    cfg = RunConfig(family="ndt", model=ndt_preset("tiny"),
                    data=NDTDataConfig(corpus=str(corpus_dir), schemes=schemes,
                                       neuron_ratio=neuron_ratio),
                    optim=OptimConfig(lr=3e-3, warmup_steps=pretrain_steps // 10),
                    train=TrainConfig(steps=pretrain_steps, batch_size=16, log_every=50,
                                      ckpt_every=pretrain_steps, device="cpu", precision="fp32"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a 2-core laptop
    try:
        with threadpool_limits(1):
            train(cfg, runs["pretrain"], progress=True)
            every = max(10, finetune_steps // 6)
            ft = finetune(runs["pretrain"], corpus_dir, held_out, runs["finetune"],
                          steps=finetune_steps, eval_every=every, patience=3,
                          freeze_core=freeze_core)
            ss = train_single_session(corpus_dir, held_out, runs["single"],
                                      like_run=runs["pretrain"], steps=finetune_steps,
                                      eval_every=every, patience=3)
            print(f"fine-tuned: best val loss {ft['best_val_loss']:.4f} at step {ft['best_step']}; "
                  f"single-session: {ss['best_val_loss']:.4f} at step {ss['best_step']}")
            windows = session_windows_for_run(runs["finetune"], corpus, held_out)
            truth = session_truth_rates(corpus, windows)
            results = {
                "fine-tuned": run_benchmark(load_model(runs["finetune"]), windows, tasks=list(tasks),
                                            truth_rates=truth, baselines=True),
                "single-session": run_benchmark(load_model(runs["single"]), windows,
                                                tasks=list(tasks), truth_rates=truth,
                                                baselines=False),
            }
    finally:
        torch.set_num_threads(threads)
    print(format_benchmark_table(results))
    write_json_atomic(out / "results_ndt.json", results)
    return results
