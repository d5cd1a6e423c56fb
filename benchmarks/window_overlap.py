"""Diagnostic: how many val/test windows share bins with train windows, per NDT window setting.

Trial-aligned windows longer than the gap between events overlap their neighbours, and the
window split is by trial, so a held-out window can share bins (spikes) with a training window.
This cuts the windows of a corpus with the NDT family's window options (the defaults, and each
``--protocol`` given) and counts, per setting, the val/test windows within ``window_bins`` of a
train window (the count ``spikefm.data.windows`` warns about).

    spikefm synth nwb --sessions 12 --seed 2 && spikefm corpus build nwb --out corpus
    python benchmarks/window_overlap.py corpus --protocol none --protocol jiang2025 --out JSON
"""
from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def overlap(corpus: str, protocol: str | None) -> dict:
    from spikefm.corpus.reader import Corpus
    from spikefm.data.windows import load_all_windows
    from spikefm.families import run_config
    from spikefm.families.ndt.family import window_options

    cfg = run_config("ndt", preset="tiny", corpus=corpus, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted here instead
        windows = load_all_windows(Corpus(corpus), **window_options(cfg.data))
    held = shared = 0
    for w in windows.values():
        starts, train = w.t_start_ms // w.bin_ms, w.split == "train"
        near = np.abs(starts[~train][:, None] - starts[train][None, :]) < w.num_bins
        held += int((~train).sum())
        shared += int(near.any(axis=1).sum())
    return {"protocol": protocol or "none", "window_bins": cfg.data.window_bins, "pre_ms": cfg.data.pre_ms,
            "sessions": len(windows), "held_out_windows": held, "sharing_bins_with_train": shared}


def main() -> None:
    from spikefm.fileio import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--protocol", action="append", default=[], help="'none' (the defaults) or a protocol name")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [overlap(args.corpus, None if p == "none" else p) for p in (args.protocol or ["none"])]
    for r in rows:
        print(f"{r['protocol']}: {r['window_bins']}-bin windows, {r['sharing_bins_with_train']} of "
              f"{r['held_out_windows']} val/test windows share bins with train windows ({r['sessions']} sessions)")
    write_json_atomic(args.out, {"what": __doc__.splitlines()[0], "command": "python benchmarks/window_overlap.py "
                                 + shlex.join(sys.argv[1:]), "results": rows, "machine": machine_info()})


if __name__ == "__main__":
    main()
