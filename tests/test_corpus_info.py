"""``corpus_info`` / ``format_info`` / ``plot_corpus`` against numbers computed another way from
the same arrays (numpy on the source matrices, the manifest, the real DANDI recording)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.corpus.importer import import_neural_pile
from spikefm.corpus.info import corpus_info, format_info
from spikefm.corpus.plots import plot_corpus

COUNTS_TYPE = pa.list_(pa.list_(pa.uint8()))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_published(root: Path, seed: int = 0) -> dict:
    """A small published-layout folder. Returns {split: [row dicts]} with the source matrices."""
    rng = np.random.default_rng(seed)
    specs = [  # source, subject, session, units, bins per row, rows, split of each row
        ("willett", "T5", "w1", 7, 40, 2, ["train", "test"]),
        ("willett", "T5", "w2", 5, 30, 1, ["train"]),
        ("xiao", "Pa", "x1", 12, 25, 3, ["train", "train", "train"]),
        ("moore", "Mo", "m1", 3, 60, 1, ["test"]),
        ("custom-lab", "A", "c1", 9, 15, 2, ["train", "train"]),
    ]
    out = {"train": [], "test": []}
    for src, subj, sess, units, bins, n, splits in specs:
        for i in range(n):
            counts = rng.poisson(rng.uniform(0.05, 1.5), size=(units, bins)).astype(np.uint8)
            counts[rng.random(counts.shape) < 0.02] = 255
            out[splits[i]].append({"spike_counts": counts, "subject_id": subj, "session_id": sess,
                                   "segment_id": f"segment_{i}", "source_dataset": src})
    for split, rows in out.items():
        table = pa.table({
            "spike_counts": pa.array([r["spike_counts"].tolist() for r in rows], COUNTS_TYPE),
            **{c: pa.array([r[c] for r in rows], pa.string())
               for c in ("subject_id", "session_id", "segment_id", "source_dataset")}})
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="module")
def corpus_and_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub") / "pile"
    rows = write_published(root)
    out = tmp_path_factory.mktemp("corpus") / "c"
    import_neural_pile(str(root), out, progress=False)
    return Corpus(out), rows


def test_info_numbers_match_numpy_on_the_source_arrays(corpus_and_rows):
    corpus, rows = corpus_and_rows
    info = corpus_info(corpus)
    all_rows = rows["train"] + rows["test"]
    cells = np.concatenate([r["spike_counts"].ravel() for r in all_rows])
    cs = info["count_stats"]
    assert cs["cells_scanned"] == cells.size and not cs["sampled"]
    assert cs["fraction_zero"] == pytest.approx(np.mean(cells == 0))
    values, freq = np.unique(cells, return_counts=True)
    want = np.zeros(256, np.int64)
    want[values] = freq
    assert cs["token_counts"] == want.tolist()
    assert sum(cs["token_probabilities"]) == pytest.approx(1.0)
    assert cs["token_probabilities"][255] == pytest.approx(np.mean(cells == 255))
    assert cs["mean_count"] == pytest.approx(cells.astype(np.float64).mean())
    for split in ("train", "test"):
        split_cells = np.concatenate([r["spike_counts"].ravel() for r in rows[split]])
        assert cs["by_split"][split]["fraction_zero"] == pytest.approx(np.mean(split_cells == 0))
        assert info["splits"][split] == {
            "rows": len(rows[split]), "tokens": split_cells.size,
            "sessions": len({r["session_id"] for r in rows[split]})}
    assert info["clipped_bins"] == int(np.sum(cells == 255))

    bins_by_session: dict[str, int] = {}
    units_by_session: dict[str, int] = {}
    for r in all_rows:
        bins_by_session[r["session_id"]] = bins_by_session.get(r["session_id"], 0) + \
            r["spike_counts"].shape[1]
        units_by_session[r["session_id"]] = r["spike_counts"].shape[0]
    assert info["hours"] == pytest.approx(sum(bins_by_session.values()) * 20 / 1000 / 3600)
    units = np.array(list(units_by_session.values()))
    assert info["units"]["total"] == units.sum() and isinstance(info["units"]["total"], int)  # a count, not 139.0
    assert info["units"]["mean"] == pytest.approx(units.mean())
    assert (info["units"]["min"], info["units"]["max"]) == (units.min(), units.max())
    assert info["num_sessions"] == 5 and info["num_subjects"] == 4
    assert info["num_tokens"] == cells.size
    assert info["num_human_sessions"] == 2
    assert info["species"] == {"Homo sapiens": 2, "Macaca sp.": 1, "Callithrix jacchus": 1,
                               "unknown": 1}
    xiao = [r for r in all_rows if r["source_dataset"] == "xiao"]
    assert info["sources"]["xiao"]["tokens"] == sum(r["spike_counts"].size for r in xiao)
    assert info["sources"]["willett"]["sessions"] == 2
    assert list(info["sources"])[0] == max(info["sources"],
                                           key=lambda k: info["sources"][k]["tokens"])
    assert json.loads(json.dumps(info)) == info  # JSON-serializable as is


def test_max_rows_scans_the_first_rows_in_shard_order(corpus_and_rows):
    corpus, _ = corpus_and_rows
    info = corpus_info(corpus, max_rows=3)
    first = [r.spike_counts.ravel() for r in corpus.iter_rows("train")][:3]
    cells = np.concatenate(first)
    cs = info["count_stats"]
    assert cs["rows_scanned"] == 3 and cs["sampled"]
    assert cs["token_counts"] == np.bincount(cells.astype(np.int64), minlength=256).tolist()
    assert info["num_sessions"] == 5  # manifest numbers still cover everything
    with pytest.raises(ValueError, match="max_rows"):
        corpus_info(corpus, max_rows=0)


def test_format_info_reports_the_numbers(corpus_and_rows):
    corpus, _ = corpus_and_rows
    info = corpus_info(corpus)
    text = format_info(json.loads(json.dumps(info)))  # works on the JSON form too
    assert f"{info['num_tokens']:,}" in text
    assert f"{100 * info['count_stats']['fraction_zero']:.2f} %" in text
    for name in info["sources"]:
        assert name in text
    assert "(2 human)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "first 3 rows" in format_info(corpus_info(corpus, max_rows=3))
    # the mean is of the stored counts: where bins were clipped it says so (this corpus has some)
    mean_line = [line for line in text.splitlines() if line.strip().startswith("mean count")]
    assert info["clipped_bins"] > 0 and "clipped bins count 255" in mean_line[0]
    unclipped = format_info({**info, "clipped_bins": 0})
    assert "clipped bins count" not in [line for line in unclipped.splitlines() if line.strip().startswith("mean count")][0]


def test_real_recording_hours_units_and_zero_fraction(real_nwb, tmp_path):
    from spikefm.corpus.build import BuildConfig, build_corpus

    build_corpus([str(real_nwb)], tmp_path / "c", BuildConfig(max_row_tokens=1_000_000),
                 progress=False)
    corpus = Corpus(tmp_path / "c")
    info = corpus_info(corpus)
    (s,) = corpus.sessions
    assert info["hours"] == pytest.approx(s["duration_s"] / 3600)
    assert info["units"]["total"] == s["num_units"] == 35
    assert info["num_human_sessions"] == 1 and info["species"] == {"Homo sapiens": 1}
    matrix = np.concatenate([r.spike_counts for r in corpus.iter_rows("train")], axis=1)
    assert info["count_stats"]["fraction_zero"] == pytest.approx(np.mean(matrix == 0))
    assert info["count_stats"]["mean_count"] * matrix.size == pytest.approx(s["num_spikes"])


def test_plot_corpus_writes_pngs(corpus_and_rows, tmp_path):
    corpus, _ = corpus_and_rows
    paths = plot_corpus(corpus, tmp_path / "figs", max_raster_units=4, max_raster_bins=10)
    names = sorted(p.name for p in paths)
    assert names == sorted(["units_per_session.png", "session_length.png", "token_marginals.png",
                            "raster_custom-lab.png", "raster_moore.png", "raster_willett.png",
                            "raster_xiao.png"])
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert sorted(x.name for x in (tmp_path / "figs").iterdir()) == names  # no temp files
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "figs" / "raster_xiao.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        plot_corpus(corpus, tmp_path / "file")


def test_raster_window_is_where_the_shown_units_spike_most():
    """The example raster showed the row's first bins, blank for a session whose first minutes
    are quiet; it now shows the window where the units drawn spike most (brute force here)."""
    from spikefm.corpus.plots import raster_window

    rng = np.random.default_rng(3)
    counts = np.zeros((6, 1000), np.uint8)
    counts[:, 700:760] = rng.poisson(2.0, (6, 60))
    counts[5, :300] = 9  # a unit past max_units: its spikes do not count
    first = raster_window(counts, max_units=5, max_bins=100)
    totals = {s: int(counts[:5, s:s + 100].sum()) for s in range(0, 901)}
    assert totals[first] == max(totals.values()) and 700 <= first + 100 and first <= 700
    assert counts[:5, first:first + 100].sum() == counts[:5].sum()  # the whole burst in view
    assert raster_window(counts, 5, 1000) == 0 and raster_window(counts, 5, 5000) == 0
    assert raster_window(np.zeros((3, 50), np.uint8), 3, 10) == 0  # all quiet: the first window


def test_one_unit_raster_has_whole_unit_ticks(tmp_path, monkeypatch):
    """A one-unit raster labelled its unit axis -0.4, -0.2, 0.0, 0.2, 0.4."""
    from spikefm.corpus import plots

    seen = {}
    real_save = plots._save

    def spy(fig, path):
        ax = fig.axes[0]
        seen[path.name] = [t for t in ax.get_yticks() if ax.get_ylim()[1] <= t <= ax.get_ylim()[0]]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    ex = {"counts": np.array([[0, 1, 3, 0, 2]], np.uint8), "session_id": "s", "t_start_ms": 0, "bin_ms": 20}
    plots._raster("lab", ex, 1, tmp_path / "raster_lab.png", 100, 500)
    assert seen["raster_lab.png"] == [0.0]


def test_info_lists_regions_trial_tables_behaviour_and_skipped_inputs(tmp_path):
    """corpus info said nothing of what the sessions hold beyond counts (regions, trials,
    behaviour) nor of the inputs the build left out; checked here against the shards' own rows
    and the NWB files read with h5py."""
    from collections import Counter

    import h5py

    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=2, seed=3, duration_s=20.0)
    (tmp_path / "nwb" / "notes.nwb").write_text("not an NWB file")
    build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(), progress=False)
    corpus = Corpus(tmp_path / "c")
    info = json.loads(json.dumps(corpus_info(corpus)))
    regions, behavior, first_row = Counter(), Counter(), {}
    for split in ("train", "test"):
        for r in corpus.iter_rows(split):
            first_row.setdefault(r.session_id, r)
    for r in first_row.values():
        regions.update(str(x) for x in r.unit_regions)
        behavior.update(r.behavior_names)
    assert info["regions"] == dict(regions) and list(info["regions"].values()) == sorted(regions.values(), reverse=True)
    assert info["behavior"] == dict(behavior) and set(behavior) == {"wheel_speed", "whisker_motion_energy"}
    tables: dict = {}
    for path in sorted((tmp_path / "nwb").rglob("sub-*.nwb")):
        with h5py.File(path, "r") as f:
            for name, group in f["intervals"].items():
                t = tables.setdefault(name, {"sessions": 0, "trials": 0})
                t["sessions"] += 1
                t["trials"] += len(group["start_time"])
    assert info["trial_tables"] == tables and "trials" in tables
    assert len(info["skipped"]) == 1 and info["skipped"][0]["input"].endswith("notes.nwb")
    text = format_info(info)
    assert max(len(line) for line in text.splitlines()) <= 100
    top = next(iter(info["regions"]))
    assert f"{top} {info['regions'][top]:,}" in text and "1 input(s), e.g. " in text
    assert f"trials ({tables['trials']['trials']:,} trials in 2 sessions)" in text
    # a long input path (a deep temporary folder) stays within the 100 columns
    deep = {**info, "skipped": [{"input": "/" + "x" * 120 + "/notes.nwb", "error": "/" + "x" * 120 + "/notes.nwb: not HDF5"}]}
    text = format_info(deep)
    assert max(len(line) for line in text.splitlines()) <= 100 and "e.g. notes.nwb: not HDF5" in text


def test_cli_reads_a_sample_of_rows_with_max_rows(corpus_and_rows, capsys):
    """A whole published corpus takes minutes to count: --max-rows N reads its first N rows (the
    command had no way to; the Python function did)."""
    from spikefm.cli import main

    corpus, _ = corpus_and_rows
    assert main(["corpus", "info", str(corpus.path), "--max-rows", "3", "--json", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count_stats"]["rows_scanned"] == 3 and info["count_stats"]["sampled"]
    assert info["count_stats"] == json.loads(json.dumps(corpus_info(corpus, max_rows=3)))["count_stats"]
    with pytest.raises(SystemExit) as exit_:  # argparse's one line, exit status 2
        main(["corpus", "info", str(corpus.path), "--max-rows", "0"])
    assert exit_.value.code == 2 and "--max-rows: expected a positive integer, got 0" in capsys.readouterr().err


def test_the_marginals_figure_has_a_bar_for_the_counts_past_its_last(corpus_and_rows):
    """At coarse bins most cells hold 10 or more spikes, and the figure drew counts 0..9 only:
    its bars summed to 0.03 under a title of 'marginal token probabilities'."""
    from spikefm.corpus.plots import NUM_MARGINALS_PLOTTED, marginal_bars

    probs = np.r_[np.full(NUM_MARGINALS_PLOTTED, 0.003), np.full(246, 0.97 / 246)]
    labels, values = marginal_bars(probs)
    assert labels[-1] == f">={NUM_MARGINALS_PLOTTED}" and labels[:3] == ["0", "1", "2"]
    assert values.sum() == pytest.approx(1.0) and values[-1] == pytest.approx(0.97)
    labels, values = marginal_bars([0.9, 0.1])  # fewer counts than bars: zeros, nothing past them
    assert values.tolist() == [0.9, 0.1] + [0.0] * (NUM_MARGINALS_PLOTTED - 1)
    corpus, _ = corpus_and_rows  # the corpus's own marginals: every cell in some bar
    from spikefm.corpus.info import corpus_info
    assert marginal_bars(corpus_info(corpus)["count_stats"]["token_probabilities"])[1].sum() == pytest.approx(1.0)


def test_plot_refuses_a_folder_inside_a_corpuss_own_entries(corpus_and_rows, tmp_path):
    """--out CORPUS/data was accepted: the figures went into the corpus's shard folder (its
    immutable version), and the next build refused the corpus ('not a shard of this corpus')."""
    corpus, _ = corpus_and_rows
    before = sorted(p.name for p in (corpus.path / "data").iterdir())
    for inside in (corpus.path / "data", corpus.path / "data" / "figs", corpus.path / ".versions" / "x"):
        with pytest.raises(ValueError, match=rf"^{inside} is inside the corpus {corpus.path} \((data|\.versions)/, "
                                             r"which its builds replace and which holds its shards only\); give a "
                                             rf"folder of its own for the figures, e.g. {corpus.path / 'figures'}$"):
            plot_corpus(corpus, inside)
    assert sorted(p.name for p in (corpus.path / "data").iterdir()) == before
    assert not (corpus.path / ".versions" / "x").exists()
    figs = plot_corpus(corpus, corpus.path / "figures", max_raster_units=4, max_raster_bins=10)  # beside: fine
    assert figs and all(p.parent == corpus.path / "figures" for p in figs)
    import shutil
    shutil.rmtree(corpus.path / "figures")  # the module's corpus as it was


def _copy_corpus(corpus: Corpus, dest: Path) -> Path:
    """A plain copy of the corpus version opened (manifest and shards, no version links)."""
    import shutil

    dest.mkdir()
    shutil.copy(corpus._root / "manifest.json", dest / "manifest.json")
    shutil.copytree(corpus._root / "data", dest / "data")
    return dest


def _edit_train_shard(root: Path, edit) -> None:
    """Rewrite root's train shard with ``edit(table) -> table`` (another tool editing it)."""
    (shard,) = sorted((root / "data").glob("train-*.parquet"))
    pq.write_table(edit(pq.read_table(shard)), shard)


def test_check_reads_every_row_and_finds_them_consistent(corpus_and_rows, capsys):
    from spikefm.cli import main
    from spikefm.corpus.info import check_corpus

    corpus, rows = corpus_and_rows
    check = check_corpus(corpus)
    assert check == {"ok": True, "rows_checked": len(rows["train"]) + len(rows["test"]), "problems": []}
    assert main(["corpus", "info", str(corpus.path), "--check", "--quiet"]) == 0
    assert f"check: {check['rows_checked']} rows read, every one consistent" in capsys.readouterr().out


def test_check_names_rows_that_disagree_with_the_manifest(corpus_and_rows, tmp_path, capsys):
    from spikefm.cli import main
    from spikefm.corpus.info import check_corpus

    corpus, rows = corpus_and_rows
    root = _copy_corpus(corpus, tmp_path / "c")
    # another tool relabels the first w2 row as x1 (12 units in the manifest, 5 here) and another row
    # as a session the manifest does not hold; the row counts stay, so opening the corpus passes
    def relabel(table: pa.Table) -> pa.Table:
        ids = table.column("session_id").to_pylist()
        i = ids.index("w2")
        j = next(k for k, s in enumerate(ids) if s == "c1")
        ids[i], ids[j] = "x1", "zz"
        return table.set_column(table.schema.get_field_index("session_id"), "session_id",
                                pa.array(ids, pa.string()))

    _edit_train_shard(root, relabel)
    check = check_corpus(Corpus(root))
    assert not check["ok"] and check["rows_checked"] == len(rows["train"]) + len(rows["test"])
    text = "\n".join(check["problems"])
    assert "(session 'x1', segment 'segment_0'): 5 units, manifest.json 12" in text
    assert re.search(r"\(session 'zz', segment 'segment_[01]'\): its session is not in manifest\.json", text)
    w2_tokens = 5 * 30
    assert f"session 'w2': its rows hold 0 tokens; manifest.json lists {w2_tokens}" in text
    assert f"session 'x1': its rows hold {12 * 25 * 3 + w2_tokens:,} tokens; manifest.json lists 900" in text
    assert main(["corpus", "info", str(root), "--check", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "disagree with manifest.json" in out and "rebuild the corpus" in out


def test_check_stops_at_a_row_the_reader_refuses_naming_its_shard(corpus_and_rows, tmp_path):
    from spikefm.corpus.info import check_corpus

    corpus, _ = corpus_and_rows
    root = _copy_corpus(corpus, tmp_path / "c")
    _edit_train_shard(root, lambda t: t.set_column(t.schema.get_field_index("trials_json"), "trials_json",
                                                    pa.array(["[1, 2"] * t.num_rows, pa.string())))
    opened = Corpus(root)
    corpus_info(opened)  # the count statistics read only the counts: no error
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: the row of session .* has "
                                         r"trials_json that is not JSON"):
        check_corpus(opened)


def test_ctrl_c_while_pandas_is_first_imported_ends_the_command(corpus_and_rows, tmp_path):
    """pyarrow imports pandas lazily on a corpus's first read, and its import shim swallowed a
    KeyboardInterrupt raised meanwhile: a Ctrl-C in that second was lost (the command ran on and
    exited 0). A pandas whose import is interrupted stands in for the Ctrl-C."""
    import os
    import subprocess
    import sys

    corpus, _ = corpus_and_rows
    fake = tmp_path / "fake"
    (fake / "pandas").mkdir(parents=True)
    (fake / "pandas" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    src = str(Path(__import__("spikefm").__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), src])}
    proc = subprocess.run([sys.executable, "-m", "spikefm.cli", "corpus", "info", str(corpus.path), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 130, (proc.returncode, proc.stdout[-300:], proc.stderr[-300:])
    assert proc.stderr.strip().startswith("spikefm: error: interrupted (Ctrl-C)") and not proc.stdout
