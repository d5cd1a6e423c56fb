"""Held-out sessions: the AR model's position layouts against the 1-gram, the 9-gram and the oracle.

A synthetic corpus of many sessions (several latent families, a spread of unit counts) is split by
SESSION, so every test token comes from a recording no model was trained on. For every training
seed and every position layout (``plain``, ``bin``; see spikefm/families/ar/positions.py) a model
is trained with the same recipe and scored on the held-out sessions beside the n-gram baselines
(fitted on the training sessions) and the ground-truth oracle, per token kind (all, counts,
separators). Training tokens/s of each layout come from its metrics.jsonl. Writes
benchmarks/results/bench_ar_transfer.json and prints a table.

    python benchmarks/bench_ar_transfer.py                       # defaults below (CPU, ~1 h)
    python benchmarks/bench_ar_transfer.py --sessions 24 --units 40,200 --steps 1000 --seeds 1,2,3

No setting here was tuned on the held-out sessions: the recipe (lr 3e-3, warm-up 20) is the one the
AR pipeline tests already used, and the same one serves every layout and seed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--families", type=int, default=4)
    ap.add_argument("--units", type=_ints, default=[40, 120], help="MIN,MAX units per session")
    ap.add_argument("--duration-s", type=float, default=30.0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="training seeds")
    ap.add_argument("--layouts", default="plain,bin")
    ap.add_argument("--permute", action="store_true",
                    help="also train each layout with unit-permutation augmentation")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-eval-tokens", type=int, default=60_000)
    ap.add_argument("--permutations", type=int, default=1,
                    help="also score each model with the held-out units in this many random orders")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="keep corpus and runs here")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_ar_transfer.json")
    args = ap.parse_args(argv)

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.families import get, train
    from spikefm.families.ar.family import ARDataConfig
    from spikefm.families.ar.xent import format_table
    from spikefm.fileio import write_json_atomic
    from spikefm.progress import progress_bar
    from spikefm.train.config import OptimConfig, RunConfig, TrainConfig

    torch.set_num_threads(args.threads)
    family = get("ar")
    variants = [(layout, False) for layout in args.layouts.split(",")]
    if args.permute:
        variants += [(layout, True) for layout in args.layouts.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        work = args.work or Path(tmp_name)
        corpus_dir = work / "corpus"
        if not (corpus_dir / "manifest.json").exists():
            synthesize(work / "nwb", num_sessions=args.sessions, seed=args.data_seed,
                       num_families=args.families, duration_s=args.duration_s,
                       units_range=tuple(args.units))
            build_corpus([str(work / "nwb")], corpus_dir,
                         BuildConfig(test_fraction=args.test_fraction, split="session",
                                     seed=args.data_seed), progress=False)
        corpus = Corpus(corpus_dir)
        t0 = time.perf_counter()
        baselines = family.evaluate_baselines(str(corpus_dir), ngram=(1, 9),
                                              max_tokens=args.max_eval_tokens)
        baseline_s = time.perf_counter() - t0
        runs = []
        with progress_bar(len(variants) * len(args.seeds), "train + eval") as bar:
            for seed in args.seeds:
                for layout, permute in variants:
                    name = f"{layout}{'+perm' if permute else ''}-seed{seed}"
                    model_cfg = family.preset(args.preset)
                    model_cfg = type(model_cfg)(**{**model_cfg.__dict__, "positions": layout})
                    data_kwargs = {"corpus": str(corpus_dir), "seq_len": args.seq_len}
                    if permute:
                        data_kwargs["permute_units"] = True
                    cfg = RunConfig(family="ar", model=model_cfg, data=ARDataConfig(**data_kwargs),
                                    optim=OptimConfig(lr=args.lr, warmup_steps=min(20, args.steps)),
                                    train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                                      seed=seed, log_every=25, ckpt_every=0,
                                                      precision="fp32", device="cpu"))
                    run_dir = work / "runs" / name
                    if not (run_dir / "model.safetensors").exists():
                        train(cfg, run_dir, progress=False)
                    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
                    tps = tps[1:] if len(tps) > 1 else tps  # the first interval holds start-up
                    res = family.evaluate(str(run_dir), str(corpus_dir), baselines=baselines,
                                          max_tokens=args.max_eval_tokens,
                                          permutations=args.permutations)
                    runs.append({"name": name, "layout": layout, "permute_units": permute,
                                 "seed": seed, "model": res["results"]["model"],
                                 "model_units_permuted": res["results"].get("model-permuted"),
                                 "final_train_loss": rows[-1].get("loss"),
                                 "train_tokens_per_s_median": statistics.median(tps) if tps else None})
                    bar.advance(1)

        summary = {}
        for layout, permute in variants:
            key = f"{layout}{'+perm' if permute else ''}"
            mine = [r for r in runs if r["layout"] == layout and r["permute_units"] == permute]
            summary[key] = {}
            for kind in ("all", "counts", "separators"):
                bits = [r["model"]["overall"][kind]["bits"] for r in mine]
                summary[key][kind] = {"mean": statistics.mean(bits),
                                      "sd": statistics.stdev(bits) if len(bits) > 1 else 0.0,
                                      "per_seed": bits}
            summary[key]["train_tokens_per_s"] = statistics.mean(
                r["train_tokens_per_s_median"] for r in mine)
            if args.permutations:
                summary[f"{key} (units permuted)"] = {}
                for kind in ("all", "counts", "separators"):
                    bits = [r["model_units_permuted"]["overall"][kind]["bits"] for r in mine]
                    summary[f"{key} (units permuted)"][kind] = {
                        "mean": statistics.mean(bits),
                        "sd": statistics.stdev(bits) if len(bits) > 1 else 0.0, "per_seed": bits}
        for name, res in baselines.items():
            summary[name] = {kind: {"mean": res["overall"][kind]["bits"], "sd": 0.0}
                             for kind in ("all", "counts", "separators")}
        result = {
            "benchmark": "bench_ar_transfer",
            "command": "python benchmarks/bench_ar_transfer.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": machine_info(torch.device("cpu")),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "corpus": {"train_sessions": len(corpus.session_ids("train")),
                       "test_sessions": len(corpus.session_ids("test")),
                       "train_tokens": corpus.num_tokens("train"),
                       "test_tokens": corpus.num_tokens("test")},
            "baseline_seconds": baseline_s,
            "baselines": baselines,
            "runs": runs,
            "summary_bits_per_token": summary,
        }
    write_json_atomic(args.out, result)
    columns = {k: {"overall": {kind: {"bits": v[kind]["mean"], "nats": None,
                                      "num_tokens": 0} for kind in ("all", "counts", "separators")}}
               for k, v in summary.items()}
    try:
        print(format_table(columns, title="held-out sessions, bits/token (model: mean over seeds "
                                          f"{','.join(map(str, args.seeds))})"))
    except Exception:  # noqa: BLE001 - the JSON is what matters
        print(json.dumps({k: {kind: v[kind]["mean"] for kind in ("all", "counts", "separators")}
                          for k, v in summary.items()}, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
