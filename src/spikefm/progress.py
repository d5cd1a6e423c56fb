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


#: What a bar counts: ``"count"`` shows ``M/N`` (items), ``"bytes"`` shows sizes (``1.2/4.5 GB``)
#: and the transfer speed.
UNITS = ("count", "bytes")


@contextlib.contextmanager
def progress_bar(total: float | None, description: str, enabled: bool = True, extra: str = "", *,
                 unit: str = "count", completed: float = 0):
    """Yields an object with ``advance(n, **fields)``; ``extra`` is a rich format string over the
    task's fields (e.g. ``"loss {task.fields[loss]:.3f}"``), set with ``update(loss=...)``.

    Args:
        total: the count (or bytes) at the end; None when unknown.
        description: the bar's label, plain text (a file name may hold ``[``: it is shown as is).
        enabled: False for no display; there is none either when stderr is not a terminal.
        extra: see above.
        unit: one of :data:`UNITS`.
        completed: where the bar starts, e.g. the bytes a resumed download already has (counted
            as done before this bar, so they do not inflate the transfer speed).
    """
    if unit not in UNITS:
        raise ValueError(f"progress_bar unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if not enabled or not sys.stderr.isatty():
        yield _NoBar()
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    if unit == "bytes":
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
    if extra:
        columns.append(TextColumn(extra))
    # on stderr, the stream whose terminal was checked: a command's output piped to a file stays clean
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(escape(description), total=total, completed=completed)
        yield _RichBar(progress, task)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line, ``spikefm: warning: ...`` (not the two of the default format,
    with a source line): the command line sets it as ``warnings.showwarning``, and the workers of
    a study's process pool follow it."""
    print(f"spikefm: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
