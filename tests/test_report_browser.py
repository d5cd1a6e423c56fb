"""``spikefm report`` pages opened in a real headless Chromium (Playwright, the system's browser).

Reports are built from a tiny synthetic corpus, a 4-step run of each family (AR and NDT), their
evaluations (the NDT one with saved predictions), a transfer study and a quickstart-shaped folder.
Each page must load with the network off and no console error, draw every figure, show the
numbers of its JSON files (checked cell by cell, and against values the test computes itself),
respond to hover and zoom, never scroll sideways (at 420 and 1280 px: wide tables scroll in their
own box), draw distinct bar labels, and stay under 5 MB. A screenshot goes to docs/report.png when
SPIKEFM_WRITE_SCREENSHOT=1, else to the test's temporary folder.

Needs /usr/bin/chromium (Debian: apt-get install -y chromium chromium-driver; another binary with
SPIKEFM_TEST_CHROMIUM) and the playwright package (never `playwright install`: the system browser
is used); skipped only without the browser. The fast quickstart's report is checked against its
printed tables by the opt-in slow test (-m slow).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spikefm.cli import main

CHROMIUM = Path(os.environ.get("SPIKEFM_TEST_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: The chart script's plot margins (left, right, top, bottom), to find a canvas's plot area.
MARGINS = (64, 14, 10, 40)
REPO = Path(__file__).resolve().parents[1]
NDT_TASKS = "co-smoothing,forward-prediction-walk,choice-decoding,behavior-decoding"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=(
    f"no browser at {CHROMIUM}: install it with `apt-get install -y chromium chromium-driver` "
    "(.ci/run does where apt-get is available)"))


def _ok(code: int) -> None:
    assert code == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Corpus, runs, evaluations, study, quickstart-shaped folder and their reports."""
    import torch

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize
    from spikefm.report import write_quickstart_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("report")
    try:
        synthesize(d / "nwb", num_sessions=3, seed=0, duration_s=40.0, units_range=(20, 40))
        build_corpus([str(d / "nwb")], d / "corpus", BuildConfig(test_fraction=0.34, seed=0), progress=False)
        corpus = str(d / "corpus")
        _ok(main(["train", "--model", "ar", "--data", corpus, "--out", str(d / "run_ar"), "--steps", "4",
                  "--set", "train.batch_size=2", "--set", "data.seq_len=64", "--set", "train.log_every=1",
                  "--set", "train.precision=fp32", "--set", "train.device=cpu", "--quiet"]))
        _ok(main(["train", "--model", "ndt", "--data", corpus, "--out", str(d / "run_ndt"), "--steps", "4",
                  "--set", "train.batch_size=4", "--set", "train.log_every=1", "--set", "train.device=cpu",
                  "--quiet"]))
        _ok(main(["eval", str(d / "run_ar"), "--data", corpus, "--ngram", "1,2", "--max-tokens", "3000",
                  "--out", str(d / "ar_results.json"), "--quiet"]))
        session = sorted(json.loads((d / "run_ndt" / "config.json").read_text())["family_info"]["sessions"])[0]
        units = json.loads((d / "corpus" / "manifest.json").read_text())
        units = next(s["num_units"] for s in units["sessions"] if s["session_id"] == session)
        _ok(main(["generate", str(d / "run_ar"), "--units", str(units), "--bins", "8", "--prompt-bins", "4",
                  "--prompt", f"{corpus}:{session}:0", "--out", str(d / "generated.npz")]))
        _ok(main(["eval", str(d / "run_ndt"), "--data", corpus, "--session", session, "--tasks", NDT_TASKS,
                  "--save-predictions", str(d / "preds"), "--out", str(d / "ndt_results.json"), "--quiet"]))
        bench = json.loads((d / "ndt_results.json").read_text())["results"]
        _study(d / "study", bench)
        qs = _quickstart_folder(d, bench)
        reports = {}
        for name, path, extra in [("corpus", d / "corpus", []), ("run_ar", d / "run_ar", []),
                                  ("run_ndt", d / "run_ndt", []),
                                  ("eval_ar", d / "ar_results.json", ["--generated", str(d / "generated.npz")]),
                                  ("eval_ndt", d / "ndt_results.json", ["--predictions", str(d / "preds")]),
                                  ("study", d / "study", [])]:
            out = d / "reports" / f"{name}.html"
            _ok(main(["report", str(path), "--out", str(out), *extra]))
            reports[name] = out
        reports["quickstart"] = write_quickstart_report(qs)
    finally:
        torch.set_num_threads(threads)
    return {"dir": d, "reports": reports, "session": session, "qs": qs}


def _study(out: Path, bench: dict) -> None:
    """``spikefm experiment transfer``'s own summary code, over two seeds whose runs are replaced by
    the tiny evaluation above (the single-session model a little worse on each seed)."""
    import spikefm.experiments.transfer as tr

    def fake_transfer(seed_dir, *, seed, **_):
        single = copy.deepcopy(bench)
        single["tasks"]["co-smoothing"]["model"]["bps_pooled"] -= 0.1 * seed
        res = {"fine-tuned": bench, "single-session": single}
        Path(seed_dir).mkdir(parents=True, exist_ok=True)
        (Path(seed_dir) / "results_ndt.json").write_text(json.dumps(res))
        return {**res, "finetune": {"strategy": "frozen"}}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr, "transfer", fake_transfer)
        tr.transfer_study(out, seeds=[1, 2], command="spikefm experiment transfer --out study --seeds 1,2")


def _quickstart_folder(d: Path, bench: dict) -> Path:
    """A folder laid out as ``spikefm quickstart`` leaves it, made of the tiny runs."""
    qs = d / "qs"
    qs.mkdir()
    for name, target in (("corpus", "corpus"), ("run_ar", "run_ar"), ("run_ndt_finetune", "run_ndt"),
                         ("corpus_sessions", "corpus")):
        (qs / name).symlink_to(d / target, target_is_directory=True)
    ar = json.loads((d / "ar_results.json").read_text())["results"]
    (qs / "results_ar.json").write_text(json.dumps({"tiny AR": ar.pop("model"), **ar}))
    (qs / "generated.npz").write_bytes((d / "generated.npz").read_bytes())
    (qs / "results_ndt.json").write_text(json.dumps({"fine-tuned": bench, "single-session": bench}))
    return qs


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]' (or pip install "
                    "playwright; never `playwright install`, the system Chromium is used)")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=LAUNCH_ARGS, viewport={"width": 1280, "height": 900})
        context.set_offline(True)
        yield context
        context.close()


class Loaded:
    def __init__(self, page, errors, requests):
        self.page, self.errors, self.requests = page, errors, requests


def _open(context, path: Path, width: int | None = None) -> Loaded:
    page = context.new_page()
    if width:  # before loading: figures take their width when drawn
        page.set_viewport_size({"width": width, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
               else route.abort())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return Loaded(page, errors, requests)


FIGURES_JS = """([l, r, t, b]) => Array.from(document.querySelectorAll('.fig[data-fig]')).map(f => {
  const out = {id: f.id, kind: f.dataset.kind, drawn: f.dataset.drawn || null, marks: 0, ink: 0};
  const svg = f.querySelector('svg');
  if (svg) out.marks = Array.from(svg.querySelectorAll('path, rect, circle'))
      .filter(e => !e.closest('clipPath') && e.getAttribute('visibility') !== 'hidden').length;
  const c = f.querySelector('canvas');
  if (c) {
    const d = c.getContext('2d').getImageData(l + 1, t + 1, c.width - l - r - 2, c.height - t - b - 2).data;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245) out.ink++;
  }
  return out;
})"""

CELLS_JS = """() => Array.from(document.querySelectorAll('td[data-path]')).map(td =>
  [td.dataset.src, td.dataset.path, td.dataset.value === undefined ? null : td.dataset.value, td.textContent])"""

EXPECTED_SECTIONS = {
    "corpus": {"corpus", "provenance"},
    "run_ar": {"training", "corpus", "provenance"},
    "run_ndt": {"training", "corpus", "provenance"},
    "eval_ar": {"evaluation-ar", "provenance"},
    "eval_ndt": {"evaluation-ndt", "provenance"},
    "study": {"study", "evaluation-ndt", "provenance"},
    "quickstart": {"corpus", "training", "evaluation-ar", "evaluation-ndt", "provenance"},
}


@pytest.mark.parametrize("name", list(EXPECTED_SECTIONS))
def test_report_renders_offline_without_errors(built, browser, name):
    path = built["reports"][name]
    assert path.stat().st_size < 5_000_000
    loaded = _open(browser, path)
    page = loaded.page
    assert loaded.errors == []
    assert [u for u in loaded.requests if not u.startswith(("file:", "data:"))] == []
    sections = set(page.eval_on_selector_all("section[data-section]", "els => els.map(e => e.dataset.section)"))
    assert {s.split("-")[0] if s.startswith("training") else s for s in sections} >= EXPECTED_SECTIONS[name]
    figures = page.evaluate(FIGURES_JS, list(MARGINS))
    assert figures, "no figure in the report"
    for f in figures:
        assert f["drawn"] == "1", f
        if f["kind"] == "raster":
            assert f["ink"] > 0, f"raster {f['id']} is blank"
        else:
            assert f["marks"] > 0, f"figure {f['id']} ({f['kind']}) has no marks"
    assert page.locator(".fig .err").count() == 0
    assert "differ from the results JSON" not in page.content()  # re-scored predictions match
    if name == "quickstart":
        shot = REPO / "docs" / "report.png" if os.environ.get("SPIKEFM_WRITE_SCREENSHOT") == "1" \
            else built["dir"] / "screenshots" / f"{name}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.locator("h3", has_text="Saved predictions").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.evaluate("() => window.scrollBy(0, -document.querySelector('nav.toc').offsetHeight - 8)")
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000
    page.close()


def _resolve(obj, path: str):
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _shown_as(text: str, value) -> bool:
    """The cell text is the value rounded to the decimals it shows (or nan / inf / -)."""
    text = text.strip().replace(",", "")
    if value is None:
        return text == "-"
    if isinstance(value, float) and not math.isfinite(value):
        return text == ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - float(value)) <= 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12


def _sources(built) -> dict:
    """Every file a report's cells may point into, by the source name the cells carry."""
    from spikefm.corpus.info import corpus_info
    from spikefm.corpus.reader import Corpus
    from spikefm.report.training import read_metrics

    d, qs = built["dir"], built["qs"]
    return {
        "corpus": corpus_info(Corpus(d / "corpus")),
        "metrics:run_ar": read_metrics(d / "run_ar" / "metrics.jsonl"),
        "metrics:run_ndt": read_metrics(d / "run_ndt" / "metrics.jsonl"),
        "metrics:run_ndt_finetune": read_metrics(d / "run_ndt" / "metrics.jsonl"),
        "ar_results.json": json.loads((d / "ar_results.json").read_text()),
        "ndt_results.json": json.loads((d / "ndt_results.json").read_text()),
        "transfer.json": json.loads((d / "study" / "transfer.json").read_text()),
        **{f"seed_{s}/results_ndt.json": json.loads((d / "study" / f"seed_{s}" / "results_ndt.json").read_text())
           for s in (1, 2)},
        "results_ar.json": json.loads((qs / "results_ar.json").read_text()),
        "results_ndt.json": json.loads((qs / "results_ndt.json").read_text()),
    }


@pytest.mark.parametrize("name", ["corpus", "run_ar", "run_ndt", "eval_ar", "eval_ndt", "study", "quickstart"])
def test_every_number_shown_equals_its_file(built, browser, name):
    sources = _sources(built)
    page = _open(browser, built["reports"][name]).page
    cells = page.evaluate(CELLS_JS)
    page.close()
    assert len(cells) >= 10
    for src, path, exact, text in cells:
        value = _resolve(sources[src], path)
        if exact is not None and isinstance(value, float) and math.isfinite(value):
            assert float(exact) == value, (src, path)
        assert _shown_as(text, value), (src, path, text, value)


def _table(page, key: str) -> list[list[str]]:
    return page.evaluate("""k => Array.from(document.querySelectorAll(`table[data-table="${k}"] tr`))
        .map(tr => Array.from(tr.children).map(c => c.textContent))""", key)


def test_eval_tables_match_the_json_and_the_printed_format(built, browser):
    d = built["dir"]
    res = json.loads((d / "ndt_results.json").read_text())["results"]["tasks"]
    page = _open(browser, built["reports"]["eval_ndt"]).page
    rows = {r[0]: r[1:] for r in _table(page, "task-co-smoothing")}
    cos = res["co-smoothing"]
    for metric in ("bps_pooled", "bps_per_neuron_mean"):
        assert rows[metric] == [f"{cos['model'][metric]:.4f}", f"{cos['smoothing'][metric]:.4f}",
                                f"{cos['oracle'][metric]:.4f}"]
    dec = {r[0]: r[1:] for r in _table(page, "task-choice-decoding")}
    assert dec["accuracy (hidden)"][0] == f"{res['choice-decoding']['hidden']['accuracy']:.4f}"
    assert dec["chance"][0] == f"{res['choice-decoding']['chance']:.4f}"
    page.close()
    ar = json.loads((d / "ar_results.json").read_text())["results"]
    page = _open(browser, built["reports"]["eval_ar"]).page
    rows = _table(page, "xent-bits")
    assert rows[0] == ["", "run_ar", "1-gram", "2-gram", "oracle"]
    assert rows[1] == ["all"] + [f"{ar[k]['overall']['all']['bits']:.4f}" for k in ("model", "1-gram", "2-gram", "oracle")]
    page.close()


def test_per_neuron_histogram_matches_an_independent_computation(built, browser):
    from scipy.stats import poisson

    with np.load(built["dir"] / "preds" / "co-smoothing.npz") as z:
        rates, counts = z["rates"].astype(float), z["counts"].astype(float)
    scored = ~np.isnan(counts)
    per_neuron = []
    for n in range(counts.shape[2]):
        c, r = counts[..., n][scored[..., n]], rates[..., n][scored[..., n]]
        if c.sum() == 0:
            continue
        null = np.full_like(c, c.mean())
        per_neuron.append((poisson.logpmf(c, r).sum() - poisson.logpmf(c, null).sum()) / (c.sum() * math.log(2)))
    page = _open(browser, built["reports"]["eval_ndt"]).page
    check = {r[0]: r[1:] for r in _table(page, "predictions-check")}
    assert check["co-smoothing"][0] == str(len(per_neuron))
    assert check["co-smoothing"][1] == f"{np.mean(per_neuron):.4f}" == check["co-smoothing"][2]
    hist = page.evaluate("""() => { const d = JSON.parse(document.getElementById('spikefm-data').textContent);
        return Object.values(d).filter(s => s.kind === 'hist').map(s => s.counts.reduce((a, b) => a + b, 0)); }""")
    assert len(per_neuron) in hist
    page.close()


def test_corpus_numbers_match_the_manifest_and_the_shards(built, browser):
    d = built["dir"]
    manifest = json.loads((d / "corpus" / "manifest.json").read_text())
    cells = 0
    zeros = 0
    for shard in (d / "corpus" / "data").glob("*.parquet"):
        for row in pq.read_table(shard, columns=["spike_counts"]).column(0).to_pylist():
            a = np.asarray(row)
            cells += a.size
            zeros += int((a == 0).sum())
    page = _open(browser, built["reports"]["corpus"]).page
    overview = {r[0]: r[1] for r in _table(page, "corpus-overview")}
    assert overview["sessions"] == str(len(manifest["sessions"]))
    assert overview["units in all"] == f"{sum(s['num_units'] for s in manifest['sessions']):,}"
    assert overview["tokens (units x bins)"] == f"{cells:,}"
    assert overview["zero bins (fraction)"] == f"{zeros / cells:.4f}"
    splits = {r[0]: r[1:] for r in _table(page, "corpus-splits")}
    assert splits["train"][2] == f"{manifest['splits']['train']['num_tokens']:,}"
    page.close()


def test_training_and_study_numbers(built, browser):
    rows = [json.loads(x) for x in (built["dir"] / "run_ar" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    page = _open(browser, built["reports"]["run_ar"]).page
    summary = {r[0]: r[1] for r in _table(page, "training-summary")}
    assert summary["last training loss"] == f"{rows[-1]['loss']:.4f}"
    assert summary["last step"] == str(rows[-1]["step"])
    page.close()
    study = json.loads((built["dir"] / "study" / "transfer.json").read_text())
    values = [study["per_seed"][s]["metrics"]["co-smoothing bps_pooled"]["single-session"] for s in ("1", "2")]
    page = _open(browser, built["reports"]["study"]).page
    table = _table(page, "study-co-smoothing bps_pooled")
    col = table[0].index("single-session")
    by_row = {r[0]: r for r in table[1:]}
    assert by_row["seed 1"][col] == f"{values[0]:.4f}"
    assert by_row["mean"][col] == f"{np.mean(values):.4f}"
    assert by_row["sd"][col] == f"{np.std(values, ddof=1):.4f}"
    page.close()


def test_hover_and_zoom(built, browser):
    page = _open(browser, built["reports"]["run_ar"]).page
    fig = page.locator('.fig[data-kind="xy"]').first
    box = fig.bounding_box()
    ticks = fig.locator(".axis text").all_text_contents()
    page.mouse.move(box["x"] + 150, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 100, steps=5)
    page.mouse.up()
    assert fig.locator(".axis text").all_text_contents() != ticks  # zoomed in
    fig.dblclick(position={"x": 200, "y": 100})
    assert fig.locator(".axis text").all_text_contents() == ticks  # reset
    # drawn again for a narrower window and back (one pair of window drag handlers serves every
    # chart, old and new): a drag still zooms, once, and the reset still restores
    for width in (700, 1280):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_function("() => Array.from(document.querySelectorAll('.fig[data-fig]')).every("
                               "f => f.dataset.width === String(f.clientWidth))", timeout=5000)
    fig = page.locator('.fig[data-kind="xy"]').first
    box = fig.bounding_box()
    assert fig.locator(".axis text").all_text_contents() == ticks
    page.mouse.move(box["x"] + 150, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 100, steps=5)
    page.mouse.up()
    assert fig.locator(".axis text").all_text_contents() != ticks
    fig.dblclick(position={"x": 200, "y": 100})
    assert fig.locator(".axis text").all_text_contents() == ticks
    bar = page.locator('.fig[data-kind="bars"] rect').first
    bar.hover()
    assert page.locator(".tip").is_visible() and page.locator(".tip").text_content()
    raster = page.locator('.fig[data-kind="raster"] canvas').first
    raster.scroll_into_view_if_needed()
    rb = raster.bounding_box()
    page.mouse.move(rb["x"] + 200, rb["y"] + 30)
    assert "count:" in page.locator(".tip").text_content()
    page.close()


NUMBER = re.compile(r"-?\d+\.\d+|-?inf|nan")


def _printed_table(out: str, is_header) -> tuple[list[str], list[list[str]]]:
    """(header cells, rows of cells) of the first printed table whose header line passes
    ``is_header``, split on white space, up to the first line that is not a table row."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if is_header(line))
    rows = []
    for line in lines[start + 1:]:
        if set(line.strip()) <= set("-") and line.strip():
            continue
        cells = line.split()
        if not cells or line.startswith(("skipped", "==")):
            break
        rows.append(cells)
    return lines[start].split(), rows


@pytest.mark.slow
def test_quickstart_report_shows_the_printed_numbers(tmp_path, capsys, browser):
    """The fast quickstart end to end: its report.html, opened in Chromium, holds every number of
    the tables it printed (AR cross-entropy row by row; every NDT benchmark row's values)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # the quickstart sets torch's threads itself and restores them
        code = main(["quickstart", "--out", str(tmp_path / "qs"), "--fast"])
    out = capsys.readouterr().out
    assert code == 0
    report = tmp_path / "qs" / "report.html"
    assert f"report (open it in a browser): {report}" in out and report.stat().st_size < 5_000_000
    _, ar_rows = _printed_table(out, lambda line: "tiny AR" in line and "oracle" in line)
    ar_rows = [r for r in ar_rows if r[0] in ("all", "counts", "separators")]
    ndt_header, ndt_rows = _printed_table(out, lambda line: line.split()[:2] == ["task", "metric"])
    ndt_rows = [r for r in ndt_rows if len(r) >= len(ndt_header)]
    assert len(ar_rows) == 3 and len(ndt_rows) > 10
    # the module's browser (one sync Playwright per process: a second one inside it cannot start)
    loaded = _open(browser, report)
    page = loaded.page
    assert loaded.errors == []
    figures = page.evaluate(FIGURES_JS, list(MARGINS))
    assert figures and all(f["drawn"] == "1" for f in figures)
    shown = _table(page, "xent-bits")
    assert shown[1:] == ar_rows
    for row in ndt_rows:
        # every number printed after the task and metric labels (intervals print as [low, high])
        task, values = row[0], [t.strip("[],") for t in row[2:] if NUMBER.fullmatch(t.strip("[],"))]
        cells = set(page.evaluate("""t => Array.from(document.querySelectorAll(
            `table[data-table="task-${t}"] td, table[data-table="chunks-${t}"] td`)).map(c => c.textContent)""", task))
        assert set(values) <= cells, (row, sorted(cells))


def test_decoded_behaviour_traces_are_the_saved_ones(built, browser):
    with np.load(built["dir"] / "preds" / "behavior-decoding.npz") as z:
        true_KTC, pred_KTC, channels = z["true"], z["predicted"], [str(c) for c in z["channels"]]
    page = _open(browser, built["reports"]["eval_ndt"]).page
    charts = page.evaluate("""() => Object.values(JSON.parse(document.getElementById('spikefm-data').textContent))
        .filter(s => s.kind === 'xy' && s.link === 'behaviour')""")
    assert [c["y_label"] for c in charts] == channels and channels
    for c, chart in enumerate(charts):
        shown = {s["name"]: s for s in chart["series"]}
        assert set(shown) == {"true", "decoded"}
        n = len(shown["true"]["y"])
        assert n > 0 and n % true_KTC.shape[1] == 0 and len(shown["true"]["x"]) == n
        for name, arr in (("true", true_KTC), ("decoded", pred_KTC)):
            want = arr[: n // arr.shape[1], :, c].astype(np.float64).ravel()
            got = np.array([np.nan if v is None else v for v in shown[name]["y"]], dtype=np.float64)
            np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert page.locator("figcaption", has_text="Decoded vs true").count() == len(channels)
    page.close()


def test_scaling_study_folder_shows_scaling_and_ranking(browser, tmp_path):
    """The laptop-scale study committed in docs/results: both study JSONs of the folder, every
    curve drawn, and the fitted extrapolation shown with the numbers of scaling.json."""
    folder = REPO / "docs" / "results" / "scaling_synth11"
    out = tmp_path / "scaling.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    loaded = _open(browser, out)
    page = loaded.page
    assert loaded.errors == []
    titles = page.eval_on_selector_all("section[data-section] h2", "els => els.map(e => e.textContent)")
    assert titles[:2] == ["Study: scaling", "Study: rank-sessions"]
    figures = page.evaluate(FIGURES_JS, list(MARGINS))
    scaling = json.loads((folder / "scaling.json").read_text())
    assert len([f for f in figures if f["kind"] == "xy"]) >= len(scaling["curves"])
    for f in figures:
        assert f["drawn"] == "1" and (f["marks"] > 0 or f["ink"] > 0), f
    data = page.evaluate("() => JSON.parse(document.getElementById('spikefm-data').textContent)")
    shown_y = [s["y"] for spec in data.values() if spec.get("kind") == "xy" for s in spec["series"]]
    for curve in scaling["curves"]:
        assert any(y == pytest.approx(curve["y"]) for y in shown_y if len(y) == len(curve["y"])), curve["name"]
    page.close()


def test_a_long_study_command_wraps_inside_the_page(browser, tmp_path):
    """The settings table took the command on one line: the page grew past a 1280 px window and
    the numbers sat far from their names; floats showed as 4-decimal cells (60.0 -> 60.0000)."""
    study = tmp_path / "study"
    study.mkdir()
    command = "spikefm experiment transfer " + " ".join(f"--set model.option_{i}=value_{i}" for i in range(40))
    (study / "transfer.json").write_text(json.dumps({
        "study": "transfer", "command": command, "per_seed": {}, "mean_sd": {},
        "settings": {"sessions": 3, "duration_s": 60.0, "pretrain_steps": 20}}))
    out = tmp_path / "study.html"
    assert main(["report", str(study), "--out", str(out)]) == 0
    loaded = _open(browser, out)
    widths = loaded.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    cells = loaded.page.evaluate("""() => Array.from(document.querySelectorAll(
        'table[data-table="study-settings"] tr')).map(tr => tr.textContent)""")
    assert "duration_s60.0" in cells and "sessions3" in cells
    loaded.page.close()


@pytest.mark.parametrize("width", [420, 1280])
@pytest.mark.parametrize("name", list(EXPECTED_SECTIONS))
def test_the_page_never_scrolls_sideways_wide_tables_scroll_in_their_box(built, browser, name, width):
    """Tables were inline-table with nowrap cells and captions and no scrolling box: the walk's
    chunk table (10 columns, a 300-character caption) made a 1280 px page scroll sideways, and
    every page with a table did at 420 px."""
    loaded = _open(browser, built["reports"][name], width)
    page = loaded.page
    assert loaded.errors == []
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll('.table-wrap')).map(w => {
        const s = w.querySelector('.table-scroll'), c = w.querySelector('.table-caption');
        return {key: w.querySelector('table').dataset.table || '', wrap: w.getBoundingClientRect().right,
                section: w.closest('section').getBoundingClientRect().right, scrolls: s.scrollWidth > s.clientWidth,
                overflow: getComputedStyle(s).overflowX, caption: c ? c.scrollWidth <= c.clientWidth : true}; })""")
    assert boxes
    for b in boxes:
        assert b["wrap"] <= b["section"] + 0.5 and b["caption"] and b["overflow"] == "auto", b
    if name == "eval_ndt":  # the chunk table is wider than a phone: it scrolls inside its box
        chunks = [b for b in boxes if b["key"].startswith("chunks-")]
        assert chunks and (width > 420 or all(b["scrolls"] for b in chunks)), chunks
    page.close()


LABELS_JS = """() => { const d = JSON.parse(document.getElementById('spikefm-data').textContent);
  return Array.from(document.querySelectorAll('.fig[data-kind="bars"]')).map(f => ({
  id: f.id, categories: d[f.id].categories, layout: f.querySelector('svg').dataset.layout,
  svg: f.querySelector('svg').getBoundingClientRect().toJSON(),
  labels: Array.from(f.querySelectorAll('.axis text')).filter(t => t.querySelector('title')).map(t => {
    const r = t.getBoundingClientRect(), lines = Array.from(t.querySelectorAll('tspan')), st = getComputedStyle(t);
    return {full: t.querySelector('title').textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom,
            lines: lines.length, cat: t.dataset.cat === undefined ? null : Number(t.dataset.cat),
            visible: st.visibility !== 'hidden' && st.display !== 'none' && Number(st.opacity) > 0,
            shown: lines.length ? lines.map(s => s.textContent).join(' ') : t.firstChild.textContent}; }),
  bars: Array.from(f.querySelectorAll('svg > rect')).map(r => ({...r.getBoundingClientRect().toJSON(),
                                                                 cat: Number(r.dataset.cat), fill: r.getAttribute('fill')})),
  refs: Array.from(f.querySelectorAll('svg > text')).map(t => t.getBoundingClientRect().toJSON()),
  legend: Array.from(f.querySelectorAll('.legend span')).map(s => s.textContent),
})); }"""


def _apart(a: dict, b: dict) -> bool:
    """Two boxes (client rects) that do not overlap."""
    return a["right"] <= b["left"] + 0.5 or b["right"] <= a["left"] + 0.5 or \
        a["bottom"] <= b["top"] + 0.5 or b["bottom"] <= a["top"] + 0.5


@pytest.mark.parametrize("width", [420, 1280])
@pytest.mark.parametrize("name", ["eval_ndt", "study", "quickstart"])
def test_bar_labels_are_distinct_and_the_chance_label_clears_the_bars(built, browser, name, width):
    """Category names were cut to their first characters: "fine-tuned (hidden)" and "fine-tuned
    (rates)" both showed "fine-tuned (h…" / "fine-tuned…"; the "chance" label sat on the last bar."""
    page = _open(browser, built["reports"][name], width).page
    figs = page.evaluate(LABELS_JS)
    page.close()
    assert figs
    wrapped = seen_ref = False
    for f in figs:
        labels = f["labels"]
        shown = [lab["shown"] for lab in labels]
        assert len(set(shown)) == len({lab["full"] for lab in labels}), (f["id"], shown)
        for lab in labels:  # wrapped at spaces and hyphens; a long one keeps its start and end
            shown, full = (t.replace("- ", "-").replace("_ ", "_").replace(" ", "") for t in (lab["shown"], lab["full"]))
            head, _, tail = shown.partition("\u2026")
            assert shown == full or (full.startswith(head) and full.endswith(tail) and len(head) >= 8), lab
            wrapped |= lab["lines"] > 1
        for a, b in zip(labels, labels[1:]):  # side by side under upright bars, stacked beside bars across
            assert _apart(a, b), (f["id"], a, b)
        for r in f["refs"]:
            seen_ref = True
            for bar in f["bars"]:
                apart = r["left"] >= bar["right"] or r["right"] <= bar["left"] or \
                    r["top"] >= bar["bottom"] or r["bottom"] <= bar["top"]
                assert apart, (f["id"], r, bar)
    assert wrapped or name == "eval_ndt"  # names longer than their band (two models' "... (hidden)")
    assert seen_ref  # choice decoding draws chance


def test_the_heat_map_of_predicted_rates_has_a_colour_scale(built, browser):
    page = _open(browser, built["reports"]["eval_ndt"]).page
    scales = page.evaluate("""() => { const d = JSON.parse(document.getElementById('spikefm-data').textContent);
        return Array.from(document.querySelectorAll('.fig[data-kind="raster"]')).map(f => ({
            colors: d[f.id].colors, vmax: d[f.id].vmax, caption: f.closest('figure').querySelector('figcaption').textContent,
            bar: f.querySelector('.colorbar canvas') !== null,
            max: f.querySelector('.colorbar-max') && f.querySelector('.colorbar-max').textContent})); }""")
    page.close()
    rates = [s for s in scales if s["colors"] == "rates"]
    assert rates and all(not s["bar"] for s in scales if s["colors"] == "counts")
    for s in rates:
        assert s["bar"] and float(s["max"]) == pytest.approx(s["vmax"], rel=1e-4)
        assert f"yellow = {s['vmax']:.5g} predicted count per bin (the 99.5th percentile" in s["caption"]


def test_long_bar_labels_are_shortened_but_stay_distinct(browser, tmp_path):
    """Names too long for six lines keep their start and last words; two that would still look
    alike are drawn in full."""
    from spikefm.report import charts
    from spikefm.report.page import Page

    cats = [f"model trained on every session of the corpus with {w} weights and {end}"
            for w, end in (("frozen", "a small head"), ("frozen", "a large head"), ("all", "a large head"))]
    cats += ["same long start of a name that differs only in the middle: alpha, then the same end",
             "same long start of a name that differs only in the middle: beta, then the same end"]
    page = Page("labels")
    page.section("s", "S").figure(charts.bars(cats, [charts.bar_series("v", [1, 2, 3, 4, 5])], y_label="v",
                                              hlines=[{"y": 2.5, "name": "chance"}]), "long names")
    loaded = _open(browser, page.write(tmp_path / "labels.html"))  # 1280 px: every name drawn
    figs = loaded.page.evaluate(LABELS_JS)
    assert loaded.errors == []
    loaded.page.close()
    shown = [lab["shown"] for lab in figs[0]["labels"]]
    assert len(shown) == 5 and len(set(shown)) == 5, shown
    assert "\u2026" in shown[0] and "\u2026" not in shown[1] + shown[3], shown  # [1], [2] and [3], [4] alike


def _bars_page(tmp_path: Path) -> Path:
    """Bar charts of 3 to 40 categories named like sessions, one with two series and a chance line."""
    from spikefm.report import charts
    from spikefm.report.page import Page

    page = Page("bars")
    sec = page.section("s", "S")
    for n in (3, 8, 14, 40):
        cats = [f"sub-ibl{i // 2 + 1:02d}_ses-{i:03d}" for i in range(n)]
        sec.figure(charts.bars(cats, [charts.bar_series("score", [-0.30 - 0.01 * i for i in range(n)])],
                               y_label="score", x_label="session"), f"{n} sessions")
    sec.figure(charts.bars([f"model {c}" for c in "abcdefgh"],
                           [charts.bar_series("accuracy", [0.5 + 0.05 * i for i in range(8)]),
                            charts.bar_series("balanced accuracy", [0.45 + 0.05 * i for i in range(8)])],
                           y_label="accuracy", hlines=[{"y": 0.5, "name": "chance"}]), "two series")
    return page.write(tmp_path / "bars.html")


@pytest.mark.parametrize("width", [420, 1280])
def test_every_bar_is_named_by_a_visible_label(built, browser, tmp_path, width):
    """drawBars named only every other category even at 1280 px (``every = ceil(cats / floor(width /
    60))``): a ranking of 8 sessions showed 4 names. Every category with a bar now has its own visible
    label inside the page, next to its bars (under upright bars, or left of bars lying across when
    there are too many to name upright), and no two labels overlap."""
    out = tmp_path / "scaling.html"
    assert main(["report", str(REPO / "docs" / "results" / "scaling_synth11"), "--out", str(out)]) == 0
    pages = [_bars_page(tmp_path), out] + [built["reports"][n] for n in ("eval_ndt", "study", "quickstart")]
    checked = 0
    for path in pages:
        loaded = _open(browser, path, width)
        figs = loaded.page.evaluate(LABELS_JS)
        assert loaded.errors == []
        loaded.page.close()
        for f in figs:  # as many names as categories (the names were thinned to every other one)
            assert [lab["full"] for lab in f["labels"]] == f["categories"], (path.name, width, f["id"])
        for f in figs:
            labels = {lab["cat"]: lab for lab in f["labels"]}
            assert sorted(labels) == list(range(len(f["categories"]))), (path.name, f["id"], f["categories"])
            for i, lab in labels.items():
                assert lab["full"] == f["categories"][i] and lab["shown"].strip() and lab["visible"], lab
                assert lab["right"] > lab["left"] and lab["bottom"] > lab["top"], lab
                assert 0 <= lab["left"] and lab["right"] <= width, (path.name, width, lab)  # on the page
            ordered = [labels[i] for i in sorted(labels)]
            for a, b in zip(ordered, ordered[1:]):
                assert _apart(a, b), (path.name, f["id"], a, b)
            # each label sits beside its own bars: nearer their middle than any other category's
            axis = ("left", "right") if f["layout"] == "upright" else ("top", "bottom")
            mid = {}
            for bar in f["bars"]:
                mid.setdefault(bar["cat"], []).append((bar[axis[0]] + bar[axis[1]]) / 2)
            mid = {c: sum(v) / len(v) for c, v in mid.items()}
            for c, m in mid.items():
                at = (labels[c][axis[0]] + labels[c][axis[1]]) / 2
                assert min(mid, key=lambda o: abs(mid[o] - at)) == c, (path.name, f["id"], c, at, mid)
            checked += 1
    assert checked >= 12


def _rank_study(folder: Path) -> Path:
    """A rank-sessions study of two held-out sessions whose two scores differ in the third decimal."""
    folder.mkdir()
    rows = lambda a, b: [{"rank": 1, "session": a, "score": -0.3638, "val_loss": 0.3638, "best_step": 10,  # noqa: E731
                          "family": 0, "same_family": True},
                         {"rank": 2, "session": b, "score": -0.3664, "val_loss": 0.3664, "best_step": 10,
                          "family": 1, "same_family": False}]
    (folder / "ranking.json").write_text(json.dumps({
        "study": "rank-sessions", "command": "spikefm experiment rank-sessions --held-out h0,h1",
        "settings": {"top_k": 3, "seed": 0, "pretraining_sessions": ["s0", "s1"]}, "top_k": 2,
        "rankings": {"h0": rows("s0", "s1"), "h1": rows("s1", "s0")}}))
    return folder


@pytest.mark.parametrize("width", [420, 1280])
def test_close_ranking_scores_look_different_and_families_are_coloured(browser, tmp_path, width):
    """Bars from a y axis forced through 0 drew scores -0.3638 and -0.3664 as equal bars, all one
    colour: the axis now spans the scores, and own-family sessions differ in colour, with a legend."""
    out = tmp_path / "rank.html"
    assert main(["report", str(_rank_study(tmp_path / "rank")), "--out", str(out)]) == 0
    loaded = _open(browser, out, width)
    figs = loaded.page.evaluate(LABELS_JS)
    assert loaded.errors == [] and len(figs) == 2
    loaded.page.close()
    for f in figs:
        first, second = sorted(f["bars"], key=lambda b: b["cat"])
        extent = ("height", "top") if f["layout"] == "upright" else ("width", "left")
        assert first[extent[0]] > 3 * second[extent[0]], (first, second)  # the better score, plainly longer
        assert first["fill"] != second["fill"]
        assert any("own family" in t for t in f["legend"]) and any("other family" in t for t in f["legend"])


@pytest.mark.parametrize("width", [420, 1280])
def test_scaling_curves_tick_whole_sessions_and_draw_the_baseline(browser, tmp_path, width):
    """Figure 4's y axis said only 'forward-prediction-walk', its x axis had ticks at 1.2, 1.4 ...
    sessions, and the single-session baseline was a number in a table only."""
    study = tmp_path / "scaling"
    study.mkdir()
    curve = {"name": "h0 ranked vs sessions", "x": [1.0, 2.0, 4.0], "y": [-0.069, -0.089, -0.05], "sd": [None] * 3,
             "n": [1] * 3, "x_label": "pretraining sessions",
             "y_label": "forward-prediction-walk (bps_pooled, bits per spike)",
             "log_x": True}  # the label with its unit, as the study writes it (the family's task_score_unit)
    # the fit as the study writes it: sampled on 21 points of its own between the measured sizes
    grid = [2 ** (i / 20) for i in range(21)]
    curve["fit"] = {"x": grid, "y": [-0.069 - 0.066 * math.log10(g) for g in grid], "label": "linear fit on log x"}
    curve["extrapolation"] = {"x": [2.0, 4.0], "y": [-0.0889, -0.1087], "label": "extrapolation to the full set"}
    (study / "scaling.json").write_text(json.dumps({
        "study": "scaling", "settings": {"family": "ndt", "seeds": [0], "sizes": [1, 2], "top_k": 5},
        "metric": "forward-prediction-walk", "metric_unit": "bps_pooled, bits per spike", "top_k": 2,
        "figure4": {"h0": {"baseline": -0.053, "orders": {"ranked": {"sessions": curve}}}}, "curves": [curve]}))
    out = tmp_path / "scaling.html"
    assert main(["report", str(study), "--out", str(out)]) == 0
    loaded = _open(browser, out, width)
    axis = loaded.page.evaluate("""() => { const f = document.querySelector('.fig[data-kind="xy"]');
        const svg = f.querySelector('svg'), H = svg.getBoundingClientRect().height;
        const texts = Array.from(svg.querySelectorAll('.axis > text'));
        return {ticks: texts.filter(t => t.getAttribute('text-anchor') === 'middle' && !t.getAttribute('transform')
                                     && Number(t.getAttribute('y')) < H - 10).map(t => t.textContent),
                y_label: Array.from(svg.querySelectorAll('.axis .y-label')).map(t => t.textContent).join(' '),
                refs: Array.from(svg.querySelectorAll('text.ref-label')).map(t => t.textContent),
                lines: svg.querySelectorAll('line[stroke-dasharray]').length,
                dots: Array.from(svg.querySelectorAll('circle')).filter(c => c.getAttribute('fill') !== 'none').length,
                drawn: Array.from(svg.querySelectorAll('circle, path')).filter(e => e.getAttribute('fill') !== 'none'
                         || e.closest('.axis') === null).map(e => e.getBoundingClientRect())
                         .filter(b => b.width > 0 || b.height > 0).map(b => [b.left, b.right, b.top, b.bottom]),
                label: Array.from(svg.querySelectorAll('text.ref-label')).map(t => {
                         const b = t.getBoundingClientRect(); return [b.left, b.right, b.top, b.bottom]; })[0],
                width: svg.getBoundingClientRect().width}; }""")
    assert loaded.errors == []
    loaded.page.close()
    assert axis["ticks"] == ["1", "2", "4"], axis
    assert axis["refs"] == ["single-session baseline"] and axis["lines"] >= 1, axis
    # a dot per measured size; the fit (21 samples) is a line, not 21 more measurements
    assert axis["dots"] == 3, axis
    if width >= 1280:  # the reference's name beside the plot, clear of every point and line (on a
        left, right, top, bottom = axis["label"]  # phone it stays inside, above its line)
        for b in axis["drawn"]:
            assert b[0] >= right or b[1] <= left or b[2] >= bottom or b[3] <= top, (b, axis["label"])
    assert "bps_pooled" in axis["y_label"] and "bits per spike" in axis["y_label"], axis


FIT_JS = """() => ({page: [document.documentElement.scrollWidth, window.innerWidth],
  figs: Array.from(document.querySelectorAll('.fig[data-fig]')).map(f => {
    const box = f.getBoundingClientRect(), g = f.querySelector('svg, canvas');
    return {id: f.id, drawn: f.dataset.drawn || null, width: Number(f.dataset.width), box: box.width,
            right: g ? g.getBoundingClientRect().right : null, boxRight: box.right}; }),
  names: Array.from(document.querySelectorAll('svg text.cat-name')).map(t => {
    const r = t.getBoundingClientRect(), s = t.closest('svg').getBoundingClientRect();
    return {text: t.textContent, left: r.left, right: r.right, svgLeft: s.left, svgRight: s.right}; })})"""


def _fits(state: dict, width: int) -> None:
    assert state["page"][0] <= state["page"][1] == width, state["page"]
    for f in state["figs"]:
        assert f["drawn"] == "1" and f["right"] is not None and f["right"] <= f["boxRight"] + 0.5, f


@pytest.mark.parametrize("name", ["corpus", "quickstart"])
def test_figures_fit_a_phone_and_are_drawn_again_when_the_window_narrows(built, browser, name):
    """Figures were sized once, at load, to at least 320 px: loaded at 1280 px and narrowed to a
    phone's 390 px they stayed 539 and 1098 px wide and the page scrolled sideways; loaded at
    360 px they stuck out of their boxes by 21 px."""
    loaded = _open(browser, built["reports"][name], 360)
    _fits(loaded.page.evaluate(FIT_JS), 360)
    loaded.page.close()
    loaded = _open(browser, built["reports"][name], 1280)
    page = loaded.page
    wide = page.evaluate(FIT_JS)
    _fits(wide, 1280)
    page.set_viewport_size({"width": 390, "height": 900})
    page.wait_for_function("() => Array.from(document.querySelectorAll('.fig[data-fig]')).every("
                           "f => f.dataset.width === String(f.clientWidth))", timeout=5000)
    narrow = page.evaluate(FIT_JS)
    _fits(narrow, 390)
    assert [f["id"] for f in narrow["figs"]] == [f["id"] for f in wide["figs"]]
    assert all(n["width"] < w["width"] for n, w in zip(narrow["figs"], wide["figs"]))  # drawn again, narrower
    page.set_viewport_size({"width": 1280, "height": 900})  # and back: the load-time widths again
    page.wait_for_function("() => Array.from(document.querySelectorAll('.fig[data-fig]')).every("
                           "f => f.dataset.width === String(f.clientWidth))", timeout=5000)
    assert [f["width"] for f in page.evaluate(FIT_JS)["figs"]] == [f["width"] for f in wide["figs"]]
    assert loaded.errors == []
    page.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_the_name_of_bars_lying_across_is_shown_whole(built, browser, width):
    """The token-count chart's category name ("spike count in a bin") ended at the left edge of a
    column as narrow as its names ("0".."4"): the page showed "n a bin"."""
    loaded = _open(browser, built["reports"]["corpus"], width)
    names = loaded.page.evaluate(FIT_JS)["names"]
    loaded.page.close()
    assert names and any(n["text"] == "spike count in a bin" for n in names), names
    for n in names:
        assert n["svgLeft"] - 0.5 <= n["left"] < n["right"] <= n["svgRight"] + 0.5, n
