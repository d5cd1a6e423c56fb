"""The words of the ``spikefm`` command line: a wrong folder is named for what it is, settings are
named as the user typed them (``--set model.positions``, ``--select lowest``), and ``-h`` says
what each option takes and its default. Each test runs the CLI in process (or the function the
CLI calls) and checks the one ``spikefm: error:`` line or the help text."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spikefm import families  # noqa: E402
from spikefm.cli import main as cli_main  # noqa: E402
from spikefm.corpus.build import BuildConfig, build_corpus  # noqa: E402

from test_corpus_support import one_error_line, snapshot, write_sessions  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """NWB recordings (``in/``) and the corpus built from them (``c/``)."""
    root = tmp_path_factory.mktemp("wording")
    write_sessions(root / "in", 3, seed=3)
    build_corpus(str(root / "in"), root / "c", BuildConfig(test_fraction=0.34), progress=False)
    return root


@pytest.fixture
def corpus(built, tmp_path):
    shutil.copytree(built / "c", tmp_path / "c", symlinks=True)
    return tmp_path / "c"


@pytest.fixture
def ndt_run(built, tmp_path):
    """A finished NDT run as far as fine-tuning's checks read it (its config.json; the weights
    file is a stand-in: the refusals below come before any weight is read)."""
    from spikefm.train.config import config_to_dict

    run = tmp_path / "pre"
    run.mkdir()
    cfg = families.run_config("ndt", corpus=str(built / "c"))
    (run / "config.json").write_text(json.dumps({"family": "ndt", "config": config_to_dict(cfg)}))
    (run / "model.safetensors").write_bytes(b"the user's pretrained weights")
    (run / "metrics.jsonl").write_text("")
    return run


def _session(corpus: Path) -> str:
    from spikefm import Corpus

    return Corpus(corpus).session_ids("test")[0]


# --- 1. a corpus, recordings or a missing path where the run folder goes ---------------------------

def test_a_corpus_given_as_the_run_folder_is_named_a_corpus(corpus, tmp_path, capsys):
    """eval, finetune and generate said only 'CORPUS/config.json not found; expected a spikefm run
    directory', while the reverse mistake (a run as --data) was recognised."""
    before = snapshot(tmp_path)
    want = (f"spikefm: error: {corpus} is a spikefm corpus (manifest.json), not a run folder; give the run "
            f"folder (spikefm train --out) first, and the corpus as --data {corpus} where the command takes one")
    for argv in (["eval", str(corpus), "--data", str(corpus), "--quiet"],
                 ["finetune", str(corpus), "--data", str(corpus), "--session", _session(corpus), "--out",
                  str(tmp_path / "ft"), "--quiet"],
                 ["generate", str(corpus), "--units", "4", "--bins", "3", "--out", str(tmp_path / "g.npz"),
                  "--quiet"]):
        assert one_error_line(capsys, argv) == want, argv
    assert snapshot(tmp_path) == before


def test_recordings_or_a_missing_path_as_the_run_folder_say_so(built, corpus, tmp_path, capsys):
    nwb = tmp_path / "nwb"
    shutil.copytree(built / "in", nwb / "sub-a")  # laid out as synth and DANDI lay recordings out
    line = one_error_line(capsys, ["eval", str(nwb), "--data", str(corpus), "--quiet"])
    assert line == (f"spikefm: error: {nwb} holds NWB recordings (e.g. sub-a/ses-0.nwb), not a spikefm run "
                    "folder; give the run folder (spikefm train --out) first (to train on the recordings, build "
                    f"a corpus: spikefm corpus build {nwb} --out CORPUS_DIR)")
    missing = tmp_path / "runs" / "ftt"
    line = one_error_line(capsys, ["eval", str(missing), "--data", str(corpus), "--quiet"])
    assert line == (f"spikefm: error: {missing} does not exist; expected a spikefm run directory (spikefm train "
                    "--out) or a Hugging Face Llama folder: check the path")
    (tmp_path / "results.json").write_text("{}")
    line = one_error_line(capsys, ["eval", str(tmp_path / "results.json"), "--data", str(corpus), "--quiet"])
    assert f"{tmp_path / 'results.json'} is a file, not a folder; expected a spikefm run directory" in line
    (tmp_path / "other").mkdir()  # any other folder: the generic words, as before
    line = one_error_line(capsys, ["eval", str(tmp_path / "other"), "--data", str(corpus), "--quiet"])
    assert line == (f"spikefm: error: {tmp_path / 'other' / 'config.json'} not found; expected a spikefm run "
                    "directory (spikefm train --out)")


# --- 2. a corpus (or recordings) as --out of train and finetune ------------------------------------

def test_a_corpus_as_the_out_folder_of_train_or_finetune_is_named_a_corpus(corpus, ndt_run, built, tmp_path,
                                                                           capsys):
    """Said 'folder has files and is not a spikefm run (found 'data' and 1 more)'."""
    want = (f"spikefm: error: {corpus} is a spikefm corpus (manifest.json), not a run folder; nothing was "
            "written: give a new run folder (--out), e.g. runs/NAME, and the corpus as --data")
    before = snapshot(tmp_path)
    assert one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(corpus), "--steps", "2",
                                   "--quiet"]) == want
    for strategy in ("auto", "frozen"):
        assert one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session",
                                       _session(corpus), "--out", str(corpus), "--strategy", strategy,
                                       "--quiet"]) == want
    nwb = tmp_path / "nwb"
    shutil.copytree(built / "in", nwb)
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["train", "--data", str(corpus), "--out", str(nwb), "--steps", "2", "--quiet"])
    assert line == (f"spikefm: error: {nwb} holds NWB recordings, not a spikefm run; nothing was written: give "
                    "a new run folder (--out), e.g. runs/NAME")
    assert snapshot(tmp_path) == before


# --- 3. help texts ----------------------------------------------------------------------------------

def _help(capsys, monkeypatch, *argv: str) -> str:
    """The help text of ``spikefm ARGV``, its lines joined (argparse wraps them)."""
    with pytest.raises(SystemExit) as exc:
        cli_main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_names_the_registered_families_and_the_default(capsys, monkeypatch):
    """Said 'model family (spikefm.families.names(); default: the registry's default)'."""
    text = _help(capsys, monkeypatch, "train")
    assert f"model family: {', '.join(families.names())} (default {families.DEFAULT_FAMILY})" in text
    # read from the registry when the parser is built: a plugin's family and another default show
    monkeypatch.setattr(families, "_entry_points", lambda: {"myplugin": "my_plugin.family:Family"})
    monkeypatch.setattr(families, "DEFAULT_FAMILY", "ndt")
    text = _help(capsys, monkeypatch, "train")
    listed = re.search(r"--model FAMILY model family: ([\w, -]+) \(default ndt\)", text)
    assert listed and {"ar", "myplugin", "ndt", "neds"} <= set(listed.group(1).split(", ")), text


def test_train_steps_help_states_the_defaults_the_families_use(capsys, monkeypatch):
    line = _help(capsys, monkeypatch, "train")
    ar = families.get("ar")
    tiny = {families.run_config("ar", preset=p).train.steps for p in ar.presets() if p.startswith("tiny")}
    larger = {families.run_config("ar", preset=p).train.steps for p in ar.presets() if not p.startswith("tiny")}
    assert len(tiny) == 1 and len(larger) == 1
    assert (f"default: the family's for the preset: {tiny.pop()} for ar's tiny presets, {larger.pop()} for its "
            f"larger ones, {families.run_config('ndt').train.steps} for ndt, "
            f"{families.run_config('neds').train.steps} for neds") in line
    assert "--steps STEPS optimizer steps of the whole run, as --set train.steps=N" in line


def test_eval_help_describes_the_run_folder_and_the_corpus(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "eval")
    assert "RUN_DIR run folder (spikefm train --out or spikefm finetune --out) or a Hugging Face Llama folder" in text
    assert "--data CORPUS_DIR corpus folder to score on (spikefm corpus build --out)" in text


def test_finetune_select_help_says_which_family_refuses_one_se(capsys, monkeypatch):
    line = _help(capsys, monkeypatch, "finetune")
    assert "--select {lowest,one-se} how auto picks" in line
    assert "needs per-window validation losses: neds has them, ndt refuses one-se" in line
    # what the help says is what the families do
    assert callable(getattr(families.get("neds"), "validate_windows", None))
    assert not hasattr(families.get("ndt"), "validate_windows")


# --- 4. --select one-se on a family without per-window validation ----------------------------------

def test_one_se_on_an_ndt_run_is_refused_in_flag_words(ndt_run, corpus, tmp_path, capsys):
    """Said "... (no validate_windows); use select='lowest'" to a user who typed --select."""
    out = tmp_path / "ft"
    line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session", _session(corpus),
                                   "--out", str(out), "--select", "one-se", "--quiet"])
    assert line == ("spikefm: error: --select one-se needs per-window validation losses, which the 'ndt' family "
                    "does not compute (it has no validate_windows); use --select lowest (select='lowest' in Python)")
    line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session", _session(corpus),
                                   "--out", str(out), "--select", "one-se", "--strategy", "frozen", "--quiet"])
    assert line == ("spikefm: error: --select one-se (select='one-se' in Python) chooses among auto's candidates; "
                    "--strategy frozen trains one candidate: drop --select or use --strategy auto")
    assert not out.exists()


# --- 5. a bad model setting names its --set key -----------------------------------------------------

@pytest.mark.parametrize("family,override,want", [
    ("ar", "model.positions=foo", "model.positions must be one of plain, bin, got 'foo'"),
    ("ar", "model.dim=102", "model.dim (102) must be divisible by n_heads (4)"),
    ("ar", "model.dim=100", "the head width model.dim // model.n_heads = 25 must be even for rotary embeddings; "
                            "change model.dim or model.n_heads"),
    ("ndt", "model.dropout=1.5", "model.dropout must be a float in [0, 1), got 1.5"),
    ("ndt", "model.position=bogus", "model.position must be 'learned' or 'rotary', got 'bogus'"),
    ("neds", "model.norm_eps=0", "model.norm_eps must be > 0, got 0.0"),
    ("neds", "model.dim=63", "model.dim (63) must be divisible by n_heads"),
])
def test_a_bad_model_setting_is_named_by_its_set_key(corpus, tmp_path, capsys, family, override, want):
    """Said 'LlamaConfig.positions must be one of plain, bin' (the class, not the key typed)."""
    line = one_error_line(capsys, ["train", "--model", family, "--preset", "tiny", "--data", str(corpus),
                                   "--out", str(tmp_path / "r"), "--set", override, "--quiet"])
    assert line.startswith(f"spikefm: error: {want}"), line
    assert "Config" not in line
    assert not (tmp_path / "r").exists()


def test_a_bad_model_setting_in_a_run_description_names_its_key(ndt_run):
    """The same words when a config.json holds the bad value (config_from_dict)."""
    info = json.loads((ndt_run / "config.json").read_text())
    info["config"]["model"]["dropout"] = 2.0
    with pytest.raises(ValueError) as exc:
        families.run_config_from_dict(info["config"])
    assert str(exc.value) == "model.dropout must be a float in [0, 1), got 2.0"


# --- 6. model settings in a fine-tuning ------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["frozen", "auto", "scratch"])
def test_model_settings_in_a_finetuning_are_refused_up_front(ndt_run, corpus, tmp_path, capsys, strategy):
    """--set model.dim=128 trained, then failed loading the core: '... does not hold this model's
    core (missing [], unexpected [], shape mismatch ['in_proj.bias', ...])'."""
    out = tmp_path / "ft"
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session", _session(corpus),
                                   "--out", str(out), "--strategy", strategy, "--set", "model.dim=128",
                                   "--set", "optim.lr=1e-3", "--set", "model.n_layers=1", "--quiet"])
    assert line == (f"spikefm: error: --set model.dim=128 --set model.n_layers=1: the model settings of a "
                    f"fine-tuning come from the pretrained run {ndt_run} (its config.json) and cannot change (its "
                    "weights have that shape; only dropout may); drop the model.* settings, or pretrain a run with them (spikefm "
                    "train ... --set model.dim=128 --set model.n_layers=1)")
    assert snapshot(tmp_path) == before


def test_model_settings_are_refused_by_the_python_api_too(ndt_run, corpus, tmp_path):
    with pytest.raises(ValueError, match=r"^--set model.n_heads=1: the model settings of a fine-tuning come "
                                         r"from the pretrained run .* drop the model.\* setting, or pretrain a run "
                                         r"with it"):
        families.finetune(ndt_run, corpus, _session(corpus), tmp_path / "ft", strategy="frozen",
                          overrides=["model.dropout=0.1", "model.n_heads=1"])
    assert not (tmp_path / "ft").exists()


def test_loop_settings_the_finetuning_sets_itself_are_refused_naming_its_option(ndt_run, corpus, tmp_path, capsys):
    """--set train.steps=40 beat --steps 20 (train has it the other way round), and --set
    train.eval_every / train.ckpt_every did nothing: the fine-tuning sets them itself."""
    before = snapshot(tmp_path)
    line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session", _session(corpus),
                                    "--strategy", "frozen", "--out", str(tmp_path / "ft"), "--steps", "20",
                                    "--set", "train.steps=40", "--set", "train.ckpt_every=0", "--quiet"])
    assert line == ("spikefm: error: --set train.steps=40: a fine-tuning's train.steps comes from --steps (steps= "
                    "in Python); --set train.ckpt_every=0: a fine-tuning's train.ckpt_every comes from nothing: a "
                    "fine-tuning checkpoints at each validation; drop the --set")
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match=r"^--set train.eval_every=5: a fine-tuning's train.eval_every comes from "
                                         r"--eval-every \(eval_every=\); drop the --set$"):
        families.finetune(ndt_run, corpus, _session(corpus), tmp_path / "ft", strategy="frozen",
                          overrides=["train.eval_every=5"])
    assert not (tmp_path / "ft").exists()
    # --set data.freeze_core=false trained a --strategy frozen run whole (its record said frozen)
    line = one_error_line(capsys, ["finetune", str(ndt_run), "--data", str(corpus), "--session", _session(corpus),
                                    "--strategy", "frozen", "--out", str(tmp_path / "ft"), "--steps", "20",
                                    "--set", "data.freeze_core=false", "--set", "data.init_from=", "--quiet"])
    assert line == ("spikefm: error: --set data.freeze_core=false: a fine-tuning's data.freeze_core comes from "
                    "--strategy (frozen, full, unfreeze; strategy= in Python); --set data.init_from=: a fine-tuning's "
                    "data.init_from comes from the pretrained run it is given (and --strategy scratch: none); "
                    "drop the --set")
    assert snapshot(tmp_path) == before


def test_a_dropout_rate_may_change_in_a_finetuning(corpus, tmp_path):
    """A dropout rate shapes no weight: model.dropout stays allowed (the fine-tuned run records it)."""
    cfg = families.run_config("ndt", preset="tiny", corpus=str(corpus), overrides=[
        "train.steps=2", "train.batch_size=4", "train.device=cpu", "train.precision=fp32", "train.log_every=1",
        "data.align=", "data.window_bins=10"])
    families.train(cfg, tmp_path / "pre", progress=False)
    families.finetune(tmp_path / "pre", corpus, _session(corpus), tmp_path / "ft", strategy="frozen", steps=2,
                      eval_every=1, overrides=["model.dropout=0.3"])
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["config"]["model"]["dropout"] == 0.3
