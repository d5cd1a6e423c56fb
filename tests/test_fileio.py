"""Atomic writes: the old file survives a failed write, and temporaries never look like data."""
import os

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


def test_output_file_that_is_a_folder_or_below_a_file_is_refused_before_any_work(tmp_path):
    """eval, ngram and generate checked only the ending of --out, so a folder named res.json or a
    path below a file (e1.json/x.json) was refused by the write, after all the work."""
    from spikefm.fileio import check_file_target, check_output_file

    (tmp_path / "res.json").mkdir()
    (tmp_path / "e1.json").write_text("mine")
    with pytest.raises(ValueError) as exc:
        check_output_file(tmp_path / "res.json", (".json",), "--out")
    assert str(exc.value) == (f"{tmp_path / 'res.json'} is a folder, not a file; give the path of a file to write "
                              "(a new name, or a file to replace)")
    for below in (tmp_path / "e1.json" / "x.json", tmp_path / "e1.json" / "a" / "b" / "x.json"):
        with pytest.raises(ValueError) as exc:
            check_output_file(below, (".json",), "--out")
        assert str(exc.value) == (f"cannot write {below}: {tmp_path / 'e1.json'} is a file, not a folder; "
                                  "choose another path")
    # the same refusals as the write itself would give, and nothing is made by the check
    with pytest.raises(ValueError, match="is a folder, not a file"):
        write_json_atomic(tmp_path / "res.json", {})
    check_file_target(tmp_path / "new" / "deeper" / "x.png")  # missing folders are fine: the write makes them
    check_output_file(tmp_path / "e1.json", (".json",), "--out")  # a file to replace is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.json", "res.json"]
    assert (tmp_path / "e1.json").read_text() == "mine" and not any((tmp_path / "res.json").iterdir())


def test_a_results_file_may_not_replace_a_fine_tunings_or_a_studys_own_file(tmp_path):
    """eval --out FT/early_stopping_progress.json (or a candidate's soup.json, a study's
    ranking.json) was accepted though a config.json sat beside it: only some of a folder's own
    files were protected."""
    import pytest

    from spikefm.fileio import check_output_file

    (tmp_path / "config.json").write_text("{}")
    for name in ("early_stopping_progress.json", "soup.json", "ranking.json", "scaling.json", "scores.json",
                 "early_stopping.json", "finetune.json"):
        with pytest.raises(ValueError, match=r"belongs to the spikefm run or corpus in .*writing it would damage"):
            check_output_file(tmp_path / name, (".json",), "--out")
    check_output_file(tmp_path / "results.json", (".json",), "--out")  # a name of its own: fine
    # in a folder of no run, corpus or study those names are the user's
    (tmp_path / "mine").mkdir()
    check_output_file(tmp_path / "mine" / "ranking.json", (".json",), "--out")


def test_an_output_files_stale_temporaries_go_when_it_is_accepted(tmp_path):
    """A killed earlier `eval --out res.json` (or ngram, generate, report) left .res.json.tmp-PID
    beside it for good; a live writer's temporary stays."""
    import os

    from spikefm.fileio import check_output_file

    dead = tmp_path / ".res.json.tmp-99999999"  # no such process
    live = tmp_path / f".res.json.tmp-{os.getpid()}"
    other = tmp_path / ".other.json.tmp-99999999"
    for p in (dead, live, other):
        p.write_text("partial")
    check_output_file(tmp_path / "res.json", (".json",), "--out")
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be created")
def test_an_output_in_a_folder_that_takes_no_file_is_refused_before_the_work():
    """eval --out /proc/x.json printed its results, then failed to write them: found at the start now."""
    from spikefm.fileio import check_output_file

    with pytest.raises(ValueError, match=r"^--out /proc/spikefm_x\.json: cannot write there \(.* in /proc\); "
                                         r"nothing was done: give a path in a folder you can write$"):
        check_output_file("/proc/spikefm_x.json", (".json",), "--out")


def test_an_output_in_folders_still_to_make_is_accepted_and_leaves_nothing(tmp_path):
    from spikefm.fileio import check_output_file

    check_output_file(tmp_path / "a" / "b" / "r.json", (".json",), "--out")
    assert list(tmp_path.iterdir()) == []  # the probe went into tmp_path and was removed; no folder made


def test_first_line_leaves_out_terminal_codes():
    """torch's weights-only refusal holds bold codes, which reached one-line errors as ^[[1m."""
    from spikefm.fileio import first_line

    assert first_line(ValueError("load failed, \x1b[1mtrusted only\x1b[0m. \n(1) more")) == "load failed, trusted only."
    assert first_line(ValueError("\x1b[31m\x1b[0m")) == "ValueError"
