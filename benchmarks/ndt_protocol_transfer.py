"""The transfer study under a named protocol of published settings, over seeds, in one JSON and a
README table: fine-tuned vs single-session vs baselines (smoothing, chance, raw-count ridge) vs the
oracle on every task.

Each seed is one process running the documented command

    spikefm experiment transfer --protocol P --preset PRESET --seeds S --out WORK/seedS --quiet

(reused when ``WORK/seedS/transfer.json`` was written with the same protocol, preset and seed).
The JSON keeps each seed's headline metrics, their mean ± s.d. over the seeds and, per seed, the
protocol's settings as the runs recorded them: the fine-tuned run's ``config.json`` (window bins,
window start, split fractions, decoding block, blocks, dropout), the held-out session's windows per
split, and the block the choice decoder read in ``results_ndt.json``.

    python benchmarks/ndt_protocol_transfer.py --protocol jiang2025 --preset tiny --seeds 2,3,101 \\
        --work DIR --out benchmarks/results/ndt_protocol_jiang2025_tiny_seeds2_3_101.json

``--preset base`` is the published size (a GPU's work); ``tiny`` is the protocol at the CPU width.
``--protocol none`` runs the family's defaults (the command without ``--protocol``), for the same
table of the documented defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from spikefm.experiments.transfer import aggregate_seeds  # noqa: E402
from spikefm.fileio import write_json_atomic  # noqa: E402


def _command(protocol: str | None, preset: str, seed: int | str, out: Path) -> list[str]:
    flag = [] if protocol is None else ["--protocol", protocol]
    return ["experiment", "transfer", *flag, "--preset", preset, "--seeds", str(seed), "--out", str(out), "--quiet"]


def _done(out: Path, protocol: str | None, preset: str, seed: int) -> dict | None:
    """The seed's transfer.json if it was written with these settings, else None."""
    path = out / "transfer.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    s = summary.get("settings", {})
    if (s.get("protocol"), s.get("preset"), s.get("seeds")) != (protocol, preset, [seed]):
        raise SystemExit(f"{path} was written by another study ({s}); expected --protocol {protocol or 'none'} "
                         f"--preset {preset} --seeds {seed}; give another --work")
    return summary


def run_seed(protocol: str | None, preset: str, seed: int, work: Path) -> dict:
    out = work / f"seed{seed}"
    summary = _done(out, protocol, preset, seed)
    if summary is None:
        log = work / f"seed{seed}.log"
        work.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:  # the study's own output, kept for reading later
            done = subprocess.run([sys.executable, "-m", "spikefm.cli", *_command(protocol, preset, seed, out)],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"seed {seed}: spikefm experiment transfer failed (exit {done.returncode}); "
                             f"its output is in {log}")
        summary = _done(out, protocol, preset, seed)
    return summary


def recorded_protocol(seed_dir: Path, session_id: str) -> dict:
    """What the fine-tuned run recorded of the protocol's settings."""
    info = json.loads((seed_dir / "run_ndt_finetune" / "config.json").read_text())
    data, model = info["config"]["data"], info["config"]["model"]
    counts = info.get("family_info", {}).get("num_windows", {}).get(session_id, {})
    results = json.loads((seed_dir / "results_ndt.json").read_text())
    choice = results["fine-tuned"]["tasks"].get("choice-decoding", {})
    layer = choice.get("layer")  # 0-based; -1 = the last block
    block = None if layer is None else (model["n_layers"] if layer < 0 else layer + 1)
    finetune = json.loads((seed_dir / "run_ndt_finetune" / "finetune.json").read_text())
    return {"window_bins": data["window_bins"], "window_start_ms": -data["pre_ms"], "align": data["align"],
            "split_fractions": data["split_fractions"], "held_out_windows": counts,
            "decode_layer": data["decode_layer"],
            "choice_decoder_block": block, "finetune_strategy": finetune.get("strategy"),
            "soup_tried": "soup" in finetune,
            "intra_ratio": data["intra_ratio"], "label_classes": data["label_classes"],
            "drop_nogo": data["drop_nogo"], "n_layers": model["n_layers"], "dim": model["dim"],
            "dropout": model["dropout"], "max_bins": model["max_bins"]}


_BASELINES = ("smoothing", "chance", "raw-count ridge")
_ORACLES = ("oracle", "ideal observer")


def markdown(aggregate: dict, seeds: list[int]) -> str:
    """The README table: one row per metric, mean ± s.d. over the seeds."""
    def cell(v):
        if v is None:
            return "-"
        return f"{v['mean']:.3f} ± {v['sd']:.3f}" if v["n"] > 1 else f"{v['mean']:.3f} (1 seed)"

    lines = [f"| metric (mean ± s.d., seeds {', '.join(map(str, seeds))}) | fine-tuned | single-session "
             "| baseline | oracle |", "|---|---|---|---|---|"]
    for metric, cols in aggregate.items():
        base = "; ".join(f"{b} {cell(cols[b])}" for b in _BASELINES if cols.get(b)) or "-"
        orc = "; ".join(("" if o == "oracle" else f"{o} ") + cell(cols[o]) for o in _ORACLES if cols.get(o)) or "-"
        lines.append(f"| {metric} | {cell(cols.get('fine-tuned'))} | {cell(cols.get('single-session'))} "
                     f"| {base} | {orc} |")
        if "walk" in metric and cols.get("fine-tuned min chunk"):  # its lowest chunk, under the NLB null
            lines.append(f"| {metric}: lowest chunk | {cell(cols['fine-tuned min chunk'])} "
                         f"| {cell(cols.get('single-session min chunk'))} | - | - |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="jiang2025", help="a named protocol, or none: the defaults")
    ap.add_argument("--preset", default="tiny", help="model size (base: the published size)")
    ap.add_argument("--seeds", default="2,3,101", help="comma-separated synthetic seeds")
    ap.add_argument("--work", type=Path, required=True, help="folder for the per-seed studies (reused when present)")
    ap.add_argument("--workers", type=int, default=0, help="seeds at once (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    protocol = None if args.protocol.lower() == "none" else args.protocol
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds must name distinct seeds, e.g. 2,3,101; got {args.seeds!r}")
    with ThreadPoolExecutor(args.workers or len(seeds)) as pool:
        summaries = list(pool.map(lambda s: run_seed(protocol, args.preset, s, args.work), seeds))
    per_seed, recorded = {}, {}
    for seed, summary in zip(seeds, summaries):
        (key, row), = summary["per_seed"].items()
        per_seed[int(key)] = row
        recorded[seed] = recorded_protocol(args.work / f"seed{seed}" / f"seed_{seed}", row["session_id"])
    aggregate = aggregate_seeds(per_seed)
    table = markdown(aggregate, seeds)
    print(table)
    write_json_atomic(args.out, {
        "benchmark": "ndt_protocol_transfer", "protocol": protocol, "preset": args.preset, "seeds": seeds,
        "command_per_seed": "spikefm " + " ".join(_command(protocol, args.preset, "S", Path("WORK/seedS"))),
        "per_seed": per_seed, "mean_sd": aggregate, "recorded_protocol": recorded,
        "markdown_table": table, "machine": machine_info()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
