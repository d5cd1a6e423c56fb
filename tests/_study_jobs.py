"""Trivial job functions for the executor tests (importable by pool and Ray workers)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _log_call(spec: dict, job_dir: Path) -> None:
    calls = Path(spec["calls"])
    calls.mkdir(parents=True, exist_ok=True)
    with open(calls / f"{job_dir.name}.{os.getpid()}.{time.monotonic_ns()}", "w") as f:
        f.write(job_dir.name)


def square_plus_deps(spec: dict, job_dir: Path, root: Path) -> dict:
    """x**2 plus the values of the jobs it depends on (read from their result files)."""
    _log_call(spec, job_dir)
    (job_dir / "work.txt").write_text("partial")
    total = spec["x"] ** 2
    for dep in spec.get("deps", []):
        total += json.loads((root / dep / "result.json").read_text())["result"]["value"]
    return {"value": total, "threads_env": os.environ.get("OMP_NUM_THREADS")}


def fail(spec: dict, job_dir: Path, root: Path) -> dict:
    _log_call(spec, job_dir)
    raise ValueError(f"job {spec['x']} fails on purpose")


def wait_for_gate(spec: dict, job_dir: Path, root: Path) -> dict:
    """Records its pid, then waits until the gate file exists (the kill -9 test never creates it
    before killing the driver)."""
    _log_call(spec, job_dir)
    Path(spec["pid_file"]).write_text(str(os.getpid()))
    while not Path(spec["gate"]).exists():
        time.sleep(0.05)
    return {"value": spec["x"]}


def warn_then_square(spec: dict, job_dir: Path, root: Path) -> dict:
    """Warns ``spec["text"]`` (a RuntimeWarning), then returns x**2."""
    import warnings

    warnings.warn(spec["text"], RuntimeWarning)
    return {"value": spec["x"] ** 2}


def interrupted(spec: dict, job_dir: Path, root: Path) -> dict:
    """Stopped by Ctrl-C while it runs (in the driver's process: one local worker)."""
    (job_dir / "work.txt").write_text("partial")
    raise KeyboardInterrupt


def stopped_by_sigterm(spec: dict, job_dir: Path, root: Path) -> dict:
    """Stopped as Ray stops a worker when its driver ends: its SIGTERM handler raises SystemExit."""
    (job_dir / "work.txt").write_text("partial")
    raise SystemExit(1)


def worker_killed(spec: dict, job_dir: Path, root: Path) -> dict:
    """Its worker process is killed (as the system kills one out of memory)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return {"value": 0}


def warn_then_die(spec: dict, job_dir: Path, root: Path) -> dict:
    """Warns ``spec["text"]``, then its worker dies (SIGKILL, as the system kills it for memory)."""
    import signal
    import warnings

    warnings.warn(spec["text"], RuntimeWarning)
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def warn_then_fail(spec: dict, job_dir: Path, root: Path) -> dict:
    import warnings

    warnings.warn(spec["text"], RuntimeWarning)
    raise ValueError("fails after its warning")
