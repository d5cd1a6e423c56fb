"""The README's NDT commands, run literally on a fresh synthetic dataset, one seed per process:

    spikefm synth NWB --sessions N --seed S          # every other synth option at its default
    spikefm corpus build NWB --out CORPUS            # the default session-level test split
    spikefm train --model ndt --data CORPUS --out PRE
    spikefm finetune PRE --data CORPUS --session H --out FT
    spikefm eval FT --data CORPUS [--split val]
    spikefm eval FT/candidates/scratch --data CORPUS [--split val]   # the single-session model

H is the corpus's first test-split session. ``--held-out ID`` instead builds the corpus with no test
split and pretrains on every session but ID (``--set data.sessions=...``), so runs with different
``--sessions`` can share one held-out session and its windows (synthetic session ``i`` depends
only on the seed, preset, length, units and ``i``): a controlled comparison of how many
pretraining sessions it takes. Writes one JSON with the fine-tuning summary (every candidate's
validation loss, the single-session model's, the pretraining gain) and, for the fine-tuned and
single-session models, co-smoothing (beside smoothing and the oracle) and the forward-prediction
walk with each chunk's bps under the NLB null and a train-fitted null.

    python benchmarks/ndt_documented_commands.py --seeds 2,3,101 --work DIR --out JSON [--split val]
    python benchmarks/ndt_documented_commands.py --seeds 7 --sessions 4 --work DIR --out JSON --split val
    python benchmarks/ndt_documented_commands.py --seeds 2,3,101 --work DIR --out JSON --no-soup   # tables before 2026-12-06

Seeds run in parallel processes, one thread each (``--workers``, default: one per seed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_literal_options, add_soup_option, machine_info, soup_flags, spikefm_cli as _cli, synth_corpus  # noqa: E402

from spikefm.fileio import write_json_atomic  # noqa: E402


def _scores(path: Path) -> dict:
    t = json.loads(path.read_text())["results"]["tasks"]
    cs, walk = t["co-smoothing"], t["forward-prediction-walk"]
    chunks = walk["chunks"]
    return {
        "co_smoothing": cs["model"]["bps_pooled"],
        "co_smoothing_ci95": cs["model_ci95"]["bps_pooled"],
        "smoothing": cs["smoothing"]["bps_pooled"],
        "oracle": cs["oracle"]["bps_pooled"],
        "fraction_of_oracle": cs["fraction_of_oracle"]["bps_pooled"],
        "walk": walk["model"]["bps_pooled"],
        "walk_chunks": {f"{c['start_bin']}-{c['end_bin'] - 1}": {
            "bps_pooled": c["model"]["bps_pooled"], "ci95": c["model_ci95"]["bps_pooled"],
            "train_fitted_null": c["model_vs_train_null"]["bps_pooled"]} for c in chunks},
        "walk_min_chunk": min(c["model"]["bps_pooled"] for c in chunks),
        "walk_min_chunk_train_fitted_null": min(c["model_vs_train_null"]["bps_pooled"] for c in chunks),
    }


def run_seed(seed: int, sessions: int, work: Path, split: str, held_out: str | None,
             finetune_opts: tuple[str, ...] = ()) -> dict:
    t0 = time.time()
    root = work / f"seed_{seed}"
    corpus = synth_corpus(root, seed=seed, sessions=sessions,
                          build_args=["--test-fraction", "0"] if held_out else [])
    train_opts: list[str] = []
    if held_out:
        if held_out not in corpus.session_ids():
            raise SystemExit(f"--held-out {held_out} is not a session of {root / 'corpus'}; "
                             f"sessions: {', '.join(corpus.session_ids())}")
        pre_ids = [s for s in corpus.session_ids() if s != held_out]
        train_opts = ["--set", "data.sessions=" + ",".join(pre_ids)]
        sid = held_out
    else:
        pre_ids, sid = corpus.session_ids("train"), corpus.session_ids("test")[0]
    if not (root / "pre" / "model.safetensors").is_file():
        _cli("train", "--model", "ndt", "--data", "corpus", "--out", "pre", "--quiet", *train_opts, cwd=root)
    if not (root / "ft" / "finetune.json").is_file():
        _cli("finetune", "pre", "--data", "corpus", "--session", sid, "--out", "ft", "--quiet", *finetune_opts,
             cwd=root)
    ft = json.loads((root / "ft" / "finetune.json").read_text())
    tasks = ["--tasks", "co-smoothing,forward-prediction-walk"]
    for name, run in (("fine-tuned", "ft"), ("single-session", "ft/candidates/scratch")):
        _cli("eval", run, "--data", "corpus", "--split", split, "--out", f"{name}_{split}.json", "--quiet",
             *tasks, cwd=root)
    return {
        "held_out_session": sid, "pretraining_sessions": pre_ids,
        "num_units": corpus.session(sid)["num_units"],
        "strategy": ft["strategy"],
        "val_loss": {**{k: c["best_val_loss"] for k, c in ft["candidates"].items()},
                     "single-session": ft["single_session"]["best_val_loss"]},
        "val_pretraining_gain": ft["pretraining_gain"],
        "soup": ft.get("soup"),
        "fine-tuned": _scores(root / f"fine-tuned_{split}.json"),
        "single-session": _scores(root / f"single-session_{split}.json"),
        "wall_s": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_literal_options(ap, seeds="2,3,101")
    ap.add_argument("--held-out", default=None, metavar="SESSION_ID",
                    help="hold out this session (no corpus test split; pretraining on all the others)")
    add_soup_option(ap)
    args = ap.parse_args()
    finetune_opts = tuple(soup_flags(args.soup))
    seeds = [int(s) for s in args.seeds.split(",")]
    with ThreadPoolExecutor(args.workers or len(seeds)) as pool:
        per_seed = dict(zip(seeds, pool.map(
            lambda s: run_seed(s, args.sessions, args.work / f"sessions_{args.sessions}", args.split,
                               args.held_out, finetune_opts), seeds)))
    out = {"what": "the README's NDT commands, literally, on spikefm synth --sessions N --seed S",
           "command": "python benchmarks/ndt_documented_commands.py " + " ".join(sys.argv[1:]),
           "sessions": args.sessions, "held_out": args.held_out, "split": args.split,
           "finetune_options": list(finetune_opts),
           "per_seed": {str(k): v for k, v in per_seed.items()}, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    for s, r in per_seed.items():
        f, g = r["fine-tuned"], r["single-session"]
        print(f"seed {s} ({r['held_out_session']}, {r['strategy']}): co-smoothing {f['co_smoothing']:.3f} vs "
              f"single-session {g['co_smoothing']:.3f}, smoothing {f['smoothing']:.3f}, oracle {f['oracle']:.3f}; "
              f"walk {f['walk']:.3f}, lowest chunk {f['walk_min_chunk']:.3f}")


if __name__ == "__main__":
    main()
