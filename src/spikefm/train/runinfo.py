"""Self-description of a run directory: RUN_DIR/config.json.

config.json holds:
    config        the resolved RunConfig (`config_to_dict`), readable with `load_run_config`
    family        family name
    seed          cfg.train.seed
    world_size    number of processes that trained
    versions      {"spikefm", "torch", "numpy", "python"}
    git_commit    commit of the spikefm source tree, or null when not in a git checkout
    git_dirty     whether that tree had uncommitted changes (null when unknown)
    family_info   family.describe(cfg), e.g. the corpus manifest hash and session list
    created_utc   ISO-8601 time the file was written
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikefm.train.config import RunConfig, config_from_dict, config_to_dict

__all__ = ["run_info", "read_run_info", "read_family_info", "recorded_session_units", "load_run_config", "git_commit",
           "machine_info"]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit hash, dirty flag) of the git checkout holding `path` (default: this package)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def machine_info(device=None) -> dict[str, Any]:
    """The machine a measurement ran on (platform, CPUs, load, versions, GPU name)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        # Other processes compete for the CPU on shared machines; keep their load with the numbers.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_info(cfg: RunConfig, family_info: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The JSON-serialisable description written to RUN_DIR/config.json."""
    commit, dirty = git_commit()
    return {
        "config": config_to_dict(cfg),
        "family": cfg.family,
        "seed": cfg.train.seed,
        "world_size": world_size,
        "versions": {
            "spikefm": _version("spikefm"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "git_commit": commit,
        "git_dirty": dirty,
        "family_info": family_info,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN_DIR/config.json as a dict (one-line ValueError when missing, not JSON, too large to be
    a run description, or a symlink leading out of RUN_DIR)."""
    from spikefm.train.checkpoint import confined_file, read_json_file

    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        what = "is a file, not a folder" if Path(run_dir).exists() else "does not exist"
        raise ValueError(f"{run_dir} {what}; expected a spikefm run directory (spikefm train --out) or a "
                         "Hugging Face Llama folder: check the path")
    if not path.is_file():
        raise ValueError(_not_a_run(Path(run_dir), path))
    try:
        info = read_json_file(confined_file(run_dir, "config.json", what="run description"),
                              what="run description")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable JSON run description ({exc.strerror or exc}); "
                         "expected the config.json that spikefm train writes") from None
    except ValueError as exc:
        raise ValueError(f"{exc}; expected the config.json that spikefm train writes") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(info).__name__}")
    return info


def unfinished_finetune(folder: str | Path) -> str | None:
    """What to say of an ``auto`` fine-tuning stopped before it chose a candidate (its folder holds
    ``candidates/`` but no run yet), or None for any other folder."""
    folder = Path(folder)
    if (folder / "candidates").is_dir() and not (folder / "config.json").is_file():
        return (f"{folder} is an unfinished spikefm finetune (strategy auto: candidates/ holds the candidates "
                "trained so far, and none was chosen yet); run the same finetune command again to continue it")
    return None


def _not_a_run(run_dir: Path, path: Path) -> str:
    """Why the folder ``run_dir`` (without a config.json) is not a run, in the user's words: a
    corpus or a folder of recordings given where the run goes is said to be one."""
    unfinished = unfinished_finetune(run_dir)
    if unfinished is not None:
        return unfinished
    if (run_dir / "manifest.json").is_file():
        return (f"{run_dir} is a spikefm corpus (manifest.json), not a run folder; give the run folder (spikefm "
                f"train --out) first, and the corpus as --data {run_dir} where the command takes one")
    from spikefm.corpus.nwb import nwb_in_folder

    nwb = nwb_in_folder(run_dir)
    if nwb is not None:
        return (f"{run_dir} holds NWB recordings (e.g. {nwb.relative_to(run_dir)}), not a spikefm run folder; "
                f"give the run folder (spikefm train --out) first (to train on the recordings, build a corpus: "
                f"spikefm corpus build {run_dir} --out CORPUS_DIR)")
    return f"{path} not found; expected a spikefm run directory (spikefm train --out)"


def read_family_info(run_dir: str | os.PathLike, *, what: str = "a spikefm") -> dict[str, Any]:
    """The ``family_info`` object of RUN_DIR/config.json (what the family recorded about the run:
    sessions, window options and splits, ...); a one-line ValueError when the file or the object
    is missing, saying that ``what`` run directory (``"an NDT"``, ``"a NEDS"``) was expected."""
    fam = read_run_info(run_dir).get("family_info")
    if not isinstance(fam, dict):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: no 'family_info' object; expected {what} run "
                         "directory written by spikefm train")
    return fam


def recorded_session_units(family_info: dict[str, Any]) -> dict[str, int] | None:
    """Session id -> unit count as a run's ``family_info["sessions"]`` records it (the NDT and
    NEDS runs do), or None when that record is missing or malformed."""
    from spikefm.argtypes import is_int

    units = family_info.get("sessions")
    if not isinstance(units, dict) or not units or not all(
            isinstance(k, str) and is_int(v) and v > 0 for k, v in units.items()):
        return None
    return {k: int(v) for k, v in units.items()}


def load_run_config(run_dir: str | os.PathLike, *, model_cls: type, data_cls: type) -> RunConfig:
    """The RunConfig recorded in RUN_DIR/config.json, read with the family's config classes.

    A corpus recorded as a relative path (``--data corpus``: relative to the folder training ran
    in) is replaced by the absolute path the family recorded (``family_info.corpus``) when that
    folder exists, so a run is read the same from any working directory.

    :func:`spikefm.families.load_run_config` finds the classes in the family registry.
    """
    import dataclasses

    info = read_run_info(run_dir)
    if not isinstance(info.get("config"), dict):
        raise ValueError(f"{Path(run_dir) / 'config.json'} has no 'config' object; expected a run "
                         "directory written by spikefm train")
    cfg = config_from_dict(info["config"], model_cls=model_cls, data_cls=data_cls)
    corpus = getattr(cfg.data, "corpus", None)
    recorded = (info.get("family_info") or {}).get("corpus") if isinstance(info.get("family_info"), dict) else None
    if isinstance(corpus, str) and corpus and not os.path.isabs(corpus) and isinstance(recorded, str) \
            and os.path.isabs(recorded) and Path(recorded).is_dir() and dataclasses.is_dataclass(cfg.data):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=recorded))
    return cfg
