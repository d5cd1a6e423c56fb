"""Held-out sessions: the AR model's position layouts against the 1-gram, the 9-gram and the oracle.

A synthetic corpus of many sessions (several latent families, a spread of unit counts) is split by
SESSION, so every test token comes from a recording no model was trained on. For every training
seed and every variant (position layout ``plain`` or ``bin``, see spikefm/families/ar/positions.py;
``+prefix``: a unit-count prefix, ``model.unit_count_prefix``; ``+perm``: unit-permutation
augmentation) a model is trained with the same recipe and scored on the held-out sessions beside
the n-gram baselines (fitted on the training sessions) and the ground-truth oracle, per token kind
(all, counts, separators). Training tokens/s of each variant come from its metrics.jsonl (wall
clock, so they follow the machine's load) and, comparably, from training steps of all variants
interleaved on one batch and timed in process CPU seconds (``--speed-steps``). Writes
benchmarks/results/bench_ar_transfer.json and prints a table. Runs already in ``--work`` are
scored again, not retrained.

    python benchmarks/bench_ar_transfer.py                       # defaults below (CPU, hours)
    python benchmarks/bench_ar_transfer.py --variants plain,bin+prefix --steps 1000 --seeds 4,5,6

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


def _variants(text: str) -> list[str]:
    out = [v.strip() for v in text.split(",") if v.strip()]
    for v in out:
        layout, *flags = v.split("+")
        if layout not in ("plain", "bin") or any(f not in ("prefix", "perm") for f in flags) \
                or len(set(flags)) != len(flags):
            raise argparse.ArgumentTypeError(
                f"variant {v!r}: expected LAYOUT[+prefix][+perm] with LAYOUT plain or bin")
    return out


def _cpu_throughput(family, corpus_dir: Path, variants: list[str], args) -> dict[str, float]:
    """Training tokens per process-CPU second of each variant: forward, loss, backward and AdamW on
    one fixed batch, the variants' steps interleaved so that background load hits all alike."""
    import torch.nn.functional as F

    from spikefm.families.ar.loader import ARTokenLoader
    from spikefm.families.ar.model import Llama

    x, y, prefix = next(ARTokenLoader(corpus_dir, seq_len=args.seq_len, batch_size=args.batch_size,
                                      seed=0, unit_count_prefix=True))
    x, y = x.long(), y.long()
    models, times = {}, {v: [] for v in variants}
    for v in variants:
        layout, *flags = v.split("+")
        cfg = family.preset(args.preset)
        torch.manual_seed(0)
        model = Llama(type(cfg)(**{**cfg.__dict__, "positions": layout,
                                   "unit_count_prefix": "prefix" in flags}))
        models[v] = (model, torch.optim.AdamW(model.parameters(), lr=args.lr), "prefix" in flags)
    for step in range(2 + args.speed_steps):  # two untimed steps each
        for v, (model, opt, with_prefix) in models.items():
            t0 = time.process_time()
            logits = model(x, prefix_B2=prefix) if with_prefix else model(x)
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= 2:
                times[v].append(time.process_time() - t0)
    return {v: x.numel() / statistics.median(t) for v, t in times.items()}


_RECIPE = ("sessions", "families", "units", "duration_s", "test_fraction", "data_seed", "preset",
           "steps", "batch_size", "seq_len", "lr", "max_eval_tokens")


def _earlier_runs(args, baselines: dict, have: set) -> list[dict]:
    """Runs of ``args.merge`` (an earlier result) whose (variant, seed) was not run now; refuses a
    result of another corpus or recipe (settings, or n-gram scores that differ)."""
    earlier = json.loads(args.merge.read_text())
    differ = [k for k in _RECIPE if earlier["settings"].get(k) != vars(args)[k]]
    if differ or earlier["baselines"] != baselines:
        what = ", ".join(differ) or "its n-gram scores differ, so another corpus"
        raise ValueError(f"{args.merge} was run with other settings ({what}); merge only results "
                         "of the same corpus and recipe")
    out = []
    for r in earlier["runs"]:
        variant = r.get("variant") or r["name"].rsplit("-seed", 1)[0]
        if (variant, r["seed"]) not in have:
            out.append({**r, "variant": variant, "unit_count_prefix": "+prefix" in variant,
                        "from": {"file": str(args.merge), "command": earlier["command"]}})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--families", type=int, default=4)
    ap.add_argument("--units", type=_ints, default=[40, 120], help="MIN,MAX units per session")
    ap.add_argument("--duration-s", type=float, default=30.0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="training seeds")
    ap.add_argument("--variants", type=_variants, default="plain,bin,plain+prefix,bin+prefix",
                    help="comma-separated LAYOUT[+prefix][+perm], LAYOUT plain or bin")
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
    ap.add_argument("--speed-steps", type=int, default=5,
                    help="timed training steps per variant for the CPU-time throughput (0: skip)")
    ap.add_argument("--merge", type=Path, default=None, metavar="JSON",
                    help="also report the runs of an earlier result of this benchmark with the "
                         "same corpus and recipe (variants and seeds not run now), marked as such")
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
    variants = args.variants if isinstance(args.variants, list) else _variants(args.variants)
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
                for variant in variants:
                    layout, *flags = variant.split("+")
                    permute, prefix = "perm" in flags, "prefix" in flags
                    name = f"{variant}-seed{seed}"
                    model_cfg = family.preset(args.preset)
                    model_cfg = type(model_cfg)(**{**model_cfg.__dict__, "positions": layout,
                                                   "unit_count_prefix": prefix})
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
                    runs.append({"name": name, "variant": variant, "layout": layout,
                                 "unit_count_prefix": prefix, "permute_units": permute,
                                 "seed": seed, "model": res["results"]["model"],
                                 "model_units_permuted": res["results"].get("model-permuted"),
                                 "final_train_loss": rows[-1].get("loss"),
                                 "train_tokens_per_s_median": statistics.median(tps) if tps else None})
                    bar.advance(1)

        if args.merge:
            earlier = _earlier_runs(args, baselines, {(r["variant"], r["seed"]) for r in runs})
            runs += earlier
            variants += [v for v in dict.fromkeys(r["variant"] for r in earlier) if v not in variants]
        cpu_tps = (_cpu_throughput(family, corpus_dir, variants, args) if args.speed_steps > 0
                   else {})
        summary = {}
        for key in variants:
            mine = [r for r in runs if r["variant"] == key]
            summary[key] = {}
            for kind in ("all", "counts", "separators"):
                bits = [r["model"]["overall"][kind]["bits"] for r in mine]
                summary[key][kind] = {"mean": statistics.mean(bits),
                                      "sd": statistics.stdev(bits) if len(bits) > 1 else 0.0,
                                      "per_seed": bits}
            summary[key]["train_tokens_per_s"] = statistics.mean(
                r["train_tokens_per_s_median"] for r in mine)
            if key in cpu_tps:
                summary[key]["train_tokens_per_cpu_s"] = cpu_tps[key]
            if all(r["model_units_permuted"] for r in mine):
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
                                          f"{','.join(map(str, sorted({r['seed'] for r in runs})))})"))
    except Exception:  # noqa: BLE001 - the JSON is what matters
        print(json.dumps({k: {kind: v[kind]["mean"] for kind in ("all", "counts", "separators")}
                          for k, v in summary.items()}, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
