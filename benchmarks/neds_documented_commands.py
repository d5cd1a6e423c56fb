"""The README's NEDS commands, run literally on a fresh synthetic dataset, one seed per process:

    spikefm synth NWB --sessions N --seed S          # every other synth option at its default
    spikefm corpus build NWB --out CORPUS            # the default session-level test split
    spikefm train --model neds --data CORPUS --out PRE
    spikefm finetune PRE --data CORPUS --session H --out FT [VARIANT ARGS]
    spikefm eval FT --data CORPUS [--split val]
    spikefm eval FT/candidates/scratch --data CORPUS [--split val]   # the single-session NEDS

H is the corpus's first test-split session. ``--variant NAME=ARGS`` (repeatable) fine-tunes the
same pretrained run once per variant with extra ``spikefm finetune`` arguments (folder ``ft_NAME``;
the default is one variant, ``documented``, with none), so fine-tuning settings can be compared on
one pretraining run. ``--synth-args`` passes extra ``spikefm synth`` options (e.g.
``--choice-signal 0.5``). Writes one JSON with, per seed and variant, the fine-tuning summary
(every candidate's validation loss, the single-session model's) and the scores of the fine-tuned
and single-session NEDS beside the linear, RRR and oracle baselines: encoding bps, choice and
block accuracy, each behaviour channel's single-trial R², and region classification from the
neuron embeddings beside firing statistics.

    python benchmarks/neds_documented_commands.py --seeds 2,3,4 --work DIR --out JSON
    python benchmarks/neds_documented_commands.py --seeds 5,7 --split val --variant documented= \\
        --variant ev50="--eval-every 50" --work DIR --out JSON

Seeds run in parallel processes, one thread each (``--workers``, default: one per seed).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_literal_options, machine_info, spikefm_cli as _cli, synth_corpus  # noqa: E402

from spikefm.fileio import write_json_atomic  # noqa: E402


def _scores(path: Path) -> dict:
    """The headline numbers of one ``spikefm eval`` JSON of a NEDS run, per model."""
    r = json.loads(path.read_text())["results"]
    out: dict = {"encoding_bps_pooled": {k: v["bps_pooled"] for k, v in r["encoding"].items()}, "decoding": {}}
    for model, d in r["decoding"].items():
        out["decoding"][model] = {
            name: ({"accuracy": s["accuracy"], "accuracy_ci95": s.get("accuracy_ci95"),
                    "balanced_accuracy": s["balanced_accuracy"], "chance": s["chance"], "n": s["n"]}
                   if "accuracy" in s else {"r2_single_trial": s["r2_single_trial"], "r2_psth": s["r2_psth"]})
            for name, s in d.items()}
    out["region_balanced_accuracy"] = {k: v["balanced_accuracy"] for k, v in r.get("region", {}).items()}
    if r.get("region"):
        out["region_balanced_chance"] = next(iter(r["region"].values()))["chance_balanced"]
    return out


def run_seed(seed: int, sessions: int, work: Path, split: str, variants: dict[str, list[str]],
             synth_args: list[str]) -> dict:
    t0 = time.time()
    root = work / f"seed_{seed}"
    corpus = synth_corpus(root, seed=seed, sessions=sessions, synth_args=synth_args)
    sid = corpus.session_ids("test")[0]
    if not (root / "pre" / "model.safetensors").is_file():
        _cli("train", "--model", "neds", "--data", "corpus", "--out", "pre", "--quiet", cwd=root)
    result = {"held_out_session": sid, "pretraining_sessions": corpus.session_ids("train"),
              "num_units": corpus.session(sid)["num_units"], "variants": {}}
    for name, extra in variants.items():
        ft_dir = f"ft_{name}"
        if not (root / ft_dir / "finetune.json").is_file():
            _cli("finetune", "pre", "--data", "corpus", "--session", sid, "--out", ft_dir, "--quiet", *extra,
                 cwd=root)
        ft = json.loads((root / ft_dir / "finetune.json").read_text())
        for who, run in (("fine-tuned", ft_dir), ("single-session", f"{ft_dir}/candidates/scratch")):
            out = root / f"{name}_{who}_{split}.json"
            if not out.is_file():
                _cli("eval", run, "--data", "corpus", "--split", split, "--out", out.name, "--quiet", cwd=root)
        result["variants"][name] = {
            "finetune_args": extra, "strategy": ft["strategy"],
            "best_step": {**{k: c["best_step"] for k, c in ft["candidates"].items()},
                          "single-session": ft["single_session"]["best_step"]},
            "val_loss": {**{k: c["best_val_loss"] for k, c in ft["candidates"].items()},
                         "single-session": ft["single_session"]["best_val_loss"]},
            "fine-tuned": _scores(root / f"{name}_fine-tuned_{split}.json"),
            "single-session": _scores(root / f"{name}_single-session_{split}.json"),
        }
    result["wall_s"] = round(time.time() - t0, 1)
    return result


def _variant(text: str) -> tuple[str, list[str]]:
    name, sep, args = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=ARGS (NAME a plain word), got {text!r}")
    return name, shlex.split(args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_literal_options(ap, seeds="2,3,4")
    ap.add_argument("--synth-args", default="", help="extra spikefm synth options, e.g. '--choice-signal 0.5'")
    ap.add_argument("--variant", type=_variant, action="append", default=None, metavar="NAME=ARGS",
                    help="fine-tune once per variant with these extra finetune arguments "
                         "(default: documented=, no extra arguments)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = dict(args.variant or [("documented", [])])
    synth_args = shlex.split(args.synth_args)
    with ThreadPoolExecutor(args.workers or len(seeds)) as pool:
        per_seed = dict(zip(seeds, pool.map(
            lambda s: run_seed(s, args.sessions, args.work, args.split, variants, synth_args), seeds)))
    out = {"what": "the README's NEDS commands, literally, on spikefm synth --sessions N --seed S",
           "command": "python benchmarks/neds_documented_commands.py " + shlex.join(sys.argv[1:]),
           "sessions": args.sessions, "synth_args": synth_args, "split": args.split,
           "per_seed": {str(k): v for k, v in per_seed.items()}, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    for s, r in per_seed.items():
        for name, v in r["variants"].items():
            f, g = v["fine-tuned"], v["single-session"]
            enc, dec = f["encoding_bps_pooled"], f["decoding"]
            ch = {m: dec[m].get("choice", {}).get("accuracy", float("nan")) for m in ("neds", "linear", "rrr")}
            wh = {m: dec[m].get("wheel_speed", {}).get("r2_single_trial", float("nan"))
                  for m in ("neds", "linear", "rrr")}
            reg = f["region_balanced_accuracy"]
            print(f"seed {s} {name} ({r['held_out_session']}, {v['strategy']}, best steps {v['best_step']}): "
                  f"encoding {enc['neds']:.3f} (single {g['encoding_bps_pooled']['neds']:.3f}, linear "
                  f"{enc['linear']:.3f}, rrr {enc['rrr']:.3f}); choice {ch['neds']:.3f} (linear {ch['linear']:.3f},"
                  f" rrr {ch['rrr']:.3f}); wheel R2 {wh['neds']:.3f} (linear {wh['linear']:.3f}, rrr {wh['rrr']:.3f});"
                  f" region {reg.get('embedding', float('nan')):.3f} vs firing stats "
                  f"{reg.get('firing_stats', float('nan')):.3f}")


if __name__ == "__main__":
    main()
