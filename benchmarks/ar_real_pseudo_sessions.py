"""The AR model's documented recipe on real spike trains, held-out "sessions" made from one recording.

spikefm has one real recording here (``../shared/data/real/``, DANDI 000207, 35 human MTL units,
47 min). This cuts it into ``--pieces`` disjoint stretches of time and gives each a different random
subset of the units (``--units MIN,MAX`` of them, in a random order), writes each as its own NWB
file (a pseudo-session: its own unit count, unit order and firing statistics), builds a corpus with
the session-level split, and runs the README's AR commands on it unchanged:

    spikefm corpus build NWB --out CORPUS --test-fraction F --split session --seed S
    spikefm train --model ar --data CORPUS --out RUN
    spikefm eval RUN --data CORPUS --ngram 1,9 --max-tokens 60000 --out JSON

It is a check on real firing statistics (sparse, irregular human units), not on a new animal: the
held-out pieces' units also fire in training pieces, at other times, in other subsets and orders.

    python benchmarks/ar_real_pseudo_sessions.py --work /tmp/ar_real --out benchmarks/results/ar_real_pseudo_sessions.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "dandi-000207_sub-4_ses-4_ecephys+image.nwb"


def _spikefm() -> list[str]:
    exe = Path(sys.executable).with_name("spikefm")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from spikefm.cli import main; main()"]


def write_pieces(src: Path, out: Path, pieces: int, units: tuple[int, int], seed: int, *,
                 write: bool = True) -> list[dict]:
    """Cut ``src`` into ``pieces`` NWB files under ``out``; return what each holds. With
    ``write=False`` only the (seeded, deterministic) description is returned."""
    import numpy as np
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    with NWBHDF5IO(str(src), "r") as io:
        nwb = io.read()
        trains = [np.asarray(nwb.units["spike_times"][i], dtype=float) for i in range(len(nwb.units))]
        species = nwb.subject.species if nwb.subject is not None else "Homo sapiens"
        locations = [str(nwb.units["electrodes"][i]["location"].iloc[0]) for i in range(len(nwb.units))]
    t0 = min(t.min() for t in trains if t.size)
    t1 = max(t.max() for t in trains if t.size)
    edges = np.linspace(t0, t1, pieces + 1)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(pieces):
        n = int(rng.integers(units[0], min(units[1], len(trains)) + 1))
        chosen = rng.permutation(len(trains))[:n]
        rows.append({"piece": k, "t_start_s": float(edges[k]), "t_stop_s": float(edges[k + 1]),
                     "units": [int(u) for u in chosen]})
        if not write:
            continue
        start = datetime(2020, 1, 1, tzinfo=timezone.utc)
        f = NWBFile(session_description=f"piece {k} of {src.name}: {edges[k]:.1f}-{edges[k + 1]:.1f} s, "
                                        f"{n} of its {len(trains)} units",
                    identifier=f"spikefm-real-piece-{seed}-{k}", session_start_time=start,
                    session_id=f"piece{k}",
                    subject=Subject(subject_id=f"piece{k}", species=species))
        dev = f.create_device(name="probe")
        for j, u in enumerate(chosen):
            g = f.create_electrode_group(name=f"e{j}", description="electrode", location=locations[u], device=dev)
            f.add_electrode(group=g, location=locations[u])
        for j, u in enumerate(chosen):
            t = trains[u]
            t = t[(t >= edges[k]) & (t < edges[k + 1])] - edges[k]
            f.add_unit(spike_times=t, electrodes=[j])
        tmp = out / f".piece{k}.nwb.tmp"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not end in '.nwb'")
            with NWBHDF5IO(str(tmp), "w") as io:
                io.write(f)
        os.replace(tmp, out / f"piece{k}.nwb")
    return rows


def piece_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every pseudo-session benchmark shares (the recording, the pieces, the output)."""
    ap.add_argument("--nwb", type=Path, default=REAL, help="the real recording (default: the shared DANDI 000207 file)")
    ap.add_argument("--work", type=Path, required=True, help="folder for pieces, corpus and runs (reused when present)")
    ap.add_argument("--pieces", type=int, default=8)
    ap.add_argument("--units", default="12,35", help="MIN,MAX units per piece")
    ap.add_argument("--seed", type=int, default=0, help="which units each piece keeps")
    ap.add_argument("--out", type=Path, default=None, help="JSON of the scores")


def parse_piece_arguments(args) -> tuple[int, int]:
    """Check the shared options; returns the (MIN, MAX) units per piece."""
    if not args.nwb.is_file():
        raise SystemExit(f"expected the real NWB file at {args.nwb}; pass --nwb PATH")
    try:
        lo, hi = (int(x) for x in args.units.split(","))
    except ValueError:
        raise SystemExit(f"--units must be MIN,MAX (two ints), got {args.units!r}") from None
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    piece_arguments(ap)
    ap.add_argument("--test-fraction", type=float, default=0.25)
    args = ap.parse_args()
    lo, hi = parse_piece_arguments(args)
    w = args.work
    cli = _spikefm()
    built = (w / "corpus" / "manifest.json").exists()  # the pieces were written before it
    pieces = write_pieces(args.nwb, w / "nwb", args.pieces, (lo, hi), args.seed, write=not built)
    if not built:
        subprocess.run([*cli, "corpus", "build", str(w / "nwb"), "--out", str(w / "corpus"), "--test-fraction",
                        str(args.test_fraction), "--split", "session", "--seed", str(args.seed)], check=True)
    if not (w / "run" / "model.safetensors").exists():
        subprocess.run([*cli, "train", "--model", "ar", "--data", str(w / "corpus"), "--out", str(w / "run")],
                       check=True)
    scores = w / "eval.json"
    subprocess.run([*cli, "eval", str(w / "run"), "--data", str(w / "corpus"), "--ngram", "1,9",
                    "--max-tokens", "60000", "--out", str(scores)], check=True)
    res = json.loads(scores.read_text())
    if args.out:
        from spikefm.corpus.reader import Corpus
        from spikefm.fileio import write_json_atomic
        from spikefm.train.runinfo import machine_info

        corpus = Corpus(w / "corpus")
        write_json_atomic(args.out, {"source": str(args.nwb.name), "pieces": pieces, "seed": args.seed,
                                     "test_fraction": args.test_fraction,
                                     "train_sessions": corpus.session_ids("train"),
                                     "held_out_sessions": corpus.session_ids("test"),
                                     "eval": res, "machine": machine_info()})


if __name__ == "__main__":
    main()
