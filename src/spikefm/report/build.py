"""``spikefm report PATH``: decide what PATH is and assemble its report.

PATH is one of

- a corpus folder (``manifest.json``): the corpus section;
- a run folder (``config.json`` + ``metrics.jsonl``, any family): the training section, and the
  run's corpus when it is still where the run found it;
- an evaluation results JSON (``spikefm eval --out``, the quickstart's ``results_*.json``): the
  evaluation section, with saved predictions (``--predictions DIR``, or a ``predictions/`` or
  ``<stem>_predictions/`` folder beside the JSON) and a ``generated.npz`` beside it;
- a study folder (``spikefm experiment transfer --out DIR``: ``DIR/transfer.json``) or a study
  JSON (an object with a ``"study"`` name): the study section and each seed's results.

Every report ends with a provenance section.
"""
from __future__ import annotations

import json

import warnings
from pathlib import Path
from typing import Any

from spikefm.fileio import first_line
from spikefm.report.page import Page
from spikefm.report.provenance import Provenance
from spikefm.report.training import read_json

KINDS = ("corpus", "run", "evaluation", "study")
_EXPECTED = ("expected a corpus folder (manifest.json), a run folder (config.json + metrics.jsonl), "
             "an evaluation results JSON (spikefm eval --out) or a study folder or JSON "
             "(spikefm experiment transfer / rank-sessions / scaling --out DIR: DIR/transfer.json, "
             "ranking.json, scaling.json)")


def report_kind(path: str | Path) -> str:
    """``"corpus"``, ``"run"``, ``"evaluation"`` or ``"study"``; ValueError (one line) otherwise."""
    from spikefm.report.evaluation import parse_evaluation

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist; {_EXPECTED}")
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return "corpus"
        if (p / "config.json").is_file() and (p / "metrics.jsonl").is_file():
            return "run"
        if _study_json(p) is not None:
            _refuse_unfinished_scaling(p)
            return "study"
        _refuse_unfinished_study(p)
        from spikefm.train.runinfo import unfinished_finetune

        unfinished = unfinished_finetune(p)
        if unfinished is not None:
            raise ValueError(unfinished)
        found = ", ".join(sorted(c.name for c in p.iterdir())[:8]) or "nothing"
        raise ValueError(f"{p} is a folder holding {found}; {_EXPECTED}")
    if p.suffix.lower() == ".npz":  # generated spikes or saved predictions: shown beside what made them
        raise ValueError(f"{p} is an .npz (spikefm generate's, or a prediction of eval --save-predictions), not a "
                         "results or study JSON; show it beside its run or results: spikefm report RUN_OR_RESULTS "
                         f"--generated {p} (predictions: --predictions DIR)")
    obj = read_json(p, "a results or study JSON")
    if isinstance(obj, dict) and "study" in obj:
        return "study"
    if parse_evaluation(obj) is not None:
        return "evaluation"
    keys = ", ".join(list(obj)[:6]) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{p} holds no evaluation results or study (found {keys}); {_EXPECTED}")


def _refuse_unfinished_study(p: Path) -> None:
    """A one-line error for a study folder whose study has not finished (interrupted, or still
    running): its summary JSON is written last, so there is nothing to report yet."""
    from spikefm.experiments.transfer import PROGRESS_FILE

    progress = p / PROGRESS_FILE
    if progress.is_file():
        try:
            command = json.loads(progress.read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            command = None
        run = f" ({command})" if isinstance(command, str) and command else ""
        raise ValueError(f"{p} is a transfer study that has not finished (no transfer.json yet): rerun the command "
                         f"that made it{run}, which reuses its finished seeds, then report the folder")
    if (p / "jobs").is_dir():
        raise ValueError(f"{p} is a rank-sessions or scaling study that has not finished (no ranking.json or "
                         "scaling.json yet): rerun the command that made it, which reuses its finished jobs, then "
                         "report the folder")


def _refuse_unfinished_scaling(p: Path) -> None:
    """A scaling study writes its ranking's ``ranking.json`` just before ``scaling.json``: a folder
    stopped between the two holds a finished ranking of an unfinished scaling study."""
    ranking = p / "ranking.json"
    if (p / "scaling.json").exists() or not ranking.is_file():
        return
    obj = read_json(ranking, "a study JSON")
    if isinstance(obj, dict) and obj.get("part_of") == "scaling":
        command = obj.get("command")
        run = f" ({command})" if isinstance(command, str) and command else ""
        raise ValueError(f"{p} is a scaling study that has not finished (its ranking.json is there, no scaling.json "
                         f"yet): rerun the command that made it{run}, which reuses its finished jobs, then report "
                         f"the folder; or report the ranking alone: spikefm report {ranking}")


#: Study files shown first, in this order, when a folder holds several (a scaling study's folder
#: holds its ranking too); any other study JSON follows alphabetically.
_STUDY_ORDER = ("transfer.json", "scaling.json", "ranking.json")


def _study_jsons(folder: Path) -> list[Path]:
    """Every study JSON (an object with a ``"study"`` name) directly in ``folder``."""
    rank = {name: i for i, name in enumerate(_STUDY_ORDER)}
    found = []
    for p in sorted(folder.glob("*.json"), key=lambda q: (rank.get(q.name, len(rank)), q.name)):
        try:
            obj = read_json(p, "a study JSON")
        except ValueError:
            if p.name in rank:  # the study's own file, damaged: say so (not "no study here")
                raise
            continue
        if isinstance(obj, dict) and "study" in obj:
            found.append(p)
    return found


def _study_json(folder: Path) -> Path | None:
    found = _study_jsons(folder)
    return found[0] if found else None


def _find_predictions(results: Path) -> Path | None:
    for cand in (results.parent / f"{results.stem}_predictions", results.parent / "predictions"):
        if cand.is_dir() and any(cand.glob("*.npz")):
            return cand
    return None


def _windows_or_note(sec, meta: dict[str, Any], run_dir=None, corpus=None, session=None):
    """The test windows for conditions and regions, or None with a note saying why not."""
    from spikefm.report.evaluation import load_test_windows

    run_dir, corpus, session = run_dir or meta.get("run_dir"), corpus or meta.get("corpus"), \
        session or meta.get("session_id")
    if not (run_dir and corpus and session):
        sec.note("conditions and regions: the results name no run, corpus and session to cut the "
                 "test windows from")
        return None
    try:  # the windows the evaluation scored: its test windows, or val ones (eval --split val)
        return load_test_windows(run_dir, corpus, session, str(meta.get("split") or "test"))
    except (ValueError, KeyError, OSError) as exc:
        sec.note(f"conditions and regions unavailable: {first_line(exc)}")
        return None


def add_evaluation(page: Page, results: str | Path, prov: Provenance, *, predictions: str | Path | None = None,
                   generated: str | Path | None = None, title: str | None = None,
                   windows_from: tuple | None = None, src: str | None = None) -> None:
    """Add the evaluation section of one results JSON (see the module docstring).

    ``windows_from``: (run_dir, corpus, session) to cut the test windows from when the JSON does
    not name them (the quickstart's ``results_ndt.json``). ``src``: the source name its table
    cells carry (default: the file's name).
    """
    from spikefm.report.evaluation import evaluation_section, parse_evaluation

    results = Path(results)
    obj = read_json(results, "an evaluation results JSON")
    ev = parse_evaluation(obj, src=src or results.name)
    if ev is None:
        raise ValueError(f"{results} holds no evaluation results; {_EXPECTED}")
    if predictions is not None and ev.family != "ndt":
        raise ValueError(f"--predictions applies to an NDT evaluation (spikefm eval --save-predictions DIR); "
                         f"{results} is a {ev.family!r} evaluation, which saves none: leave --predictions out")
    if generated is not None and ev.family != "ar":
        raise ValueError(_GENERATED_ONLY_AR.format(what=f"{results} is a {ev.family!r} evaluation"))
    if predictions is None and ev.family == "ndt":  # spikefm eval --save-predictions: NDT runs
        predictions = _find_predictions(results)
    if generated is None and ev.family == "ar" and (results.parent / "generated.npz").is_file():
        generated = results.parent / "generated.npz"
    label = {"ar": "cross-entropy", "ndt": "neural prediction",
             "neds": "encoding, decoding and regions"}.get(ev.family, ev.family)
    sec = evaluation_section(page, ev, title=title or f"Evaluation ({label}): {results.name}")
    if predictions is not None:
        from spikefm.report.evaluation import predictions_panel

        windows = _windows_or_note(sec, ev.meta, *(windows_from or ()))
        predictions_panel(sec, ev, Path(predictions), windows)
    elif ev.family == "ndt":
        sec.note("per-neuron histograms, rasters and PSTHs need saved predictions: spikefm eval "
                 "--save-predictions DIR, then spikefm report RESULTS.json --predictions DIR")
    if generated is not None:
        from spikefm.report.evaluation import generation_panel

        generation_panel(sec, Path(generated))
    other = obj.get("compare") if isinstance(obj, dict) else None
    if ev.family == "ar" and isinstance(other, dict):  # spikefm eval --compare-run: the second run's table
        ev2 = parse_evaluation(other, src=src or results.name)
        if ev2 is not None:
            ev2.where = {k: ("compare", *v) for k, v in ev2.where.items()}
            sec2 = evaluation_section(page, ev2, title=f"Evaluation (cross-entropy), compared run: "
                                                       f"{other.get('run_dir', '?')}")
            sec2.note(f"scored on {other.get('held_out', 'its split')} of {other.get('corpus', '?')}, beside "
                      f"{ev.meta.get('held_out', 'the split')} of {ev.meta.get('corpus', '?')} above")
    prov.add(f"results {results}", [(k, ev.meta.get(k)) for k in
                                    ("family", "run_dir", "corpus", "corpus_manifest_sha256", "session_id",
                                     "split", "seq_len", "decode_layer", "window_bins")])


_GENERATED_ONLY_AR = ("--generated shows spikefm generate's samples beside an autoregressive run or its evaluation; "
                      "{what}, which generates none: leave --generated out")
_PREDICTIONS_ONLY_NDT = ("--predictions applies to an NDT evaluation results JSON (spikefm eval --save-predictions "
                         "DIR); {what}: report the results JSON with --predictions, or leave it out")


def _check_page_options(path: Path, kind: str, predictions, generated) -> None:
    """--predictions and --generated where they show something (an NDT evaluation; an AR run or
    evaluation), refused elsewhere instead of being silently dropped."""
    what = {"corpus": f"{path} is a corpus", "study": f"{path} is a study"}.get(kind)
    if kind == "run":
        family = read_json(path / "config.json", "a run's config.json").get("family")
        what = f"{path} is a training run" + (f" ({family})" if isinstance(family, str) else "")
        if generated is not None and family != "ar":
            raise ValueError(_GENERATED_ONLY_AR.format(what=f"{path} is a {family!r} run"))
    if what is None:  # an evaluation: add_evaluation checks both against its family
        return
    if predictions is not None:
        raise ValueError(_PREDICTIONS_ONLY_NDT.format(what=what))
    if generated is not None and kind != "run":
        raise ValueError(_GENERATED_ONLY_AR.format(what=what))


#: What an evaluation of each family is called in a page's title.
_FAMILY_TITLES = {"ar": "autoregressive", "ndt": "NDT", "neds": "NEDS"}


def page_title(path: Path, kind: str) -> str:
    """What the report is, then the path's name: ``NEDS evaluation: neds.json``, ``rank-sessions
    study: rank``, ``fine-tuning: ft``, ``training run: run_ndt``, ``corpus: corpus``."""
    from spikefm.report.evaluation import parse_evaluation

    name = path.name or str(path)
    if kind == "evaluation":
        ev = parse_evaluation(read_json(path, "an evaluation results JSON"))
        family = ev.family if ev is not None else ""
        if ev is not None and isinstance(ev.meta.get("family"), str):  # a plugin's results in a built-in's shape
            family = ev.meta["family"]
        return f"{_FAMILY_TITLES.get(family, family)} evaluation: {name}".strip()
    if kind == "study":
        files = _study_jsons(path) if path.is_dir() else [path]
        study = read_json(files[0], "a study JSON").get("study") if files else None
        return f"{study} study: {name}" if study else f"study: {name}"
    if kind == "run":
        from spikefm.report.training import is_finetuning

        return f"{'fine-tuning' if is_finetuning(path) else 'training run'}: {name}"
    return f"{kind}: {name}"


def build_report(path: str | Path, *, predictions: str | Path | None = None,
                 generated: str | Path | None = None, command: str | None = None) -> Page:
    """The report of ``path`` (a corpus, run, results JSON or study; see the module docstring)."""
    from spikefm.report.corpus import corpus_section
    from spikefm.report.study import study_section, study_seed_results
    from spikefm.report.training import training_section

    path = Path(path)
    kind = report_kind(path)
    if predictions is not None and not Path(predictions).is_dir():
        raise ValueError(f"--predictions {predictions} is not a folder; expected the DIR of "
                         "spikefm eval --save-predictions DIR")
    if generated is not None and not Path(generated).is_file():
        found = "is a folder" if Path(generated).is_dir() else "not found" if not Path(generated).exists() \
            else "is not a regular file"
        raise ValueError(f"--generated {generated} {found}, not an .npz of spikefm generate; give the file "
                         "spikefm generate --out wrote (e.g. gen.npz)")
    _check_page_options(path, kind, predictions, generated)
    prov = Provenance()
    page = Page(page_title(path, kind), f"spikefm report of the {kind} at {path.resolve()}")
    if kind == "corpus":
        corpus_section(page, path, prov)
    elif kind == "run":
        out = training_section(page, path, prov)
        _run_corpus_section(page, out["info"].get("family_info") or {}, prov)
        if generated is not None:
            from spikefm.report.evaluation import generation_panel

            generation_panel(page.sections[0], Path(generated))
    elif kind == "evaluation":
        add_evaluation(page, path, prov, predictions=predictions, generated=generated)
    else:
        study_files = _study_jsons(path) if path.is_dir() else [path]
        studies = [read_json(f, "a study JSON") for f in study_files]
        for study_file, study in zip(study_files, studies):
            study_section(page, study, prov, src=study_file.name)
        study_file = study_files[0]
        # the seeds the summary is over: a rerun with fewer seeds summarises only those, and other
        # seeds' folders left from an earlier run would contradict its tables
        summarised = studies[0].get("per_seed") if isinstance(studies[0].get("per_seed"), dict) else None
        seed_results, others, missing = study_seed_results(study_file.parent), [], []
        if summarised is not None:
            wanted = [f"seed_{s}" for s in summarised]
            others = [n for n, _ in seed_results if n not in wanted]
            seed_results = [(n, p) for n, p in seed_results if n in wanted]
            found = {n for n, _ in seed_results}
            missing = [n for n in wanted if n not in found]
        if others:
            page.sections[0].note(f"{', '.join(others)}: results of an earlier run of this study, not in this "
                                  f"summary (over seeds {', '.join(map(str, summarised))}) and not shown; rerun the "
                                  "study with every seed in --seeds to summarise them together")
        left_out = []  # (seed's results, why): warned about, and said on the page too, not only the terminal
        for seed, results in seed_results:
            try:
                add_evaluation(page, results, prov, title=f"Evaluation, {seed}: {results.name}",
                               src=f"{seed}/{results.name}")
            except ValueError as exc:
                left_out.append((results, f"{seed}/{results.name}", str(exc)))
        for seed in missing:  # in the summary, yet its evaluation is gone: its tables above stay unchecked
            left_out.append((study_file.parent / seed, f"{seed}/results_*.json",
                             "not found, though the study's summary holds this seed (moved or deleted since the "
                             "study ran); its evaluation is not shown: rerun the study to write it again"))
        if left_out:
            sec = page.section("left-out", "Results left out of this report")
            for where, name, why in left_out:
                warnings.warn(f"{where}: left out of the report ({why})", RuntimeWarning, stacklevel=2)
                sec.note(f"{name}: {why}", warn=True)
    prov.section(page, command)
    return page


def _run_corpus_section(page: Page, family_info: dict, prov: Provenance) -> None:
    """The run's corpus after its training section, when it is still where the run read it; a
    note in the training section when it is gone, unreadable, or changed since the run (rebuilt or
    overwritten: its splits and sessions may not be the ones the run trained on)."""
    from spikefm.corpus.reader import manifest_sha256
    from spikefm.report.corpus import corpus_section

    corpus = family_info.get("corpus")
    if not corpus:
        return
    train_sec = page.sections[0]
    if not (Path(corpus) / "manifest.json").is_file():
        train_sec.note(f"the run's corpus {corpus} is not there any more (no manifest.json): its section is left "
                       "out", warn=True)
        return
    recorded = family_info.get("corpus_manifest_sha256")
    now = manifest_sha256(corpus)
    before = len(page.sections)
    try:
        corpus_section(page, corpus, prov, title=f"Corpus of the run ({corpus})")
    except (ValueError, OSError) as exc:  # a damaged corpus: the training report stands without it
        del page.sections[before:]
        train_sec.note(f"the run's corpus {corpus} could not be read, so its section is left out: "
                       f"{first_line(exc)}", warn=True)
        return
    if recorded and recorded != now:
        msg = (f"this corpus changed since the run read it (manifest sha256 {recorded[:12]}... then, {now[:12]}... "
               "now: rebuilt or overwritten), so its splits and sessions below may not be the ones the run trained on")
        sec = page.sections[before]
        sec.note(msg, warn=True)
        sec.blocks.insert(0, sec.blocks.pop())  # first in the section, before what it qualifies
        train_sec.note(f"the run's corpus {corpus}: {msg}", warn=True)


def write_report(path: str | Path, out: str | Path = "report.html", *, predictions: str | Path | None = None,
                 generated: str | Path | None = None, command: str | None = None) -> Path:
    """Build the report of ``path`` and write it to ``out`` atomically; returns ``out``."""
    return build_report(path, predictions=predictions, generated=generated, command=command).write(out)
