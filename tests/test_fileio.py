"""Atomic writes: the old file survives a failed write, and temporaries never look like data."""
import numpy as np
import pytest

from spikefm.corpus.build import BuildConfig, resolve_inputs
from spikefm.fileio import savez_atomic, write_atomic, write_json_atomic


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": 1})

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, boom)
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_temporary_names_do_not_match_the_data_suffix(tmp_path):
    seen = []
    write_atomic(tmp_path / "x.nwb", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"1")))
    assert seen[0].startswith(".") and not seen[0].endswith(".nwb")
    savez_atomic(tmp_path / "a.npz", v=np.arange(3))
    assert np.load(tmp_path / "a.npz")["v"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "x.nwb"]


def test_folder_scan_skips_hidden_leftovers(tmp_path):
    (tmp_path / "ses.nwb").write_bytes(b"x")
    (tmp_path / ".ses.tmp-123.nwb").write_bytes(b"x")  # e.g. left by an older killed writer
    files, problems = resolve_inputs([str(tmp_path)], BuildConfig())
    assert [f.path.name for f in files] == ["ses.nwb"] and not problems


def test_output_files_never_replace_synthetic_recordings_files(tmp_path):
    """generate --out REC/x.truth.npz replaced a recording's ground truth (the oracle reads it) and
    eval --out REC/.spikefm-synth.json the folder's settings record, silently."""
    import pytest

    from spikefm.fileio import check_output_file

    (tmp_path / "sub-a_ses-000.nwb").write_bytes(b"recording")
    for name, suffixes in (("sub-a_ses-000.truth.npz", (".npz",)), (".spikefm-synth.json", (".json",)),
                           (".quickstart-synth.json", (".json",))):
        with pytest.raises(ValueError, match="belongs to the synthetic recordings"):
            check_output_file(tmp_path / name, suffixes, "--out")
    check_output_file(tmp_path / "other.truth.npz", (".npz",), "--out")  # no recording of that name: allowed
    check_output_file(tmp_path / "gen.npz", (".npz",), "--out")
