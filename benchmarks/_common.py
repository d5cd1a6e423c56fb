"""What every benchmark records about the machine it ran on, and how the ones that run the
README's commands literally call them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spikefm.train.runinfo import machine_info

__all__ = ["add_literal_options", "add_soup_option", "soup_flags", "machine_info", "spikefm_cli", "synth_corpus"]


def spikefm_cli(*args: str, cwd: Path) -> None:
    """``spikefm ARGS`` in ``cwd``, one thread, output discarded (errors raise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "spikefm.cli", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def add_literal_options(ap, *, seeds: str) -> None:
    """The options of every benchmark that runs the README's commands on ``spikefm synth`` data."""
    ap.add_argument("--seeds", default=seeds, help="comma-separated synthetic seeds")
    ap.add_argument("--sessions", type=int, default=12, help="spikefm synth --sessions")
    ap.add_argument("--split", choices=["val", "test"], default="test",
                    help="the windows scored (val: for choosing settings)")
    ap.add_argument("--work", type=Path, required=True, help="folder for data and runs (reused when present)")
    ap.add_argument("--workers", type=int, default=0, help="parallel seeds (default: all)")
    ap.add_argument("--out", type=Path, required=True)


def add_soup_option(ap) -> None:
    """``--soup / --no-soup``, passed on to ``spikefm finetune`` (neither: finetune's own default)."""
    import argparse

    ap.add_argument("--soup", action=argparse.BooleanOptionalAction, default=None,
                    help="spikefm finetune --soup / --no-soup (default: neither, finetune's own default; "
                         "results measured before 2026-12-06 ran without the soup: --no-soup)")


def soup_flags(soup: bool | None) -> list[str]:
    """The ``spikefm finetune`` flags of :func:`add_soup_option`'s value."""
    return [] if soup is None else ["--soup" if soup else "--no-soup"]


def synth_corpus(root: Path, *, seed: int, sessions: int, synth_args=(), build_args=()):
    """``spikefm synth nwb`` and ``spikefm corpus build nwb --out corpus`` in ``root`` (each skipped
    when its output is already there); returns the corpus."""
    from spikefm.corpus.reader import Corpus

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "nwb").is_dir():
        spikefm_cli("synth", "nwb", "--sessions", str(sessions), "--seed", str(seed), *synth_args, cwd=root)
    if not (root / "corpus" / "manifest.json").is_file():
        spikefm_cli("corpus", "build", "nwb", "--out", "corpus", "--quiet", *build_args, cwd=root)
    return Corpus(root / "corpus")
