"""The family registry: a new family reaches every command through one registration line.

The toy family of tests/_toy_family.py lives outside spikefm; registering it (one line, nothing
edited in spikefm) must be enough to train, fine-tune and evaluate it with the `spikefm` command.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from spikefm import families
from spikefm.cli import main

PACKAGE = Path(families.__file__).resolve().parents[1]


@pytest.fixture()
def toy_registered():
    # The one registration line (importing _toy_family elsewhere registers the same class).
    families.register("toy", "_toy_family:ToyFamily")


def test_cli_names_no_family():
    text = (PACKAGE / "cli.py").read_text()
    for name in families.FAMILIES:
        assert f'"{name}"' not in text and f"'{name}'" not in text, name
        assert f"families.{name}" not in text, name


def test_registry_lists_and_rejects():
    assert {"ar", "ndt"} <= set(families.names())
    with pytest.raises(ValueError, match="unknown model family 'nope'; registered families: ar, ndt"):
        families.get("nope")
    with pytest.raises(ValueError, match="family name must be a non-empty word"):
        families.register("bad name", "x:y")
    for name, default in (("ar", "tiny-bin-prefix"), ("ndt", "tiny")):
        fam = families.get(name)
        assert fam.name == name and fam.presets()[0] == "tiny"
        # Without --preset a family runs its default preset (AR: the layout that wins on held-out
        # sessions), else its smallest.
        assert families.default_preset(name) == default and default in fam.presets()
        assert families.run_config(name).model == fam.preset(default)
        assert families.run_config(name, preset="tiny").model == fam.preset("tiny")


def test_ar_cpu_presets_default_to_the_measured_cpu_recipe_and_flags_win():
    # The tiny presets get the recipe measured on held-out sessions (README token budgets); the
    # GPU-sized presets keep the loop's generic defaults; --set overrides either.
    from spikefm.families.ar.family import CPU_RUN_DEFAULTS
    from spikefm.train.config import OptimConfig, TrainConfig

    expected = {"optim.lr": 3e-3, "train.steps": 250, "train.batch_size": 8, "train.precision": "fp32"}
    assert {s.split("=")[0] for s in CPU_RUN_DEFAULTS} == set(expected)
    for preset in ("tiny", "tiny-bin", "tiny-bin-prefix", None):
        cfg = families.run_config("ar", preset=preset)
        assert cfg.optim.warmup_steps is None  # a tenth of the run, so any --steps is valid
        got = {"optim.lr": cfg.optim.lr, "train.steps": cfg.train.steps, "train.batch_size": cfg.train.batch_size,
               "train.precision": cfg.train.precision}
        assert got == expected, preset
    for preset in ("small", "small-bin-prefix", "125m"):
        cfg = families.run_config("ar", preset=preset)
        assert cfg.optim == OptimConfig() and cfg.train == TrainConfig(), preset
    cfg = families.run_config("ar", preset="tiny", overrides=["optim.lr=1e-3", "train.steps=7"])
    assert (cfg.optim.lr, cfg.train.steps, cfg.train.precision) == (1e-3, 7, "fp32")


def test_toy_family_trains_finetunes_and_evaluates_through_the_cli(toy_registered, tmp_path, capsys):
    common = ["--set", "train.device=cpu", "--set", "train.precision=fp32", "--set", "train.ckpt_every=0"]
    run, ft = tmp_path / "run", tmp_path / "ft"
    assert main(["train", "--model", "toy", "--data", str(tmp_path), "--out", str(run), "--steps", "40",
                 "--set", "optim.lr=3e-3", *common, "--quiet"]) == 0
    info = json.loads((run / "config.json").read_text())
    assert info["family"] == "toy" and info["config"]["optim"]["warmup_steps"] is None

    # fine-tune the head only on a new "session" (its own data seed), with early stopping
    assert main(["finetune", str(run), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
                 "--steps", "20", "--eval-every", "5", "--freeze-core", "--quiet"]) == 0
    es = json.loads((ft / "early_stopping.json").read_text())
    assert es["best_val_loss"] == min(h["val_loss"] for h in es["history"])
    from safetensors.torch import load_file

    pre, tuned = load_file(str(run / "model.safetensors")), load_file(str(ft / "model.safetensors"))
    assert all((pre[k] == tuned[k]).all() for k in pre if not k.startswith("head."))
    assert any((pre[k] != tuned[k]).any() for k in pre if k.startswith("head."))

    capsys.readouterr()
    out = tmp_path / "res.json"
    assert main(["eval", str(ft), "--data", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    bits = res["results"]["model"]["bits"]
    assert res["family"] == "toy" and bits < math.log2(16) == res["results"]["uniform"]["bits"]
    assert f"{bits:.4f}" in printed and "toy held-out cross-entropy" in printed

    # an option of another family is refused in one line, naming the option and the valid ones
    assert main(["eval", str(ft), "--data", str(tmp_path), "--ngram", "1,9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "spikefm: error: --ngram does not apply to a 'toy' run; its options: --split"


def test_toy_family_soup_through_the_cli_is_the_average_of_its_ingredients(toy_registered, tmp_path, capsys):
    """``finetune --soup`` on real (toy) training: the soup folder holds the mean of the weights of
    the candidates it names, its recorded validation loss is the family's validation of those
    weights, and ``auto`` keeps it exactly when that loss is the lowest."""
    import torch
    from safetensors.torch import load_file

    from spikefm import families
    from spikefm.train.finetune import _validation_loss
    from spikefm.train.runinfo import load_run_config

    common = ["--set", "train.device=cpu", "--set", "train.precision=fp32", "--set", "train.ckpt_every=0"]
    run, ft = tmp_path / "run", tmp_path / "ft"
    assert main(["train", "--model", "toy", "--data", str(tmp_path), "--out", str(run), "--steps", "40",
                 "--set", "optim.lr=3e-3", *common, "--quiet"]) == 0
    assert main(["finetune", str(run), "--data", str(tmp_path), "--session", "s1", "--out", str(ft),
                 "--steps", "20", "--eval-every", "5", "--soup", "--quiet"]) == 0
    printed = capsys.readouterr().out
    s = json.loads((ft / "finetune.json").read_text())
    assert "soup (greedy weight average)" in printed
    losses = {n: s["candidates"][n]["best_val_loss"] for n in ("frozen", "unfreeze", "full")}
    order = sorted(losses, key=losses.get)
    fam = families.get("toy")
    weights = {n: load_file(str(ft / "candidates" / n / "model.safetensors")) for n in order}
    cfg = load_run_config(ft / "candidates" / order[0], model_cls=fam.model_config_cls, data_cls=fam.data_config_cls)

    def mean(names):
        return {k: sum(weights[n][k] for n in names) / len(names) for k in weights[order[0]]}

    # every average tried, recomputed here from the candidates' saved weights and validated
    ingredients, best = [order[0]], losses[order[0]]
    for n, tried in zip(order[1:], s["soup"]["tried"]):
        assert tried["add"] == n
        loss = _validation_loss(fam, cfg, mean(ingredients + [n]))
        assert loss == pytest.approx(tried["val_loss"], rel=1e-5) and tried["kept"] == (loss < best)
        if loss < best:
            ingredients, best = ingredients + [n], loss
    assert s["soup"]["ingredients"] == ingredients and s["soup"]["val_loss"] == pytest.approx(best, rel=1e-5)
    # the benchmark that measured soups builds the same one from the finished candidates
    from _benchmark_script import load_benchmark

    again = load_benchmark("finetune_soup").soups(ft, tmp_path)
    assert again["greedy"]["ingredients"] == ingredients
    assert again["greedy"]["val_loss"] == pytest.approx(best, rel=1e-5)
    assert again["candidate_val_loss"] == pytest.approx(losses, rel=1e-5)
    if len(ingredients) == 1:  # no average validated lower: no soup candidate, the lowest kept
        assert "soup" not in s["candidates"] and s["strategy"] == order[0]
        assert not (ft / "candidates" / "soup").exists()
        return
    soup = load_file(str(ft / "candidates" / "soup" / "model.safetensors"))
    for k, v in mean(ingredients).items():
        assert torch.allclose(soup[k], v, atol=1e-6), k
    assert s["strategy"] == "soup" and s["candidates"]["soup"]["best_val_loss"] == pytest.approx(best, rel=1e-5)
    kept = load_file(str(ft / "model.safetensors"))
    assert all(torch.equal(kept[k], soup[k]) for k in soup)


def test_unknown_model_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model family 'nope'" in err[0]


def test_unknown_tasks_are_refused_before_a_study_makes_anything(tmp_path, capsys):
    from spikefm import families
    from spikefm.cli import main

    with pytest.raises(ValueError, match="^unknown task 'teleport'; valid: co-smoothing"):
        families.check_tasks("ndt", "co-smoothing, teleport")
    families.check_tasks("ndt", ["co-smoothing", "choice-decoding"])  # known: no error
    families.check_tasks("ar", ["anything"])  # a family without the optional method accepts names
    out = tmp_path / "study"
    assert main(["experiment", "transfer", "--out", str(out), "--seeds", "1", "--tasks", "teleport"]) == 2
    assert capsys.readouterr().err.strip().startswith("spikefm: error: unknown task 'teleport'")
    assert not out.exists() or not any(out.rglob("*.nwb"))


def test_a_plugin_family_missing_members_or_taking_a_built_in_name_is_refused(monkeypatch, recwarn):
    """A family without loss (or any member the loop calls) failed as an internal error after
    config.json and metrics.jsonl were written; register('ndt', ...) silently replaced the NDT
    for every existing ndt run; an entry point named like a built-in was silently ignored."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _toy_family import ToyFamily

    del_loss = type("NoLoss2", (ToyFamily,), {"name": "noloss"})
    monkeypatch.delattr(ToyFamily, "flops_per_batch")  # the base class loses a member for this test
    families.register("noloss", del_loss)
    try:
        with pytest.raises(ValueError, match=r"family 'noloss' \(.*NoLoss2\) lacks flops_per_batch, which the "
                                             r"train loop and the commands call"):
            families.get("noloss")
    finally:
        families._EXTRA.pop("noloss", None)
        families._INSTANCES.pop("noloss", None)
    with pytest.raises(ValueError, match="'ndt' is a built-in family; register yours under another name"):
        families.register("ndt", "x:y")
    monkeypatch.setattr(families, "_entry_points", lambda: {"ndt": "plugin.mod:Fake", "mine": "plugin:Mine"})
    families._CLASHES_SAID.discard("ndt")
    targets = families._targets()
    assert targets["ndt"] == families.FAMILIES["ndt"] and targets["mine"] == "plugin:Mine"
    assert any("entry point 'ndt' = plugin.mod:Fake is ignored" in str(w.message) for w in recwarn)


def test_python_evaluate_refuses_options_the_family_does_not_take_in_one_line(tmp_path):
    """families.evaluate(ar_run, corpus, tasks=...) raised "TypeError: ARFamily.evaluate() got an
    unexpected keyword argument 'tasks'"; the CLI already refused it in one line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"family": "ar"}))  # refused before anything else is read
    with pytest.raises(ValueError) as err:
        families.evaluate(run, tmp_path / "corpus", tasks="co-smoothing")
    assert str(err.value) == (
        "option 'tasks' does not apply to a 'ar' run; its options: split, ngram, max_tokens, max_train_tokens, "
        "seq_len, baselines, permutations, compare_run, compare_data, progress")
    with pytest.raises(ValueError, match=r"^options 'tasks', 'session' do not apply to a 'ar' run; its options: split"):
        families.evaluate(run, tmp_path / "corpus", tasks="co-smoothing", session="s")
    # the CLI's spelling: only the command's options, as flags
    with pytest.raises(ValueError, match=r"^--tasks does not apply to a 'ar' run; its options: --split, --ngram$"):
        families.check_evaluate_options(families.get("ar"), {"tasks": "x"}, flags=("split", "ngram", "tasks"))
    families.check_evaluate_options(families.get("ndt"), {"tasks": "x", "session": "s"})  # takes them

    class Anything:
        name = "anything"

        def evaluate(self, run_dir, corpus, **options):
            return options

    families.check_evaluate_options(Anything(), {"whatever": 1})  # **options: any option is the family's


def test_load_model_documents_its_device_parameter():
    doc = families.load_model.__doc__
    assert "device:" in doc and '``"cpu"`` (default)' in doc and '``"cuda"``' in doc


def test_task_score_unit_says_what_task_scores_reads():
    """The scaling study labels Figure 4 with the family's unit of each task's score: it must name
    the field task_scores takes (bits per spike of a prediction, accuracy of a label, R² of
    behaviour); a family without task_score_unit gives no unit."""
    results = {"tasks": {"co-smoothing": {"model": {"bps_pooled": 0.125}},
                         "choice-decoding": {"hidden": {"accuracy": 0.75}},
                         "behavior-decoding": {"hidden": {"mean": {"r2": 0.5}}}}}
    scores = families.task_scores("ndt", results)
    assert scores == {"co-smoothing": 0.125, "choice-decoding": 0.75, "behavior-decoding": 0.5}
    expect = {"co-smoothing": "bits per spike", "choice-decoding": "accuracy", "behavior-decoding": "R²"}
    for task, word in expect.items():
        assert word in families.task_score_unit("ndt", task)
    assert families.task_score_unit("ndt", "no-such-task") == ""
    assert families.task_score_unit("ar", "co-smoothing") == ""


def test_a_plugin_that_cannot_be_loaded_is_named_in_one_line_and_claims_no_folder(monkeypatch, tmp_path, capsys):
    """An entry point naming a missing class or module (or a plugin whose own import fails) was
    'internal error (AttributeError: ...) ... report it', and one broken plugin turned
    'spikefm eval' of any foreign folder into that internal error too."""
    monkeypatch.setattr(families, "_entry_points", lambda: {"broken": "json:NoSuchFamily",
                                                            "gone": "spikefm_no_such_module_xyz:Fam"})
    with pytest.raises(ValueError) as err:
        families.get("broken")
    assert str(err.value) == ("the spikefm.families entry point 'broken' = json:NoSuchFamily could not be loaded "
                              "(AttributeError: module 'json' has no attribute 'NoSuchFamily'); fix or reinstall "
                              "the package that provides it, or uninstall it")
    assert main(["train", "--model", "gone", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spikefm: error: the spikefm.families entry point 'gone' = spikefm_no_such_module_xyz:Fam "
                          "could not be loaded (ModuleNotFoundError: ") and "\n" not in err
    assert not (tmp_path / "r").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="names no model family and no family can load it"):
        families.family_of_run(foreign)


def test_evaluate_and_format_results_of_the_wrong_kind_are_refused_before_printing(toy_registered, tmp_path,
                                                                                   capsys, monkeypatch):
    """A family's evaluate() returning a list was an internal error ('list' object has no attribute
    'get'); numpy scalars failed only after the table was printed ('Object of type float32 is not
    JSON serializable', no word of where: now written as numbers), other objects the same (now
    refused first, naming the entry); a format_results() returning None printed 'None'."""
    import numpy as np

    run = tmp_path / "run"
    assert main(["train", "--model", "toy", "--data", str(tmp_path), "--out", str(run), "--steps", "2",
                 "--set", "train.device=cpu", "--set", "train.ckpt_every=0", "--quiet"]) == 0
    toy = families.get("toy")
    good = toy.evaluate(str(run), str(tmp_path))
    assert families.checked_results(toy, good) == good  # the real result passes unchanged
    out = tmp_path / "res.json"
    cases = [([1, 2, 3], "the 'toy' family's evaluate() returned a list; it must return a dict of JSON data "
                         "(spikefm.train.family documents it)"),
             ({**good, "extra": {"runs": [0.5, Path("runs/x")]}},
              "the 'toy' family's evaluate() returned data JSON cannot write: results['extra']['runs'][1] is a "
              f"pathlib.{type(Path('.')).__name__} ({Path('runs/x')!r}); convert it to a plain Python value "
              "(x.tolist(), str(x))"),
             ({**good, "by_step": {3: 0.5}}, "the 'toy' family's evaluate() returned data JSON cannot write: "
                                             "results['by_step'] has the key 3 (int, not str); use str keys")]
    capsys.readouterr()
    for value, message in cases:
        monkeypatch.setattr(toy, "evaluate", lambda run_dir, corpus, split="test", value=value: value)
        assert main(["eval", str(run), "--data", str(tmp_path), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == f"spikefm: error: {message}" and captured.out == "" and not out.exists()
    # numpy scalars (what numpy arithmetic returns) are written as the numbers they hold
    numbers = {**good, "extra": {"bits": [np.float32(1.5), np.int64(3), np.bool_(True), np.array(2.0)],
                                 "pair": (1, 2)}}
    monkeypatch.setattr(toy, "evaluate", lambda run_dir, corpus, split="test": numbers)
    assert main(["eval", str(run), "--data", str(tmp_path), "--out", str(out)]) == 0
    written = json.loads(out.read_text())["extra"]
    assert written == {"bits": [1.5, 3, True, 2.0], "pair": [1, 2]}
    assert [type(v) for v in written["bits"]] == [float, int, bool, float]
    # a plugin's results that name neither family nor results: written with the family, so that a
    # rerun replaces its own earlier file (eval --out refuses any other)
    monkeypatch.setattr(toy, "evaluate", lambda run_dir, corpus, split="test": {"score": 1.0})
    monkeypatch.setattr(toy, "format_results", lambda results_by_run: "score 1.0")
    bare = tmp_path / "bare.json"
    for _ in range(2):
        assert main(["eval", str(run), "--data", str(tmp_path), "--out", str(bare)]) == 0
    assert json.loads(bare.read_text()) == {"family": "toy", "score": 1.0}
    monkeypatch.setattr(toy, "evaluate", lambda run_dir, corpus, split="test": good)
    monkeypatch.setattr(toy, "format_results", lambda results_by_run: None)
    assert main(["eval", str(run), "--data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("spikefm: error: the 'toy' family's format_results() returned a NoneType; it "
                                    "must return the table as a str (spikefm.train.family documents it)")
    assert "None" not in captured.out


def test_a_session_ranking_of_a_family_that_cannot_pick_sessions_is_refused_in_its_words(
        toy_registered, tmp_path, capsys):
    """The toy family fine-tunes but its data config has no 'sessions': a ranking failed with
    "unknown key 'data.sessions'", a key the user never gave (the study's own setting)."""
    assert families.picks_sessions("ndt") and not families.picks_sessions("toy")
    out = tmp_path / "rank"
    code = main(["experiment", "rank-sessions", "--model", "toy", "--data", str(tmp_path / "corpus"),
                 "--held-out", "s1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key" not in err
    assert ("the 'toy' family cannot pretrain on chosen sessions (its data config has no 'sessions' field), which a "
            "session ranking needs (one pretraining run per session); run it with a family that can (") in err
    assert "ndt" in err.split("family that can (")[1] and not out.exists()


def test_a_family_under_another_name_says_where_it_was_registered(monkeypatch):
    """'family registered as 'x' calls itself 'toy'' did not say whether 'x' came from an entry
    point (and which) or from register()."""
    monkeypatch.setattr(families, "_entry_points", lambda: {"wrongname": "_toy_family:ToyFamily"})
    with pytest.raises(ValueError) as err:
        families.get("wrongname")
    assert str(err.value).startswith("the spikefm.families entry point 'wrongname' = _toy_family:ToyFamily gives a "
                                     "family that calls itself 'toy'; use one name")
    monkeypatch.setitem(families._EXTRA, "toy2", "_toy_family:ToyFamily")
    with pytest.raises(ValueError, match=r"^the family registered as 'toy2' gives a family that calls itself 'toy'"):
        families.get("toy2")
