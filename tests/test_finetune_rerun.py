"""Running ``spikefm finetune`` into a folder that already holds a fine-tuning: the same command
again changes nothing; another budget or strategy is refused in fine-tuning's words, and nothing
is overwritten (a finished run's records were rewritten with the new arguments, its history
cut, after a "nothing to do" message)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from spikefm import families
from spikefm.cli import main

COMMON = ["--set", "train.device=cpu", "--set", "train.precision=fp32", "--set", "train.ckpt_every=0"]


@pytest.fixture()
def pretrained(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    families.register("toy", "_toy_family:ToyFamily")
    run = tmp_path / "run"
    assert main(["train", "--model", "toy", "--data", str(tmp_path), "--out", str(run), "--steps", "30",
                 "--set", "optim.lr=3e-3", *COMMON, "--quiet"]) == 0
    return run


def _ctrl_c_at(real, name: str, *, path_arg: int = 0, seen: list | None = None):
    """``real`` (a function given a path as its positional argument ``path_arg``), except that it
    raises KeyboardInterrupt, as Ctrl-C would, when that path's name is ``name``; ``seen``
    collects the name of every call's path."""
    def wrapper(*a, **k):
        here = Path(a[path_arg]).name
        if seen is not None:
            seen.append(here)
        if here == name:
            raise KeyboardInterrupt
        return real(*a, **k)
    return wrapper


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_finished_finetune_run_again_is_left_as_it_is(pretrained, tmp_path, capsys):
    ft = tmp_path / "ft"
    cmd = ["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
           "--freeze-core", "--steps", "30", "--eval-every", "10", "--patience", "5", "--quiet"]
    assert main(cmd) == 0
    before = _files(ft)
    capsys.readouterr()
    assert main(cmd) == 0  # the same command: nothing to do, nothing rewritten
    err = capsys.readouterr().err
    assert f"{ft} is already finished (stopped at step 30 of at most 30" in err and "nothing to do" in err
    assert _files(ft) == before
    # another budget: refused in one line, the records untouched
    assert main([*cmd[:-7], "--steps", "10", "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (f"spikefm: error: {ft} already holds a finished fine-tuning (at most 30 steps, validated "
                    "every 10, patience 5; it stopped at step 30); nothing is overwritten: use a new --out for "
                    "at most 10 steps, validated every 250, patience 3")
    assert _files(ft) == before


def test_another_strategy_into_a_fine_tunings_folder_is_refused_as_such(pretrained, tmp_path, capsys):
    ft = tmp_path / "ft"
    assert main(["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
                 "--strategy", "full", "--steps", "10", "--eval-every", "5", "--quiet"]) == 0
    before = _files(ft)
    capsys.readouterr()
    assert main(["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
                 "--freeze-core", "--steps", "10", "--eval-every", "5", "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"spikefm: error: {ft} holds a fine-tuning made with other settings (data.freeze_core")
    assert line.endswith("nothing is overwritten: use a new --out, or run the command that made it again to "
                         "continue it")
    assert _files(ft) == before


def test_a_finished_unfreeze_run_again_is_left_as_it_is(pretrained, tmp_path, capsys):
    """It was refused ('made with other settings (data.init_from ...)') after its stage 1 had
    been trained again, leaving the stage-1 folder behind."""
    ft = tmp_path / "ft"
    cmd = ["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
           "--strategy", "unfreeze", "--steps", "20", "--eval-every", "5", "--quiet"]
    assert main(cmd) == 0
    before = _files(ft)
    capsys.readouterr()
    assert main(cmd) == 0
    assert "is already finished" in capsys.readouterr().err
    assert _files(ft) == before and not list(tmp_path.glob(".ft.stage1*"))


def test_auto_run_again_after_an_interruption_keeps_its_finished_candidates(pretrained, tmp_path, capsys):
    """``auto`` deleted and retrained every candidate when run again (the Ctrl-C line says to run
    the same command again); its finished candidates are kept now and the choice is the same."""
    import json

    ft = tmp_path / "ft"
    cmd = ["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
           "--steps", "20", "--eval-every", "5", "--quiet"]
    assert main(cmd) == 0
    first = json.loads((ft / "finetune.json").read_text())
    candidates = {n: _files(ft / "candidates" / n) for n in ("frozen", "full", "unfreeze", "scratch")}
    # as if interrupted after the candidates, before the choice was written
    for p in ft.iterdir():
        if p.is_file() and not p.name.startswith("."):
            p.unlink()
    capsys.readouterr()
    assert main(cmd) == 0
    assert capsys.readouterr().err.count("is already finished") == 4
    assert {n: _files(ft / "candidates" / n) for n in candidates} == candidates
    again = json.loads((ft / "finetune.json").read_text())
    assert again["strategy"] == first["strategy"] and again["best_val_loss"] == first["best_val_loss"]


def test_an_interrupted_finetune_continues_its_early_stopping_exactly(pretrained, tmp_path, capsys, monkeypatch):
    """The same command after an interruption restarted early stopping from nothing: the earlier
    validations were lost, the first new one overwrote the best weights, patience began again, and
    the result differed from an uninterrupted run. Now it is the uninterrupted run's, and another
    --steps into the unfinished folder is refused."""
    from safetensors.torch import load_file

    from spikefm.train import finetune as ft_mod

    def cmd(out, *extra):
        return ["finetune", str(pretrained), "--data", str(tmp_path), "--session", "s1", "--out", str(out),
                "--strategy", "full", "--steps", "40", "--eval-every", "5", "--patience", "3", *extra, "--quiet"]

    assert main(cmd(tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "early_stopping.json").read_text())
    assert len(whole["history"]) >= 4  # enough validations for the interruption to land in the middle

    real, calls = ft_mod._validation_loss, []

    def stop_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ft_mod, "_validation_loss", stop_at_the_third)
    assert main(cmd(tmp_path / "cut")) == 130  # Ctrl-C after the third segment's checkpoint
    monkeypatch.setattr(ft_mod, "_validation_loss", real)
    assert (tmp_path / "cut" / ft_mod.PROGRESS_NAME).is_file()
    capsys.readouterr()
    assert main(cmd(tmp_path / "cut", "--steps", "60")) == 2  # another budget (the last --steps counts): refused
    assert "holds a fine-tuning made with other settings (train.steps differ: another --steps?)" in \
        capsys.readouterr().err
    assert main(cmd(tmp_path / "cut")) == 0
    cut = json.loads((tmp_path / "cut" / "early_stopping.json").read_text())
    for key in ("history", "best_step", "best_val_loss", "stopped_at", "best_at_first_evaluation"):
        assert cut[key] == whole[key], key
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / ft_mod.PROGRESS_NAME).exists()


@pytest.mark.parametrize("patience", [5, 1])  # ended at the budget, or by early stopping
def test_a_finetune_stopped_between_its_best_weights_and_its_record_finishes_as_it_would_have(
        pretrained, tmp_path, monkeypatch, patience):
    """Killed after the best weights became model.safetensors but before early_stopping.json was
    written, the same command started over from the last checkpoint and kept its weights (not the
    best), with a one-entry history."""
    from spikefm.train import finetune as ft_module

    args = dict(strategy="frozen", steps=30, eval_every=10, patience=patience)
    families.finetune(pretrained, tmp_path, "s1", tmp_path / "whole", **args)
    real = ft_module.write_json_atomic
    monkeypatch.setattr(ft_module, "write_json_atomic", _ctrl_c_at(real, "early_stopping.json"))
    with pytest.raises(KeyboardInterrupt):
        families.finetune(pretrained, tmp_path, "s1", tmp_path / "cut", **args)
    monkeypatch.setattr(ft_module, "write_json_atomic", real)
    assert not (tmp_path / "cut" / "early_stopping.json").exists()
    families.finetune(pretrained, tmp_path, "s1", tmp_path / "cut", **args)
    whole, cut = (json.loads((tmp_path / d / "early_stopping.json").read_text()) for d in ("whole", "cut"))
    assert cut["history"] == whole["history"] and cut["best_step"] == whole["best_step"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_one_strategy_into_a_finished_auto_folder_is_refused(pretrained, tmp_path, capsys):
    """--strategy frozen into a finished auto folder that chose frozen was 'already finished' and
    rewrote finetune.json without its candidates, selection and pretraining gain."""
    ft = tmp_path / "ft"
    families.finetune(pretrained, tmp_path, "s1", ft, strategy="auto", steps=20, eval_every=10, patience=2)
    before = _files(ft)
    with pytest.raises(ValueError, match=r"holds a --strategy auto fine-tuning \(candidates/\); --strategy frozen "
                                         r"would replace its record; nothing was written"):
        families.finetune(pretrained, tmp_path, "s1", ft, strategy="frozen", steps=20, eval_every=10, patience=2)
    assert _files(ft) == before and "candidates" in json.loads((ft / "finetune.json").read_text())


def test_a_rerun_removes_the_temporaries_a_killed_finetune_left(pretrained, tmp_path):
    """After kill -9, .best_model.safetensors.tmp-PID (the size of the model) and the records'
    temporaries stayed in the fine-tuning folder for good."""
    args = dict(strategy="frozen", steps=20, eval_every=10, patience=2)
    ft = tmp_path / "ft"
    families.finetune(pretrained, tmp_path, "s1", ft, **args)
    left = [ft / f".{n}.tmp-99999999" for n in ("best_model.safetensors", "early_stopping_progress.json",
                                                 "early_stopping.json", "finetune.json")]
    for p in left:
        p.write_bytes(b"partial")
    families.finetune(pretrained, tmp_path, "s1", ft, **args)  # the same command: finished, nothing to do
    assert not any(p.exists() for p in left)


def test_an_unfreeze_stopped_anywhere_ends_as_an_uninterrupted_one(pretrained, tmp_path, monkeypatch, capsys):
    """Stopped between rewriting its provenance and writing its record, every rerun refused the
    folder ('made with other settings (data.init_from ...)'); stopped in stage 2, a rerun deleted
    the finished frozen stage and trained it again."""
    from spikefm.train import finetune as ft_module
    from spikefm.train import loop

    # train.eval_every / ckpt_every as a family's defaults set them (the fine-tuning records 0s): the
    # frozen stage must still be recognised as the same
    import dataclasses

    from _toy_family import ToyFamily

    real_config = ToyFamily.finetune_config

    def with_loop_defaults(self, *a, **k):
        cfg = real_config(self, *a, **k)
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=7, ckpt_every=9))

    monkeypatch.setattr(ToyFamily, "finetune_config", with_loop_defaults)
    args = dict(strategy="unfreeze", steps=20, eval_every=5, patience=3)
    families.finetune(pretrained, tmp_path, "s1", tmp_path / "whole", **args)
    want = json.loads((tmp_path / "whole" / "early_stopping.json").read_text())

    # 1. stopped after the record, before the provenance and the stage-1 folder were dealt with
    real_finish = ft_module._finish_unfreeze

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_module, "_finish_unfreeze", stop)
    with pytest.raises(KeyboardInterrupt):
        families.finetune(pretrained, tmp_path, "s1", tmp_path / "a", **args)
    monkeypatch.setattr(ft_module, "_finish_unfreeze", real_finish)
    assert (tmp_path / ".a.stage1").is_dir()
    families.finetune(pretrained, tmp_path, "s1", tmp_path / "a", **args)
    assert not (tmp_path / ".a.stage1").exists()
    info = json.loads((tmp_path / "a" / "config.json").read_text())
    assert info["config"]["data"]["init_from"] == str(pretrained.resolve()) and "finetune_stage1" in info

    # 2. stopped in stage 2: the finished frozen stage is reused, not trained again
    real_train = loop.train
    trained = []
    monkeypatch.setattr(loop, "train", _ctrl_c_at(real_train, "b", path_arg=1, seen=trained))
    with pytest.raises(KeyboardInterrupt):
        families.finetune(pretrained, tmp_path, "s1", tmp_path / "b", **args)
    monkeypatch.setattr(loop, "train", real_train)
    assert ".b.stage1" in trained
    trained.clear()
    monkeypatch.setattr(loop, "train", lambda cfg, out_dir, *a, **k: trained.append(Path(out_dir).name)
                        or real_train(cfg, out_dir, *a, **k))
    capsys.readouterr()
    families.finetune(pretrained, tmp_path, "s1", tmp_path / "b", **args)
    assert ".b.stage1" not in trained and "b" in trained
    # its hidden frozen stage, reused, is no 'already finished ... nothing to do' (training went on)
    assert "nothing to do" not in capsys.readouterr().err
    for name in ("a", "b"):
        got = json.loads((tmp_path / name / "early_stopping.json").read_text())
        assert got["history"] == want["history"] and got["stage1"] == want["stage1"], name
        assert (tmp_path / name / "model.safetensors").read_bytes() == \
            (tmp_path / "whole" / "model.safetensors").read_bytes(), name


def test_a_one_strategy_finetune_holds_its_folder_for_its_whole_length(pretrained, tmp_path, monkeypatch):
    """The training loop locks the folder per segment only, so a second fine-tuning into the same
    folder could start between two segments (while the first validated or wrote its best weights)
    and interleave its records with the first's."""
    from spikefm.fileio import folder_lock
    from spikefm.train import finetune as ft_mod

    ft = tmp_path / "ft"
    args = dict(strategy="frozen", steps=20, eval_every=10, patience=2)
    seen = []
    real = ft_mod._validation_loss

    def validating(*a, **k):  # between two segments: the loop's own lock is released here
        with pytest.raises(ValueError, match=rf"^{ft}: the fine-tuning run is in use by another process \(PID "):
            with folder_lock(ft, what="fine-tuning run", name=ft_mod.FINETUNE_LOCK_NAME):
                pass
        seen.append(True)
        return real(*a, **k)

    monkeypatch.setattr(ft_mod, "_validation_loss", validating)
    families.finetune(pretrained, tmp_path, "s1", ft, **args)
    assert len(seen) == 2
    # and a second process finds it held: refused in one line, the folder it would make not left behind
    monkeypatch.setattr(ft_mod, "_validation_loss", real)
    other = tmp_path / "other"
    other.mkdir()
    with folder_lock(other, what="fine-tuning run", name=ft_mod.FINETUNE_LOCK_NAME):
        with pytest.raises(ValueError, match=r"the fine-tuning run is in use by another process"):
            families.finetune(pretrained, tmp_path, "s1", other, **args)
    assert sorted(p.name for p in other.iterdir()) == [ft_mod.FINETUNE_LOCK_NAME]  # its folder, not made here
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="steps"):
        families.finetune(pretrained, tmp_path, "s1", fresh, **{**args, "steps": 0})
    assert not fresh.exists()


def test_a_fine_tuning_without_its_weights_is_not_sent_to_train_resume(pretrained, tmp_path):
    """eval of a fine-tuning folder whose model.safetensors is missing said 'resume it with
    spikefm train --resume', which retrained it to its last step (not its best) under the old
    finetune.json, with no word of it."""
    ft = tmp_path / "ft"
    families.finetune(pretrained, tmp_path, "s1", ft, strategy="frozen", steps=20, eval_every=10, patience=2)
    (ft / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"^{ft / 'model.safetensors'} not found; {ft} is a fine-tuning "
                                         r"\(finetune.json\) that has not finished or lost its weights: run its "
                                         r"spikefm finetune command again"):
        families.load_model(ft)
    with pytest.raises(ValueError, match=r"resume it with spikefm train --resume"):  # a training run: as before
        (pretrained / "model.safetensors").rename(tmp_path / "kept.safetensors")
        families.load_model(pretrained)
    (tmp_path / "kept.safetensors").rename(pretrained / "model.safetensors")
