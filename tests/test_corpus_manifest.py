"""The typed manifest: build and import write it through one record, it round-trips exactly,
and a damaged one gives a one-line error naming the file, the key, expected and found."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.importer import import_neural_pile
from spikefm.corpus.manifest import Manifest, ManifestError, read_manifest

from test_corpus_support import write_sessions

BUILD_SESSION_KEYS = ["session_id", "subject_id", "source_dataset", "species", "is_human",
                      "num_units", "num_bins", "bin_ms", "t_start_ms", "duration_s", "num_rows",
                      "num_tokens", "num_spikes", "clipped_bins", "regions", "behavior_names",
                      "trial_tables", "provenance", "license", "split"]
TOP_KEYS = ["schema_version", "spikefm_version", "created_utc", "bin_ms", "build", "splits",
            "num_sessions", "num_human_sessions", "sessions", "skipped"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    write_sessions(root / "in", 3, seed=2, duration_s=8.0)
    build_corpus([str(root / "in")], root / "c", BuildConfig(test_fraction=0.3), progress=False)
    return root / "c"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pile")
    counts = np.arange(12, dtype=np.uint8).reshape(3, 4)
    table = pa.table({"spike_counts": pa.array([counts.tolist()] * 2,
                                                pa.list_(pa.list_(pa.uint8()))),
                      "subject_id": ["a", "a"], "session_id": ["s", "s"],
                      "segment_id": ["segment_0", "segment_1"], "source_dataset": ["xiao"] * 2})
    (root / "pile" / "data").mkdir(parents=True)
    pq.write_table(table, root / "pile" / "data" / "train-00000-of-00001.parquet")
    import_neural_pile(str(root / "pile"), root / "c", progress=False)
    return root / "c"


def test_build_manifest_layout_is_unchanged_and_round_trips(built):
    raw = json.loads((built / "manifest.json").read_text())
    assert list(raw) == TOP_KEYS
    assert list(raw["build"])[:4] == ["max_row_tokens", "test_fraction", "split", "seed"]
    for s in raw["sessions"]:
        assert list(s) == BUILD_SESSION_KEYS
    assert list(raw["splits"]) == ["train", "test"]
    record = Manifest.from_dict(raw)
    assert record.to_dict() == raw and list(record.to_dict()) == list(raw)
    assert record.to_json() == (built / "manifest.json").read_bytes()  # byte for byte
    corpus = Corpus(built)
    assert corpus.manifest == raw and isinstance(corpus.manifest, dict)
    assert corpus.manifest_record.sessions[0].session_id == raw["sessions"][0]["session_id"]
    assert corpus.manifest_record.splits["train"].num_tokens == corpus.num_tokens("train")


def test_import_manifest_round_trips_with_its_own_keys(imported):
    raw = json.loads((imported / "manifest.json").read_text())
    assert raw["build"]["importer"] == "neural_pile" and raw["provenance"]["path"]
    (s,) = raw["sessions"]
    assert s["segments_ordered"] is True and s["num_spikes"] == 2 * sum(range(12))
    assert Manifest.from_dict(raw).to_json() == (imported / "manifest.json").read_bytes()


def test_unknown_keys_and_minimal_manifests_are_kept(tmp_path):
    minimal = {"schema_version": 1, "bin_ms": 20, "sessions": [],
               "splits": {"train": {"num_rows": 0, "num_tokens": 0, "num_sessions": 0,
                                    "shards": []}}}
    assert Manifest.from_dict(minimal).to_dict() == minimal  # benchmarks write such manifests
    extra = copy.deepcopy(minimal)
    extra["future_key"] = {"x": [1, 2]}
    extra["splits"]["train"]["checksum"] = "abc"
    extra["sessions"] = [{"session_id": "a", "split": "train", "note": "kept"}]
    assert Manifest.from_dict(extra).to_dict() == extra


def write_manifest(folder, obj):
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(obj))
    return folder


@pytest.mark.parametrize("edit,key,expected,found", [
    (lambda m: m["sessions"][1].__setitem__("num_units", "7"), "sessions[1].num_units",
     "an int >= 0", "'7' (str)"),
    (lambda m: m["sessions"][0].pop("split"), "sessions[0].split",
     "one of train, test, both", "nothing"),
    (lambda m: m["splits"]["test"].__setitem__("shards", ["../../etc/passwd"]),
     "splits.test.shards[0]", "a path inside the corpus folder", "'../../etc/passwd' (str)"),
    (lambda m: m.__setitem__("bin_ms", 0), "bin_ms", "an int > 0", "0 (int)"),
    (lambda m: m.__setitem__("sessions", {}), "sessions", "a list", "{} (dict)"),
    (lambda m: m["build"].__setitem__("seed", 1.5), "build.seed", "an int", "1.5 (float)"),
    (lambda m: m.pop("splits"), "splits", "an object of splits", "nothing"),
    (lambda m: m["sessions"][0].__setitem__("regions", {"CA1": -1}), "sessions[0].regions",
     "an object of ints >= 0", "{'CA1': -1} (dict)"),
])
def test_damaged_manifest_is_a_one_line_error(built, tmp_path, edit, key, expected, found):
    raw = json.loads((built / "manifest.json").read_text())
    edit(raw)
    folder = write_manifest(tmp_path / "c", raw)
    with pytest.raises(ManifestError) as exc:
        Corpus(folder)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{folder / 'manifest.json'}: key '{key}' must be {expected}")
    assert f", found {found}" in msg and msg.endswith("`spikefm corpus import`")


def test_a_wrong_path_is_told_what_it_is_and_what_to_give(tmp_path):
    def message(path):
        with pytest.raises(ValueError) as err:
            Corpus(path)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "no such file or folder" in message(tmp_path / "missing")
    rec = tmp_path / "rec" / "sub-a"
    rec.mkdir(parents=True)
    (rec / "sub-a_ses-0.nwb").write_bytes(b"x")
    for path in (tmp_path / "rec", rec, rec / "sub-a_ses-0.nwb"):  # its folder, sub-folder, a file
        assert f"spikefm corpus build {path} --out CORPUS_DIR" in message(path)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "S.NWB").write_bytes(b"x")  # the suffix in another case is an NWB file too
    assert f"spikefm corpus build {upper} --out CORPUS_DIR" in message(upper)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert "training run" in message(run) and "the corpus folder the run was trained on" in message(run)
    (tmp_path / "other").mkdir()
    assert "not a spikefm corpus (no manifest.json)" in message(tmp_path / "other")


def test_not_a_corpus_bad_json_and_other_schema_versions(tmp_path):
    with pytest.raises(ValueError, match="not a spikefm corpus"):
        Corpus(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"schema_version": 99, "bin_ms": 20})
    with pytest.raises(ValueError, match="schema_version 99, this spikefm reads 1"):
        Corpus(tmp_path)
    write_manifest(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="must be a JSON object"):
        Corpus(tmp_path)
    write_manifest(tmp_path, {"schema_version": 1, "bin_ms": 20, "splits": {}, "sessions": [
        {"session_id": "a", "split": "train"}, {"session_id": "a", "split": "test"}]})
    with pytest.raises(ValueError, match="distinct session_id"):
        Corpus(tmp_path)


def test_the_folder_layout_is_readable_by_datasets_and_pyarrow(built, tmp_path):
    """Through the links, the corpus looks like a Hugging Face dataset folder."""
    assert os.readlink(built / "data") == ".current/data"
    assert os.readlink(built / "manifest.json") == ".current/manifest.json"
    listed = sorted(p for sp in Corpus(built).manifest["splits"].values() for p in sp["shards"])
    assert sorted(f"data/{p.name}" for p in (built / "data").iterdir()) == listed
    datasets = pytest.importorskip("datasets")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    ds = datasets.load_dataset(str(built), cache_dir=str(tmp_path / "hf"))
    c = Corpus(built)
    assert {k: v.num_rows for k, v in ds.items()} == \
        {k: v["num_rows"] for k, v in c.manifest["splits"].items()}
    ours = {(r.session_id, r.segment_id): r.spike_counts for r in c.iter_rows("train")}
    for row in ds["train"]:
        np.testing.assert_array_equal(np.asarray(row["spike_counts"], np.uint8),
                                      ours[(row["session_id"], row["segment_id"])])


def _copy(built, dst):
    """An independent copy of a built corpus (its links are relative, so they follow)."""
    import shutil
    shutil.copytree(built, dst, symlinks=True)
    return dst


def test_shards_that_do_not_match_the_manifest_are_refused(built, tmp_path):
    """A shard copied over another one (rows of the wrong split) is found when the corpus is
    opened, by row counts from the Parquet footers, instead of training on the wrong split."""
    c = _copy(built, tmp_path / "c")
    raw = json.loads((c / "manifest.json").read_text())
    train = (c / raw["splits"]["train"]["shards"][0]).resolve()
    test = (c / raw["splits"]["test"]["shards"][0]).resolve()
    assert pq.read_metadata(train).num_rows != pq.read_metadata(test).num_rows
    train.write_bytes(test.read_bytes())
    with pytest.raises(ValueError) as exc:
        Corpus(c)
    msg = str(exc.value)
    assert "\n" not in msg and f"the train shards hold {pq.read_metadata(test).num_rows:,} rows" in msg
    assert f"manifest.json lists {raw['splits']['train']['num_rows']:,}" in msg and "rebuild" in msg


def test_a_session_in_a_split_the_manifest_does_not_list_is_refused(built, tmp_path):
    raw = json.loads((built / "manifest.json").read_text())
    i = next(i for i, s in enumerate(raw["sessions"]) if s["split"] == "test")
    del raw["splits"]["test"]
    folder = write_manifest(tmp_path / "c", raw)
    with pytest.raises(ManifestError) as exc:
        Manifest.from_dict(raw, source=str(folder / "manifest.json"))
    assert str(exc.value).startswith(f"{folder / 'manifest.json'}: key 'sessions[{i}].split' must be "
                                      "a split listed under splits (train), found 'test' (str)")


@pytest.mark.parametrize("key", ["num_units", "num_bins"])
def test_corpus_info_on_a_session_without_sizes_names_the_key(built, tmp_path, key):
    """The layout lets minimal manifests omit a session's sizes; info and plots need them and say
    which key of which session is missing (it was a bare KeyError)."""
    from spikefm.corpus.info import corpus_info
    c = _copy(built, tmp_path / "c")
    target = (c / "manifest.json").resolve()
    raw = json.loads(target.read_text())
    del raw["sessions"][1][key]
    target.write_text(json.dumps(raw))
    with pytest.raises(ManifestError) as exc:
        corpus_info(Corpus(c))
    assert str(exc.value).startswith(f"{c / 'manifest.json'}: key 'sessions[1].{key}' must be an "
                                      "int >= 0 (corpus info reads it), found nothing")


def test_ar_loader_on_a_damaged_shard_is_a_one_line_error_naming_it(built, tmp_path):
    """Bytes damaged inside a shard (its magic bytes and footer intact) surface when the AR
    loader reads the row group: one line naming the shard and the fix, not pyarrow's message."""
    from spikefm.families.ar.loader import ARTokenLoader
    c = _copy(built, tmp_path / "c")
    raw = json.loads((c / "manifest.json").read_text())
    shard = c / raw["splits"]["train"]["shards"][0]
    real = shard.resolve()
    data = bytearray(real.read_bytes())
    data[200:300] = bytes(255 - b for b in data[200:300])  # inside the first column chunk
    real.write_bytes(bytes(data))
    with pytest.raises(ValueError) as exc:
        next(iter(ARTokenLoader(c, seq_len=16, batch_size=2, token_cache=False)))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{shard}: not a readable Parquet shard (")
    assert "the corpus is damaged: rebuild the corpus" in msg


def test_a_manifest_whose_sessions_were_emptied_is_refused(tmp_path):
    """A manifest edited to "sessions": [] (num_sessions 3, rows in both splits) opened, and
    `corpus info` printed a summary of a corpus with no session."""
    import json

    from spikefm.corpus.manifest import ManifestError, read_manifest
    from test_corpus_support import write_sessions
    from spikefm.corpus.build import BuildConfig, build_corpus

    write_sessions(tmp_path / "in", 3, seed=2)
    build_corpus([str(tmp_path / "in")], tmp_path / "c", BuildConfig(test_fraction=0.3), progress=False)
    path = tmp_path / "c" / "manifest.json"
    m = json.loads(path.read_text())
    read_manifest(tmp_path / "c")
    path.write_text(json.dumps({**m, "sessions": []}))
    with pytest.raises(ManifestError, match=r"key 'sessions' must be a list of the 3 sessions num_sessions counts, "
                                            r"found \[\] \(list\)"):
        read_manifest(tmp_path / "c")
    m.pop("num_sessions")
    path.write_text(json.dumps({**m, "sessions": [s for s in m["sessions"] if s["split"] != "test"]}))
    with pytest.raises(ManifestError, match=r"key 'sessions' must be a list holding the sessions of the \d+ test rows"):
        read_manifest(tmp_path / "c")
