"""``finetune --strategy auto``'s choice and its warning when pretraining did not help, on fake
candidates (no training): the choice is the lowest validation loss among the pretrained
candidates, never the single-session model, and a single-session model at or below it is said."""
from __future__ import annotations

import json
import types
import warnings

import pytest

import spikefm.train.finetune as ftmod


def _fake_candidates(monkeypatch, losses: dict[str, float]) -> None:
    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        return {"best_val_loss": losses[name], "best_step": 10, "stopped_at": 20, "out_dir": str(path)}

    monkeypatch.setattr(ftmod, "_one_strategy", one)


FAMILY = types.SimpleNamespace(name="fake", finetune_config=lambda *a, **k: None)


@pytest.mark.parametrize("scratch, warned", [(0.40, False), (0.30, True), (0.31, True)])
def test_auto_chooses_a_pretrained_candidate_and_says_when_the_single_session_model_is_as_good(
        monkeypatch, tmp_path, scratch, warned):
    losses = {"frozen": 0.33, "full": 0.35, "unfreeze": 0.31, "scratch": scratch}
    _fake_candidates(monkeypatch, losses)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "unfreeze"  # never scratch, even when it is best
    assert s["pretraining_gain"] == pytest.approx(scratch - 0.31)
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["pretraining_gain"] == pytest.approx(scratch - 0.31)
    said = [w for w in caught if "pretraining did not help" in str(w.message)]
    assert bool(said) == warned
    if warned:
        msg = str(said[0].message)
        assert f"{scratch:.4f}" in msg and "unfreeze, 0.3100" in msg and str(tmp_path / "ft" / "candidates" / "scratch") in msg


def _fake_segments(monkeypatch, losses: list[float]) -> None:
    """train_with_early_stopping over a fake loop: segment k ends at the requested step and
    validates to losses[k]; the weights are one constant tensor."""
    import torch

    import spikefm.train.loop as loop

    def train(cfg, out_dir, family, *, resume, stop_after, progress):
        return {"step": stop_after if stop_after is not None else cfg.train.steps}

    validated = iter(losses)
    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(ftmod, "_current_state", lambda out_dir, finished: {"w": torch.zeros(1)})
    monkeypatch.setattr(ftmod, "_validation_loss", lambda family, cfg, state: next(validated))


def _cfg(steps: int):
    import dataclasses

    from spikefm.train.config import RunConfig, TrainConfig

    @dataclasses.dataclass
    class Empty:
        pass

    return RunConfig(family="fake", model=Empty(), data=Empty(), train=TrainConfig(steps=steps))


@pytest.mark.parametrize("losses, best_step, flagged", [
    ([1.0, 1.2, 1.3, 1.4], 5, True),     # lowest first, every later one higher: said
    ([1.2, 1.0, 1.3, 1.4, 1.5], 10, False),
    ([1.0, 0.9, 0.8, 0.7], 20, False),   # still falling at the end: the other warning
])
def test_early_stopping_flags_a_best_at_the_first_evaluation(monkeypatch, tmp_path, losses, best_step, flagged):
    _fake_segments(monkeypatch, losses)
    family = types.SimpleNamespace(name="fake", validate=lambda *a: None)
    s = ftmod.train_with_early_stopping(_cfg(20), tmp_path / "run", family, eval_every=5, patience=3)
    assert s["best_step"] == best_step and s["best_at_first_evaluation"] is flagged
    assert [h["step"] for h in s["history"]] == [5 * (i + 1) for i in range(len(s["history"]))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ftmod._say_best_at_first(tmp_path / "run", "frozen", s)
    said = [str(w.message) for w in caught if "first evaluation" in str(w.message)]
    assert bool(said) == flagged
    if flagged:
        assert "step 5" in said[0] and "--eval-every (now 5)" in said[0]


def test_auto_says_when_the_kept_candidate_was_best_at_its_first_evaluation(monkeypatch, tmp_path):
    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        return {"best_val_loss": {"frozen": 0.3, "full": 0.4, "unfreeze": 0.5, "scratch": 0.6}[name],
                "best_step": 250, "stopped_at": 1000, "out_dir": str(path), "eval_every": 250,
                "best_at_first_evaluation": name != "full"}

    monkeypatch.setattr(ftmod, "_one_strategy", one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    said = [str(w.message) for w in caught if "first evaluation" in str(w.message)]
    assert len(said) == 1 and "the frozen run's" in said[0] and "step 250" in said[0]


def test_one_se_rule_keeps_the_most_constrained_candidate_the_windows_cannot_tell_apart():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.normal(8.0, 1.0, size=10)
    # full lowest by 0.05, with paired differences spread far wider: frozen is kept
    noisy = {"frozen": base + 0.05 + rng.normal(0, 0.5, 10), "unfreeze": base + 0.2, "full": base.copy()}
    noisy["frozen"] += 0.05 - (noisy["frozen"] - base).mean()  # exact mean gap 0.05
    chosen, info = ftmod.one_se_choice(noisy)
    d = noisy["frozen"] - noisy["full"]
    se = d.std(ddof=1) / np.sqrt(10)  # computed here, independently
    assert 0.05 <= se and chosen == "frozen" and info["lowest"] == "full"
    assert info["se_of_difference"]["frozen"] == pytest.approx(se) and info["num_windows"] == 10
    # the same mean gap on every window (s.e. 0): the lowest is kept
    tight = {"frozen": base + 0.05, "unfreeze": base + 0.2, "full": base.copy()}
    assert ftmod.one_se_choice(tight)[0] == "full"
    # frozen far off, unfreeze within its s.e.: unfreeze (the order is frozen, unfreeze, full)
    mid = {"frozen": base + 3.0, "unfreeze": noisy["frozen"], "full": base.copy()}
    assert ftmod.one_se_choice(mid)[0] == "unfreeze"
    with pytest.raises(ValueError, match="same length"):
        ftmod.one_se_choice({"frozen": base, "unfreeze": base[:5], "full": base})
    with pytest.raises(ValueError, match="not finite"):
        ftmod.one_se_choice({"frozen": base, "unfreeze": base, "full": np.full(10, np.nan)})
    with pytest.raises(ValueError, match="no validation windows.*select='lowest'"):
        ftmod.one_se_choice({"frozen": [], "unfreeze": [], "full": []})


def test_a_strategy_name_is_checked_with_the_auto_options():
    with pytest.raises(ValueError, match="strategy must be one of auto, frozen.*got 'fulll'"):
        ftmod.check_auto_options("fulll")
    ftmod.check_auto_options("full")  # a known strategy with no auto-only option passes


def test_auto_with_one_se_keeps_frozen_within_noise_and_records_how(monkeypatch, tmp_path):
    import numpy as np

    _fake_candidates(monkeypatch, {"frozen": 8.05, "full": 8.0, "unfreeze": 8.2, "scratch": 9.0})
    per_window = {"frozen": np.array([7.0, 9.1, 8.0, 8.1]), "full": np.array([8.0, 8.0, 8.0, 8.0]),
                  "unfreeze": np.full(4, 8.2)}
    monkeypatch.setattr(ftmod, "window_losses", lambda family, run: per_window[run.name])
    fam = types.SimpleNamespace(name="fake", finetune_config=lambda *a, **k: None, validate_windows=None,
                                finetune_select="one-se")
    s = ftmod.finetune_strategies(fam, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "frozen" and s["selection"]["rule"] == "one-se"
    assert s["selection"]["lowest"] == "full" and s["selection"]["lowest_per_window"] == "full"
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert saved["strategy"] == "frozen" and saved["pretraining_gain"] == pytest.approx(9.0 - 8.05)
    # the same candidates under "lowest" (the default of a family without finetune_select)
    s2 = ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft2")
    assert s2["strategy"] == "full" and s2["selection"] == {"rule": "lowest", "lowest": "full"}
    with pytest.raises(ValueError, match="validate_windows"):
        ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft3",
                                  select="one-se")
    with pytest.raises(ValueError, match="chooses among auto's candidates"):
        ftmod.finetune_strategies(fam, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft4",
                                  strategy="frozen", select="one-se")
    with pytest.raises(ValueError, match="select must be one of"):
        ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft3",
                                  select="best")


def test_average_weights_is_the_elementwise_mean_and_refuses_mismatches():
    import torch

    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.float32), "n": torch.tensor([3])}
    b = {"w": torch.tensor([3.0, 6.0], dtype=torch.float32), "n": torch.tensor([3])}
    c = {"w": torch.tensor([2.0, 1.0], dtype=torch.float32), "n": torch.tensor([3])}
    avg = ftmod.average_weights([a, b, c])
    assert torch.allclose(avg["w"], torch.tensor([2.0, 3.0])) and avg["w"].dtype == torch.float32
    assert torch.equal(avg["n"], torch.tensor([3]))
    with pytest.raises(ValueError, match="different parameter names"):
        ftmod.average_weights([a, {"w": a["w"], "m": a["n"]}])
    with pytest.raises(ValueError, match=r"different shapes: w is \(2,\) in model 0 and \(3,\)"):
        ftmod.average_weights([a, {"w": torch.zeros(3), "n": a["n"]}])
    with pytest.raises(ValueError, match="disagree"):
        ftmod.average_weights([a, {"w": a["w"], "n": torch.tensor([4])}])
    with pytest.raises(ValueError, match="at least one"):
        ftmod.average_weights([])


def test_greedy_soup_adds_a_model_only_where_the_average_validates_lower():
    import torch

    # validation loss = squared distance to a target; the models sit around it
    target = torch.tensor([0.0, 0.0])
    states = {"a": {"w": torch.tensor([1.0, 0.0])}, "b": {"w": torch.tensor([-1.2, 0.0])},
              "c": {"w": torch.tensor([5.0, 5.0])}}

    def loss(state):
        return float(((state["w"] - target) ** 2).sum())

    losses = {n: loss(s) for n, s in states.items()}
    soup = ftmod.greedy_soup(states, losses, loss)
    # a first (1.0); a+b at (-0.1, 0) -> 0.01: kept; a+b+c at (1.6, 1.67) -> worse: not kept
    assert soup["ingredients"] == ["a", "b"]
    assert soup["val_loss"] == pytest.approx(0.01)
    assert torch.allclose(soup["state"]["w"], torch.tensor([-0.1, 0.0]))
    assert [t["kept"] for t in soup["tried"]] == [True, False]
    # nothing helps: the lowest model alone, its own weights
    far = {"a": states["a"], "c": states["c"]}
    alone = ftmod.greedy_soup(far, {n: losses[n] for n in far}, loss)
    assert alone["ingredients"] == ["a"] and alone["state"] is states["a"]


def _fake_trained_candidates(monkeypatch, weights: dict[str, float], losses: dict[str, float]):
    """Candidates that write real one-tensor weights and a config; validation of any weights
    is their distance to 0.5."""
    import torch
    from safetensors.torch import save_file

    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        save_file({"w": torch.full((2,), weights[name])}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"family": "fake", "name": name}))
        (path / "early_stopping.json").write_text(json.dumps(
            {"best_val_loss": losses[name], "best_step": 10, "history": [{"step": 10, "val_loss": losses[name]}]}))
        return {"best_val_loss": losses[name], "best_step": 10, "stopped_at": 20, "out_dir": str(path),
                "eval_every": 10}

    monkeypatch.setattr(ftmod, "_one_strategy", one)
    monkeypatch.setattr("spikefm.train.runinfo.load_run_config", lambda path, **kw: path.name)
    monkeypatch.setattr(ftmod, "_validation_loss",
                        lambda family, cfg, state: abs(float(state["w"][0]) - 0.5))


SOUP_FAMILY = types.SimpleNamespace(name="fake", finetune_config=lambda *a, **k: None, model_config_cls=None,
                                    data_config_cls=None, finetune_soup=True)


def test_auto_with_soup_keeps_the_average_when_it_validates_lowest(monkeypatch, tmp_path):
    from safetensors.torch import load_file

    # frozen at 0.0 (loss 0.5), unfreeze at 1.2 (0.7), full at 3.0 (2.5): frozen+unfreeze
    # average 0.6 -> 0.1 (kept), adding full -> 1.4 -> 0.9 (not kept)
    w = {"frozen": 0.0, "unfreeze": 1.2, "full": 3.0, "scratch": 9.0}
    losses = {n: abs(v - 0.5) for n, v in w.items()}
    _fake_trained_candidates(monkeypatch, w, losses)
    s = ftmod.finetune_strategies(SOUP_FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "soup" and s["best_val_loss"] == pytest.approx(0.1)
    assert s["soup"]["ingredients"] == ["frozen", "unfreeze"]
    assert set(s["candidates"]) == {"frozen", "unfreeze", "full", "soup"}
    kept = load_file(str(tmp_path / "ft" / "model.safetensors"))["w"]
    assert kept.tolist() == pytest.approx([0.6, 0.6])
    # the soup's folder is a run folder: the lowest candidate's config beside the averaged weights
    assert json.loads((tmp_path / "ft" / "candidates" / "soup" / "config.json").read_text())["name"] == "frozen"
    saved = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert saved["strategy"] == "soup" and saved["pretraining_gain"] == pytest.approx(8.5 - 0.1)
    # the kept run's early_stopping.json is the average's (its own loss), not frozen's, whose
    # history it keeps; no half-written sibling folder is left
    for folder in (tmp_path / "ft", tmp_path / "ft" / "candidates" / "soup"):
        es = json.loads((folder / "early_stopping.json").read_text())
        assert es["best_val_loss"] == pytest.approx(0.1) and es["weights_average_of"] == ["frozen", "unfreeze"]
        assert es["history_of"] == "frozen" and es["history"] == [{"step": 10, "val_loss": 0.5}]
        assert es["model_path"] == str(tmp_path / "ft" / "candidates" / "soup" / "model.safetensors")
    assert sorted(p.name for p in (tmp_path / "ft" / "candidates").iterdir()) == [
        "frozen", "full", "scratch", "soup", "unfreeze"]
    # off (the default of a family without finetune_soup, or --no-soup): the lowest candidate
    off = ftmod.finetune_strategies(SOUP_FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft2",
                                    soup=False)
    assert off["strategy"] == "frozen" and "soup" not in off and "soup" not in off["candidates"]
    with pytest.raises(ValueError, match="soup averages auto's candidates"):
        ftmod.finetune_strategies(SOUP_FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft3",
                                  strategy="frozen", soup=True)


def test_auto_with_soup_keeps_a_candidate_when_no_average_validates_lower(monkeypatch, tmp_path):
    w = {"frozen": 0.5, "unfreeze": 2.0, "full": 3.0, "scratch": 9.0}
    _fake_trained_candidates(monkeypatch, w, {n: abs(v - 0.5) for n, v in w.items()})
    s = ftmod.finetune_strategies(SOUP_FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "frozen" and s["soup"]["ingredients"] == ["frozen"]
    assert "soup" not in s["candidates"] and not (tmp_path / "ft" / "candidates" / "soup").exists()


def test_a_kept_soup_carries_its_base_candidates_first_evaluation_flag(monkeypatch, tmp_path):
    """The soup's folder carries its lowest candidate's history (early_stopping.json), but its
    summary dropped best_at_first_evaluation, so finetune.json lacked it and no warning came."""
    import torch

    results = {n: {"best_val_loss": v, "best_step": 10, "stopped_at": 40, "eval_every": 10,
                   "still_improving": False, "best_at_first_evaluation": n == "frozen"}
               for n, v in (("frozen", 0.30), ("full", 0.40), ("unfreeze", 0.50))}
    monkeypatch.setattr("spikefm.train.runinfo.load_run_config", lambda *a, **k: None)
    monkeypatch.setattr("safetensors.torch.load_file", lambda path: {"w": torch.zeros(1)})
    monkeypatch.setattr(ftmod, "greedy_soup", lambda states, losses, f: {
        "ingredients": ["frozen", "full"], "val_loss": 0.25, "tried": [], "state": {"w": torch.zeros(1)}})
    monkeypatch.setattr(ftmod, "write_averaged_run", lambda *a, **k: (tmp_path / "soup").mkdir())
    family = types.SimpleNamespace(model_config_cls=None, data_config_cls=None)
    summary, info = ftmod._soup_candidate(family, tmp_path, results)
    assert summary["best_at_first_evaluation"] is True and summary["still_improving"] is False
    assert json.loads((tmp_path / "soup" / "soup.json").read_text())["config_and_history_of"] == "frozen"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ftmod._say_best_at_first(tmp_path, "soup", summary)
    assert any("the soup run's lowest validation loss came at its first evaluation" in str(w.message)
               for w in caught)


def test_unfreeze_steps_are_shown_after_its_frozen_stage(monkeypatch, tmp_path, capsys):
    """unfreeze's best_step counts its second stage only (it starts from the frozen stage's best
    weights): the candidates table showed 'unfreeze ... 50' beside frozen's 100 for --steps 100, as
    if both counted from step 0."""
    from spikefm import families
    from spikefm.cli import main

    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        out = {"best_val_loss": {"frozen": 0.33, "full": 0.35, "unfreeze": 0.31, "scratch": 0.4}[name],
               "best_step": 20, "stopped_at": 50, "out_dir": str(path)}
        if name == "unfreeze":
            out["stage1"] = {"best_step": 30, "best_val_loss": 0.32, "stopped_at": 50}
        return out

    monkeypatch.setattr(ftmod, "_one_strategy", one)
    s = ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["candidates"]["unfreeze"]["stage1"]["best_step"] == 30 and "stage1" not in s["candidates"]["frozen"]
    assert ftmod.unfreeze_best_step(s["candidates"]["unfreeze"]) == "30+20"
    assert ftmod.unfreeze_best_step(s["candidates"]["frozen"]) == "20"
    monkeypatch.setattr(families, "finetune", lambda *a, **k: s)
    assert main(["finetune", "pre", "--data", "corpus", "--session", "S", "--out", str(tmp_path / "ft2")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["frozen"], ["unfreeze"])}
    assert rows["unfreeze"][2] == "30+20" and rows["frozen"][2] == "20"
    assert "(unfreeze's best step: the frozen stage's best step + the step after unfreezing" in out
    assert ("at step 20 (stopped at step 50 of the unfrozen stage, after the frozen stage's best step 30, strategy "
            "unfreeze)") in out


def test_the_still_falling_warning_says_what_its_steps_count(monkeypatch, tmp_path):
    """unfreeze's second stage warned 'still falling at the last step (50)' for --steps 100."""
    _fake_segments(monkeypatch, [1.0, 0.9, 0.8, 0.7])
    family = types.SimpleNamespace(name="fake", validate=lambda *a: None)
    with pytest.warns(ftmod.FinetuneBudget, match=r"still falling at the last step \(20 of the unfrozen stage, "
                                                  r"after the frozen stage's best step 30\)"):
        ftmod.train_with_early_stopping(_cfg(20), tmp_path / "run", family, eval_every=5, patience=3,
                                        stage=ftmod.unfrozen_steps_text({"stage1": {"best_step": 30}}))


def test_a_study_s_strategy_line_counts_unfreeze_s_steps_after_its_frozen_stage():
    from spikefm.experiments.transfer import strategy_line

    stage1 = {"best_step": 30, "best_val_loss": 0.36, "stopped_at": 50}
    assert strategy_line({"strategy": "unfreeze", "best_val_loss": 0.3515, "best_step": 20, "stage1": stage1}) == (
        "fine-tuning strategy unfreeze: best val loss 0.3515 at step 20 of the unfrozen stage, after the frozen "
        "stage's best step 30")
    assert strategy_line({"strategy": "frozen", "best_val_loss": 0.3, "best_step": 90}) == \
        "fine-tuning strategy frozen: best val loss 0.3000 at step 90"
    assert strategy_line({"strategy": "soup", "best_val_loss": 0.3, "best_step": None}).endswith(
        "(an average of candidates: no step)")


def test_the_best_at_first_warning_counts_unfreeze_s_steps_after_its_frozen_stage(tmp_path):
    """It said '(step 10; ...) so better weights may lie before it, which was never evaluated' of
    unfreeze, whose step 10 follows the frozen stage's best weights (evaluated)."""
    summary = {"best_at_first_evaluation": True, "best_step": 10, "eval_every": 10,
               "stage1": {"best_step": 30, "best_val_loss": 0.3, "stopped_at": 50}}
    with pytest.warns(ftmod.FinetuneBudget, match=r"first evaluation \(step 10 of the unfrozen stage, after the "
                                                  r"frozen stage's best step 30; no later one was lower\), so better "
                                                  r"weights may lie in the unfrozen stage's first 10 steps"):
        ftmod._say_best_at_first(tmp_path, "unfreeze", summary)
    del summary["stage1"]
    with pytest.warns(ftmod.FinetuneBudget, match=r"first evaluation \(step 10; no later one was lower\), so better "
                                                  r"weights may lie before it, which was never evaluated"):
        ftmod._say_best_at_first(tmp_path, "frozen", summary)


@pytest.mark.parametrize("stage1_loss, warned", [(0.30, True), (0.31, False), (0.32, False)])
def test_a_kept_unfreeze_whose_frozen_stage_was_better_is_warned(monkeypatch, tmp_path, stage1_loss, warned):
    """The kept unfreeze weights (0.31) are its unfrozen stage's best; a frozen stage that reached
    a lower validation loss (its weights gone) is said, with both losses."""
    def one(family, name, run_dir, corpus, session_id, path, **kw):
        path.mkdir(parents=True)
        out = {"best_val_loss": {"frozen": 0.33, "full": 0.35, "unfreeze": 0.31, "scratch": 0.40}[name],
               "best_step": 10, "stopped_at": 20, "out_dir": str(path)}
        if name == "unfreeze":
            out["stage1"] = {"best_step": 40, "best_val_loss": stage1_loss, "stopped_at": 50}
        return out

    monkeypatch.setattr(ftmod, "_one_strategy", one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = ftmod.finetune_strategies(FAMILY, tmp_path / "pre", tmp_path / "corpus", "S", tmp_path / "ft")
    assert s["strategy"] == "unfreeze"
    said = [str(w.message) for w in caught if "unfreezing did not help" in str(w.message)]
    assert len(said) == warned
    if warned:
        assert "0.3100, step 10 of the unfrozen stage, after the frozen stage's best step 40" in said[0]
        assert "frozen stage's best (0.3000, step 40)" in said[0] and "--strategy frozen" in said[0]
