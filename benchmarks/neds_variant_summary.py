"""Mean ± s.d. over seeds of each fine-tuning variant's scores, from one or more JSON files of
``benchmarks/neds_documented_commands.py`` (seeds pooled across the files):

    python benchmarks/neds_variant_summary.py JSON [JSON ...]

Per variant and model (the fine-tuned NEDS and its single-session candidate): encoding bps_pooled,
choice accuracy and single-trial R² of each behaviour channel, over the seeds every variant has.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _scores(block: dict) -> dict[str, float]:
    out = {"encoding_bps": block["encoding_bps_pooled"]["neds"]}
    for name, s in block["decoding"]["neds"].items():
        out[name] = s["accuracy"] if "accuracy" in s else s["r2_single_trial"]
    return out


def summarize(paths: list[Path]) -> dict:
    """{variant: {model: {score: (mean, sd, n)}}, "seeds": [...]} over the seeds all variants share."""
    per_seed: dict[str, dict] = {}
    for path in paths:
        for seed, r in json.loads(path.read_text())["per_seed"].items():
            per_seed.setdefault(seed, {}).update(r["variants"])
    variants = sorted({v for r in per_seed.values() for v in r})
    seeds = sorted((s for s, r in per_seed.items() if all(v in r for v in variants)), key=int)
    out: dict = {"seeds": seeds}
    for v in variants:
        out[v] = {}
        for model in ("fine-tuned", "single-session"):
            rows = [_scores(per_seed[s][v][model]) for s in seeds]
            out[v][model] = {k: (statistics.mean(r[k] for r in rows),
                                 statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0, len(rows))
                             for k in rows[0]} if rows else {}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path)
    res = summarize(ap.parse_args().json)
    print(f"seeds {', '.join(res.pop('seeds'))}")
    for v, models in res.items():
        for model, scores in models.items():
            print(f"{v:12s} {model:15s} " + "; ".join(f"{k} {m:.3f} ± {sd:.3f}" for k, (m, sd, _) in scores.items()))


if __name__ == "__main__":
    main()
