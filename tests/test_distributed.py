"""The FSDP2 path: 2 CPU processes under torchrun with gloo, against a single process.

Runs by default wherever torch has gloo and localhost sockets work; skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import ToyModelConfig, toy_config  # noqa: E402

from spikefm.families import load_model, train  # noqa: E402
from spikefm.fileio import folder_lock  # noqa: E402
from spikefm.train.checkpoint import list_checkpoints  # noqa: E402
from conftest import torchrun_failure_report  # noqa: E402
from test_train_stack import folder_state  # noqa: E402

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


def torchrun_failing(run_dir: Path, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """A torchrun launch that must fail (every rank, quickly: no rank left waiting)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(TOY), str(run_dir), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc


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
    names = ["config.json", "model.pt", "optim.pt", "rank_00000.pt", "rank_00001.pt", "trainer.pt"]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(names + ["manifest.json"])
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["step"] == 4 and sorted(manifest["files"]) == names
    for name in names:  # both ranks' files are recorded with their true size and hash
        data = (ckpt / name).read_bytes()
        assert manifest["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    loader_states = [torch.load(ckpt / f"rank_{r:05d}.pt", weights_only=True)["loader"] for r in (0, 1)]
    assert loader_states == [{"micro_index": 8}, {"micro_index": 8}]  # 4 steps x 2 micro-steps

    # One process cannot continue a two-process run exactly: refused in one line, nothing changed.
    before = folder_state(run_dir)
    with pytest.raises(ValueError) as err:
        train(toy_config(steps=steps, grad_accum=2, activation_checkpointing=True), run_dir,
              resume=True, progress=False)
    assert "written by 2 process(es) and this run has 1" in str(err.value)
    assert "torchrun --nproc_per_node 2" in str(err.value) and "\n" not in str(err.value)
    assert folder_state(run_dir) == before

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


def test_fsdp2_resume_with_a_parameter_no_batch_had_reached_matches_single_process(tmp_path):
    """Two ranks, checkpoint at step 4 where the toy's ``late`` parameter (in the loss from step 6)
    has no optimizer state on any rank; the resumed two-rank run equals one process throughout."""
    steps, sets = 8, ["--set", "train.steps=8", "--set", "model.late_from_step=6"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(dataclasses.replace(toy_config(steps=steps), model=ToyModelConfig(late_from_step=6)),
              tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(before)
    run_dir = tmp_path / "fsdp"
    torchrun(run_dir, "--stop-after", "4", *sets)
    (_, ckpt), = list_checkpoints(run_dir)
    assert torch.load(ckpt / "trainer.pt", weights_only=True)["params_without_optimizer_state"] == ["late"]
    out = torchrun(run_dir, "--resume", *sets)
    assert json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])["resumed_from"] == 4
    np.testing.assert_allclose(losses(run_dir), losses(tmp_path / "single"), rtol=0, atol=1e-5)
    sharded, single = load_model(run_dir).state_dict(), load_model(tmp_path / "single").state_dict()
    assert not torch.equal(single["late"], torch.ones(3))
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp2_resume_from_a_checkpoint_saved_after_validation_matches_single_process(tmp_path):
    """Validation's no-grad forward left FSDP2's root and last block unsharded; the checkpoint then
    found their parameters (the unsharded tensors) missing from the optimizer's state, recorded
    them as never updated, and the resumed run dropped their Adam moments: losses drifted from
    the first step after the resume. Validating at the checkpoint step must change nothing."""
    steps, sets = 8, ["--set", "train.steps=8", "--set", "train.eval_every=4"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(toy_config(steps=steps, eval_every=4), tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(before)
    run_dir = tmp_path / "fsdp"
    torchrun(run_dir, "--stop-after", "4", *sets)
    (_, ckpt), = list_checkpoints(run_dir)
    assert torch.load(ckpt / "trainer.pt", weights_only=True)["params_without_optimizer_state"] == []
    torchrun(run_dir, "--resume", *sets)

    def rows(run, key):
        return [(r["step"], r[key]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if key in r]

    # validation ran at steps 4 and 8 (each rank scores its own share, so its value is not one
    # process's); training is the same as one process's throughout
    assert [s for s, _ in rows(run_dir, "eval/val_loss")] == [4, 8]
    got, want = rows(run_dir, "loss"), rows(tmp_path / "single", "loss")
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, steps + 1))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=0, atol=1e-5)
    sharded, single = load_model(run_dir).state_dict(), load_model(tmp_path / "single").state_dict()
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


# slow (14 s): the two-rank FSDP2 runs of the default suite start torchrun
@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_naming_its_step_and_saves_no_checkpoint_after_it(tmp_path):
    """The first non-finite step is found where the loop syncs (a logging step, a checkpoint);
    every rank names it (rank 0, whose error the CLI prints, said only 'on another rank'), and no
    checkpoint holds the update it made."""
    proc = torchrun_failing(tmp_path / "run", "--set", "model.nan_on_rank1_at_step=3", "--set", "train.ckpt_every=2",
                            "--set", "train.log_every=10", "--set", "train.steps=8")
    said = [line for line in proc.stderr.splitlines() if "NaN or infinite" in line]
    assert len(said) >= 2 and all("NaN or infinite at step 3 (found at step 4)" in line for line in said), \
        proc.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_torchrun_refusals_end_every_rank_at_once(tmp_path):
    """Rank 0 decides (lock, checkpoint, world size) and tells the others: a refusal on rank 0
    must not leave rank 1 waiting in a collective until a timeout."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(toy_config(steps=4), tmp_path / "one", progress=False, stop_after=2)
    finally:
        torch.set_num_threads(before)
    state = folder_state(tmp_path / "one")

    t0 = time.monotonic()
    proc = torchrun_failing(tmp_path / "one", "--resume", "--set", "train.steps=4")
    assert "written by 1 process(es) and this run has 2" in proc.stderr, proc.stderr[-3000:]
    assert "one process, without torchrun" in proc.stderr
    assert folder_state(tmp_path / "one") == state

    with folder_lock(tmp_path / "one", what="training run"):
        proc = torchrun_failing(tmp_path / "one", "--resume", "--set", "train.steps=4")
    assert f"in use by another process (PID {os.getpid()}" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(tmp_path / "one") == state
    assert time.monotonic() - t0 < 120  # not a collective timeout (30 min by default)


def _spikefm_torchrun(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "spikefm.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_spikefm_train_under_torchrun_prints_once_and_refuses_a_small_corpus_on_every_rank(tmp_path):
    """`torchrun -m spikefm.cli train` printed its summary once per process; and with fewer row
    groups than processes rank 0 refused while rank 1, left waiting, died asking for a bug report
    (now: fewer rows than processes is refused on every rank; fewer row groups shares rows)."""
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=2, seed=0, duration_s=30.0, units_range=(20, 22), progress=False)
    build_corpus([str(tmp_path / "nwb")], tmp_path / "corpus", BuildConfig(test_fraction=0.0, max_row_tokens=1000),
                 progress=False)  # rows of <= 1,000 tokens: more than 16 rows, so several row groups
    common = ["train", "--model", "ar", "--preset", "tiny", "--data", str(tmp_path / "corpus"), "--steps", "2",
              "--set", "train.batch_size=2", "--set", "data.seq_len=64", "--set", "train.precision=fp32",
              "--set", "train.device=cpu", "--quiet"]
    ok = _spikefm_torchrun(*common, "--out", str(tmp_path / "run"))
    assert ok.returncode == 0, torchrun_failure_report(ok)
    assert ok.stdout.count("trained 2 steps") == 1, ok.stdout
    build_corpus([str(tmp_path / "nwb" / "sub-ibl01" / "sub-ibl01_ses-000.nwb")], tmp_path / "one",
                 BuildConfig(test_fraction=0.0), progress=False)  # one session: one row
    bad = _spikefm_torchrun(*[a if a != str(tmp_path / "corpus") else str(tmp_path / "one") for a in common],
                            "--out", str(tmp_path / "run1"))
    assert bad.returncode != 0
    assert "has 1 rows, fewer than world_size=2 (each rank reads rows of its own); use fewer " \
           "ranks, or rebuild the corpus with more, shorter rows (a smaller --max-row-tokens)" in bad.stderr, \
        bad.stderr[-3000:]
    assert "internal error" not in bad.stderr and "report it" not in bad.stderr, bad.stderr[-3000:]
    # said once for the job (rank 1 printed the same line with its rank), and the run folder this
    # call made is gone again (it was left holding only its lock file)
    assert bad.stderr.count("spikefm: error:") == 1 and "(rank 1)" not in bad.stderr, bad.stderr[-3000:]
    assert not (tmp_path / "run1").exists()
    # checked before the ranks connect: a batch the ranks do not divide, once
    odd = _spikefm_torchrun(*[a if a != "train.batch_size=2" else "train.batch_size=3" for a in common],
                            "--out", str(tmp_path / "odd"))
    assert odd.returncode != 0 and odd.stderr.count("spikefm: error: train.batch_size (3) must be divisible") == 1, \
        odd.stderr[-3000:]
    assert odd.stderr.count("spikefm: error:") == 1 and not (tmp_path / "odd").exists()
    # commands that do not shard are refused under torchrun (eval printed its table once per rank)
    ev = _spikefm_torchrun("eval", str(tmp_path / "run"), "--data", str(tmp_path / "corpus"), "--out",
                           str(tmp_path / "ev.json"))
    assert ev.returncode != 0 and ev.stdout.count("cross-entropy") == 0 and not (tmp_path / "ev.json").exists()
    assert ev.stderr.count("spikefm: error: spikefm eval runs in one process, and this is one of the 2 processes "
                           "of a torchrun job; run it without torchrun") == 1, ev.stderr[-3000:]
    # two sessions at the default --max-row-tokens: two rows in one row group, which was refused
    # (each rank read whole row groups); the ranks now share its rows
    build_corpus([str(tmp_path / "nwb")], tmp_path / "two", BuildConfig(test_fraction=0.0), progress=False)
    two = _spikefm_torchrun(*[a if a != str(tmp_path / "corpus") else str(tmp_path / "two") for a in common],
                            "--out", str(tmp_path / "run2"))
    assert two.returncode == 0, torchrun_failure_report(two)
    assert two.stdout.count("trained 2 steps") == 1, two.stdout
    # a token cache rank 0 cannot make (here .cache is a file): rank 1 waited for it and then said a
    # second, wrong line (a peer died; use --resume), and the run folder was left holding its lock
    (tmp_path / "two" / ".cache").rename(tmp_path / "two_cache")
    (tmp_path / "two" / ".cache").write_text("not a folder")
    nc = _spikefm_torchrun(*[a if a != str(tmp_path / "corpus") else str(tmp_path / "two") for a in common],
                           "--out", str(tmp_path / "run3"))
    assert nc.returncode != 0 and nc.stderr.count("spikefm: error:") == 1, nc.stderr[-3000:]
    assert "(rank 1)" not in nc.stderr and "--resume" not in nc.stderr, nc.stderr[-3000:]
    assert not (tmp_path / "run3").exists()
    # a loss that turns NaN: every rank stops at the same step with the same words, said once
    eight = [a if a != "2" else "8" for a in common]  # --steps 8 (a --set train.steps=8 beside --steps 2 is refused)
    nan = _spikefm_torchrun(*eight, "--out", str(tmp_path / "nan"), "--set", "optim.lr=1e6", "--set",
                            "optim.grad_clip=0", "--set", "train.log_every=1")
    said = [line for line in nan.stderr.splitlines() if "NaN or infinite" in line]
    assert nan.returncode != 0 and len(said) == 1 and said[0].startswith("spikefm: error: the loss or gradient"), \
        nan.stderr[-3000:]
