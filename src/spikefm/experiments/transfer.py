"""Transfer study: does pretraining on many sessions help a session the model has never seen?

:func:`transfer` writes ``sessions`` synthetic NWB sessions (one family, so they share latent
dynamics; 30-80 units), builds a corpus whose test split (about one session in ``sessions``) is
held out, pretrains a model of a masked family on the train split, fine-tunes it on the first
held-out session's train trials (early stopping on its validation trials; only the session
parameters when ``freeze_core``), trains the same model from scratch on that session alone (the
single-session baseline) and benchmarks both on the held-out session's test trials beside the
smoothing baseline and the oracle (true rates). :func:`transfer_study` repeats it over seeds.

    spikefm experiment transfer --seeds 1,2,3 --out runs/transfer       # the quickstart's sizes

Every run goes through :mod:`spikefm.families` (train, finetune, evaluate); nothing here knows a
family's internals. Defaults are the quickstart's (:data:`QUICKSTART_SIZES`); the README says how
they were chosen.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["transfer", "transfer_study", "QUICKSTART_SIZES", "FAST_SIZES"]

#: Sizes of the quickstart's transfer step.
QUICKSTART_SIZES = dict(sessions=12, duration_s=300.0, pretrain_steps=8000, finetune_steps=1500)
#: The smallest sizes that still run every stage (used by the tests).
FAST_SIZES = dict(sessions=3, duration_s=40.0, pretrain_steps=60, finetune_steps=40)


def _check_int(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def transfer(out: str | Path, *, family: str = "ndt", sessions: int = 12, duration_s: float = 300.0,
             pretrain_steps: int = 8000, finetune_steps: int = 1500, seed: int = 1,
             schemes: str = "neuron", neuron_ratio: float = 0.1, freeze_core: bool = True,
             tasks: Sequence[str] = ("co-smoothing", "choice-decoding"), preset: str = "tiny",
             quiet: bool = False) -> dict:
    """Pretrain on synthetic sessions, fine-tune on a held-out one, benchmark it (module docstring).

    Writes ``OUT/nwb_ndt`` (reused if present), ``OUT/corpus_sessions``, the runs
    ``OUT/run_ndt_{pretrain,finetune,single}`` and ``OUT/results_ndt.json``.

    Args:
        out: study folder.
        family: a masked family with per-session parameters.
        sessions: synthetic sessions (pretraining sessions plus about one held out), >= 2.
        duration_s: length of each session.
        pretrain_steps, finetune_steps: optimizer steps (fine-tuning: maximum, early stopping).
        seed: the synthetic data's seed.
        schemes, neuron_ratio: training masking schemes and neuron-masking ratio.
        freeze_core: fine-tune only the new session's parameters.
        tasks: benchmark tasks.
        preset: model size preset.
        quiet: no progress bar.

    Returns:
        ``{"fine-tuned": benchmark, "single-session": benchmark}`` (the family's ``results``),
        also written to ``OUT/results_ndt.json``; the table is printed.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from spikefm import families
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.fileio import write_json_atomic

    _check_int("sessions", sessions, 2)
    _check_int("pretrain_steps", pretrain_steps, 1)
    _check_int("finetune_steps", finetune_steps, 1)
    out = Path(out)
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
    cfg = families.run_config(family, preset=preset, corpus=str(corpus_dir), overrides=[
        f"data.schemes={schemes}", f"data.neuron_ratio={neuron_ratio}", "optim.lr=3e-3",
        f"optim.warmup_steps={pretrain_steps // 10}", f"train.steps={pretrain_steps}",
        "train.batch_size=16", "train.log_every=50", f"train.ckpt_every={pretrain_steps}",
        "train.device=cpu", "train.precision=fp32"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a 2-core laptop
    try:
        with threadpool_limits(1):
            families.train(cfg, runs["pretrain"], progress=not quiet)
            every = max(10, finetune_steps // 6)
            ft = families.finetune(runs["pretrain"], corpus_dir, held_out, runs["finetune"],
                                   steps=finetune_steps, eval_every=every, patience=3,
                                   freeze_core=freeze_core)
            ss = families.finetune(runs["pretrain"], corpus_dir, held_out, runs["single"],
                                   from_scratch=True, steps=finetune_steps, eval_every=every,
                                   patience=3)
            print(f"fine-tuned: best val loss {ft['best_val_loss']:.4f} at step {ft['best_step']}; "
                  f"single-session: {ss['best_val_loss']:.4f} at step {ss['best_step']}")
            evaluated = {
                "fine-tuned": families.evaluate(runs["finetune"], corpus_dir, tasks=list(tasks),
                                                session=held_out, baselines=True),
                "single-session": families.evaluate(runs["single"], corpus_dir, tasks=list(tasks),
                                                    session=held_out, baselines=False),
            }
    finally:
        torch.set_num_threads(threads)
    print(families.format_results(evaluated))
    results = {name: ev["results"] for name, ev in evaluated.items()}
    write_json_atomic(out / "results_ndt.json", results)
    return results


def transfer_study(out: str | Path, *, seeds: Sequence[int] = (1, 2, 3),
                   tasks: Sequence[str] = ("co-smoothing",), command: str | None = None,
                   **options) -> dict:
    """:func:`transfer` on several synthetic datasets (one per seed), summarised in
    ``OUT/transfer.json`` (co-smoothing ``bps_pooled`` of each model, smoothing and oracle).

    Args:
        out: study folder; seed ``s`` runs in ``OUT/seed_<s>``.
        seeds: synthetic-data seeds.
        tasks: benchmark tasks (co-smoothing is always included).
        command: the command line to record.
        **options: passed to :func:`transfer`.

    Returns:
        The summary written to ``OUT/transfer.json``.
    """
    from spikefm.fileio import write_json_atomic
    from spikefm.train.runinfo import machine_info

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one synthetic-data seed, e.g. 1,2,3")
    tasks = list(dict.fromkeys(["co-smoothing", *tasks]))
    out = Path(out)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        res = transfer(out / f"seed_{seed}", seed=seed, tasks=tasks, **options)
        ft = res["fine-tuned"]["tasks"]["co-smoothing"]
        ss = res["single-session"]["tasks"]["co-smoothing"]
        b = {"fine-tuned": ft["model"]["bps_pooled"], "single-session": ss["model"]["bps_pooled"],
             "smoothing": ft.get("smoothing", {}).get("bps_pooled"),
             "oracle": ft.get("oracle", {}).get("bps_pooled")}
        row = {"seed": seed, "session_id": res["fine-tuned"]["session_id"],
               "num_units": res["fine-tuned"]["num_units"],
               "num_test_windows": res["fine-tuned"]["num_test_windows"], "bps_pooled": b,
               "wall_s": round(time.perf_counter() - t0, 1)}
        if b["oracle"]:
            row["fraction_of_oracle"] = {k: b[k] / b["oracle"] for k in ("fine-tuned", "single-session")}
        row["fine-tuned_beats"] = {k: b["fine-tuned"] > b[k] for k in ("smoothing", "single-session")
                                   if b[k] is not None}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in b.items() if v is not None),
              flush=True)
        rows.append(row)
    summary = {"study": "transfer", "command": command or " ".join(sys.argv),
               "settings": {"seeds": seeds, "tasks": tasks, **options}, "runs": rows,
               "fine-tuned_beats_both_in": f"{sum(all(r['fine-tuned_beats'].values()) for r in rows)}/{len(rows)}",
               "machine": machine_info()}
    write_json_atomic(out / "transfer.json", summary)
    return summary
