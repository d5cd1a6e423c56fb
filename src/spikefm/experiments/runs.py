"""The job functions of the ranking and scaling studies (see :mod:`spikefm.experiments.jobs`).

Each takes ``(spec, job_dir, root)``, trains or evaluates through the family registry
(:mod:`spikefm.families`), writes its run folder under ``job_dir`` and returns a JSON-able dict
that depends only on ``spec``. ``root`` is the study's jobs folder, where the folders of the jobs
it depends on lie.

- :func:`pretrain`: a model of a masked family on a list of sessions
  (spec ``family, corpus, corpus_sha256, sessions, preset, steps, seed, overrides``).
- :func:`finetune`: a pretrained job's core adapted to a held-out session (frozen core by default:
  new session parameters only), early stopping on that session's validation windows, and
  optionally the benchmark on its test windows (spec ``pretrain, corpus, corpus_sha256, session,
  steps, eval_every, patience, lr, strategy, evaluate, tasks, baselines``).
- :func:`single_session`: the same model trained on the held-out session alone, with the settings
  (and seed) of a pretraining job (spec as :func:`finetune`; the pretraining weights are not used).

``corpus_sha256`` (the sha256 of the corpus's ``manifest.json``; absent in specs of older studies)
is checked before a job reads the corpus: a corpus rebuilt at the same path while a study runs
fails its remaining jobs instead of mixing two corpora in one study.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["pretrain", "finetune", "single_session", "task_scores", "RUN"]

#: Name of the run folder inside a job's folder.
RUN = "run"


def _pretrain_config(spec: dict):
    from spikefm import families

    sessions = list(spec["sessions"])
    overrides = [*spec.get("overrides", []), f"train.steps={int(spec['steps'])}", f"train.seed={int(spec['seed'])}",
                 f"data.sessions={','.join(sessions)}", f"train.device={spec.get('device', 'cpu')}",
                 "train.eval_every=0", "train.ckpt_every=0"]
    return families.run_config(spec["family"], preset=spec["preset"], corpus=spec["corpus"], overrides=overrides,
                               protocol=spec.get("protocol"))


def check_pretrain_spec(spec: dict, executor=None):
    """The settings of a pretraining job, checked in the calling process before any job runs
    (an unknown ``--set`` key or ``--device cuda`` without a GPU failed inside every job);
    returns its run config. Under Ray (``executor``) the GPUs are the cluster's, not this
    machine's: ``--device cuda`` needs jobs that ask Ray for one (``--gpus-per-job``), which the
    executor checks against the cluster."""
    cfg = _pretrain_config(spec)
    if cfg.train.device == "cuda":
        if getattr(executor, "name", "local") == "ray":
            if not getattr(executor, "gpus", 0):
                raise ValueError("--device cuda with --executor ray: give --gpus-per-job (e.g. 1, or 0.25 to share a "
                                 "GPU by four), so that each job runs where Ray has a GPU for it")
            return cfg
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available on this machine; use --device cpu, or "
                             "--executor ray with --gpus-per-job for a cluster's GPUs")
    return cfg


def no_val_windows(cfg, sessions: str | None = None) -> bool:
    """True when the family's ``check_validation_data`` finds no val windows under the run config
    ``cfg`` (its data restricted to ``sessions`` when given); False when it finds some or the family
    does not check. Any other problem of the data settings is raised as the check raises it."""
    import dataclasses

    from spikefm import families
    from spikefm.data.windows import NO_VAL_WINDOWS

    check = getattr(families.get(cfg.family), "check_validation_data", None)
    if check is None:
        return False
    if sessions is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sessions=sessions))
    try:
        check(cfg)
    except ValueError as exc:
        if str(exc) != NO_VAL_WINDOWS:
            raise
        return True
    return False


def check_held_out_validation(cfg, held) -> None:
    """Refuse, before any job runs, held-out sessions without val windows under the pretraining
    run config ``cfg`` (the fine-tunings inherit its data settings): every fine-tuning job failed
    after the pretraining ones, in words naming no session."""
    for h in held:
        try:
            empty = no_val_windows(cfg, h)
        except ValueError:  # another problem of the data settings: the jobs meet it and say it in
            continue  # their own words (a fine-tuning may accept what this config refuses)
        if empty:
            raise ValueError(f"held-out session {h} has no val windows (too few windows for the val share of "
                             "data.split_fractions), and fine-tuning to it validates on them; nothing was run: hold "
                             "out a longer session, or raise the val share (--set data.split_fractions=...)")


def missing_decoding_label(corpus, session: str, tasks, cfg) -> tuple[str, str] | None:
    """The first label of a ``<label>-decoding`` task (behaviour decoding aside) that the
    session's windows cannot carry under the run config ``cfg``, and why, in words that follow
    "the session's ": ``(label, "trials have no label ... (their labels: ...)")``, or that its
    windows are not trial-aligned (they carry none); None when every one can be scored."""
    from spikefm.data.windows import session_label_names

    wanted = [t[: -len("-decoding")] for t in tasks or () if t.endswith("-decoding") and t != "behavior-decoding"]
    if not wanted:
        return None
    data = getattr(cfg, "data", None)
    if not getattr(data, "align", None):
        return wanted[0], "windows are not trial-aligned, so they carry no labels"
    labels = session_label_names(corpus, session, getattr(data, "trial_table", "trials"))
    missing = [label for label in wanted if label not in labels]
    if not missing:
        return None
    return missing[0], f"trials have no label {missing[0]!r} (their labels: {', '.join(labels) or 'none'})"


def _check_corpus(spec: dict) -> None:
    from spikefm.corpus.reader import manifest_sha256

    want = spec.get("corpus_sha256")
    if want is not None and manifest_sha256(spec["corpus"]) != want:
        raise ValueError(f"the corpus {spec['corpus']} changed since this study's jobs were made (its manifest.json "
                         f"sha256 is no longer {want[:12]}...); run the study command again: it makes the jobs "
                         "of the corpus as it is now (give a new --out)")


def pretrain(spec: dict, job_dir: Path, root: Path) -> dict[str, Any]:
    from spikefm import families

    _check_corpus(spec)
    sessions = list(spec["sessions"])
    cfg = _pretrain_config(spec)
    summary = families.train(cfg, job_dir / RUN, progress=False)
    info = json.loads((job_dir / RUN / "config.json").read_text())
    windows = (info.get("family_info") or {}).get("num_windows") or {}
    return {"run": RUN, "sessions": sessions, "steps": int(summary["step"]), "final_loss": float(summary["loss"]),
            "train_windows": {s: int(w.get("train", 0)) for s, w in windows.items()},
            "total_train_windows": int(sum(int(w.get("train", 0)) for w in windows.values()))}


def _adapt(spec: dict, job_dir: Path, root: Path, strategy: str) -> dict[str, Any]:
    from spikefm import families

    _check_corpus(spec)
    source = root / spec["pretrain"] / RUN
    ft = families.finetune(source, spec["corpus"], spec["session"], job_dir / RUN, strategy=strategy,
                           steps=int(spec["steps"]), eval_every=int(spec["eval_every"]),
                           patience=int(spec["patience"]),
                           overrides=[f"optim.lr={spec['lr']}"] if spec.get("lr") else [])
    out: dict[str, Any] = {"run": RUN, "session": spec["session"], "strategy": strategy,
                           "best_val_loss": float(ft["best_val_loss"]), "best_step": int(ft["best_step"]),
                           "stopped_at": int(ft["stopped_at"])}
    if spec.get("evaluate"):
        ev = families.evaluate(job_dir / RUN, spec["corpus"], tasks=spec.get("tasks"), session=spec["session"],
                               baselines=bool(spec.get("baselines", False)))
        from spikefm.fileio import write_json_atomic

        write_json_atomic(job_dir / "results.json", ev)
        res, family = ev["results"], ev["family"]
        out.update(num_test_windows=int(res["num_test_windows"]), num_units=int(res["num_units"]),
                   scores=task_scores(res, "model", family))
        if spec.get("baselines"):
            out["reference"] = {name: task_scores(res, name, family) for name in ("smoothing", "oracle")}
    return out


def finetune(spec: dict, job_dir: Path, root: Path) -> dict[str, Any]:
    return _adapt(spec, job_dir, root, spec.get("strategy", "frozen"))


def single_session(spec: dict, job_dir: Path, root: Path) -> dict[str, Any]:
    return _adapt(spec, job_dir, root, "scratch")


def task_scores(results: dict, who: str, family: str) -> dict[str, float]:
    """One number per task of ``family``'s benchmark result (:func:`spikefm.families.task_scores`)."""
    from spikefm import families

    return families.task_scores(family, results, who)
