"""Which causal masking mode trains forward prediction best? Chosen on VALIDATION windows only.

For each data seed: one synthetic ``ibl`` session, the NDT family's defaults (``neuron,causal``
schemes) but ``data.causal_mode`` in {random, prefix, mixed}; every run is scored on its own
validation windows (``spikefm eval --split val``): the forward-prediction walk's per-chunk
bits/spike (and its minimum over chunks) and co-smoothing. Writes
``benchmarks/results/ndt_causal_modes.json`` and prints a table.

    nice python benchmarks/ndt_causal_modes.py --seeds 1,4 --steps 2000 --duration-s 1800
    python benchmarks/ndt_causal_modes.py --seeds 1,4 --modes model.position=learned,model.position=rotary --out X.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spikefm import families
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.synth import synthesize
from spikefm.fileio import write_json_atomic
from spikefm.tables import render_table

MODES = ("random", "prefix", "mixed")


def _mode_overrides(mode: str) -> list[str]:
    """A causal mode name, or a variant spelled as ``KEY=VALUE[+KEY=VALUE...]`` (bare keys are
    ``data.`` keys; ``model.`` / ``train.`` / ``optim.`` keys as given)."""
    if "=" not in mode:
        return [f"data.causal_mode={mode}"]
    return [kv if kv.split(".")[0] in ("model", "train", "optim") else f"data.{kv}" for kv in mode.split("+")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,4", help="synthetic data seeds (tuning seeds: not the headline ones)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma-separated causal modes, or variants as KEY=VALUE[+KEY=VALUE] "
                         "(e.g. model.position=learned,model.position=rotary)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--duration-s", type=float, default=1800.0)
    ap.add_argument("--work", default="/tmp/ndt_causal_modes")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ndt_causal_modes.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work)
    rows, runs = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        nwb = work / f"seed{seed}" / "nwb"
        corpus = work / f"seed{seed}" / "corpus"
        if not (corpus / "manifest.json").exists():
            synthesize(nwb, num_sessions=1, seed=seed, duration_s=args.duration_s)
            build_corpus([str(nwb)], corpus, BuildConfig(test_fraction=0.0), progress=False)
        for mode in args.modes.split(","):
            run = work / f"seed{seed}" / f"run_{mode}"
            t0 = time.perf_counter()
            if not (run / "model.safetensors").exists():
                cfg = families.run_config("ndt", preset="tiny", corpus=str(corpus),
                                          overrides=[*_mode_overrides(mode), f"train.steps={args.steps}",
                                                     f"train.eval_every={max(args.steps // 4, 1)}"])
                families.train(cfg, run, progress=False)
            res = families.evaluate(run, corpus, tasks=["co-smoothing", "forward-prediction-walk"], split="val")
            tasks = res["results"]["tasks"]
            walk = tasks["forward-prediction-walk"]
            chunks = [c["model"]["bps_pooled"] for c in walk["chunks"]]
            entry = {"seed": seed, "mode": mode, "steps": args.steps, "duration_s": args.duration_s,
                     "cosmoothing_bps": tasks["co-smoothing"]["model"]["bps_pooled"],
                     "walk_bps": walk["model"]["bps_pooled"], "walk_chunks_bps": chunks,
                     "walk_min_chunk_bps": min(chunks), "walk_oracle_bps": walk.get("oracle", {}).get("bps_pooled"),
                     "num_val_windows": res["results"]["num_test_windows"],
                     "seconds": time.perf_counter() - t0}
            runs.append(entry)
            rows.append([seed, mode, entry["cosmoothing_bps"], entry["walk_bps"], entry["walk_min_chunk_bps"],
                         entry["walk_oracle_bps"]])
            print(render_table(["seed", "mode", "co-smooth bps", "walk bps", "walk min chunk", "walk oracle"],
                               rows), flush=True)
    summary = {}
    for mode in args.modes.split(","):
        sel = [r for r in runs if r["mode"] == mode]
        summary[mode] = {k: [float(np.mean([r[k] for r in sel])), float(np.std([r[k] for r in sel], ddof=1))
                             if len(sel) > 1 else 0.0]
                         for k in ("cosmoothing_bps", "walk_bps", "walk_min_chunk_bps")}
    out = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "split": "val",
           "runs": runs, "mean_sd": summary}
    write_json_atomic(args.out, out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
