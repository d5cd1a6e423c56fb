"""Self-contained HTML reports of corpora, runs, evaluations and studies (``spikefm report``).

One file per report: tables and figures (inline SVG and canvas drawn by a small hand-written
script), all data inlined, nothing loaded from the network. Numbers in tables carry the JSON
pointer of the file they were read from (``data-src``, ``data-path``) and their exact value.

Example::

    from spikefm.report import write_report
    write_report("runs/ndt_results.json", "report.html", predictions="runs/preds")

Layout: :mod:`~spikefm.report.build` (what PATH is, assembling), one module per section
(:mod:`~spikefm.report.corpus`, :mod:`~spikefm.report.training`,
:mod:`~spikefm.report.evaluation`, :mod:`~spikefm.report.study`,
:mod:`~spikefm.report.provenance`), :mod:`~spikefm.report.page` (HTML, atomic write),
:mod:`~spikefm.report.charts` (figure specs, size budgets), :mod:`~spikefm.report.assets`
(stylesheet and script), :mod:`~spikefm.report.quickstart` (``OUT/report.html`` of the quickstart).
"""
from __future__ import annotations

from spikefm.report.build import KINDS, build_report, report_kind, write_report
from spikefm.report.page import MAX_REPORT_BYTES
from spikefm.report.quickstart import write_quickstart_report

__all__ = ["KINDS", "MAX_REPORT_BYTES", "build_report", "report_kind", "write_report",
           "write_quickstart_report"]
