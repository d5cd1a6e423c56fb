"""A progress display: a bar (rich) on a terminal; in a log file or pipe a plain line per tenth of
the work (or per minute) once the work has run a few seconds; nothing when asked (``--quiet``)."""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings

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
        if "description" in fields:  # plain text, as progress_bar's (a session id may hold "[")
            from rich.markup import escape

            fields["description"] = escape(str(fields["description"]))
        self._progress.update(self._task, **fields)


#: Seconds of work before a log gets its first progress line (short work stays silent there), and
#: the most seconds between two lines.
PLAIN_AFTER_S, PLAIN_EVERY_S = 5.0, 60.0


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"4m05s"``, ``"12s"``; ``"?"`` when unknown (training's lines use it too)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class _PlainBar:
    """Progress as plain lines on stderr, for a log file or pipe: one on the first update past
    each tenth of ``total`` (or :data:`PLAIN_EVERY_S` after the last line), none in the first
    :data:`PLAIN_AFTER_S` seconds, each with the elapsed time and an estimate of the rest."""

    def __init__(self, total: float | None, description: str, unit: str, completed: float) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.start_done = self.done = float(completed)
        self.t0 = self.t_line = time.monotonic()
        self.tenth = self._tenth()

    def _tenth(self) -> int:
        return int(10 * self.done / self.total) if self.total else 0

    def advance(self, n: float = 1, **fields) -> None:
        self.done += n
        self._maybe_say()

    def update(self, **fields) -> None:
        if "description" in fields:
            self.description = str(fields["description"])
        if "completed" in fields:
            self.done = float(fields["completed"])
            self._maybe_say()

    def _maybe_say(self) -> None:
        now = time.monotonic()
        tenth = self._tenth()
        if now - self.t0 < PLAIN_AFTER_S or not (tenth > self.tenth or now - self.t_line >= PLAIN_EVERY_S):
            return
        self.tenth, self.t_line = tenth, now
        fmt = _size if self.unit == "bytes" else (lambda v: f"{v:,.0f}")
        line = f"spikefm: {self.description}: {fmt(self.done)}"
        if self.total:
            line += f"/{fmt(self.total)} ({self.done / self.total:.0%})"
        line += f", {format_duration(now - self.t0)} elapsed"
        rate = (self.done - self.start_done) / (now - self.t0)
        if self.total and rate > 0:
            line += f", about {format_duration(max(self.total - self.done, 0.0) / rate)} left"
        print(line, file=sys.stderr, flush=True)


#: What a bar counts: ``"count"`` shows ``M/N`` (items), ``"bytes"`` shows sizes (``1.2/4.5 GB``;
#: the terminal bar also the transfer speed).
UNITS = ("count", "bytes")


@contextlib.contextmanager
def progress_bar(total: float | None, description: str, enabled: bool = True, extra: str = "", *,
                 unit: str = "count", completed: float = 0, plain: bool = True):
    """Yields an object with ``advance(n, **fields)``; ``extra`` is a rich format string over the
    task's fields (e.g. ``"loss {task.fields[loss]:.3f}"``), set with ``update(loss=...)``.

    Args:
        total: the count (or bytes) at the end; None when unknown.
        description: the bar's label, plain text (a file name may hold ``[``: it is shown as is).
        enabled: False for no display; when stderr is not a terminal (a log file, a pipe), plain
            lines instead of a bar (:class:`_PlainBar`).
        extra: see above.
        unit: one of :data:`UNITS`.
        completed: where the bar starts, e.g. the bytes a resumed download already has (counted
            as done before this bar, so they do not inflate the transfer speed).
        plain: False for no plain lines off a terminal (a caller that logs each item itself).
    """
    if unit not in UNITS:
        raise ValueError(f"progress_bar unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if not enabled or (not plain and not sys.stderr.isatty()):
        yield _NoBar()
        return
    if not sys.stderr.isatty():
        yield _PlainBar(total, description, unit, completed)
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


class _Stages:
    """See :func:`stage_bar`."""

    def __init__(self, bar, description: str, total: int) -> None:
        self._bar, self._description, self._total = bar, description, total
        self._started = 0  # stages begun
        self._done = 0.0  # the bar's count

    def begin(self, label: str) -> None:
        """The previous stage is finished; ``label`` is under way (shown beside the description)."""
        self._bar.update(description=f"{self._description} ({label})")
        if self._started:
            self._move_to(min(self._started, self._total))
        self._started += 1

    def part(self, fraction: float) -> None:
        """A ``fraction`` of the current stage is done (e.g. one fit of several)."""
        self._move_to(min(self._done + fraction, self._started, self._total))

    def finish(self) -> None:
        self._bar.update(description=self._description)
        self._move_to(self._total)

    def _move_to(self, done: float) -> None:
        if done > self._done:
            self._bar.advance(done - self._done)
            self._done = done


class _NoStages:
    def begin(self, label: str) -> None:
        pass

    def part(self, fraction: float) -> None:
        pass


#: The stages object of no display (a default for functions that report their stages).
NO_STAGES = _NoStages()


@contextlib.contextmanager
def stage_bar(total: int, description: str, enabled: bool = True):
    """A progress display of work in ``total`` named stages of unknown length (an evaluation's
    model pass, baseline fits, ...): yields an object with ``begin(label)`` (the next stage starts:
    the one before is counted done) and ``part(fraction)`` (part of the current stage is done);
    the bar reads ``description (label)``, ``M/N`` stages, elapsed time and an estimate of the
    rest; leaving the block counts every stage done (a stage the data left out included)."""
    with progress_bar(total, description, enabled=enabled) as bar:
        stages = _Stages(bar, description, total)
        yield stages
        stages.finish()


#: Warnings :func:`warn_once` gave in this process.
WARNED: set[tuple[str, str]] = set()


def warn_once(message: str, about: str, stacklevel: int = 2, category: type[Warning] = RuntimeWarning) -> None:
    """Warn ``message`` once per process for ``about`` (the data it concerns): for data prepared
    again and again (a fine-tuning's candidates, a later evaluation). Python's own once-per-place
    rule does not hold there: any change of the warning filters (reading an NWB file makes one)
    clears its record of warnings given."""
    if (message, about) not in WARNED:
        WARNED.add((message, about))
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line, ``spikefm: warning: ...`` (not the two of the default format,
    with a source line): the command line sets it as ``warnings.showwarning``, and the workers of
    a study's process pool follow it."""
    print(f"spikefm: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
