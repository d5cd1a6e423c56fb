"""Process pools that end with their command: what a pool worker does first, and how the
command ends its workers on Ctrl-C (shared by ``corpus build --workers`` and the studies).

Ctrl-C at a terminal reaches the whole process group. A worker interrupted inside the pool's own
queues could leave the command hanging at exit after it had printed its one line; so workers
ignore SIGINT, and the command, which gets the ``KeyboardInterrupt``, ends them itself
(:func:`terminate_workers`) instead of waiting for their jobs (a large file or a training run
takes minutes).
"""
from __future__ import annotations

import os
import signal
import sys

__all__ = ["start_worker", "terminate_workers"]


def start_worker(parent_pid: int) -> None:
    """Call first in a pool worker (its ``initializer``): Ctrl-C left to the parent, and die with
    the parent (Linux: the kernel sends SIGKILL to the worker when its parent exits, however it
    exits, ``kill -9`` included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def terminate_workers(pool) -> None:
    """SIGTERM to every live worker of a ``ProcessPoolExecutor`` (its ``terminate_workers`` from
    Python 3.14)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
