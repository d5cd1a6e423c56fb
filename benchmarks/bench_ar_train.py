"""Training throughput: spikefm's Llama vs transformers' LlamaForCausalLM, same shapes and weights.

Each step is forward + next-token cross-entropy + backward + AdamW on one fixed batch of random
spike tokens. Both models start from the same weights (ours copied into the HF key layout), so the
first-step losses must agree; both use the same optimizer, the one both trainers use by default
(fused AdamW, weight decay on matrices only: spikefm's ``build_optimizer`` and ``transformers``'
Trainer with torch >= 2.8); steps of the models are interleaved so that background load on the
machine hits them alike, and tokens/s come from the median step time. spikefm's CPU matmul kernels
(:mod:`spikefm.families.ar.cpu_matmul`) are chosen by ``--cpu-gemm`` / ``--cpu-bf16`` (default
``auto``) and recorded; ``--torch-kernels-too`` adds a third contender in the same run, spikefm on
torch's own kernels (``gemm="torch"``, ``bf16="native"``), to show what the kernel choice gives. The process CPU time
of each step is recorded too: on a machine shared with other jobs, wall-clock time mostly measures
the neighbours, while CPU seconds per step (with --threads 1) measure the work each model does;
both ratios are reported. Writes benchmarks/results/bench_ar_train.json.

    python benchmarks/bench_ar_train.py                                  # CPU, preset small
    python benchmarks/bench_ar_train.py --dtype bf16 --warmup 1 --steps 3 \
        --out benchmarks/results/bench_ar_train_bf16.json
    python benchmarks/bench_ar_train.py --device cuda --dtype bf16 --preset 125m \
        --batch-size 16 --seq-len 2048
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spikefm.families.ar import cpu_matmul
from spikefm.families.ar.hf import to_hf_config, to_hf_key
from spikefm.families.ar.model import LLAMA_PRESETS, Llama, llama_preset
from spikefm.train.config import OptimConfig
from spikefm.train.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=list(LLAMA_PRESETS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (0 = torch's default); 1 keeps CPU numbers "
                             "stable on a shared machine, where extra OpenMP threads oversubscribe")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="bf16 = autocast mixed precision (float32 master weights)")
    parser.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each spikefm block (as train.compile does) and the "
                             "transformers decoder layers alike")
    parser.add_argument("--cpu-gemm", default="auto", choices=cpu_matmul.GEMM_MODES,
                        help="GEMM library of spikefm's float32 CPU matmuls")
    parser.add_argument("--cpu-bf16", default="auto", choices=cpu_matmul.BF16_MODES,
                        help="how spikefm's bf16 autocast matmuls run on the CPU")
    parser.add_argument("--torch-kernels-too", action="store_true",
                        help="also time spikefm on torch's own kernels (gemm=torch, bf16=native)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_ar_train.json")
    args = parser.parse_args(argv)

    try:
        import transformers
    except ImportError as err:
        raise SystemExit("transformers is needed: pip install 'spikefm[dev]'") from err

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cpu_matmul.set_cpu_matmul(gemm=args.cpu_gemm, bf16=args.cpu_bf16)
    device = torch.device(args.device)
    cfg = llama_preset(args.preset)
    if args.seq_len > cfg.max_seq_len:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len "
                         f"{cfg.max_seq_len}")
    torch.manual_seed(args.seed)
    ours = Llama(cfg).to(device)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in to_hf_config(cfg).items()
                                         if k not in ("architectures", "torch_dtype", "dtype",
                                                      "model_type")},
                                      attn_implementation=args.hf_attn)
    theirs = transformers.LlamaForCausalLM(hf_cfg).to(device)
    theirs.load_state_dict({to_hf_key(k): v for k, v in ours.state_dict().items()}, strict=True)

    if args.compile:
        for block in ours.layers:
            block.compile()
        for layer in theirs.model.layers:
            layer.compile()

    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen)
    tokens = tokens.to(device)
    inputs_BL, targets_BL = tokens[:, :-1], tokens[:, 1:]
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    optim_cfg = OptimConfig(lr=1e-4, weight_decay=0.1)

    def make_step(model, get_logits, kernels=None):
        opt = build_optimizer(model, optim_cfg)

        def step() -> float:
            saved = cpu_matmul.cpu_matmul_choice()
            if kernels:
                cpu_matmul.set_cpu_matmul(**kernels)
            try:
                with torch.autocast(device.type, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    logits_BLV = get_logits(model, inputs_BL)
                    loss = F.cross_entropy(logits_BLV.float().reshape(-1, cfg.vocab_size),
                                           targets_BL.reshape(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.item()  # also synchronizes
            finally:
                cpu_matmul.set_cpu_matmul(gemm=saved["gemm_setting"], bf16=saved["bf16_setting"])
        return step

    steps = {"spikefm": make_step(ours, lambda m, x: m(x))}
    if args.torch_kernels_too:
        twin = Llama(cfg).to(device)
        twin.load_state_dict(ours.state_dict())
        if args.compile:
            for block in twin.layers:
                block.compile()
        steps["spikefm_torch_kernels"] = make_step(twin, lambda m, x: m(x),
                                                   {"gemm": "torch", "bf16": "native"})
    steps["transformers"] = make_step(theirs,
                                      lambda m, x: m(input_ids=x, use_cache=False).logits)
    first_loss = {}
    for i in range(args.warmup):
        for name, step in steps.items():
            loss = step()
            if i == 0:
                first_loss[name] = loss
    step_seconds = {name: [] for name in steps}
    step_cpu_seconds = {name: [] for name in steps}
    order = list(steps)
    for i in range(args.steps):
        for name in (order if i % 2 == 0 else order[::-1]):  # alternate who goes first
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            _sync(device)
            step_seconds[name].append(time.perf_counter() - t0)
            step_cpu_seconds[name].append(time.process_time() - c0)

    tokens_per_step = args.batch_size * args.seq_len
    # Median step time: robust to bursts of load from other processes on a shared machine.
    tps = {name: tokens_per_step / statistics.median(s) for name, s in step_seconds.items()}
    tps_cpu = {name: tokens_per_step / statistics.median(s) for name, s in step_cpu_seconds.items()}
    flops = ours.flops_per_token(args.seq_len)
    result = {
        "benchmark": "bench_ar_train",
        "command": "python benchmarks/bench_ar_train.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(device),
        "transformers": transformers.__version__,
        "device": str(device),
        "dtype": args.dtype,
        "hf_attn_implementation": args.hf_attn,
        "preset": args.preset,
        "config": dataclasses.asdict(cfg),
        "n_params": sum(p.numel() for p in ours.parameters()),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "first_step_loss": first_loss,
        "compile": args.compile,
        "optimizer": "AdamW fused (spikefm.train.optim.build_optimizer), lr 1e-4, "
                     "weight decay 0.1 on matrices",
        "cpu_matmul": cpu_matmul.cpu_matmul_choice(),
        "threads": torch.get_num_threads(),
        "step_seconds": step_seconds,
        "step_cpu_seconds": step_cpu_seconds,
        "tokens_per_s": tps,
        "tokens_per_cpu_s": tps_cpu,
        "achieved_tflops": {name: v * flops / 1e12 for name, v in tps.items()},
        "flops_per_token": flops,
        "ratio_spikefm_over_transformers": tps["spikefm"] / tps["transformers"],
        "cpu_time_ratio_spikefm_over_transformers": tps_cpu["spikefm"] / tps_cpu["transformers"],
    }
    if args.torch_kernels_too:
        result["ratio_spikefm_torch_kernels_over_transformers"] = (
            tps["spikefm_torch_kernels"] / tps["transformers"])
        result["cpu_time_ratio_spikefm_torch_kernels_over_transformers"] = (
            tps_cpu["spikefm_torch_kernels"] / tps_cpu["transformers"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps({k: v for k, v in result.items()
                      if k in ("tokens_per_s", "tokens_per_cpu_s", "first_step_loss", "cpu_matmul")
                      or k.startswith(("ratio_", "cpu_time_ratio_"))}, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
