"""The masked NDT's documented recipe on real spike trains: pretrain on pieces of one recording,
fine-tune to a held-out piece, against the single-session model and smoothing.

spikefm has one real recording here (``../shared/data/real/``, DANDI 000207, 35 human MTL units,
47 min). As ``ar_real_pseudo_sessions.py`` does for the AR model, this cuts it into ``--pieces``
disjoint stretches of time, each with a different random subset of the units (its own unit count,
order and firing statistics; ``write_pieces`` of that script), writes each as an NWB file and runs
the README's NDT commands on them unchanged, with continuous windows (the pieces have no trials):

    spikefm corpus build NWB --out CORPUS --test-fraction 0
    spikefm train --model ndt --data CORPUS --out PRE --set data.sessions=<every piece but one>
    spikefm finetune PRE --data CORPUS --session HELD_OUT --out FT          # auto; scratch beside it
    spikefm eval FT --data CORPUS --out FT.json
    spikefm eval FT/candidates/scratch --data CORPUS --out SCRATCH.json

It checks the recipe on real firing statistics (sparse, irregular human units), not transfer to a
new animal: the held-out piece's units also fire in the pretraining pieces, at other times and in
other subsets and orders.

    python benchmarks/ndt_real_pseudo_sessions.py --work /tmp/ndt_real --seed 0 --out benchmarks/results/ndt_real_pseudo_sessions_seed0.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_soup_option, machine_info, soup_flags  # noqa: E402
from ar_real_pseudo_sessions import _spikefm, parse_piece_arguments, piece_arguments, write_pieces  # noqa: E402


def _scores(path: Path) -> dict:
    """Per prediction task: bps_pooled with its 95 % interval, the smoothing baseline and the
    difference where scored, and the walk's chunks (bps_pooled, interval, train-fitted null)."""
    res = json.loads(path.read_text())["results"]
    out = {}
    for task, entry in res.get("tasks", {}).items():
        if "bps_pooled" not in entry.get("model", {}):
            continue
        row = {"bps_pooled": entry["model"]["bps_pooled"], "ci95": entry.get("model_ci95", {}).get("bps_pooled")}
        if "smoothing" in entry:
            row["smoothing"] = entry["smoothing"]["bps_pooled"]
        if "model_minus_smoothing" in entry:
            row["minus_smoothing"] = entry["model_minus_smoothing"]["bps_pooled"]
        if entry.get("chunks"):
            row["chunks"] = [{"bins": [c["start_bin"], c["end_bin"] - 1], "bps_pooled": c["model"]["bps_pooled"],
                              "ci95": c.get("model_ci95", {}).get("bps_pooled"),
                              "train_fitted_null": c.get("model_vs_train_null", {}).get("bps_pooled")}
                             for c in entry["chunks"]]
        out[task] = row
    out["skipped"] = res.get("skipped", {})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    piece_arguments(ap)
    ap.add_argument("--held-out", type=int, default=-1, help="index of the held-out piece (default: the last)")
    add_soup_option(ap)
    args = ap.parse_args()
    soup_opt = soup_flags(args.soup)
    lo, hi = parse_piece_arguments(args)
    from spikefm.corpus.reader import Corpus

    t0 = time.perf_counter()
    w, cli = args.work, _spikefm()
    built = (w / "corpus" / "manifest.json").exists()
    pieces = write_pieces(args.nwb, w / "nwb", args.pieces, (lo, hi), args.seed, write=not built)
    if not built:
        subprocess.run([*cli, "corpus", "build", str(w / "nwb"), "--out", str(w / "corpus"), "--test-fraction", "0"],
                       check=True)
    sessions = Corpus(w / "corpus").session_ids()
    held = sessions[args.held_out]
    pre = [s for s in sessions if s != held]
    if not (w / "pre" / "model.safetensors").exists():
        subprocess.run([*cli, "train", "--model", "ndt", "--data", str(w / "corpus"), "--out", str(w / "pre"),
                        "--set", "data.sessions=" + ",".join(pre)], check=True)
    if not (w / "ft" / "finetune.json").exists():
        subprocess.run([*cli, "finetune", str(w / "pre"), "--data", str(w / "corpus"), "--session", held,
                        "--out", str(w / "ft"), *soup_opt], check=True)
    for name, run in (("ft", w / "ft"), ("scratch", w / "ft" / "candidates" / "scratch")):
        subprocess.run([*cli, "eval", str(run), "--data", str(w / "corpus"), "--out", str(w / f"eval_{name}.json")],
                       check=True)
    ft = json.loads((w / "ft" / "finetune.json").read_text())
    res = {"command": "python benchmarks/ndt_real_pseudo_sessions.py " + " ".join(sys.argv[1:]),
           "source": args.nwb.name, "pieces": pieces, "seed": args.seed, "held_out_session": held,
           "pretraining_sessions": pre, "strategy": ft.get("strategy"), "finetune_options": soup_opt,
           "soup": ft.get("soup"),
           "fine_tuned": _scores(w / "eval_ft.json"), "single_session": _scores(w / "eval_scratch.json"),
           "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    for name in ("fine_tuned", "single_session"):
        co = res[name].get("co-smoothing", {})
        print(f"{name}: co-smoothing {co.get('bps_pooled', float('nan')):.4f}"
              + (f" (smoothing {co['smoothing']:.4f})" if "smoothing" in co else ""))
    if args.out:
        from spikefm.fileio import write_json_atomic

        write_json_atomic(args.out, res)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
