"""End to end for the NDT family: synthesize -> corpus (one session held out) -> pretrain via the
CLI -> fine-tune on the held-out session (frozen core) -> benchmark via the CLI.

Kill/resume of the loop is covered by tests/test_train_stack.py; here the NDT loader's own state
(batcher position + mask counter) is checked to resume exactly.
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spikefm.cli import main
from spikefm.corpus.build import BuildConfig, build_corpus
from spikefm.corpus.reader import Corpus
from spikefm.corpus.synth import synthesize
from spikefm.data.windows import apply_splits, load_all_windows
from spikefm.eval.metrics import bps_pooled, bps_per_neuron_mean
from spikefm.families.ndt.model import session_key
from spikefm.train.config import RunConfig
from spikefm.families import get as get_family, load_run_config
from spikefm.families.ndt.family import NDTDataConfig, window_options
from conftest import torchrun_failure_report

STEPS = 24
# data.rate_init=false: these runs check that training moves the loss from a random start.
TRAIN_ARGS = ["--set", "data.rate_init=false",
              "--set", "train.batch_size=4", "--set", "optim.warmup_steps=2", "--set", "optim.lr=2e-3",
              "--set", "train.precision=fp32", "--set", "train.ckpt_every=0", "--set", "train.log_every=4",
              "--set", "train.eval_every=12", "--set", "data.window_bins=50", "--set", "data.pre_ms=200",
              "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ndt_pipeline")
    synthesize(root / "nwb", num_sessions=3, seed=1, duration_s=60.0)
    build_corpus([str(root / "nwb")], root / "corpus", BuildConfig(test_fraction=0.2), progress=False)
    return root / "corpus"


@pytest.fixture(scope="module")
def held_out(corpus_dir):
    test = Corpus(corpus_dir).session_ids("test")
    assert len(test) == 1, test
    return test[0]


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pre"
    rc = main(["train", "--model", "ndt", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(out),
               "--steps", str(STEPS), *TRAIN_ARGS])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def finetuned(pretrained, corpus_dir, held_out, tmp_path_factory):
    from spikefm.families import finetune

    out = tmp_path_factory.mktemp("runs") / "ft"
    summary = finetune(pretrained, corpus_dir, held_out, out, freeze_core=True, steps=16, eval_every=8,
                       patience=2, overrides=["optim.lr=3e-3"])
    return out, summary


def _core(state):
    return {k: v for k, v in state.items() if not k.startswith("sessions.")}


def test_pretraining_holds_out_test_session_and_records_splits(pretrained, corpus_dir, held_out):
    info = json.loads((pretrained / "config.json").read_text())["family_info"]
    corpus = Corpus(corpus_dir)
    assert sorted(info["sessions"]) == sorted(corpus.session_ids("train"))
    assert held_out not in info["sessions"]
    assert info["corpus_manifest_sha256"] == corpus.manifest_hash
    for sid, n in info["sessions"].items():
        assert n == corpus.session(sid)["num_units"]
        saved = info["window_splits"][sid]
        assert saved["window_bins"] == 50
        counts = {s: saved["split"].count(s) for s in ("train", "val", "test")}
        assert counts == info["num_windows"][sid] and counts["test"] > 0 and counts["val"] > 0
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == STEPS // 4 and losses[-1] < losses[0]
    assert [r["step"] for r in rows if "eval/val_loss" in r] == [12, 24]
    # the saved model holds exactly the training sessions
    state = load_file(str(pretrained / "model.safetensors"))
    prefixes = {k.split(".")[1] for k in state if k.startswith("sessions.")}
    assert prefixes == {session_key(s) for s in info["sessions"]}


def test_loader_resumes_with_identical_batches_and_masks(pretrained):
    cfg = load_run_config(pretrained)
    family = get_family("ndt")
    a = family.train_loader(cfg, 0, 1)
    for _ in range(5):
        next(a)
    state = a.state_dict()
    torch.save(state, pretrained / "loader_state.pt")
    expected = [next(a) for _ in range(4)]
    b = family.train_loader(cfg, 0, 1)
    b.load_state_dict(torch.load(pretrained / "loader_state.pt", weights_only=True))
    for e in expected:
        g = next(b)
        assert int(g["mask_seed"]) == int(e["mask_seed"])
        assert g["session_ids"] == e["session_ids"]
        assert torch.equal(g["counts_BTN"], e["counts_BTN"])
    # the masked loss is a function of the batch alone (masks come from its seed)
    model, _ = _load(pretrained)
    batch = expected[0]
    l1, s1 = family.loss(model, batch, cfg)
    l2, s2 = family.loss(model, batch, cfg)
    assert torch.equal(l1, l2) and s1 == s2 and s1["tokens"] > 0
    other = dict(batch, mask_seed=torch.tensor(int(batch["mask_seed"]) + 1))
    assert family.loss(model, other, cfg)[1]["tokens"] != s1["tokens"] or \
        not torch.equal(family.loss(model, other, cfg)[0], l1)


def _load(run_dir):
    from spikefm.families import load_model

    model = load_model(run_dir)
    return model, model.run_config


def test_finetune_frozen_core_changes_only_session_parameters(pretrained, finetuned, held_out):
    out, summary = finetuned
    pre = load_file(str(pretrained / "model.safetensors"))
    ft = load_file(str(out / "model.safetensors"))
    assert _core(ft).keys() == _core(pre).keys()
    for k in _core(pre):
        assert torch.equal(ft[k], pre[k]), k
    model, cfg = _load(out)
    assert list(model.session_units) == [held_out]
    assert cfg.data.freeze_core and cfg.data.init_from
    # session parameters moved away from their fresh initialisation (same seed -> same init)
    family = get_family("ndt")
    with torch.device("meta"):
        init = family.build_model(cfg)
    init.to_empty(device="cpu")
    family.init_weights(init)
    init_state = init.state_dict()
    for k in _core(pre):
        assert torch.equal(init_state[k], pre[k]), k  # init_from loaded the pretrained core
    session_keys = [k for k in ft if k.startswith("sessions.")]
    assert session_keys and all(not torch.equal(ft[k], init_state[k]) for k in session_keys)
    # early stopping kept the best evaluation, and model.safetensors is those weights
    hist = summary["history"]
    assert len(hist) >= 1
    assert [h["step"] for h in hist] == [8, 16][:len(hist)]
    assert summary["best_val_loss"] == min(h["val_loss"] for h in hist)
    from spikefm.train.finetune import _validation_loss

    assert _validation_loss(family, cfg, ft) == pytest.approx(summary["best_val_loss"], rel=1e-6)
    assert json.loads((out / "early_stopping.json").read_text())["best_step"] == summary["best_step"]


def test_eval_cli_writes_bps_and_predictions_that_recompute(finetuned, corpus_dir, held_out, tmp_path):
    out, _ = finetuned
    results_path, preds = tmp_path / "res" / "results.json", tmp_path / "preds"
    rc = main(["eval", str(out), "--data", str(corpus_dir), "--tasks", "co-smoothing,forward-prediction",
               "--out", str(results_path), "--save-predictions", str(preds), "--quiet"])
    assert rc == 0
    res = json.loads(results_path.read_text())
    assert res["session_id"] == held_out and res["oracle"] is True
    tasks = res["results"]["tasks"]
    assert set(tasks) == {"co-smoothing", "forward-prediction"}
    # the scored windows are exactly the run's saved test windows
    info = json.loads((out / "config.json").read_text())["family_info"]
    cfg = load_run_config(out)
    windows = apply_splits(load_all_windows(corpus_dir, [held_out], **window_options(cfg.data)),
                           info["window_splits"])[held_out]
    test_counts = windows.counts[windows.split == "test"].astype(np.float64)
    assert res["results"]["num_test_windows"] == info["window_splits"][held_out]["split"].count("test")
    for task, entry in tasks.items():
        for name in ("model", "oracle"):
            assert set(entry[name]) >= {"bps_pooled", "bps_per_neuron_mean"}
        z = np.load(preds / f"{task}.npz")
        rates, counts = z["rates"], z["counts"]
        scored = ~np.isnan(counts)
        assert np.array_equal(counts[scored], test_counts[scored])
        assert np.isnan(rates[~scored]).all() and np.isfinite(rates[scored]).all()
        assert bps_pooled(rates, counts) == pytest.approx(entry["model"]["bps_pooled"], rel=1e-12, abs=1e-12)
        assert bps_per_neuron_mean(rates, counts) == pytest.approx(entry["model"]["bps_per_neuron_mean"],
                                                                   rel=1e-12, abs=1e-12)
    assert scored.sum() == entry["num_evaluated"]
    assert "smoothing" in tasks["co-smoothing"]


def test_eval_without_quiet_shows_each_task_as_it_runs(finetuned, corpus_dir, held_out, capsys, monkeypatch):
    from spikefm import progress

    monkeypatch.setattr(progress, "PLAIN_AFTER_S", 0.0)  # a log's lines from the start
    out, _ = finetuned
    assert main(["eval", str(out), "--data", str(corpus_dir), "--tasks", "co-smoothing,forward-prediction"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"spikefm: scoring {held_out}")]
    # three stages: the two tasks and co-smoothing's smoothing baseline, each named as it runs
    import re

    said = [re.match(r"spikefm: (scoring .*): (\d/\d) \(", line).groups() for line in lines]
    assert said == [(f"scoring {held_out} (co-smoothing: smoothing baseline)", "1/3"),
                    (f"scoring {held_out} (forward-prediction)", "2/3"), (f"scoring {held_out}", "3/3")]


def test_cosmoothing_ceiling_benchmark_scores_what_eval_scores(finetuned, corpus_dir, held_out, tmp_path):
    """benchmarks/ndt_cosmoothing_ceiling.py scores the model and the oracle exactly as spikefm eval
    does (same windows, entries and null), and its Laplace observer lands between the barely
    trained model and a little above the oracle."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _benchmark_script import load_benchmark

    out, _ = finetuned
    results_path = tmp_path / "res.json"
    assert main(["eval", str(out), "--data", str(corpus_dir), "--tasks", "co-smoothing,forward-prediction-walk",
                 "--out", str(results_path), "--quiet"]) == 0
    tasks = json.loads(results_path.read_text())["results"]["tasks"]
    want, want_walk = tasks["co-smoothing"], tasks["forward-prediction-walk"]
    got = load_benchmark("ndt_cosmoothing_ceiling").ceiling(str(out), str(corpus_dir), progress=False)
    assert got["session"] == held_out
    for name in ("model", "oracle"):
        assert got[name]["bps_pooled"] == pytest.approx(want[name]["bps_pooled"], rel=1e-9, abs=1e-12)
        assert got["walk"][name]["bps_pooled"] == pytest.approx(want_walk[name]["bps_pooled"], rel=1e-9, abs=1e-12)
    assert len(got["walk"]["chunks"]) == len(want_walk["chunks"])
    for g, w in zip(got["walk"]["chunks"], want_walk["chunks"]):
        assert (g["start_bin"], g["end_bin"]) == (w["start_bin"], w["end_bin"])
        assert g["model"] == pytest.approx(w["model"]["bps_pooled"], rel=1e-9, abs=1e-12)
        assert np.isfinite(g["laplace"])
    assert got["model"]["bps_pooled"] < got["laplace"]["bps_pooled"] < got["oracle"]["bps_pooled"] + 0.05
    assert got["model_minus_laplace"]["value"] == pytest.approx(
        got["model"]["bps_pooled"] - got["laplace"]["bps_pooled"], abs=1e-12)


def test_a_label_class_list_for_a_label_no_session_has_is_refused_before_training(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(out), "--steps", "2",
               "--set", "data.label_classes=choise=-1,1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "'choise'" in err and "choice" in err.split("their labels:")[1]
    # continuous windows carry no trial label at all: said so
    rc = main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(out), "--steps", "2",
               "--set", "data.label_classes=choice=-1,1", "--set", "data.align=", "--quiet"])
    assert rc == 2 and "carry no trial labels" in capsys.readouterr().err and not out.exists()


def test_the_single_session_model_of_a_session_without_a_label_keeps_only_the_classes_it_can_use(
        corpus_dir, tmp_path, nwb_factory):
    """finetune --strategy scratch (and auto's scratch candidate, a study's single-session model)
    kept the pretrained run's data.label_classes on a session without that label; as a new run it
    was refused ('a trial label none of the sessions' windows carry')."""
    pre = tmp_path / "pre"
    assert main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(pre), "--steps", "2",
                 "--set", "data.label_classes=choice=-1,1", *TRAIN_ARGS]) == 0
    path, _ = nwb_factory("sub-x_ses-1", num_units=8, duration_s=40.0,
                          trials={"start_time": np.arange(0.0, 36.0, 2.0), "stop_time": np.arange(1.0, 37.0, 2.0),
                                  "stim": np.tile([1.0, 2.0], 9)})
    build_corpus([str(path)], tmp_path / "c", BuildConfig(test_fraction=0.0), progress=False)
    (sid,) = Corpus(tmp_path / "c").session_ids()
    fam = get_family("ndt")
    scratch = fam.finetune_config(str(pre), str(tmp_path / "c"), sid, from_scratch=True, steps=4)
    assert scratch.data.label_classes == ""
    fam.windows(scratch.data)  # nothing refused
    # a fine-tuning of the pretrained core keeps the setting (its evaluation is the run's), warned
    tuned = fam.finetune_config(str(pre), str(tmp_path / "c"), sid, steps=4)
    assert tuned.data.label_classes == "choice=-1,1"
    with pytest.warns(RuntimeWarning, match="'choice', a trial label none of the sessions"):
        get_family("ndt").windows(tuned.data)


def test_a_finetuning_whose_session_lacks_an_inherited_label_class_is_warned_not_stopped():
    from types import SimpleNamespace

    from spikefm.families.ndt.family import _check_label_classes

    windows = {"s": SimpleNamespace(labels={"choice": np.array([1, -1])})}
    data = NDTDataConfig(label_classes="block_prior=0.2,0.8", init_from="pre")
    with pytest.warns(RuntimeWarning, match="'block_prior'.*their labels: choice.*nothing to score"):
        _check_label_classes(data, windows)
    with pytest.raises(ValueError, match="'block_prior'"):
        _check_label_classes(dataclasses.replace(data, init_from=""), windows)
    _check_label_classes(NDTDataConfig(label_classes="choice=-1,1"), windows)  # present: nothing said


def test_eval_multi_session_run_needs_session(pretrained, corpus_dir, capsys):
    rc = main(["eval", str(pretrained), "--data", str(corpus_dir), "--tasks", "co-smoothing", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    info = json.loads((pretrained / "config.json").read_text())["family_info"]
    assert "--session" in err and all(sid in err for sid in info["sessions"])


def test_data_config_validation_and_window_length_check(corpus_dir):
    with pytest.raises(ValueError, match="data.schemes"):
        NDTDataConfig(schemes="neuron,bogus")
    with pytest.raises(ValueError, match="init_from"):
        NDTDataConfig(freeze_core=True)
    with pytest.raises(ValueError, match="neuron_ratio"):
        NDTDataConfig(neuron_ratio=0.0)
    family = get_family("ndt")
    cfg = RunConfig(family="ndt", model=dataclasses.replace(family.preset("tiny"), max_bins=40),
                    data=NDTDataConfig(corpus=str(corpus_dir), window_bins=50))
    with pytest.raises(ValueError, match="max_bins"):
        family.build_model(cfg)
    cfg = RunConfig(family="ndt", model=family.preset("tiny"),
                    data=NDTDataConfig(corpus=str(corpus_dir), sessions="nope"))
    with pytest.raises(ValueError, match="nope"):
        family.build_model(cfg)


def test_init_from_without_freeze_loads_core_and_keeps_it_trainable(pretrained, corpus_dir, held_out):
    pre = load_run_config(pretrained)
    family = get_family("ndt")
    cfg = dataclasses.replace(pre, data=dataclasses.replace(pre.data, sessions=held_out,
                                                            init_from=str(pretrained)))
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    family.init_weights(model)
    saved = load_file(str(pretrained / "model.safetensors"))
    state = model.state_dict()
    for k, v in _core(saved).items():
        assert torch.equal(state[k], v), k
    assert all(p.requires_grad for p in model.parameters())
    assert list(model.session_units) == [held_out]
    assert model.session_units[held_out] == Corpus(corpus_dir).session(held_out)["num_units"]


def test_early_stopping_keeps_best_segment_weights(corpus_dir, held_out, tmp_path, monkeypatch):
    """Scripted val losses 1.0, 0.5, 0.7, 0.8 with patience 2: stop after the 4th evaluation
    (step 16) and keep the step-8 weights, which must equal an uninterrupted run stopped at step 8."""
    import spikefm.train.finetune as ftmod
    from spikefm.families import run_config, train

    script = iter([1.0, 0.5, 0.7, 0.8, 0.1, 0.1])
    monkeypatch.setattr(ftmod, "_validation_loss", lambda family, cfg, state: next(script))
    overrides = ["train.batch_size=4", "train.precision=fp32", "data.window_bins=50", "data.pre_ms=200",
                 "optim.lr=2e-3"]
    cfg = run_config("ndt", preset="tiny", corpus=str(corpus_dir),
                     overrides=[*overrides, f"data.sessions={held_out}", "train.steps=40"])
    summary = ftmod.train_with_early_stopping(cfg, tmp_path / "ss", get_family("ndt"), eval_every=4,
                                              patience=2)
    assert [h["step"] for h in summary["history"]] == [4, 8, 12, 16]
    assert summary["best_step"] == 8 and summary["stopped_at"] == 16 and summary["best_val_loss"] == 0.5
    kept = load_file(str(tmp_path / "ss" / "model.safetensors"))

    cfg = load_run_config(tmp_path / "ss")
    assert cfg.data.sessions == held_out and not cfg.data.init_from
    train(cfg, tmp_path / "ref", stop_after=8, progress=False)
    ref = torch.load(tmp_path / "ref" / "checkpoints" / "step_00000008" / "model.pt", weights_only=True)
    assert kept.keys() == ref.keys()
    for k in ref:
        assert torch.equal(kept[k], ref[k]), k


def test_finetuned_run_loads_without_its_pretrained_run(finetuned, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from spikefm import load_model

    ft_dir, _ = finetuned
    # the weights are as readable as the files beside them (safetensors wrote 0600)
    weights = [p for p in ft_dir.rglob("*.safetensors")]
    assert weights and {p.stat().st_mode & 0o777 for p in weights} == {(ft_dir / "config.json").stat().st_mode & 0o777}
    copy = tmp_path / "ft_copy"
    shutil.copytree(ft_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    # Point init_from at a folder that does not exist: loading must not read it.
    cfg["config"]["data"]["init_from"] = str(tmp_path / "gone")
    (copy / "config.json").write_text(json.dumps(cfg))
    model = load_model(copy)
    saved = load_file(str(copy / "model.safetensors"))
    for k, v in model.state_dict().items():
        if k in saved:
            assert torch.equal(v, saved[k]), k


def test_a_run_folder_loads_without_the_corpus_it_names(pretrained, tmp_path, monkeypatch):
    """load_model rebuilt an NDT from the corpus its config names (to count each session's units):
    with that corpus moved it failed with 'no such file or folder'. It is built from the run's
    record now, and reads no data."""
    from conftest import copy_run_naming_a_gone_corpus, load_model_reading_no_windows
    from spikefm import load_model

    copy = tmp_path / "pre_copy"
    rec = copy_run_naming_a_gone_corpus(pretrained, copy)
    original = load_model(pretrained)
    loaded = load_model_reading_no_windows(copy, monkeypatch)
    assert loaded.session_units == original.session_units == rec["family_info"]["sessions"]
    a, b = original.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a record without the sessions (older or edited): built from the data as before, which is gone
    del rec["family_info"]["sessions"]
    (copy / "config.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="moved: no such file or folder"):
        load_model(copy)


# slow (11 s): the AR and gloo FSDP2 runs of the default suite cover the shared train/ path
@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_process_fsdp_ndt_run(corpus_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist"
    args = [a for a in TRAIN_ARGS if a != "--quiet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "spikefm.cli", "train",
           "--model", "ndt", "--preset", "tiny", "--data", str(corpus_dir), "--out", str(out),
           "--steps", "6", *args, "--set", "train.eval_every=3", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, torchrun_failure_report(proc)
    info = json.loads((out / "config.json").read_text())
    assert info["world_size"] == 2 and (out / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/val_loss" in r for r in rows)


def _fresh(cfg):
    family = get_family("ndt")
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    family.init_weights(model)
    return model


def test_new_session_read_out_starts_at_its_train_windows_log_mean_rate(pretrained, corpus_dir, held_out):
    pre = load_run_config(pretrained)
    cfg = dataclasses.replace(pre, data=dataclasses.replace(pre.data, sessions=held_out, rate_init=True,
                                                            init_from=str(pretrained), freeze_core=True))
    model = _fresh(cfg)
    # Independently: the held-out session's train windows, counted by the corpus reader and the
    # saved-splits machinery rather than by the family.
    w = load_all_windows(Corpus(corpus_dir), [held_out], **window_options(cfg.data))[held_out]
    train = w.counts[w.split == "train"].astype(np.float64)
    expected = np.log(np.maximum(train.sum(axis=(0, 1)) / (train.shape[0] * train.shape[1]), 1e-3))
    bias = model.sessions[session_key(held_out)].read_out.bias.detach().numpy()
    np.testing.assert_allclose(bias, expected, rtol=1e-6, atol=1e-6)
    # The loaded core is untouched, and with rate_init off the bias is PyTorch's small random one.
    saved = load_file(str(pretrained / "model.safetensors"))
    for k, v in _core(saved).items():
        assert torch.equal(model.state_dict()[k], v), k
    off = _fresh(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, rate_init=False)))
    b_off = off.sessions[session_key(held_out)].read_out.bias.detach().numpy()
    assert np.abs(b_off).max() <= 1 / np.sqrt(cfg.model.dim) < np.abs(expected).max()


def test_rate_init_refuses_windows_with_more_units_than_the_model(pretrained, corpus_dir, held_out):
    # Windows of another corpus (more units than the model's read-out) are a mistake to name,
    # not a silent partial initialisation.
    from spikefm.families.ndt.family import init_session_rates

    pre = load_run_config(pretrained)
    cfg = dataclasses.replace(pre, data=dataclasses.replace(pre.data, sessions=held_out, rate_init=False))
    model = _fresh(cfg)
    w = load_all_windows(Corpus(corpus_dir), [held_out], **window_options(cfg.data))[held_out]
    n = model.session_units[held_out]
    wider = dataclasses.replace(w, counts=np.concatenate([w.counts, w.counts[..., :1]], axis=-1))
    before = model.sessions[session_key(held_out)].read_out.bias.detach().clone()
    with pytest.raises(ValueError, match=rf"session '{held_out}': the model has {n} units, its windows {n + 1}"):
        init_session_rates(model, {held_out: wider})
    assert torch.equal(model.sessions[session_key(held_out)].read_out.bias, before)


def test_rate_init_never_overwrites_session_parameters_from_a_checkpoint(pretrained):
    # Resuming from / fine-tuning on a run that already holds the session keeps its trained bias.
    pre = load_run_config(pretrained)
    cfg = dataclasses.replace(pre, data=dataclasses.replace(pre.data, init_from=str(pretrained),
                                                            rate_init=True))
    model = _fresh(cfg)
    saved = load_file(str(pretrained / "model.safetensors"))
    for sid in model.session_units:
        key = f"sessions.{session_key(sid)}.read_out.bias"
        assert torch.equal(model.state_dict()[key], saved[key]), sid


def test_finetune_on_a_pretraining_session_warns(pretrained, corpus_dir, held_out, tmp_path):
    """Fine-tuning to a session the run was pretrained on ran silently; its scores would read as
    transfer to a new session. It warns (the held-out session, above, does not)."""
    import warnings

    from spikefm.families import _warn_if_pretrained_on

    own = Corpus(corpus_dir).session_ids("train")[0]
    with pytest.warns(RuntimeWarning, match=rf"session '{own}' is one of the sessions .* was trained on"):
        _warn_if_pretrained_on(pretrained, own)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_pretrained_on(pretrained, held_out)
    with pytest.warns(RuntimeWarning, match=rf"session '{own}' is one of the sessions"):  # the CLI path
        rc = main(["finetune", str(pretrained), "--data", str(corpus_dir), "--session", own, "--out",
                   str(tmp_path / "ft"), "--strategy", "frozen", "--steps", "2", "--eval-every", "2", "--quiet"])
    assert rc == 0


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_finetune_from_a_damaged_or_missing_export_is_one_line_and_writes_nothing(
        pretrained, corpus_dir, held_out, tmp_path, capsys, damage):
    """A truncated model.safetensors was an internal error (safetensors' own exception) raised
    inside the first candidate, with OUT/candidates/frozen left behind; a missing one left an empty
    OUT. Both are now refused before anything is written; ``data.init_from`` names the file too."""
    import shutil

    run = tmp_path / "pre"
    shutil.copytree(pretrained, run)
    export = run / "model.safetensors"
    if damage == "truncate":
        export.write_bytes(export.read_bytes()[:5000])
    else:
        export.unlink()
    out = tmp_path / "ft"
    rc = main(["finetune", str(run), "--data", str(corpus_dir), "--session", held_out, "--out", str(out),
               "--steps", "2", "--eval-every", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not out.exists()
    if damage == "missing":
        assert err[0] == (f"spikefm: error: {export} not found; the pretraining run has not finished (resume "
                          "it with spikefm train ... --resume); nothing was written")
        return
    assert err[0].startswith(f"spikefm: error: {export} is not a valid safetensors file: ")
    assert err[0].endswith("copy or export it again")
    pre = load_run_config(run)
    cfg = dataclasses.replace(pre, data=dataclasses.replace(pre.data, sessions=held_out, init_from=str(run)))
    family = get_family("ndt")
    with torch.device("meta"):
        model = family.build_model(cfg)
    model.to_empty(device="cpu")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(export))} is not a valid safetensors file"):
        family.init_weights(model)


def test_save_predictions_refuses_corpus_run_and_recording_folders(finetuned, corpus_dir, held_out, tmp_path, capsys):
    """``--save-predictions corpus/data`` wrote .npz files among the shards (the next build then
    refused the corpus), and a run folder or a folder of recordings were written into too."""
    run, _ = finetuned
    recordings = tmp_path / "nwb"
    recordings.mkdir()
    (recordings / "ses-0.nwb").write_bytes(b"mine")
    before = {p: p.stat().st_mtime_ns for d in (corpus_dir, run, recordings) for p in d.rglob("*")}
    for target, says in [(corpus_dir / "data", f"that is inside the corpus {corpus_dir}"),
                         (corpus_dir, f"that is inside the corpus {corpus_dir}"),
                         (corpus_dir / "data" / "sub", f"that is inside the corpus {corpus_dir}"),
                         (run, "that is a run folder"),
                         (recordings, "the folder holds other files (found 'ses-0.nwb')")]:
        rc = main(["eval", str(run), "--data", str(corpus_dir), "--session", held_out, "--tasks", "co-smoothing",
                   "--save-predictions", str(target), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith(f"spikefm: error: --save-predictions {target}: {says}")
    assert {p: p.stat().st_mtime_ns for d in (corpus_dir, run, recordings) for p in d.rglob("*")} == before
    # the documented use stays allowed: a folder of earlier predictions, results and a report, beside
    # a manifest.json of another program
    preds = tmp_path / "work" / "preds"
    preds.mkdir(parents=True)
    (tmp_path / "work" / "manifest.json").write_text('{"name": "some other tool"}')
    (preds / "eval.html").write_text("<html></html>")
    (preds / "results.json").write_text("{}")
    assert main(["eval", str(run), "--data", str(corpus_dir), "--session", held_out, "--tasks", "co-smoothing",
                 "--save-predictions", str(preds), "--quiet"]) == 0
    assert (preds / "co-smoothing.npz").is_file()


def test_a_run_trained_with_a_relative_corpus_path_evaluates_and_reports_from_anywhere(
        pretrained, corpus_dir, held_out, tmp_path, monkeypatch):
    """`--data corpus` is recorded as given; eval built the model from that path relative to the
    folder eval ran in ('corpus: no such file or folder', or another folder named corpus), and a
    report of the results from elsewhere lost its conditions and regions (run_dir relative)."""
    from spikefm.report.build import build_report

    monkeypatch.chdir(corpus_dir.parent)
    ft = tmp_path / "ft_rel"
    assert main(["finetune", str(pretrained), "--data", corpus_dir.name, "--session", held_out, "--out", str(ft),
                 "--strategy", "frozen", "--steps", "4", "--eval-every", "2", "--quiet"]) == 0
    assert json.loads((ft / "config.json").read_text())["config"]["data"]["corpus"] == corpus_dir.name
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / corpus_dir.name).mkdir(parents=True)  # a folder of the same name that is no corpus
    monkeypatch.chdir(elsewhere)
    res_path, preds = tmp_path / "res.json", tmp_path / "preds"
    assert main(["eval", str(ft), "--data", str(corpus_dir), "--tasks", "co-smoothing", "--out", str(res_path),
                 "--save-predictions", str(preds), "--quiet"]) == 0
    res = json.loads(res_path.read_text())
    assert res["run_dir"] == str(ft.resolve()) and res["corpus"] == str(corpus_dir.resolve())
    monkeypatch.chdir(tmp_path / "elsewhere" / corpus_dir.name)
    text = build_report(res_path, predictions=preds).html()
    assert "conditions and regions unavailable" not in text


def test_no_val_windows_says_every_fix_including_the_one_for_fine_tuning(corpus_dir, tmp_path, capsys):
    """'set train.eval_every=0' was the only advice, which a transfer study's fine-tuning (it always
    validates) cannot take: sessions too short for a val window need more data."""
    assert main(["train", "--model", "ndt", "--data", str(corpus_dir), "--out", str(tmp_path / "r"), "--steps", "2",
                 *TRAIN_ARGS, "--set", "data.split_fractions=0.9,0,0.1", "--set", "train.eval_every=1"]) == 2
    from spikefm.data.windows import NO_VAL_WINDOWS

    assert capsys.readouterr().err.strip().splitlines()[-1] == f"spikefm: error: {NO_VAL_WINDOWS}"
    assert "use longer sessions" in NO_VAL_WINDOWS and "fine-tuning always validates" in NO_VAL_WINDOWS


def test_a_finetuning_without_val_windows_is_refused_before_training(pretrained, corpus_dir, held_out, tmp_path,
                                                                    capsys):
    """It trained its first segment, then failed; the folder it left refused the corrected command
    ('holds a fine-tuning made with other settings')."""
    from spikefm.data.windows import NO_VAL_WINDOWS

    out = tmp_path / "ft"
    args = ["finetune", str(pretrained), "--data", str(corpus_dir), "--session", held_out, "--out", str(out),
            "--strategy", "frozen", "--steps", "4", "--eval-every", "2", "--quiet"]
    assert main([*args, "--set", "data.split_fractions=0.9,0,0.1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"spikefm: error: {NO_VAL_WINDOWS}"
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert main(args) == 0 and (out / "model.safetensors").is_file()


def test_decoding_tasks_name_the_block_as_the_results_do(finetuned, corpus_dir):
    """--decode-layer 0 and 2 (of 2 blocks) read the same block, yet the tasks recorded 'layer'
    -1 and 1 (and 0 for block 1, where 0 means the last everywhere else): each task now records
    the 1-based block, as the results' top level does."""
    from spikefm import families

    ft_dir, _ = finetuned
    tasks = ["choice-decoding", "behavior-decoding"]
    got = {}
    for layer in (0, 1, 2):
        res = families.evaluate(str(ft_dir), str(corpus_dir), tasks=tasks, baselines=False, decode_layer=layer)
        blocks = {t: res["results"]["tasks"][t]["decode_layer"] for t in tasks if t in res["results"]["tasks"]}
        assert blocks and set(blocks.values()) == {res["decode_layer"]}, (layer, blocks, res["decode_layer"])
        got[layer] = res
    assert got[0]["decode_layer"] == got[2]["decode_layer"] == 2 and got[1]["decode_layer"] == 1
    for t in tasks:
        if t in got[0]["results"]["tasks"]:  # the same block: the same scores
            assert json.dumps(got[0]["results"]["tasks"][t], sort_keys=True) == \
                json.dumps(got[2]["results"]["tasks"][t], sort_keys=True)
