"""How `spikefm finetune --strategy auto` chose among its NEDS candidates, and how a one-standard-
error rule would have chosen, beside each candidate's scores on the held-out session's windows.

For one fine-tuning folder (``FT``, written by ``spikefm finetune --strategy auto``) this scores every
candidate (``FT/candidates/{frozen,unfreeze,full,scratch}``) on each validation window of the
held-out session with the validation loss ``finetune`` minimises (the same schemes, masks and
weights, one window at a time), then reports:

* ``auto``: the candidate with the lowest mean validation loss per window (what ``finetune``
  kept with ``--select lowest``);
* ``one_se``: the most constrained candidate (``frozen``, then ``unfreeze``, then ``full``) whose
  mean validation loss is within one standard error of the paired per-window difference from the
  lowest one (Breiman's rule for choosing among models on a small validation set);
* each candidate's ``spikefm eval`` scores on ``--split`` (encoding bps, choice accuracy, wheel /
  hand-velocity R²) from ``FT/candidates/C/candidate_eval_SPLIT.json``, running ``spikefm eval RUN
  --tasks encoding,decoding`` to write it where missing (``--no-eval``: left out instead).

    python benchmarks/neds_candidate_choice.py FT --data CORPUS [--split test] --out JSON

Run it in the folder the fine-tuning ran in (run configs may hold the corpus as a relative path).

A diagnostic of the selection rule on tuning seeds, not a score of the model.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, spikefm_cli  # noqa: E402

from spikefm.fileio import write_json_atomic  # noqa: E402
from spikefm.train.finetune import (PRETRAINED_CANDIDATES as PRETRAINED, one_se_choice,  # noqa: E402
                                    window_losses)


def per_window_val_loss(run_dir: Path) -> np.ndarray:
    """The validation loss of ``run_dir``'s kept weights on each of its val windows."""
    from spikefm.families import get

    return window_losses(get("neds"), run_dir)


def scores(eval_json: Path) -> dict:
    r = json.loads(eval_json.read_text())["results"]
    model = next(k for k in r["encoding"] if k.startswith("neds"))
    out = {"encoding_bps": r["encoding"][model]["bps_pooled"]}
    for name, s in r["decoding"][model].items():
        out[name] = s["accuracy"] if "accuracy" in s else s["r2_single_trial"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ft", type=Path, help="a `spikefm finetune --strategy auto` folder of a NEDS run")
    ap.add_argument("--data", required=True, help="the corpus it was fine-tuned on")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--no-eval", action="store_true",
                    help="score only candidates already evaluated (no new spikefm eval runs)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    summary = json.loads((args.ft / "finetune.json").read_text())
    losses, test = {}, {}
    for name in (*PRETRAINED, "scratch"):
        run = args.ft / "candidates" / name
        losses[name] = per_window_val_loss(run)
        ev = run / f"candidate_eval_{args.split}.json"
        if not ev.is_file() and args.no_eval:
            test[name] = None
            continue
        if not ev.is_file():
            spikefm_cli("eval", str(run), "--data", args.data, "--split", args.split, "--tasks", "encoding,decoding",
                        "--out", str(ev.resolve()), "--quiet", cwd=Path.cwd())
        test[name] = scores(ev)
    one_se, info = one_se_choice({n: losses[n] for n in PRETRAINED})
    auto, se = info["lowest"], info["se_of_difference"]
    res = {"what": __doc__.splitlines()[0], "command": "python benchmarks/neds_candidate_choice.py "
           + shlex.join(sys.argv[1:]), "finetune_kept": summary["strategy"], "auto": auto, "one_se": one_se,
           "val_windows": int(losses["frozen"].size),
           "val_loss_mean": {n: float(v.mean()) for n, v in losses.items()}, "se_of_difference": se,
           "finetune_best_val_loss": {n: c["best_val_loss"] for n, c in summary["candidates"].items()},
           f"scores_{args.split}": test, "machine": machine_info()}
    write_json_atomic(args.out, res)
    print(f"finetune kept {summary['strategy']}; lowest mean val loss {auto}; one-SE rule {one_se}")
    for n in (*PRETRAINED, "scratch"):
        cells = ", ".join(f"{k} {v:.3f}" for k, v in test[n].items()) if test[n] else "not evaluated"
        print(f"  {n:9s} val {losses[n].mean():.3f} (se of diff {se.get(n, float('nan')):.3f}); {args.split}: {cells}")


if __name__ == "__main__":
    main()
