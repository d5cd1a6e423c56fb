"""Benchmark: vectorized exact n-gram counting (NGramModel) vs a plain-Python dict counter.

Synthetic corpus: Poisson spike counts of ``--num-units`` units with gamma-distributed rates in
20 ms bins, tokenized with :func:`spikefm.families.ar.tokens.tokenize` into rows of ``--row-bins`` bins.
NGramModel fits the whole corpus (``--num-tokens``); the dict counters, being ~100x slower, count a
leading slice of ``--dict-tokens`` tokens, and every method is compared by throughput (tokens/s)
so the ratio is fair. Two dict counters are timed, both counting (context, next) pairs and
contexts with the same row padding as NGramModel:

* ``dict_loop``: one Python step per token, ``Counter`` over tuples (the Neural Pile style).
* ``dict_zip``: ``Counter(zip(*shifted_lists))`` per row, the fastest pure-Python idiom.

Both dict counters' tables are checked to equal NGramModel's on the same slice. For order 9 the
general path (taken by chunks holding tokens 127..254) is timed too, by disabling the packed path.
Throughputs are reported in process CPU time (headline; robust to a shared, busy host) and wall
time, best of several runs, one core (numpy sorting is single-threaded).

Run (about 15 s)::

    python benchmarks/bench_ngram.py
    python benchmarks/bench_ngram.py --num-tokens 5000000 --dict-tokens 500000

Writes ``benchmarks/results/ngram.json``: figures, corpus, machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter

import numpy as np

from spikefm.families.ar.tokens import tokenize
from spikefm.families.ar import ngram as ngram_module
from spikefm.families.ar.ngram import NGramModel

PAD = 255
TABLES = ("context_keys_", "context_counts_", "ngram_codes_", "ngram_counts_")
BIN_SIZE_MS = 20


def synthetic_rows(num_tokens: int, num_units: int, row_bins: int, seed: int) -> list[np.ndarray]:
    """Tokenized Poisson counts, ``num_units + 1`` tokens per bin, about ``num_tokens`` in all."""
    rng = np.random.default_rng(seed)
    rates_hz = rng.gamma(shape=0.8, scale=8.0, size=num_units)  # mean ~6 Hz, long tail
    num_bins = -(-num_tokens // (num_units + 1))
    counts = rng.poisson(rates_hz[:, None] * BIN_SIZE_MS / 1000.0, size=(num_units, num_bins))
    return [tokenize(counts[:, s : s + row_bins]) for s in range(0, num_bins, row_bins)]


def leading_slice(rows: list[np.ndarray], num_tokens: int) -> list[np.ndarray]:
    out, total = [], 0
    for row in rows:
        if total >= num_tokens:
            break
        out.append(row[: num_tokens - total])
        total += out[-1].size
    return out


def dict_loop_counter(rows: list[np.ndarray], order: int) -> tuple[Counter, Counter]:
    pairs, contexts = Counter(), Counter()
    k = order - 1
    for row in rows:
        toks = [PAD] * k + row.tolist()
        for p in range(k, len(toks)):
            ctx = tuple(toks[p - k : p])
            pairs[(ctx, toks[p])] += 1
            contexts[ctx] += 1
    return pairs, contexts


def dict_zip_counter(rows: list[np.ndarray], order: int) -> tuple[Counter, Counter]:
    windows, contexts = Counter(), Counter()
    k = order - 1
    for row in rows:
        toks = [PAD] * k + row.tolist()
        windows.update(zip(*(toks[j:] for j in range(order))))
        contexts.update(zip(*(toks[j : len(toks) - 1] for j in range(k))) if k else [()] * row.size)
    pairs = Counter({(w[:-1], w[-1]): c for w, c in windows.items()})
    return pairs, contexts


def model_tables(model: NGramModel) -> tuple[Counter, Counter]:
    k = model.order - 1

    def decode(key: int) -> tuple:
        return tuple((key >> (8 * (j - 1))) & 0xFF for j in range(k, 0, -1))

    ctx = [decode(int(key)) for key in model.context_keys_]
    contexts = Counter(dict(zip(ctx, model.context_counts_.tolist())))
    pairs = Counter()
    for code, count in zip(model.ngram_codes_.tolist(), model.ngram_counts_.tolist()):
        pairs[(ctx[code >> 8], code & 0xFF)] = count
    return pairs, contexts


def best_time(fn, repeats: int) -> tuple[dict, object]:
    """Best wall and process-CPU seconds over ``repeats`` runs (CPU time is robust to a busy host)."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"wall_s": min(wall), "cpu_s": min(cpu), "all_wall_s": wall, "all_cpu_s": cpu}, out


def rates(timing: dict, tokens: int) -> dict:
    return {
        "tokens": tokens, **timing,
        "tokens_per_s_wall": tokens / timing["wall_s"], "tokens_per_s_cpu": tokens / timing["cpu_s"],
    }


def peak_traced_mb(fn) -> float:
    """Peak Python + numpy heap allocation (tracemalloc) while fn runs, in MiB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1m_5m_15m": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git_commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-tokens", type=int, default=3_000_000)
    parser.add_argument("--dict-tokens", type=int, default=300_000)
    parser.add_argument("--num-units", type=int, default=100)
    parser.add_argument("--row-bins", type=int, default=50, help="bins per corpus row (50 = 1 s)")
    parser.add_argument("--order", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dict-repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ngram.json"))
    args = parser.parse_args()

    rows = synthetic_rows(args.num_tokens, args.num_units, args.row_bins, args.seed)
    num_tokens = sum(r.size for r in rows)
    small = leading_slice(rows, args.dict_tokens)
    small_tokens = sum(r.size for r in small)
    order = args.order
    print(f"corpus: {num_tokens:,} tokens in {len(rows)} rows; dict slice {small_tokens:,}", flush=True)

    # Correctness on the slice before any timing.
    vec_small = NGramModel(order).fit(small)
    reference = model_tables(vec_small)
    checks = {}
    for name, fn in [("dict_loop", dict_loop_counter), ("dict_zip", dict_zip_counter)]:
        checks[name] = fn(small, order) == reference
        if not checks[name]:
            raise SystemExit(f"{name} counts differ from NGramModel on the slice")

    results: dict = {}
    timing, model = best_time(lambda: NGramModel(order).fit(rows), args.repeats)
    results["ngram_full"] = rates(timing, num_tokens)
    results["ngram_full"].update(
        distinct_ngrams=int(model.ngram_codes_.size), distinct_contexts=int(model.context_keys_.size)
    )
    if order == ngram_module.MAX_ORDER:
        # The general order-9 path (tokens 127..254 present) buckets by a radix argsort first.
        real_fits = ngram_module._fits_7_bits
        ngram_module._fits_7_bits = lambda stream: False
        try:
            timing, general = best_time(lambda: NGramModel(order).fit(rows), args.repeats)
        finally:
            ngram_module._fits_7_bits = real_fits
        assert np.array_equal(general.ngram_codes_, model.ngram_codes_)
        results["ngram_full_general_path"] = rates(timing, num_tokens)
    timing, _ = best_time(lambda: NGramModel(order).fit(small), args.repeats)
    results["ngram_slice"] = rates(timing, small_tokens)
    for name, fn in [("dict_loop", dict_loop_counter), ("dict_zip", dict_zip_counter)]:
        timing, _ = best_time(lambda: fn(small, order), args.dict_repeats)
        results[name] = rates(timing, small_tokens)
    for name, res in results.items():
        print(
            f"{name:>24}: {res['tokens']:>10,} tokens  {res['tokens_per_s_cpu'] / 1e6:8.2f} M tok/s (cpu)"
            f"  {res['tokens_per_s_wall'] / 1e6:8.2f} M tok/s (wall)",
            flush=True,
        )

    speedup = {}
    for clock in ("cpu", "wall"):
        for mine in [m for m in ("ngram_full", "ngram_full_general_path", "ngram_slice") if m in results]:
            for ref in ("dict_loop", "dict_zip"):
                speedup[f"{mine}_vs_{ref}_{clock}"] = (
                    results[mine][f"tokens_per_s_{clock}"] / results[ref][f"tokens_per_s_{clock}"]
                )
    for key, value in speedup.items():
        print(f"speedup {key}: {value:.1f}x", flush=True)

    # Other orders, same corpus (no dict baseline).
    for other in (1, 3):
        timing, _ = best_time(lambda: NGramModel(other).fit(rows), args.repeats)
        results[f"ngram_full_order{other}"] = rates(timing, num_tokens)

    # Scoring throughput on held-out rows.
    held_out = synthetic_rows(200_000, args.num_units, args.row_bins, args.seed + 1)
    held_tokens = sum(r.size for r in held_out)
    timing, _ = best_time(lambda: [model.log_prob(r) for r in held_out], args.repeats)
    results["log_prob"] = rates(timing, held_tokens)
    print(f"log_prob: {results['log_prob']['tokens_per_s_cpu'] / 1e6:.2f} M tok/s (cpu)", flush=True)

    # Bounded memory: peak traced allocation and time under a small budget, same tables.
    memory = {}
    for budget_mb in (1024.0, 32.0, 4.0):
        budgeted = NGramModel(order, memory_budget_mb=budget_mb)
        timing, fitted = best_time(lambda: budgeted.fit(rows), args.repeats)
        same = all(np.array_equal(getattr(fitted, a), getattr(model, a)) for a in TABLES)
        peak = peak_traced_mb(lambda: NGramModel(order, memory_budget_mb=budget_mb).fit(rows))
        memory[str(budget_mb)] = {
            "chunk_tokens": fitted.chunk_tokens, **rates(timing, num_tokens),
            "peak_traced_mb": peak, "tables_equal_default": same,
        }
        print(
            f"budget {budget_mb:g} MiB: chunk {fitted.chunk_tokens:,} tokens, "
            f"{memory[str(budget_mb)]['tokens_per_s_cpu'] / 1e6:.1f} M tok/s (cpu), "
            f"peak traced {peak:.1f} MiB, equal={same}",
            flush=True,
        )
    table_mb = sum(getattr(model, a).nbytes for a in TABLES) / 2**20

    report = {
        "benchmark": "ngram",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": vars(args),
        "corpus": {
            "num_tokens": num_tokens, "num_rows": len(rows), "num_units": args.num_units,
            "row_bins": args.row_bins, "bin_size_ms": BIN_SIZE_MS, "rates": "gamma(0.8, 8 Hz) Poisson",
        },
        "order": order,
        "results": results,
        "speedup": speedup,
        "counts_equal_on_slice": checks,
        "memory": memory,
        "fitted_table_mb": table_mb,
        "machine": machine_info(),
        "note": (
            "best of --repeats runs (dict counters: --dict-repeats) on one core; the dict counters run on "
            "the leading slice. Process CPU time is the headline clock: the host is shared, so wall "
            "time includes waiting for a core."
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(args.out), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
