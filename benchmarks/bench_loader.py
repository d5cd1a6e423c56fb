"""Benchmark: AR training-loader tokens/s against the reference loader's conversion of each row's
nested Python lists with np.array (as the Neural Pile training code does), on the same shards.

    python benchmarks/bench_loader.py          # ~20M tokens of synthetic counts

Writes benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--bins", type=int, default=5000)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = ap.parse_args()

    import torch

    from spikefm.corpus.build import _list_of_lists
    from spikefm.corpus.schema import ROW_SCHEMA
    from spikefm.families.ar.loader import ARTokenLoader
    from spikefm.families.ar.tokens import tokenize
    from spikefm.fileio import write_json_atomic

    rng = np.random.default_rng(0)
    mats = [rng.poisson(0.15, (args.units, args.bins)).astype(np.uint8) for _ in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        n = len(mats)
        table = pa.Table.from_arrays([
            _list_of_lists(mats, pa.uint8()), pa.array(["s"] * n), pa.array([f"r{i}" for i in range(n)]),
            pa.array([f"segment_{i}" for i in range(n)]), pa.array(["bench"] * n),
            pa.array([20] * n, pa.int32()), pa.array([0] * n, pa.int64()),
            pa.array([[]] * n, pa.list_(pa.string())), pa.array([[]] * n, pa.list_(pa.string())),
            pa.array([""] * n), pa.array([[]] * n, pa.list_(pa.string())),
            _list_of_lists([np.zeros((0, m.shape[1]), np.float32) for m in mats], pa.float32()),
            pa.array(["{}"] * n)], schema=ROW_SCHEMA)
        (corpus / "data").mkdir()
        pq.write_table(table, corpus / "data" / "train-00000-of-00001.parquet",
                       compression="zstd", row_group_size=4)
        total = sum(m.size + m.shape[1] for m in mats)
        write_json_atomic(corpus / "manifest.json", {
            "schema_version": 1, "bin_ms": 20, "sessions": [],
            "splits": {"train": {"num_rows": n, "num_tokens": total, "num_sessions": 1,
                                 "shards": ["data/train-00000-of-00001.parquet"]}}})

        # spikefm: windows from the memory-mapped token cache (one epoch's worth of tokens). The
        # cache is built once per corpus (timed separately), then every epoch reads from it.
        B, W = args.batch_size, args.seq_len + 1
        t0 = time.perf_counter()
        loader = ARTokenLoader(corpus, seq_len=args.seq_len, batch_size=B)
        t_cache = time.perf_counter() - t0
        num_batches = total // (B * W)
        t0 = time.perf_counter()
        for _ in range(num_batches):
            next(loader)
        t_ours = time.perf_counter() - t0

        # Reference: rows as Python lists (datasets' format), np.array per row, then tokenize
        # and window the same way.
        t0 = time.perf_counter()
        buf = []
        for batch in pq.ParquetFile(corpus / "data" / "train-00000-of-00001.parquet").iter_batches(
                batch_size=4, columns=["spike_counts"]):
            for row in batch.column("spike_counts").to_pylist():
                arr = np.array(row, dtype=np.uint8)
                buf.append(tokenize(arr))
        stream = np.concatenate(buf)
        for k in range(num_batches):
            torch.from_numpy(stream[k * B * W:(k + 1) * B * W].reshape(B, W))
        t_ref = time.perf_counter() - t0
        tokens = num_batches * B * W

    result = {
        "benchmark": "loader",
        "command": "python benchmarks/bench_loader.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]},
        "tokens": tokens,
        "spikefm_tokens_per_s": tokens / t_ours,
        "reference_np_array_tokens_per_s": tokens / t_ref,
        "speedup": t_ref / t_ours,
        "token_cache_build_s": t_cache,
        "first_epoch_speedup_including_cache_build": t_ref / (t_ours + t_cache),
        "batch_size": args.batch_size, "seq_len": args.seq_len,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
