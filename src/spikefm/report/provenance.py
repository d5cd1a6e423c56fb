"""The provenance section: where every part of a report came from (commands, configs, corpus
manifest hashes, versions, machines), collected while the other sections are built."""
from __future__ import annotations

import json
import platform
import sys
from typing import Any, Sequence

from spikefm._version import __version__
from spikefm.report.page import Page, json_safe


class Provenance:
    """Entries added by the section builders, written last by :meth:`section`."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, list[tuple[str, Any]], dict[str, Any]]] = []

    def add(self, title: str, pairs: Sequence[tuple[str, Any]], *,
            details: dict[str, Any] | None = None) -> None:
        """One source: name/value pairs (None values left out) and collapsed JSON details."""
        self.entries.append((title, list(pairs), {k: v for k, v in (details or {}).items() if v is not None}))

    def add_run_info(self, title: str, info: dict) -> None:
        """A run's ``config.json`` (``spikefm.train.runinfo``): versions, commit, corpus, config."""
        fam = info.get("family_info") or {}
        versions = info.get("versions") or {}
        self.add(title, [
            ("command", info.get("command")),
            ("family", info.get("family")),
            ("seed", info.get("seed")),
            ("world size", info.get("world_size")),
            ("corpus", fam.get("corpus")),
            ("corpus manifest sha256", fam.get("corpus_manifest_sha256")),
            ("git commit", info.get("git_commit")),
            ("uncommitted changes", info.get("git_dirty")),
            ("created (UTC)", info.get("created_utc")),
            *((f"{k} version", v) for k, v in versions.items()),
        ], details={"config": info.get("config"), "machine": info.get("machine")})

    def section(self, page: Page, command: str | None) -> None:
        sec = page.section("provenance", "Provenance")
        sec.kv([("report command", command),
                ("report written by", f"spikefm {__version__}, Python {platform.python_version()} "
                                      f"on {platform.platform()}")], key="provenance-report")
        for title, pairs, details in self.entries:
            sec.heading(title, 4)
            if not any(v is not None for _, v in pairs):
                sec.note("(no provenance recorded in this file)")
            sec.kv([(k, v if isinstance(v, (int, float)) and not isinstance(v, bool) else
                     (None if v is None else str(v))) for k, v in pairs])
            for name, value in details.items():
                sec.details(name, json.dumps(json_safe(value), indent=2))


def command_line() -> str:
    """This process's command line, as ``spikefm ...`` when run through the entry point."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("spikefm", "cli.py")):
        argv[0] = "spikefm"
    return " ".join(argv)
