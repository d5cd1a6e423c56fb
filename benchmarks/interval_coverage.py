"""Benchmark: how often intervals of bps_pooled over K test trials cover the score's expected value.

The walk's chunks (10 bins of 20 test trials) and the tasks' totals carry a 95 % interval over the
test trials. This simulation chose the method: a fixed imperfect model of Poisson data with
trial-to-trial gain and a per-bin shared latent (the things that make a chunk's NLB score vary from
one test set to the next), scored with the NLB null on K trials. The target is the expected score on
K fresh trials (estimated from ``--reference`` independent test sets); each method's coverage is the
share of ``--replicates`` simulated test sets whose interval contains it. Methods: the jackknife
standard error with a Student-t quantile (what ``spikefm eval`` reports,
``spikefm.eval.metrics.bps_pooled_interval``), the percentile bootstrap and the BCa bootstrap
(both with the NLB null re-fitted on every resample).

    python benchmarks/interval_coverage.py                 # K = 10, 20, 60; 500 replicates each

Writes benchmarks/results/interval_coverage.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from spikefm.eval.metrics import _trial_weighted_bps, bps_pooled, bps_pooled_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def make_draw(rng: np.random.Generator, T: int, N: int):
    base_TN = rng.gamma(1.5, 0.15, size=(T, N))
    load_N = rng.normal(0.0, 1.0, size=N)

    def draw(K: int):
        gain_K = rng.lognormal(0.0, 0.35, size=(K, 1, 1))
        lat_KTN = rng.normal(0.0, 0.3, size=(K, T, 1)) * load_N
        counts = rng.poisson(base_TN * gain_K * np.exp(lat_KTN)).astype(float)
        rates = base_TN * np.sqrt(gain_K) * np.exp(0.5 * lat_KTN)  # shrunk towards the mean: imperfect
        return rates, counts

    return draw


def bootstrap_intervals(rates, counts, rng, resamples: int) -> dict[str, tuple[float, float]]:
    K = counts.shape[0]
    score = _trial_weighted_bps(rates, counts, None)
    theta = score(np.ones((1, K)))[0]
    idx = rng.integers(0, K, size=(resamples, K))
    boot = score(np.stack([np.bincount(i, minlength=K) for i in idx]).astype(float))
    out = {"percentile bootstrap": tuple(np.percentile(boot, [2.5, 97.5]))}
    z0 = norm.ppf((np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / boot.size)
    jack = score(1.0 - np.eye(K))
    d = jack.mean() - jack
    accel = np.sum(d ** 3) / (6.0 * np.sum(d ** 2) ** 1.5)
    z = norm.ppf([0.025, 0.975])
    out["BCa bootstrap"] = tuple(np.percentile(boot, 100 * norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="10,20,60", help="K values (comma-separated)")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--units", type=int, default=60)
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--reference", type=int, default=4000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "interval_coverage.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {}
    for K in (int(k) for k in args.trials.split(",")):
        rng = np.random.default_rng([args.seed, K])
        draw = make_draw(rng, args.bins, args.units)
        ref = [bps_pooled(*draw(K)) for _ in range(args.reference)]
        target = float(np.mean(ref))
        hits = {"jackknife t (spikefm eval)": 0, "percentile bootstrap": 0, "BCa bootstrap": 0}
        widths = {m: [] for m in hits}
        for _ in range(args.replicates):
            rates, counts = draw(K)
            intervals = {"jackknife t (spikefm eval)": bps_pooled_interval(rates, counts),
                         **bootstrap_intervals(rates, counts, rng, args.resamples)}
            for m, (lo, hi) in intervals.items():
                hits[m] += lo <= target <= hi
                widths[m].append(hi - lo)
        results[str(K)] = {"expected_score": target, "sd_of_score": float(np.std(ref, ddof=1)),
                           "coverage": {m: h / args.replicates for m, h in hits.items()},
                           "mean_width": {m: float(np.mean(w)) for m, w in widths.items()}}
        cov = ", ".join(f"{m} {v:.3f}" for m, v in results[str(K)]["coverage"].items())
        print(f"K={K}: expected bps {target:.4f} (sd {results[str(K)]['sd_of_score']:.4f}); coverage {cov}")
    out = {"command": "python benchmarks/interval_coverage.py " + " ".join(sys.argv[1:]),
           "settings": vars(args), "nominal": 0.95, "results": results,
           "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
