"""Benchmark: spikefm.corpus.bin_spikes against per-unit np.histogram (the reference pipeline's
method) on one large session, and end-to-end corpus build throughput in tokens/s.

    python benchmarks/bench_binning.py            # ~500 units, 1 hour, 20 ms bins
    python benchmarks/bench_binning.py --units 100 --hours 0.25   # quicker

Writes benchmarks/results/binning.json.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=500)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--rate-hz", type=float, default=5.0)
    ap.add_argument("--build-sessions", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "binning.json"))
    args = ap.parse_args()

    from spikefm.corpus import bin_spikes

    rng = np.random.default_rng(0)
    duration = args.hours * 3600
    rates = rng.lognormal(np.log(args.rate_hz), 0.8, args.units)
    units = [np.sort(rng.uniform(0, duration, rng.poisson(r * duration))) for r in rates]
    t = np.concatenate(units)
    u = np.repeat(np.arange(args.units), [len(x) for x in units])
    num_bins = int(round(duration * 1000)) // 20
    edges = np.arange(num_bins + 1) * 0.02

    def ours():
        return bin_spikes(t, u, args.units, 0.0, duration, 20)

    def reference():  # as the Neural Pile scripts do: one histogram per unit, cast to uint8
        return np.vstack([np.histogram(x, bins=edges)[0] for x in units]).astype(np.uint8)

    t_ours, a = best_of(ours, 3)
    t_ref, b = best_of(reference, 1)
    assert np.array_equal(a, b), "results differ"

    # End-to-end build throughput on synthetic NWB files written by the test helper.
    from conftest import random_units, write_nwb
    from spikefm.corpus.build import BuildConfig, build_corpus

    with tempfile.TemporaryDirectory() as tmp:
        r2 = np.random.default_rng(1)
        for k in range(args.build_sessions):
            write_nwb(Path(tmp) / "in" / f"s{k}.nwb", random_units(r2, 100, 600.0, 8.0),
                      ["A"] * 100)
        t0 = time.perf_counter()
        rep = build_corpus([str(Path(tmp) / "in")], Path(tmp) / "c", BuildConfig(), progress=False)
        t_build = time.perf_counter() - t0
        tokens = sum(s["num_tokens"] for s in rep.manifest["sessions"])

    result = {
        "benchmark": "binning",
        "command": "python benchmarks/bench_binning.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "session": {"units": args.units, "hours": args.hours, "spikes": int(t.size),
                    "bins": num_bins},
        "bin_spikes_s": t_ours,
        "per_unit_histogram_s": t_ref,
        "speedup": t_ref / t_ours,
        "build": {"sessions": args.build_sessions, "tokens": tokens, "seconds": t_build,
                  "tokens_per_s": tokens / t_build},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
