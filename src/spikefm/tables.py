"""The one text-table helper: every table spikefm prints goes through :func:`render_table`.

Tables are drawn by rich (borders in plain ASCII so they survive logs, pipes and CI consoles)
and returned as a string, so callers decide where to print them and tests can read them.

Example::

    >>> print(render_table(["model", "bits"], [["1-gram", "0.7432"]], align="<>"))
    model     bits
    --------------
    1-gram  0.7432
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

__all__ = ["render_table", "fmt_number"]


def fmt_number(value: Any, spec: str = ".4f") -> str:
    """A table cell: ``-`` for None, ``nan`` for NaN, ``format(value, spec)`` for floats, str else."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, spec)
    return str(value)


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                 align: str | None = None, footer: Sequence[str] = ()) -> str:
    """Render a text table.

    Args:
        header: column names.
        rows: one sequence of cells per row (cells are converted with :func:`fmt_number`).
        title: an optional first line.
        align: one character per column, ``<`` left or ``>`` right; default: the first column
            left, the others right.
        footer: lines printed under the table (notes such as skipped tasks).

    Returns:
        The table as one string without a trailing newline.

    Raises:
        ValueError: a row has a different number of cells than the header, or ``align`` does
            not have one ``<``/``>`` per column.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    ncol = len(header)
    if align is None:
        align = "<" + ">" * (ncol - 1)
    if len(align) != ncol or set(align) - set("<>"):
        raise ValueError(f"align must be one '<' or '>' per column ({ncol}), got {align!r}")
    for i, row in enumerate(rows):
        if len(row) != ncol:
            raise ValueError(f"row {i} has {len(row)} cells, the header has {ncol}: {list(row)!r}")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, safe_box=True,
                  header_style="", title=None, padding=(0, 1), collapse_padding=True)
    for name, a in zip(header, align):
        table.add_column(str(name), justify="left" if a == "<" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt_number(c) for c in row))
    buf = io.StringIO()
    console = Console(file=buf, width=10_000, color_system=None, force_terminal=False,
                      legacy_windows=False, soft_wrap=True)
    console.print(table)
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    # rich draws the SIMPLE_HEAD rule with box characters; keep the output plain ASCII.
    lines = [line.replace("\u2500", "-").replace("\u2501", "-") for line in lines if line.strip()]
    out = ([title] if title else []) + lines + list(footer)
    return "\n".join(out)
