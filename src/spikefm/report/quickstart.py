"""The report ``spikefm quickstart`` writes last: ``OUT/report.html`` with every section that
applies to its outputs (corpus, the AR run and its results with the generated raster, the NDT
runs and their benchmark).

The quickstart's NDT benchmark (``results_ndt.json``) is computed without saved predictions, so
this module scores the fine-tuned run's prediction tasks once more with ``save_predictions``
(same model, same test windows, deterministic: the report checks the recomputed bits per spike
against the JSON) into ``OUT/predictions_ndt/``, reused when it exists.
"""
from __future__ import annotations

import json
from pathlib import Path

from spikefm.report.build import add_evaluation
from spikefm.report.corpus import corpus_section
from spikefm.report.page import Page
from spikefm.report.provenance import Provenance
from spikefm.report.training import training_section

PREDICTIONS = "predictions_ndt"


def ndt_predictions(out: Path, results: dict) -> tuple[Path, tuple] | None:
    """Saved predictions of the fine-tuned NDT for the prediction tasks of ``results``
    (``OUT/predictions_ndt``, written if missing) and (run, corpus, session) of its windows."""
    from spikefm import families

    bench = results.get("fine-tuned")
    run, corpus = out / "run_ndt_finetune", out / "corpus_sessions"
    if not isinstance(bench, dict) or not (run / "model.safetensors").is_file() or \
            not (corpus / "manifest.json").is_file():
        return None
    session = bench.get("session_id")
    tasks = [t for t, e in bench.get("tasks", {}).items() if "model" in e]
    pred_dir = out / PREDICTIONS
    if tasks and not all((pred_dir / f"{t}.npz").is_file() for t in tasks):
        families.evaluate(run, corpus, tasks=tasks, session=session, save_predictions=str(pred_dir),
                          baselines=False)
    return pred_dir, (run, corpus, session)


def write_quickstart_report(out: str | Path) -> Path:
    """Write ``OUT/report.html`` for the quickstart's folder ``out``; returns its path."""
    out = Path(out)
    prov = Provenance()
    page = Page("spikefm quickstart report", f"everything under {out.resolve()}")
    if (out / "corpus" / "manifest.json").is_file():
        corpus_section(page, out / "corpus", prov, title="Corpus (autoregressive model)")
    if (out / "run_ar" / "metrics.jsonl").is_file():
        training_section(page, out / "run_ar", prov, title="Training: the tiny autoregressive model")
    if (out / "results_ar.json").is_file():
        add_evaluation(page, out / "results_ar.json", prov,
                       generated=out / "generated.npz" if (out / "generated.npz").is_file() else None,
                       title="Evaluation: cross-entropy on the held-out rows (bits/token)")
    for name, title in (("run_ndt_pretrain", "Training: NDT pretraining"),
                        ("run_ndt_finetune", "Training: NDT fine-tuning on the held-out session")):
        if (out / name / "metrics.jsonl").is_file():
            training_section(page, out / name, prov, title=title)
    results = out / "results_ndt.json"
    if results.is_file():
        found = ndt_predictions(out, json.loads(results.read_text()))
        pred_dir, windows_from = found if found else (None, None)
        add_evaluation(page, results, prov, predictions=pred_dir, windows_from=windows_from,
                       title="Evaluation: neural prediction on the held-out session's test trials")
    prov.section(page, "spikefm quickstart")
    return page.write(out / "report.html")
