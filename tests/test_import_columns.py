"""``import_neural_pile`` on files that do not hold what it reads: columns of the wrong Arrow type,
rows without a subject, rows whose own start times overlap; splits from a dataset card; one shard
named alone. Each refusal is one line, before anything is written."""
from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikefm import Corpus
from spikefm.corpus.importer import HF_ALLOW_PATTERNS, import_neural_pile

COUNTS_TYPE = pa.list_(pa.list_(pa.uint8()))
SHA = "89abcdef0123456789abcdef0123456789abcdef"


def pile_table(segments: list[tuple[str, str, int, int]], seed: int = 0, subject="M",
               **extra: pa.Array) -> tuple[pa.Table, dict]:
    """A Neural Pile table of ``segments`` (session, segment, units, bins) plus ``extra`` columns.
    Returns (table, {(session, segment): counts})."""
    rng = np.random.default_rng(seed)
    counts = {(s, g): rng.integers(0, 5, size=(u, b)).astype(np.uint8) for s, g, u, b in segments}
    keys = [(s, g) for s, g, _, _ in segments]
    table = pa.table({
        "spike_counts": pa.array([counts[k].tolist() for k in keys], COUNTS_TYPE),
        "subject_id": pa.array([subject] * len(keys) if isinstance(subject, str) else subject,
                               pa.string()),
        "session_id": pa.array([k[0] for k in keys], pa.string()),
        "segment_id": pa.array([k[1] for k in keys], pa.string()),
        "source_dataset": pa.array(["xiao"] * len(keys), pa.string()),
        **extra,
    })
    return table, counts


def write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def refused(source: Path, out: Path, match: str) -> str:
    with pytest.raises(ValueError, match=match) as exc:
        import_neural_pile(str(source), out, progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert not out.exists()  # refused before anything was written
    return msg


TWO = [("s", "segment_0", 3, 30), ("s", "segment_1", 3, 20)]


# --- 1. columns of the wrong type ---------------------------------------------------------------

@pytest.mark.parametrize("column, values, expected, found", [
    # a plain string was split into characters ("CA1" -> C, A, 1: one per unit of a 3-unit row)
    ("unit_regions", pa.array(["CA1", "CA1"]), "expected list<string>", "is string"),
    ("behavior_names", pa.array(["xyz", "xyz"]), "expected list<string>", "is string"),
    ("t_start_ms", pa.array(["0", "600"]), "expected integer (ms)", "is string"),
    ("species", pa.array([3, 3]), "expected string", "is int64"),
    ("trials_json", pa.array([5, 5]), "expected string (a JSON object of trial tables)", "is int64"),
    ("subject_id", pa.array([["a", "b"], ["a", "b"]]), "expected string (or integer)",
     "is list<element: string>"),
    ("unit_ids", pa.array([[0.5] * 3, [0.5] * 3]), "expected list<string> (or list<integer>)",
     "is list<element: double>"),
])
def test_a_column_of_the_wrong_type_is_refused_naming_file_column_and_types(
        tmp_path, column, values, expected, found):
    table, _ = pile_table(TWO)
    if column in table.column_names:
        table = table.set_column(table.column_names.index(column), column, values)
    else:
        table = table.append_column(column, values)
    f = write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "pile", tmp_path / "c", f"column {column} ")
    assert msg.startswith(f"{f}: column {column} {found}, {expected}; ")
    if column != "subject_id":  # spikefm's own columns have a default: leaving them out is a fix
        assert "or leave the column out (" in msg


def test_start_times_must_be_whole_ms_and_whole_floats_are_read_as_ints(tmp_path):
    """A non-integral float t_start_ms (0.5) was truncated to 0 silently; whole-number floats (as
    pandas writes an integer column with gaps) are the integers they hold."""
    table, _ = pile_table(TWO, t_start_ms=pa.array([0.5, 600.5]))
    f = write(table, tmp_path / "half" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "half", tmp_path / "c", "whole milliseconds")
    assert msg.startswith(f"{f}: row 0 has t_start_ms 0.5 in a float column")
    assert "round the column to int64 ms" in msg

    # segment_1 starts 400 ms after segment_0's end (a gap), and its start is held as a float
    table, counts = pile_table(TWO, t_start_ms=pa.array([1000.0, 2000.0]),
                               bin_ms=pa.array([20.0, 20.0]))
    write(table, tmp_path / "whole" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "whole"), tmp_path / "c2", progress=False)
    rows = {r.segment_id: r for r in Corpus(tmp_path / "c2").iter_rows("train")}
    assert {k: (r.t_start_ms, r.bin_ms) for k, r in rows.items()} == \
        {"segment_0": (1000, 20), "segment_1": (2000, 20)}
    np.testing.assert_array_equal(rows["segment_1"].spike_counts, counts["s", "segment_1"])
    assert m["bin_ms"] == 20 and m["sessions"][0]["segments_ordered"] is True


def test_ids_as_large_or_dictionary_strings_and_integers_import_as_their_text(tmp_path):
    table, counts = pile_table(TWO)
    table = table.set_column(1, "subject_id", table.column("subject_id").cast(pa.large_string()))
    table = table.set_column(2, "session_id", table.column("session_id").dictionary_encode())
    table = table.append_column("unit_ids", pa.array([[7, 8, 9]] * 2))
    table = table.append_column("unit_regions", pa.array([["CA1", "CA1", "DG"]] * 2,
                                                         pa.list_(pa.large_string())))
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "pile"), tmp_path / "c", progress=False)
    (s,) = m["sessions"]
    assert (s["session_id"], s["subject_id"], s["regions"]) == ("s", "M", {"CA1": 2, "DG": 1})
    for r in Corpus(tmp_path / "c").iter_rows("train"):
        assert r.unit_ids == ["7", "8", "9"] and r.unit_regions == ["CA1", "CA1", "DG"]
        np.testing.assert_array_equal(r.spike_counts, counts["s", r.segment_id])


def test_null_unit_ids_and_regions_import_as_the_defaults_not_the_text_none(tmp_path):
    """A null entry in unit_regions or unit_ids was stored as the text 'None' (a region 'None' in
    the manifest and corpus info)."""
    table, _ = pile_table(TWO)
    table = table.append_column("unit_ids", pa.array([[7, None, 9]] * 2, pa.list_(pa.int64())))
    table = table.append_column("unit_regions", pa.array([["CA1", None, "DG"]] * 2))
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "pile"), tmp_path / "c", progress=False)
    assert m["sessions"][0]["regions"] == {"CA1": 1, "DG": 1, "unknown": 1}
    for r in Corpus(tmp_path / "c").iter_rows("train"):
        assert r.unit_ids == ["7", "1", "9"] and r.unit_regions == ["CA1", "unknown", "DG"]


# --- 5. a row without a subject -----------------------------------------------------------------

@pytest.mark.parametrize("missing", [None, ""])
def test_a_row_without_subject_id_is_refused_like_one_without_session_id(tmp_path, missing):
    """It used to split its session in two: the row without a subject kept the session's id and
    the subject's rows were renamed s-2, with only the generic rename warning."""
    table, _ = pile_table(TWO, subject=["M", missing])
    f = write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "pile", tmp_path / "c", "has no subject_id")
    assert msg.startswith(f"{f}: row 1 (session s) has no subject_id (found {missing!r}); ")
    assert "fill it in" in msg


# --- 4. rows whose own start times overlap ------------------------------------------------------

def test_rows_whose_own_start_times_overlap_are_refused(tmp_path, capsys):
    """Two segments of one session with t_start_ms 0 each were imported as segments_ordered: two
    rows over the same 0-600 ms. Every row at 0 ms is how a spikefm corpus stores a session without
    one timeline, so that imports as one (segments_ordered false, warned; refusing it made such a
    corpus impossible to import again); other overlaps are refused."""
    table, _ = pile_table(TWO, t_start_ms=pa.array([0, 0], pa.int64()))
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "pile"), tmp_path / "c", progress=False)
    assert m["sessions"][0]["segments_ordered"] is False
    assert "every row at t_start_ms 0 (how a spikefm corpus stores such sessions)" in capsys.readouterr().err
    # two copies of one single-row session's file (the same segment twice, both at 0 ms) stay refused
    one = [("s", "segment_0", 3, 30)]
    table, _ = pile_table(one, t_start_ms=pa.array([0], pa.int64()))
    write(table, tmp_path / "copies" / "data" / "train-00000-of-00002.parquet")
    write(table, tmp_path / "copies" / "data" / "train-00001-of-00002.parquet")
    refused(tmp_path / "copies", tmp_path / "c1", r"overlap: segment_0 at \[0, 600\) ms")
    table, _ = pile_table(TWO, t_start_ms=pa.array([0, 300], pa.int64()))
    f = write(table, tmp_path / "over" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "over", tmp_path / "c0", "overlap")
    assert msg.startswith("session s (source xiao, subject M): the rows' own t_start_ms make two "
                          "of them overlap: ")
    assert f"segment_0 at [0, 600) ms ({f} row 0)" in msg and f"segment_1 at [300, 700) ms ({f} row 1)" in msg
    assert "leave the t_start_ms column out" in msg
    # back to back is one timeline: segment_1 starts where segment_0 (30 bins x 20 ms) ends
    table, _ = pile_table(TWO, t_start_ms=pa.array([0, 600], pa.int64()))
    write(table, tmp_path / "ok" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "ok"), tmp_path / "c2", progress=False)
    assert m["sessions"][0]["segments_ordered"] is True
    # one bin into segment_0's last bin overlaps
    table, _ = pile_table(TWO, t_start_ms=pa.array([0, 580], pa.int64()))
    write(table, tmp_path / "one" / "data" / "train-00000-of-00001.parquet")
    refused(tmp_path / "one", tmp_path / "c3",
            r"segment_0 at \[0, 600\) ms .* and segment_1 at \[580, 980\) ms")


@pytest.mark.parametrize("segments", [["segment_0", "segment_1", "segment_1"], [None, None, None]])
def test_a_corpus_imported_from_repeated_or_missing_segment_ids_imports_again(tmp_path, segments):
    """Rows repeating a segment id, or without one, are imported as they are (unordered, every row
    at 0 ms); importing that corpus again was refused as overlapping rows, though the README says a
    spikefm corpus comes back whole. Its own manifest says the session has no timeline."""
    table, _ = pile_table([("s", f"g{i}", 3, 30 + 10 * i) for i in range(3)])
    table = table.set_column(table.schema.get_field_index("segment_id"), "segment_id", pa.array(segments, pa.string()))
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    first = import_neural_pile(str(tmp_path / "pile"), tmp_path / "c1", progress=False)
    assert first["sessions"][0]["segments_ordered"] is False
    again = import_neural_pile(str(tmp_path / "c1"), tmp_path / "c2", progress=False)
    assert again["sessions"][0]["segments_ordered"] is False

    def rows(path):
        return sorted((r.segment_id, r.t_start_ms, r.spike_counts.tobytes()) for r in Corpus(path).iter_rows("train"))

    assert rows(tmp_path / "c2") == rows(tmp_path / "c1") and len(rows(tmp_path / "c1")) == 3
    # foreign rows of a segment repeated at 0 ms (two copies of a file) stay refused: no manifest says why
    (tmp_path / "c1" / "manifest.json").unlink()
    refused(tmp_path / "c1", tmp_path / "c3", "overlap")


def test_rows_whose_own_start_times_are_off_one_bin_grid_are_refused(tmp_path):
    """t_start_ms 0 and 610 (20 ms bins) were imported as one timeline; cutting windows then
    refused the corpus with 'rebuild it', which an imported corpus cannot do."""
    table, _ = pile_table(TWO, t_start_ms=pa.array([0, 610], pa.int64()))
    f = write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "pile", tmp_path / "c", "off one 20 ms bin grid")
    assert msg == (f"session s (source xiao, subject M): the rows' own t_start_ms are off one 20 ms bin grid: "
                   f"segment_1 starts at 610 ms, 610 ms after segment_0 ({f} row 1); expected start times "
                   "a multiple of 20 ms apart: fix their t_start_ms, or leave the t_start_ms column out "
                   "(start times then come from the segment numbers)")
    # a grid that does not start at 0 is one grid: 10 ms and 610 ms are 30 bins apart
    table, _ = pile_table(TWO, t_start_ms=pa.array([10, 610], pa.int64()))
    write(table, tmp_path / "ok" / "data" / "train-00000-of-00001.parquet")
    m = import_neural_pile(str(tmp_path / "ok"), tmp_path / "c2", progress=False)
    assert m["sessions"][0]["segments_ordered"] is True
    rows = sorted(Corpus(tmp_path / "c2").iter_rows("train"), key=lambda r: r.t_start_ms)
    assert [r.t_start_ms for r in rows] == [10, 610]


@pytest.mark.parametrize("tables, found", [
    ({"trials": [[0.0, 1.0]]}, "a list"),
    ({"trials": {"start_time": [0.0, 1.0], "stop_time": [0.5]}}, r"columns of lengths \[1, 2\]"),
    ({"trials": {"start_time": 0.0}}, "a column that is not a list"),
])
def test_trial_tables_that_are_not_columns_of_one_length_are_refused(tmp_path, tables, found):
    """Such tables were imported silently; windows then failed far from the cause (or read
    a trial's values from other trials)."""
    table, _ = pile_table(TWO, trials_json=pa.array([json.dumps(tables), None], pa.string()))
    f = write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "pile", tmp_path / "c", f"trials_json table 'trials' holds {found}; expected")
    assert msg.startswith(f"{f}: row 0's trials_json table 'trials' holds ")


# --- 3. one shard named alone -------------------------------------------------------------------

def test_a_shard_named_alone_is_imported_without_looking_for_its_sisters(tmp_path, capsys):
    """Its sisters (present here) were reported missing and listed as skipped."""
    for i in range(3):
        table, _ = pile_table([(f"s{i}", "segment_0", 2, 10)], seed=i)
        write(table, tmp_path / "pile" / "data" / f"train-{i:05d}-of-00003.parquet")
    one = tmp_path / "pile" / "data" / "train-00001-of-00003.parquet"
    m = import_neural_pile(str(one), tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    assert "missing" not in err and m["skipped"] == []
    assert [s["session_id"] for s in m["sessions"]] == ["s1"]
    # alone in its folder, the same
    shutil.copy(one, tmp_path / "train-00001-of-00003.parquet")
    m = import_neural_pile(str(tmp_path / "train-00001-of-00003.parquet"), tmp_path / "c2", progress=False)
    assert "missing" not in capsys.readouterr().err and m["skipped"] == []


# --- 2. splits from a dataset card --------------------------------------------------------------

def card(configs: str) -> str:
    return f"---\nlicense: cc-by-4.0\nconfigs:\n{configs}---\n# A dataset\n\ntext\n"


PARTS = """- config_name: default
  data_files:
  - split: train
    path: data/part-a.parquet
  - split: test
    path: data/part-b.parquet
"""


def card_folder(root: Path, text: str) -> dict[str, pa.Table]:
    """data/part-a.parquet and data/part-b.parquet (no split in their names) and README.md."""
    tables = {}
    for i, name in enumerate(("part-a", "part-b")):
        tables[name], _ = pile_table([(f"{name}-s", "segment_0", 2, 10 + i),
                                      (f"{name}-s", "segment_1", 2, 5)], seed=i)
        write(tables[name], root / "data" / f"{name}.parquet")
    (root / "README.md").write_text(text)
    return tables


def split_rows(corpus_dir: Path) -> dict[str, list]:
    corpus = Corpus(corpus_dir)
    return {split: sorted((r.session_id, r.segment_id, r.spike_counts.tobytes())
                          for r in corpus.iter_rows(split)) for split in ("train", "test")}


def table_rows(table: pa.Table) -> list:
    return sorted((r["session_id"], r["segment_id"], np.array(r["spike_counts"], np.uint8).tobytes())
                  for r in table.to_pylist())


def pile_files(root: Path, rels, first_bins: int = 6) -> dict[str, pa.Table]:
    """One single-session Neural Pile file at each relative path ``rels``; path -> its table."""
    tables = {}
    for i, rel in enumerate(rels):
        tables[rel], _ = pile_table([(f"s{i}", "segment_0", 2, first_bins + i)], seed=i)
        write(tables[rel], root / rel)
    return tables


def datasets_reads(root: Path, cache: Path) -> dict[str, list]:
    """The rows ``datasets.load_dataset`` reads from the folder ``root``, per split."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return {k: sorted(table_rows(v.data.table)) for k, v in datasets.load_dataset(str(root), cache_dir=str(cache)).items()}


def test_a_dataset_cards_split_is_the_split_datasets_loads(tmp_path, capsys):
    """Both files were imported as train, with a warning citing Hugging Face's rule."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "pile"
    tables = card_folder(root, card(PARTS))
    m = import_neural_pile(str(root), tmp_path / "c", progress=False)
    assert "split" not in capsys.readouterr().err
    got = split_rows(tmp_path / "c")
    assert got == {"train": table_rows(tables["part-a"]), "test": table_rows(tables["part-b"])}
    datasets.disable_progress_bars()
    loaded = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "hfc"))
    assert {k: table_rows(v.data.table) for k, v in loaded.items()} == got
    assert m["splits"]["test"]["num_rows"] == 2 and m["skipped"] == []


def test_a_cards_globs_leave_unlisted_files_out_and_its_default_config_is_used(tmp_path, capsys):
    root = tmp_path / "pile"
    two_configs = """- config_name: other
  data_files: data/part-b.parquet
- config_name: mine
  default: true
  data_files:
    train: ["data/part-?.parquet"]
    test: data/**/extra-*.parquet
"""
    tables = card_folder(root, card(two_configs))
    extra, _ = pile_table([("x", "segment_0", 2, 4)], seed=9)
    write(extra, root / "data" / "more" / "extra-0.parquet")
    write(extra, root / "stray.parquet")  # in no pattern of the config
    m = import_neural_pile(str(root), tmp_path / "c", progress=False)
    err = capsys.readouterr().err
    assert f"1 data file(s) are not in the data_files of the dataset card {root / 'README.md'} " \
           f"(first: {root / 'stray.parquet'}); left out" in err
    assert m["skipped"] == [{"input": str(root / "stray.parquet"),
                             "error": "not in the dataset card's data_files"}]
    assert split_rows(tmp_path / "c") == {
        "train": sorted(table_rows(tables["part-a"]) + table_rows(tables["part-b"])),
        "test": table_rows(extra)}


def test_a_card_of_several_configs_and_no_default_is_refused_naming_them(tmp_path):
    root = tmp_path / "pile"
    card_folder(root, card(PARTS.replace("config_name: default", "config_name: first")
                           + "- config_name: second\n  data_files: data/part-b.parquet\n"))
    msg = refused(root, tmp_path / "c", "2 configs")
    assert msg == (f"{root / 'README.md'}: the dataset card defines 2 configs (first, second) and "
                   "no single default; spikefm imports one: mark the one to import `default: true` "
                   "in the card (of a downloaded copy), or import a folder holding only its files")


def test_files_without_a_split_or_a_card_are_named_as_imported_as_train(tmp_path, capsys):
    root = tmp_path / "pile"
    tables = card_folder(root, "# no front matter\n")
    import_neural_pile(str(root), tmp_path / "c", progress=False)
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "split" in x]
    assert line == ("spikefm: warning: 2 file(s) name no split (train, test, validation) in their "
                    "file or folder names, and no dataset card (README.md with configs) maps them "
                    f"(first: {root / 'data' / 'part-a.parquet'}); spikefm imported them as train")
    assert split_rows(tmp_path / "c")["train"] == sorted(
        table_rows(tables["part-a"]) + table_rows(tables["part-b"]))


def test_a_cards_data_dir_config_imports_that_folder_as_datasets_loads_it(tmp_path, capsys):
    """A card whose configs name a data_dir (one folder per config) was read as no card: every
    config's files were imported, the rodent sessions among the primate ones."""
    root = tmp_path / "pile"
    tables = pile_files(root, ("primate/train-0.parquet", "primate/test-0.parquet", "rodent/train-0.parquet"), 8)
    (root / "README.md").write_text(card("- config_name: primate\n  data_dir: primate\n  default: true\n"
                                         "- config_name: rodent\n  data_dir: rodent\n"))
    m = import_neural_pile(str(root), tmp_path / "c", progress=False)
    got = split_rows(tmp_path / "c")
    assert got == {"train": table_rows(tables["primate/train-0.parquet"]),
                   "test": table_rows(tables["primate/test-0.parquet"])}
    assert datasets_reads(root, tmp_path / "hfc") == got
    assert m["skipped"] == [{"input": str(root / "rodent" / "train-0.parquet"),
                             "error": "outside the dataset card's data_dir"}]
    assert "lie outside primate/, the data_dir of the dataset card" in capsys.readouterr().err
    # data_files with a data_dir: the patterns are relative to it (as datasets' builder resolves
    # them; its file-format check resolves them from the top, so it loads neither spelling)
    (root / "README.md").write_text(card("- config_name: rodent\n  data_dir: rodent\n  default: true\n"
                                         "  data_files:\n  - split: test\n    path: train-*.parquet\n"))
    import_neural_pile(str(root), tmp_path / "c2", progress=False)
    got = split_rows(tmp_path / "c2")
    assert got == {"train": [], "test": table_rows(tables["rodent/train-0.parquet"])}
    (root / "README.md").write_text(card("- config_name: up\n  data_dir: ../elsewhere\n"))
    assert "data_dir must be a folder inside the dataset, got '../elsewhere'" in refused(root, tmp_path / "c3", "data_dir")
    # a data_dir with no data: the card is named as what to fix, not the folder given
    (root / "README.md").write_text(card("- config_name: none\n  data_dir: nodata\n"))
    assert refused(root, tmp_path / "c4", "data_dir") == (
        f"{root / 'README.md'}: the default config's data_dir nodata holds no Parquet or Arrow file (no such "
        "folder); fix the dataset card's data_dir, or download that folder's files")
    # data_dir: null is no data_dir, as datasets reads it
    (root / "README.md").write_text(card("- config_name: primate\n  data_dir: null\n  data_files:\n"
                                         "  - split: train\n    path: primate/train-0.parquet\n"))
    import_neural_pile(str(root), tmp_path / "c5", progress=False)
    assert split_rows(tmp_path / "c5") == {"train": table_rows(tables["primate/train-0.parquet"]), "test": []}


def test_split_words_in_file_names_are_read_as_datasets_reads_them(tmp_path):
    """train0.parquet / test0.parquet went to train (a digit after the word was not a separator),
    so test rows were trained on; so did 'testing', 'eval' and 'evaluation'."""
    root = tmp_path / "pile"
    tables = pile_files(root, ("train0.parquet", "test0.parquet", "my evaluation.parquet", "training_more.parquet"))
    import_neural_pile(str(root), tmp_path / "c", progress=False)
    got = split_rows(tmp_path / "c")
    assert got == {"train": sorted(table_rows(tables["train0.parquet"]) + table_rows(tables["training_more.parquet"])),
                   "test": sorted(table_rows(tables["test0.parquet"]) + table_rows(tables["my evaluation.parquet"]))}
    assert datasets_reads(root, tmp_path / "hfc") == got


def test_split_folders_decide_before_file_names_as_datasets_reads_them(tmp_path, capsys):
    """With files in train/ and test/ folders, a BIDS-style 'ses-test' in a file name sent a train
    file to test; datasets reads the folders first and leaves out files in no split folder."""
    root = tmp_path / "pile"
    tables = pile_files(root, ("train/sub-01_ses-test.parquet", "test/sub-02_ses-1.parquet", "sub-03_test.parquet"))
    m = import_neural_pile(str(root), tmp_path / "c", progress=False)
    got = split_rows(tmp_path / "c")
    assert got == {"train": table_rows(tables["train/sub-01_ses-test.parquet"]),
                   "test": table_rows(tables["test/sub-02_ses-1.parquet"])}
    assert datasets_reads(root, tmp_path / "hfc") == got
    assert m["skipped"] == [{"input": str(root / "sub-03_test.parquet"), "error": "in no split folder"}]
    assert "1 data file(s) lie in no split folder while others do" in capsys.readouterr().err


def test_a_folder_named_by_its_split_word_first_is_that_split_as_datasets_reads_it(tmp_path):
    """train_data/ and test_data/ (the split word, then a separator and more) were no split
    folders: every file was imported as train, the test rows among them, where datasets reads
    them as train and test."""
    root = tmp_path / "pile"
    tables = pile_files(root, ("train_data/part0.parquet", "test_data/part0.parquet", "00-test.extra/part1.parquet"))
    import_neural_pile(str(root), tmp_path / "c", progress=False)
    got = split_rows(tmp_path / "c")
    assert got == {"train": table_rows(tables["train_data/part0.parquet"]),
                   "test": sorted(table_rows(tables["test_data/part0.parquet"])
                                  + table_rows(tables["00-test.extra/part1.parquet"]))}
    assert datasets_reads(root, tmp_path / "hfc") == got


def test_a_folder_whose_name_merely_contains_a_split_word_is_no_split_folder(tmp_path):
    """datasets' Arrow cache of a dataset named pile-test-copy (or a download folder so named)
    imported every train row as test, silently: any folder with 'test' between separators
    decided the split. A split folder starts with its split word (train/, test_2/, test_data/);
    else the file's name decides (its last split word)."""
    root = tmp_path / "cache"
    deep = root / "pile-test-copy" / "default" / "0.0.0" / "abc123"
    tables = {}
    for i, split in enumerate(("train", "test")):
        tables[split], _ = pile_table([(f"s{i}", "segment_0", 2, 6 + i)], seed=i)
        deep.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(deep / f"pile-test-copy-{split}.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, tables[split].schema) as writer:
            writer.write_table(tables[split])
    import_neural_pile(str(root), tmp_path / "c", progress=False)
    assert split_rows(tmp_path / "c") == {s: table_rows(t) for s, t in tables.items()}
    # a download folder so named, Parquet shards named by split inside it
    parquet = pile_files(tmp_path / "dl", ("neural-pile-dev/data/train-00000-of-00001.parquet",
                                           "neural-pile-dev/data/test-00000-of-00001.parquet"))
    import_neural_pile(str(tmp_path / "dl"), tmp_path / "c2", progress=False)
    assert split_rows(tmp_path / "c2") == {
        "train": table_rows(parquet["neural-pile-dev/data/train-00000-of-00001.parquet"]),
        "test": table_rows(parquet["neural-pile-dev/data/test-00000-of-00001.parquet"])}


def test_a_reimported_corpus_keeps_its_regions_and_renamed_sessions_original_ids(tmp_path):
    """Shards and manifest imported again: a session whose rows have 3 then 6 units got the regions
    of its first row (3 units of 6), and a session renamed for a clash lost original_session_id."""
    table, _ = pile_table([("s_d", "segment_0", 3, 10), ("s_d", "segment_1", 6, 10)])
    other, _ = pile_table([("s1", "segment_0", 2, 5)], seed=1, subject="A")
    clash, _ = pile_table([("s1", "segment_0", 2, 5)], seed=2, subject="B")
    write(pa.concat_tables([table, other, clash]), tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    first = import_neural_pile(str(tmp_path / "pile"), tmp_path / "c", progress=False)
    share = tmp_path / "share"
    shutil.copytree(tmp_path / "c" / "data", share / "data")
    shutil.copy(tmp_path / "c" / "manifest.json", share / "manifest.json")
    again = import_neural_pile(str(share), tmp_path / "again", progress=False)
    for m in (first, again):
        by_id = {e["session_id"]: e for e in m["sessions"]}
        assert by_id["s_d"]["regions"] == {"unknown": 6} and by_id["s_d"]["num_units"] == 6
        for e in m["sessions"]:
            assert sum(e["regions"].values()) == e["num_units"]
    renamed = {e["session_id"]: e.get("original_session_id") for e in first["sessions"] if e["session_id"] != "s_d"}
    assert sorted(v for v in renamed.values() if v) == ["s1"]
    assert {e["session_id"]: e.get("original_session_id") for e in again["sessions"] if e["session_id"] != "s_d"} \
        == renamed


def fake_hub(monkeypatch, repo: Path, hub: Path) -> None:
    """huggingface_hub.snapshot_download serving the files of the folder ``repo`` into ``hub``,
    selected by allow_patterns as huggingface_hub matches them."""
    import huggingface_hub

    names = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())

    def fake_snapshot_download(repo_id, allow_patterns, **kw):
        chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in allow_patterns)]
        if kw.get("dry_run"):
            return [SimpleNamespace(filename=n, commit_hash=SHA) for n in chosen]
        snap = hub / "snapshots" / SHA
        for n in chosen:
            (snap / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo / n, snap / n)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)


def test_a_hub_repos_card_is_downloaded_and_decides_the_splits(tmp_path, monkeypatch):
    """The download fetches what allow_patterns selects (matched as huggingface_hub matches them):
    the card must be among them."""
    repo = tmp_path / "repo"
    tables = card_folder(repo, card(PARTS))
    (repo / "notes.txt").write_text("not data")
    fake_hub(monkeypatch, repo, tmp_path / "hub")
    m = import_neural_pile("someone/carded", tmp_path / "c", progress=False)
    assert split_rows(tmp_path / "c") == {"train": table_rows(tables["part-a"]),
                                          "test": table_rows(tables["part-b"])}
    assert not (tmp_path / "hub" / "snapshots" / SHA / "notes.txt").exists()
    assert json.loads((tmp_path / "c" / "manifest.json").read_text()) == m


def test_a_hub_repo_of_arrow_files_is_downloaded(tmp_path, monkeypatch):
    """A local folder of .arrow files imported, but the download fetched only *.parquet, the card
    and the manifest: a Hub repo of Arrow files failed as holding no data file."""
    repo = tmp_path / "repo"
    table, _ = pile_table(TWO)
    (repo / "train").mkdir(parents=True)
    with pa.OSFile(str(repo / "train" / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    fake_hub(monkeypatch, repo, tmp_path / "hub")
    import_neural_pile("someone/arrow", tmp_path / "c", progress=False)
    assert split_rows(tmp_path / "c") == {"train": table_rows(table), "test": []}


def test_a_card_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    import sys

    root = tmp_path / "pile"
    card_folder(root, card(PARTS))
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if not installed
    with pytest.raises(ValueError, match=r"README.md: reading the dataset card's configs .* needs "
                                          r"PyYAML: pip install pyyaml$"):
        import_neural_pile(str(root), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_licence_and_provenance_travel_with_the_manifest_beside_the_shards(tmp_path, capsys):
    """Shards plus manifest.json, uploaded as the README shows and imported again, lost each
    session's licence and provenance (the rows do not carry them; the download skipped the
    manifest): they come from the manifest now; without one, as before."""
    table, _ = pile_table(TWO)
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    import_neural_pile(str(tmp_path / "pile"), tmp_path / "c", progress=False)
    share = tmp_path / "share"
    shutil.copytree(tmp_path / "c" / "data", share / "data")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["sessions"][0]["license"] == ""
    m["sessions"][0]["license"] = "spdx:CC-BY-4.0"
    m["sessions"][0]["provenance"] = {"dandiset_id": "000207", "asset_sha256": "ab" * 32}
    (share / "manifest.json").write_text(json.dumps(m))
    again = import_neural_pile(str(share), tmp_path / "again", progress=False)
    (entry,) = again["sessions"]
    assert entry["license"] == "spdx:CC-BY-4.0"
    assert entry["provenance"] == {"dandiset_id": "000207", "asset_sha256": "ab" * 32}
    (share / "manifest.json").write_text("{not json")  # a damaged one: the rows are still the corpus
    again = import_neural_pile(str(share), tmp_path / "third", progress=False)
    assert again["sessions"][0]["license"] == "" and "manifest.json: not read" in capsys.readouterr().err
    assert "manifest.json" in HF_ALLOW_PATTERNS  # fetched with the shards from the Hub


def test_a_broken_card_says_what_and_where(tmp_path):
    """The YAML error kept PyYAML's first line only ('while parsing a block mapping'), without what
    was found or the line and column."""
    card_folder(tmp_path / "pile", "---\nconfigs:\n\t- config_name: default\n---\n")
    msg = refused(tmp_path / "pile", tmp_path / "c", "does not parse")
    assert "found character '\\t' that cannot start any token" in msg and "line 2, column 1" in msg
    assert "\n" not in msg


def test_a_full_disk_during_an_import_exits_1_as_a_build_does(tmp_path, monkeypatch, capsys):
    """The import turned OSError into ValueError, so a full disk exited 2 ('bad input') where a
    build exits 1 ('an operation failed')."""
    import errno

    from spikefm.cli import main
    from spikefm.corpus import importer

    table, _ = pile_table(TWO)
    write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c" / "x.parquet"))

    monkeypatch.setattr(importer, "_write", full)
    assert main(["corpus", "import", str(tmp_path / "pile"), "--out", str(tmp_path / "c"), "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"spikefm: error: No space left on device while writing the corpus in {tmp_path / 'c'}; "
                           "fix the cause (space, permissions) and run again")
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_rows_without_a_bin_width_beside_rows_of_another_are_refused_saying_which(tmp_path):
    """A null bin_ms was reported as 'rows have no bin_ms column' beside a file that has the column."""
    table, _ = pile_table(TWO, bin_ms=pa.array([10, None], pa.int64()))
    f = write(table, tmp_path / "pile" / "data" / "train-00000-of-00001.parquet")
    msg = refused(tmp_path / "pile", tmp_path / "c", "rows have no bin_ms")
    assert msg.startswith("1 rows have no bin_ms (no such column, or a null: the Neural Pile's 20 ms; e.g. ")
    assert f"and the others give 10 ms (e.g. {f}" in msg
