"""``spikefm eval RUN_DIR --data CORPUS`` of an NDT run: the neural-prediction benchmark on one
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

import math

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["evaluate_run", "session_windows_for_run", "scored_as_test", "session_truth", "session_truth_rates",
           "pick_session", "transfer_headline", "task_scores", "trained_schemes"]


def pick_session(model: nn.Module, session: str | None) -> str:
    """``session`` if the model knows it; the model's only session when ``session`` is None."""
    known = list(getattr(model, "session_units", {}))
    if session is not None:
        if session not in known:
            raise ValueError(f"the model has no session {session!r}; its sessions: {', '.join(known)}; "
                             "fine-tune it on that session first (spikefm finetune RUN --data "
                             "CORPUS --session ID --out NEW_RUN)")
        return session
    if len(known) != 1:
        raise ValueError(f"the model has {len(known)} sessions; pick one with --session: {', '.join(known)}")
    return known[0]


def _family_info(run_dir: str | Path) -> dict[str, Any]:
    from spikefm.train.runinfo import read_family_info

    return read_family_info(run_dir, what="an NDT")


def trained_schemes(run_dir: str | Path, max_depth: int = 8) -> list[str] | None:
    """The masking schemes a run's weights were trained with: its ``data.schemes`` and those of
    the runs its core came from (``data.init_from``, followed while their folders are there), in
    :data:`~spikefm.families.ndt.masking.SCHEMES` order; None when the run records none. A run
    whose sessions all had fewer than two regions (``session_regions`` in its family info)
    trained no region scheme whatever ``data.schemes`` says: those samples fell back to neuron
    masks (:mod:`~spikefm.families.ndt.masking`)."""
    from spikefm.families.ndt.family import parse_schemes
    from spikefm.families.ndt.masking import SCHEMES
    from spikefm.train.runinfo import read_run_info

    found: set[str] = set()
    seen: set[Path] = set()
    folder = Path(run_dir)
    for _ in range(max_depth):
        try:
            info = read_run_info(folder)
            data = info["config"]["data"]
            schemes = set(parse_schemes(data["schemes"]))
            regions = (info.get("family_info") or {}).get("session_regions")
            if isinstance(regions, dict) and regions and all(isinstance(n, int) and n < 2 for n in regions.values()):
                schemes = (schemes - {"inter_region", "intra_region"}) | {"neuron"}
            found.update(schemes)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            break
        seen.add(folder.resolve())
        source = data.get("init_from")
        if not source or not Path(source).is_dir() or Path(source).resolve() in seen:
            break
        folder = Path(source)
    return [s for s in SCHEMES if s in found] or None


def session_windows_for_run(run_dir: str | Path, corpus, session_id: str, info: dict[str, Any] | None = None):
    """The session's windows, cut with the run's options and carrying the run's saved splits.

    Args:
        run_dir: NDT run directory (its ``config.json`` holds the window options and splits).
        corpus: a :class:`spikefm.corpus.reader.Corpus` holding the session.
        session_id: the session.
        info: the run's family info, when the caller has already read it (None: read it here).

    Returns:
        :class:`spikefm.data.windows.SessionWindows`.
    """
    from spikefm.data.windows import apply_splits, load_all_windows

    info = _family_info(run_dir) if info is None else info
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
    windows = load_all_windows(corpus, [session_id], require_table=False, **opts)  # as training cut them
    return apply_splits(windows, {session_id: splits[session_id]})[session_id]


#: The role of the test windows when ``eval --split val`` scores the val windows: neither scored
#: nor fitted on (the tasks fit their baselines and decoders on "train" and "val", score "test").
UNSCORED = "unscored"


def scored_as_test(windows, split: str):
    """The windows with ``split``'s windows labelled "test" (what the tasks score): for ``"val"``
    the val windows become "test" and the test windows :data:`UNSCORED`, so that nothing fitted
    while scoring them (a decoder, a null, a baseline) sees the test windows; ``"test"`` returns
    them unchanged."""
    if split != "val":
        return windows
    import dataclasses

    roles = np.where(windows.split == "val", "test", np.where(windows.split == "test", UNSCORED, windows.split))
    return dataclasses.replace(windows, split=roles)


def session_truth(corpus, windows) -> dict | None:
    """The synthetic truth dict of the windows' session, or None when no truth file is found
    (:func:`spikefm.eval.oracle.session_truth`)."""
    from spikefm.eval.oracle import session_truth as truth_of

    return truth_of(corpus, windows.session_id)


def session_truth_rates(corpus, windows, truth: dict | None = None) -> np.ndarray | None:
    """(K, T, N) true expected counts for every window, or None when no truth file is found.

    Looks for ``<stem>.truth.npz`` next to the NWB file named in the manifest's provenance, or
    slices ``truth`` (the session's truth dict, already loaded).
    """
    from spikefm.corpus.synth import truth_path
    from spikefm.eval.oracle import truth_windows

    truth = session_truth(corpus, windows) if truth is None else truth
    if truth is None:
        return None
    nwb = corpus.session(windows.session_id)["provenance"]["path"]
    try:
        return truth_windows(truth, windows)
    except ValueError as exc:
        warnings.warn(f"ground truth at {truth_path(nwb)} does not fit the windows ({exc}); no oracle",
                      RuntimeWarning, stacklevel=2)
        return None


def evaluate_run(model: nn.Module, run_dir: str | Path, corpus, *, tasks: Sequence[str] | str | None = None,
                 session: str | None = None, save_predictions: str | Path | None = None,
                 baselines: bool = True, split: str = "test", decode_layer: int = 0,
                 label_classes: dict | None = None, progress: bool = False) -> dict[str, Any]:
    """Benchmark an NDT run on one session's test windows (``spikefm eval`` of an NDT run).

    Args:
        model: the run's NDT (loaded from ``run_dir``).
        run_dir: the run directory (its ``config.json`` holds the window options and splits).
        corpus: the :class:`spikefm.corpus.reader.Corpus` holding the session.
        tasks: task names (a list or comma-separated), None = :data:`DEFAULT_TASKS`.
        session: the session to score; None = the model's only session.
        save_predictions: a folder for ``<task>.npz`` predictions, or None.
        baselines: include the smoothing baseline.
        split: ``"test"`` (the held-out test windows; headline numbers) or ``"val"`` (the run's
            validation windows, for choosing settings without touching the test windows; the
            smoothing baseline is still fitted on the train windows only).
        decode_layer: transformer block (1-based) read by the decoding tasks; 0 = the last.
        label_classes: label -> values its decoding keeps (e.g. ``{"choice": [-1.0, 1.0]}``).
        progress: a progress display of the tasks (and the smoothing baseline) on stderr.

    Returns:
        ``{"family": "ndt", "run_dir", "corpus", "corpus_manifest_sha256", "session_id", "tasks",
        "oracle": bool, "split", "decode_layer" (1-based), "window_bins", "split_fractions" (the
        run's train/val/test fractions), "windows_per_split" (this session's windows in each, named
        by the role they were scored in), "results": run_benchmark(...)}``.
    """
    from spikefm.families.ndt.tasks import DEFAULT_TASKS, benchmark_stages, run_benchmark
    from spikefm.progress import stage_bar

    if split not in ("test", "val"):
        raise ValueError(f"NDT runs are scored on their held-out test windows (split 'test') or, to "
                         f"choose settings, their validation windows ('val'); got split {split!r} (the "
                         "train windows are not held out)")
    session_id = pick_session(model, session)
    if tasks is None:
        task_list = list(DEFAULT_TASKS)
    else:
        task_list = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
        if not task_list:
            raise ValueError(f"tasks must name at least one task, got {tasks!r}")
    n_layers = len(getattr(model, "layers", [])) or 1
    if isinstance(decode_layer, bool) or not isinstance(decode_layer, int) or not 0 <= decode_layer <= n_layers:
        raise ValueError(f"decode_layer must be a block number in 1..{n_layers} (0 = the last), got {decode_layer!r}")
    info = _family_info(run_dir)  # read once: the windows and the recorded split fractions
    windows = scored_as_test(session_windows_for_run(run_dir, corpus, session_id, info), split)
    full = session_truth(corpus, windows)  # read once: every slice below comes from it
    truth = None if full is None else session_truth_rates(corpus, windows, full)
    latents = readout = None
    if truth is not None:
        from spikefm.corpus.synth import truth_readout
        from spikefm.eval.oracle import truth_latent_windows

        latents = truth_latent_windows(full, windows)
        readout = truth_readout(full, windows.unit_index, windows.num_units)
    if torch.cuda.is_available():
        model = model.cuda()
    with stage_bar(benchmark_stages(task_list, baselines), f"scoring {session_id}", enabled=progress) as stages:
        result = run_benchmark(model, windows, tasks=task_list, truth_rates=truth, baselines=baselines,
                               save_predictions=save_predictions, layer=decode_layer - 1 if decode_layer else -1,
                               label_classes=label_classes, truth_latents=latents, truth_readout=readout,
                               trained_schemes=trained_schemes(run_dir), stages=stages)
    return {"family": "ndt", "run_dir": str(Path(run_dir).resolve()), "corpus": str(corpus.path.resolve()),
            "corpus_manifest_sha256": corpus.manifest_hash, "session_id": session_id,
            "tasks": task_list, "oracle": truth is not None, "split": split,
            "decode_layer": decode_layer or n_layers, "window_bins": windows.num_bins,
            "split_fractions": info.get("window_options", {}).get("split_fractions"),
            "windows_per_split": _split_shares(windows), "results": result}


def _split_shares(windows) -> dict[str, int]:
    shares = {name: int(windows.indices(name).size) for name in ("train", "val", "test")}
    unscored = int(np.sum(windows.split == UNSCORED))
    return {**shares, UNSCORED: unscored} if unscored else shares


def transfer_headline(res: dict) -> dict:
    """The numbers of one seed of a transfer study (``res``: ``{"fine-tuned": benchmark,
    "single-session": benchmark}`` of :func:`evaluate_run`'s ``results``): for each task, the
    metric a table would show, per model and reference (``{metric: {column: value or None}}``)."""
    rows: dict[str, dict] = {}
    ft, ss = res["fine-tuned"]["tasks"], res["single-session"]["tasks"]
    for task, e in ft.items():
        if "model" in e:  # prediction tasks: bps_pooled
            row = {"fine-tuned": e["model"]["bps_pooled"],
                   "single-session": ss.get(task, {}).get("model", {}).get("bps_pooled")}
            for base in ("smoothing", "oracle"):
                if base in e:
                    row[base] = e[base]["bps_pooled"]
            diff = e.get("model_minus_smoothing", {}).get("bps_pooled")
            if diff:  # paired on the same test windows, jackknife interval
                row["fine-tuned minus smoothing, 95 % CI low"], row["fine-tuned minus smoothing, 95 % CI high"] = \
                    diff["ci95"]
            if e.get("chunks"):
                low = min(e["chunks"], key=lambda c: c["model"]["bps_pooled"])
                row["fine-tuned min chunk"] = low["model"]["bps_pooled"]
                # that chunk's 95 % interval over the test trials; nan where the jackknife left it
                # undefined (fewer than 3 test windows), as the co-smoothing interval is (not "-": not scored)
                ci = low.get("model_ci95", {}).get("bps_pooled") or (math.nan, math.nan)
                row["fine-tuned min chunk, 95 % CI low"], row["fine-tuned min chunk, 95 % CI high"] = ci
                if all("model_vs_train_null" in c for c in e["chunks"]):
                    row["fine-tuned min chunk, train-fitted null"] = min(
                        c["model_vs_train_null"]["bps_pooled"] for c in e["chunks"])
                s_chunks = ss.get(task, {}).get("chunks") or []
                if s_chunks:
                    row["single-session min chunk"] = min(c["model"]["bps_pooled"] for c in s_chunks)
            rows[f"{task} bps_pooled"] = row
        elif "hidden" in e and "accuracy" in e.get("hidden", {}):  # label decoding
            row = {"fine-tuned": e["hidden"]["accuracy"],
                   "single-session": ss.get(task, {}).get("hidden", {}).get("accuracy"),
                   "chance": e["chance"], "n_scored": e["n_test"] if e["method"] == "holdout" else None}
            if "oracle" in e:
                row["oracle"] = e["oracle"]["accuracy"]
            if "ideal_observer" in e:
                row["ideal observer"] = e["ideal_observer"]["accuracy"]
            rows[f"{task} accuracy (hidden)"] = row
        elif "channels" in e:  # behaviour decoding: mean R2 over channels
            for metric in ("r2", "psth_r2"):
                row = {"fine-tuned": e["hidden"].get("mean", {}).get(metric),
                       "single-session": ss.get(task, {}).get("hidden", {}).get("mean", {}).get(metric),
                       "fine-tuned rates": e["rates"].get("mean", {}).get(metric),
                       "raw-count ridge": e["counts"].get("mean", {}).get(metric)}
                if "oracle" in e:
                    row["oracle"] = e["oracle"].get("mean", {}).get(metric)
                rows[f"{task} {metric} (hidden)"] = row
    return rows


def task_scores(results: dict, who: str = "model") -> dict[str, float]:
    """One number per task of a benchmark result (``run_benchmark``'s dict): ``bps_pooled`` of
    prediction tasks, accuracy from hidden states of label decoding, mean single-trial R² from
    hidden states of behaviour decoding. ``who``: ``model``, or a reference (``smoothing``,
    ``oracle``) where the task has one."""
    out: dict[str, float] = {}
    for task, e in results.get("tasks", {}).items():
        if "model" in e:
            if isinstance(e.get(who), dict) and e[who].get("bps_pooled") is not None:
                out[task] = float(e[who]["bps_pooled"])
        elif who == "model" and isinstance(e.get("hidden"), dict):
            if "accuracy" in e["hidden"]:
                out[task] = float(e["hidden"]["accuracy"])
            elif isinstance(e["hidden"].get("mean"), dict) and e["hidden"]["mean"].get("r2") is not None:
                out[task] = float(e["hidden"]["mean"]["r2"])
        elif who == "oracle" and isinstance(e.get("oracle"), dict):
            v = e["oracle"].get("accuracy", (e["oracle"].get("mean") or {}).get("r2"))
            if v is not None:
                out[task] = float(v)
    return out
