"""Do averaged weights of `spikefm finetune`'s candidates beat the one `auto` keeps?

`spikefm finetune --strategy auto` trains three candidates from the same pretrained run and the
same initial session parameters (``frozen``, ``unfreeze``, ``full``) and keeps the one with the
lowest validation loss. A weight average of fine-tuned models that share their start (a "model
soup", Wortsman et al. 2022) is one model of the same shape, and often scores better than any of
its ingredients. This measures it on finished fine-tunings, for any family with per-session
parameters:

* ``uniform``: the mean of the three candidates' weights;
* ``greedy``: the candidates in order of validation loss, each added to the average only if the
  validation loss of the average falls (what ``spikefm finetune --soup`` builds).

Each soup is written as a run folder next to the candidates (``FT/soups/<name>/``: the lowest
candidate's config and files, the averaged weights), so ``spikefm eval FT/soups/NAME`` scores it
exactly as the fine-tuned run is scored. Choices use validation windows only; ``--split`` picks
the windows ``spikefm eval`` scores afterwards (test for the measurement on tuning seeds),
``--models`` which runs (default: the kept run, the three candidates and both soups; an
evaluation already in ``FT/soups/eval_NAME_SPLIT.json`` is reused), ``--tasks`` the evaluation's
tasks. The JSON has each fine-tuning's validation losses, soups and scores, and ``summary``: mean
± s.d. over the fine-tunings of the kept run's and the greedy soup's headline numbers (NEDS:
encoding, decoding; NDT: co-smoothing, the walk and its weakest chunk).

    python benchmarks/finetune_soup.py FT_DIR [FT_DIR ...] --data CORPUS --out JSON [--split test]
    python benchmarks/finetune_soup.py SEED1/corpus::SEED1/ft_documented SEED5/corpus::SEED5/ft_documented \\
        --models kept,greedy --out JSON

``CORPUS::FT_DIR`` pairs give each fine-tuning its own corpus (the seed folders of
``benchmarks/neds_documented_commands.py``); the corpus given is used wherever the run's config
says its corpus was.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from spikefm.fileio import write_json_atomic  # noqa: E402

CANDIDATES = ("frozen", "unfreeze", "full")


def soups(ft_dir: Path, corpus: Path) -> dict:
    """Build the uniform and greedy soups of one finished ``auto`` fine-tuning (the greedy one is
    what ``spikefm finetune --soup`` builds: :func:`spikefm.train.finetune.greedy_soup`); their
    validation losses beside the candidates'."""
    from safetensors.torch import load_file

    from spikefm import families
    from spikefm.train.finetune import _validation_loss, average_weights, greedy_soup, write_averaged_run
    from spikefm.train.runinfo import load_run_config

    ft = json.loads((ft_dir / "finetune.json").read_text())
    cand = {n: ft_dir / "candidates" / n for n in CANDIDATES}
    family = families.family_of_run(cand["frozen"])
    cfgs = {n: load_run_config(p, model_cls=family.model_config_cls, data_cls=family.data_config_cls)
            for n, p in cand.items()}
    # the corpus given here, wherever the run's config says it was (it may be a relative path)
    cfgs = {n: dataclasses.replace(c, data=dataclasses.replace(c.data, corpus=str(corpus.resolve())))
            for n, c in cfgs.items()}
    states = {n: load_file(str(p / "model.safetensors")) for n, p in cand.items()}
    val = {n: _validation_loss(family, cfgs[n], states[n]) for n in CANDIDATES}
    best = min(CANDIDATES, key=val.get)
    out = {"kept_by_auto": ft["strategy"], "candidate_val_loss": val,
           "recorded_val_loss": {n: ft["candidates"][n]["best_val_loss"] for n in CANDIDATES}}
    uniform = average_weights([states[n] for n in CANDIDATES])
    out["uniform"] = {"ingredients": list(CANDIDATES), "val_loss": _validation_loss(family, cfgs[best], uniform)}
    write_averaged_run(cand[best], ft_dir / "soups" / "uniform", uniform,
                       {"best_val_loss": out["uniform"]["val_loss"], "weights_average_of": list(CANDIDATES)})
    soup = greedy_soup(states, val, lambda st: _validation_loss(family, cfgs[best], st))
    out["greedy"] = {k: soup[k] for k in ("ingredients", "val_loss", "tried")}
    write_averaged_run(cand[best], ft_dir / "soups" / "greedy", soup["state"],
                       {"best_val_loss": soup["val_loss"], "weights_average_of": soup["ingredients"]})
    return out


def _eval(run: Path, corpus: Path, split: str, out: Path, cwd: Path, tasks: str | None = None) -> dict:
    """``spikefm eval RUN --data CORPUS --split SPLIT`` (skipped when ``out`` is there), run in the
    folder the fine-tuning ran in."""
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "spikefm.cli", "eval", str(run.resolve()), "--data",
                        str(corpus.resolve()), "--split", split, "--out", str(out.resolve()), "--quiet",
                        *(["--tasks", tasks] if tasks else [])],
                       check=True, stdout=subprocess.DEVNULL, cwd=cwd)
    return json.loads(out.read_text())["results"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ft_dirs", nargs="+", help="finished `spikefm finetune --strategy auto` folders "
                                               "(or CORPUS::FT_DIR)")
    ap.add_argument("--data", type=Path, default=None, help="the corpus the fine-tunings used")
    ap.add_argument("--split", choices=["val", "test"], default="test", help="windows spikefm eval scores")
    ap.add_argument("--no-eval", action="store_true", help="build and validate the soups only")
    ap.add_argument("--tasks", default=None, help="spikefm eval --tasks (default: the family's own)")
    ap.add_argument("--models", default="kept,frozen,unfreeze,full,uniform,greedy",
                    help="what spikefm eval scores (comma-separated; default all): kept (auto's choice), "
                         "the candidates, the soups")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    known = ("kept", *CANDIDATES, "uniform", "greedy")
    unknown = [m for m in args.models.split(",") if m not in known]
    if unknown:
        ap.error(f"--models: unknown {unknown[0]!r}; expected some of {', '.join(known)}")
    results = {}
    for item in args.ft_dirs:
        corpus, sep, ft = item.partition("::")
        corpus, ft = (Path(corpus), Path(ft)) if sep else (args.data, Path(item))
        if corpus is None:
            ap.error(f"{item}: give --data or CORPUS::FT_DIR")
        r = soups(ft, corpus)
        if not args.no_eval:
            r["scores"] = {}
            runs = {"kept": ft, **{n: ft / "candidates" / n for n in CANDIDATES},
                    "uniform": ft / "soups" / "uniform", "greedy": ft / "soups" / "greedy"}
            for name in args.models.split(","):
                if name == "greedy" and len(r["greedy"]["ingredients"]) == 1:
                    r["scores"][name] = f"the weights of {r['greedy']['ingredients'][0]} (no average validated lower)"
                    continue
                r["scores"][name] = _eval(runs[name], corpus, args.split,
                                          ft / "soups" / f"eval_{name}_{args.split}.json", ft.resolve().parent,
                                          args.tasks)
        results[str(ft)] = r
        print(ft, json.dumps({k: r[k] for k in ("kept_by_auto", "candidate_val_loss")}),
              "uniform", round(r["uniform"]["val_loss"], 4), "greedy", r["greedy"]["ingredients"],
              round(r["greedy"]["val_loss"], 4), flush=True)
    summary = _summary(results)
    if summary:
        for k, v in summary.items():
            print(f"{k}: kept {v['kept_mean']:.4f} ± {v['kept_sd']:.4f}, greedy soup {v['greedy_mean']:.4f} ± "
                  f"{v['greedy_sd']:.4f} (mean change {v['mean_change']:+.4f} over {v['n']} fine-tunings)")
    write_json_atomic(args.out, {"what": __doc__.splitlines()[0], "split": args.split,
                                 "command": "python benchmarks/finetune_soup.py " + " ".join(sys.argv[1:]),
                                 "results": results, "summary": summary, "machine": machine_info()})


def _headline(res: dict) -> dict | None:
    """The headline numbers of one ``spikefm eval`` result: NEDS (encoding bits/spike, each label's
    accuracy, each continuous channel's single-trial R²) or NDT (co-smoothing and the walk's
    bits/spike, its weakest chunk); None for anything else."""
    if "encoding" in res and "decoding" in res:
        out = {"encoding_bps": res["encoding"]["neds"]["bps_pooled"]}
        for name, v in res["decoding"]["neds"].items():
            out[name] = v["accuracy"] if "accuracy" in v else v["r2_single_trial"]
        return out
    tasks = res.get("tasks", {})
    if "co-smoothing" in tasks:
        out = {"co_smoothing_bps": tasks["co-smoothing"]["model"]["bps_pooled"]}
        walk = tasks.get("forward-prediction-walk")
        if walk:
            out["walk_bps"] = walk["model"]["bps_pooled"]
            out["walk_min_chunk_bps"] = min(c["model"]["bps_pooled"] for c in walk["chunks"])
        return out
    return None


def _summary(results: dict) -> dict:
    """Mean ± s.d. over the fine-tunings of the kept run's and the greedy soup's headline numbers
    (:func:`_headline`); a greedy soup of one ingredient has its weights, so its scores. Empty
    when a result was not scored or is of another kind."""
    import numpy as np

    rows = []
    for r in results.values():
        sc = r.get("scores", {})
        kept = sc.get("kept")
        if not isinstance(kept, dict) or _headline(kept) is None:
            return {}
        g = sc.get("greedy", kept)
        rows.append((_headline(kept), _headline(kept if isinstance(g, str) else g)))
    out = {}
    for k in rows[0][0]:
        a = np.array([kept[k] for kept, _ in rows])
        b = np.array([g[k] for _, g in rows])
        out[k] = {"n": len(a), "kept_mean": float(a.mean()), "kept_sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                  "greedy_mean": float(b.mean()), "greedy_sd": float(b.std(ddof=1)) if len(b) > 1 else 0.0,
                  "mean_change": float((b - a).mean())}
    return out


if __name__ == "__main__":
    main()
