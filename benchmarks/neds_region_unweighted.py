"""Re-check of the NEDS region rows measured before classes were weighted (commit b6a2d31).

Runs ``benchmarks/bench_neds.py`` with every argument given here, with the region classifier's
``class_weight`` default set back to none (``spikefm.eval.probes.classify_regions``), so that
``--region-only`` reproduces the ``region`` entries of JSON files written before the weights.
Measured on 2026-12-06 (seed 2 alone, one thread, 206-219 s each; the ``region`` entries of
``per_seed["2"]`` equal those of the cited JSON to the last digit)::

    OMP_NUM_THREADS=1 python benchmarks/neds_region_unweighted.py --region-only --choice-signal 1.0 --seeds 2 --out /tmp/choice1.0_seed2.json                 # benchmarks/results/neds_choice1.0.json
    OMP_NUM_THREADS=1 python benchmarks/neds_region_unweighted.py --region-only --cli-defaults --choice-signal 1.0 --seeds 2 --out /tmp/cli_seed2.json  # benchmarks/results/neds_cli_defaults.json
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from spikefm.eval import probes


def main() -> None:
    if not any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:]):
        raise SystemExit("neds_region_unweighted.py: give --out JSON: bench_neds.py's default output is the "
                         "headline benchmarks/results/neds.json, which this re-check must not replace")
    probes.classify_regions.__kwdefaults__["class_weight"] = None
    sys.argv = ["bench_neds.py", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).with_name("bench_neds.py")), run_name="__main__")


if __name__ == "__main__":
    main()
