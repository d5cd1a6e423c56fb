"""``spikefm eval RUN_DIR --data CORPUS`` for NDT runs: the neural-prediction benchmark on one
session's held-out test windows.

The windows are cut again from the corpus with the run's own window options and given the exact
train/val/test split recorded in the run's ``config.json`` (``family_info.window_splits``), so the
test windows are those the run never trained on. The smoothing baseline is always included; when
the corpus session comes from ``spikefm synth`` and its ``<stem>.truth.npz`` still lies next to
the NWB file named in the manifest's provenance, the ground-truth oracle is included too.

Example::

    spikefm eval runs/ndt --data corpus --session sub-ibl01_ses-000 --out results.json \\
        --tasks co-smoothing,forward-prediction --save-predictions preds/
"""
from __future__ import annotations

from ..fileio import write_json_atomic

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["run_ndt_eval", "session_windows_for_run", "session_truth_rates", "pick_session"]


def pick_session(model: nn.Module, session: str | None) -> str:
    """``session`` if the model knows it; the model's only session when ``session`` is None."""
    known = list(getattr(model, "session_units", {}))
    if session is not None:
        if session not in known:
            raise ValueError(f"the model has no session {session!r}; its sessions: {', '.join(known)}; "
                             "fine-tune it on that session first (spikefm.finetune)")
        return session
    if len(known) != 1:
        raise ValueError(f"the model has {len(known)} sessions; pick one with --session: {', '.join(known)}")
    return known[0]


def _family_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text())["family_info"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the run's family_info ({exc}); expected an NDT run "
                         "directory written by spikefm train") from None


def session_windows_for_run(run_dir: str | Path, corpus, session_id: str):
    """The session's windows, cut with the run's options and carrying the run's saved splits.

    Args:
        run_dir: NDT run directory (its ``config.json`` holds the window options and splits).
        corpus: a :class:`spikefm.corpus.reader.Corpus` holding the session.
        session_id: the session.

    Returns:
        :class:`spikefm.data.windows.SessionWindows`.
    """
    from ..data.windows import apply_splits, load_all_windows

    info = _family_info(run_dir)
    splits = info.get("window_splits", {})
    opts = dict(info.get("window_options", {}))
    if session_id not in splits or not opts:
        raise ValueError(f"{run_dir}/config.json records no window split for session {session_id!r} "
                         f"(recorded: {sorted(splits)}); evaluate a run trained on that session")
    if "split_fractions" in opts:
        opts["split_fractions"] = tuple(opts["split_fractions"])
    if info.get("corpus_manifest_sha256") not in (None, corpus.manifest_hash):
        warnings.warn(f"{corpus.path} is not the corpus the run was trained on (manifest hash differs); "
                      "windows are matched to the saved splits by start time", RuntimeWarning, stacklevel=2)
    windows = load_all_windows(corpus, [session_id], **opts)
    return apply_splits(windows, {session_id: splits[session_id]})[session_id]


def session_truth_rates(corpus, windows) -> np.ndarray | None:
    """(K, T, N) true expected counts for every window, or None when no truth file is found.

    Looks for ``<stem>.truth.npz`` next to the NWB file named in the manifest's provenance.
    """
    from ..corpus.synth import load_truth, truth_path
    from .ndt_tasks import truth_windows

    try:
        nwb = corpus.session(windows.session_id).get("provenance", {}).get("path")
    except KeyError:
        return None
    if not nwb or not truth_path(nwb).is_file():
        return None
    try:
        return truth_windows(load_truth(nwb), windows)
    except ValueError as exc:
        warnings.warn(f"ground truth at {truth_path(nwb)} does not fit the windows ({exc}); no oracle",
                      RuntimeWarning, stacklevel=2)
        return None


def run_ndt_eval(args, model: nn.Module, corpus) -> int:
    """Benchmark an NDT run on one session's test windows (``spikefm eval`` for ``--model ndt``).

    Args:
        args: parsed ``spikefm eval`` arguments: ``run_dir``, ``data``, ``split`` (windows scored
            are always the run's ``test`` windows), ``out`` (results.json or None), ``tasks``
            (comma-separated or None = the default tasks), ``session`` (or None = the model's only
            session), ``save_predictions`` (folder or None), ``quiet``.
        model: the loaded NDT (``spikefm.load_model``).
        corpus: the :class:`spikefm.corpus.reader.Corpus` of ``args.data``.

    Returns:
        0 (errors raise ValueError).
    """
    from .ndt_tasks import DEFAULT_TASKS, format_benchmark_table, run_benchmark

    session_id = pick_session(model, getattr(args, "session", None))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if getattr(args, "tasks", None) \
        else list(DEFAULT_TASKS)
    if getattr(args, "split", "test") != "test":
        print(f"note: NDT runs are scored on their held-out test windows; --split {args.split} is ignored",
              file=sys.stderr)
    windows = session_windows_for_run(args.run_dir, corpus, session_id)
    truth = session_truth_rates(corpus, windows)
    if torch.cuda.is_available():
        model = model.cuda()
    result = run_benchmark(model, windows, tasks=tasks, truth_rates=truth, baselines=True,
                           save_predictions=getattr(args, "save_predictions", None))
    name = Path(args.run_dir).name or "model"
    print(format_benchmark_table({name: result}))
    if getattr(args, "out", None):
        write_json_atomic(Path(args.out), {
            "run_dir": str(args.run_dir), "corpus": str(args.data),
            "corpus_manifest_sha256": corpus.manifest_hash, "session_id": session_id,
            "tasks": tasks, "oracle": truth is not None, "results": result})
    return 0
