"""Benchmark: masked NDT training throughput (windows/s) on CPU and the wall time of the full
neural-prediction evaluation suite for one session.

    python benchmarks/bench_ndt.py                  # tiny preset, synthetic ibl sessions
    python benchmarks/bench_ndt.py --preset base    # the published size

Writes benchmarks/results/ndt.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ndt.json"))
    args = ap.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.families.ndt.evaluate import session_truth_rates, session_windows_for_run
    from spikefm.families.ndt.tasks import run_benchmark
    from spikefm.fileio import write_json_atomic
    from spikefm.families import load_model
    from spikefm.families.ndt.model import ndt_preset
    from spikefm.train.config import OptimConfig, RunConfig, TrainConfig
    from spikefm.families import train
    from spikefm.families.ndt.family import NDTDataConfig

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        tmp = Path(tmp)
        synthesize(tmp / "nwb", num_sessions=3, seed=0, duration_s=200.0)
        build_corpus([str(tmp / "nwb")], tmp / "corpus", BuildConfig(test_fraction=0.0),
                     progress=False)
        corpus = Corpus(tmp / "corpus")
        cfg = RunConfig(family="ndt", model=ndt_preset(args.preset),
                        data=NDTDataConfig(corpus=str(tmp / "corpus")),
                        optim=OptimConfig(warmup_steps=min(10, args.steps)),
                        train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                          log_every=args.steps, ckpt_every=args.steps,
                                          device="cpu"))
        t0 = time.perf_counter()
        summary = train(cfg, tmp / "run", progress=False)
        t_train = time.perf_counter() - t0
        model = load_model(tmp / "run")
        session = corpus.session_ids()[0]
        windows = session_windows_for_run(tmp / "run", corpus, session)
        truth = session_truth_rates(corpus, windows)
        tasks = ("co-smoothing", "forward-prediction", "forward-prediction-walk", "inter-region",
                 "intra-region", "choice-decoding")
        t0 = time.perf_counter()
        run_benchmark(model, windows, tasks=tasks, truth_rates=truth, baselines=True)
        t_eval = time.perf_counter() - t0

    result = {
        "benchmark": "ndt",
        "command": "python benchmarks/bench_ndt.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads,
                    "load_average_1m": os.getloadavg()[0]},
        "preset": args.preset,
        "train": {"steps": args.steps, "batch_size": args.batch_size, "seconds": t_train,
                  "windows_per_s": args.steps * args.batch_size / t_train,
                  "includes_startup": True, "num_params": summary.get("num_params")},
        "eval_suite": {"session": session, "test_windows": int((windows.split == "test").sum()),
                       "units": windows.num_units, "tasks": list(tasks), "seconds": t_eval},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
