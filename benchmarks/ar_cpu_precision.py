"""CPU training time of the default AR command in fp32 and in bf16 (bf16 matmuls run through
float32 kernels on CPUs without bf16 instructions, ``spikefm.families.ar.cpu_matmul``).

Runs ``spikefm train --model ar --data CORPUS --steps N --set train.precision=P --set
train.device=cpu`` for each precision, alternating them ``--repeats`` times so that background
load hits both alike, on a small ``spikefm synth`` corpus; records each run's wall-clock seconds
(the process, start to exit) and the seconds its summary line reports. Writes JSON:

    python benchmarks/ar_cpu_precision.py --work /tmp/prec --out benchmarks/results/ar_cpu_precision.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, synth_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the corpus and runs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = args.work
    synth_corpus(root, seed=args.seed, sessions=3, synth_args=("--duration-s", "60"))
    runs = []
    for r in range(args.repeats):
        for precision in ("fp32", "bf16"):
            out = root / f"run_{precision}_{r}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "spikefm.cli", "train", "--model", "ar", "--data",
                                   str(root / "corpus"), "--out", str(out), "--steps", str(args.steps),
                                   "--set", f"train.precision={precision}", "--set", "train.device=cpu",
                                   "--quiet"], capture_output=True, text=True, check=True,
                                  env={**os.environ})
            wall = time.perf_counter() - t0
            m = re.search(r"trained (\d+) steps \(([\d,]+) tokens, (\d+) s\)", proc.stdout)
            runs.append({"precision": precision, "repeat": r, "wall_s": round(wall, 2),
                         "tokens": int(m.group(2).replace(",", "")) if m else None,
                         "reported_s": int(m.group(3)) if m else None})
            print(json.dumps(runs[-1]))
    result = {"command": " ".join(sys.argv), "steps": args.steps, "runs": runs, "machine": machine_info(),
              "threads": os.environ.get("OMP_NUM_THREADS")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
