"""``import_neural_pile``: fake published Neural Pile folders (written with ``datasets`` as the
Neural Pile's author did, and with plain pyarrow) -> spikefm corpora, checked row by row."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.corpus.importer import import_neural_pile
from spikefm.corpus.schema import NEURAL_PILE_COLUMNS, ROW_SCHEMA, SCHEMA_VERSION

SHA = "0123456789abcdef0123456789abcdef01234567"
COUNTS_TYPE = pa.list_(pa.list_(pa.uint8()))


def published_rows(seed: int = 0) -> list[dict]:
    """Sessions cut into segments as the Neural Pile scripts do (ceil-sized equal chunks), with
    a few 255-valued cells. Each row also carries its true start bin (``_start``) for checks."""
    rng = np.random.default_rng(seed)
    specs = [  # (source, subject, session, units, bins, segments)
        ("willett", "T5", "t5.2019.05.08", 4, 37, 3),
        ("xiao", "Pa", "sub-Pa_ses-1", 6, 20, 1),
        ("xiao", "Pa", "sub-Pa_ses-2", 3, 25, 2),
        ("perich", "C", "sub-Pa_ses-1", 5, 11, 1),  # same session id as a xiao session
        (None, "M", "ses-m", 2, 9, 2),  # no source_dataset (as in some published subsets)
    ]
    rows = []
    for src, subj, sess, units, bins, segs in specs:
        counts = rng.poisson(0.7, size=(units, bins)).astype(np.uint8)
        counts[rng.random((units, bins)) < 0.03] = 255
        counts[0, -1] = 255  # every session has a clipped cell
        size = math.ceil(bins / segs)
        for i in range(segs):
            a, b = i * size, min((i + 1) * size, bins)
            rows.append({"spike_counts": counts[:, a:b].copy(), "subject_id": subj,
                         "session_id": sess, "segment_id": f"segment_{i}",
                         "source_dataset": src, "_start": a})
    order = rng.permutation(len(rows))  # the published dataset is shuffled
    return [rows[i] for i in order]


def write_pyarrow(rows: list[dict], path: Path, columns=NEURAL_PILE_COLUMNS) -> None:
    arrays = {c: (pa.array([r[c].tolist() for r in rows], COUNTS_TYPE) if c == "spike_counts"
                  else pa.array([r[c] for r in rows], pa.string())) for c in columns}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)


def write_datasets(rows: list[dict], path: Path, cache_dir: Path) -> Path:
    """The Neural Pile author's way: Dataset.from_generator(...) then Parquet. Returns the Arrow
    cache file datasets wrote on the way."""
    import datasets

    datasets.disable_progress_bars()

    def gen():
        for r in rows:
            yield {c: r[c] for c in NEURAL_PILE_COLUMNS}

    ds = datasets.Dataset.from_generator(gen, writer_batch_size=1, cache_dir=str(cache_dir))
    assert str(ds.features["spike_counts"]) == "List(List(Value('uint8')))"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return Path(ds.cache_files[0]["filename"])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A folder in the published layout: train shard 0 by datasets, train shard 1 and the test
    shard by pyarrow. Returns (folder, {(session, segment): (split, row)}, arrow cache file)."""
    root = tmp_path_factory.mktemp("pub") / "neural-pile-fake"
    rows = published_rows()
    # datasets infers types from values: the source-less rows go to the pyarrow shards.
    train_a = [r for r in rows if r["source_dataset"]][:4]
    rest = [r for r in rows if not any(r is x for x in train_a)]
    train_b, test = rest[:3], rest[3:]
    arrow_file = write_datasets(train_a, root / "data" / "train-00000-of-00002.parquet",
                                tmp_path_factory.mktemp("hfcache"))
    write_pyarrow(train_b, root / "data" / "train-00001-of-00002.parquet")
    write_pyarrow(test, root / "data" / "test-00000-of-00001.parquet")
    truth = {}
    for split, part in (("train", train_a + train_b), ("test", test)):
        for r in part:
            truth[(r["source_dataset"], r["session_id"], r["segment_id"])] = (split, r)
    return root, truth, arrow_file


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory):
    root, truth, _ = published
    out = tmp_path_factory.mktemp("corpus") / "c"
    manifest = import_neural_pile(str(root), out, progress=False)
    return out, manifest, truth


def corpus_rows(corpus: Corpus) -> list[tuple[str, object]]:
    return [(split, r) for split in ("train", "test") for r in corpus.iter_rows(split)]


def original_key(corpus: Corpus, row) -> tuple:
    s = corpus.session(row.session_id)
    src = None if s["source_dataset"] == "neural-pile-fake" else s["source_dataset"]
    return (src, s.get("original_session_id", row.session_id), row.segment_id)


# --- the import, row by row --------------------------------------------------------------------

def test_rows_equal_source_rows_and_keep_their_split(imported):
    out, manifest, truth = imported
    corpus = Corpus(out)
    got = corpus_rows(corpus)
    assert len(got) == len(truth)
    seen = set()
    for split, row in got:
        key = original_key(corpus, row)
        want_split, want = truth[key]
        assert split == want_split
        assert row.spike_counts.dtype == np.uint8
        np.testing.assert_array_equal(row.spike_counts, want["spike_counts"])
        assert row.subject_id == want["subject_id"]
        assert row.bin_ms == 20
        assert row.unit_ids == [str(i) for i in range(row.num_units)]
        assert row.unit_regions == ["unknown"] * row.num_units
        assert row.behavior_names == [] and row.behavior.size == 0
        assert row.trials == {}
        seen.add(key)
    assert seen == set(truth)
    for split in ("train", "test"):
        want_rows = [r for s, r in truth.values() if s == split]
        sp = manifest["splits"][split]
        assert sp["num_rows"] == len(want_rows)
        assert sp["num_tokens"] == sum(r["spike_counts"].size for r in want_rows)
        assert all(re.fullmatch(rf"data/{split}-\d{{5}}-of-\d{{5}}\.parquet", p)
                   for p in sp["shards"])


def test_shards_have_row_schema_and_zstd(imported):
    out, manifest, _ = imported
    for sp in manifest["splits"].values():
        for shard in sp["shards"]:
            pf = pq.ParquetFile(out / shard)
            assert pf.schema_arrow.equals(ROW_SCHEMA)
            assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    # no temporary left: only the lock, the version pointer and the one version it points to
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == \
        [".current", ".spikefm.lock", ".versions"]
    assert [p.name for p in (out / ".versions").iterdir()] == \
        [Path(os.readlink(out / ".current")).name]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.suffix == ".part"]


def test_t_start_follows_segment_order(imported):
    out, _, truth = imported
    corpus = Corpus(out)
    for _, row in corpus_rows(corpus):
        want = truth[original_key(corpus, row)][1]
        assert row.t_start_ms == want["_start"] * 20
    assert all(s["segments_ordered"] for s in corpus.sessions)


def test_manifest_sessions_count_255_cells_species_and_renames(published, imported):
    root = published[0]
    out, manifest, truth = imported
    by_key: dict[tuple, list[dict]] = {}
    for (src, sess, _), (_, r) in truth.items():
        by_key.setdefault((src or "neural-pile-fake", sess), []).append(r)
    assert manifest["num_sessions"] == len(by_key) == len(manifest["sessions"])
    ids = [s["session_id"] for s in manifest["sessions"]]
    assert len(set(ids)) == len(ids)  # the shared published id was made unique
    for s in manifest["sessions"]:
        rows = by_key[(s["source_dataset"], s.get("original_session_id", s["session_id"]))]
        cells = np.concatenate([r["spike_counts"].ravel() for r in rows])
        assert s["clipped_bins"] == int((cells == 255).sum()) > 0
        assert s["num_spikes"] == int(cells.astype(np.int64).sum())
        assert s["num_tokens"] == cells.size
        assert s["num_bins"] == sum(r["spike_counts"].shape[1] for r in rows)
        assert s["num_units"] == rows[0]["spike_counts"].shape[0]
        assert s["duration_s"] == pytest.approx(s["num_bins"] * 0.02)
        assert s["num_rows"] == len(rows)
        assert s["provenance"] == {"path": str(root.resolve())}
        want_species = {"willett": "Homo sapiens", "xiao": "Macaca sp.",
                        "perich": "Macaca sp."}.get(s["source_dataset"], "")
        assert s["species"] == want_species and s["is_human"] == (want_species == "Homo sapiens")
    renamed = [s for s in manifest["sessions"] if "original_session_id" in s]
    assert [s["original_session_id"] for s in renamed] == ["sub-Pa_ses-1"]
    assert manifest["num_human_sessions"] == 1
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_rows_without_source_get_the_folder_name(imported):
    out, manifest, _ = imported
    sources = {s["source_dataset"] for s in manifest["sessions"]}
    assert sources == {"willett", "xiao", "perich", "neural-pile-fake"}


# --- other inputs ------------------------------------------------------------------------------

def test_datasets_arrow_cache_file_imports_like_its_parquet(published, tmp_path):
    root, truth, arrow_file = published
    folder = tmp_path / "cache"
    folder.mkdir()
    shutil.copy(arrow_file, folder / "neural-pile-fake-train.arrow")  # an IPC stream
    # the same rows as an IPC *file* (the other Arrow container), in the test split
    table = pq.read_table(root / "data" / "test-00000-of-00001.parquet")
    with pa.OSFile(str(folder / "fake-test-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=2)
    m = import_neural_pile(str(folder), tmp_path / "c", progress=False)
    corpus = Corpus(tmp_path / "c")
    want_train = pq.read_table(root / "data" / "train-00000-of-00002.parquet")
    assert m["splits"]["train"]["num_rows"] == want_train.num_rows
    assert m["splits"]["test"]["num_rows"] == table.num_rows
    for split, src_table in (("train", want_train), ("test", table)):
        want = {(r["session_id"], r["segment_id"]): np.array(r["spike_counts"], np.uint8)
                for r in src_table.to_pylist()}
        for row in corpus.iter_rows(split):
            sid = corpus.session(row.session_id).get("original_session_id", row.session_id)
            np.testing.assert_array_equal(row.spike_counts, want[(sid, row.segment_id)])


def test_hub_source_calls_snapshot_download(published, tmp_path, monkeypatch):
    import huggingface_hub

    root, truth, _ = published
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        if kw.get("dry_run"):
            return [SimpleNamespace(filename=str(p.relative_to(root)), commit_hash=SHA)
                    for p in sorted(root.rglob("*.parquet"))]
        snap = tmp_path / "hub" / "snapshots" / SHA
        shutil.copytree(root, snap)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    m = import_neural_pile("eminorhan/neural-pile-primate", tmp_path / "c", progress=False,
                           cache_dir=str(tmp_path / "hfc"))
    (repo_id, listing_kw), (repo_id2, kw) = calls
    assert listing_kw["dry_run"] and repo_id == repo_id2 == "eminorhan/neural-pile-primate"
    assert kw["revision"] == SHA  # the listed commit is the one downloaded
    assert kw["repo_type"] == "dataset" and kw["cache_dir"] == str(tmp_path / "hfc")
    assert any(p.endswith(".parquet") for p in kw["allow_patterns"])
    assert m["provenance"] == {"hf_repo": "eminorhan/neural-pile-primate", "revision": SHA}
    assert all(s["provenance"] == m["provenance"] for s in m["sessions"])
    assert "neural-pile-primate" in {s["source_dataset"] for s in m["sessions"]}
    assert sum(sp["num_rows"] for sp in m["splits"].values()) == len(truth)


def test_hub_failure_and_missing_huggingface_hub_give_the_fix(tmp_path, monkeypatch):
    import sys

    import huggingface_hub

    def failing(repo_id, **kw):
        raise RuntimeError("404 Client Error: Repository Not Found\nRequest ID: abc")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    msg = one_line_error(lambda: import_neural_pile("someone/no-such-pile", tmp_path / "c",
                                                    progress=False), "download")
    assert "404" in msg and "local folder" in msg
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'spikefm\[hf\]'"):
        import_neural_pile("hf:someone/pile", tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_component_subset_without_source_column_and_wider_ints(tmp_path):
    """A subset like eminorhan/willett has four columns; counts stored as int64 above 255 are
    clipped to 255 and counted."""
    counts = np.array([[0, 300, 2], [255, 1, 0]], dtype=np.int64)
    table = pa.table({"spike_counts": pa.array([counts.tolist()], pa.list_(pa.list_(pa.int64()))),
                      "subject_id": ["T5"], "session_id": ["s"], "segment_id": ["segment_0"]})
    (tmp_path / "willett" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "willett" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "willett"), tmp_path / "c", progress=False)
    (s,) = m["sessions"]
    assert s["source_dataset"] == "willett" and s["species"] == "Homo sapiens"
    assert s["clipped_bins"] == 2
    (row,) = list(Corpus(tmp_path / "c").iter_rows("train"))
    np.testing.assert_array_equal(row.spike_counts, np.minimum(counts, 255).astype(np.uint8))
    assert m["splits"]["test"] == {"num_rows": 0, "num_tokens": 0, "num_sessions": 0,
                                   "shards": []}


def test_small_shards_and_reimport_replace_the_corpus(published, tmp_path):
    root, truth, _ = published
    out = tmp_path / "c"
    m1 = import_neural_pile(str(root), out, progress=False, shard_max_tokens=60)
    shards = m1["splits"]["train"]["shards"]
    assert len(shards) > 1
    n = len(shards)
    assert shards == [f"data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(
        Path(p).name for sp in m1["splits"].values() for p in sp["shards"])
    for shard in shards:
        tokens = sum(len(u) * len(u[0]) for u in pq.read_table(out / shard)
                     .column("spike_counts").to_pylist())
        assert tokens <= 60 or pq.read_metadata(out / shard).num_rows == 1
    m2 = import_neural_pile(str(root), out, progress=False)
    assert len(m2["splits"]["train"]["shards"]) == 1
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(
        Path(p).name for sp in m2["splits"].values() for p in sp["shards"])
    assert sum(1 for _ in Corpus(out).iter_rows("train")) == m1["splits"]["train"]["num_rows"]
    # the same import again keeps the corpus's identity (a run trained on it saw it 'changed': a new
    # version, only created_utc differing); the first import's files stay as they were
    digest = Corpus(out).manifest_hash
    version = (out / ".current").resolve()
    m3 = import_neural_pile(str(root), out, progress=False)
    assert Corpus(out).manifest_hash == digest and (out / ".current").resolve() == version
    assert m3 == m2 and len(list((out / ".versions").iterdir())) == 1


# --- bad sources -------------------------------------------------------------------------------

def one_line_error(fn, match: str) -> str:
    with pytest.raises(ValueError, match=match) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_folder_is_a_one_line_error(tmp_path):
    one_line_error(lambda: import_neural_pile(str(tmp_path / "nope"), tmp_path / "c",
                                              progress=False), "no such folder")
    assert not (tmp_path / "c").exists()


def test_folder_without_parquet_is_a_one_line_error(tmp_path):
    (tmp_path / "src" / "data").mkdir(parents=True)
    (tmp_path / "src" / "data" / "README.md").write_text("hello")
    one_line_error(lambda: import_neural_pile(str(tmp_path / "src"), tmp_path / "c",
                                              progress=False), "no Parquet")


def test_wrong_columns_and_ragged_rows_are_errors(tmp_path):
    (tmp_path / "a").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a" / "train.parquet")
    one_line_error(lambda: import_neural_pile(str(tmp_path / "a"), tmp_path / "c",
                                              progress=False), "missing column")
    ragged = [{"spike_counts": np.zeros((2, 3), np.uint8), "subject_id": "s", "session_id": "x",
               "segment_id": "segment_0", "source_dataset": "d"}]
    write_pyarrow(ragged, tmp_path / "b" / "data" / "train-00000-of-00001.parquet")
    t = pq.read_table(tmp_path / "b" / "data" / "train-00000-of-00001.parquet")
    t = t.set_column(0, "spike_counts", pa.array([[[0, 1, 2], [0]]], COUNTS_TYPE))
    pq.write_table(t, tmp_path / "b" / "data" / "train-00000-of-00001.parquet")
    one_line_error(lambda: import_neural_pile(str(tmp_path / "b"), tmp_path / "c",
                                              progress=False), "different lengths")
    assert not (tmp_path / "c").exists()


def test_refuses_a_folder_that_is_not_a_corpus(published, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    one_line_error(lambda: import_neural_pile(str(published[0]), tmp_path / "c",
                                              progress=False), "not a spikefm corpus")
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_another_corpus_in_out_is_refused_untouched_unless_overwrite(published, imported, tmp_path, capsys):
    """A re-import of the same source replaces its corpus; a corpus imported from elsewhere (or
    built from NWB files) is refused untouched, and replaced with --overwrite."""
    from spikefm.cli import main

    root = published[0]
    other = tmp_path / "other_pile"
    shutil.copytree(root, other)
    out = tmp_path / "c"
    import_neural_pile(str(root), out, progress=False)
    before = (out / "manifest.json").read_bytes()
    msg = one_line_error(lambda: import_neural_pile(str(other), out, progress=False), "pass --overwrite")
    assert msg == (f"{out}: holds a corpus imported from {root}; pass --overwrite to replace it with this "
                   f"import of {other}, or give another --out")
    assert (out / "manifest.json").read_bytes() == before
    assert main(["corpus", "import", str(other), "--out", str(out), "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (out / "manifest.json").read_bytes() == before
    (out / ".staging").mkdir()  # a build's per-session cache (a corpus built there before)
    (out / ".staging" / "key.arrow").write_bytes(b"staged")
    assert main(["corpus", "import", str(other), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["build"]["source"] == str(other)
    assert not (out / ".staging").exists()  # stale: it was left, and copied with the corpus


def test_a_spikefm_corpus_folder_imports_through_its_data_link(imported, tmp_path):
    """A spikefm corpus is itself in the published layout: its ``data`` link into the hidden
    ``.versions/`` is followed, and the rows come back equal."""
    src, manifest, _ = imported
    assert (src / "data").is_symlink()
    m = import_neural_pile(str(src), tmp_path / "again", progress=False)
    assert {k: v["num_tokens"] for k, v in m["splits"].items()} == \
        {k: v["num_tokens"] for k, v in manifest["splits"].items()}
    a = sorted((r.session_id, r.t_start_ms, r.spike_counts.tobytes()) for r in Corpus(src).iter_rows("train"))
    b = sorted((r.session_id, r.t_start_ms, r.spike_counts.tobytes()) for r in Corpus(tmp_path / "again").iter_rows("train"))
    assert a == b


def test_a_reimport_of_the_same_folder_written_otherwise_is_not_refused(published, tmp_path, monkeypatch):
    root = published[0]
    out = tmp_path / "c"
    import_neural_pile(str(root), out, progress=False)
    monkeypatch.chdir(root.parent)
    for spelling in (f"./{root.name}", f"{root.name}/", str(root.resolve())):
        import_neural_pile(spelling, out, progress=False)  # the same folder: replaced, not refused


def test_a_hub_import_is_not_taken_for_a_local_folder_of_the_same_name(tmp_path, monkeypatch):
    """The corpus imported from the Hub repo org/name records no path; with a local folder
    ./org/name present, importing 'org/name' (the folder) passed as a re-import, and
    'hf:org/name' (the same repo) was refused."""
    from types import SimpleNamespace

    from spikefm.corpus.importer import _check_replace

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    hub = SimpleNamespace(build=SimpleNamespace(importer="neural_pile", source="org/name"),
                          provenance={"hf_repo": "org/name", "revision": "abc"})
    with pytest.raises(ValueError, match="pass --overwrite"):
        _check_replace(tmp_path / "c", hub, "org/name", False)  # the local folder: other data
    _check_replace(tmp_path / "c", hub, "hf:org/name", False)  # the same repo
    _check_replace(tmp_path / "c", hub, "hf:org/name@v2", False)  # another revision of it


# --- a spikefm corpus round-trips; partial downloads, bad rows, --out placement ----------------

@pytest.fixture(scope="module")
def spikefm_corpus_10ms(tmp_path_factory):
    """A corpus built from synthetic NWB sessions (behaviour, trials, regions) at 10 ms bins,
    each session cut into several rows, one session in the test split."""
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    tmp = tmp_path_factory.mktemp("sf10")
    synthesize(tmp / "nwb", num_sessions=3, seed=4, duration_s=20.0, units_range=(20, 24))
    build_corpus([str(tmp / "nwb")], tmp / "c", BuildConfig(bin_ms=10, max_row_tokens=20_000,
                                                             test_fraction=0.3), progress=False)
    return tmp / "c"


def _all_rows(corpus_dir: Path) -> dict:
    """Every column of every row, keyed by (split, session, segment), read with pyarrow alone."""
    out = {}
    for split in ("train", "test"):
        for f in sorted((corpus_dir / "data").glob(f"{split}-*.parquet")):
            for row in pq.read_table(f).to_pylist():
                out[(split, row["session_id"], row["segment_id"])] = row
    return out


def test_a_spikefm_corpus_round_trips_with_every_column(spikefm_corpus_10ms, tmp_path):
    """Its own bin width, start times, unit ids / regions, species, behaviour and trials are
    kept (they were replaced by the Neural Pile defaults: 20 ms bins, doubled start times,
    regions 'unknown', no behaviour), and the manifest's sessions say what the original's say."""
    src = spikefm_corpus_10ms
    m = import_neural_pile(str(src), tmp_path / "again", progress=False)
    before, after = _all_rows(src), _all_rows(tmp_path / "again")
    assert before.keys() == after.keys() and len(before) > 3
    assert {k[0] for k in before} == {"train", "test"}
    for k in before:
        a, b = dict(after[k]), dict(before[k])
        np.testing.assert_array_equal(np.array(a.pop("behavior"), dtype=np.float32),
                                      np.array(b.pop("behavior"), dtype=np.float32))  # NaN == NaN
        assert a == b, k
    assert {r["bin_ms"] for r in after.values()} == {10} and m["bin_ms"] == 10
    assert any(r["behavior_names"] for r in after.values())
    assert any(json.loads(r["trials_json"]) for r in after.values())
    orig = {s["session_id"]: s for s in json.loads((src / "manifest.json").read_text())["sessions"]}
    for s in m["sessions"]:
        o = orig[s["session_id"]]
        for field in ("num_units", "num_bins", "bin_ms", "t_start_ms", "duration_s", "regions",
                      "behavior_names", "trial_tables", "species", "is_human", "num_rows",
                      "num_tokens", "num_spikes", "split"):
            assert s[field] == o[field], (s["session_id"], field, s[field], o[field])
    # a bin width the rows contradict is refused, before anything is written
    with pytest.raises(ValueError, match=r"the rows give bin_ms 10, but bin_ms 20 was asked for"):
        import_neural_pile(str(src), tmp_path / "other", progress=False, bin_ms=20)
    assert not (tmp_path / "other").exists()


def test_rows_of_two_bin_widths_are_refused(spikefm_corpus_10ms, published, tmp_path):
    mixed = tmp_path / "mixed" / "data"
    mixed.mkdir(parents=True)
    shutil.copy(next((spikefm_corpus_10ms / "data").glob("train-*.parquet")),
                mixed / "train-00000-of-00002.parquet")
    shutil.copy(published[0] / "data" / "train-00001-of-00002.parquet",
                mixed / "train-00001-of-00002.parquet")
    msg = one_line_error(lambda: import_neural_pile(str(mixed.parent), tmp_path / "c",
                                                    progress=False), "one bin width")
    assert "rows have no bin_ms (no such column" in msg and "10 ms" in msg
    # each width named with a row that has it: with many shards the files to separate are found
    assert "e.g. " + str(mixed / "train-00001-of-00002.parquet") in msg
    assert "e.g. " + str(mixed / "train-00000-of-00002.parquet") in msg
    assert not (tmp_path / "c").exists()


def test_missing_shards_are_named_and_broken_links_refused(published, tmp_path, capsys):
    """A partial download: the -of-N names say which shards are absent (imported with a warning,
    listed as skipped); a link to a file that never arrived is refused."""
    root = published[0]
    part = tmp_path / "part" / "data"
    part.mkdir(parents=True)
    shutil.copy(root / "data" / "train-00000-of-00002.parquet", part)
    shutil.copy(root / "data" / "test-00000-of-00001.parquet", part)
    m = import_neural_pile(str(part.parent), tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    assert "1 shard(s) missing" in err and "train-00001-of-00002.parquet" in err
    assert [s["input"] for s in m["skipped"]] == [str(part / "train-00001-of-00002.parquet")]
    os.symlink(tmp_path / "nowhere.parquet", part / "train-00001-of-00002.parquet")
    msg = one_line_error(lambda: import_neural_pile(str(part.parent), tmp_path / "c2",
                                                    progress=False), "point to nothing")
    assert "train-00001-of-00002.parquet" in msg and "download again" in msg
    assert not (tmp_path / "c2").exists()


def test_out_inside_the_source_folder_is_refused(published, tmp_path):
    src = tmp_path / "pub"
    shutil.copytree(published[0], src)
    msg = one_line_error(lambda: import_neural_pile(str(src), src / "data" / "sub",
                                                    progress=False), "inside the source folder")
    assert "--out outside" in msg and not (src / "data" / "sub").exists()


def test_repeated_rows_warn_and_rows_without_session_or_counts(published, tmp_path, capsys):
    root = published[0]
    twice = tmp_path / "twice"
    shutil.copytree(root, twice / "a")
    shutil.copytree(root / "data", twice / "b" / "data")
    m = import_neural_pile(str(twice), tmp_path / "c", progress=False)
    assert "rows repeat the (source, subject, session, segment)" in capsys.readouterr().err
    assert sum(sp["num_rows"] for sp in m["splits"].values()) == 2 * len(published[1])

    def table(sessions, counts):
        return pa.table({"spike_counts": pa.array(counts, COUNTS_TYPE),
                         "subject_id": ["S"] * len(counts), "session_id": sessions,
                         "segment_id": ["segment_0"] * len(counts)})

    (tmp_path / "nul" / "data").mkdir(parents=True)
    pq.write_table(table([None], [[[1, 2]]]), tmp_path / "nul" / "data" / "train-00000-of-00001.parquet")
    msg = one_line_error(lambda: import_neural_pile(str(tmp_path / "nul"), tmp_path / "c3",
                                                    progress=False), "no session_id")
    assert "row 0" in msg
    (tmp_path / "empty" / "data").mkdir(parents=True)
    pq.write_table(table(["a", "b", "c"], [[[1, 2]], [], [[], []]]),
                   tmp_path / "empty" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "empty"), tmp_path / "c4", progress=False)
    assert "2 rows have no units or no bins; left out" in capsys.readouterr().err
    assert [s["session_id"] for s in m["sessions"]] == ["a"]
    assert [r.session_id for r in Corpus(tmp_path / "c4").iter_rows("train")] == ["a"]
    # left out and recorded (the README said so; the manifest's skipped was empty)
    shard = tmp_path / "empty" / "data" / "train-00000-of-00001.parquet"
    assert m["skipped"] == [{"input": f"{shard} row 1", "error": "no units or no bins (0 x 0); left out"},
                            {"input": f"{shard} row 2", "error": "no units or no bins (2 x 0); left out"}]


def test_unreadable_shards_and_ids_are_named_in_one_line(tmp_path):
    """A shard damaged past its footer said 'Corrupt snappy compressed data.' (exit 1), an id
    column of Latin-1 bytes "'utf-8' codec can't decode byte 0xe9", naming neither file nor row;
    a download under a folder whose name is not UTF-8 was refused by pyarrow's path parsing."""
    import os

    def table(subject):
        return pa.table({"spike_counts": pa.array([np.ones((3, 40), np.uint8).tolist()] * 50, COUNTS_TYPE),
                         "subject_id": subject, "session_id": ["s"] * 50,
                         "segment_id": [f"segment_{i}" for i in range(50)]})

    good = table(["S"] * 50)
    bad = tmp_path / "bad" / "data" / "train-00000-of-00001.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(good, bad, compression="snappy")
    data = bytearray(bad.read_bytes())
    data[100:len(data) // 2] = b"\xab" * (len(data) // 2 - 100)  # the footer intact, the pages not
    bad.write_bytes(bytes(data))
    msg = one_line_error(lambda: import_neural_pile(str(tmp_path / "bad"), tmp_path / "c1", progress=False),
                         re.escape(f"{bad}: not a readable Parquet file ("))
    assert msg.endswith("download that file again (it may be damaged or incomplete)")
    assert not (tmp_path / "c1").exists() or not (tmp_path / "c1" / "manifest.json").exists()

    latin = tmp_path / "latin" / "data" / "train-00000-of-00001.parquet"
    latin.parent.mkdir(parents=True)
    names = pa.array([b"S"] * 7 + [b"Ch\xe9wie"] * 43, pa.binary()).view(pa.string())
    pq.write_table(table(names), latin)
    msg = one_line_error(lambda: import_neural_pile(str(tmp_path / "latin"), tmp_path / "c2", progress=False),
                         re.escape(f"{latin}: row 7's subject_id is not UTF-8 text (found b'Ch\\xe9wie')"))

    folder = os.fsencode(tmp_path / "nonutf8") + b"/d\xe9j\xe0/data"
    os.makedirs(folder)
    with open(folder + b"/train-00000-of-00001.parquet", "wb") as f:
        pq.write_table(good, f)
    m = import_neural_pile(str(tmp_path / "nonutf8"), tmp_path / "c3", progress=False)
    assert sum(sp["num_rows"] for sp in m["splits"].values()) == 50


def test_a_hub_repo_already_in_the_cache_imports_offline(published, tmp_path, monkeypatch, capsys):
    """With the Hub unreachable, the snapshot a download left in the cache is imported (found by
    huggingface_hub itself, local_files_only), with a warning."""
    from spikefm.corpus import importer

    cache = tmp_path / "hubcache"
    repo = cache / "datasets--eminorhan--neural-pile-primate"
    shutil.copytree(published[0] / "data", repo / "snapshots" / SHA / "data")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)

    def offline(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(importer, "_hub_listing", offline)
    m = import_neural_pile("eminorhan/neural-pile-primate", tmp_path / "c", progress=False,
                           cache_dir=str(cache))
    assert "could not be reached" in capsys.readouterr().err
    assert m["provenance"] == {"hf_repo": "eminorhan/neural-pile-primate", "revision": SHA}
    assert sum(sp["num_rows"] for sp in m["splits"].values()) == len(published[1])
    msg = one_line_error(lambda: import_neural_pile("eminorhan/neural-pile-rodent", tmp_path / "c2",
                                                    progress=False, cache_dir=str(cache)),
                         "download from the Hugging Face Hub failed")
    assert "resolve" in msg


def test_the_readmes_upload_recipe_selects_every_shard(imported):
    """The README uploads CORPUS_DIR/data and manifest.json by their own paths because the Hub
    client's folder walk does not follow the data link; check the selection the client makes."""
    from huggingface_hub import HfApi

    out = imported[0]
    prepare = getattr(HfApi, "_prepare_upload_folder_additions", None)
    if prepare is None:
        pytest.skip("this huggingface_hub has no _prepare_upload_folder_additions")
    ops = prepare(HfApi(token=False), out / "data", "data", repo_type="dataset")
    shards = sorted(str(p.relative_to(out)) for p in (out / "data").glob("*.parquet"))
    assert sorted(op.path_in_repo for op in ops) == shards and len(shards) >= 2


def test_dir_of_the_packages_lists_their_lazy_names_without_importing_them():
    """dir(spikefm) and dir(spikefm.corpus) left out Corpus, load_model, build_corpus, ...: tab
    completion did not offer them."""
    import subprocess
    import sys

    import spikefm
    import spikefm.corpus

    for module in (spikefm, spikefm.corpus):
        names = dir(module)
        assert set(module.__all__) <= set(names), module.__name__
        assert "__version__" in dir(spikefm) and names == sorted(names)
        for name in module.__all__:
            getattr(module, name)  # every listed name resolves
    # listing the names imports nothing heavy (import spikefm stays torch-free)
    code = ("import sys, spikefm, spikefm.corpus; dir(spikefm); dir(spikefm.corpus); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
