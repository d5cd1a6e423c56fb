"""Benchmark: how much choice do the spikes carry for an observer that does not know every latent?

``spikefm eval`` reports, for synthetic ``choice`` labels, the ideal observer of the spikes: the
Poisson likelihood ratio of each window's counts with the choice latent as it is or flipped, every
other latent at its true single-trial value (``spikefm.eval.oracle.ideal_observer_favours_truth``).
A decoder never knows those other latents. On the held-out session of the NEDS benchmark's
synthetic data (``bench_neds.py``: ``ibl`` preset, 5 sessions of 1,000 s, ``region_tuning=1``, the
last session held out, 50-bin windows from 200 ms before stimulus onset, the same 70/10/20 split),
this scores observers that know less:

* ``all latents true``: what ``spikefm eval`` reports;
* ``events true, internal inferred``: the trial's event latents (stimulus, choice, movement,
  reward) true; the internal latents (oscillations, drift, whisking, the regions' private latents)
  integrated out under their linear-Gaussian dynamics (a VAR(1) fitted to the session's true
  latent series), the marginal likelihood of each choice sign by a Laplace approximation (Newton's
  method on the posterior of the window's internal latents). The observer still knows the
  generator's readout and the timing of the trial's events, which a decoder must learn from its
  training trials or infer, so this is a tighter bound than the first, not an achievable target;
* ``events true, internal at mean`` and ``choice latent only``: plug-ins (the unknown latents at
  their mean over the trials at each bin); they show what knowing the internal state is worth,
  not a bound (a decoder can infer that state from the spikes, as the Laplace observer does).

Beside them, two decoders fitted on the train + val windows and scored on the test windows: the
NEDS evaluation's ``linear`` choice decoder (logistic regression on counts summed in 5 stretches
of the window) on stimulus-aligned windows, and the same on windows aligned to the first movement
(``data.align=first_movement_time``, 200 ms before it), where the choice signal sits at a fixed
bin. Nothing else is trained.

    python benchmarks/choice_observers.py                          # seeds 2,3,4; choice signal 0.5 and 1.0; 24 min on 2 cores (wall_s 1462)

Writes benchmarks/results/choice_observers.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402
from _laplace import laplace_log_marginal, prior_precision, var1  # noqa: E402

EVENT_LATENTS = ("stim", "choice", "move", "reward")


def observers(seed: int, choice_signal: float, work: Path) -> dict:
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize, truth_readout
    from spikefm.data.windows import load_all_windows
    from spikefm.eval.oracle import ideal_observer_favours_truth, session_truth, truth_latent_windows
    from spikefm.eval.probes import fit_predict_logistic
    from spikefm.families.neds.evaluate import _chunked
    from spikefm.families.neds.family import NEDSDataConfig, window_options

    root = work / f"seed{seed}_choice{choice_signal}"
    synthesize(root / "nwb", num_sessions=5, seed=seed, duration_s=1000.0, preset="ibl", region_tuning=1.0,
               choice_signal=choice_signal)
    build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.0), progress=False)
    corpus = Corpus(str(root / "corpus"))
    held = corpus.session_ids()[-1]

    def windows(align: str):  # as the NEDS runs of bench_neds.py cut them (the family's own options)
        return load_all_windows(corpus, [held], **window_options(NEDSDataConfig(window_bins=50, pre_ms=200,
                                                                                align=align)))[held]

    w = windows("stim_on_time")
    truth = session_truth(corpus, held)
    z_KTZ = truth_latent_windows(truth, w)
    readout = truth_readout(truth, w.unit_index, w.num_units)
    names = readout["latent_names"]
    W_NZ, b_N = readout["loadings_NZ"], readout["biases_N"]
    choice = names.index("choice")
    events = [i for i, n in enumerate(names) if n in EVENT_LATENTS]
    internal = [i for i in range(len(names)) if i not in events]
    y = w.labels["choice"]
    counts = w.counts.astype(np.float64)
    out = {"seed": seed, "choice_signal": choice_signal, "session": held, "units": w.num_units,
           "latents": names, "accuracy": {}}
    A, Q, P = var1(np.asarray(truth["latents"], dtype=np.float64)[:, internal])
    J = prior_precision(A, Q, P, w.num_bins)
    for split in ("test", "all"):
        keep = np.isin(y, (-1, 1)) & ((w.split == "test") if split == "test" else True)
        z, n = z_KTZ[keep], counts[keep]
        mean_1TZ = z.mean(0, keepdims=True)
        row: dict = {"trials": int(keep.sum())}
        for label, known in (("all latents true", range(len(names))), ("events true, internal at mean", events),
                             ("choice latent only", [choice])):
            zz = np.where(np.isin(np.arange(len(names)), list(known))[None, None, :], z, mean_1TZ)
            row[label] = float(ideal_observer_favours_truth(n, zz, W_NZ, b_N, choice,
                                                            max_count=readout["max_count"]).mean())
        flipped = z.copy()
        flipped[..., choice] *= -1.0
        logml = [laplace_log_marginal(n, zz[..., events] @ W_NZ[:, events].T + b_N, W_NZ[:, internal], J)
                 for zz in (z, flipped)]
        row["events true, internal inferred"] = float(np.mean(np.where(logml[0] == logml[1], 0.5,
                                                                       logml[0] > logml[1])))
        out["accuracy"][split] = row
    for align in ("stim_on_time", "first_movement_time"):
        wa = windows(align)
        ya = wa.labels["choice"]
        fit = np.isin(wa.split, ("train", "val")) & np.isin(ya, (-1, 1))
        te = (wa.split == "test") & np.isin(ya, (-1, 1))
        X = _chunked(wa.counts.astype(np.float64))
        pred = np.unique(ya[fit])[fit_predict_logistic(X[fit], ya[fit], X[te]).argmax(1)]
        out["accuracy"]["test"][f"linear decoder, windows at {align}"] = float(np.mean(pred == ya[te]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="2,3,4", help="synthetic seeds (the NEDS benchmark's: 2,3,4)")
    ap.add_argument("--choice-signals", default="0.5,1.0", help="the generator's choice_signal values")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "choice_observers.json"))
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        signals = [float(c) for c in args.choice_signals.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated ints and --choice-signals numbers, got "
                         f"{args.seeds!r} and {args.choice_signals!r}") from None
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="choice_observers_") as tmp:
        for c in signals:
            for s in seeds:
                rows.append(observers(s, c, Path(tmp)))
                acc = rows[-1]["accuracy"]["test"]
                print(f"choice signal {c} seed {s}: test trials {acc['trials']}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in acc.items() if k != "trials"))
    summary = {}
    for c in signals:
        for split in ("all", "test"):
            for label in rows[0]["accuracy"][split]:
                if label == "trials":
                    continue
                v = [r["accuracy"][split][label] for r in rows if r["choice_signal"] == c]
                summary[f"choice {c} / {split} / {label}"] = {"mean": float(np.mean(v)),
                                                               "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
    out = {"command": "python benchmarks/choice_observers.py " + " ".join(sys.argv[1:]), "per_seed": rows,
           "summary": summary, "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    from spikefm.fileio import write_json_atomic

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
