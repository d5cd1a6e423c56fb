"""Transfer study: does pretraining on many sessions help a session the model has never seen?

:func:`transfer` writes ``sessions`` synthetic NWB sessions (one family, so they share latent
dynamics; 30-80 units), builds a corpus whose test split (a 1/``sessions`` share of the tokens,
drawn whole sessions at a time: one session, or two when the first drawn holds fewer tokens than
the share) is held out, pretrains a model of a masked family on the train split, fine-tunes it on
the first held-out session (by id; a second one is in neither pretraining nor scoring, and the
study prints it) on its train trials (early stopping on its validation trials; only the session
parameters when ``freeze_core``), trains the same model from scratch on that session alone (the
single-session baseline) and benchmarks both on the held-out session's test trials beside the
smoothing baseline and the oracle (true rates). :func:`transfer_study` repeats it over seeds.

    spikefm experiment transfer --seeds 1,2,3 --out runs/transfer       # the quickstart's sizes

Every run goes through :mod:`spikefm.families` (train, finetune, evaluate); nothing here knows a
family's internals. Defaults are the quickstart's (:data:`QUICKSTART_SIZES`); the README says how
they were chosen.
"""
from __future__ import annotations

import inspect
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from spikefm.train.config import override_key

__all__ = ["transfer", "transfer_study", "seed_paths", "aggregate_seeds", "QUICKSTART_SIZES", "FAST_SIZES",
           "PROGRESS_FILE"]

#: Sizes of the quickstart's transfer step (pretraining steps: the family's default). Sessions of
#: 300 s (about 100 trials, 20 test trials on the held-out session); longer sessions were measured
#: and not adopted (README, "The NDT defaults on seeds no setting was tuned on": with 600 or
#: 1,200 s the single-session model catches up with the pretrained one).
QUICKSTART_SIZES = dict(sessions=12, duration_s=300.0, finetune_steps=1500)
#: The smallest sizes that still run every stage (used by the tests).
FAST_SIZES = dict(sessions=3, duration_s=40.0, pretrain_steps=60, finetune_steps=40)


#: What ``families.evaluate`` says about the windows it scored, kept beside each benchmark in
#: ``results_ndt.json`` and in ``transfer.json``'s ``per_seed`` (a protocol's settings as run).
EVALUATION_KEYS = ("split", "window_bins", "decode_layer", "split_fractions", "windows_per_split")


DEFAULT_FAMILY = "ndt"  # the study's family when none is named (``--model``)


def _check_int(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def seed_paths(out: str | Path, family: str = DEFAULT_FAMILY) -> dict[str, Path]:
    """Where :func:`transfer` writes, each name carrying the family's (``run_ndt_finetune``,
    ``results_ndt.json`` for the NDT; ``run_neds_finetune`` ... for NEDS): ``nwb`` (the synthetic
    sessions), ``pretrain``, ``finetune``, ``single`` (the runs) and ``results``."""
    out = Path(out)
    return {"nwb": out / f"nwb_{family}", **{k: out / f"run_{family}_{k}" for k in ("pretrain", "finetune", "single")},
            "results": out / f"results_{family}.json"}


def transfer(out: str | Path, *, family: str = DEFAULT_FAMILY, sessions: int = QUICKSTART_SIZES["sessions"],
             duration_s: float = QUICKSTART_SIZES["duration_s"],
             preset: str | None = None, synth_preset: str = "ibl", pretrain_steps: int | None = None,
             finetune_steps: int = QUICKSTART_SIZES["finetune_steps"], eval_every: int | None = None, seed: int = 1,
             strategy: str = "auto", protocol: str | None = None, overrides: Sequence[str] = (),
             tasks: Sequence[str] | None = None, quiet: bool = False, soup: bool | None = None) -> dict:
    """Pretrain on synthetic sessions, fine-tune on a held-out one, benchmark it (module docstring).

    Every setting not given here is the family's default, so this is what a user gets from
    ``spikefm train --model ndt`` + ``spikefm finetune`` + ``spikefm eval``. Writes, named after the
    family (``ndt`` here): ``OUT/nwb_ndt`` (reused when it holds all ``sessions`` recordings; an
    interrupted synthesis is completed), ``OUT/corpus_sessions`` (rebuilt when it is not of those
    recordings), the runs ``OUT/run_ndt_{pretrain,finetune,single}`` and ``OUT/results_ndt.json``
    (:func:`seed_paths`). Runs an interrupted call with the same settings left are continued (a
    finished pretraining or fine-tuning is kept; fine-tunings go on from their last validation;
    ``OUT/.run_ndt_finetune.args.json`` records the fine-tuning arguments); runs made with other
    settings, and what was fine-tuned from a pretraining trained again, are trained anew.

    Args:
        out: study folder.
        family: a masked family with per-session parameters.
        sessions: synthetic sessions (pretraining sessions plus one or two held out), >= 2.
        duration_s: length of each session.
        preset: model size preset (None: the protocol's, else the family's default);
            synth_preset: the synthetic task (``ibl`` or ``motor``).
        pretrain_steps: None = the family's default.
        finetune_steps, eval_every: fine-tuning maximum steps and steps between validations
            (default a sixth of the steps, at least 10).
        seed: the synthetic data's seed.
        strategy: fine-tuning strategy (``auto`` chooses on validation windows).
        protocol: a named protocol of the family (e.g. ``jiang2025``).
        overrides: ``section.key=value`` settings of the pretraining run (kept by fine-tuning).
        tasks: benchmark tasks (None = the family's default tasks).
        quiet: no progress bar.
        soup: whether ``auto`` also ranks the greedy weight average of its pretrained candidates
            (None = the family's ``finetune_soup``; ``spikefm finetune --soup/--no-soup``).

    Returns:
        ``{"fine-tuned": benchmark, "single-session": benchmark, "finetune": summary}``; the two
        benchmarks are written to ``OUT/results_<family>.json``; the table is printed.
    """
    import torch
    from threadpoolctl import threadpool_limits

    from spikefm import families
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize, truth_path
    from spikefm.fileio import write_json_atomic

    # before anything is synthesized or trained
    tasks = _check_arguments(family, sessions, pretrain_steps, finetune_steps, strategy, soup, tasks)
    out = Path(out)
    paths = seed_paths(out, family)
    nwb_dir = paths["nwb"]
    recordings = sorted(nwb_dir.rglob("*.nwb")) if nwb_dir.is_dir() else []
    if len(recordings) > sessions:
        raise ValueError(f"{nwb_dir} holds {len(recordings)} recordings and this call makes {sessions}; nothing was "
                         "changed: use a new folder (--out)")
    if len(recordings) < sessions or not all(truth_path(r).is_file() for r in recordings):
        # none yet, or an interrupted synthesis (each file is written whole): written again (the
        # same files), so that no corpus is built from fewer sessions than asked
        recordings = synthesize(nwb_dir, num_sessions=sessions, seed=seed, duration_s=duration_s,
                                units_range=STUDY_UNITS, preset=synth_preset)
    corpus_dir = (out / "corpus_sessions").absolute()  # runs record it: one spelling, however out is given
    if _corpus_sessions(corpus_dir) != sorted(r.stem for r in recordings):  # a corpus of other recordings
        if (corpus_dir / "manifest.json").is_file():  # (an interrupted build resumes as it is)
            shutil.rmtree(corpus_dir)
        for name in ("pretrain", "finetune", "single"):  # trained on the old corpus
            _remove_run(paths[name])
        build_corpus([str(nwb_dir)], corpus_dir,
                     BuildConfig(test_fraction=1.0 / sessions - 1e-9, seed=0), progress=False)
    corpus = Corpus(corpus_dir)
    held_out, *unused = corpus.session_ids("test")
    cfg = families.run_config(family, preset=preset, corpus=str(corpus_dir), protocol=protocol,
                              overrides=_pretrain_overrides(pretrain_steps, overrides))
    _check_labels(corpus, held_out, tasks, synth_preset, cfg)  # before anything is trained
    _check_validation(cfg, held_out, duration_s)
    print(f"pretraining sessions: {', '.join(corpus.session_ids('train'))}; held out: {held_out}"
          + (f" (also in the test split, in neither pretraining nor scoring: {', '.join(unused)})" if unused else ""))
    runs = {name: paths[name] for name in ("pretrain", "finetune")}
    every = eval_every or _default_eval_every(finetune_steps)
    # runs an interrupted call with these settings left are continued (the pretraining from its
    # last checkpoint, fine-tunings from their last validation, finished ones kept); any other is
    # trained anew, and so is everything made from a pretraining trained anew
    ft_args = {"strategy": strategy, "steps": finetune_steps, "eval_every": every, "patience": 3, "soup": soup}
    args_file = out / f".{paths['finetune'].name}.args.json"
    kept = _same_run(runs["pretrain"], cfg)
    if kept is None:
        _remove_run(runs["pretrain"])
    if not kept or _read_json(args_file) != ft_args:
        for name in ("finetune", "single"):
            _remove_run(paths[name])
    write_json_atomic(args_file, ft_args)  # before the fine-tunings: an interrupted one is theirs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a 2-core laptop
    try:
        with threadpool_limits(1):
            families.train(cfg, runs["pretrain"], progress=False if quiet else f"seed {seed}: pretrain",
                           resume=runs["pretrain"].exists())
            ft = _finished_finetune(runs["finetune"])  # a finished auto folder is refused by finetune
            if ft is None:
                ft = families.finetune(runs["pretrain"], corpus_dir, held_out, runs["finetune"],
                                       progress=not quiet, **ft_args)
            single = Path(ft.get("single_session", {}).get("out_dir", paths["single"]))
            if not _finished_run(single):  # none yet, or its folder gone since: trained (again) here
                single = paths["single"]
            if not _finished_run(single):
                families.finetune(runs["pretrain"], corpus_dir, held_out, single, progress=not quiet,
                                  **{**ft_args, "strategy": "scratch", "soup": None})
            evaluated = {
                "fine-tuned": families.evaluate(runs["finetune"], corpus_dir, tasks=tasks, session=held_out),
                "single-session": families.evaluate(single, corpus_dir, tasks=tasks, session=held_out,
                                                    baselines=False),
            }
    finally:
        torch.set_num_threads(threads)
    print(strategy_line(ft))
    print(families.format_results(evaluated))
    # each benchmark with what it was computed on (session, window bins, decoding block, windows
    # per split), where the family's results do not already say it
    results = {name: {**ev["results"], **{k: ev[k] for k in ("session_id", "num_units", "num_windows", *EVALUATION_KEYS)
                                          if k in ev and k not in ev["results"]}}
               for name, ev in evaluated.items()}
    write_json_atomic(paths["results"], results)  # the strategy summary: run_<family>_finetune/finetune.json
    return {**results, "finetune": {k: v for k, v in ft.items() if k != "history"}}


#: Units per synthetic session of a transfer study (not an option of the study).
STUDY_UNITS = (30, 80)


class NothingToScore(ValueError):
    """The seed's data cannot give what the study needs (a decoding task names a label the held-out
    session's trials lack; sessions too short for validation windows): raised before anything is
    trained, so that a study that has finished no seed is not bound to these settings."""


def strategy_line(ft: dict) -> str:
    """The line a study prints of its fine-tuning summary ``ft``: the kept strategy, its validation
    loss and best step (``unfreeze``'s counted after its frozen stage's; none for a soup)."""
    from spikefm.train.finetune import unfrozen_steps_text

    at = " (an average of candidates: no step)" if ft.get("best_step") is None or ft["strategy"] == "soup" \
        else f" at step {ft['best_step']}{unfrozen_steps_text(ft)}"
    return f"fine-tuning strategy {ft['strategy']}: best val loss {ft['best_val_loss']:.4f}{at}"


def _check_validation(cfg, held_out: str, duration_s: float) -> None:
    """Refuse, before any training, sessions without val windows: the pretraining's (when it
    validates) and the held-out one's (fine-tuning always validates). Following the loop's advice
    (``train.eval_every=0``) made pretraining pass and fine-tuning fail with the same words."""
    from spikefm.experiments.runs import no_val_windows

    for what, sessions, validates in (("the held-out session " + held_out + " has", held_out, True),
                                      ("the pretraining sessions have", None, bool(cfg.train.eval_every))):
        try:
            empty = validates and no_val_windows(cfg, sessions)
        except ValueError as exc:  # another data setting the sessions cannot give (a label or behaviour
            # channel they lack): said before training, as NothingToScore, so the folder stays unbound
            raise NothingToScore(f"{exc}; nothing was trained") from None
        if empty:
            raise NothingToScore(f"{what} no val windows (too few windows for the val share of "
                                 f"data.split_fractions), and the study validates on them; nothing was trained: use "
                                 f"longer sessions (--duration-s, now {duration_s:g}) or raise the val share (--set "
                                 "data.split_fractions=...)")


def _check_labels(corpus, session: str, tasks: Sequence[str] | None, synth_preset: str, cfg) -> None:
    """Refuse ``<label>-decoding`` tasks whose label the session's trial-aligned windows cannot
    carry (:func:`spikefm.data.windows.session_label_names` of the run's trial table; none when
    its windows are not trial-aligned)."""
    from spikefm.experiments.runs import missing_decoding_label

    problem = missing_decoding_label(corpus, session, tasks, cfg)
    if problem is not None:
        label, why = problem
        raise NothingToScore(f"--tasks {label}-decoding: the synthetic {synth_preset!r} sessions' {why}; nothing was "
                             "trained: choose decoding tasks of those labels, or another --synth-preset")


def _corpus_sessions(corpus_dir: Path) -> list[str] | None:
    """The session ids of the corpus at ``corpus_dir``, sorted; None when there is none to read."""
    try:
        return sorted(str(s["session_id"]) for s in _read_json(corpus_dir / "manifest.json")["sessions"])
    except (KeyError, TypeError):
        return None


def _same_run(path: Path, cfg) -> bool | None:
    """Whether the run folder ``path`` holds a finished (True) or unfinished (False) run made with
    exactly ``cfg``'s settings, to be continued; None when it holds none (or another run's)."""
    from spikefm.train.checkpoint import EXPORT_NAME
    from spikefm.train.config import saved_config_differences

    if saved_config_differences(path, cfg) != []:  # None: no run there; a list: what differs
        return None
    return (path / EXPORT_NAME).is_file()


def _pretrain_overrides(pretrain_steps: int | None, overrides: Sequence[str]) -> list[str]:
    """The ``--set`` list of a study's pretraining run (checked, and run, with the same list).
    ``train.steps`` is the study's own (``--pretrain-steps``): a ``--set`` of it ran that many steps
    while the study recorded the other."""
    for item in overrides:
        if isinstance(item, str) and override_key(item) == "train.steps":
            raise ValueError(f"--set {item}: a transfer study's pretraining steps are --pretrain-steps (recorded "
                             "with the study); give --pretrain-steps N instead of this --set")
    return [*([f"train.steps={pretrain_steps}"] if pretrain_steps is not None else []), "train.device=cpu",
            *overrides]


def _remove_run(path: Path) -> None:
    """Remove a run folder this study made (refused, in one line, when it holds other files)."""
    from spikefm.train.checkpoint import check_run_folder

    if path.exists():
        check_run_folder(path)
        shutil.rmtree(path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished_run(path: Path) -> bool:
    """``path`` holds a finished fine-tuning: its best weights exported and its early-stopping record
    written (the loop exports its last step's weights before early stopping puts the best ones in
    place: an interruption there left weights that are not the run's result)."""
    from spikefm.train.finetune import _finished_record

    return _finished_record(path) is not None


def _finished_finetune(path: Path) -> dict | None:
    """The record of a fine-tuning finished in ``path`` (``finetune.json`` beside its weights), or
    None."""
    from spikefm.train.checkpoint import EXPORT_NAME

    record = _read_json(path / "finetune.json")
    return record if isinstance(record, dict) and (path / EXPORT_NAME).is_file() and "strategy" in record else None


def _check_arguments(family: str, sessions, pretrain_steps, finetune_steps, strategy: str, soup,
                     tasks) -> list[str] | None:
    """What :func:`transfer` and :func:`check_study_options` both check: the sizes, the fine-tuning
    strategy and soup, and the task names (returned as a list; a string is split on commas)."""
    from spikefm import families
    from spikefm.train.finetune import check_auto_options

    _check_int("sessions", sessions, 2)
    if pretrain_steps is not None:
        _check_int("pretrain_steps", pretrain_steps, 1)
    _check_int("finetune_steps", finetune_steps, 1)
    check_auto_options(strategy, soup=soup)
    return families.check_tasks(family, tasks)


def _default_eval_every(finetune_steps: int) -> int:
    """Steps between validations of a study's fine-tuning when not given: a sixth, at least 10."""
    return max(10, finetune_steps // 6)


#: :func:`transfer`'s keyword defaults (what a study's settings leave out means).
_TRANSFER_DEFAULTS = {k: p.default for k, p in inspect.signature(transfer).parameters.items()
                      if p.default is not inspect.Parameter.empty}


def _mean_sd(values: list) -> dict | None:
    """{"mean", "sd", "n"} of :func:`spikefm.eval.metrics.mean_sd` (None with no finite value)."""
    from spikefm.eval.metrics import mean_sd

    mean, sd, n = mean_sd(values)
    return None if mean is None else {"mean": mean, "sd": sd, "n": n}


def aggregate_seeds(per_seed: dict) -> dict:
    """Mean ± s.d. over seeds of every headline metric of :func:`transfer_study`'s ``per_seed``
    (``{seed: {"metrics": {metric: {model: value}}}}``): ``{metric: {model: {"mean", "sd", "n"}}}``,
    the sample s.d. (ddof 1; None where ``n`` is 1: one value has no spread, and tables show
    "(1 seed)"), values that are None or not finite left out (a model without that metric on a
    seed, an interval a seed's few test windows leave undefined) and ``n`` counting the rest."""
    names = list(dict.fromkeys(m for r in per_seed.values() for m in r["metrics"]))
    aggregate = {}
    for m in names:
        cols = list(dict.fromkeys(c for r in per_seed.values() for c in r["metrics"].get(m, {})))
        aggregate[m] = {c: _mean_sd([r["metrics"].get(m, {}).get(c) for r in per_seed.values()]) for c in cols}
    return aggregate


#: Settings of a transfer study that do not change its results (a rerun may differ in them).
_NOT_RESULTS = ("seeds", "quiet")
#: The study's record while it runs: its settings, written before any seed runs, and the
#: ``per_seed`` entry of every seed it finished, added as soon as the seed finishes, so that a rerun
#: after an interruption reuses finished seeds and refuses other settings. ``transfer.json`` is
#: only written complete (the report takes it for a finished study); this file is hidden
#: (``spikefm experiment transfer`` accepts a folder of seed_<s>/ folders and transfer.json) and
#: has no ``"study"`` name (the report does not take it for one).
PROGRESS_FILE = ".transfer_progress.json"


def _as_run(settings: dict) -> dict:
    """``settings`` with every default :func:`transfer` resolves written out (for comparing two
    studies' settings only): a setting left out, or None where the family's default applies
    (``soup``, ``pretrain_steps``, ``eval_every``), equals the same value given explicitly."""
    from spikefm import families

    out = {k: v for k, v in _TRANSFER_DEFAULTS.items() if k not in _NOT_RESULTS}
    out.update(settings)
    overrides = [o for o in out.get("overrides") or [] if isinstance(o, str)]
    steps = [o for o in overrides if override_key(o) == "train.steps"]
    if steps:  # a study recorded before --set train.steps was refused: it pretrained that many steps
        out["overrides"] = [o for o in overrides if o not in steps]
        try:
            out["pretrain_steps"] = int(steps[-1].split("=", 1)[1])
        except ValueError:
            pass
    try:
        fam = families.get(out["family"])
    except Exception:  # noqa: BLE001  (an unknown family is refused by the study itself)
        return json.loads(json.dumps(out))
    if out.get("soup") is None:
        out["soup"] = bool(getattr(fam, "finetune_soup", False))
    if out.get("preset") is None:  # what run_config uses (studies before 2026-12-07 recorded "tiny")
        try:
            out["preset"] = families.resolved_preset(out["family"], None, out.get("protocol"))
        except Exception:  # noqa: BLE001  (an unknown protocol is refused by the study itself)
            pass
    if out.get("eval_every") is None and isinstance(out.get("finetune_steps"), int):
        out["eval_every"] = _default_eval_every(out["finetune_steps"])
    if out.get("pretrain_steps") is None:
        try:
            out["pretrain_steps"] = families.run_config(out["family"], preset=out["preset"], protocol=out["protocol"],
                                                        overrides=list(out.get("overrides") or [])).train.steps
        except Exception:  # noqa: BLE001  (bad settings are refused by the study itself)
            pass
    return json.loads(json.dumps(out))  # compared as JSON (tuples are lists there)


def _finished_seeds(out: Path, settings: dict) -> dict[int, dict]:
    """Seeds an earlier run of this study finished (in ``OUT/transfer.json`` or, when it was
    interrupted, ``OUT/.transfer_progress.json``, and with the seed's ``results_<family>.json``),
    as their ``per_seed`` entries; a study made with other settings, finished or not, is refused,
    since its seeds' runs would be replaced or, worse, reused (recordings and corpora are)."""
    from spikefm.experiments.jobs import refuse_other_settings

    settings = _as_run({k: v for k, v in settings.items() if k not in _NOT_RESULTS})
    per_seed = {}
    # the progress record binds only once a seed has made something (a study stopped by its own
    # checks, e.g. an unknown task, made nothing: the corrected command must not be refused)
    started = any(p.is_dir() and any(p.iterdir()) for p in out.glob("seed_*"))
    for name in ("transfer.json", PROGRESS_FILE):  # every record is checked before one is used
        if name == PROGRESS_FILE and not started:
            continue
        try:
            old = json.loads((out / name).read_text())
            old_settings = _as_run({k: v for k, v in old["settings"].items() if k not in _NOT_RESULTS})
            entries = dict(old["per_seed"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # none, or a damaged record: its seeds run again
        refuse_other_settings(out, old_settings, settings, kind="a transfer study", lost="its runs",
                              rerun="reuses its finished seeds")
        per_seed.update(entries)
    family = settings.get("family", DEFAULT_FAMILY)
    return {int(s): entry for s, entry in per_seed.items()
            if seed_paths(out / f"seed_{s}", family)["results"].is_file()}


def check_study_options(out: Path, options: dict) -> dict:
    """What a transfer study checks before its folder is made or anything is synthesized (the
    first seed's recordings bind the folder to the study's settings, so a study stopped later by
    a bad setting refused the corrected command): the folder (new, empty or a transfer study's),
    the option names, the family (fine-tuning, a headline, evaluate's benchmark options), the
    pretraining settings, the tasks, the fine-tuning strategy and soup, and the sizes. Returns
    ``options`` with ``tasks`` as a list (a string is split on commas).

    Raises:
        TypeError: an option :func:`transfer` does not take.
        ValueError: the first bad setting, in one line.
    """
    from spikefm import families
    from spikefm.corpus.synth import PRESETS
    from spikefm.experiments.jobs import check_study_folder, name_list

    unknown = sorted(set(options) - set(_TRANSFER_DEFAULTS) - {"seed", "out"})
    if unknown or "seed" in options:
        bad = unknown[0] if unknown else "seed"
        raise TypeError(f"transfer_study() got an unexpected option {bad!r}; it takes seeds=[...] and the "
                        f"options of transfer(): {', '.join(k for k in _TRANSFER_DEFAULTS if k != 'seed')}")
    check_study_folder(out, ("seed_*", "transfer.json"), kind="a transfer study's",
                       fix="give a new or empty folder (--out)")
    opts = {**_TRANSFER_DEFAULTS, **options}
    family = opts["family"]
    families.require_finetuning(family, "a transfer study needs", also=("transfer_headline",))
    fam = families.get(family)
    params = inspect.signature(fam.evaluate).parameters
    lacking = [k for k in ("tasks", "session", "baselines") if k not in params]
    if lacking and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"the {family!r} family's evaluate() takes no {', '.join(lacking)}, which a transfer "
                         "study passes to score its runs (the masked families' benchmark options); choose "
                         "a family that takes them (--model)")
    if not callable(getattr(fam, "transfer_headline", None)):
        families.transfer_headline(family, {})  # its one-line refusal
    tasks = _check_arguments(family, opts["sessions"], opts["pretrain_steps"], opts["finetune_steps"], opts["strategy"],
                             opts["soup"], None if opts["tasks"] is None else
                             name_list(opts["tasks"], "--tasks", "co-smoothing,forward-prediction"))
    if opts["eval_every"] is not None:
        _check_int("eval_every", opts["eval_every"], 1)
    from spikefm.corpus.synth import BIN_MS, MAX_SESSION_CELLS, check_duration

    duration = opts["duration_s"]
    check_duration(duration)  # as the synthesis would, but before the folder is made
    if STUDY_UNITS[1] * round(duration * 1000.0 / BIN_MS) > MAX_SESSION_CELLS:
        longest = MAX_SESSION_CELLS // STUDY_UNITS[1] * BIN_MS / 1000.0
        raise ValueError(f"--duration-s {duration:g}: a transfer study's synthetic sessions have up to "
                         f"{STUDY_UNITS[1]} units, so at most {longest:,.0f} s each fit in memory; give a shorter "
                         "--duration-s")
    if opts["synth_preset"] not in PRESETS:
        raise ValueError(f"synth_preset must be one of {', '.join(PRESETS)} (--synth-preset), got "
                         f"{opts['synth_preset']!r}")
    cfg = families.run_config(family, preset=opts["preset"], corpus=str(out), protocol=opts["protocol"],
                              overrides=_pretrain_overrides(opts["pretrain_steps"], opts["overrides"]))
    from spikefm.train.dist import resolve_device_type

    resolve_device_type(cfg.train.device, option="--set train.device")  # cuda without a GPU: now, not after synthesis
    return {**options, "tasks": tasks} if tasks is not None else options


def transfer_study(out: str | Path, *, seeds: Sequence[int] = (1, 2, 3), command: str | None = None,
                   **options) -> dict:
    """:func:`transfer` on several synthetic datasets (one per seed), summarised in
    ``OUT/transfer.json``: per seed and as mean ± s.d. over seeds, every task's headline metric
    for the fine-tuned model, the single-session model and the baselines. The settings are
    recorded in ``OUT/.transfer_progress.json`` before any seed runs and each seed's entry as soon
    as it finishes (:data:`PROGRESS_FILE`), so a rerun of an interrupted study reuses its finished
    seeds and continues the others, and a rerun with other settings is refused, changing nothing.

    Args:
        out: study folder; seed ``s`` runs in ``OUT/seed_<s>``.
        seeds: synthetic-data seeds (report seeds never used to choose settings).
        command: the command line to record.
        **options: passed to :func:`transfer`.

    Returns:
        The summary written to ``OUT/transfer.json``.
    """
    from spikefm.experiments.jobs import seed_list
    from spikefm.fileio import folder_lock

    family = options.get("family", DEFAULT_FAMILY)
    seeds = seed_list(seeds)
    out = Path(out)
    options = check_study_options(out, options)  # before the folder is made (and its settings bound)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    command = command or " ".join(sys.argv)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, what="study"):  # a second study into the same folder would lose seeds
        return _run_study(out, seeds, settings, command, options, family)


def _run_study(out: Path, seeds: list[int], settings: dict, command: str, options: dict, family: str) -> dict:
    from spikefm import families
    from spikefm.fileio import write_json_atomic
    from spikefm.tables import render_table
    from spikefm.train.runinfo import machine_info

    done = _finished_seeds(out, settings)
    # the settings before any seed runs; every finished seed stays recorded (a rerun with fewer
    # seeds does not forget the others)
    progress = {"command": command, "settings": {"seeds": seeds, **settings},
                "per_seed": {str(s): entry for s, entry in done.items()}}
    write_json_atomic(out / PROGRESS_FILE, progress)
    per_seed = {}
    for seed in seeds:
        if seed in done:  # a rerun does no finished work again (a new seed adds to the study)
            per_seed[seed] = done[seed]
            print(f"seed {seed}: finished in an earlier run of this study ({out / f'seed_{seed}'}); reused")
            continue
        t0 = time.perf_counter()
        try:
            res = transfer(out / f"seed_{seed}", seed=seed, **options)
        except NothingToScore:
            if not progress["per_seed"]:  # nothing trained: the folder binds no settings (the corrected
                shutil.rmtree(out / f"seed_{seed}", ignore_errors=True)  # command is not refused)
            raise
        ft = res["fine-tuned"]
        tests = ft.get("num_test_windows")
        if tests is None and isinstance(ft.get("num_windows"), dict):  # a family that counts per split
            tests = ft["num_windows"].get("test")
        per_seed[seed] = {"session_id": ft.get("session_id"), "num_units": ft.get("num_units"),
                          "num_test_windows": tests, "strategy": res["finetune"].get("strategy"),
                          "soup_tried": "soup" in res["finetune"],  # auto ranked the weight average
                          "evaluation": {k: res["fine-tuned"][k] for k in EVALUATION_KEYS if k in res["fine-tuned"]},
                          "metrics": families.transfer_headline(family, res), "wall_s": round(time.perf_counter() - t0, 1)}
        progress["per_seed"][str(seed)] = per_seed[seed]
        write_json_atomic(out / PROGRESS_FILE, progress)  # an interruption after this reuses the seed
    aggregate = aggregate_seeds(per_seed)
    rows = []
    for m, cols in aggregate.items():
        for c, v in cols.items():
            if v is not None and c != "n_scored":
                rows.append([m, c, f"{v['mean']:.4f} ± {v['sd']:.4f}" if v["n"] > 1 else f"{v['mean']:.4f} (1 seed)"])
    print(render_table(["metric", "model", f"mean ± s.d. over seeds {','.join(map(str, seeds))}"], rows,
                       align="<<>"))
    summary = {"study": "transfer", "command": command,
               "settings": {"seeds": seeds, **settings},
               "per_seed": per_seed, "mean_sd": aggregate, "machine": machine_info()}
    write_json_atomic(out / "transfer.json", summary)
    return summary
