"""Jobs: every run of a study is a pure function of a JSON spec that writes its result JSON.

A :class:`Job` is ``(kind, spec, deps)``: ``kind`` names the function (``"module:function"``,
or a short name from :data:`KINDS`), ``spec`` is a JSON object holding everything the run
depends on (corpus path, sessions, steps, seed...), ``deps`` are the ids of the jobs whose
folders it reads (a fine-tuning job reads its pretraining job's model). The job id is
``<kind>-<hash of kind + spec>``, so the same spec is the same job in every study that asks for
it (a single-session model of the ranking is the size-1 model of the scaling study) and a
changed setting is a new job, never a stale result.

On disk (``ROOT`` is a study's ``jobs/`` folder)::

    ROOT/<job id>/spec.json      the spec, written when the job starts
    ROOT/<job id>/...            whatever the function writes (run folders, evaluation JSON)
    ROOT/<job id>/result.json    written last, atomically: the job is done iff this file exists

``result.json`` holds ``{"job", "kind", "label", "spec", "seed", "result", "versions",
"timings"}``; ``result`` is what the function returned and depends only on the spec (and on the
number of threads a job uses: keep ``threads`` fixed to reproduce results bit for bit).

:func:`run_jobs` runs the jobs that have no result yet, each once its dependencies are done, on
an executor: :class:`LocalExecutor` (a process pool of ``workers`` processes; each job uses
``threads`` torch/BLAS threads, by default ``cores // workers`` so jobs do not oversubscribe the
machine; the workers die with the driver, ``kill -9`` included) or :class:`RayExecutor` (a Ray
cluster or a local Ray instance; each job asks for ``threads`` CPUs and an optional GPU
fraction; ``pip install 'spikefm[ray]'``; a job's warnings are printed by the driver, with the
job's name). Killing a study loses only its running jobs: their folders have no ``result.json``
and are cleared and run again by the next call. Ctrl-C stops the driver, which stops its pool
workers (they ignore SIGINT, so no worker prints a traceback); an interrupted job is not a
failed one (no ``error.txt``).

This module imports neither torch nor Ray at import time.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from spikefm.pools import terminate_workers

__all__ = ["Job", "make_job", "KINDS", "RESULT", "SPEC", "job_result", "is_done", "run_job",
           "run_jobs", "LocalExecutor", "RayExecutor", "make_executor", "default_threads",
           "JobsFailed", "EXECUTORS", "check_study_folder"]

RESULT = "result.json"
SPEC = "spec.json"
ERROR = "error.txt"
#: Executors ``make_executor`` knows.
EXECUTORS = ("local", "ray")
#: Short names of the study functions (``kind`` may also be any ``"module:function"``).
KINDS: dict[str, str] = {
    "pretrain": "spikefm.experiments.runs:pretrain",
    "finetune": "spikefm.experiments.runs:finetune",
    "single": "spikefm.experiments.runs:single_session",
}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Job:
    """One run of a study (see the module docstring). Build it with :func:`make_job`."""

    id: str
    kind: str
    spec: dict
    deps: tuple[str, ...] = ()
    label: str = ""
    #: Resources a job asks a Ray cluster for beyond its threads, e.g. ``{"num_gpus": 0.25}``.
    resources: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "spec": self.spec, "deps": list(self.deps),
                "label": self.label}


def make_job(kind: str, spec: dict, deps: Iterable[str] = (), label: str = "",
             resources: dict | None = None) -> Job:
    """A job whose id is ``<short kind>-<12 hex digits of sha256(kind, spec)>``.

    Raises:
        ValueError: ``spec`` is not JSON (NaN, infinities and non-string keys included) or
            ``kind`` is neither a short name nor ``module:function``.
    """
    if kind not in KINDS and ":" not in kind:
        raise ValueError(f"job kind must be one of {', '.join(KINDS)} or 'module:function', got {kind!r}")
    try:
        text = _canonical({"kind": kind, "spec": spec})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job spec must be plain JSON (no NaN or infinities), got {spec!r} ({exc})") from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    short = kind.rsplit(":", 1)[-1].replace("_", "-")
    return Job(id=f"{short}-{digest}", kind=kind, spec=json.loads(text)["spec"], deps=tuple(deps),
               label=label or short, resources=dict(resources or {}))


def job_result(root: str | os.PathLike, job_id: str) -> dict | None:
    """The ``result.json`` record of a finished job, or None when it has not finished."""
    path = Path(root) / job_id / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # cannot happen with atomic writes; say so if it does
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to run the job again") from None


def is_done(root: str | os.PathLike, job_id: str) -> bool:
    return (Path(root) / job_id / RESULT).is_file()


def _function(kind: str) -> Callable[[dict, Path, Path], dict]:
    target = KINDS.get(kind, kind)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    from spikefm._version import __version__

    out: dict[str, str | None] = {"spikefm": __version__, "python": sys.version.split()[0]}
    for pkg in ("torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _set_threads(threads: int) -> Callable[[], None]:
    """Limit torch and BLAS/OpenMP to ``threads``; returns the function that restores them.
    Before torch is imported the environment variables are enough (torch reads them when it
    starts), so a job that does not use torch never pays for importing it here."""
    restore: list[Callable[[], None]] = []
    env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({v: str(threads) for v in env})
    restore.append(lambda: [os.environ.pop(v, None) if old is None else os.environ.__setitem__(v, old)
                            for v, old in env.items()])
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        restore.append(lambda: torch.set_num_threads(before))
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(threads)
        restore.append(limits.restore_original_limits)
    except ImportError:
        pass
    return lambda: [r() for r in reversed(restore)]


def run_job(job: dict, root: str, threads: int = 1, executor: str = "inline") -> dict:
    """Run one job (a :meth:`Job.to_dict`) in this process and write its ``result.json``.

    A finished job is not run again (its record is returned). Anything left in the job's folder
    by an interrupted attempt is removed first, so every result comes from one clean run.
    Failures write ``error.txt`` (the traceback) in the job's folder and re-raise.
    """
    from spikefm.fileio import write_json_atomic

    root_path = Path(root)
    job_dir = root_path / job["id"]
    done = job_result(root_path, job["id"])
    if done is not None:
        return done
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    write_json_atomic(job_dir / SPEC, {k: job[k] for k in ("id", "kind", "label", "spec", "deps")})
    restore = _set_threads(threads)
    started = time.time()
    try:
        result = _function(job["kind"])(job["spec"], job_dir, root_path)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: Ray's SIGTERM to a worker when the driver stops
        raise  # interrupted, not failed: the next call clears the folder and runs the job again
    except BaseException:
        (job_dir / ERROR).write_text(traceback.format_exc())
        raise
    finally:
        restore()
    wall = time.time() - started
    record = {"job": job["id"], "kind": job["kind"], "label": job["label"], "spec": job["spec"],
              "seed": job["spec"].get("seed"), "result": result, "versions": _versions(),
              "timings": {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                          "wall_s": round(wall, 3), "threads": threads, "executor": executor,
                          "host": os.uname().nodename if hasattr(os, "uname") else None}}
    write_json_atomic(job_dir / RESULT, record)
    return record


#: Where a pool worker returns the warnings its job gave (popped by :func:`run_jobs`, which
#: prints them above its progress bar), never written to the job's result file.
WORKER_WARNINGS = "_worker_warnings"
#: A pool worker's warnings as they are given, in its job's folder: what the driver prints of a job
#: whose worker died (killed by the system for memory, say), which returns nothing; removed once said.
WARNINGS_FILE = "warnings.txt"


def _run_job_in_worker(job: dict, root: str, threads: int = 1, executor: str = "local") -> dict:
    """:func:`run_job` in a pool worker, its warnings' lines returned with the record
    (:data:`WORKER_WARNINGS`) for the driver to print: a worker writing them to the terminal itself
    wrote them into the middle of the driver's progress bar. Each line also goes to the job's
    :data:`WARNINGS_FILE` as it comes, which the driver prints of a job that failed or whose
    worker died (neither returns a record)."""
    import io
    import warnings

    shown, kept = warnings.showwarning, io.StringIO()
    saved = Path(root) / job["id"] / WARNINGS_FILE

    def keep(message, category, filename, lineno, file=None, line=None):
        one = io.StringIO()
        shown(message, category, filename, lineno, one, line)
        kept.write(one.getvalue())
        try:  # the job's folder exists once the job runs (run_job makes it anew)
            with open(saved, "a") as f:
                f.write(one.getvalue())
        except OSError:
            pass

    warnings.showwarning = keep
    try:
        record = run_job(job, root, threads, executor)
    finally:
        warnings.showwarning = shown
    saved.unlink(missing_ok=True)
    lines = kept.getvalue().splitlines()
    return {**record, WORKER_WARNINGS: lines} if lines else record


def _said_by_a_dead_worker(root: Path, jid: str) -> list[str]:
    """The warnings a failed job's worker wrote (:data:`WARNINGS_FILE`; the job raised, or its
    worker died), the file removed."""
    path = root / jid / WARNINGS_FILE
    try:
        lines = path.read_text().splitlines()
        path.unlink()
    except OSError:
        return []
    return lines


def default_threads(workers: int) -> int:
    """Threads per job so that ``workers`` jobs fill the machine's cores without oversubscribing."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


# --- executors ---------------------------------------------------------------------------------


def _worker_init(parent_pid: int, threads: int, one_line_warnings: bool = False) -> None:
    """Start of a pool worker: thread limits before torch is imported, warnings printed as the
    driver prints them, Ctrl-C left to the driver (it stops the pool; a worker interrupted too
    printed a traceback and recorded its job as failed), and die with the driver
    (:func:`spikefm.pools.start_worker`)."""
    from spikefm.pools import start_worker

    start_worker(parent_pid)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if one_line_warnings:
        import warnings

        from spikefm.progress import warning_line

        warnings.showwarning = warning_line


def _one_line_warnings() -> bool:
    """Whether this process prints warnings as one line (the command line sets that up)."""
    import warnings

    from spikefm.progress import warning_line

    return warnings.showwarning is warning_line


class LocalExecutor:
    """Jobs in a pool of ``workers`` processes on this machine (``workers=1``: in this process).

    Args:
        workers: processes running jobs at once.
        threads: torch/BLAS threads per job (default :func:`default_threads`).
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        for nm, v in (("workers", workers), ("threads", threads)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        self.workers = workers
        self.threads = threads or default_threads(workers)
        self._pool = None
        self._slots: int | None = None  # fewer than workers after a worker died (see recover)
        self._depth = 0

    def _new_pool(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child would inherit the driver's threads and torch state
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init,
                                   initargs=(os.getpid(), self.threads, _one_line_warnings()))

    def __enter__(self) -> "LocalExecutor":
        self._depth += 1  # re-entrant: a study holds one pool across its phases
        if self.workers > 1 and self._pool is None:
            self._pool = self._new_pool(self.workers)
            self._slots = None
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._pool is not None:
            if exc_type is not None:  # Ctrl-C or an error in the driver: the running jobs are lost
                terminate_workers(self._pool)  # (workers ignore SIGINT: waiting would wait for them)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def slots(self) -> int:
        return self._slots or self.workers

    def recover(self, workers: int | None = None) -> None:
        """After a worker died (which breaks the whole pool): a fresh pool, of ``workers`` processes
        (None: as many as now) for the jobs still to run. Nothing to do without a pool."""
        if self._pool is None:
            return
        terminate_workers(self._pool)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._slots = workers or self.slots
        self._pool = self._new_pool(self._slots)

    def submit(self, job: Job, root: Path):
        from concurrent.futures import Future

        if self._pool is None:  # one worker: run now, in this process
            fut: Future = Future()
            try:
                fut.set_result(run_job(job.to_dict(), str(root), self.threads, "local"))
            except Exception as exc:  # noqa: BLE001 - reported by run_jobs with the job's name
                fut.set_exception(exc)
            return fut
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(_run_job_in_worker, job.to_dict(), str(root), self.threads, "local")
        except BrokenProcessPool as exc:  # a worker died earlier: this job cannot start here either
            fut = Future()
            fut.set_exception(exc)
            return fut

    def wait(self, handles: list) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return list(done)

    @staticmethod
    def outcome(handle) -> tuple[dict | None, BaseException | None]:
        exc = handle.exception()
        return (None, exc) if exc is not None else (handle.result(), None)


def _ray_run_job(job: dict, root: str, threads: int, cwd: str | None = None) -> dict:
    """:func:`run_job` in a Ray worker, from the driver's folder ``cwd`` (a spec's relative corpus
    path is the driver's): ``{"record", "warnings"}``, the warnings the job raised (Ray does not
    forward a worker's output to the driver: ``log_to_driver=False``)."""
    import warnings

    from spikefm.corpus.build import in_driver_folder

    in_driver_folder(cwd)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    with warnings.catch_warnings(record=True) as caught:
        record = run_job(job, root, threads, "ray")
    said = [{"message": str(w.message), "category": w.category, "filename": w.filename, "lineno": w.lineno}
            for w in caught]
    return {"record": record, "warnings": said}


def _check_ray_fits(ray, threads: int, gpus: float) -> None:
    """Refuse a job that no node of the Ray cluster can run (Ray would wait for it forever)."""
    total = ray.cluster_resources()
    try:
        nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive", True)]
    except Exception:  # noqa: BLE001 - an old or partial API: the cluster's totals bound a node's
        nodes = []
    has = {r: max((n.get(r, 0.0) for n in nodes), default=total.get(r, 0.0)) for r in ("CPU", "GPU")}
    sizes = f"{total.get('CPU', 0):g} CPU(s) and {total.get('GPU', 0):g} GPU(s)"
    if len(nodes) > 1:
        sizes += f", at most {has['CPU']:g} CPU(s) and {has['GPU']:g} GPU(s) on one node"
    if threads > has["CPU"]:
        raise ValueError(f"--threads-per-job {threads}: each job asks Ray for {threads} CPUs, but the Ray cluster "
                         f"has {sizes}, so no job would ever start; use --threads-per-job "
                         f"{max(1, int(has['CPU']))} or fewer, or a cluster with larger nodes (--address)")
    if gpus > has["GPU"]:
        fix = (f"--gpus-per-job {has['GPU']:g} or less" if has["GPU"] else
               "--gpus-per-job 0 (and --device cpu), or a cluster with GPUs (--address)")
        raise ValueError(f"--gpus-per-job {gpus:g}: each job asks Ray for {gpus:g} GPU(s), but the Ray cluster "
                         f"has {sizes}, so no job would ever start; use {fix}")


class RayExecutor:
    """Jobs as Ray tasks: on the cluster at ``address`` (``"auto"`` = the one this machine is
    part of), or on a local Ray instance started here when ``address`` is None.

    Every node must see the study folder and the corpus at the same paths (a shared file system)
    and have spikefm installed. Each job asks for ``threads`` CPUs (it also uses that many
    threads) and ``gpus`` GPUs (a fraction shares one GPU between jobs); a job's own
    ``resources`` add to these. Asking for more than the largest node has is refused when the
    executor is entered (Ray would queue the jobs forever). The warnings a job raises are issued
    in the driver, prefixed ``job <label>:``, each (message, place) once per study.

    Args:
        address: Ray cluster address, or None for a local instance.
        threads: CPUs (and torch threads) per job.
        gpus: GPUs per job (0 = none).
        num_cpus: CPUs of a local instance (None = all of this machine's).
        max_in_flight: most jobs submitted at once (None = twice the cluster's CPUs / threads).
        quiet: Ray's start-up lines (``--quiet``) are not printed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, threads: int = 1, gpus: float = 0.0,
                 num_cpus: int | None = None, max_in_flight: int | None = None, *, quiet: bool = False) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads per job must be a positive int, got {threads!r}")
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus:
            raise ValueError(f"gpus per job must be a number >= 0 (a fraction shares a GPU), got {gpus!r}")
        self.address, self.threads, self.gpus = address, threads, float(gpus)
        self.num_cpus, self._max, self.quiet = num_cpus, max_in_flight, quiet
        self._session = None
        self._ray = None
        self._depth = 0

    def __enter__(self) -> "RayExecutor":
        from spikefm.corpus.build import ray_session

        self._depth += 1  # re-entrant: a study holds one Ray session across its phases
        if self._depth > 1:
            return self
        self._session = ray_session(self.address, self.num_cpus, quiet=self.quiet)
        ray = self._ray = self._session.__enter__()
        try:
            _check_ray_fits(ray, self.threads, self.gpus)  # before any job is submitted
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        self._remote = ray.remote(_ray_run_job)
        self._said: set = set()
        self._labels: dict = {}
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._session is not None:
            self._session.__exit__(*exc)
            self._session = None

    @property
    def slots(self) -> int:
        if self._max is not None:
            return self._max
        cpus = int(self._ray.cluster_resources().get("CPU", 1)) if self._ray else 1
        return max(1, 2 * cpus // self.threads)

    def submit(self, job: Job, root: Path):
        res = dict(job.resources)
        opts: dict[str, Any] = {"num_cpus": self.threads, "max_retries": 0}
        gpus = float(res.pop("num_gpus", self.gpus))
        if gpus:
            opts["num_gpus"] = gpus
        if res:
            opts["resources"] = res
        handle = self._remote.options(**opts).remote(job.to_dict(), str(Path(root).resolve()), self.threads,
                                                     os.getcwd())
        self._labels[handle] = job.label
        return handle

    def wait(self, handles: list) -> list:
        done, _ = self._ray.wait(handles, num_returns=1)
        return done

    def outcome(self, handle) -> tuple[dict | None, BaseException | None]:
        label = self._labels.pop(handle, "?")
        try:
            out = self._ray.get(handle)
        except Exception as exc:  # noqa: BLE001 - a failed task; its traceback is in the job's error.txt
            return None, getattr(exc, "cause", None) or exc  # the job's own exception, not Ray's wrapper
        self._warn(label, out["warnings"])
        return out["record"], None

    def _warn(self, label: str, caught: list[dict]) -> None:
        """Issue a job's warnings here, named by the job, each once per study (as a pool worker
        prints a warning once)."""
        import warnings

        for w in caught:
            key = (w["message"], w["category"], w["filename"], w["lineno"])
            if key in self._said:
                continue
            self._said.add(key)
            category = w["category"] if isinstance(w["category"], type) and issubclass(w["category"], Warning) \
                else UserWarning
            warnings.warn_explicit(f"job {label}: {w['message']}", category, w["filename"], w["lineno"])


def make_executor(executor: str = "local", *, workers: int = 1, threads: int | None = None,
                  address: str | None = None, gpus: float = 0.0, num_cpus: int | None = None,
                  quiet: bool = False):
    """``"local"`` -> :class:`LocalExecutor`; ``"ray"`` -> :class:`RayExecutor` (``workers`` is
    ignored there: the cluster's CPUs decide how many jobs run at once; ``quiet``: Ray's start-up
    lines are not printed)."""
    if executor == "local":
        if address or gpus:
            raise ValueError("--address and --gpus-per-job apply to --executor ray only")
        return LocalExecutor(workers, threads)
    if executor == "ray":
        return RayExecutor(address, threads or 1, gpus, num_cpus, quiet=quiet)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")


#: Exceptions (module, class name) that say a job's worker process died, not that the job
#: failed: the process pool's, and Ray's (torch's OutOfMemoryError, a job's own failure, is not one).
_WORKER_DEATHS = {("concurrent.futures.process", "BrokenProcessPool"), ("ray.exceptions", "WorkerCrashedError"),
                  ("ray.exceptions", "NodeDiedError"), ("ray.exceptions", "OutOfMemoryError"),
                  ("ray.exceptions", "RayActorError")}


def _worker_died(exc: BaseException) -> bool:
    """``exc`` says the job's worker process died (not that the job failed)."""
    return any((type(e).__module__, type(e).__name__) in _WORKER_DEATHS
               for e in (exc, getattr(exc, "cause", None)) if e is not None)


def _failure_line(exc: BaseException) -> str:
    """One line for a failed job: its error, or that its worker process died (no traceback of it)."""
    if _worker_died(exc):
        return ("its worker process died (killed by the system, most likely for running out of memory); fewer "
                "jobs at once (--workers, or more --threads-per-job under Ray) leave each more memory")
    return " ".join((str(exc) or type(exc).__name__).split())[:300]


class JobsFailed(RuntimeError):
    """Some jobs failed; the others finished (their results are kept). ``failed``: id -> line."""

    def __init__(self, failed: dict[str, str], root: Path) -> None:
        self.failed = failed
        first, msg = next(iter(failed.items()))
        where = (f" (traceback in {root / first / ERROR})" if (root / first / ERROR).is_file() else "")
        super().__init__(f"{len(failed)} job(s) failed, first {first}: {msg}{where}; fix the cause and run the "
                         "same command again: finished jobs are kept")


@contextmanager
def study_folder(out: Path, executor) -> Iterator[None]:
    """Start ``executor``, then create and lock the study folder ``out`` for the block: in that
    order, so that an executor that cannot start (a Ray address nothing answers at) leaves no
    folder behind."""
    from spikefm.fileio import folder_lock

    with executor:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out, what="study"):
            yield


def run_jobs(jobs: Sequence[Job], root: str | os.PathLike, executor, *, progress: bool = True,
             description: str = "jobs", log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run every job of ``jobs`` that has no result yet (dependencies first) on ``executor``.

    Args:
        jobs: the study's jobs; duplicates (same id) are run once.
        root: the jobs folder.
        executor: a :class:`LocalExecutor` or :class:`RayExecutor` (not yet entered).
        progress: show a progress bar (off a terminal: one line per finished job); False
            (``--quiet``) shows neither, failed jobs and reused work are still said.
        description: the bar's label.
        log: called with each line (None: print to stderr).

    Returns:
        Job id -> its ``result.json`` record, for every job of ``jobs``.

    Raises:
        JobsFailed: a job raised; the jobs that do not depend on it still ran.
        ValueError: a dependency is not among ``jobs`` and has no result.
    """
    from spikefm.progress import progress_bar

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    by_id: dict[str, Job] = {}
    for job in jobs:
        by_id.setdefault(job.id, job)
    records = {jid: r for jid in by_id if (r := job_result(root, jid)) is not None}
    for job in by_id.values():
        for dep in job.deps:
            if dep not in by_id and not is_done(root, dep):
                raise ValueError(f"job {job.id} needs job {dep}, which is neither in the study nor finished")
    todo = [jid for jid in by_id if jid not in records]
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if records:  # a rerun that found finished work says so (it was silent, and fast for no stated reason)
        say(f"{description}: {len(records)} of {len(by_id)} jobs already finished (by an earlier run, or shared "
            "with an earlier step of this study); reused")
    if not todo:
        return records
    failed: dict[str, str] = {}
    running: dict[Any, str] = {}
    waiting = list(todo)
    finished_now, stuck = 0, -1
    with executor as ex, progress_bar(total=len(todo), description=description, enabled=progress,
                                                  plain=False) as bar:  # off a terminal each job has its line
        while waiting or running:
            for jid in list(waiting):
                if len(running) >= ex.slots:
                    break
                deps = by_id[jid].deps
                if any(d in failed for d in deps):
                    failed[jid] = f"not run: a job it needs failed ({next(d for d in deps if d in failed)})"
                    waiting.remove(jid)
                    bar.advance(1)
                elif all(d in records or is_done(root, d) for d in deps):
                    running[ex.submit(by_id[jid], root)] = jid
                    waiting.remove(jid)
            if not running:
                if waiting and len(waiting) == stuck:  # nothing ran and nothing was marked failed
                    raise ValueError(f"jobs {', '.join(waiting[:3])} wait for each other (a dependency cycle)")
                stuck = len(waiting)
                if waiting:
                    continue
                break
            ran_together = len(running) > 1  # a job that ran alone and died is named at once
            done = ex.wait(list(running))
            broke = (ran_together and hasattr(ex, "recover")
                     and any(_worker_died(e) for _, e in map(ex.outcome, done) if e is not None))
            if broke:
                # The pool broke with one worker and took every job running in it; which job killed its
                # worker is unknown, so they run again one at a time (the rest of this run too).
                pending = [h for h in running if h not in done]
                while pending:  # the broken pool's other jobs end at once (or had just finished)
                    ended = ex.wait(pending)
                    done += ended
                    pending = [h for h in pending if h not in ended]
            again = []
            for handle in done:
                jid = running.pop(handle)
                record, exc = ex.outcome(handle)
                said = record.pop(WORKER_WARNINGS, []) if isinstance(record, dict) else \
                    _said_by_a_dead_worker(root, jid)
                for line in said:
                    say(line)  # a pool worker's warnings, above the bar
                if exc is not None and broke:  # died with the pool or failed beside it: it runs again
                    again.append(jid)
                    continue
                bar.advance(1)
                finished_now += 1
                if exc is not None:
                    failed[jid] = _failure_line(exc)
                    say(f"job {by_id[jid].label} ({jid}) failed: {failed[jid]}")
                    if _worker_died(exc) and hasattr(ex, "recover"):
                        ex.recover()  # a fresh pool for the jobs still to run
                    continue
                records[jid] = record
                if progress and not sys.stderr.isatty():  # the bar's stand-in; --quiet prints none
                    say(f"[{finished_now}/{len(todo)}] {by_id[jid].label} done in "
                        f"{record['timings']['wall_s']:.0f} s ({jid})")
            if broke:
                ex.recover(workers=1)
                waiting[:0] = again
                say(f"a worker process died (killed by the system, most likely for running out of memory) with "
                    f"{len(again)} job(s) running; they run again one at a time, as do the jobs after them, so "
                    "that a job that kills its worker is named")
    if failed:
        raise JobsFailed(failed, root)
    return records


#: What a ranking or scaling study writes in its folder (glob patterns); anything else there that
#: is not hidden means the folder is not a study's.
STUDY_FILES = ("jobs", "ranking.json", "ranking.png", "ranking_*.csv", "topk_overlap.csv", "scaling.json",
               "scores.json", "scores.csv", "table1.csv", "table3.csv", "figure4.png", "figure4_fits.csv",
               "more_sessions.png")


def check_study_folder(out: Path, patterns: Sequence[str] = STUDY_FILES, *, kind: str = "a study's",
                       fix: str = "give a new or empty folder (--out), or the folder of an earlier run to resume "
                                  "it") -> None:
    """Refuse a study folder (``--out``) that holds files the study does not write (``patterns``,
    glob patterns of its own entries; hidden ones are ignored), before anything is written there
    (a study folder of an earlier run is resumed). ``kind`` and ``fix`` word the message."""
    import fnmatch

    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a folder for the study (--out)")
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                   and not any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    if other:
        raise ValueError(f"{out}: folder has files that are not {kind} (found {other[0]!r}); nothing was "
                         f"changed: {fix}")


#: Settings a study summary records since a later version: one without them (an older study
#: folder) is compared on the others (unknown there, not different).
RECORDED_LATER = ("corpus_sha256",)


def check_study_settings(summary: Path, settings: dict, *, views: Sequence[str] = ()) -> None:
    """Refuse to rerun a study into a folder whose summary (``summary``, e.g. ``ranking.json``)
    was made with other settings: its results would be replaced by the new ones (a rerun with the
    same settings resumes it and does no finished work again). ``views`` name settings that only
    choose how the same jobs' results are summarised (a scaling study's ``metric``): they may
    differ. A setting of :data:`RECORDED_LATER` that the summary lacks is not compared."""
    if not summary.is_file():
        return
    try:
        old = json.loads(summary.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return  # a damaged summary is rewritten from the jobs' results
    if isinstance(old, dict):
        skip = {*views, *(k for k in RECORDED_LATER if k not in old)}
        keep = lambda d: {k: v for k, v in d.items() if k not in skip}  # noqa: E731
        refuse_other_settings(summary.parent, keep(old), keep(settings), kind="a study",
                              lost="its results", rerun="resumes it")


def refuse_other_settings(out: Path, old: dict, new: dict, *, kind: str, lost: str, rerun: str) -> None:
    """One line naming the settings where ``new`` differs from the ``old`` ones a study folder
    was made with (compared as JSON), and what a new ``--out`` avoids; nothing when they agree."""
    new = json.loads(json.dumps(new))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        first = changed[0]
        raise ValueError(f"{out} holds {kind} made with other settings ({', '.join(changed)}; {first}: "
                         f"{old.get(first)!r} there, {new.get(first)!r} now); {lost} would be replaced: give a "
                         f"new --out (a rerun with the same settings {rerun})")


def name_list(value: str | Sequence[str] | None, flag: str, example: str) -> list[str] | None:
    """A study's list of names from Python or the command line: a list (or tuple) of strings, or
    one string of comma-separated names (``"ranked,random"``, as the flag takes them); None stays
    None. A name given twice is refused (it would be one curve, or one session, counted twice).

    Raises:
        TypeError: neither (an int, a set...), naming the flag and an example.
        ValueError: an empty name list, or a name given twice.
    """
    if value is None:
        return None
    if isinstance(value, str):  # "a,,b": a name left out by mistake, refused below
        names = [v.strip() for v in value.split(",")]
        if not any(names):
            names = []
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise TypeError(f"{flag} must be a list of names or one comma-separated string, e.g. {example}; got "
                        f"{value!r}")
    if not names:
        raise ValueError(f"{flag} names nothing (got {value!r}); e.g. {example}")
    if not all(names):
        raise ValueError(f"{flag} has an empty name (got {value!r}); e.g. {example}")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ValueError(f"{flag} names {twice!r} twice ({','.join(names)}); give each once")
    return names


def seed_list(value: int | str | Sequence[int], flag: str = "seeds") -> list[int]:
    """A study's seeds: a list (tuple, range) of distinct ints >= 0, given as ints or as their
    decimal strings, or one comma-separated string (``"1,2,3"``).

    Raises:
        TypeError: one number (``seeds=3`` is not three seeds), or something that is no list.
        ValueError: none, an item that is no whole number (``"a"``, ``1.5``, ``True``), a negative
            one, or one given twice.
    """
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value  # "1,,2": refused
    if isinstance(value, (int, float)) or not isinstance(items, (list, tuple, range)):
        raise TypeError(f"{flag} must be a list of ints (one per seed), e.g. [1, 2, 3] or '1,2,3'; got {value!r}")
    seeds = []
    for v in items:
        try:
            k = int(v) if isinstance(v, str) else int(v) if not isinstance(v, bool) and int(v) == v else None
        except (TypeError, ValueError):
            k = None
        if k is not None:
            seeds.append(k)
    if len(seeds) != len(items) or not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"{flag} must be distinct integers >= 0 (each one seed), e.g. 1,2,3; got {value!r}")
    return seeds
