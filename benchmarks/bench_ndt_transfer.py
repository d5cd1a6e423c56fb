"""Benchmark: does pretraining help a new session? Co-smoothing of the fine-tuned NDT vs the
single-session model, the NLB smoothing baseline and the oracle, over several synthetic datasets.

    python benchmarks/bench_ndt_transfer.py                   # the quickstart's sizes, seeds 1,2,3
    python benchmarks/bench_ndt_transfer.py --seeds 1 --pretrain-steps 2000

Each seed is a fresh synthetic dataset (12 sessions x 300 s, about one in twelve held out) run through
:func:`spikefm.quickstart.ndt_transfer` (pretrain -> frozen-core fine-tuning -> benchmark). The
options after ``--schemes`` are there to measure the choices behind the quickstart's defaults.
Writes benchmarks/results/ndt_transfer.json. About 5 minutes per seed on one CPU core.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info  # noqa: E402


def main():
    from spikefm.quickstart import NDT_SIZES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated synthetic-data seeds")
    ap.add_argument("--sessions", type=int, default=NDT_SIZES["sessions"])
    ap.add_argument("--duration-s", type=float, default=NDT_SIZES["duration_s"])
    ap.add_argument("--pretrain-steps", type=int, default=NDT_SIZES["pretrain_steps"])
    ap.add_argument("--finetune-steps", type=int, default=NDT_SIZES["finetune_steps"])
    ap.add_argument("--schemes", default="neuron")
    ap.add_argument("--neuron-ratio", type=float, default=0.1)
    ap.add_argument("--full-finetune", action="store_true", help="fine-tune the core too")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ndt_transfer.json"))
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")

    from spikefm.fileio import write_json_atomic
    from spikefm.quickstart import ndt_transfer

    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = ndt_transfer(Path(tmp), sessions=args.sessions, duration_s=args.duration_s,
                               pretrain_steps=args.pretrain_steps,
                               finetune_steps=args.finetune_steps, seed=seed,
                               schemes=args.schemes, neuron_ratio=args.neuron_ratio,
                               freeze_core=not args.full_finetune, tasks=("co-smoothing",))
        ft = res["fine-tuned"]["tasks"]["co-smoothing"]
        ss = res["single-session"]["tasks"]["co-smoothing"]
        row = {
            "seed": seed, "session_id": res["fine-tuned"]["session_id"],
            "num_units": res["fine-tuned"]["num_units"],
            "num_test_windows": res["fine-tuned"]["num_test_windows"],
            "bps_pooled": {"fine-tuned": ft["model"]["bps_pooled"],
                           "single-session": ss["model"]["bps_pooled"],
                           "smoothing": ft["smoothing"]["bps_pooled"],
                           "oracle": ft["oracle"]["bps_pooled"]},
            "fraction_of_oracle": {"fine-tuned": ft["fraction_of_oracle"]["bps_pooled"],
                                   "single-session": ss["fraction_of_oracle"]["bps_pooled"]},
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        b = row["bps_pooled"]
        row["fine-tuned_beats"] = {"smoothing": b["fine-tuned"] > b["smoothing"],
                                   "single-session": b["fine-tuned"] > b["single-session"]}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in b.items()), flush=True)
        runs.append(row)
    result = {
        "benchmark": "ndt_transfer",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
        "fine-tuned_beats_both_in": f"{sum(all(r['fine-tuned_beats'].values()) for r in runs)}"
                                    f"/{len(runs)}",
        "machine": machine_info(),
    }
    write_json_atomic(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
