"""Tests of spikefm.train on one CPU process with the toy family (tests/_toy_family.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import ToyFamily, ToyModelConfig, toy_config  # noqa: E402

from spikefm.families import get as get_family, load_model, run_config_from_dict, train  # noqa: E402
from spikefm.fileio import folder_lock  # noqa: E402
from spikefm.train.checkpoint import checkpoint_problem, latest_checkpoint, list_checkpoints  # noqa: E402
from spikefm.train.config import (  # noqa: E402
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_differences,
    config_to_dict,
)
from spikefm.train.loop import TrainingDiverged, device_peak_flops  # noqa: E402
from spikefm.train.loop import train as loop_train  # noqa: E402
from spikefm.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups  # noqa: E402

TOY = Path(__file__).resolve().parent / "_toy_family.py"
METRIC_FIELDS = {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "elapsed_s"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The toy tensors are tiny: on a busy 2-core machine multi-threaded kernels spend most of
    their time waiting for each other (60x slower here), so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=np.float64)


def folder_state(run_dir: Path) -> dict[str, bytes]:
    """Every file under run_dir (but the lock file) with its contents."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".spikefm.lock"}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_model(a).state_dict(), load_model(b).state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------------------------------------------
# config


def test_overrides_change_values_and_keep_types():
    cfg = toy_config()
    new = apply_overrides(cfg, [
        "optim.lr=1e-3", "optim.betas=0.8,0.99", "train.precision=bf16", "train.compile=true",
        "train.steps=7", "model.dim=8", "model.hidden_dim=none", "data.noise=0.5",
    ])
    assert new.optim.lr == 1e-3 and isinstance(new.optim.lr, float)
    assert new.optim.betas == (0.8, 0.99) and isinstance(new.optim.betas, tuple)
    assert new.train.precision == "bf16" and new.train.compile is True
    assert new.train.steps == 7 and isinstance(new.train.steps, int)
    assert new.model.dim == 8 and new.model.hidden_dim is None and new.data.noise == 0.5
    assert apply_overrides(cfg, ["model.hidden_dim=64"]).model.hidden_dim == 64
    assert cfg.optim.lr == 3e-3 and cfg.train.steps == 30  # the input is not modified


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=1", "unknown key 'optim.lrr'; valid keys in optim: lr, betas, weight_decay, eps, "
                    "warmup_steps, min_lr_ratio, grad_clip"),
    ("optm.lr=1", "unknown section 'optm'; valid sections in config: family, model, data, optim, train"),
    ("lr=1e-3", "'lr' names no section: overrides are section.key=value; did you mean optim.lr?"),
    ("speed=2", "'speed' names no section: overrides are section.key=value; sections: family, model, data, "
                "optim, train"),
    ("train.steps=abc", "invalid value for 'train.steps': expected int, got 'abc'"),
    ("train.steps=2.5", "invalid value for 'train.steps': expected int, got '2.5'"),
    ("optim.lr=fast", "invalid value for 'optim.lr': expected float, got 'fast'"),
    ("train.compile=maybe", "invalid value for 'train.compile': expected bool (true/false), got 'maybe'"),
    ("train.precision=fp16", "invalid value for 'train.precision': expected one of bf16, fp32, got 'fp16'"),
    ("train.device=tpu", "invalid value for 'train.device': expected one of auto, cpu, cuda, got 'tpu'"),
    ("optim.betas=0.9", "invalid value for 'optim.betas': expected 2 comma-separated values"),
    ("model.hidden_dim=big", "invalid value for 'model.hidden_dim': expected int or none, got 'big'"),
    ("optim=3", "'optim' is a section; set one of its keys (lr, betas,"),
    ("optim.lr", "override must look like section.key=value"),
    ("train.steps=0", "train.steps must be a positive int, got 0"),
    # torch's 'Overflow when unpacking long long', after the run folder was made
    ("train.seed=18446744073709551616", "train.seed must be below 2**63 = 9223372036854775808, got "
                                        "18446744073709551616"),
    ("optim.warmup_steps=31", "optim.warmup_steps (31) must be <= train.steps (30)"),
])
def test_override_errors_are_one_line_and_list_choices(override, expected):
    with pytest.raises(ValueError) as err:
        apply_overrides(toy_config(), [override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_config_json_round_trip_and_strictness():
    cfg = apply_overrides(toy_config(), ["optim.betas=0.8,0.9", "model.hidden_dim=12"])
    text = json.dumps(config_to_dict(cfg))
    back = run_config_from_dict(json.loads(text))
    assert back == cfg and isinstance(back.optim.betas, tuple)
    bad = json.loads(text)
    bad["train"]["stepz"] = 3
    with pytest.raises(ValueError, match="unknown key 'train.stepz'.*valid keys: steps, batch_size"):
        run_config_from_dict(bad)


def test_config_differences_names_each_changed_setting_and_only_those():
    base = toy_config()
    changed = apply_overrides(base, ["optim.lr=0.5", "train.steps=7", "model.hidden_dim=12"])
    a, b = config_to_dict(base), config_to_dict(changed)
    assert config_differences(a, a, ("family", "model", "data", "optim", "train")) == []
    # the expected list, computed key by key from the dataclasses themselves
    expected = [f"{s}.{k}" for s in ("model", "optim", "train") for k in sorted(a[s])
                if getattr(getattr(base, s), k) != getattr(getattr(changed, s), k)]
    assert expected == ["model.hidden_dim", "optim.lr", "train.steps"]
    assert config_differences(a, b, ("family", "model", "data", "optim", "train")) == expected
    assert config_differences(a, b, ("data", "family")) == []
    # a section that is missing or not a dict on one side is named whole
    assert config_differences({"optim": 3}, b, ("optim",)) == ["optim"]
    assert config_differences({}, b, ("train",)) == ["train"]


def test_validation_in_post_init():
    with pytest.raises(ValueError, match="divisible by train.grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        OptimConfig(min_lr_ratio=1.5)
    with pytest.raises(TypeError, match="dataclass instance"):
        RunConfig(family="toy", model={"dim": 3}, data=toy_config().data)
    with pytest.raises(ValueError, match="divisible by grad_accum \\* world_size \\(1 \\* 3\\)"):
        TrainConfig(batch_size=8).micro_batch_size(3)


def test_unknown_family_lists_registered():
    with pytest.raises(ValueError, match="unknown model family 'nope'; registered families: .*toy"):
        get_family("nope")


# ----------------------------------------------------------------------------------------------
# optimizer and schedule


@pytest.mark.parametrize("warmup, total, ratio", [(4, 20, 0.1), (0, 10, 0.0), (5, 5, 0.0), (0, 1, 0.0)])
def test_lr_schedule_matches_piecewise_linear_formula(warmup, total, ratio):
    peak = 2e-3
    model = torch.nn.Linear(3, 3)
    cfg = OptimConfig(lr=peak, warmup_steps=warmup, min_lr_ratio=ratio)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # update n (1-based) lies on the line through (0, 0), (W, peak), (T, ratio * peak)
    n = np.arange(1, total + 1)
    if total == 1 and warmup == 0:  # one update: at the peak, not at ratio * peak (lr 0 trained nothing)
        expected = np.array([peak])
    elif warmup == total:
        expected = peak * n / warmup
    elif warmup > 0:
        expected = np.interp(n, [0, warmup, total], [0.0, peak, ratio * peak])
    else:
        expected = peak * (ratio + (1 - ratio) * (total - n) / total)
    np.testing.assert_allclose(used, expected, rtol=1e-12, atol=1e-15)
    assert used[-1] == pytest.approx(ratio * peak if total > max(warmup, 1) else peak)
    if warmup:
        assert used[warmup - 1] == pytest.approx(peak)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


# ----------------------------------------------------------------------------------------------
# training runs


def test_training_gives_the_callers_random_streams_back(tmp_path):
    """After every train (and so finetune, transfer) call a notebook's python, numpy and torch
    random streams restarted from train.seed: two calls after different seeds drew the same."""
    import random

    draws = []
    for k, seed in enumerate((123, 456)):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        train(toy_config(steps=3), tmp_path / f"r{k}", progress=False)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    for seed, got in zip((123, 456), draws):  # what the caller's seed gives with no training between
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        assert got == (random.random(), float(np.random.rand()), float(torch.rand(1)))
    # and a call with nothing to do (a finished run resumed)
    np.random.seed(7)
    train(toy_config(steps=3), tmp_path / "r0", progress=False, resume=True)
    assert float(np.random.rand()) == float(np.random.RandomState(7).rand())


def test_load_model_refuses_a_device_it_cannot_use_in_one_line(tmp_path):
    """device='gpu' failed in torch's module.py after the model was built; 'cuda' without CUDA with
    an AssertionError."""
    train(toy_config(steps=4), tmp_path / "r", progress=False)
    assert next(load_model(tmp_path / "r", device=np.str_("cpu")).parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match=r"^device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'$"):
        load_model(tmp_path / "r", device="gpu")
    with pytest.raises(ValueError, match=r"^device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'meta'$"):
        load_model(tmp_path / "r", device="meta")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"^device 'cuda:{count}': this machine has {count} CUDA device\(s\); use "
                                         r"'cpu' or 'auto'$"):
        load_model(tmp_path / "r", device=f"cuda:{count}")


def test_short_bf16_run_loss_falls_and_run_dir_describes_itself(tmp_path):
    cfg = toy_config(steps=40, precision="bf16", log_every=5, eval_every=20)
    summary = train(cfg, tmp_path, progress=False)
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(5, 41, 5))
    assert all(METRIC_FIELDS <= set(r) for r in rows)
    assert rows[-1]["loss"] < 0.5 * math.log(16) < rows[0]["loss"]
    assert rows[-1]["tokens"] == 40 * 8 * 16
    # CPU: the peak is a matmul probe written into config.json, and mfu is relative to it
    peak = json.loads((tmp_path / "config.json").read_text())["peak_flops"]
    # (the faster of the bf16 and fp32 probes: bf16 autocast may run in float32 kernels on the CPU)
    assert peak["source"] == "probe" and peak["probe"]["bf16"] > 0
    assert peak["value"] == max(peak["probe"]["bf16"], peak["probe"]["fp32"])
    assert all(r["mfu"] > 0 for r in rows)
    assert rows[-1]["lr"] == 0.0  # the last update uses min_lr_ratio * lr
    evals = [r for r in read_metrics(tmp_path) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [20, 40] and evals[1]["eval/loss"] < math.log(16)

    info = json.loads((tmp_path / "config.json").read_text())
    assert {"config", "family", "seed", "world_size", "versions", "git_commit", "family_info"} <= set(info)
    assert info["world_size"] == 1 and info["family"] == "toy" and info["seed"] == 0
    assert set(info["versions"]) == {"spikefm", "torch", "numpy", "python"}
    assert info["versions"]["torch"] == torch.__version__
    assert len(info["family_info"]["data_sha256"]) == 64
    assert run_config_from_dict(info["config"]) == cfg

    model = load_model(tmp_path)
    cfg_back = model.run_config
    assert cfg_back == cfg and summary["model_path"] == str(tmp_path / "model.safetensors")
    assert sum(p.numel() for p in model.parameters()) == summary["num_params"]
    family = get_family("toy")
    batch = next(family.train_loader(cfg, 0, 1))
    with torch.no_grad():
        loss, _ = family.loss(model, batch, cfg)
    assert float(loss) < 0.5 * math.log(16)


def test_lr_in_metrics_is_the_lr_of_the_update(tmp_path):
    cfg = toy_config(steps=8)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=2, min_lr_ratio=0.5))
    train(cfg, tmp_path, progress=False)
    lr = column(train_rows(tmp_path), "lr")
    np.testing.assert_allclose(lr, np.interp(np.arange(1, 9), [0, 2, 8], [0, 3e-3, 1.5e-3]), rtol=1e-12)


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
    # dropout > 0 so that restoring the torch RNG state matters
    cfg = toy_config(steps=12, ckpt_every=4, ckpt_keep=2)
    cfg = dataclasses.replace(cfg, model=ToyModelConfig(dropout=0.2))
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "cut", progress=False, stop_after=6)
    assert part["stopped_early"] and part["model_path"] is None
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [4, 6]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(cfg, tmp_path / "cut", progress=False)
    resumed = train(cfg, tmp_path / "cut", progress=False, resume=True)
    assert resumed["resumed_from"] == 6 and resumed["step"] == 12
    a, b = train_rows(tmp_path / "full"), train_rows(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(1, 13))
    for key in ("loss", "grad_norm", "lr", "tokens"):
        np.testing.assert_array_equal(column(a, key), column(b, key), err_msg=key)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [8, 12]  # keeps the last 2
    assert full["loss"] == resumed["loss"]
    # the exported weights are identical too
    wa = load_model(tmp_path / "full").state_dict()
    wb = load_model(tmp_path / "cut").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_another_world_size_names_it_before_the_batch_it_breaks(tmp_path, monkeypatch):
    """A one-process run resumed by 4 ranks with batch 6 was refused for 'batch_size (6) must be
    divisible by grad_accum * world_size': the world-size change, the cause, came second. The
    check runs before any process group (WORLD_SIZE alone is enough to reach it)."""
    cfg = toy_config(steps=6, batch_size=6, ckpt_every=2)
    train(cfg, tmp_path / "run", progress=False, stop_after=2)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()}
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError) as err:
        train(cfg, tmp_path / "run", progress=False, resume=True)
    assert str(err.value).startswith("checkpoint step_00000002 was written by 1 process(es) and this run has 4")
    assert {p: p.read_bytes() for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()} == before
    with pytest.raises(ValueError, match=r"train.batch_size \(6\) must be divisible"):  # a new run: the batch
        train(cfg, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    monkeypatch.delenv("WORLD_SIZE")
    from spikefm.train.checkpoint import other_world_size

    assert other_world_size(tmp_path / "run", 4)[1] == 1 and other_world_size(tmp_path / "run", 1) is None
    # a damaged newest checkpoint is not the one a resume continues: no early refusal from it
    train(cfg, tmp_path / "two", progress=False, stop_after=4)
    (step4, newest), = [c for c in list_checkpoints(tmp_path / "two") if c[0] == 4]
    (newest / "model.pt").write_bytes(b"damaged")
    assert other_world_size(tmp_path / "two", 4) is None  # its manifest says 1, but it fails verification
    # a finished run: a resume says it has finished, whatever the world size
    train(cfg, tmp_path / "done", progress=False)
    assert list_checkpoints(tmp_path / "done") and other_world_size(tmp_path / "done", 4) is None


def test_resume_with_a_parameter_no_batch_had_reached_at_the_checkpoint(tmp_path):
    """A parameter without a gradient before the checkpoint (a session's stitcher or a label head
    no batch has reached yet) has no optimizer state there; resuming must accept that (it raised
    "Missing optimizer state" before) and its first update after the checkpoint must be the
    uninterrupted run's (a fresh Adam state, not one already counted a step). The toy model's
    ``late`` parameter enters the loss from step 7; the checkpoint is at step 4."""
    cfg = dataclasses.replace(toy_config(steps=10, ckpt_every=4, ckpt_keep=2),
                              model=ToyModelConfig(late_from_step=7))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=4)
    trainer = torch.load(tmp_path / "cut" / "checkpoints" / "step_00000004" / "trainer.pt", weights_only=True)
    assert trainer["params_without_optimizer_state"] == ["late"]
    assert train(cfg, tmp_path / "cut", progress=False, resume=True)["resumed_from"] == 4
    np.testing.assert_array_equal(column(train_rows(tmp_path / "cut"), "loss"),
                                  column(train_rows(tmp_path / "full"), "loss"))
    full, cut = load_model(tmp_path / "full").state_dict(), load_model(tmp_path / "cut").state_dict()
    assert not torch.equal(full["late"], torch.ones(3))  # it did train after the checkpoint
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_sigkill_after_checkpoint_then_resume_matches(tmp_path):
    """A real preemption: a subprocess is SIGKILLed right after checkpoint 5 appears."""
    steps, overrides = 30, ["train.ckpt_every=5", "train.steps=30", "model.dropout=0.2"]
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(TOY), str(run_dir),
         *[a for o in overrides + ["data.sleep_s=0.05"] for a in ("--set", o)]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while latest_checkpoint(run_dir) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"subprocess ended or hung before its first checkpoint:\n{proc.stdout.read().decode()}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.safetensors").exists()
    killed_at = max(s for s, _ in list_checkpoints(run_dir))
    assert killed_at < steps

    cfg = apply_overrides(toy_config(), overrides)
    train(cfg, tmp_path / "full", progress=False)
    # resume with the killed run's exact config (a changed data config is refused on resume)
    train(apply_overrides(cfg, ["data.sleep_s=0.05"]), run_dir, progress=False, resume=True)
    a, b = train_rows(tmp_path / "full"), train_rows(run_dir)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    np.testing.assert_allclose(column(b, "loss"), column(a, "loss"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(column(b, "grad_norm"), column(a, "grad_norm"), rtol=0, atol=1e-5)


def test_grad_accumulation_2x4_equals_1x8(tmp_path):
    one = train(toy_config(steps=10, batch_size=8, grad_accum=1), tmp_path / "a", progress=False)
    two = train(toy_config(steps=10, batch_size=8, grad_accum=2), tmp_path / "b", progress=False)
    a, b = train_rows(tmp_path / "a"), train_rows(tmp_path / "b")
    np.testing.assert_allclose(column(b, "loss"), column(a, "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(column(b, "grad_norm"), column(a, "grad_norm"), rtol=1e-4)
    np.testing.assert_array_equal(column(b, "tokens"), column(a, "tokens"))
    assert one["tokens"] == two["tokens"] == 10 * 8 * 16


def test_activation_checkpointing_does_not_change_training(tmp_path):
    train(toy_config(steps=6), tmp_path / "a", progress=False)
    train(toy_config(steps=6, activation_checkpointing=True), tmp_path / "b", progress=False)
    np.testing.assert_allclose(column(train_rows(tmp_path / "b"), "loss"),
                               column(train_rows(tmp_path / "a"), "loss"), rtol=0, atol=1e-6)


def test_mfu_uses_family_flops_and_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEFM_PEAK_FLOPS", "1e12")
    summary = train(toy_config(steps=4, log_every=2), tmp_path, progress=False)
    for row in train_rows(tmp_path):
        # toy flops = 6 * params * tokens, so mfu = tokens_per_s * 6 * params / peak
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * 6 * summary["num_params"] / 1e12, rel=1e-9)


def test_peak_flops_table(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("SPIKEFM_PEAK_FLOPS", raising=False)
    for name, precision, peak in [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bf16", 989e12), ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12), ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA L4", "bf16", 121e12), ("NVIDIA A10G", "bf16", 70e12), ("Mystery GPU", "bf16", None),
    ]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert device_peak_flops(cuda, precision) == peak, name
    assert device_peak_flops(torch.device("cpu"), "bf16") is None


def test_incomplete_checkpoint_dirs_are_ignored(tmp_path):
    (tmp_path / "checkpoints" / ".tmp-step_00000009").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000003").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]


def test_resume_refuses_a_different_model_and_prints_plain_progress(tmp_path, capsys):
    train(toy_config(steps=4), tmp_path, progress=True, stop_after=2)
    assert "train step 2/4 (50%, ETA " in capsys.readouterr().out  # not a terminal: plain lines
    with pytest.raises(ValueError, match="'model' differs from the checkpoint's config"):
        train(apply_overrides(toy_config(steps=4), ["model.dim=16"]), tmp_path, resume=True, progress=False)
    capsys.readouterr()
    # train settings apply from the checkpoint on, but not the seed the loader's order was drawn with
    # (it was announced as applying, then the loader failed: "loader state was saved with seed 0")
    with pytest.raises(ValueError, match=r"with train.seed=7: the run's batch order was drawn with train.seed=0, "
                                         r"which a resume keeps; resume without that setting"):
        train(apply_overrides(toy_config(steps=4), ["train.seed=7"]), tmp_path, resume=True, progress=False)
    capsys.readouterr()
    train(apply_overrides(toy_config(steps=4), ["optim.lr=1e-3"]), tmp_path, resume=True, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spikefm: warning: resuming from ")
    assert "with changed settings: optim.lr; they apply from the checkpoint's step on" in err[0]


def test_a_new_seed_is_taken_by_a_resume_that_has_no_checkpoint_to_continue(tmp_path, monkeypatch):
    """A run stopped before its first checkpoint starts again at step 0: its seed may change (the
    refusal of a changed seed is about a checkpoint's batch order)."""
    calls = {"n": 0}
    real_loss = ToyFamily.loss

    def stopped_at_step_5(self, model, batch, cfg):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_loss(self, model, batch, cfg)

    with monkeypatch.context() as m:
        m.setattr(ToyFamily, "loss", stopped_at_step_5)
        with pytest.raises(KeyboardInterrupt):
            train(toy_config(steps=10), tmp_path, progress=False)
    assert not list_checkpoints(tmp_path) and (tmp_path / "config.json").is_file()
    seven = apply_overrides(toy_config(steps=10), ["train.seed=7"])
    assert train(seven, tmp_path, resume=True, progress=False)["step"] == 10
    assert load_model(tmp_path).run_config.train.seed == 7


def test_resume_with_new_optimizer_settings_applies_them_from_the_checkpoint(tmp_path):
    """Settings changed on resume take effect (they were read back from the checkpoint's
    optimizer and schedule, so a larger ``train.steps`` trained its extra steps at lr 0 and a new
    lr was ignored while config.json recorded it): the lr after the checkpoint is the schedule of
    the new settings at each step, computed here from the formula."""
    train(toy_config(steps=8, ckpt_every=4), tmp_path, progress=False, stop_after=4)
    longer = apply_overrides(toy_config(steps=12, ckpt_every=4),
                             ["optim.lr=1e-3", "optim.weight_decay=0.5", "optim.warmup_steps=2"])
    train(longer, tmp_path, resume=True, progress=False)
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 13))
    first = toy_config(steps=8).optim
    np.testing.assert_allclose(  # steps 1-4: the first run's schedule (8 steps, warm-up 0)
        column(rows, "lr")[:4], [first.lr * lr_factor(s, first.warmup_for(8), 8, 0.0) for s in range(4)],
        rtol=1e-12)
    np.testing.assert_allclose(  # steps 5-12: 1e-3 peak, warm-up 2, decay to 0 at step 12
        column(rows, "lr")[4:], [1e-3 * (12 - n) / 10 for n in range(5, 13)], rtol=1e-12)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["optim"]["lr"] == 1e-3
    # The decay group really decays at 0.5 from the checkpoint: continuing with the old weight
    # decay gives other weights.
    train(toy_config(steps=8, ckpt_every=4), tmp_path / "b", progress=False, stop_after=4)
    train(apply_overrides(toy_config(steps=12, ckpt_every=4), ["optim.lr=1e-3", "optim.warmup_steps=2"]),
          tmp_path / "b", resume=True, progress=False)
    a, b = load_model(tmp_path).state_dict(), load_model(tmp_path / "b").state_dict()
    decayed = [k for k, v in a.items() if v.ndim >= 2]
    assert decayed and any(not torch.equal(a[k], b[k]) for k in decayed)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path):
    """torch.compile of each block (inductor needs a C++ compiler on CPU; ~40 s)."""
    train(toy_config(steps=4), tmp_path / "eager", progress=False)
    train(toy_config(steps=4, compile=True), tmp_path / "compiled", progress=False)
    np.testing.assert_allclose(column(train_rows(tmp_path / "compiled"), "loss"),
                               column(train_rows(tmp_path / "eager"), "loss"), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# the run folder: lock, refusals, finished runs, damaged checkpoints, token counter


def test_a_locked_run_folder_is_refused_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run, what="training run"):
        t0 = time.monotonic()
        with pytest.raises(ValueError) as err:
            train(toy_config(steps=4), run, progress=False)
        assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert "the training run is in use by another process" in message and "\n" not in message
    assert f"PID {os.getpid()}" in message
    assert [p.name for p in run.iterdir()] == [".spikefm.lock"]  # nothing was written
    assert train(toy_config(steps=4), run, progress=False)["step"] == 4  # released: it runs


# slow (27 s): tests/test_cli.py::test_two_concurrent_trainings_into_one_folder covers the default run
@pytest.mark.slow
def test_two_concurrent_runs_into_one_folder_the_second_fails_naming_the_first(tmp_path):
    """The reported bug: both exited 0 and the folder mixed one run's config with the other's
    weights. Now the second fails while the first is still running, and the folder is the first's."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 40 steps of 0.5 s: long enough that the second process (importing torch on a busy machine
    # takes seconds) starts while the first still holds the lock
    sets = ["--set", "train.steps=40", "--set", "data.sleep_s=0.5"]
    first = subprocess.Popen([sys.executable, str(TOY), str(run), *sets, "--set", "train.seed=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (run / "config.json").exists():  # written under the lock
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read().decode()
            time.sleep(0.02)
        second = subprocess.run([sys.executable, str(TOY), str(run), *sets, "--set", "train.seed=2"],
                                capture_output=True, text=True, env=env, timeout=120)
        first_still_running = first.poll() is None
        out = first.communicate(timeout=180)[0].decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert second.returncode != 0 and first_still_running
    assert f"the training run is in use by another process (PID {first.pid}" in second.stderr
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    assert load_model(run).run_config.train.seed == 1
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 41))
    train(apply_overrides(toy_config(), ["train.steps=40", "train.seed=1"]), tmp_path / "ref", progress=False)
    np.testing.assert_allclose(column(train_rows(run), "loss"), column(train_rows(tmp_path / "ref"), "loss"),
                               rtol=0, atol=1e-6)


class _NoData(ToyFamily):
    def describe(self, cfg):
        raise ValueError(f"data.corpus {cfg.data.corpus!r} is not a spikefm corpus")


class _NoValidateFamily(ToyFamily):
    def __getattribute__(self, name):
        if name == "validate":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_refused_calls_leave_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cases = [
        (lambda: loop_train(toy_config(), out, _NoData(), progress=False), ValueError, "not a spikefm corpus"),
        (lambda: train(toy_config(), out, progress=False, stop_after=0), ValueError, "stop_after must be"),
        (lambda: train(toy_config(), out, progress=False, stop_after=True), ValueError, "stop_after must be"),
        (lambda: train(toy_config(), out, progress=False, resume="yes"), TypeError, "resume must be True or False"),
        (lambda: train(toy_config(), "", progress=False), ValueError, "out_dir must be a non-empty path"),
        (lambda: loop_train(toy_config(eval_every=5), out, _NoValidateFamily(), progress=False),
         ValueError, "has no validate"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match) as err:
            call()
        assert "\n" not in str(err.value)
        assert not out.exists(), match
    monkeypatch.setenv("SPIKEFM_PEAK_FLOPS", "nan")
    with pytest.raises(ValueError, match="SPIKEFM_PEAK_FLOPS must be a positive number"):
        train(toy_config(), out, progress=False)
    assert not out.exists()


def test_run_folder_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for out in (blocker, blocker / "run"):
        with pytest.raises(ValueError) as err:
            train(toy_config(steps=4), out, progress=False)
        assert str(err.value) == f"cannot create the run folder {out}: {blocker} is a file, not a " \
                                 "folder; choose another --out"
    assert blocker.read_text() == "mine"


def test_existing_runs_are_never_overwritten(tmp_path, capsys):
    cfg = toy_config(steps=4)
    first = train(cfg, tmp_path / "done", progress=False)
    state = folder_state(tmp_path / "done")
    capsys.readouterr()
    again = train(cfg, tmp_path / "done", progress=False, resume=True)
    assert capsys.readouterr().err.splitlines() == [
        f"spikefm: {tmp_path / 'done'} is already finished (step 4 of 4, model.safetensors exported); "
        "nothing to do"]
    assert again["already_finished"] and again["step"] == 4 and not again["stopped_early"]
    assert (again["loss"], again["tokens"], again["num_params"]) == (first["loss"], first["tokens"], first["num_params"])
    with pytest.raises(ValueError, match="already holds a finished run"):
        train(cfg, tmp_path / "done", progress=False)
    with pytest.raises(ValueError, match="finished at step 4; continuing it to train.steps=8 would replace"):
        train(toy_config(steps=8), tmp_path / "done", progress=False, resume=True)
    with pytest.raises(ValueError, match="'model' differs"):
        train(apply_overrides(cfg, ["model.dim=16"]), tmp_path / "done", progress=False, resume=True)
    assert folder_state(tmp_path / "done") == state

    # killed before its first checkpoint: config.json and metrics exist, no checkpoint
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text((tmp_path / "done" / "config.json").read_text())
    (tmp_path / "early" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
    with pytest.raises(ValueError, match=r"already holds a training run \(config.json, metrics.jsonl\)"):
        train(cfg, tmp_path / "early", progress=False)
    train(cfg, tmp_path / "early", progress=False, resume=True)  # restarts it from step 0
    np.testing.assert_array_equal(column(train_rows(tmp_path / "early"), "loss"),
                                  column(train_rows(tmp_path / "done"), "loss"))

    # a folder holding someone else's config.json
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="already holds a training run"):
        train(cfg, tmp_path / "hf", progress=False)
    with pytest.raises(ValueError, match="is not a spikefm run description"):
        train(cfg, tmp_path / "hf", progress=False, resume=True)
    assert (tmp_path / "hf" / "config.json").read_text() == '{"model_type": "llama"}'


def _damage(ckpt: Path, how: str) -> None:
    if how == "truncate":
        data = (ckpt / "model.pt").read_bytes()
        (ckpt / "model.pt").write_bytes(data[: len(data) // 2])
    elif how == "flip":  # same size, one bit changed
        data = bytearray((ckpt / "optim.pt").read_bytes())
        data[len(data) // 2] ^= 1
        (ckpt / "optim.pt").write_bytes(bytes(data))
    elif how == "delete":
        (ckpt / "rank_00000.pt").unlink()
    elif how == "manifest":
        (ckpt / "manifest.json").write_text('{"format": 1, "files": ')


@pytest.mark.parametrize("how, problem", [
    ("truncate", "model.pt has {half} bytes, the manifest says {full}"),
    ("flip", "optim.pt does not match its sha256 in the manifest"),
    ("delete", "rank_00000.pt is missing"),
    ("manifest", "manifest.json is not valid JSON"),
])
def test_resume_falls_back_from_a_damaged_checkpoint_and_still_matches(tmp_path, capsys, how, problem):
    cfg = toy_config(steps=12, ckpt_every=4, ckpt_keep=3)
    cfg = dataclasses.replace(cfg, model=ToyModelConfig(dropout=0.2))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=10)
    ckpts = tmp_path / "cut" / "checkpoints"
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [4, 8, 10]
    full_size = (ckpts / "step_00000010" / "model.pt").stat().st_size
    _damage(ckpts / "step_00000010", how)
    assert checkpoint_problem(ckpts / "step_00000010").startswith(
        problem.format(half=full_size // 2, full=full_size))
    capsys.readouterr()
    resumed = train(cfg, tmp_path / "cut", progress=False, resume=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"spikefm: warning: checkpoint step_00000010 is damaged ({problem.format(half=full_size // 2, full=full_size)}")
    assert err[0].endswith("moved it to checkpoints/damaged-step_00000010; resuming from step_00000008")
    assert resumed["resumed_from"] == 8 and resumed["step"] == 12
    assert (ckpts / "damaged-step_00000010").is_dir()  # kept for inspection, not deleted
    a, b = train_rows(tmp_path / "full"), train_rows(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(1, 13))
    for key in ("loss", "grad_norm", "tokens"):
        np.testing.assert_array_equal(column(b, key), column(a, key), err_msg=key)
    assert same_weights(tmp_path / "full", tmp_path / "cut")
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "damaged-step_00000010", "step_00000004", "step_00000008", "step_00000012"]


def test_rewriting_checkpoint_configs_keeps_them_verified_and_skips_damaged_ones(tmp_path):
    from spikefm.train.checkpoint import rewrite_checkpoint_configs

    cfg = toy_config(steps=12, ckpt_every=4, ckpt_keep=3)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=10)
    ckpts = tmp_path / "cut" / "checkpoints"
    _damage(ckpts / "step_00000004", "flip")
    before = (ckpts / "step_00000004" / "config.json").read_bytes()
    n = rewrite_checkpoint_configs(tmp_path / "cut", lambda info: {**info, "note": "edited"})
    assert n == 2  # steps 8 and 10; the damaged step 4 untouched
    assert (ckpts / "step_00000004" / "config.json").read_bytes() == before
    for step in (8, 10):
        ck = ckpts / f"step_{step:08d}"
        assert json.loads((ck / "config.json").read_text())["note"] == "edited"
        assert checkpoint_problem(ck) is None  # the manifest records the new file
    # a resumed run from the rewritten checkpoint is still the uninterrupted run
    resumed = train(cfg, tmp_path / "cut", progress=False, resume=True)
    assert resumed["resumed_from"] == 10
    np.testing.assert_array_equal(column(train_rows(tmp_path / "cut"), "loss"),
                                  column(train_rows(tmp_path / "full"), "loss"))


def test_no_intact_checkpoint_left_restarts_from_zero(tmp_path, capsys):
    cfg = toy_config(steps=6, ckpt_every=3, ckpt_keep=1)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=3)
    _damage(tmp_path / "cut" / "checkpoints" / "step_00000003", "truncate")
    capsys.readouterr()
    assert train(cfg, tmp_path / "cut", progress=False, resume=True)["resumed_from"] is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("no intact checkpoint is left, so the run starts from step 0")
    np.testing.assert_array_equal(column(train_rows(tmp_path / "cut"), "loss"),
                                  column(train_rows(tmp_path / "full"), "loss"))
    assert same_weights(tmp_path / "full", tmp_path / "cut")


def test_checkpoint_without_manifest_from_older_versions_still_resumes(tmp_path):
    cfg = toy_config(steps=6, ckpt_every=3)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=3)
    (tmp_path / "cut" / "checkpoints" / "step_00000003" / "manifest.json").unlink()
    assert checkpoint_problem(tmp_path / "cut" / "checkpoints" / "step_00000003") is None
    assert train(cfg, tmp_path / "cut", progress=False, resume=True)["resumed_from"] == 3
    assert same_weights(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "x" / "step_00000001").mkdir(parents=True)
    assert checkpoint_problem(tmp_path / "x" / "step_00000001") == (
        "no manifest.json and model.pt, optim.pt, trainer.pt, rank_00000.pt missing")


def test_token_counter_after_resume_from_a_checkpoint_between_log_rows(tmp_path):
    cfg = toy_config(steps=12, log_every=5)
    tokens_per_step = 8 * 16  # batch x sequence length
    full = train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_after=7)  # checkpoint at 7: not a log step
    trainer = torch.load(tmp_path / "cut" / "checkpoints" / "step_00000007" / "trainer.pt", weights_only=True)
    assert trainer["tokens"] == 7 * tokens_per_step
    resumed = train(cfg, tmp_path / "cut", progress=False, resume=True)
    rows = train_rows(tmp_path / "cut")
    assert [r["step"] for r in rows] == [5, 7, 10, 12]
    assert [r["tokens"] for r in rows] == [s * tokens_per_step for s in (5, 7, 10, 12)]
    assert [r["tokens"] for r in train_rows(tmp_path / "full")] == [s * tokens_per_step for s in (5, 10, 12)]
    assert resumed["tokens"] == full["tokens"] == 12 * tokens_per_step


def test_diverging_loss_is_a_one_line_value_error(tmp_path):
    cfg = apply_overrides(toy_config(steps=20), ["optim.lr=1e12", "optim.grad_clip=0"])
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path, progress=False)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert str(err.value).startswith("the loss or gradient norm was NaN or infinite at step ") and \
        "lower optim.lr" in str(err.value)


def test_a_diverged_run_leaves_only_finite_checkpoints_so_its_advice_works(tmp_path, monkeypatch):
    """The loss was checked on logging steps only: a NaN update between them (here one bad batch,
    step 5) was saved in every later checkpoint, and the message's fix (resume from the last
    checkpoint) failed at the same step, every time."""
    calls = {"n": 0}
    real_loss = ToyFamily.loss

    def one_bad_batch(self, model, batch, cfg):
        loss, stats = real_loss(self, model, batch, cfg)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), stats

    cfg = toy_config(steps=20, log_every=10, ckpt_every=1)
    with monkeypatch.context() as m:
        m.setattr(ToyFamily, "loss", one_bad_batch)
        with pytest.raises(TrainingDiverged) as err:
            train(cfg, tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("the loss or gradient norm was NaN or infinite at step 5 (found at "
                                               "step 5); lower optim.lr or check the data, then resume")
    saved = list_checkpoints(tmp_path)
    assert saved and saved[-1][0] == 4
    for _, ckpt in saved:
        weights = torch.load(ckpt / "model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), ckpt
    assert train(cfg, tmp_path, resume=True, progress=False)["step"] == 20
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train_rows(tmp_path))
    # without checkpoints it is found at the next logging step, and the message names the bad step
    calls["n"] = 0
    with monkeypatch.context() as m:
        m.setattr(ToyFamily, "loss", one_bad_batch)
        with pytest.raises(TrainingDiverged, match=r"^the loss or gradient norm was NaN or infinite at step 5 "
                                                   r"\(found at step 10\)"):
            train(toy_config(steps=20, log_every=10), tmp_path / "no_ckpt", progress=False)


def test_resume_from_a_checkpoint_past_the_new_steps_is_refused(tmp_path):
    train(toy_config(steps=8, ckpt_every=3), tmp_path, progress=False, stop_after=6)
    with pytest.raises(ValueError, match=r"step_00000006: it is at step 6, past train.steps=4; give --steps 6 or more$"):
        train(toy_config(steps=4, ckpt_every=3), tmp_path, resume=True, progress=False)
    assert train(toy_config(steps=8, ckpt_every=3), tmp_path, resume=True, progress=False)["step"] == 8


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_stopped_before_its_first_step_does_not_lock_its_folder(tmp_path, capsys, resume):
    """A run that failed in step 1 (e.g. a bad model setting) left config.json and an empty
    metrics.jsonl; the corrected command was then refused ("already holds a training run"), and
    with --resume too ("'model' differs"): only deleting the folder by hand helped."""
    train(toy_config(steps=4), tmp_path / "done", progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((tmp_path / "done" / "config.json").read_bytes())
    (run / "metrics.jsonl").write_text("")
    capsys.readouterr()
    fixed = apply_overrides(toy_config(steps=4), ["model.dim=16"])
    assert train(fixed, run, resume=resume, progress=False)["step"] == 4
    err = capsys.readouterr().err.splitlines()
    assert err == [f"spikefm: warning: {run} holds a run that stopped before logging a step or saving a checkpoint; starting anew"]
    assert json.loads((run / "config.json").read_text())["config"]["model"]["dim"] == 16
    # someone else's config.json is not taken for one: the folder is still refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError):
        train(fixed, other, resume=resume, progress=False)
    assert (other / "config.json").read_text() == '{"model_type": "bert"}'


def test_resuming_a_finished_run_with_other_settings_says_they_change_nothing(tmp_path, capsys):
    """A finished run resumed with another lr printed "they apply from the checkpoint's step on"
    next to "nothing to do"; it now says the settings change nothing."""
    train(toy_config(steps=4), tmp_path, progress=False)
    capsys.readouterr()
    summary = train(apply_overrides(toy_config(steps=4), ["optim.lr=1e-3"]), tmp_path, resume=True, progress=False)
    assert summary["step"] == 4
    err = capsys.readouterr().err.splitlines()
    assert err == [f"spikefm: warning: {tmp_path} is finished; the changed settings (optim.lr) change nothing, "
                   "since no step is left to train",
                   f"spikefm: {tmp_path} is already finished (step 4 of 4, model.safetensors exported); nothing to do"]


def test_a_longer_resume_with_the_default_warm_up_says_the_warm_up_changed(tmp_path, capsys):
    cfg = apply_overrides(toy_config(steps=20, ckpt_every=5), ["optim.warmup_steps=none"])
    train(cfg, tmp_path, progress=False, stop_after=5)
    capsys.readouterr()
    train(apply_overrides(cfg, ["train.steps=40"]), tmp_path, resume=True, progress=False)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("with changed settings: train.steps; they apply from the checkpoint's step on (the lr "
                         "is the one their schedule gives there; the warm-up is now a tenth of 40 steps)")
    lr = column(train_rows(tmp_path), "lr")
    np.testing.assert_allclose(lr[5:], [3e-3 * lr_factor(s, 4, 40, 0.0) for s in range(5, 40)], rtol=1e-12)
