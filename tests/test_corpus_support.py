"""Helpers shared by the corpus tests (this module holds no tests): small NWB folders, what a
corpus folder holds, and the independent count (np.histogram) the binning is checked against."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spikefm import Corpus
from spikefm.cli import main as cli_main

from conftest import random_units, write_nwb


def write_sessions(folder: Path, num_files: int, *, seed: int, duration_s: float = 6.0,
                   first_units: int = 3, rate_hz: float = 5.0) -> list[Path]:
    """``folder/ses-K.nwb`` for K < num_files, file K with ``first_units + K`` units."""
    rng = np.random.default_rng(seed)
    return [write_nwb(folder / f"ses-{k}.nwb",
                      random_units(rng, first_units + k, duration_s, rate_hz=rate_hz),
                      ["A"] * (first_units + k)) for k in range(num_files)]


def histogram(units: list[np.ndarray], t_start_ms: int, num_bins: int, bin_ms: int = 20):
    """Per-unit np.histogram on the corpus's bin edges (an independent count)."""
    edges = (t_start_ms + bin_ms * np.arange(num_bins + 1)) / 1000.0
    return np.stack([np.histogram(u, bins=edges)[0] for u in units])


def session_matrix(corpus: Corpus, session_id: str) -> tuple[np.ndarray, int]:
    """A session's counts reassembled from its rows (any split), and its first bin's start."""
    rows = sorted((r for split in ("train", "test") for r in corpus.iter_rows(split)
                   if r.session_id == session_id), key=lambda r: r.t_start_ms)
    return np.concatenate([r.spike_counts for r in rows], axis=1), rows[0].t_start_ms


def content(path: Path) -> dict:
    """Every row of a corpus, by split, in a comparable form."""
    c = Corpus(path)
    return {split: sorted((r.session_id, r.segment_id, r.spike_counts.tobytes())
                          for r in c.iter_rows(split)) for split in ("train", "test")}


def snapshot(root: Path) -> dict:
    """Everything under ``root`` as it is on disk (links as links, not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI; it must fail with exactly one stderr line, ``spikefm: error: ...``."""
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("spikefm: error: "), (rc, err)
    return err[0]
