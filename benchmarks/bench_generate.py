"""Spike-token generation with a KV cache vs full recomputation of the context for every token.

Generates ``--num-tokens`` tokens (whole bins of ``--num-units + 1`` tokens) from the same seed
both ways, checks that the tokens are identical, and reports the speed-up. Writes
benchmarks/results/bench_generate.json.

    python benchmarks/bench_generate.py                       # CPU, preset tiny, 2,000 tokens
    python benchmarks/bench_generate.py --device cuda --dtype bf16 --preset 1b
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from spikefm.families.ar.model import LLAMA_PRESETS, Llama, generate, llama_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(LLAMA_PRESETS))
    parser.add_argument("--num-tokens", type=int, default=2000,
                        help="tokens to generate (rounded down to whole bins)")
    parser.add_argument("--num-units", type=int, default=99)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (0 = torch's default); 1 keeps CPU numbers "
                             "stable on a shared machine, where extra OpenMP threads oversubscribe")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_generate.json")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cfg = llama_preset(args.preset)
    num_bins = args.num_tokens // (args.num_units + 1)
    if num_bins < 1:
        raise SystemExit(f"--num-tokens {args.num_tokens} is shorter than one bin "
                         f"({args.num_units + 1} tokens)")
    torch.manual_seed(args.seed)
    model = Llama(cfg).to(device=device, dtype=dtype).eval()

    def run(use_kv_cache: bool, bins: int) -> tuple[torch.Tensor, float]:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = generate(model, args.num_units, bins, batch_size=args.batch_size,
                       generator=gen, use_kv_cache=use_kv_cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - t0

    run(True, 1)   # warm-up (allocator, kernels)
    run(False, 1)
    cached, cached_s = run(True, num_bins)
    full, full_s = run(False, num_bins)
    n = cached.shape[1]
    result = {
        "benchmark": "bench_generate",
        "machine": machine_info(device),
        "device": str(device),
        "dtype": args.dtype,
        "preset": args.preset,
        "config": dataclasses.asdict(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "num_units": args.num_units,
        "num_bins": num_bins,
        "generated_tokens_per_row": n,
        "seconds": {"kv_cache": cached_s, "full_recompute": full_s},
        "tokens_per_s": {"kv_cache": args.batch_size * n / cached_s,
                         "full_recompute": args.batch_size * n / full_s},
        "tokens_identical": bool(torch.equal(cached, full)),
        "speedup_kv_cache_over_full": full_s / cached_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps({k: result[k] for k in ("seconds", "tokens_per_s", "tokens_identical",
                                              "speedup_kv_cache_over_full")}, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
