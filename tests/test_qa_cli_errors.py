"""QA of issue 12, round 2: bad inputs and faults found by trying the command line as a careless
and a hostile user. Each test runs the CLI (in process) and checks the one ``spikefm: error:``
line, the exit status, and that nothing the user had changed and nothing half-written is left."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from spikefm.cli import main as cli_main
from spikefm.corpus.build import BuildConfig, build_corpus

from test_corpus_support import one_error_line, snapshot, write_sessions


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_corpus")
    write_sessions(root / "in", 3, seed=3)
    build_corpus(str(root / "in"), root / "c", BuildConfig(test_fraction=0.34), progress=False)
    return root / "c"


@pytest.fixture
def corpus(built, tmp_path):
    """A copy of a small corpus that a test may damage (version links copied as links)."""
    shutil.copytree(built, tmp_path / "c", symlinks=True)
    return tmp_path / "c"


def _shard(corpus: Path, split: str = "train") -> Path:
    (name,) = [p for p in (corpus / "data").iterdir() if p.name.startswith(split)]
    return name.resolve()  # the file behind the corpus's version links


# --- synth: sizes that would allocate until killed ------------------------------------------------

def test_synth_of_an_impossible_size_fails_at_once_and_writes_nothing(tmp_path, capsys):
    line = one_error_line(capsys, ["synth", str(tmp_path / "s"), "--sessions", "1",
                                   "--units", "100000000,100000000", "--duration-s", "10"])
    assert "at most 200,000,000 cells" in line and "got up to 100,000,000 units x 500 bins" in line
    assert "--units" in line and "--duration-s" in line
    line = one_error_line(capsys, ["synth", str(tmp_path / "s"), "--duration-s", "1e12"])
    assert "50,000,000,000,000 bins" in line
    assert not (tmp_path / "s").exists()


# --- damaged shards: the file and the fix, not a bare pyarrow message ------------------------------

@pytest.mark.parametrize("damage", ["empty", "garbage", "missing"])
def test_damaged_shard_is_named_with_the_fix(corpus, tmp_path, capsys, damage):
    shard = _shard(corpus)
    if damage == "empty":
        shard.write_bytes(b"")
    elif damage == "garbage":
        shard.write_bytes(os.urandom(300))
    else:
        shard.unlink()
    before = snapshot(tmp_path)
    for argv in (["corpus", "info", str(corpus)],
                 ["corpus", "plot", str(corpus), "--out", str(tmp_path / "figs")],
                 ["ngram", "--data", str(corpus), "--order", "1", "--split", "train", "--quiet"]):
        line = one_error_line(capsys, argv)
        assert line.startswith(f"spikefm: error: {corpus / 'data' / shard.name}: "), line
        want = "is missing" if damage == "missing" else "not a readable Parquet shard"
        assert want in line and "--overwrite" in line, line
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("figs")} == before
    assert not list((tmp_path / "figs").glob("*")) if (tmp_path / "figs").exists() else True


# --- a mixed build ends in one error line after one warning per skipped input ---------------------

def test_mixed_build_warns_per_file_and_ends_in_one_error_line(tmp_path, capsys):
    good = write_sessions(tmp_path / "in", 2, seed=5)
    (tmp_path / "in" / "trunc.nwb").write_bytes(good[1].read_bytes()[:30000])
    rc = cli_main(["corpus", "build", str(tmp_path / "in"), "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 2, err
    assert err[0].startswith(f"spikefm: warning: skipped {tmp_path / 'in' / 'trunc.nwb'}: ")
    assert err[1].startswith("spikefm: error: 1 input(s) skipped; listed under \"skipped\"")
    assert "the other 2 session(s) were built" in err[1]
    from spikefm import Corpus

    assert sorted(s["session_id"] for s in Corpus(tmp_path / "c").sessions) == ["ses-0", "ses-1"]


# --- OS errors: the path and what to do ----------------------------------------------------------

def test_output_under_a_regular_file_names_the_path_and_the_fix(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    line = one_error_line(capsys, ["synth", str(tmp_path / "f" / "sub"), "--sessions", "1",
                                   "--duration-s", "10"])
    assert str(tmp_path / "f" / "sub") in line and "is a file, not a folder" in line
    line = one_error_line(capsys, ["synth", str(tmp_path / "f"), "--sessions", "1",
                                   "--duration-s", "10"])
    assert str(tmp_path / "f") in line and "in the way" in line
    assert (tmp_path / "f").read_text() == "mine"


def test_torch_allocation_failure_is_out_of_memory_not_an_internal_error(monkeypatch, capsys,
                                                                        tmp_path):
    """torch reports a failed CPU allocation as a RuntimeError; the CLI must say what it is."""
    import spikefm.corpus.synth as synth

    def fail(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 102400000000 bytes. "
                           "Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(synth, "synthesize", fail)
    rc = cli_main(["synth", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("spikefm: error: out of memory (tried to allocate 102 GB); use smaller")
    assert "internal error" not in err[0]


def test_ctrl_c_is_one_error_line_with_status_130(monkeypatch, capsys, tmp_path):
    import spikefm.corpus.synth as synth

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "synthesize", interrupted)
    rc = cli_main(["synth", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130
    assert len(err) == 1 and err[0].startswith("spikefm: error: interrupted (Ctrl-C); ")


# --- training: a context longer than the model's is refused before any data is read ---------------

def test_seq_len_beyond_the_model_context_is_refused_before_anything_is_written(corpus, tmp_path,
                                                                                capsys):
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "r"),
                                   "--steps", "2", "--quiet", "--set", "data.seq_len=1000000000"])
    assert "data.seq_len (1000000000) must be <= model.max_seq_len (8192)" in line
    assert not (tmp_path / "r").exists()
