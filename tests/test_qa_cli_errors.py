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
    assert str(tmp_path / "f") in line and "is a file, not a folder" in line
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
    # an error raised while Ctrl-C unwound (torch.save's zip writer: 'unexpected pos ...') was an
    # "internal error", exit 1
    def writer_failed_on_ctrl_c(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 22656 vs 22608")

    monkeypatch.setattr(synth, "synthesize", writer_failed_on_ctrl_c)
    assert cli_main(["synth", str(tmp_path / "s")]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("spikefm: error: interrupted (Ctrl-C); ") and "internal error" not in line
    # an import reuses nothing (the advice was the build's, "builds reuse finished sessions")
    import spikefm.corpus.importer as importer

    monkeypatch.setattr(importer, "import_neural_pile", interrupted)
    (tmp_path / "pile").mkdir()
    assert cli_main(["corpus", "import", str(tmp_path / "pile"), "--out", str(tmp_path / "c")]) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("run the command again (an import starts over; a corpus that was there is kept as it was)")


# --- training: a context longer than the model's is refused before any data is read ---------------

def test_seq_len_beyond_the_model_context_is_refused_before_anything_is_written(corpus, tmp_path,
                                                                                capsys):
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "r"),
                                   "--steps", "2", "--quiet", "--set", "data.seq_len=1000000000"])
    assert "data.seq_len (1000000000) must be <= model.max_seq_len (8192)" in line
    assert not (tmp_path / "r").exists()


def test_truncated_shard_stops_training_before_the_run_folder_is_made(corpus, tmp_path, capsys):
    shard = _shard(corpus)
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy cut short: the footer is gone
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "r"),
                                   "--steps", "2", "--quiet"])
    assert f"{corpus / 'data' / shard.name}: not a readable Parquet shard" in line
    assert "truncated" in line
    assert not (tmp_path / "r").exists()


# --- atomic writes: a folder in the way, or a file among the parents ------------------------------

def test_results_path_that_is_a_folder_or_under_a_file_is_one_line(corpus, tmp_path, capsys):
    (tmp_path / "res.json").mkdir()
    (tmp_path / "res.json" / "keep.txt").write_text("mine")
    (tmp_path / "f").write_text("mine")
    before = snapshot(tmp_path)
    base = ["ngram", "--data", str(corpus), "--order", "1", "--quiet", "--out"]
    line = one_error_line(capsys, base + [str(tmp_path / "res.json")])
    assert line == (f"spikefm: error: {tmp_path / 'res.json'} is a folder, not a file; give the path "
                    "of a file to write (a new name, or a file to replace)")
    line = one_error_line(capsys, base + [str(tmp_path / "f" / "sub" / "r.json")])
    assert line == (f"spikefm: error: cannot write {tmp_path / 'f' / 'sub' / 'r.json'}: "
                    f"{tmp_path / 'f'} is a file, not a folder; choose another path")
    assert snapshot(tmp_path) == before


# --- run folders: never someone else's folder, never another run's weights ------------------------

@pytest.fixture
def ndt_run(built, tmp_path):
    """A finished NDT run folder as far as fine-tuning's checks read it (its config.json; the
    weights file is a stand-in: every refusal below comes before any weight is read)."""
    import json

    from spikefm import families
    from spikefm.train.config import config_to_dict

    run = tmp_path / "pre"
    run.mkdir()
    cfg = families.run_config("ndt", corpus=str(built))
    (run / "config.json").write_text(json.dumps({"family": "ndt", "config": config_to_dict(cfg)}))
    (run / "model.safetensors").write_bytes(b"the user's pretrained weights")
    (run / "metrics.jsonl").write_text("")
    return run


def test_training_into_a_project_or_corpus_folder_is_refused_untouched(corpus, tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(proj), "--steps", "2",
                                   "--quiet"])
    assert line == (f"spikefm: error: {proj}: folder has files and is not a spikefm run (found "
                    "'data' and 1 more); nothing was written: give a new or empty folder (--out)")
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(corpus), "--steps",
                                   "2", "--quiet", "--resume"])
    assert line == (f"spikefm: error: {corpus} is a spikefm corpus (manifest.json), not a run folder; nothing "
                    "was written: give a new run folder (--out), e.g. runs/NAME, and the corpus as --data")
    assert snapshot(tmp_path) == before  # no lock file either


def test_finetune_into_the_pretrained_run_or_a_project_folder_keeps_them(ndt_run, built, tmp_path,
                                                                         capsys):
    """The default strategy (auto) copied the chosen candidate's weights over OUT: with OUT the
    pretraining run, its model.safetensors was replaced (exit 0)."""
    from spikefm import Corpus

    session = Corpus(built).session_ids("test")[0]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    base = ["finetune", str(ndt_run), "--data", str(built), "--session", session, "--steps", "2",
            "--quiet", "--out"]
    for strategy in ("auto", "frozen"):  # frozen said "a run finished at step N; continuing it ..."
        line = one_error_line(capsys, base + [str(ndt_run), "--strategy", strategy])
        assert line == (f"spikefm: error: {ndt_run} is the pretrained run itself; fine-tuning writes a new "
                        "run: give a new folder (--out); nothing was written")
    line = one_error_line(capsys, base + [str(proj)])
    assert f"{proj}: folder has files and is not a spikefm run (found 'notes.txt')" in line
    line = one_error_line(capsys, base + [str(proj), "--freeze-core"])
    assert f"{proj}: folder has files and is not a spikefm run (found 'notes.txt')" in line
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "finetune.json").write_text("{}")
    line = one_error_line(capsys, base + [str(tmp_path / "done")])
    assert "already holds a finished fine-tuning (finetune.json)" in line
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("done")} == before


def test_finetune_to_a_session_the_corpus_lacks_writes_nothing(ndt_run, built, tmp_path, capsys):
    """An unknown --session was refused after OUT was created, which then held only a lock file."""
    from spikefm import Corpus

    before = snapshot(tmp_path)
    for extra in ([], ["--freeze-core"]):
        line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(built), "--session", "nope",
                                       "--out", str(tmp_path / "ft"), "--steps", "2", "--quiet", *extra])
        listed = ", ".join(Corpus(built).session_ids())
        assert line == (f"spikefm: error: session 'nope' is not in the corpus {built}; its sessions: {listed}; "
                        "nothing was written: give one of them (--session)")
        assert snapshot(tmp_path) == before and not (tmp_path / "ft").exists()


def test_finetuning_an_ar_run_names_the_families_that_fine_tune(built, tmp_path, capsys):
    import json

    from spikefm import families
    from spikefm.train.config import config_to_dict

    run = tmp_path / "ar"
    run.mkdir()
    cfg = families.run_config("ar", corpus=str(built))
    (run / "config.json").write_text(json.dumps({"family": "ar", "config": config_to_dict(cfg)}))
    line = one_error_line(capsys, ["finetune", str(run), "--data", str(built), "--session", "s", "--out",
                                   str(tmp_path / "ft"), "--quiet"])
    able = [n for n in families.names() if hasattr(families.get(n), "finetune_config")]
    assert {"ndt", "neds"} <= set(able) and "ar" not in able
    assert line == ("spikefm: error: the 'ar' family does not support fine-tuning to a new session (it has no "
                    f"per-session parameters); fine-tune a run of a family that does: {', '.join(able)}")
    assert not (tmp_path / "ft").exists()


# --- outputs that would replace a user's file ----------------------------------------------------

def test_output_file_of_another_kind_or_of_a_run_is_refused(corpus, tmp_path, capsys):
    """``--out session.nwb`` replaced the recording with an .npz / HTML (exit 0), and
    ``--out RUN/config.json`` replaced the run's description."""
    rec = tmp_path / "session.nwb"
    rec.write_bytes(b"the user's recording")
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["generate", str(tmp_path / "run"), "--units", "4", "--bins", "4",
                                   "--out", str(rec)])
    assert line == (f"spikefm: error: --out {rec}: expected a file name ending in .npz, got .nwb; "
                    "nothing was written (another ending could be one of your files): give e.g. "
                    "session.npz")
    line = one_error_line(capsys, ["report", str(corpus), "--out", str(rec)])
    assert "expected a file name ending in .html or .htm, got .nwb" in line
    line = one_error_line(capsys, ["ngram", "--data", str(corpus), "--order", "1", "--quiet",
                                   "--out", str(corpus / "manifest.json")])
    assert line == (f"spikefm: error: --out {corpus / 'manifest.json'}: that file belongs to the "
                    f"spikefm run or corpus in {corpus}; writing it would damage that folder: give "
                    "another name")
    assert snapshot(tmp_path) == before


# --- report: damaged inputs are one line naming the file ------------------------------------------

def test_report_of_damaged_metrics_or_generated_file_is_one_line(corpus, tmp_path, capsys):
    import json

    from spikefm import families
    from spikefm.train.config import config_to_dict

    run = tmp_path / "run"
    run.mkdir()
    cfg = families.run_config("ar", corpus=str(corpus))
    (run / "config.json").write_text(json.dumps({"family": "ar", "config": config_to_dict(cfg)}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": null}\n')
    out = tmp_path / "r.html"
    assert cli_main(["report", str(run), "--out", str(out)]) == 0  # a null loss is drawn as missing
    out.unlink()
    capsys.readouterr()
    (run / "metrics.jsonl").write_text('{"step": "x", "loss": 1.0}\n{"step": 2, "loss": 1.0}\n')
    line = one_error_line(capsys, ["report", str(run), "--out", str(out)])
    assert line == (f"spikefm: error: {run / 'metrics.jsonl'}: line 1 has step 'x'; expected an "
                    "integer step (the metrics.jsonl that spikefm train writes)")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (tmp_path / "g.npz").write_bytes(os.urandom(100))
    line = one_error_line(capsys, ["report", str(run), "--out", str(out), "--generated",
                                   str(tmp_path / "g.npz")])
    assert line == (f"spikefm: error: {tmp_path / 'g.npz'}: not an .npz (a zip of arrays: spikefm writes no other "
                    "kind); expected the .npz that spikefm generate writes")
    # a zip whose array is no .npy: numpy hands back its bytes ('could not convert string to float')
    import zipfile

    with zipfile.ZipFile(tmp_path / "g.npz", "w") as z:
        z.writestr("counts.npy", b"not an array")
    line = one_error_line(capsys, ["report", str(run), "--out", str(out), "--generated",
                                   str(tmp_path / "g.npz")])
    assert line.startswith(f"spikefm: error: {tmp_path / 'g.npz'}: its 'counts' holds no numbers (")
    assert line.endswith("expected the .npz that spikefm generate writes")
    assert not out.exists() and not list(tmp_path.glob(".r.html*"))


# --- quickstart: never replaces a user's folder or run --------------------------------------------

def test_quickstart_refuses_a_project_folder_and_a_users_run(corpus, tmp_path, capsys):
    import json

    proj = tmp_path / "proj"
    (proj / "run_ar").mkdir(parents=True)
    (proj / "notes.txt").write_text("mine")
    line = one_error_line(capsys, ["quickstart", "--out", str(proj), "--fast"])
    assert line.startswith(f"spikefm: error: {proj}: folder has files the quickstart did not write "
                           "(found 'notes.txt')")
    (proj / "notes.txt").unlink()
    (proj / "run_ar" / "config.json").write_text(json.dumps({"family_info": {"corpus": str(corpus)}}))
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["quickstart", "--out", str(proj), "--fast"])
    assert line.startswith(f"spikefm: error: {proj / 'run_ar'} is not a run the quickstart made "
                           f"(trained on {corpus}, not {proj / 'corpus'})")
    assert snapshot(tmp_path) == before


def _quickstart_folder(root, corpus_sha="abc"):
    """A quickstart folder as far as check_quickstart_out reads it: its corpora (a manifest each)
    and run descriptions naming them as training records them (absolute, in family_info)."""
    import json

    for name in ("corpus", "corpus_sessions"):
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(json.dumps({"name": name, "sha": corpus_sha}))
    for run, corpus in (("run_ar", "corpus"), ("run_ndt_pretrain", "corpus_sessions")):
        (root / run).mkdir()
        (root / run / "config.json").write_text(json.dumps({
            "family_info": {"corpus": str((root / corpus).resolve())},
            "config": {"data": {"corpus": f"{root.name}/{corpus}"}}}))  # as given: relative to where it ran
    return root


def test_quickstart_accepts_its_own_folder_from_anywhere_and_a_copy(tmp_path, monkeypatch):
    """A finished quickstart folder was refused when the command ran from another directory (the
    check resolved the run's relative corpus path against the current one), and after a copy."""
    import hashlib
    import json
    import shutil

    from spikefm.cli import check_quickstart_out

    qs = _quickstart_folder(tmp_path / "qs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_quickstart_out(qs)  # from another directory: accepted
    # a copy: its runs name the original's corpus, whose manifest the copy's corpus has
    shutil.copytree(qs, tmp_path / "copy")
    for run, corpus in (("run_ar", "corpus"), ("run_ndt_pretrain", "corpus_sessions")):
        path = tmp_path / "copy" / run / "config.json"
        info = json.loads(path.read_text())
        info["family_info"]["corpus_manifest_sha256"] = hashlib.sha256(
            (tmp_path / "copy" / corpus / "manifest.json").read_bytes()).hexdigest()
        path.write_text(json.dumps(info))
    check_quickstart_out(tmp_path / "copy")
    # ... but not a run of another corpus (another manifest)
    (tmp_path / "copy" / "corpus" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"run_ar is not a run the quickstart made \(trained on .*qs/corpus, not"):
        check_quickstart_out(tmp_path / "copy")


def test_quickstart_accepts_a_fine_tuning_it_stopped_before_choosing(tmp_path):
    """Ctrl-C during the NDT fine-tuning left run_ndt_finetune holding only candidates/; the rerun
    that the interruption message advised was refused ('trained on an unknown corpus')."""
    import json

    from spikefm.cli import check_quickstart_out

    qs = _quickstart_folder(tmp_path / "qs")
    cand = qs / "run_ndt_finetune" / "candidates" / "frozen"
    cand.mkdir(parents=True)
    (cand / "config.json").write_text(json.dumps({"family_info": {"corpus": str(qs / "corpus_sessions")}}))
    check_quickstart_out(qs)
    (cand / "config.json").write_text(json.dumps({"family_info": {"corpus": str(tmp_path / "mine")}}))
    with pytest.raises(ValueError, match="run_ndt_finetune is not a run the quickstart made"):
        check_quickstart_out(qs)


def test_the_full_quickstart_does_not_reuse_the_fast_ones_recordings(tmp_path, capsys):
    """A --fast run's 3 short sessions were reused by the full quickstart, which built and reported
    on them; they (and the corpus built from them) are made again now, and said so."""
    from spikefm.quickstart import check_recordings, mark_recordings

    qs = tmp_path / "qs"
    (qs / "nwb" / "sub-1").mkdir(parents=True)
    for i in range(3):
        (qs / "nwb" / "sub-1" / f"s{i}.nwb").write_bytes(b"fast")
    (qs / "corpus").mkdir()
    # recordings the quickstart did not make (a user's nwb/ and corpus/): refused, kept
    with pytest.raises(ValueError, match=r"holds 3 recordings the quickstart did not make \(it makes 4\); "
                                         r"nothing was changed: give another --out"):
        check_recordings(qs, fast=False)
    assert (qs / "nwb" / "sub-1" / "s0.nwb").is_file() and (qs / "corpus").is_dir()
    mark_recordings(qs / "nwb", fast=True)  # what the quickstart writes before it synthesizes
    assert check_recordings(qs, fast=True) == [] and (qs / "nwb").is_dir()  # the same mode: reused
    assert check_recordings(qs, fast=False) == ["nwb"]
    assert not (qs / "nwb").exists() and not (qs / "corpus").exists()
    assert f"{qs / 'nwb'} holds 3 recordings, not the 4 this run makes" in capsys.readouterr().out


# --- experiment transfer: settings and folder checked before any data is synthesized --------------

def test_transfer_study_checks_settings_and_folder_before_writing(tmp_path, capsys):
    line = one_error_line(capsys, ["experiment", "transfer", "--out", str(tmp_path / "st"), "--seeds",
                                   "1", "--set", "optim.lr=nan"])
    assert "invalid value for 'optim.lr': expected a finite float" in line
    assert not (tmp_path / "st").exists()
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    line = one_error_line(capsys, ["experiment", "transfer", "--out", str(proj), "--seeds", "1"])
    assert line == (f"spikefm: error: {proj}: folder has files that are not a transfer study's "
                    "(found 'notes.txt'); nothing was changed: give a new or empty folder (--out)")
    assert sorted(p.name for p in proj.iterdir()) == ["notes.txt"]
    line = one_error_line(capsys, ["experiment", "transfer", "--out", str(tmp_path / "st"), "--seeds",
                                   "1", "--model", "ar"])
    assert "the 'ar' family does not support fine-tuning to a new session" in line
    assert not (tmp_path / "st").exists()  # refused before data was synthesized for it
    # a family that fine-tunes but whose evaluate() takes none of the study's options: refused
    # before any work (it failed after pretraining, fine-tuning and the single-session run)
    import sys

    from spikefm import families

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    families.register("toy", "_toy_family:ToyFamily")
    line = one_error_line(capsys, ["experiment", "transfer", "--out", str(tmp_path / "st"), "--seeds",
                                   "1", "--model", "toy"])
    assert "the 'toy' family's evaluate() takes no tasks, session, baselines" in line, line
    assert not (tmp_path / "st").exists()
    # one that takes them but has no transfer_headline(): refused before any work too (it failed
    # after every run was trained and scored, with a bare KeyError)
    import _toy_family

    class Scored(_toy_family.ToyFamily):
        name = "toy_scored"

        def evaluate(self, run_dir, corpus, *, tasks=None, session=None, baselines=True, split="test"):
            return super().evaluate(run_dir, corpus, split=split)

    families.register("toy_scored", Scored)
    line = one_error_line(capsys, ["experiment", "transfer", "--out", str(tmp_path / "st"), "--seeds",
                                   "1", "--model", "toy_scored"])
    assert "the 'toy_scored' family has no transfer_headline(), which a transfer study needs" in line, line
    assert not (tmp_path / "st").exists()


def test_a_failed_atomic_write_names_the_target_not_the_temporary(tmp_path):
    from spikefm.fileio import write_atomic

    def fail(tmp):
        raise OSError(30, "Read-only file system", str(tmp))

    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "fig.png", fail)
    assert info.value.filename == str(tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


# --- the command line process: warnings are one line; Ctrl-C after the work is done --------------

def _command_line(code: str, tmp_path) -> "subprocess.CompletedProcess":
    import signal
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # A user's command starts with SIGINT at its default, so Python turns Ctrl-C into
    # KeyboardInterrupt; a test run started in the background of a non-interactive shell ignores
    # SIGINT, and a child inheriting that would ignore the simulated Ctrl-C of the tests below.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_command_line_warnings_are_one_line_each(corpus, tmp_path):
    """Python's format is two lines (the message and the source line that warned)."""
    p = _command_line(
        "import sys, warnings; from spikefm import cli\n"
        "def info(args):\n"
        "    warnings.warn('c10 is not the corpus\\nthe run was trained on', RuntimeWarning)\n"
        "    return 0\n"
        "cli.cmd_corpus_info = info\n"
        f"sys.argv = ['spikefm', 'corpus', 'info', {str(corpus)!r}]\n"
        "sys.exit(cli.main())\n", tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == ["spikefm: warning: c10 is not the corpus the run was trained on"]


def test_ctrl_c_after_the_command_finished_keeps_its_exit_status(corpus, tmp_path):
    """A Ctrl-C during interpreter teardown killed the process by SIGINT (status -2, no line)
    although everything was written; it now leaves at once with the command's own status."""
    p = _command_line(
        "import os, signal, sys, time; from spikefm import cli\n"
        f"sys.argv = ['spikefm', 'corpus', 'info', {str(corpus)!r}]\n"
        "code = cli.main()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
        "print('not reached')\n", tmp_path)
    assert p.returncode == 0 and "not reached" not in p.stdout, (p.returncode, p.stderr)
    assert "sessions" in p.stdout and p.stderr == ""
    # past the exit callbacks the interpreter resets a Python SIGINT handler to the default action
    # (a Ctrl-C there killed the finished command: 130, no line); an ignored SIGINT stays ignored
    p = _command_line(
        "import atexit, signal, sys; from spikefm import cli\n"
        f"sys.argv = ['spikefm', 'corpus', 'info', {str(corpus)!r}]\n"
        "code = cli.main()\n"
        "atexit._run_exitfuncs()\n"
        "print('handler', signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n", tmp_path)
    assert p.returncode == 0 and "handler True" in p.stdout, (p.stdout[-300:], p.stderr)


def test_absurd_bin_width_is_refused_by_the_parser(tmp_path, capsys):
    """A 3-year bin overflowed a C integer deep in the build ('Value ... too large to fit')."""
    with pytest.raises(SystemExit) as stop:  # argparse's own exit
        cli_main(["corpus", "build", str(tmp_path), "--out", str(tmp_path / "c"), "--bin-ms",
                  "99999999999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == ["spikefm corpus build: error: argument --bin-ms: expected a positive "
                               "integer <= 60,000 ms (one minute), got 99,999,999,999 (see spikefm "
                               "corpus build -h)"]
    assert not (tmp_path / "c").exists()


def test_absurd_batch_size_is_refused_before_the_run_starts(corpus, tmp_path, capsys):
    """It was accepted and the loader gathered windows until killed."""
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(tmp_path / "r"),
                                   "--steps", "2", "--quiet", "--set",
                                   "train.batch_size=99999999999999999999999"])
    assert line == ("spikefm: error: train.batch_size must be at most 1,048,576 sequences per step "
                    "(no machine holds more), got 99,999,999,999,999,999,999,999")
    assert not (tmp_path / "r").exists()


def test_manifest_with_a_non_finite_number_is_refused(corpus, capsys):
    import json

    path = (corpus / "manifest.json").resolve()
    m = json.loads(path.read_text())
    m["sessions"][0]["duration_s"] = float("nan")
    path.write_text(json.dumps(m))
    line = one_error_line(capsys, ["corpus", "info", str(corpus)])
    assert "key 'sessions[0].duration_s' must be a finite number, found nan" in line


@pytest.mark.parametrize("command, again", [
    ("corpus", "run the command again (builds reuse finished sessions)"),
    ("train", "continue it with the same command and --resume"),
    ("finetune", "run the same command again (fine-tuning continues from its last validation; studies reuse "
                 "their finished seeds or jobs)"),
])
def test_ctrl_c_swallowed_by_a_garbage_collector_callback_still_interrupts(corpus, tmp_path, command, again):
    """Python ignores an exception raised in a weakref/__del__ callback (a traceback, and the
    command went on to exit 0); the command line delivers it again as one 'interrupted' line,
    whose advice fits the command (``finetune`` has no --resume: it told the user to pass one)."""
    argv = {"corpus": ["corpus", "info", str(corpus)],
            "train": ["train", "--data", str(corpus), "--out", str(tmp_path / "run")],
            "finetune": ["finetune", str(tmp_path), "--data", str(corpus), "--session", "s", "--out",
                         str(tmp_path / "ft")]}[command]
    handler = {"corpus": "cmd_corpus_info", "train": "cmd_train", "finetune": "cmd_finetune"}[command]
    p = _command_line(
        "import gc, sys, time; from spikefm import cli\n"
        "class Dropped:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt  # as if Ctrl-C arrived while this ran\n"
        "def run(args):\n"
        "    Dropped()\n"
        "    gc.collect()\n"
        "    for _ in range(300):\n"
        "        time.sleep(0.1)\n"
        "    print('not interrupted')\n"
        "    return 0\n"
        f"cli.{handler} = run\n"
        f"sys.argv = ['spikefm', *{argv!r}]\n"
        "sys.exit(cli.main())\n", tmp_path)
    assert p.returncode == 130 and "not interrupted" not in p.stdout, (p.returncode, p.stderr)
    assert p.stderr.splitlines() == ["spikefm: error: interrupted (Ctrl-C); nothing was "
                                     f"half-written (writes go to temporary names); {again}"]


@pytest.mark.parametrize("argv, prog", [
    (["corpus", "build", "IN", "--out", "OUT", "--seed=-1"], "spikefm corpus build"),
    (["synth", "OUT", "--seed=-1"], "spikefm synth"),
])
def test_negative_seed_is_refused_by_the_parser_before_any_work(tmp_path, capsys, argv, prog):
    """A negative --seed failed only after every session was staged, with a message that named no
    flag, and left the staging folder behind."""
    argv = [str(tmp_path / a) if a in ("IN", "OUT") else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err == [f"{prog}: error: argument --seed: expected an integer >= 0, got -1 "
                                            f"(see {prog} -h)"]
    assert not (tmp_path / "OUT").exists()


def test_build_config_refuses_a_negative_seed_before_any_work():
    from spikefm.corpus.build import BuildConfig

    with pytest.raises(ValueError, match=r"seed must be an int >= 0 \(it seeds the train/test split\), got -1"):
        BuildConfig(seed=-1)


def test_transfer_refuses_a_repeated_seed(tmp_path, capsys):
    """--seeds 1,1 ran seed 1 twice and reported 'mean ± s.d. over seeds 1,1' of one dataset."""
    with pytest.raises(SystemExit) as stop:
        cli_main(["experiment", "transfer", "--out", str(tmp_path / "t"), "--seeds", "1,1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "argument --seeds: seeds must be distinct integers >= 0 (each one seed), e.g. 1,2,3; got '1,1'" in err[0]
    assert not (tmp_path / "t").exists()
    from spikefm.experiments.transfer import transfer_study

    with pytest.raises(ValueError, match=r"seeds must be distinct integers >= 0 \(each one seed\), e\.g\. 1,2,3; "
                                         r"got \[1, 1\]"):
        transfer_study(tmp_path / "t", seeds=[1, 1])
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("argv,flag", [
    (["corpus", "build", "IN", "--out", ""], "--out"),
    (["synth", " ", "--sessions", "1"], "OUT_DIR"),
    (["train", "--data", "", "--out", "run"], "--data"),
    (["corpus", "build", "", "--out", "c"], "INPUT"),
    (["report", "IN", "--predictions", ""], "--predictions"),
])
def test_an_empty_path_is_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch, argv, flag):
    """``--out ""`` (an unset shell variable) wrote the corpus or recordings into the current folder."""
    monkeypatch.chdir(tmp_path)
    write_sessions(tmp_path / "IN", 1, seed=1)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, argv)
    assert line.startswith(f"spikefm: error: {flag}: an empty path (")
    assert line.endswith("give a file or folder name ('.' for the current folder)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["f.nwb", "f.nwb/sub"])
def test_synth_into_a_file_is_bad_input(tmp_path, capsys, out):
    """OUT_DIR naming a file (or a path through one) exited 1 with "File exists ... in the way",
    the status of an operation that failed; it is bad input: exit 2, one line, the file kept."""
    (tmp_path / "f.nwb").write_bytes(b"mine")
    line = one_error_line(capsys, ["synth", str(tmp_path / out), "--sessions", "1"])
    where = f"{tmp_path / 'f.nwb'}" if out == "f.nwb" else f"{tmp_path / out}: {tmp_path / 'f.nwb'}"
    assert line == (f"spikefm: error: {where} is a file, not a folder; give OUT_DIR a folder "
                    "(new or one that holds synthetic recordings)")
    assert cli_main(["synth", str(tmp_path / out), "--sessions", "1"]) == 2
    assert (tmp_path / "f.nwb").read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["f.nwb"]


@pytest.mark.parametrize("argv", [["experiment", "transfer", "--out", "t", "--seeds", "1,,2"],
                                  ["eval", "run", "--data", "c", "--ngram", "1,"]])
def test_a_list_with_an_empty_item_is_refused(tmp_path, capsys, monkeypatch, argv):
    """``--seeds 1,,2`` and ``--ngram 1,`` dropped the empty item silently (a value the user
    meant to type was lost); argparse now refuses them in one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "(an empty item)" in err[0]
    assert list(tmp_path.iterdir()) == []


# --- torchrun: one error line per job, and a lost peer named as such ------------------------------

def test_torchrun_ranks_say_a_bad_argument_once_and_label_their_own_errors(monkeypatch, capsys):
    """Every rank printed the same bad-argument error (3 copies with 3 ranks), and two ranks'
    lines ran together when each wrote its newline separately."""
    from spikefm import cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):  # no rank 0 to wait for
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["train", "--data", "nowhere", "--out", "x"]) == 2  # another launcher's rank 1: said
    assert capsys.readouterr().err == ("spikefm: error: (rank 1) --data nowhere: no such folder, so not a spikefm "
                                       "corpus; give the corpus folder (spikefm corpus build ... --out DIR, or "
                                       "spikefm corpus import)\n")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert cli.main(["train", "--data", "nowhere", "--out", "x"]) == 2
    assert capsys.readouterr().err == ""  # torchrun: rank 0 says it; no process group was started
    with pytest.raises(SystemExit) as info:  # a bad flag value: the parser's line, by rank 0 only
        cli.main(["train", "--data", "nowhere", "--out", "x", "--steps", "0"])
    assert info.value.code == 2 and capsys.readouterr().err == ""
    cli._error_line("its own trouble")
    assert capsys.readouterr().err == "spikefm: error: (rank 1) its own trouble\n"
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "--data", "nowhere", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikefm: error: ") and "(rank" not in err and err.count("\n") == 1


def test_a_rank_whose_peer_died_says_so_not_internal_error(monkeypatch, capsys):
    from spikefm import cli

    def lost(args):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:64185: Connection reset by peer")

    monkeypatch.setattr(cli, "cmd_corpus_info", lost)
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["corpus", "info", "."]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spikefm: error: another process of this torchrun job stopped, so this one cannot go on")
    assert "internal error" not in err and err.rstrip().endswith("run the same command with --resume")
    monkeypatch.delenv("RANK")  # outside torchrun the same exception is an internal error
    assert cli.main(["corpus", "info", "."]) == 1
    assert "internal error (RuntimeError" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--model", "ar", "--set", "family=ndt"],
     "--set family=ndt: the model family comes from --model (spikefm train --model ndt; in Python "
     "run_config(family, ...)), not from --set"),
    (["--model", "ar", "--sessions", "x"],
     "--sessions picks the sessions of a model with per-session parameters (--model ndt or neds); the ar family "
     "trains on the corpus's train split: drop --sessions"),
    (["--model", "ndt", "--steps", "2", "--set", "train.steps=3"],
     "--steps 2 and --set train.steps=3 both set train.steps; give one of them"),
    (["--model", "ndt", "--set", "data.split_fractions=0,0,1", "--steps", "2"],
     "split 'train' has no window in its"),
])
def test_train_flags_that_contradict_or_do_not_apply_are_refused_in_the_users_words(corpus, tmp_path, capsys,
                                                                                     args, said):
    """From a CLI fuzz walk: 'cfg.model must be NDTConfig for family 'ndt', got LlamaConfig';
    "unknown key 'data.sessions'"; --steps silently beat --set train.steps; a train share of 0
    was 'fewer than world_size=1; use fewer ranks or more data'."""
    out = tmp_path / "run"
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(out), "--quiet", *args])
    assert said in line and not out.exists()
