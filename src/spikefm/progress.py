"""A progress bar (rich) that turns itself off when asked or when output is not a terminal."""
from __future__ import annotations

import contextlib
import sys

#: The help text of every command's ``--quiet``.
QUIET_HELP = "no progress display (the result lines, warnings and errors are still printed)"


class _NoBar:
    def advance(self, n: float = 1, **fields) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, **fields) -> None:
        self._progress.update(self._task, advance=n, **fields)

    def update(self, **fields) -> None:
        self._progress.update(self._task, **fields)


@contextlib.contextmanager
def progress_bar(total: float | None, description: str, enabled: bool = True, extra: str = ""):
    """Yields an object with ``advance(n, **fields)``; ``extra`` is a rich format string over the
    task's fields (e.g. ``"loss {task.fields[loss]:.3f}"``), set with ``update(loss=...)``."""
    if not enabled or not sys.stderr.isatty():
        yield _NoBar()
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield _RichBar(progress, task)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line, ``spikefm: warning: ...`` (not the two of the default format,
    with a source line): the command line sets it as ``warnings.showwarning``, and the workers of
    a study's process pool follow it."""
    print(f"spikefm: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
