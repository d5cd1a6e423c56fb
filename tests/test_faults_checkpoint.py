"""Fault injection into training: a run is interrupted at every file operation of checkpoint
saving and of the final export, and the run folder must hold the old state or the new state,
never a mix; ``resume=True`` must then give exactly the uninterrupted run (every logged loss and
the exported weights bit-identical).

File operations counted, in the order the run performs them: ``os.replace`` (every atomic write,
the checkpoint folder rename, the rename of an old checkpoint before its deletion), the writes of
the checkpoint's ``.pt`` files (``checkpoint._save``) and ``shutil.rmtree``. Two kinds of fault:

* in process: the k-th operation raises instead of running, for every k;
* a real ``kill -9``: a subprocess (this file run as a script) SIGKILLs itself at chosen
  operations, so nothing of Python's cleanup runs (temporaries stay behind).

"State" of the folder = (newest checkpoint step, whether model.safetensors exists). Checked after
each fault: every visible ``step_*`` checkpoint is intact (its manifest verifies) and equal to the
uninterrupted run's checkpoint of that step; the state is the one before the interrupted save (or
export) or the one after it; an existing model.safetensors holds the final weights.

    python tests/test_faults_checkpoint.py RUN_DIR --kill-at K   # the subprocess entry point
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _toy_family import ToyModelConfig, toy_config  # noqa: E402

import spikefm.train.checkpoint as ckpt_module  # noqa: E402
import spikefm.train.loop as loop_module  # noqa: E402
from spikefm.families import get as get_family, load_model  # noqa: E402
from spikefm.train.checkpoint import checkpoint_problem, list_checkpoints  # noqa: E402
from test_train_stack import one_torch_thread  # noqa: E402,F401  (autouse: one torch thread)

HERE = Path(__file__).resolve()
STEPS, CKPT_EVERY, KEEP = 6, 2, 2


def fault_config(keep: int = KEEP):
    cfg = toy_config(steps=STEPS, ckpt_every=CKPT_EVERY, ckpt_keep=keep)
    return dataclasses.replace(cfg, model=ToyModelConfig(dropout=0.2))  # RNG state matters


class InjectedFault(Exception):
    pass


class Injector:
    """Counts file operations; at operation number `fail_at` raises (or calls `on_fault`)."""

    def __init__(self, fail_at: int | None = None, on_fault=None) -> None:
        self.fail_at, self.on_fault = fail_at, on_fault
        self.count = 0
        self.phase: tuple[str, int | None] = ("start", None)
        self.log: list[tuple[int, str, tuple[str, int | None]]] = []
        self.before: dict[tuple[str, int | None], tuple] = {}

    def _wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            self.count += 1
            self.log.append((self.count, name, self.phase))
            if self.count == self.fail_at:
                if self.on_fault is not None:
                    self.on_fault()
                raise InjectedFault(f"{name} (operation {self.count}, {self.phase})")
            return fn(*args, **kwargs)
        return wrapped

    def _phase(self, name: str, fn):
        def wrapped(run_dir, *args, **kwargs):
            step = kwargs.get("step", args[0] if args and isinstance(args[0], int) else None)
            self.phase = (name, step)
            self.before[self.phase] = folder_state(Path(run_dir))
            try:
                return fn(run_dir, *args, **kwargs)
            finally:
                self.phase = ("loop", None)
        return wrapped

    def install(self, patch) -> "Injector":
        patch(os, "replace", self._wrap("os.replace", os.replace))
        patch(shutil, "rmtree", self._wrap("shutil.rmtree", shutil.rmtree))
        patch(ckpt_module, "_save", self._wrap("checkpoint._save", ckpt_module._save))
        patch(loop_module, "save_checkpoint", self._phase("save", loop_module.save_checkpoint))
        patch(loop_module, "export_model", self._phase("export", loop_module.export_model))
        return self


def folder_state(run_dir: Path) -> tuple[int | None, bool]:
    """(newest checkpoint step, model.safetensors exists)."""
    steps = [s for s, _ in list_checkpoints(run_dir)]
    return (max(steps) if steps else None), (run_dir / "model.safetensors").exists()


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(run_dir).state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, every checkpoint kept (for contents) and the operation log of the
    run under test's settings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference")
    try:
        mp = pytest.MonkeyPatch()
        try:
            injector = Injector().install(mp.setattr)
            loop_module.train(fault_config(), root / "run", get_family("toy"), progress=False)
        finally:
            mp.undo()
        loop_module.train(fault_config(keep=100), root / "all", get_family("toy"), progress=False)
        yield {
            "rows": metric_rows(root / "run"),
            "weights": weights(root / "run"),
            "model_pt": {s: torch.load(p / "model.pt", weights_only=True)
                         for s, p in list_checkpoints(root / "all")},
            "log": injector.log,
        }
    finally:
        torch.set_num_threads(threads)


def check_folder_after_fault(run_dir: Path, phase, before, reference) -> None:
    for step, path in list_checkpoints(run_dir):
        assert checkpoint_problem(path) is None, (phase, step)
        saved = torch.load(path / "model.pt", weights_only=True)
        ref = reference["model_pt"][step]
        assert saved.keys() == ref.keys() and all(torch.equal(saved[k], ref[k]) for k in ref)
    state = folder_state(run_dir)
    kind, step = phase
    if kind == "save":
        assert state in (before, (step, False)), (phase, before, state)
    elif kind == "export":
        assert state in (before, (STEPS, True)), (phase, before, state)
    else:  # between saves: whatever the last completed save left
        assert state[1] is False
    if state[1]:
        got = weights(run_dir)
        assert all(torch.equal(got[k], v) for k, v in reference["weights"].items())
    if (run_dir / "config.json").exists():
        json.loads((run_dir / "config.json").read_text())


def check_resume_equals_reference(run_dir: Path, reference) -> None:
    summary = loop_module.train(fault_config(), run_dir, get_family("toy"), progress=False, resume=True)
    assert summary["step"] == STEPS and not summary["stopped_early"]
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr", "tokens"):
        assert [r[key] for r in rows] == [r[key] for r in reference["rows"]], key
    got = weights(run_dir)
    assert got.keys() == reference["weights"].keys()
    assert all(torch.equal(got[k], v) for k, v in reference["weights"].items())
    assert [s for s, _ in list_checkpoints(run_dir)] == [4, 6]
    hidden = sorted(p.name for p in run_dir.rglob(".*") if p.name != ".spikefm.lock")
    assert hidden == [], hidden  # temporaries and half-deleted folders of the fault are gone


def run_with_fault(run_dir: Path, k: int, reference, monkeypatch) -> None:
    with monkeypatch.context() as mp:
        injector = Injector(fail_at=k).install(mp.setattr)
        with pytest.raises(InjectedFault):
            loop_module.train(fault_config(), run_dir, get_family("toy"), progress=False)
    kind_step = injector.log[k - 1][2]
    check_folder_after_fault(run_dir, kind_step, injector.before.get(kind_step), reference)
    check_resume_equals_reference(run_dir, reference)


def test_operation_log_covers_saves_retirement_and_export(reference):
    names = [(name, phase[0]) for _, name, phase in reference["log"]]
    saves = [phase for _, _, phase in reference["log"] if phase[0] == "save"]
    assert sorted({p[1] for p in saves}) == [2, 4, 6]
    assert ("checkpoint._save", "save") in names and ("os.replace", "save") in names
    assert ("shutil.rmtree", "save") in names  # the retirement of step 2 when step 6 is saved
    assert ("os.replace", "export") in names


def test_fault_at_every_file_operation_then_resume_is_exact(tmp_path, reference, monkeypatch):
    """25 operations for this config (about 8 s on 2 cores): each one fails in its own run."""
    for k in range(1, len(reference["log"]) + 1):
        run_with_fault(tmp_path / f"k{k}", k, reference, monkeypatch)


def _kill_points(log) -> dict[str, int]:
    """Operation numbers of a few places for a real kill -9."""
    def ops(phase, name):
        return [k for k, n, p in log if p == phase and n == name]

    return {
        "at the first write of the run (config.json)": 1,
        "between two .pt writes of a save": ops(("save", 4), "checkpoint._save")[2],
        "at the rename of the checkpoint folder": ops(("save", 4), "os.replace")[-1],
        "in the deletion of an old checkpoint": ops(("save", 6), "shutil.rmtree")[-1],
        "at the rename of the exported model": ops(("export", 6), "os.replace")[-1],
    }


# slow (27 s): test_fault_at_every_file_operation_then_resume_is_exact covers the default run
@pytest.mark.slow
def test_kill_9_at_file_operations_then_resume_is_exact(tmp_path, reference):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for what, k in _kill_points(reference["log"]).items():
        run_dir = tmp_path / f"kill{k}"
        proc = subprocess.run([sys.executable, str(HERE), str(run_dir), "--kill-at", str(k)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (what, proc.stdout[-1000:], proc.stderr[-2000:])
        phase = tuple(json.loads((run_dir.parent / f"kill{k}.phase").read_text()))
        before = tuple(json.loads((run_dir.parent / f"kill{k}.before").read_text()))
        check_folder_after_fault(run_dir, phase, before, reference)
        check_resume_equals_reference(run_dir, reference)


def _main() -> None:
    """Train the fault config, SIGKILLing this process at file operation --kill-at."""
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--kill-at", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    injector = Injector(fail_at=args.kill_at)

    def die() -> None:
        phase = injector.phase
        (run_dir.parent / f"{run_dir.name}.phase").write_text(json.dumps(list(phase)))
        before = injector.before.get(phase, folder_state(run_dir))
        (run_dir.parent / f"{run_dir.name}.before").write_text(json.dumps(list(before)))
        os.kill(os.getpid(), signal.SIGKILL)

    injector.on_fault = die

    def setattr_(obj, name, value):
        setattr(obj, name, value)

    injector.install(setattr_)
    loop_module.train(fault_config(), run_dir, get_family("toy"), progress=False)
    print("finished without reaching the kill point", flush=True)


if __name__ == "__main__":
    _main()
