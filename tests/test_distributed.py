"""The FSDP2 path: 2 CPU processes under torchrun with gloo, against a single process.

Runs by default wherever torch has gloo and localhost sockets work; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import toy_config  # noqa: E402

from spikefm.families import load_model, train  # noqa: E402
from spikefm.train.checkpoint import list_checkpoints  # noqa: E402
from conftest import torchrun_failure_report  # noqa: E402

TOY = Path(__file__).resolve().parent / "_toy_family.py"


def _free_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def _skip_reason() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if not dist.is_gloo_available():
        return "torch was built without the gloo backend"
    if _free_port() is None:
        return "cannot bind a localhost TCP port for the rendezvous"
    return None


pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


def torchrun(run_dir: Path, *args: str, nproc: int = 2, timeout: int = 120) -> str:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(TOY), str(run_dir), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        pytest.fail(f"{torchrun_failure_report(proc)}\n--- stdout ---\n{proc.stdout[-3000:]}")
    return proc.stdout


def losses(run_dir: Path, key: str = "loss") -> np.ndarray:
    with open(run_dir / "metrics.jsonl") as f:
        return np.array([json.loads(line)[key] for line in f if line.strip()])


def test_fsdp2_gloo_two_ranks_checkpoint_resume_matches_single_process(tmp_path):
    steps = 8
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(toy_config(steps=steps), tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(before)

    # same global batch (8): 2 ranks x 2 micro-steps x 2 sequences, with activation checkpointing,
    # stopped at step 4 (checkpoint), then resumed by a fresh torchrun launch
    run_dir = tmp_path / "fsdp"
    sets = ["--set", f"train.steps={steps}", "--set", "train.grad_accum=2",
            "--set", "train.activation_checkpointing=true"]
    out = torchrun(run_dir, "--stop-after", "4", *sets)
    first = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
    assert first["world_size"] == 2 and first["stopped_early"] and first["step"] == 4
    (ckpt_step, ckpt), = list_checkpoints(run_dir)
    assert ckpt_step == 4
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.json", "model.pt", "optim.pt", "rank_00000.pt", "rank_00001.pt", "trainer.pt"]
    loader_states = [torch.load(ckpt / f"rank_{r:05d}.pt", weights_only=True)["loader"] for r in (0, 1)]
    assert loader_states == [{"micro_index": 8}, {"micro_index": 8}]  # 4 steps x 2 micro-steps

    out = torchrun(run_dir, "--resume", *sets)
    second = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
    assert second["resumed_from"] == 4 and second["step"] == steps and not second["stopped_early"]

    info = json.loads((run_dir / "config.json").read_text())
    assert info["world_size"] == 2
    np.testing.assert_array_equal(losses(run_dir, "step"), np.arange(1, steps + 1))
    np.testing.assert_allclose(losses(run_dir), losses(tmp_path / "single"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(losses(run_dir, "grad_norm"), losses(tmp_path / "single", "grad_norm"), rtol=1e-4)
    np.testing.assert_array_equal(losses(run_dir, "tokens"), losses(tmp_path / "single", "tokens"))

    sharded = load_model(run_dir).state_dict()
    single = load_model(tmp_path / "single").state_dict()
    assert sharded.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
