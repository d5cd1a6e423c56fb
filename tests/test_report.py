"""``spikefm report`` without a browser: what PATH is, one-line errors, the numbers in the HTML,
figure budgets, strict JSON, offline-only HTML, atomic writes. (The pages are opened in Chromium
by tests/test_report_browser.py.)"""
from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from spikefm.cli import main
from spikefm.report import build_report, report_kind, write_report
from spikefm.report import charts, page as page_mod


def _xent(bits: float, tokens: int = 100) -> dict:
    group = {k: {"nats": bits * math.log(2), "bits": bits, "num_tokens": tokens} for k in ("all", "counts", "separators")}
    return {"overall": group, "per_source": {"nwb": group}}


def _bench(bps: float) -> dict:
    return {"session_id": "s1", "num_test_windows": 4, "num_units": 3, "bin_ms": 20, "num_windows": 20,
            "tasks": {"co-smoothing": {"model": {"bps_pooled": bps, "bps_per_neuron_mean": -math.inf},
                                       "num_evaluated": 1200,
                                       "smoothing": {"bps_pooled": 0.1, "bps_per_neuron_mean": 0.05},
                                       "oracle": {"bps_pooled": 0.4, "bps_per_neuron_mean": 0.3},
                                       "fraction_of_oracle": {"bps_pooled": bps / 0.4, "bps_per_neuron_mean": math.nan}}},
            "skipped": {"inter-region": "session has 1 region(s); needs at least 2"}}


class _Cells(HTMLParser):
    """Table cells with a data-path, and the figure data."""

    def __init__(self):
        super().__init__()
        self.cells, self._td, self._data, self.data_json = [], None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-path" in a:
            self._td = [a["data-src"], a["data-path"], a.get("data-value"), ""]
        if tag == "script" and a.get("id") == "spikefm-data":
            self._data = True

    def handle_data(self, data):
        if self._td is not None:
            self._td[3] += data
        if self._data:
            self.data_json = (self.data_json or "") + data

    def handle_endtag(self, tag):
        if tag == "td" and self._td is not None:
            self.cells.append(self._td)
            self._td = None
        if tag == "script":
            self._data = False


def _parse(html_text: str) -> _Cells:
    p = _Cells()
    p.feed(html_text)
    return p


def _resolve(obj, path):
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def test_report_kind_of_each_input(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "transfer.json").write_text(json.dumps({"study": "transfer", "per_seed": {}}))
    (tmp_path / "ar.json").write_text(json.dumps({"family": "ar", "run_dir": "r", "results": {"model": _xent(1.0)}}))
    (tmp_path / "ar_flat.json").write_text(json.dumps({"tiny AR": _xent(1.0), "1-gram": _xent(1.2)}))
    (tmp_path / "ndt.json").write_text(json.dumps({"fine-tuned": _bench(0.2), "single-session": _bench(0.1)}))
    assert [report_kind(tmp_path / n) for n in ("corpus", "run", "study", "ar.json", "ar_flat.json", "ndt.json")] \
        == ["corpus", "run", "study", "evaluation", "evaluation", "evaluation"]


@pytest.mark.parametrize("make, found", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is a folder holding nothing"),
    (lambda p: (p / "x.json").write_text("[1, 2]") and p / "x.json", "found list"),
    (lambda p: (p / "y.json").write_text('{"loss": 1}') and p / "y.json", "found loss"),
    (lambda p: (p / "z.json").write_text("{not json") and p / "z.json", "not valid JSON"),
])
def test_a_path_of_no_kind_is_one_line_error(tmp_path, make, found, capsys):
    path = make(tmp_path)
    with pytest.raises(ValueError) as exc:
        report_kind(path)
    assert found in str(exc.value) and "\n" not in str(exc.value)
    assert "expected a corpus folder (manifest.json), a run folder" in str(exc.value) or "not valid JSON" in str(exc.value)
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikefm: error: ") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def test_results_json_numbers_nonfinite_values_and_offline_html(tmp_path, capsys):
    path = tmp_path / "results_ndt.json"
    obj = {"fine-tuned": _bench(0.25), "single-session": _bench(0.15)}
    path.write_text(json.dumps(obj))
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    text = out.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing to fetch
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left
    parsed = _parse(text)
    data = json.loads(parsed.data_json.replace("<\\/", "</"))  # strict JSON: no NaN/Infinity
    assert data and all(spec["kind"] in ("xy", "bars", "hist", "raster") for spec in data.values())
    cells = {(c[1]): c for c in parsed.cells}
    assert cells["/fine-tuned/tasks/co-smoothing/model/bps_pooled"][3] == "0.2500"
    assert cells["/single-session/tasks/co-smoothing/model/bps_pooled"][3] == "0.1500"
    assert cells["/fine-tuned/tasks/co-smoothing/model/bps_per_neuron_mean"][3] == "-inf"
    assert cells["/fine-tuned/tasks/co-smoothing/fraction_of_oracle/bps_per_neuron_mean"][3] == "nan"
    assert cells["/fine-tuned/tasks/co-smoothing/smoothing/bps_pooled"][3] == "0.1000"
    for src, ptr, exact, shown in parsed.cells:
        value = _resolve(obj, ptr)
        if isinstance(value, float) and math.isfinite(value):
            assert float(exact) == value
    assert "session has 1 region(s)" in text  # skipped tasks are listed


def test_walk_chunk_table_shows_both_nulls_and_the_oracle(tmp_path):
    def walk(shift):
        chunks = [{"start_bin": s, "end_bin": s + 10, "model": {"bps_pooled": 0.01 * i - shift},
                   "model_vs_train_null": {"bps_pooled": 0.02 * i + 0.003 - shift},
                   "model_ci95": {"bps_pooled": [0.01 * i - shift - 0.05, 0.01 * i - shift + 0.04]},
                   "oracle": {"bps_pooled": 0.3 + 0.01 * i}} for i, s in enumerate((25, 35, 45))]
        bench = _bench(0.2)
        bench["tasks"]["forward-prediction-walk"] = {
            "model": {"bps_pooled": 0.1 - shift, "bps_per_neuron_mean": 0.05}, "num_evaluated": 600,
            "chunks": chunks}
        return bench

    obj = {"fine-tuned": walk(0.0), "single-session": walk(0.1)}
    path = tmp_path / "results_ndt.json"
    path.write_text(json.dumps(obj))
    text = build_report(path).html()
    parsed = _parse(text)
    cells = {c[1]: c[3] for c in parsed.cells}
    for name in obj:
        for i, chunk in enumerate(obj[name]["tasks"]["forward-prediction-walk"]["chunks"]):
            base = f"/{name}/tasks/forward-prediction-walk/chunks/{i}"
            assert cells[f"{base}/model/bps_pooled"] == f"{chunk['model']['bps_pooled']:.4f}"
            assert cells[f"{base}/model_vs_train_null/bps_pooled"] == f"{chunk['model_vs_train_null']['bps_pooled']:.4f}"
            lo, hi = chunk["model_ci95"]["bps_pooled"]
            assert (cells[f"{base}/model_ci95/bps_pooled/0"], cells[f"{base}/model_ci95/bps_pooled/1"]) == \
                (f"{lo:.4f}", f"{hi:.4f}")
    assert cells["/fine-tuned/tasks/forward-prediction-walk/chunks/2/oracle/bps_pooled"] == "0.3200"
    assert "fine-tuned (train-fitted null)" in text and "fine-tuned 95 % high" in text
    # No align record (continuous windows, or results from before it was kept): windows, not trials.
    assert "jackknife interval over the test windows, the NLB null re-fitted without each window" in text
    for bench in obj.values():
        bench["align"] = "stim_on_time"
    path.write_text(json.dumps(obj))
    assert "jackknife interval over the test trials, the NLB null re-fitted without each trial" in \
        build_report(path).html()
    # one chunk (forward-prediction): no chunk table, and its train-fitted null is a row of the task's table
    for bench in obj.values():
        task = bench["tasks"].pop("forward-prediction-walk")
        bench["tasks"]["forward-prediction"] = {**task, "chunks": task["chunks"][:1]}
    path.write_text(json.dumps(obj))
    text = build_report(path).html()
    cells = {c[1]: c[3] for c in _parse(text).cells}
    assert "bps_pooled, train-fitted null" in text and "chunks-forward-prediction" not in text
    for name in obj:
        assert cells[f"/{name}/tasks/forward-prediction/chunks/0/model_vs_train_null/bps_pooled"] == \
            f"{obj[name]['tasks']['forward-prediction']['chunks'][0]['model_vs_train_null']['bps_pooled']:.4f}"


def test_generic_study_curves_and_ranking(tmp_path):
    study = {"study": "scaling", "command": "spikefm experiment scaling", "num_runs": 3,
             "curves": [{"name": "loss vs tokens", "x": [1e6, 1e7, 1e8], "y": [1.0, 0.8, 0.65],
                         "x_label": "tokens", "y_label": "loss", "log_x": True,
                         "fit": {"x": [1e6, 1e8], "y": [1.0, 0.65], "a": 2.5, "alpha": 0.07},
                         "extrapolation": {"x": [1e8, 1e10], "y": [0.65, 0.45]}}],
             "ranking": [{"session": "b", "score": 0.3}, {"session": "a", "score": 0.2}],
             "per_model": {"tiny": {"params": 80000, "loss": 0.7}, "small": {"params": 2e6, "loss": 0.6}}}
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(study))
    page = build_report(path)
    assert [s.key for s in page.sections] == ["study", "provenance"]
    curve = next(s for s in page.data.values() if s["kind"] == "xy")
    assert [s["style"] for s in curve["series"]] == ["points", "line", "dash"] and curve["log_x"]
    ranking = next(s for s in page.data.values() if s["kind"] == "bars")
    assert ranking["categories"] == ["b", "a"] and ranking["series"][0]["values"] == [0.3, 0.2]
    parsed = _parse(page.html())
    paths = {c[1] for c in parsed.cells}
    assert {"/num_runs", "/curves/0/fit/alpha", "/ranking/1/score", "/per_model/small/loss"} <= paths
    for src, ptr, exact, shown in parsed.cells:
        assert float(exact) == _resolve(study, ptr)


def test_training_section_reads_torn_metrics_and_mfu(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "toy", "config": {"train": {"steps": 3}}}))
    rows = [{"step": i, "loss": 1.0 / i, "lr": 1e-3, "grad_norm": 0.5, "tokens": 10 * i, "tokens_per_s": 100.0,
             "mfu": 0.4 if i > 1 else None, "elapsed_s": float(i)} for i in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 3, "lo')
    page = build_report(run)
    labels = [s["y_label"] for s in page.data.values()]
    assert labels == ["training loss", "learning rate", "gradient norm (before clipping)", "tokens / s",
                      "model FLOP utilisation"]
    cells = {c[1]: c for c in _parse(page.html()).cells}
    assert cells["/1/loss"][3] == "0.5000" and cells["/1/step"][3] == "2"


def test_figure_budgets_keep_reports_small():
    counts = np.random.default_rng(0).poisson(0.3, size=(300, 4000))
    spec = charts.raster(counts, dt_s=0.02)
    assert spec["rows"] * spec["cols"] <= charts.MAX_RASTER_CELLS
    group = spec["bins_summed"]
    assert spec["dx"] == pytest.approx(0.02 * group)
    import base64

    levels = np.frombuffer(base64.b64decode(spec["values"]), np.uint8).reshape(spec["rows"], spec["cols"])
    assert np.array_equal(levels, counts[:, :spec["cols"] * group].reshape(300, -1, group).sum(axis=2))
    s = charts.series("loss", range(10_000), np.linspace(1, 0, 10_000))
    assert len(s["x"]) <= charts.MAX_POINTS + 1 and s["x"][-1] == 9999
    rates = charts.raster(np.full((3, 5), np.nan), dt_s=0.02, kind="rates")
    assert rates["rows"] == 3 and rates["cols"] == 5


def test_oversized_report_is_refused_and_nothing_written(tmp_path, monkeypatch):
    page = page_mod.Page("big")
    page.section("x", "X").note("y" * 2000)
    monkeypatch.setattr(page_mod, "MAX_REPORT_BYTES", 1000)
    with pytest.raises(RuntimeError, match="over the"):
        page.write(tmp_path / "r.html")
    assert list(tmp_path.iterdir()) == []


def test_json_safe_and_pointer():
    assert page_mod.json_safe({"a": [math.nan, math.inf, -math.inf, np.float32(1.5), np.arange(2)]}) == \
        {"a": ["nan", "inf", "-inf", 1.5, [0, 1]]}
    assert page_mod.pointer("a/b", "c~d", 0) == "/a~1b/c~0d/0"


def test_write_report_of_a_corpus(tmp_path):
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=2, seed=1, duration_s=20.0, units_range=(20, 24))
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.5, seed=0), progress=False)
    out = write_report(tmp_path / "corpus", tmp_path / "c.html")
    text = out.read_text()
    assert out.stat().st_size < 5_000_000
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    cells = {c[1]: c[3] for c in _parse(text).cells}
    assert cells["/num_sessions"] == "2"
    assert cells["/units/total"] == f"{sum(s['num_units'] for s in manifest['sessions']):,}"
    assert text.count('data-kind="raster"') == 2
    # what corpus info lists beyond counts (the report lacked trial tables and behaviour)
    trials = sum(s["trial_tables"]["trials"] for s in manifest["sessions"])
    assert f"trials ({trials:,} trials in 2 sessions)" in text
    assert "whisker_motion_energy (2 sessions)" in text and "wheel_speed (2 sessions)" in text


def test_a_runs_corpus_that_changed_is_damaged_or_gone_is_said_so_and_the_run_is_still_reported(tmp_path):
    """'Corpus of the run' showed a corpus rebuilt since the run (other splits) with no word; a
    damaged one aborted the whole report; a missing one was dropped silently."""
    import shutil

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import manifest_sha256
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=2, seed=1, duration_s=20.0, units_range=(20, 24))
    corpus = tmp_path / "corpus"
    build_corpus([str(tmp_path / "nwb")], corpus, BuildConfig(test_fraction=0.5, seed=0), progress=False)
    run = tmp_path / "run"
    run.mkdir()

    def record(sha):
        (run / "config.json").write_text(json.dumps({"family": "ar", "config": {"train": {"steps": 3}}, "family_info": {
            "corpus": str(corpus), "corpus_manifest_sha256": sha}}))

    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.4}) + "\n")
    record(manifest_sha256(corpus))
    page = build_report(run).html()
    assert f"Corpus of the run ({corpus})" in page and "changed since the run" not in page
    record("0" * 64)  # the corpus rebuilt since: another manifest
    page = build_report(run).html()
    assert f"Corpus of the run ({corpus})" in page
    msg = (f"this corpus changed since the run read it (manifest sha256 000000000000... then, "
           f"{manifest_sha256(corpus)[:12]}... now: rebuilt or overwritten), so its splits and sessions below may "
           "not be the ones the run trained on")
    assert page.count(msg) == 2  # in the training section and first in the corpus section
    corpus_part = page.split('id="corpus"', 1)[1]
    assert corpus_part.index(msg) < corpus_part.index("<table")
    record(manifest_sha256(corpus))
    shard = sorted(corpus.rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # damaged
    out = write_report(run, tmp_path / "r.html")
    page = out.read_text()
    assert "Corpus of the run" not in page and "Training" in page
    assert re.search(rf"the run&#x27;s corpus {re.escape(str(corpus))} could not be read, so its section is left out: "
                     r"\S", page)
    shutil.rmtree(corpus)
    page = build_report(run).html()
    assert (f"the run&#x27;s corpus {corpus} is not there any more (no manifest.json): its section is left out"
            in page)


def test_finetuning_table_names_the_soups_ingredients_and_the_chosen_candidate(tmp_path):
    run = tmp_path / "ft"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "ndt", "config": {"train": {"steps": 3}}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.4}) + "\n")
    cands = {"frozen": {"best_val_loss": 0.3516, "best_step": 250}, "full": {"best_val_loss": 0.3562, "best_step": 500},
             "unfreeze": {"best_val_loss": 0.3515, "best_step": 250}, "soup": {"best_val_loss": 0.3513, "best_step": 250}}
    (run / "finetune.json").write_text(json.dumps({
        "strategy": "soup", "candidates": cands, "single_session": {"best_val_loss": 0.3557, "best_step": 750},
        "soup": {"ingredients": ["unfreeze", "frozen"], "val_loss": 0.3513, "tried": []}}))
    # the kept average's early_stopping.json (finetune writes it): its own loss, unfreeze's history
    (run / "early_stopping.json").write_text(json.dumps({
        "best_val_loss": 0.3513, "best_step": 250, "stopped_at": 1000, "weights_average_of": ["unfreeze", "frozen"],
        "history_of": "unfreeze", "history": [{"step": 250, "val_loss": 0.3515}, {"step": 500, "val_loss": 0.352}]}))
    text = re.sub(r"<[^>]+>", " ", build_report(run).html())
    flat = " ".join(text.split())
    assert "best validation loss 0.3513 weights average of unfreeze + frozen best step (of unfreeze) 250" in flat
    assert "Validation loss at each evaluation of unfreeze; the kept weights average it" in flat
    table = text.split("Fine-tuning strategies", 1)[1]
    rows = {name: " ".join(table.split(name, 1)[1].split()[:6]) for name in ("frozen", "soup", "single-session")}
    assert "average of unfreeze + frozen chosen" in " ".join(text.split())
    assert rows["frozen"].startswith("0.3516 250")
    assert rows["single-session"].startswith("0.3557 750")


def test_a_finetuning_page_shows_the_pretraining_gain_and_the_soup_tried_as_finetune_prints_them(tmp_path):
    """finetune prints (and warns) 'pretraining did not help' and the soup it tried; the report's
    strategy table listed the single-session model below the chosen one with no word of either."""
    run = _finetuning_run(tmp_path / "ft")
    ft = json.loads((run / "finetune.json").read_text())
    ft.update(single_session={"best_val_loss": 9.90, "best_step": 10}, pretraining_gain=9.90 - 9.93,
              soup={"ingredients": ["frozen"], "val_loss": 9.93, "tried": [{"add": "full", "val_loss": 9.94,
                                                                             "kept": False}]})
    (run / "finetune.json").write_text(json.dumps(ft))
    page = build_report(run).html()
    text = html.unescape(_text(build_report(run)))
    assert ("Pretraining did not help this session: gain -0.0300 validation loss (the single-session model's 9.9000 "
            "is at or below the chosen frozen's 9.9300).") in text
    assert 'class="warn">Pretraining did not help' in page
    assert "Soup (greedy weight average of the candidates): frozen, validation loss 9.9300 (no average validated " \
           "lower; not a candidate)." in text
    table = text.split("Fine-tuning strategies", 1)[1]
    assert " ".join(table.split("single-session", 1)[1].split()[:3]) == "9.9000 10 baseline"
    ft.update(single_session={"best_val_loss": 10.0, "best_step": 10}, pretraining_gain=10.0 - 9.93)
    del ft["soup"]
    (run / "finetune.json").write_text(json.dumps(ft))
    text = html.unescape(_text(build_report(run)))
    assert "Pretraining gain over the single-session model: +0.0700 validation loss." in text
    assert "did not help" not in text and "Soup" not in text


def test_transfer_study_seeds_table_says_what_each_seed_was_scored_on(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    row = {"session_id": "sub-ibl02_ses-002", "num_units": 58, "num_test_windows": 9, "strategy": "frozen",
           "wall_s": 12.5, "metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.2, "smoothing": 0.1}},
           "evaluation": {"split": "test", "window_bins": 150, "decode_layer": 3, "split_fractions": [0.8, 0.1, 0.1],
                          "windows_per_split": {"train": 70, "val": 9, "test": 9}}}
    (study / "transfer.json").write_text(json.dumps({
        "study": "transfer", "command": "spikefm experiment transfer --protocol jiang2025", "settings": {},
        "per_seed": {"2": row, "3": {k: v for k, v in row.items() if k != "evaluation"},  # 3: written before
                     # 4: a NEDS seed records only its split (it read "None bins, split ?, decoding block None")
                     "4": {**row, "evaluation": {"split": "test"}}},
        "mean_sd": {}}))
    text = " ".join(re.sub(r"<[^>]+>", " ", build_report(study).html()).split())
    assert "2 sub-ibl02_ses-002 58 9 frozen 150 bins, split 0.8:0.1:0.1, decoding block 3, test windows 12.5" in text
    assert "3 sub-ibl02_ses-002 58 9 frozen - 12.5" in text
    assert "4 sub-ibl02_ses-002 58 9 frozen test windows 12.5" in text and "None" not in text


def test_docstring_examples_run(tmp_path, monkeypatch):
    """The examples in spikefm.tables (a doctest) and spikefm.report.page (an ``Example::`` block)
    run as written."""
    import doctest
    import textwrap

    import spikefm.tables

    assert doctest.testmod(spikefm.tables).failed == 0
    doc = page_mod.__doc__
    block = doc.split("Example::", 1)[1].split("\n\n", 2)[1]
    monkeypatch.chdir(tmp_path)
    exec(textwrap.dedent(block), {"Page": page_mod.Page, "Num": page_mod.Num, "charts": charts})
    assert "two bars" in (tmp_path / "report.html").read_text()


def test_a_run_folder_named_like_a_baseline_keeps_its_own_column(tmp_path, capsys):
    """A run folder called "oracle" (or "1-gram") got the baseline's column: the NDT summary
    bars labelled "oracle" held the model's number, the AR table dropped the model."""
    from spikefm.report.evaluation import parse_evaluation

    ar = {"run_dir": str(tmp_path / "oracle"), "split": "test",
          "results": {"model": _xent(0.9), "oracle": _xent(0.45), "1-gram": _xent(1.1)}}
    ev = parse_evaluation(ar)
    assert ev.models["oracle (model)"]["overall"]["all"]["bits"] == 0.9
    assert ev.models["oracle"]["overall"]["all"]["bits"] == 0.45
    path = tmp_path / "ar.json"
    path.write_text(json.dumps(ar))
    assert main(["report", str(path), "--out", str(tmp_path / "ar.html")]) == 0
    shown = {c[1]: c[3] for c in _parse((tmp_path / "ar.html").read_text()).cells}
    assert shown["/results/model/overall/all/bits"] == "0.9000"
    assert shown["/results/oracle/overall/all/bits"] == "0.4500"

    ndt = {"run_dir": str(tmp_path / "oracle"), "results": _bench(0.25)}
    ev = parse_evaluation(ndt)
    assert list(ev.models) == ["oracle (model)"]
    path = tmp_path / "ndt.json"
    path.write_text(json.dumps(ndt))
    assert main(["report", str(path), "--out", str(tmp_path / "ndt.html")]) == 0
    parsed = _parse((tmp_path / "ndt.html").read_text())
    data = json.loads(parsed.data_json.replace("<\\/", "</"))
    series = {s["name"]: s for spec in data.values() if spec["kind"] == "bars"
              for s in spec.get("series", [])}
    assert "oracle (model)" in series and "oracle" in series, series.keys()
    assert 0.4 in series["oracle"]["values"] and 0.4 not in series["oracle (model)"]["values"]


def test_generated_rasters_use_the_recorded_bin_width_and_one_grey_scale(tmp_path):
    """The time axis came from a fixed 20 ms (a 10 ms corpus drew 'prompt ends' at twice its
    time) and each raster scaled grey to its own maximum (a count of 2 nearly black in one panel,
    nearly white in the other)."""
    import base64

    from spikefm.report.evaluation import generation_panel
    from spikefm.report.page import Page

    rng = np.random.default_rng(0)
    prompt = rng.poisson(0.5, (4, 6)).astype(np.uint8)
    real = rng.poisson(0.5, (4, 8)).astype(np.uint8)
    gen = rng.poisson(0.5, (4, 8)).astype(np.uint8)
    real[0, 0], real[1, 1], gen[2, 2] = 3, 2, 40
    np.savez(tmp_path / "g.npz", counts=gen, prompt=prompt, real=real, bin_ms=np.int32(10))
    page = Page("t")
    generation_panel(page.section("gen", "Generated"), tmp_path / "g.npz")
    rasters = [s for s in page.data.values() if s["kind"] == "raster"]
    assert len(rasters) == 2
    for spec in rasters:
        assert spec["dx"] == pytest.approx(0.010)
        assert spec["vlines"] == [{"x": pytest.approx(0.06), "name": "prompt ends"}]
    levels = [np.frombuffer(base64.b64decode(s["data"]), np.uint8).reshape(s["rows"], s["cols"])
              for s in rasters]
    real_full, gen_full = (np.concatenate([prompt, a], axis=1) for a in (real, gen))
    # one scale: the same count has the same grey in both panels, black = 40
    for count in (1, 2):
        shades = {int(l[m == count][0]) for l, m in zip(levels, (real_full, gen_full)) if (m == count).any()}
        assert len(shades) == 1, (count, shades)
    assert int(levels[1][gen_full == 40][0]) == 255 and int(levels[0][real_full == 3][0]) < 100

    np.savez(tmp_path / "empty.npz", counts=gen, prompt=prompt, real=real[:, :0])  # prompt at the end
    page = Page("t")
    generation_panel(page.section("gen", "Generated"), tmp_path / "empty.npz")
    assert len([s for s in page.data.values() if s["kind"] == "raster"]) == 1  # the generated one

    np.savez(tmp_path / "old.npz", counts=gen)  # written before generate recorded bin_ms
    page = Page("t")
    generation_panel(page.section("gen", "Generated"), tmp_path / "old.npz")
    (spec,) = [s for s in page.data.values() if s["kind"] == "raster"]
    assert spec["dx"] == 1.0 and "bins" in spec["x_label"]


def test_a_damaged_study_file_and_a_left_out_seed_are_said(tmp_path, capsys):
    """A torn transfer.json was reported as 'a folder holding transfer.json; expected ... a study
    folder'; a seed whose results could not be read vanished from the page (stderr only)."""
    study = tmp_path / "study"
    (study / "seed_1").mkdir(parents=True)
    (study / "seed_2").mkdir()
    (study / "seed_1" / "results_ndt.json").write_text(json.dumps({"fine-tuned": _bench(0.25)}))
    (study / "seed_2" / "results_ndt.json").write_text('{"fine-tuned": {"session_id": ')  # torn
    full = json.dumps({"study": "transfer", "command": "spikefm experiment transfer", "settings": {},
                       "per_seed": {"1": {"metrics": {}}, "2": {"metrics": {}}}, "mean_sd": {}})
    (study / "transfer.json").write_text(full[:40])
    assert main(["report", str(study), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "transfer.json" in err and "is a folder holding" not in err
    (study / "transfer.json").write_text(full)
    with pytest.warns(RuntimeWarning, match="seed_2.*left out of the report"):
        text = build_report(study).html()
    assert "Results left out of this report" in text and "seed_2/results_ndt.json" in text
    assert "Evaluation, seed_1" in text
    # a seed of the summary whose results file is gone vanished from the page without a word
    (study / "seed_2" / "results_ndt.json").unlink()
    with pytest.warns(RuntimeWarning, match="seed_2: left out of the report .not found, though the study's summary "
                                            "holds this seed"):
        text = build_report(study).html()
    assert "Results left out of this report" in text and "seed_2/results_*.json: not found" in text
    # a hand-edited summary: an internal error (AttributeError) where one line names the entry
    for per_seed, where in (({"1": None}, "per_seed.1 is NoneType"), ({"1": {"metrics": [1]}}, "per_seed.1.metrics is list"),
                            ({"1": {"metrics": {"m": 3}}}, "per_seed.1.metrics.m is int")):
        (study / "transfer.json").write_text(json.dumps({**json.loads(full), "per_seed": per_seed}))
        assert main(["report", str(study), "--out", str(tmp_path / "r.html")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"transfer.json: {where}, expected an object" in err, err
    (study / "transfer.json").write_text(json.dumps({**json.loads(full), "mean_sd": {"m": {"model": 0.5}}}))
    assert main(["report", str(study), "--out", str(tmp_path / "r.html")]) == 2
    assert "transfer.json: mean_sd.m.model is float, expected an object" in capsys.readouterr().err


def test_a_study_report_shows_the_seeds_its_summary_is_over(tmp_path):
    """A study rerun with --seeds 2 summarised seed 2 only, but the report showed the evaluations
    of seeds 1, 2 and 3 (every seed_* folder) under tables saying 'over seeds 2'."""
    study = tmp_path / "study"
    for s, v in (("1", 0.1), ("2", 0.2), ("3", 0.3)):
        (study / f"seed_{s}").mkdir(parents=True)
        (study / f"seed_{s}" / "results_ndt.json").write_text(json.dumps({"fine-tuned": _bench(v)}))
    per_seed = {"2": {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.2}}}}
    mean_sd = {"co-smoothing bps_pooled": {"fine-tuned": {"mean": 0.2, "sd": None, "n": 1}}}
    (study / "transfer.json").write_text(json.dumps({"study": "transfer", "command": "c", "settings": {"seeds": [2]},
                                                     "per_seed": per_seed, "mean_sd": mean_sd}))
    text = html.unescape(build_report(study).html())
    assert "Evaluation, seed_2" in text and "Evaluation, seed_1" not in text and "Evaluation, seed_3" not in text
    assert ("seed_1, seed_3: results of an earlier run of this study, not in this summary (over seeds 2) and not "
            "shown; rerun the study with every seed in --seeds to summarise them together") in text
    per_seed.update({"1": per_seed["2"], "3": per_seed["2"]})
    (study / "transfer.json").write_text(json.dumps({"study": "transfer", "command": "c", "settings": {},
                                                     "per_seed": per_seed, "mean_sd": mean_sd}))
    text = build_report(study).html()
    assert all(f"Evaluation, seed_{s}" in text for s in "123") and "earlier run of this study" not in text


def test_scaling_curves_show_their_sd_and_n_and_the_more_sessions_curves(tmp_path):
    """The curves' s.d. (and, since 2026-12-06, n) were in a collapsed JSON block only, and the
    more-sessions curves were never drawn, though the report is said to show mean ± s.d."""
    study = {"study": "scaling", "command": "spikefm experiment scaling",
             "curves": [{"name": "h ranked vs sessions", "x": [1, 2, 4], "y": [0.1, 0.2, 0.25],
                         "sd": [0.01, 0.02, 0.03], "n": [3, 3, 2], "x_label": "pretraining sessions",
                         "y_label": "co-smoothing", "log_x": True}],
             "more_sessions": {"order": "random", "y": "improvement over single-session (%)",
                               "curves": {"co-smoothing": {"x": [1, 2], "y": [5.0, 7.5], "sd": [1.5, 2.5],
                                                           "n": [6, 6]}}}}
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(study))
    page = build_report(path)
    shown = {c[1]: c[3] for c in _parse(page.html()).cells}
    assert shown["/curves/0/sd/2"] == "0.0300" and shown["/curves/0/n/2"] == "2"
    assert shown["/more_sessions/curves/co-smoothing/y/1"] == "7.5000"
    assert shown["/more_sessions/curves/co-smoothing/sd/1"] == "2.5000"
    assert len([s for s in page.data.values() if s["kind"] == "xy"]) == 2


def _text(page) -> str:
    """The page's visible text, one space apart (no stylesheet, script or figure data)."""
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", page.html(), flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def test_mfu_note_only_with_training_rows_and_without_a_false_cpu_claim(tmp_path):
    """An empty metrics.jsonl showed 'no training rows yet' and an MFU note claiming the peak is
    unknown, 'always so on CPU' (CPU runs log MFU from a probed peak)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "toy", "config": {"train": {"steps": 3}}}))
    (run / "metrics.jsonl").write_text("")
    text = _text(build_report(run))
    assert "metrics.jsonl holds no training rows yet" in text and "MFU" not in text
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "mfu": None}) + "\n")
    text = _text(build_report(run))
    assert "MFU: not measured" in text and "SPIKEFM_PEAK_FLOPS" in text and "this run" in text
    assert "always so on CPU" not in text


def test_a_nan_cell_gets_a_note_saying_why_and_no_nan_no_note(tmp_path):
    """'bps_per_neuron_mean / oracle: nan' and a study's '95 % CI low / high: nan' had no word of why."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"fine-tuned": _bench(0.25)}))  # its fraction of the oracle is nan
    text = build_report(path).html()
    assert text.count('class="note nan-note"') == 1
    assert "Why nan: a fraction of the oracle is nan when the oracle&#x27;s bits per spike is not positive" in text
    assert "Why inf: bits per spike are -inf where a model predicted a rate of 0" in text  # its -inf per neuron
    clean = _bench(0.25)
    clean["tasks"]["co-smoothing"]["fraction_of_oracle"]["bps_per_neuron_mean"] = 0.5
    path.write_text(json.dumps({"fine-tuned": clean}))
    assert "nan-note" not in build_report(path).html()

    page = page_mod.Page("t")
    sec = page.section("s", "S")
    sec.table(["", "a", "b 95 % low"], [["x", 1.0, math.nan]], nan_why=[("95 % ", "too few windows")])
    sec.table(["", "a"], [["y", math.nan]], nan_why=[("95 % ", "too few windows")])  # no reason applies
    sec.table(["", "a"], [["z", 1.0]], nan_why=[("", "never shown")])
    html_text = page.html()
    assert html_text.count("nan-note") == 1 and "Why nan: too few windows." in html_text


def test_transfer_study_charts_leave_out_all_nan_columns_and_explain_the_nan_cells(tmp_path):
    """Two seeds of 2 test windows: their CI columns were nan everywhere and got empty bar slots,
    both labelled 'fine-tuned…'."""
    study = tmp_path / "study"
    study.mkdir()
    cols = {"fine-tuned": (0.2, 0.3), "single-session": (0.1, 0.15),
            "fine-tuned minus smoothing, 95 % CI low": (math.nan, math.nan),
            "fine-tuned minus smoothing, 95 % CI high": (math.nan, math.nan)}
    per_seed = {s: {"metrics": {"co-smoothing bps_pooled": {c: v[i] for c, v in cols.items()}}, "num_test_windows": 2}
                for i, s in enumerate(("1", "2"))}
    mean_sd = {"co-smoothing bps_pooled": {c: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "n": 2}
                                           for c, v in cols.items()}}
    (study / "transfer.json").write_text(json.dumps({"study": "transfer", "command": "spikefm experiment transfer",
                                                     "settings": {}, "per_seed": per_seed, "mean_sd": mean_sd}))
    page = build_report(study)
    (bars,) = [s for s in page.data.values() if s["kind"] == "bars"]
    assert bars["categories"] == ["fine-tuned", "single-session"]
    assert "Why nan: a 95 % CI is nan on a seed with fewer than 3 test windows" in _text(page)


def test_a_one_seed_mean_shows_no_sd(tmp_path):
    """With one seed (or one seed with a value) the printed table said '(1 seed)' and the HTML an
    s.d. of 0.0000, as if measured."""
    study = tmp_path / "study"
    study.mkdir()
    per_seed = {"1": {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.2}}}}
    for sd in (None, 0.0):  # today's files, and those written before (sd 0.0 beside n 1)
        mean_sd = {"co-smoothing bps_pooled": {"fine-tuned": {"mean": 0.2, "sd": sd, "n": 1}}}
        (study / "transfer.json").write_text(json.dumps({"study": "transfer", "command": "c", "settings": {},
                                                         "per_seed": per_seed, "mean_sd": mean_sd}))
        page = build_report(study)
        cells = {c[1]: c[3] for c in _parse(page.html()).cells if c[1]}
        assert cells["/mean_sd/co-smoothing bps_pooled/fine-tuned/mean"] == "0.2000"
        assert "/mean_sd/co-smoothing bps_pooled/fine-tuned/sd" not in cells
        assert "an s.d. over seeds is - where fewer than two seeds have a value" in _text(page)
        (bars,) = [s for s in page.data.values() if s["kind"] == "bars"]
        assert bars["series"][0].get("err") == [None]


def test_the_predicted_rate_heat_map_says_what_its_colours_mean():
    from spikefm.report.evaluation import _prediction_rasters
    from spikefm.report.page import Page

    rates = np.random.default_rng(0).gamma(2.0, 0.5, size=(3, 10, 4))
    counts = np.random.default_rng(1).poisson(rates).astype(np.float64)
    page = Page("t")
    _prediction_rasters(page.section("p", "P"), "co-smoothing", rates, counts, None, 20)
    (heat,) = [s for s in page.data.values() if s["colors"] == "rates"]
    top = float(np.percentile(rates.transpose(2, 0, 1).reshape(4, -1), 99.5))
    assert heat["vmax"] == pytest.approx(top) and heat["vmax_is"] == "the 99.5th percentile"
    assert f"dark purple = 0, yellow = {top:.5g} predicted count per bin (the 99.5th percentile" in _text(page)
    counts_spec = charts.raster(counts[0].T, dt_s=0.02)  # exact counts: a grey scale, no colour bar
    assert "vmax" not in counts_spec


def _notes_by_table(html_text: str) -> dict[str, str]:
    """The notes under each keyed table (its 'Why nan' and 'Why -' lines), by its data-table key."""
    out = {}
    for m in re.finditer(r'<div class="table-wrap">(?:(?!<div class="table-wrap">).)*?data-table="([^"]+)"'
                         r'.*?</table></div>((?:<p class="note [a-z-]+">[^<]*</p>)*)</div>', html_text, flags=re.S):
        out[m.group(1)] = html.unescape(" ".join(re.findall(r">([^<]*)</p>", m.group(2))))
    return out


def _neds_results(nan: bool = True) -> dict:
    bad = math.nan if nan else 0.1
    label = {"accuracy": 0.375, "accuracy_ci95": [0.14, 0.69], "balanced_accuracy": bad, "chance": 0.625,
             "chance_balanced": 0.5, "n": 8, "classes": 2}
    return {"family": "neds", "run_dir": "ft", "corpus": "corpus", "session_id": "s1", "split": "test",
            "results": {"encoding": {"neds": {"bps_pooled": 0.1, "bps_per_neuron_mean": 0.05, "r2_single_trial": 0.2,
                                              "r2_psth": bad, "units_scored_r2": 25, "units": 25}},
                        "decoding": {"neds": {"choice": label, "wheel_speed": {"r2_single_trial": bad, "r2_psth": bad}}},
                        "region": {"embedding": {"accuracy": bad, "balanced_accuracy": 0.3, "chance": 0.48,
                                                 "chance_balanced": 1 / 3, "n": 25, "num_units": 25,
                                                 "classes": ["CA1", "PO", "VISp"]}}}}


def test_a_neds_rrr_fitted_on_one_session_is_named_a_single_session_baseline(tmp_path):
    """spikefm eval says so under its table; the report did not."""
    obj = _neds_results(nan=False)
    obj["results"]["encoding"]["rrr"] = dict(obj["results"]["encoding"]["neds"])
    note = "rrr was fitted on this one session (the corpus holds no other session of the run"
    for sessions, said in ((["s1"], True), (["s0", "s1"], False)):
        obj["baseline_sessions"] = sessions
        path = tmp_path / "r.json"
        path.write_text(json.dumps(obj))
        assert (note in build_report(path).html()) is said


def test_neds_tables_say_why_a_cell_is_nan(tmp_path):
    """NaN in the NEDS encoding, label, channel and region tables had no word of why (only the
    paired-differences table passed its reasons)."""
    path = tmp_path / "neds.json"
    path.write_text(json.dumps(_neds_results()))
    notes = _notes_by_table(build_report(path).html())
    assert "Why nan: R² is nan when no unit reaches the R² rate threshold" in notes["neds-encoding"]
    assert "balanced accuracy is nan when the test windows hold one class of the label" in notes["neds-label-choice"]
    assert "single-trial R² is nan when the channel is constant" in notes["neds-r2_single_trial"]
    assert "PSTH R² is nan when the channel's per-condition mean trace is constant" in notes["neds-r2_psth"]
    assert "Why nan: a region score is nan" in notes["neds-region"]
    path.write_text(json.dumps(_neds_results(nan=False)))
    assert "nan-note" not in build_report(path).html()


def test_neds_region_notes_name_left_out_regions_and_draw_no_empty_table(tmp_path):
    """Regions the folds could not learn were dropped without a word; a results file where every
    feature set failed drew an empty table captioned 'grouped by session' for a one-session run."""
    from spikefm.families.neds.evaluate import format_results

    obj = _neds_results(nan=False)
    obj["results"]["region"]["embedding"]["regions_left_out"] = {"MOs": "2 units in the one session (cross-"
                                                                          "validation needs >= 3)"}
    obj["results"]["region"]["firing_stats"] = {"error": "region classification needs >= 2 regions it can learn, "
                                                         "found 1 (CA1); give it more sessions"}
    path = tmp_path / "neds.json"
    path.write_text(json.dumps(obj))
    text = html.unescape(build_report(path).html())
    assert "regions left out (the folds cannot learn them): MOs (2 units in the one session" in text
    assert "firing_stats: not scored (region classification needs >= 2 regions it can learn, found 1 (CA1)" in text
    printed = format_results({"ft": obj})
    assert "ft: region firing_stats not scored: region classification needs >= 2 regions it can learn, found 1 " \
           "(CA1); give it more sessions" in printed  # whole, not cut at 40 characters
    assert "ft: regions left out of region classification: MOs (2 units in the one session" in printed
    # every feature set failing for one reason is one line, not four
    obj["results"]["region"] = {k: {"error": "one region"} for k in ("embedding", "firing_stats", "psth_counts")}
    lines = [l for l in format_results({"ft": obj}).splitlines() if "not scored: one region" in l]
    assert lines == ["ft: region embedding, firing_stats, psth_counts not scored: one region"]
    obj["results"]["region"] = {"embedding": {"error": "no"}}
    path.write_text(json.dumps(obj))
    text = build_report(path).html()
    assert 'data-table="neds-region"' not in text and "grouped by session" not in text
    assert "embedding: not scored (no)" in text


def test_neds_label_table_shows_the_balanced_chance_beside_balanced_accuracy(tmp_path):
    """Balanced accuracy 0.5 at chance sat beside 'chance 0.6250' (the majority class), looking
    below chance: its chance, 1 / classes (chance_balanced), has a column of its own."""
    path = tmp_path / "neds.json"
    obj = _neds_results(nan=False)
    path.write_text(json.dumps(obj))
    text = build_report(path).html()
    table = re.search(r'<table class="data" data-table="neds-label-choice">.*?</table>', text, flags=re.S).group(0)
    assert "<th>balanced accuracy</th><th>chance</th><th>balanced chance</th>" in table
    cells = {c[1]: c[3] for c in _parse(table).cells}
    assert cells["/results/decoding/neds/choice/chance_balanced"] == "0.5000"
    assert cells["/results/decoding/neds/choice/chance"] == "0.6250"
    assert "balanced chance = 1 / the classes present" in text


def test_page_titles_and_the_neds_section_title_say_what_the_report_is(tmp_path):
    """Every page was titled 'spikefm report: <name>', and the NEDS section 'Evaluation (encoding
    and decoding)' though it holds region classification too."""
    path = tmp_path / "neds.json"
    path.write_text(json.dumps(_neds_results(nan=False)))
    page = build_report(path)
    assert page.title == "NEDS evaluation: neds.json" and "<title>NEDS evaluation: neds.json</title>" in page.html()
    assert page.sections[0].title == "Evaluation (encoding, decoding and regions): neds.json"
    (tmp_path / "ndt.json").write_text(json.dumps({"fine-tuned": _bench(0.2)}))
    assert build_report(tmp_path / "ndt.json").title == "NDT evaluation: ndt.json"
    # a plugin built on the NDT writes NDT-shaped results under its own name: the title keeps it
    (tmp_path / "mine.json").write_text(json.dumps({"family": "mine", "run_dir": "runs/mine",
                                                    "results": _bench(0.2)}))
    assert build_report(tmp_path / "mine.json").title == "mine evaluation: mine.json"
    rank = tmp_path / "rank"
    rank.mkdir()
    (rank / "ranking.json").write_text(json.dumps(_rank_study()))
    assert build_report(rank).title == "rank-sessions study: rank"
    assert build_report(_finetuning_run(tmp_path / "ft")).title == "fine-tuning: ft"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "toy", "config": {"train": {"steps": 3}}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    assert build_report(run).title == "training run: run"


def _finetuning_run(folder, best_at_first: bool = True):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"family": "neds", "config": {"train": {"steps": 20}},
                                                    "family_info": {"init_from": "/runs/run_neds",
                                                                    "sessions": {"sub-02": 25}}}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 9.4}) + "\n")
    es = {"best_step": 5, "best_val_loss": 9.93, "stopped_at": 20, "max_steps": 20, "eval_every": 5, "patience": 3,
          "best_at_first_evaluation": best_at_first, "history": [{"step": 5, "val_loss": 9.93}, {"step": 10, "val_loss": 9.95}]}
    (folder / "early_stopping.json").write_text(json.dumps(es))
    (folder / "finetune.json").write_text(json.dumps({
        **es, "strategy": "frozen", "selection": {"rule": "lowest", "lowest": "frozen"},
        "candidates": {"frozen": {"best_val_loss": 9.93, "best_step": 5}, "full": {"best_val_loss": 9.95, "best_step": 20}}}))
    return folder


def test_a_finetuning_page_says_what_it_is_and_warns_when_the_best_was_the_first_evaluation(tmp_path):
    """A fine-tuning folder read as a plain training run (no word of the run it started from, the
    session, the strategy kept, or whose curves these are), and best_at_first_evaluation, which
    spikefm finetune warns of, was not shown."""
    text = html.unescape(_text(build_report(_finetuning_run(tmp_path / "ft"))))
    assert "Fine-tuning: ft (neds)" in text
    assert "A fine-tuning of the pretrained run /runs/run_neds to session sub-02." in text
    assert "Strategy chosen: frozen of the candidates frozen, full (selection rule: lowest)." in text
    assert "The curves and the early stopping below are the chosen candidate's (frozen" in text
    assert "The lowest validation loss came at the first evaluation (step 5" in text and "--eval-every (now 5)" in text
    assert 'class="warn">The lowest validation loss' in build_report(tmp_path / "ft").html()
    text = _text(build_report(_finetuning_run(tmp_path / "ft2", best_at_first=False)))
    assert "A fine-tuning of the pretrained run" in text and "came at the first evaluation" not in text


def _rank_study(top_k: int = 2, asked: int = 3) -> dict:
    rows = [{"rank": 1, "session": "s0", "score": -0.3638, "val_loss": 0.3638, "best_step": 10, "family": 0,
             "same_family": True},
            {"rank": 2, "session": "s1", "score": -0.3664, "val_loss": 0.3664, "best_step": 10, "family": 1,
             "same_family": False}]
    return {"study": "rank-sessions", "command": "spikefm experiment rank-sessions", "top_k": top_k,
            "settings": {"seed": 0, "top_k": asked, "pretraining_sessions": ["s0", "s1"]}, "rankings": {"h0": rows}}


def test_a_ranking_chart_spans_close_scores_colours_families_and_says_what_the_score_is(tmp_path):
    """Bars from 0 made -0.3638 and -0.3664 look identical, one colour for every session, under the
    caption 'h0: score of each entry, in order.'"""
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps(_rank_study()))
    page = build_report(path)
    (bars,) = [s for s in page.data.values() if s["kind"] == "bars"]
    assert bars["zero"] is False and bars["series"][0]["values"] == [-0.3638, -0.3664]
    assert bars["series"][0]["colors"][0] != bars["series"][0]["colors"][1]
    assert [item["name"] for item in bars["legend"]] == ["own family (same_family true)", "other family"]
    text = _text(page)
    assert "minus the best validation loss" in text and "higher is better" in text
    assert "The value axis spans the scores, not 0" in text
    assert "(the masked Poisson NLL per scored entry on the held-out session" in html.unescape(text)
    # a NEDS ranking's loss is no Poisson NLL (spike NLL + behaviour MSE + label cross-entropy)
    obj = _rank_study()
    obj["settings"]["family"] = "neds"
    path.write_text(json.dumps(obj))
    text = html.unescape(_text(build_report(path)))
    assert "Poisson NLL per scored entry" not in text and "NEDS's weighted sum of the spike Poisson NLL, the " \
        "behaviour MSE and the label cross-entropy over its validation schemes" in text
    path.write_text(json.dumps(_rank_study()))
    assert not charts.far_from_zero([0.1, 0.3]) and not charts.far_from_zero([-0.2, 0.3])
    assert charts.far_from_zero([-0.3638, -0.3664]) and charts.far_from_zero([0.81, 0.8])
    improvement = {"study": "x", "table1": [{"model": "a", "improvement_pct": -30.0}, {"model": "b", "improvement_pct": -31.0}]}
    path.write_text(json.dumps(improvement))  # an improvement over a baseline keeps its 0
    (bars,) = [s for s in build_report(path).data.values() if s["kind"] == "bars"]
    assert "zero" not in bars and "legend" not in bars


def test_top_k_requested_and_top_k_used_are_named_and_the_difference_explained(tmp_path):
    """The page showed 'top_k 2' at the top and 'top_k 3' under settings, with no word of which the
    study used or why."""
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps(_rank_study()))
    text = _text(build_report(path))
    assert "top_k used 2" in text and "top_k requested 3" in text and "top_k 2" not in text
    assert "top_k: 3 requested (settings), 2 used: only 2 pretraining sessions exist, so precision@2 and the " \
           "top-2 overlap are reported." in text
    path.write_text(json.dumps(_scaling_study()))
    text = _text(build_report(path))
    assert "top_k: 5 requested (settings), 2 used: the top-k ranked model uses the largest number of sessions in " \
           "sizes (1, 2) that is at most 5; only 2 pretraining sessions exist." in text
    path.write_text(json.dumps(_rank_study(top_k=3, asked=3)))
    text = _text(build_report(path))
    assert "top_k 3" in text and "top_k requested" not in text and "top_k used" not in text


def _scaling_study() -> dict:
    curve = {"name": "h0 ranked vs sessions", "x": [1.0, 2.0], "y": [-0.069, -0.089], "sd": [None, None], "n": [1, 1],
             "x_label": "pretraining sessions", "y_label": "forward-prediction-walk (bps_pooled, bits per spike)",
             "log_x": True}
    return {"study": "scaling", "settings": {"family": "ndt", "seeds": [0], "sizes": [1, 2], "top_k": 5,
                                             "pretraining_sessions": ["s0", "s1"]},
            "metric": "forward-prediction-walk", "top_k": 2,
            "table1": [{"held_out": "h0", "model": "ranked (best size)", "size": 1, "improvement_pct": -30.7, "sd": None}],
            "figure4": {"h0": {"baseline": -0.053, "orders": {"ranked": {"sessions": curve}}}}, "curves": [curve],
            "table3": [{"held_out": "h0", "task": "co-smoothing", "single-session": -0.03, "single-session sd": None,
                        "smoothing": 0.24, "oracle": 0.62},
                       {"held_out": "h0", "task": "forward-prediction", "single-session": -0.17,
                        "single-session sd": None, "oracle": 0.38}]}


def test_scaling_curves_keep_the_studys_label_draw_the_baseline_and_tick_whole_sessions(tmp_path):
    """The single-session baseline was only a number in a collapsed block, and a log axis over 1-2
    sessions ticked 1, 1.2, 1.4 ... (the y label with its unit is written by the study, from the
    family: tests/test_experiment_scaling.py)"""
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(_scaling_study()))
    page = build_report(path)
    (xy,) = [s for s in page.data.values() if s["kind"] == "xy"]
    assert xy["y_label"] == "forward-prediction-walk (bps_pooled, bits per spike)"
    assert xy["hlines"] == [{"y": -0.053, "name": "single-session baseline"}]
    assert xy["x_ticks"] == [1.0, 2.0]
    assert "the dashed horizontal line: single-session baseline (-0.053)" in _text(page)
    assert charts.xy([], x_label="x", y_label="y").get("x_ticks") is None


def test_dash_cells_get_a_note_saying_why(tmp_path):
    """'-' cells (None: a s.d. of one seed, smoothing scored for co-smoothing only) had no word of
    why, unlike nan cells."""
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(_scaling_study()))
    notes = _notes_by_table(build_report(path).html())
    assert notes["study-table1"] == ("Why -: a s.d. is - where fewer than 2 values were averaged (n = 1); this "
                                     "study ran 1 seed (0).")
    assert "smoothing is - for a task without a smoothing baseline (only co-smoothing has one)" in notes["study-table3"]
    assert "Why -: a s.d. is -" in notes["curve-h0 ranked vs sessions"]

    page = page_mod.Page("t")
    sec = page.section("s", "S")
    sec.table(["", "a", "b sd"], [["x", None, page_mod.Num(None)], ["y", math.nan, 1.0]],
              nan_why=[("", "no spike")], blank_why=[("sd", "one seed"), ("", "not computed")], key="t1")
    sec.table(["", "a"], [["z", 1.0]], blank_why=[("", "never shown")], key="t2")
    notes = _notes_by_table(page.html())
    assert notes == {"t1": "Why nan: no spike. Why -: not computed; one seed.", "t2": ""}


def test_neds_encoding_of_a_run_without_behaviour_says_what_the_spikes_were_given(tmp_path):
    """A NEDS run with no behaviour channels or labels (the real DANDI file in continuous windows)
    predicts spikes from the time in the window only; its section said 'spikes given behaviour'."""
    path = tmp_path / "neds.json"
    obj = _neds_results(nan=False)
    obj["modalities"] = {"channels": [], "labels": {}}
    path.write_text(json.dumps(obj))
    text = _text(build_report(path))
    assert "encoding (spikes given time in window only)" in text
    assert "spikes predicted from the time in the window alone: the run has no behaviour channels" in text
    assert "given behaviour" not in text
    obj["modalities"] = {"channels": ["wheel_speed"], "labels": {"choice": [-1.0, 1.0]}}
    path.write_text(json.dumps(obj))
    text = _text(build_report(path))
    assert "encoding (spikes given behaviour channels and trial labels)" in text
    assert "spikes predicted from behaviour channels and trial labels, by each model" in text
    # trial labels only (a recording with a trial table and no behaviour channel): said so
    obj["modalities"] = {"channels": [], "labels": {"stimCategory": [1.0, 2.0, 3.0]}}
    path.write_text(json.dumps(obj))
    text = _text(build_report(path))
    assert "encoding (spikes given trial labels)" in text and "given behaviour" not in text
    assert "spikes predicted from the trial labels (stimCategory): the run has no behaviour channels" in text


def test_ar_dash_cells_say_why_and_generated_must_be_the_npz_of_generate(tmp_path, capsys):
    """eval --max-tokens 100 scores no separator (a row's first token is never scored): its '-'
    cells had no note, unlike every other table's; --generated naming a folder said 'not found'."""
    model = _xent(1.5)
    model["overall"] = {**model["overall"], "separators": {"nats": None, "bits": None, "num_tokens": 0}}
    gram = _xent(2.0)
    gram["overall"] = {**gram["overall"], "separators": {"nats": None, "bits": None, "num_tokens": 0}}
    path = tmp_path / "e1.json"
    path.write_text(json.dumps({"family": "ar", "run_dir": "run", "corpus": "corpus", "split": "test",
                                "results": {"model": model, "1-gram": gram}}))
    notes = _notes_by_table(build_report(path).html())
    why = ("Why -: separators is - where no separator was scored: a row's first token (its first bin's separator) "
           "is never scored, so rows cut to one bin (a small --max-tokens) score none.")
    assert notes["xent-bits"] == notes["xent-nats"] == why
    assert notes["xent-tokens"] == ""  # 0 tokens is a number, not a blank
    (tmp_path / "corpus").mkdir()
    for generated, found in ((tmp_path / "corpus", "is a folder"), (tmp_path / "gone.npz", "not found")):
        capsys.readouterr()
        assert main(["report", str(path), "--generated", str(generated), "--out", str(tmp_path / "r.html")]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"spikefm: error: --generated {generated} {found}, not an .npz of spikefm generate; give the file "
            "spikefm generate --out wrote (e.g. gen.npz)"]
    assert not (tmp_path / "r.html").exists()
    # a text file: said to be no .npz (numpy's own message offered allow_pickle, unsafe advice)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert main(["report", str(path), "--generated", str(text), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert f"{text}: not an .npz (a zip of arrays" in err and "pickle" not in err


def test_an_unfinished_study_folder_is_named_as_such(tmp_path, capsys):
    """An interrupted study's folder was 'a folder holding .spikefm.lock, jobs; expected ... a study
    folder or JSON (spikefm experiment transfer --out DIR: DIR/transfer.json)'."""
    tr = tmp_path / "tr"
    (tr / "seed_1").mkdir(parents=True)
    (tr / ".transfer_progress.json").write_text(json.dumps({"command": "spikefm experiment transfer --out tr",
                                                             "settings": {}, "per_seed": {}}))
    assert main(["report", str(tr), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spikefm: error: {tr} is a transfer study that has not finished (no transfer.json yet): rerun the command "
        "that made it (spikefm experiment transfer --out tr), which reuses its finished seeds, then report the folder")
    sc = tmp_path / "sc"
    (sc / "jobs").mkdir(parents=True)
    (sc / ".spikefm.lock").write_text("")
    assert main(["report", str(sc), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"spikefm: error: {sc} is a rank-sessions or scaling study that has not finished (no ranking.json or "
        "scaling.json yet): rerun the command that made it, which reuses its finished jobs, then report the folder")
    assert not (tmp_path / "r.html").exists()


def test_a_cross_validated_decoders_table_counts_every_window_it_scored(tmp_path):
    """A nested-cv decoder (few test windows) scores all windows; the report's 'windows scored'
    row showed n_test (4) beside accuracies of 12/19 and 8/19."""
    bench = _bench(0.2)
    bench["tasks"]["choice-decoding"] = {
        "label": "choice", "method": "nested-cv", "n_train": 15, "n_test": 4, "n_classes": 2, "chance": 0.55,
        "cv_folds": 5, "hidden": {"accuracy": 12 / 19, "balanced_accuracy": 0.6},
        "rates": {"accuracy": 8 / 19, "balanced_accuracy": 0.4}}
    bench["tasks"]["choice-decoding-holdout"] = {**bench["tasks"]["choice-decoding"], "method": "holdout"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"m": bench}))
    text = build_report(path).html()
    rows = [r for r in text.split("<tr>") if "windows scored" in r]
    assert len(rows) == 2
    assert re.search(r">19<", rows[0]) and not re.search(r">4<", rows[0])  # nested-cv: 15 + 4
    assert re.search(r">4<", rows[1])  # a held-out test: its own windows
    # and, as spikefm eval's footer says, the cross-validated scores are not a held-out test (the
    # page showed them under a held-out test's heading, with no word of it)
    assert text.count("not a held-out test") == 2  # the note (warn) and the figure's caption
    assert ("m: only 4 test window(s), so the decoder is scored by 5-fold cross-validation over all 19 windows, the "
            "model&#x27;s training windows among them (not a held-out test)") in text


def test_behaviour_traces_of_another_evaluation_are_not_drawn(tmp_path):
    """report --predictions drew 'Decoded vs true wheel_speed' from a behavior-decoding.npz an
    earlier evaluation had left in the folder, under results that never ran behavior-decoding."""
    import numpy as np

    bench = _bench(0.2)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"m": bench}))
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.5, (4, 10, 3)).astype(float)
    np.savez(pred / "co-smoothing.npz", rates=np.full_like(counts, 0.5), counts=counts)
    np.savez(pred / "behavior-decoding.npz", true=rng.normal(size=(4, 10, 1)), predicted=rng.normal(size=(4, 10, 1)),
             channels=np.array(["wheel_speed"]))
    text = build_report(path, predictions=pred).html()
    assert "Decoded vs true wheel_speed" not in text
    assert "not drawn: this evaluation did not run behavior-decoding, so the file comes from another one" in text
    bench["tasks"]["behavior-decoding"] = {}
    path.write_text(json.dumps({"m": bench}))
    assert "Decoded vs true wheel_speed" in build_report(path, predictions=pred).html()


def test_psths_of_a_forward_prediction_say_no_mean_of_empty_slice(tmp_path):
    """A forward-prediction-only evaluation (its context bins unscored, NaN) printed 'Mean of empty
    slice' ten times while its report was built."""
    import warnings

    bench = _bench(0.2)
    bench["tasks"] = {"forward-prediction": {**bench["tasks"]["co-smoothing"]}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"m": bench}))
    pred = tmp_path / "pred"
    pred.mkdir()
    counts = np.random.default_rng(0).poisson(0.5, (4, 10, 3)).astype(float)
    counts[:, :7] = np.nan  # the context: not predicted, not scored
    np.savez(pred / "forward-prediction.npz", rates=np.where(np.isnan(counts), np.nan, 0.5), counts=counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = build_report(path, predictions=pred).html()
    assert "forward-prediction: population PSTH" in text


def test_generated_and_predictions_are_refused_where_they_show_nothing(tmp_path, capsys):
    """--generated drew an AR model's samples into an NDT evaluation or run, --predictions was
    dropped without a word on a corpus, run or study, and --generated on a corpus; refused only
    where an AR or NEDS results file was given --predictions."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.json").write_text("{}")
    for name, family in (("run_ndt", "ndt"), ("run_ar", "ar")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"family": family}))
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.4}) + "\n")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "transfer.json").write_text(json.dumps({"study": "transfer"}))
    (tmp_path / "ndt.json").write_text(json.dumps({"m": _bench(0.2)}))
    gen, pred = tmp_path / "gen.npz", tmp_path / "pred"
    gen.write_bytes(b"x")
    pred.mkdir()
    gen_msg = ("--generated shows spikefm generate's samples beside an autoregressive run or its evaluation; {}, "
               "which generates none: leave --generated out")
    pred_msg = ("--predictions applies to an NDT evaluation results JSON (spikefm eval --save-predictions DIR); {}: "
                "report the results JSON with --predictions, or leave it out")
    p = tmp_path
    cases = [
        ("corpus", "--generated", gen_msg.format(f"{p / 'corpus'} is a corpus")),
        ("corpus", "--predictions", pred_msg.format(f"{p / 'corpus'} is a corpus")),
        ("run_ndt", "--generated", gen_msg.format(f"{p / 'run_ndt'} is a 'ndt' run")),
        ("run_ndt", "--predictions", pred_msg.format(f"{p / 'run_ndt'} is a training run (ndt)")),
        ("run_ar", "--predictions", pred_msg.format(f"{p / 'run_ar'} is a training run (ar)")),
        ("study", "--predictions", pred_msg.format(f"{p / 'study'} is a study")),
        ("study", "--generated", gen_msg.format(f"{p / 'study'} is a study")),
        ("ndt.json", "--generated", gen_msg.format(f"{p / 'ndt.json'} is a 'ndt' evaluation")),
    ]
    for target, flag, msg in cases:
        capsys.readouterr()
        value = str(gen if flag == "--generated" else pred)
        assert main(["report", str(p / target), flag, value, "--out", str(p / "r.html")]) == 2, (target, flag)
        assert capsys.readouterr().err.strip().splitlines() == [f"spikefm: error: {msg}"], (target, flag)
    assert not (p / "r.html").exists()


def test_a_generation_from_nothing_is_described_as_such_and_an_npz_is_pointed_to_generated(tmp_path, capsys):
    """A generation without a prompt read 'Generated by the model after the same 0 prompt bins'
    under a table of 'generated vs real bins' with no real row; report GEN.npz said 'not valid
    JSON ('utf-8' codec can't decode ...)'."""
    from spikefm.cli import main

    gen = tmp_path / "gen.npz"
    np.savez(gen, counts=np.random.default_rng(0).poisson(0.3, (5, 8)).astype(np.uint8), bin_ms=np.int32(20))
    res = tmp_path / "r.json"
    res.write_text(json.dumps({"family": "ar", "run_dir": "run", "corpus": "corpus", "split": "test",
                               "results": {"model": _xent(1.5)}}))
    text = build_report(res, generated=gen).html()
    assert "Generated by the model from nothing (no prompt) (8 bins, 5 units)." in text
    assert "after the same 0 prompt bins" not in text and "generated vs real" not in text
    assert "no real bins to compare with" in text
    assert main(["report", str(gen), "--out", str(tmp_path / "g.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spikefm: error: {gen} is an .npz (spikefm generate's, or a prediction of eval --save-predictions), "
                   f"not a results or study JSON; show it beside its run or results: spikefm report RUN_OR_RESULTS "
                   f"--generated {gen} (predictions: --predictions DIR)"]


def test_transfer_study_nan_notes_say_what_the_mean_does_with_a_nan_seed(tmp_path):
    """A seed's undefined interval (2 test windows) showed as nan with the note 'and then so are its
    mean and s.d.', beside a mean computed from the other seeds (aggregate_seeds leaves nan out)."""
    from spikefm.experiments.transfer import aggregate_seeds

    study = tmp_path / "study"
    study.mkdir()
    col = "fine-tuned minus smoothing, 95 % CI low"
    per_seed = {"1": {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.2, col: -0.1}}},
                "2": {"metrics": {"co-smoothing bps_pooled": {"fine-tuned": 0.3, col: math.nan}}}}
    mean_sd = aggregate_seeds(per_seed)
    assert mean_sd["co-smoothing bps_pooled"][col] == {"mean": -0.1, "sd": None, "n": 1}
    (study / "transfer.json").write_text(json.dumps({"study": "transfer", "command": "c", "settings": {},
                                                     "per_seed": per_seed, "mean_sd": mean_sd}))
    text = " ".join(re.sub(r"<[^>]+>", " ", build_report(study).html()).split())
    assert "the mean and s.d. over seeds leave such seeds out" in text
    assert "then so are its mean" not in text and "is nan when a seed's value is nan" not in text


def test_results_of_a_plugin_family_are_shown_as_the_numbers_they_hold(tmp_path):
    """A family the report has no tables for (a plugin's `spikefm eval --out` JSON) was refused
    ('the report cannot draw'); now every number it holds is a cell pointing at its JSON place."""
    from spikefm.report.build import report_kind, write_report

    results = {"val_nll": 0.8125, "per_session": {"s/1": {"bps": 0.25, "n": 40}, "s2": {"bps": None}},
               "curve": [0.5, 0.375], "note": "text is not a number", "ok": True}
    path = tmp_path / "ft_eval.json"
    path.write_text(json.dumps({"family": "grux", "run_dir": "runs/ft", "session_id": "s/1", "results": results}))
    assert report_kind(path) == "evaluation"
    text = write_report(path, tmp_path / "r.html").read_text()
    cells = _parse(text).cells
    doc = json.loads(path.read_text())
    want = {"/results/val_nll": 0.8125, "/results/per_session/s~11/bps": 0.25, "/results/per_session/s~11/n": 40,
            "/results/per_session/s2/bps": None, "/results/curve/0": 0.5, "/results/curve/1": 0.375}
    assert {c[1]: _resolve(doc, c[1]) for c in cells} == want  # every number, nothing else (no text, no bool)
    shown = {c[1]: c[3] for c in cells}
    assert shown["/results/val_nll"] == "0.8125" and shown["/results/per_session/s2/bps"] == "-"
    assert "grux evaluation" in text and "per_session / s/1 / bps" in text
    assert "- is a value the family left empty" in text


def test_nan_and_inf_in_a_plugin_familys_results_are_explained(tmp_path):
    """A plugin's NaN or Infinity was shown as a bare nan / inf cell, where the README promises a
    note under every table with a nan or - cell."""
    from spikefm.report.build import write_report

    nan = "Why nan: nan is a value the family computed as undefined (NaN in the JSON); its documentation says when."
    inf = "Why inf: inf is a value the family computed as unbounded (Infinity in the JSON); its documentation says when."
    for results, want in (({"r2": math.nan, "n": 3}, nan), ({"x": math.inf}, inf),
                          ({"x": -math.inf, "y": math.nan}, f"{nan} {inf}"), ({"n": 3}, "")):
        path = tmp_path / "ev.json"
        path.write_text(json.dumps({"family": "grux", "results": results}))  # json writes NaN, Infinity
        notes = _notes_by_table(write_report(path, tmp_path / "r.html").read_text())
        assert notes["numbers-model"] == want


def test_every_dash_in_an_ndt_evaluations_tables_is_explained(tmp_path):
    """The task tables of an NDT evaluation showed - (a baseline's column of a model-only row, a
    model scored without the baselines, the oracle of a decoder's windows-scored row) with no
    'Why -' note, where every other table of the report says why."""
    fine, single = _bench(0.25), _bench(0.15)
    for name in ("smoothing", "model_minus_smoothing", "fraction_of_oracle", "oracle"):
        single["tasks"]["co-smoothing"].pop(name, None)  # a study scores the baselines once
    fine["tasks"]["co-smoothing"]["model_minus_smoothing"] = {"bps_pooled": {"value": 0.1, "ci95": [0.05, 0.15]}}
    chunk = {"start_bin": 40, "end_bin": 45, "model": {"bps_pooled": 0.1}, "oracle": {"bps_pooled": 0.3},
             "model_ci95": {"bps_pooled": [0.0, 0.2]}, "model_vs_train_null": {"bps_pooled": 0.05}}
    fine["tasks"]["forward-prediction"] = {"model": {"bps_pooled": 0.1, "bps_per_neuron_mean": 0.1}, "num_evaluated": 60,
                                           "chunks": [chunk, {**chunk, "start_bin": 45, "end_bin": 50}]}
    single["tasks"]["forward-prediction"] = {"model": {"bps_pooled": 0.05, "bps_per_neuron_mean": 0.05},
                                             "num_evaluated": 60, "chunks": [{"start_bin": 40, "end_bin": 45,
                                                                              "model": {"bps_pooled": 0.04}}]}
    decoding = {"label": "choice", "method": "holdout", "n_train": 40, "n_test": 20, "chance": 0.55,
                "hidden": {"accuracy": 0.7, "balanced_accuracy": 0.7}}
    fine["tasks"]["choice-decoding"] = {**decoding, "rates": {"accuracy": 0.65, "balanced_accuracy": 0.6},
                                        "oracle": {"accuracy": 0.9, "balanced_accuracy": 0.9},
                                        "ideal_observer": {"accuracy": 0.95}}
    single["tasks"]["choice-decoding"] = decoding  # no decoder of its rates
    fine["tasks"]["behavior-decoding"] = {"channels": ["wheel"], "hidden": {"wheel": {"r2": 0.3, "psth_r2": 0.5},
                                                                          "mean": {"r2": 0.3, "psth_r2": 0.5}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"fine-tuned": fine, "single-session": single}))
    text = build_report(path).html()
    notes = _notes_by_table(text)
    dashed = set()
    for m in re.finditer(r'data-table="([^"]+)"(.*?)</table>', text, flags=re.S):
        if re.search(r'<td class="num">-</td>', m.group(2)):
            dashed.add(m.group(1))
    assert {"task-co-smoothing", "chunks-forward-prediction", "task-choice-decoding",
            "task-behavior-decoding"} <= dashed
    for key in dashed:
        assert "Why -: " in notes[key], key
    assert "bps_pooled minus smoothing is a model's paired difference" in notes["task-co-smoothing"]
    assert "the ideal observer reads the spikes given the true latents" in notes["task-choice-decoding"]


def test_an_unfreeze_run_s_steps_are_shown_after_its_frozen_stage(tmp_path):
    """unfreeze's best_step and stopped_at count its second stage only; the report showed them as
    if from step 0, beside the other candidates' steps."""
    run = tmp_path / "ft"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "ndt", "config": {"train": {"steps": 3}}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.4}) + "\n")
    stage1 = {"best_step": 30, "best_val_loss": 0.36, "stopped_at": 50}
    cands = {"frozen": {"best_val_loss": 0.3516, "best_step": 90},
             "unfreeze": {"best_val_loss": 0.3515, "best_step": 20, "stage1": stage1}}
    (run / "finetune.json").write_text(json.dumps({"strategy": "unfreeze", "candidates": cands, "stage1": stage1}))
    (run / "early_stopping.json").write_text(json.dumps({
        "best_val_loss": 0.3515, "best_step": 20, "stopped_at": 50, "max_steps": 50, "stage1": stage1,
        "history": [{"step": 10, "val_loss": 0.352}, {"step": 20, "val_loss": 0.3515}]}))
    flat = " ".join(re.sub(r"<[^>]+>", " ", html.unescape(build_report(run).html())).split())
    assert ("best step (of the unfrozen stage, after the frozen stage's best step 30) 20 stopped at step (of the "
            "unfrozen stage, after the frozen stage's best step 30) 50") in flat
    table = flat.split("Fine-tuning strategies", 1)[1]
    assert " ".join(table.split("unfreeze", 1)[1].split()[:3]) == "0.3515 30+20 chosen"
    assert " ".join(table.split("frozen", 1)[1].split()[:2]) == "0.3516 90"


def test_the_chunk_table_says_what_the_train_fitted_null_was_fitted_on(tmp_path):
    """Under eval --split val the null is fitted on the train windows (the test windows are left
    out); the caption said 'the train and val windows' whatever the split."""
    bench = _bench(0.2)
    chunk = {"start_bin": 40, "end_bin": 45, "model": {"bps_pooled": 0.1}, "model_vs_train_null": {"bps_pooled": 0.05}}
    bench["tasks"]["forward-prediction-walk"] = {"model": {"bps_pooled": 0.1, "bps_per_neuron_mean": 0.1},
                                                 "num_evaluated": 60, "chunks": [chunk, {**chunk, "start_bin": 45}]}
    for split, said in (("test", "the train and val windows)"), ("val", "the train windows; the test windows are left out)")):
        path = tmp_path / f"{split}.json"
        path.write_text(json.dumps({"family": "ndt", "split": split, "results": bench}))
        assert f"train-fitted null: its mean count in the same bins of {said}" in html.unescape(build_report(path).html())
