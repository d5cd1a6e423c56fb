"""Reliability check: run a short two-process `torchrun` AR training many times; count failures.

    python benchmarks/stress_torchrun.py                 # 40 runs, one busy-looping process beside
    python benchmarks/stress_torchrun.py --runs 10 --no-load

Each run trains the tiny AR model for 4 steps on 2 gloo CPU ranks (FSDP2, checkpoints at steps 2
and 4), on a fresh synthetic corpus, as tests/test_ar_pipeline.py does. A finished run whose rank
dies at exit, or a crash mid-run, shows up as a non-zero exit code; the first error lines of every
failed run are kept. Writes benchmarks/results/stress_torchrun.json.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info  # noqa: E402


def _busy() -> None:
    while True:
        sum(i * i for i in range(10_000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--no-load", action="store_true", help="no busy process beside the runs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "stress_torchrun.json"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.fileio import write_json_atomic

    load = None if args.no_load else mp.Process(target=_busy, daemon=True)
    if load is not None:
        load.start()
    results = []
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                synthesize(tmp / "nwb", num_sessions=3, seed=1, duration_s=60.0, units_range=(20, 30))
                build_corpus([str(tmp / "nwb")], tmp / "corpus",
                             BuildConfig(test_fraction=0.2, split="row", max_row_tokens=10_000),
                             progress=False)
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                       "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                       "-m", "spikefm.cli", "train", "--model", "ar", "--preset", "tiny",
                       "--data", str(tmp / "corpus"), "--out", str(tmp / "run"), "--steps", "4",
                       "--set", "train.batch_size=4", "--set", "data.seq_len=64",
                       "--set", "optim.warmup_steps=1", "--set", "train.ckpt_every=2", "--quiet"]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                      env={**os.environ, "OMP_NUM_THREADS": "1",
                                           "PYTHONFAULTHANDLER": "1"})
                row = {"run": i, "returncode": proc.returncode,
                       "seconds": round(time.perf_counter() - t0, 2)}
                if proc.returncode != 0:
                    keys = ("Error", "what()", "terminate called", "Fatal Python", "exitcode")
                    row["error_lines"] = [ln for ln in proc.stderr.splitlines()
                                          if any(k in ln for k in keys)][:20]
                print(f"run {i}: exit {proc.returncode}", flush=True)
                results.append(row)
    finally:
        if load is not None:
            load.terminate()
    failed = sum(r["returncode"] != 0 for r in results)
    write_json_atomic(Path(args.out), {
        "benchmark": "stress_torchrun",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "runs": len(results), "failed": failed, "with_load": load is not None,
        "results": results, "machine": machine_info(),
    })
    print(f"{failed} of {len(results)} runs failed; wrote {args.out}")


if __name__ == "__main__":
    main()
