"""Every `spikefm ...` command in the README's code blocks parses with today's command line (a
renamed or removed flag fails here, not on a user's machine). Commands holding placeholders of
alternatives (`[--x]`, `a|b`, `...`) or shell syntax are left out; nothing is run."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from spikefm.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The arguments after `spikefm` (or `torchrun ... -m spikefm.cli`) of each command line in
    the README's fenced code blocks, continuation lines joined, trailing comments dropped."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), re.S):
        lines, i = block.splitlines(), 0
        while i < len(lines):
            line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            text = line.strip().removeprefix("$ ")
            m = re.match(r"^(?:OMP_NUM_THREADS=\d+ )?(?:spikefm|torchrun .*? -m spikefm\.cli) (.*)$", text)
            if m:
                out.append(re.sub(r"\s+#.*$", "", m.group(1)))
    return out


COMMANDS = [c for c in readme_commands() if not any(x in c for x in ("[", "|", "...", "<", "&&", ";"))]


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 30, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(shlex.split(command))
    except SystemExit as exc:
        assert not exc.code, f"spikefm {command}\n{err.getvalue()}"
