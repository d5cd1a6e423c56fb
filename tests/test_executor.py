"""Jobs and executors (spikefm.experiments.jobs): ids, dependencies, resume, failures, the process
pool, kill -9 of the driver, and a local Ray instance giving the same results."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spikefm.experiments.jobs import (JobsFailed, LocalExecutor, default_threads, is_done, job_result,  # noqa: E402
                                      make_executor, make_job, run_job, run_jobs)

SQUARE = "_study_jobs:square_plus_deps"
FAIL = "_study_jobs:fail"
GATE = "_study_jobs:wait_for_gate"


def _calls(calls: Path, job_id: str) -> int:
    return len(list(calls.glob(f"{job_id}.*"))) if calls.exists() else 0


def _chain(calls: Path) -> list:
    """a=1, b=2, c = 3**2 + a + b, d = 4**2 + c: values 1, 4, 14, 30."""
    a = make_job(SQUARE, {"x": 1, "calls": str(calls)})
    b = make_job(SQUARE, {"x": 2, "calls": str(calls)})
    c = make_job(SQUARE, {"x": 3, "calls": str(calls), "deps": [a.id, b.id]}, deps=[a.id, b.id])
    d = make_job(SQUARE, {"x": 4, "calls": str(calls), "deps": [c.id]}, deps=[c.id])
    return [d, c, b, a]  # listed before their dependencies on purpose


def test_job_ids_follow_the_spec():
    a = make_job("pretrain", {"x": 1, "y": [1, 2]})
    assert a.id == make_job("pretrain", {"y": [1, 2], "x": 1}).id  # key order does not matter
    assert a.id != make_job("pretrain", {"x": 2, "y": [1, 2]}).id
    assert a.id != make_job("finetune", {"x": 1, "y": [1, 2]}).id
    assert a.id.startswith("pretrain-") and len(a.id) == len("pretrain-") + 12
    with pytest.raises(ValueError, match="plain JSON"):
        make_job("pretrain", {"x": float("nan")})
    with pytest.raises(ValueError, match="job kind"):
        make_job("nonsense", {})


def test_dependencies_resume_and_no_rerun(tmp_path):
    calls, root = tmp_path / "calls", tmp_path / "jobs"
    jobs = _chain(calls)
    records = run_jobs(jobs, root, LocalExecutor(1), progress=False, log=lambda s: None)
    values = {j.spec["x"]: records[j.id]["result"]["value"] for j in jobs}
    assert values == {1: 1, 2: 4, 3: 9 + 1 + 4, 4: 16 + 14}
    rec = job_result(root, jobs[0].id)
    assert rec["spec"] == jobs[0].spec and rec["kind"] == SQUARE
    assert set(rec["versions"]) >= {"spikefm", "python", "torch", "numpy"}
    assert rec["timings"]["wall_s"] >= 0 and rec["timings"]["threads"] >= 1
    # a second call runs nothing and returns the same records
    again = run_jobs(jobs, root, LocalExecutor(1), progress=False, log=lambda s: None)
    assert again == records
    assert all(_calls(calls, j.id) == 1 for j in jobs)
    # a job interrupted before its result (folder with partial files): cleared and run again
    (root / jobs[0].id / "result.json").unlink()
    (root / jobs[0].id / "stale.txt").write_text("left by a killed run")
    third = run_jobs(jobs, root, LocalExecutor(1), progress=False, log=lambda s: None)
    assert _calls(calls, jobs[0].id) == 2 and all(_calls(calls, j.id) == 1 for j in jobs[1:])
    assert not (root / jobs[0].id / "stale.txt").exists()
    assert third[jobs[0].id]["result"] == records[jobs[0].id]["result"]


def test_quiet_prints_no_job_lines_but_failures_and_reuse(tmp_path):
    """--quiet (progress=False) printed a line per finished job; off a terminal those lines stand
    in for the bar, so only a run with progress prints them."""
    calls = tmp_path / "calls"
    lines: list[str] = []
    run_jobs(_chain(calls), tmp_path / "quiet", LocalExecutor(1), progress=False, log=lines.append)
    assert lines == []
    run_jobs(_chain(calls), tmp_path / "shown", LocalExecutor(1), progress=True, log=lines.append)
    assert [ln.split(" done in ")[0][:5] for ln in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    lines.clear()
    run_jobs(_chain(calls), tmp_path / "quiet", LocalExecutor(1), progress=False, log=lines.append)
    assert lines == ["jobs: 4 of 4 jobs already finished (by an earlier run, or shared with an earlier step of this study); reused"]
    lines.clear()
    with pytest.raises(JobsFailed):
        run_jobs([make_job(FAIL, {"x": 7, "calls": str(calls)})], tmp_path / "f", LocalExecutor(1),
                 progress=False, log=lines.append)
    assert len(lines) == 1 and "failed: " in lines[0] and "fails on purpose" in lines[0]


def test_failure_keeps_independent_jobs_and_skips_dependents(tmp_path):
    calls, root = tmp_path / "calls", tmp_path / "jobs"
    bad = make_job(FAIL, {"x": 7, "calls": str(calls)})
    after = make_job(SQUARE, {"x": 2, "calls": str(calls)}, deps=[bad.id])
    other = make_job(SQUARE, {"x": 3, "calls": str(calls)})
    with pytest.raises(JobsFailed) as info:
        run_jobs([bad, after, other], root, LocalExecutor(1), progress=False, log=lambda s: None)
    assert set(info.value.failed) == {bad.id, after.id}
    assert "fails on purpose" in str(info.value) and "\n" not in str(info.value)
    assert "fails on purpose" in (root / bad.id / "error.txt").read_text()
    assert is_done(root, other.id) and not is_done(root, bad.id) and _calls(calls, after.id) == 0


def test_unknown_dependency_is_refused(tmp_path):
    orphan = make_job(SQUARE, {"x": 1, "calls": str(tmp_path)}, deps=["pretrain-000000000000"])
    with pytest.raises(ValueError, match="needs job pretrain-000000000000"):
        run_jobs([orphan], tmp_path / "jobs", LocalExecutor(1), progress=False)


def test_process_pool_equals_inline_and_sets_threads(tmp_path):
    inline = run_jobs(_chain(tmp_path / "c1"), tmp_path / "a", LocalExecutor(1, threads=1), progress=False,
                      log=lambda s: None)
    pooled = run_jobs(_chain(tmp_path / "c1"), tmp_path / "b", LocalExecutor(2, threads=1), progress=False,
                      log=lambda s: None)
    assert {k: v["result"]["value"] for k, v in inline.items()} == {k: v["result"]["value"] for k, v in pooled.items()}
    assert all(v["result"]["threads_env"] == "1" for v in pooled.values())  # set in the pool worker
    pids = {p.name.split(".")[1] for p in (tmp_path / "c1").iterdir()}
    assert str(os.getpid()) in pids and len(pids) >= 2  # inline ran here, the pool elsewhere


def test_threads_and_executor_arguments():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads(1) == cores and default_threads(cores * 4) == 1
    assert LocalExecutor(2).threads == max(1, cores // 2)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        LocalExecutor(0)
    with pytest.raises(ValueError, match="apply to --executor ray only"):
        make_executor("local", address="10.0.0.1:6379")
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("dask")


_DRIVER = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from spikefm.experiments.jobs import LocalExecutor, make_job, run_jobs
    calls, root, gate, pid_file = sys.argv[3:7]
    quick = make_job("_study_jobs:square_plus_deps", {"x": 5, "calls": calls})
    slow = make_job("_study_jobs:wait_for_gate", {"x": 6, "calls": calls, "gate": gate, "pid_file": pid_file})
    run_jobs([quick, slow], root, LocalExecutor(2, threads=1), progress=False, log=lambda s: None)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _wait(cond, what: str, limit_s: float = 120.0) -> None:
    end = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the driver through PDEATHSIG (Linux)")
def test_kill_9_loses_only_running_jobs(tmp_path):
    calls, root, gate, pid_file = tmp_path / "calls", tmp_path / "jobs", tmp_path / "gate", tmp_path / "worker.pid"
    src = str(Path(__file__).resolve().parents[1] / "src")
    args = [sys.executable, "-c", _DRIVER, src, str(Path(__file__).resolve().parent), str(calls), str(root),
            str(gate), str(pid_file)]
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    quick = make_job(SQUARE, {"x": 5, "calls": str(calls)})
    slow = make_job(GATE, {"x": 6, "calls": str(calls), "gate": str(gate), "pid_file": str(pid_file)})
    try:
        _wait(lambda: is_done(root, quick.id) and pid_file.exists() or driver.poll() is not None, "the jobs to start")
        assert driver.poll() is None, driver.stderr.read().decode()
        worker = int(pid_file.read_text())
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        _wait(lambda: not _alive(worker), "the pool worker to die with the driver")
    finally:
        if driver.poll() is None:
            driver.kill()
    assert is_done(root, quick.id) and not is_done(root, slow.id)
    gate.write_text("open")
    records = run_jobs([quick, slow], root, LocalExecutor(1), progress=False, log=lambda s: None)
    assert records[slow.id]["result"] == {"value": 6}
    assert _calls(calls, quick.id) == 1 and _calls(calls, slow.id) == 2


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray")
    tests_dir = str(Path(__file__).resolve().parent)
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, old) if p)
    from spikefm.corpus.build import ray_session

    # the workers start in the folder Ray was started from: a scratch one, so that a job writing
    # to a relative path by mistake leaves nothing in the repository
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_workers"))
    try:
        with ray_session(num_cpus=2) as r:
            os.chdir(here)
            yield r
    finally:
        os.chdir(here)
        os.environ["PYTHONPATH"] = old
    assert not ray.is_initialized()


def test_ray_executor_equals_the_process_pool(tmp_path, local_ray):
    pooled = run_jobs(_chain(tmp_path / "c"), tmp_path / "pool", LocalExecutor(2, threads=1), progress=False,
                      log=lambda s: None)
    rayed = run_jobs(_chain(tmp_path / "c"), tmp_path / "ray", make_executor("ray", threads=1), progress=False,
                     log=lambda s: None)
    assert {k: v["result"] for k, v in rayed.items()} == {k: v["result"] for k, v in pooled.items()}
    assert all(v["timings"]["executor"] == "ray" for v in rayed.values())
    assert local_ray.is_initialized()  # an open session is used, not shut down by the executor
    bad = make_job(FAIL, {"x": 1, "calls": str(tmp_path / "c")})
    with pytest.raises(JobsFailed, match="fails on purpose"):
        run_jobs([bad], tmp_path / "ray", make_executor("ray"), progress=False, log=lambda s: None)


def test_corpus_build_under_ray_equals_local(tmp_path, local_ray):
    from spikefm.corpus.build import BuildConfig, build_corpus
    from spikefm.corpus.reader import Corpus
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=3, seed=3, duration_s=20.0, units_range=(20, 22))
    local = build_corpus([str(tmp_path / "nwb")], tmp_path / "local", BuildConfig(workers=2), progress=False)
    rayed = build_corpus([str(tmp_path / "nwb")], tmp_path / "ray", BuildConfig(executor="ray"), progress=False)
    assert rayed.num_staged_now == 3 and not rayed.skipped
    a, b = Corpus(tmp_path / "local"), Corpus(tmp_path / "ray")
    assert a.session_ids() == b.session_ids()
    for split in ("train", "test"):
        assert [(r.session_id, r.spike_counts.tobytes()) for r in a.iter_rows(split)] == \
            [(r.session_id, r.spike_counts.tobytes()) for r in b.iter_rows(split)]
    with pytest.raises(ValueError, match="executor 'ray' only"):
        BuildConfig(ray_address="10.0.0.1:6379")


def test_cli_corpus_build_refuses_unknown_executor(tmp_path, capsys):
    from spikefm.cli import main

    with pytest.raises(SystemExit) as info:
        main(["corpus", "build", str(tmp_path), "--out", str(tmp_path / "c"), "--executor", "dask"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--executor" in err and err.count("\n") == 1


def test_executor_is_reentrant_across_phases(tmp_path):
    ex = LocalExecutor(2, threads=1)
    chain = _chain(tmp_path / "c")
    with ex:
        pool = ex._pool
        first = run_jobs(chain[2:], tmp_path / "jobs", ex, progress=False, log=lambda s: None)
        assert ex._pool is pool  # the inner run_jobs did not shut the study's pool down
        both = run_jobs(chain, tmp_path / "jobs", ex, progress=False, log=lambda s: None)
        assert ex._pool is pool
    assert ex._pool is None
    assert {k: both[k] for k in first} == first and both[chain[0].id]["result"]["value"] == 30


def _warn_in_worker(text: str) -> int:
    import warnings

    warnings.warn(text, RuntimeWarning)
    return os.getpid()


def test_pool_workers_print_warnings_as_the_driver_does(capfd):
    """Under the command line (one-line warnings) pool workers printed Python's two-line format
    with a source line; they now print what the driver prints."""
    from concurrent.futures import ProcessPoolExecutor

    from spikefm.experiments.jobs import _worker_init

    with ProcessPoolExecutor(1, initializer=_worker_init, initargs=(os.getpid(), 1, True)) as pool:
        pid = pool.submit(_warn_in_worker, "a  note\nfrom a job").result()
    assert pid != os.getpid()
    assert capfd.readouterr().err == "spikefm: warning: a note from a job\n"


def test_ray_addresses_that_cannot_work_fail_in_one_line(tmp_path, capsys, monkeypatch):
    """An address nothing listens at hung for minutes with only Ray's own log lines; --address
    auto without a cluster was reported as a disk error ('fix the cause (space, permissions)');
    --workers with a cluster address was ignored."""
    ray = pytest.importorskip("ray")
    from spikefm.corpus import build
    from spikefm.corpus.build import BuildConfig

    nwb = tmp_path / "nwb"
    nwb.mkdir()
    (nwb / "a.nwb").write_bytes(b"not read: the address is checked first")
    start = time.monotonic()  # a fresh process: this one may hold the module's local Ray session
    proc = subprocess.run([sys.executable, "-m", "spikefm.cli", "corpus", "build", str(nwb), "--out",
                           str(tmp_path / "c"), "--executor", "ray", "--address", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.startswith("spikefm: error: --address 127.0.0.1:1: nothing answers there") and "\n" not in err
    assert time.monotonic() - start < 60 and not (tmp_path / "c").exists()

    def no_cluster(**kw):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match=r"^--address auto: no Ray cluster to connect to \(Could not find any "
                                         r"running Ray instance\.[^)]*\); start one \(ray start --head\)"):
        with build.ray_session("auto"):
            pass
    with pytest.raises(ValueError, match=r"a Ray cluster \(--address\) uses its own CPUs"):
        BuildConfig(executor="ray", ray_address="auto", workers=4)


def test_workers_size_a_local_ray_instance(tmp_path, monkeypatch):
    import contextlib

    from spikefm.corpus import build
    from spikefm.corpus.build import BuildConfig, build_corpus

    seen = {}

    @contextlib.contextmanager
    def fake_session(address=None, num_cpus=None, quiet=False):
        seen.update(address=address, num_cpus=num_cpus)
        raise ValueError("stopped here")
        yield

    monkeypatch.setattr(build, "ray_session", fake_session)
    (tmp_path / "nwb").mkdir()
    (tmp_path / "nwb" / "a.nwb").write_bytes(b"never read")
    with pytest.raises(ValueError, match="stopped here"):
        build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(executor="ray", workers=3), progress=False)
    assert seen == {"address": None, "num_cpus": 3}
    with pytest.raises(ValueError, match="stopped here"):
        build_corpus([str(tmp_path / "nwb")], tmp_path / "c", BuildConfig(executor="ray"), progress=False)
    assert seen == {"address": None, "num_cpus": None}  # Ray's default: every core


_INTERRUPTED_DRIVER = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from spikefm.experiments.jobs import LocalExecutor, make_job, run_jobs
    calls, root, gate, pid_file = sys.argv[3:7]
    slow = make_job("_study_jobs:wait_for_gate", {"x": 6, "calls": calls, "gate": gate, "pid_file": pid_file})
    try:
        run_jobs([slow], root, LocalExecutor(2, threads=1), progress=False, log=lambda s: None)
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc (Linux)")
def test_ctrl_c_stops_the_pool_without_tracebacks_or_failed_jobs(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) with a pool: every worker printed a
    'Process SpawnProcess-1: Traceback ... KeyboardInterrupt' and the running job was left with an
    error.txt as if it had failed. Workers now ignore SIGINT and the driver stops them."""
    calls, root, gate, pid_file = tmp_path / "calls", tmp_path / "jobs", tmp_path / "gate", tmp_path / "worker.pid"
    src = str(Path(__file__).resolve().parents[1] / "src")
    args = [sys.executable, "-c", _INTERRUPTED_DRIVER, src, str(Path(__file__).resolve().parent), str(calls),
            str(root), str(gate), str(pid_file)]
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # its own process group, as a terminal's job
    slow = make_job(GATE, {"x": 6, "calls": str(calls), "gate": str(gate), "pid_file": str(pid_file)})
    try:
        _wait(lambda: pid_file.exists() or driver.poll() is not None, "the job to start")
        assert driver.poll() is None, driver.stderr.read()
        worker = int(pid_file.read_text())
        os.killpg(driver.pid, signal.SIGINT)
        err = driver.communicate(timeout=60)[1]
        _wait(lambda: not _alive(worker), "the pool worker to stop", limit_s=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (root / slow.id / "error.txt").exists() and not is_done(root, slow.id)


def test_an_interrupted_job_is_not_recorded_as_failed(tmp_path):
    """With one worker a job runs in the driver: Ctrl-C during it wrote error.txt."""
    job = make_job("_study_jobs:interrupted", {"x": 1})
    with pytest.raises(KeyboardInterrupt):
        run_job(job.to_dict(), str(tmp_path))
    assert not (tmp_path / job.id / "error.txt").exists() and not is_done(tmp_path, job.id)


def test_ray_jobs_warnings_reach_the_driver(tmp_path, local_ray):
    """Under Ray every warning a job raised was lost (log_to_driver=False); the process pool
    printed them. They are issued in the driver now, named by their job, each once."""
    import warnings

    jobs = [make_job("_study_jobs:warn_then_square", {"x": x, "text": "a note from a job"}, label=f"noisy {x}")
            for x in (2, 3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = run_jobs(jobs, tmp_path / "jobs", make_executor("ray", threads=1), progress=False,
                           log=lambda s: None)
    assert sorted(r["result"]["value"] for r in records.values()) == [4, 9]
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1 and said[0] in ("job noisy 2: a note from a job", "job noisy 3: a note from a job"), said


def test_ray_refuses_jobs_larger_than_the_cluster(tmp_path, local_ray):
    """A job asking for more CPUs or GPUs than any node has waited forever (Ray queues it)."""
    calls = tmp_path / "calls"
    job = make_job(SQUARE, {"x": 1, "calls": str(calls)})
    cpus = local_ray.cluster_resources().get("CPU")
    gpus = local_ray.cluster_resources().get("GPU", 0)
    with pytest.raises(ValueError, match=rf"^--threads-per-job 4: each job asks Ray for 4 CPUs, but the Ray cluster "
                                         rf"has {cpus:g} CPU\(s\) and {gpus:g} GPU\(s\), so no job would ever start; "
                                         rf"use --threads-per-job {int(cpus)} or fewer"):
        run_jobs([job], tmp_path / "jobs", make_executor("ray", threads=4), progress=False, log=lambda s: None)
    ask = gpus + 0.5
    with pytest.raises(ValueError, match=rf"^--gpus-per-job {ask:g}: each job asks Ray for {ask:g} GPU\(s\), but "
                                         rf"the Ray cluster has .*; use --gpus-per-job"):
        run_jobs([job], tmp_path / "jobs", make_executor("ray", threads=1, gpus=ask), progress=False,
                 log=lambda s: None)
    assert _calls(calls, job.id) == 0 and local_ray.is_initialized()


def test_a_job_stopped_by_ray_s_sigterm_is_not_recorded_as_failed(tmp_path):
    """Ray stops a worker with SIGTERM when its driver is interrupted; its handler raises
    SystemExit, which was written to error.txt as a failure."""
    job = make_job("_study_jobs:stopped_by_sigterm", {"x": 1})
    with pytest.raises(SystemExit):
        run_job(job.to_dict(), str(tmp_path))
    assert not (tmp_path / job.id / "error.txt").exists() and not is_done(tmp_path, job.id)


def test_a_killed_pool_worker_is_a_failed_job_said_in_one_line(tmp_path):
    """A pool worker killed (out of memory) ended the study with 'internal error (BrokenProcessPool
    ...)'; the failure named an error.txt that did not exist. Then every job running beside it and
    every job still queued failed with the same line though they had done nothing wrong (the pool
    breaks with any one worker): they run again one at a time, and only the job that kills its
    worker alone is failed."""
    calls = tmp_path / "calls"
    dead = make_job("_study_jobs:worker_killed", {"x": 1})
    others = [make_job(SQUARE, {"x": x, "calls": str(calls)}) for x in (3, 4, 5)]
    lines = []
    with pytest.raises(JobsFailed) as exc:
        run_jobs([dead, *others], tmp_path / "jobs", LocalExecutor(2, threads=1), progress=False,
                 log=lines.append)
    died = ("its worker process died (killed by the system, most likely for running out of memory); fewer jobs at "
            "once (--workers, or more --threads-per-job under Ray) leave each more memory")
    assert exc.value.failed == {dead.id: died}
    assert str(exc.value).startswith("1 job(s) failed, first ")
    assert "traceback in" not in str(exc.value)
    assert not (tmp_path / "jobs" / dead.id / "error.txt").exists()
    assert [job_result(tmp_path / "jobs", j.id)["result"]["value"] for j in others] == [9, 16, 25]
    assert sum("run again one at a time" in line for line in lines) == 1, lines
    assert lines[-1] == f"job {dead.label} ({dead.id}) failed: {died}"
    # a rerun (a fresh pool) runs only what is left: the job that kills its worker, alone, so it
    # is failed at once (not run a second time)
    lines.clear()
    with pytest.raises(JobsFailed) as exc:
        run_jobs([dead, *others], tmp_path / "jobs", LocalExecutor(2, threads=1), progress=False, log=lines.append)
    assert exc.value.failed == {dead.id: died}
    assert not any("run again" in line for line in lines), lines


def test_ray_jobs_read_relative_paths_from_the_drivers_folder(tmp_path, local_ray, monkeypatch):
    """On a cluster, --out and the corpus given relative were resolved in the workers' own folder:
    the jobs wrote under the head node's working folder, and the driver found none of them."""
    monkeypatch.chdir(tmp_path)
    records = run_jobs(_chain(Path("calls")), Path("rel") / "jobs", make_executor("ray", threads=1), progress=False,
                       log=lambda s: None)
    assert sorted(r["result"]["value"] for r in records.values()) == [1, 4, 14, 30]
    assert len(list((tmp_path / "rel" / "jobs").glob("*/result.json"))) == 4
    assert len(list((tmp_path / "calls").iterdir())) == 4


def test_an_environment_ray_address_is_checked_like_the_flag(tmp_path):
    """With RAY_ADDRESS set and no --address, ray.init connected there (not to a local instance, as
    the help says) and hung for minutes when nothing answered."""
    pytest.importorskip("ray")
    nwb = tmp_path / "nwb"
    nwb.mkdir()
    (nwb / "a.nwb").write_bytes(b"not read: the address is checked first")
    proc = subprocess.run([sys.executable, "-m", "spikefm.cli", "corpus", "build", str(nwb), "--out",
                           str(tmp_path / "c"), "--executor", "ray"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.startswith("spikefm: error: RAY_ADDRESS 127.0.0.1:1: nothing answers there") \
        and err.endswith("or unset RAY_ADDRESS for a local instance") and "\n" not in err


def test_a_jobs_own_out_of_memory_error_is_its_failure_not_a_dead_worker():
    """torch's OutOfMemoryError shares its class name with Ray's worker-killed one: a job out of
    GPU memory was reported as 'its worker process died ... fewer --workers', its traceback aside."""
    import torch
    from concurrent.futures.process import BrokenProcessPool

    from spikefm.experiments.jobs import _failure_line

    assert _failure_line(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")) == \
        "CUDA out of memory. Tried to allocate 2 GiB"
    assert _failure_line(BrokenProcessPool("a process terminated abruptly")).startswith("its worker process died")


def test_quiet_ray_build_prints_no_ray_start_up_lines(tmp_path):
    """`corpus build --executor ray --quiet` printed Ray's 'Started a local Ray instance.' and its
    token-authentication warning (timestamped log lines) although --quiet asks for none."""
    pytest.importorskip("ray")
    from spikefm.corpus.synth import synthesize

    synthesize(tmp_path / "nwb", num_sessions=1, seed=0, duration_s=10.0, units_range=(20, 20))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "spikefm.cli", "corpus", "build", str(tmp_path / "nwb"), "--out",
                           str(tmp_path / "c"), "--executor", "ray", "--quiet", "--test-fraction", "0"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c" / "manifest.json").is_file()
    assert "Ray" not in proc.stderr and " INFO " not in proc.stderr and " WARNING " not in proc.stderr, proc.stderr


def test_an_address_where_something_else_answers_is_refused(local_ray):
    """An --address where a service other than Ray's GCS listens (the dashboard's HTTP port, say)
    passed the TCP check and ray.init then hung for minutes; the GCS itself still passes."""
    import http.server
    import socket
    import threading

    from spikefm.corpus.build import _check_reachable

    _check_reachable(local_ray.get_runtime_context().gcs_address)  # a real GCS: no error
    server = http.server.HTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        port = server.server_address[1]
        with pytest.raises(ValueError, match=rf"^--address 127.0.0.1:{port}: something listens there but it is not "
                                             r"a Ray cluster's GCS \(it answered b'.*'\.\.\. where gRPC was expected; "
                                             r".*or leave out --address for a local instance$"):
            _check_reachable(f"127.0.0.1:{port}")
        port = silent.getsockname()[1]
        with pytest.raises(ValueError, match=rf"^RAY_ADDRESS 127.0.0.1:{port}: .* \(it answered nothing within 1 s "
                                             r"where gRPC .*or unset RAY_ADDRESS for a local instance$"):
            _check_reachable(f"127.0.0.1:{port}", timeout_s=1.0, flag="RAY_ADDRESS")
    finally:
        server.shutdown()
        server.server_close()
        silent.close()


class _QuietHandler(__import__("http.server").server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the refused HTTP/2 preface is not logged to the test's stderr
        pass


def test_pool_workers_warnings_are_printed_by_the_driver(tmp_path, capfd):
    """A pool worker wrote its warnings to the terminal itself, into the middle of the driver's
    progress bar; they come back with the job's record and the driver says them (through its log,
    above the bar), and the job's result file holds none of them."""
    import json

    jobs = [make_job("_study_jobs:warn_then_square", {"x": x, "text": f"a note from job {x}"}, label=f"noisy {x}")
            for x in (2, 3)]
    said = []
    records = run_jobs(jobs, tmp_path / "jobs", LocalExecutor(2, threads=1), progress=False, log=said.append)
    assert sorted(r["result"]["value"] for r in records.values()) == [4, 9]
    notes = [line for line in said if "a note from job" in line]
    assert len(notes) == 2 and {n.split("a note from job ")[1][:1] for n in notes} == {"2", "3"}, said
    assert "a note from job" not in capfd.readouterr().err  # not written by the workers themselves
    assert all("_worker_warnings" not in r for r in records.values())
    for job in jobs:
        assert "_worker_warnings" not in json.loads((tmp_path / "jobs" / job.id / "result.json").read_text())


def test_the_warnings_of_a_failed_job_or_a_dead_worker_are_said_too(tmp_path, capfd):
    """Kept until the job returned, they were lost with a worker the system killed (the warning
    that says why, about memory, say) and printed into the bar by a job that raised."""
    jobs = [make_job("_study_jobs:warn_then_die", {"x": 1, "text": "about to use 200 GB"}, label="greedy"),
            make_job("_study_jobs:warn_then_fail", {"x": 2, "text": "odd input"}, label="odd"),
            make_job("_study_jobs:warn_then_square", {"x": 3, "text": "a note"}, label="fine")]
    said = []
    with pytest.raises(JobsFailed):
        run_jobs(jobs, tmp_path / "jobs", LocalExecutor(2, threads=1), progress=False, log=said.append)
    for text in ("about to use 200 GB", "odd input", "a note"):
        assert any(text in line for line in said), (text, said)
    assert "odd input" not in capfd.readouterr().err
    assert not list((tmp_path / "jobs").rglob("warnings.txt"))
