"""Benchmark: how much of the co-smoothing oracle could any model reach?

The co-smoothing oracle of ``spikefm eval`` scores the generator's true expected counts, which
include the single-trial values of the internal latents (oscillations, drift, whisking, each
region's private latents). A model sees only the other units' spikes, about 0.1 per unit per
20 ms bin, so it can infer those latents only up to their posterior uncertainty: the oracle is
not reachable. This scores, on a fine-tuned NDT run's held-out session, an observer that knows the
generator and infers the rest from the other units' spikes exactly as co-smoothing allows:

* ``laplace``: each unit held out in turn; the internal latents' posterior given every other
  unit's counts in the window (linear-Gaussian VAR(1) dynamics fitted to the session's true
  latent series, a Laplace approximation), the held-out unit's expected count averaged over it
  (``benchmarks/_laplace.py``, tested against dense optimisation and numerical integration). It
  knows the generator's readout (loadings, biases) and the trial's event latents (stimulus,
  choice, movement, reward), which a model must learn or infer, so it is a bound to compare
  against, not a target a model must reach;
* ``oracle``: the true expected counts (what ``spikefm eval`` reports);
* ``model``: the run's own co-smoothing predictions on the same windows.

The same for the forward-prediction walk (``--no-walk`` skips it): each 10-bin chunk from the
event bin on, the observer given every unit's counts in the earlier bins (the posterior carried
forward by the dynamics), scored per chunk as ``spikefm eval`` scores the model's (the NLB null
fitted on the scored entries, and a null fitted on the train and val windows).

Every score is ``bps_pooled`` with the NLB null on the same entries, with a 95 % jackknife
interval over the trials for the model minus the Laplace observer. Usage (after ``spikefm
quickstart --out Q`` or ``spikefm experiment transfer --out T``)::

    python benchmarks/ndt_cosmoothing_ceiling.py Q/run_ndt_finetune --corpus Q/corpus_sessions --out RESULT.json
    python benchmarks/ndt_cosmoothing_ceiling.py T/seed_2/run_ndt_finetune --corpus T/seed_2/corpus_sessions --split val

Needs a synthetic corpus (a ``.truth.npz`` next to each NWB file); ``ibl`` preset sessions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402
from _laplace import forward_rates, leave_one_out_rates, prior_precision, var1  # noqa: E402


def ceiling(run_dir: str, corpus_dir: str, split: str = "test", progress: bool = True, walk: bool = True) -> dict:
    """Co-smoothing bps of the run, the Laplace observer and the oracle on the run's held-out
    session (its ``split`` windows); with ``walk``, the forward-prediction walk's chunks too."""
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import truth_readout
    from spikefm.eval.metrics import bps_pooled, bps_pooled_difference, bps_per_neuron_mean
    from spikefm.eval.oracle import truth_latent_windows, truth_windows
    from spikefm.families import load_model
    from spikefm.families.ndt.evaluate import pick_session, scored_as_test, session_truth, session_windows_for_run
    from spikefm.families.ndt.tasks import TaskPrediction, _chunk_bps, co_smoothing, forward_prediction_walk, walk_start_bin

    if split not in ("test", "val"):
        raise SystemExit(f"--split must be 'test' or 'val', got {split!r}")
    model = load_model(run_dir)
    corpus = Corpus(corpus_dir)
    session = pick_session(model, None)
    windows = scored_as_test(session_windows_for_run(run_dir, corpus, session), split)
    truth = session_truth(corpus, windows)
    if truth is None:
        raise SystemExit(f"no ground truth for session {session!r} in {corpus_dir}: this benchmark needs a "
                         "synthetic corpus (spikefm synth writes <session>.truth.npz next to each NWB file)")
    readout = truth_readout(truth, windows.unit_index, windows.num_units)
    names = readout["latent_names"]
    dyn = [str(n) for n in truth["dynamics_names"]]
    internal = [names.index(n) for n in dyn]
    known = [i for i in range(len(names)) if i not in internal]
    W_NZ, b_N = readout["loadings_NZ"], readout["biases_N"]

    pred = co_smoothing(model, windows)  # the model's rates on the scored windows
    idx = pred.window_index
    z_KTZ = truth_latent_windows(truth, windows)[idx]
    counts_KTN = windows.counts[idx].astype(np.float64)
    A, Q, P = var1(np.asarray(truth["latents"], dtype=np.float64)[:, internal])
    J = prior_precision(A, Q, P, windows.num_bins)
    c_KTN = z_KTZ[..., known] @ W_NZ[:, known].T + b_N
    truth_all = truth_windows(truth, windows)  # what spikefm eval's oracle scores
    oracle_KTN = truth_all[idx]
    lap = np.empty_like(counts_KTN)
    t0 = time.perf_counter()
    for k in range(len(idx)):
        lap[k] = leave_one_out_rates(counts_KTN[k], c_KTN[k], W_NZ[:, internal], J)
        if progress:
            print(f"\r  window {k + 1}/{len(idx)} ({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    scored = ~np.isnan(pred.counts)
    out = {"run_dir": str(run_dir), "session": session, "split": split, "windows": int(len(idx)),
           "units": int(windows.num_units), "bins": int(windows.num_bins), "internal_latents": dyn,
           "known_latents": [names[i] for i in known]}
    for name, rates in (("model", pred.rates), ("laplace", np.where(scored, lap, np.nan)),
                        ("oracle", np.where(scored, oracle_KTN, np.nan))):
        out[name] = {"bps_pooled": float(bps_pooled(rates, pred.counts)),
                     "bps_per_neuron_mean": float(bps_per_neuron_mean(rates, pred.counts))}
    diff = bps_pooled_difference(pred.rates, np.where(scored, lap, np.nan), pred.counts)
    out["model_minus_laplace"] = diff
    if walk:  # each 10-bin chunk from the event bin on, predicted from every unit's earlier bins
        wpred = forward_prediction_walk(model, windows)
        T, F = windows.num_bins, 10
        lap_walk = np.full_like(counts_KTN, np.nan)
        for k in range(len(idx)):
            for s in range(walk_start_bin(windows, F), T, F):
                lap_walk[k, s:min(s + F, T)] = forward_rates(counts_KTN[k], c_KTN[k], W_NZ[:, internal], J, s,
                                                             min(s + F, T))
        wscored = ~np.isnan(wpred.counts)
        lap_pred = TaskPrediction(rates=np.where(wscored, lap_walk, np.nan), counts=wpred.counts,
                                  window_index=wpred.window_index)
        chunks_model = _chunk_bps(wpred, windows, "forward-prediction-walk", F, truth_all[wpred.window_index])
        chunks_lap = _chunk_bps(lap_pred, windows, "forward-prediction-walk", F, None)
        out["walk"] = {"model": {"bps_pooled": float(bps_pooled(wpred.rates, wpred.counts))},
                       "laplace": {"bps_pooled": float(bps_pooled(lap_pred.rates, wpred.counts))},
                       "oracle": {"bps_pooled": float(bps_pooled(np.where(wscored, truth_all[wpred.window_index], np.nan),
                                                                 wpred.counts))},
                       "chunks": [{"start_bin": a["start_bin"], "end_bin": a["end_bin"],
                                   "model": a["model"]["bps_pooled"], "model_ci95": a["model_ci95"]["bps_pooled"],
                                   "model_vs_train_null": a.get("model_vs_train_null", {}).get("bps_pooled"),
                                   "laplace": b["model"]["bps_pooled"], "laplace_ci95": b["model_ci95"]["bps_pooled"],
                                   "laplace_vs_train_null": b.get("model_vs_train_null", {}).get("bps_pooled"),
                                   "oracle": a["oracle"]["bps_pooled"]}
                                  for a, b in zip(chunks_model, chunks_lap)]}
    out["model_over_laplace"] = out["model"]["bps_pooled"] / out["laplace"]["bps_pooled"]
    out["model_over_oracle"] = out["model"]["bps_pooled"] / out["oracle"]["bps_pooled"]
    out["laplace_over_oracle"] = out["laplace"]["bps_pooled"] / out["oracle"]["bps_pooled"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="fine-tuned NDT run directories (one held-out session each)")
    ap.add_argument("--corpus", nargs="+", required=True, help="the corpus of each run (one, or one per run)")
    ap.add_argument("--split", default="test", choices=("test", "val"))
    ap.add_argument("--no-walk", action="store_true", help="skip the forward-prediction walk")
    ap.add_argument("--out", default=None, help="JSON to write (default: print only)")
    args = ap.parse_args()
    if len(args.corpus) not in (1, len(args.runs)):
        raise SystemExit(f"--corpus takes one directory or one per run; got {len(args.corpus)} for "
                         f"{len(args.runs)} runs")
    corpora = args.corpus * len(args.runs) if len(args.corpus) == 1 else args.corpus
    t0 = time.perf_counter()
    rows = []
    for run, corpus in zip(args.runs, corpora):
        rows.append(ceiling(run, corpus, args.split, walk=not args.no_walk))
        r = rows[-1]
        print(f"{run}: {r['session']} ({r['split']}, {r['windows']} windows, {r['units']} units): co-smoothing "
              f"bps_pooled model {r['model']['bps_pooled']:.4f}, laplace observer {r['laplace']['bps_pooled']:.4f}, "
              f"oracle {r['oracle']['bps_pooled']:.4f}; model / laplace {r['model_over_laplace']:.3f}, "
              f"model / oracle {r['model_over_oracle']:.3f}, laplace / oracle {r['laplace_over_oracle']:.3f}; "
              f"model - laplace {r['model_minus_laplace']['value']:+.4f} "
              f"[{r['model_minus_laplace']['ci95'][0]:.4f}, {r['model_minus_laplace']['ci95'][1]:.4f}]")
        if "walk" in r:
            w = r["walk"]
            print(f"  walk bps_pooled: model {w['model']['bps_pooled']:.4f}, laplace observer "
                  f"{w['laplace']['bps_pooled']:.4f}, oracle {w['oracle']['bps_pooled']:.4f}; per chunk "
                  "(NLB null; train-fitted null in brackets):")
            for ch in w["chunks"]:
                print(f"    bins {ch['start_bin']}-{ch['end_bin'] - 1}: model {ch['model']:+.4f} "
                      f"({ch['model_vs_train_null']:+.4f}), laplace {ch['laplace']:+.4f} "
                      f"({ch['laplace_vs_train_null']:+.4f}), oracle {ch['oracle']:+.4f}")
    out = {"command": "python benchmarks/ndt_cosmoothing_ceiling.py " + " ".join(sys.argv[1:]), "runs": rows,
           "wall_s": round(time.perf_counter() - t0, 1), "machine": machine_info()}
    if len(rows) > 1:
        out["mean_sd"] = {k: {"mean": float(np.mean([r[k] for r in rows])), "sd": float(np.std([r[k] for r in rows], ddof=1))}
                          for k in ("model_over_laplace", "model_over_oracle", "laplace_over_oracle")}
    if args.out:
        from spikefm.fileio import write_json_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
