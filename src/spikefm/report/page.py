"""One self-contained HTML page: sections of text, tables and figures, written atomically.

Everything the page needs is inside the file (stylesheet, chart script, figure data); a
Content-Security-Policy forbids loading anything else, so a report opens the same offline.

Numbers in tables are :class:`Num` cells: the text shows ``format(value, spec)`` (``.4f`` by
default, as the command line's tables print them) and the cell carries the exact value in
``data-value`` and, when the number comes from a JSON file, where it was read in ``data-src``
(a source name) and ``data-path`` (a JSON pointer, RFC 6901), so a reader or a test can check
every number against its file.

Example::

    page = Page("my report")
    sec = page.section("evaluation", "Evaluation")
    sec.table(["model", "bits"], [["1-gram", Num(0.7432, src="results", path="/1-gram/bits")]])
    sec.figure(charts.bars(["a", "b"], [charts.bar_series("x", [1, 2])], y_label="value"), "two bars")
    page.write("report.html")
"""
from __future__ import annotations

import datetime as _dt
import html
import itertools
import json
import math
from pathlib import Path
from typing import Any, Sequence

from spikefm._version import __version__
from spikefm.fileio import write_bytes_atomic
from spikefm.report.assets import SCRIPT, STYLE

#: A report larger than this is refused (figures are decimated well below it).
MAX_REPORT_BYTES = 5_000_000

_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; font-src 'none'; connect-src 'none'")


def pointer(*keys: Any) -> str:
    """JSON pointer of nested keys: ``pointer("a", "b/c", 0)`` -> ``/a/b~1c/0``."""
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the page's
    script reads them back) and numpy scalars/arrays as Python values: strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def format_number(value: Any, spec: str = ".4f") -> str:
    """A cell's text: ``-`` for None, ``nan``/``inf``/``-inf``, ``format(value, spec)`` else."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format(value, spec)
    if isinstance(value, int):
        return format(value, ",d")
    return str(value)


class Num:
    """A numeric table cell (see the module docstring)."""

    def __init__(self, value: Any, spec: str = ".4f", *, src: str | None = None,
                 path: str | None = None, suffix: str = ""):
        self.value, self.spec, self.src, self.path, self.suffix = value, spec, src, path, suffix

    def html(self) -> str:
        attrs = ""
        if isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            attrs += f' data-value="{html.escape(repr(self.value))}"'
        if self.path is not None:
            attrs += f' data-src="{html.escape(self.src or "")}" data-path="{html.escape(self.path)}"'
        text = format_number(self.value, self.spec) + self.suffix
        return f'<td class="num"{attrs}>{html.escape(text)}</td>'


def _is_nan(c: Any) -> bool:
    v = c.value if isinstance(c, Num) else c
    return isinstance(v, float) and math.isnan(v)


def _is_inf(c: Any) -> bool:
    v = c.value if isinstance(c, Num) else c
    return isinstance(v, float) and math.isinf(v)


def _is_blank(c: Any) -> bool:
    return c is None or (isinstance(c, Num) and c.value is None)


def _wrap(table: str, caption: str | None = None, notes: Sequence[tuple[str, str]] = ()) -> str:
    """A table in its box (see :mod:`spikefm.report.assets`): the caption above, which wraps, the
    table in a box that scrolls sideways when it is wider than the section, notes under it
    (``(css class, text)`` pairs)."""
    cap = f'<div class="table-caption">{html.escape(caption)}</div>' if caption else ""
    below = "".join(f'<p class="note {cls}">{html.escape(text)}</p>' for cls, text in notes)
    return f'<div class="table-wrap">{cap}<div class="table-scroll">{table}</div>{below}</div>'


def _reasons(header: Sequence[Any], rows: Sequence[Sequence[Any]], hit, why: Sequence[tuple[str, str]]) -> list[str]:
    """The reasons of the cells for which ``hit(cell)`` holds: for each, the first ``(text, reason)``
    pair whose text is part of the cell's row name (first cell) or column header; each reason once."""
    out = []
    for row in rows:
        for j, c in enumerate(row):
            if hit(c):
                names = (str(row[0]), str(header[j]) if j < len(header) else "")
                out.append(next((r for text, r in why if any(text in n for n in names)), ""))
    return [r for r in dict.fromkeys(out) if r]


def _cell(c: Any) -> str:
    if isinstance(c, Num):
        return c.html()
    if c is None or (isinstance(c, (int, float)) and not isinstance(c, bool)):
        return Num(c).html()
    return f"<td>{html.escape(format_number(c))}</td>"


class Section:
    """Blocks of one section, in order; build with the methods below."""

    def __init__(self, page: "Page", key: str, title: str):
        self.page, self.key, self.title = page, key, title
        self.blocks: list[str] = []
        self._figs: list[str] | None = None

    def _add(self, block: str) -> None:
        if self._figs is not None:
            self.end_figures()
        self.blocks.append(block)

    def heading(self, text: str, level: int = 3) -> None:
        self._add(f"<h{level}>{html.escape(text)}</h{level}>")

    def note(self, text: str, *, warn: bool = False) -> None:
        self._add(f'<p class="{"warn" if warn else "note"}">{html.escape(text)}</p>')

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None,
              key: str | None = None, nan_why: Sequence[tuple[str, str]] = (),
              inf_why: Sequence[tuple[str, str]] = (), blank_why: Sequence[tuple[str, str]] = ()) -> None:
        """A table; cells are :class:`Num`, numbers (shown with ``.4f`` / thousands) or text.

        ``nan_why``: ``(text, reason)`` pairs; for each cell shown as ``nan``, the first pair whose
        ``text`` is part of the cell's row name (first cell) or column header gives its reason in a
        note under the table (no note when no cell is nan). ``inf_why`` and ``blank_why``: the same
        for cells shown as ``inf`` / ``-inf`` and as ``-`` (None: a value not computed), each in a
        note of its own."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        data_key = f' data-table="{html.escape(key)}"' if key else ""
        notes = []
        for cls, label, hit, why in (("nan-note", "Why nan", _is_nan, nan_why),
                                     ("inf-note", "Why inf", _is_inf, inf_why),
                                     ("blank-note", "Why -", _is_blank, blank_why)):
            reasons = _reasons(header, rows, hit, why) if why else []
            if reasons:
                notes.append((cls, f"{label}: " + "; ".join(reasons).rstrip(".") + "."))
        self._add(_wrap(f'<table class="data"{data_key}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
                        caption, notes))

    def kv(self, pairs: Sequence[tuple[str, Any]], *, key: str | None = None) -> None:
        """A two-column table of names and values (None values are left out)."""
        rows = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in pairs
                       if v is not None and not (isinstance(v, Num) and v.value is None))
        if not rows:
            return
        data_key = f' data-table="{html.escape(key)}"' if key else ""
        self._add(_wrap(f'<table class="data kv"{data_key}><tbody>{rows}</tbody></table>'))

    def details(self, summary: str, text: str) -> None:
        """Collapsed preformatted text (configs, manifests)."""
        self._add(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")

    def figure(self, spec: dict, caption: str, *, wide: bool = False) -> str:
        """A chart (a spec from :mod:`spikefm.report.charts`); consecutive figures share a row.
        Returns the figure's id."""
        fig_id = self.page.add_data(spec)
        hint = {"xy": "drag to zoom, double-click to reset", "raster": "drag to zoom in time, "
                "double-click to reset"}.get(spec.get("kind"), "")
        hint_html = f' <span class="hint">({hint})</span>' if hint else ""
        block = (f'<figure class="{"wide" if wide else ""}"><div class="fig" id="{fig_id}" data-fig="{fig_id}" '
                 f'data-kind="{spec["kind"]}"></div><figcaption>{html.escape(caption)}{hint_html}'
                 "</figcaption></figure>")
        if self._figs is None:
            self._figs = []
        self._figs.append(block)
        return fig_id

    def end_figures(self) -> None:
        figs, self._figs = self._figs, None
        if figs:
            self.blocks.append('<div class="figs">' + "".join(figs) + "</div>")

    def html(self) -> str:
        self.end_figures()
        return (f'<section class="report-section" id="{self.key}" data-section="{self.key}">'
                f"<h2>{html.escape(self.title)}</h2>" + "".join(self.blocks) + "</section>")


class Page:
    """A report: a title, sections, and the figure data they use."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title, self.subtitle = title, subtitle
        self.sections: list[Section] = []
        self.data: dict[str, dict] = {}
        self._ids = itertools.count(1)

    def section(self, key: str, title: str) -> Section:
        """A new section (``key`` is its HTML id; a repeated key gets a numbered suffix)."""
        used = {s.key for s in self.sections}
        unique = key
        for i in itertools.count(2):
            if unique not in used:
                break
            unique = f"{key}-{i}"
        sec = Section(self, unique, title)
        self.sections.append(sec)
        return sec

    def add_data(self, spec: dict) -> str:
        fig_id = f"fig{next(self._ids)}"
        self.data[fig_id] = json_safe(spec)
        return fig_id

    def html(self) -> str:
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        toc = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "".join(s.html() for s in self.sections)
        # "</" inside a script element would end it early; JSON allows the escaped form.
        data = json.dumps(self.data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
            f'<header class="top"><h1>{html.escape(self.title)}</h1>'
            f'<div class="sub">{html.escape(self.subtitle)}</div></header>'
            f'<nav class="toc">{toc}</nav><main>{body}</main>'
            f"<footer>spikefm {html.escape(__version__)} report, written {created}; "
            "self-contained: no network needed to view it.</footer>"
            f'<script type="application/json" id="spikefm-data">{data}</script>'
            f"<script>{SCRIPT}</script></body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically (temporary name, fsync, rename)."""
        text = self.html().encode("utf-8")
        if len(text) > MAX_REPORT_BYTES:
            raise RuntimeError(f"the report would be {len(text) / 1e6:.1f} MB, over the "
                               f"{MAX_REPORT_BYTES / 1e6:.0f} MB limit; this is a bug in its "
                               "figure budgets, please report it")
        path = Path(path)
        write_bytes_atomic(path, text)
        return path
