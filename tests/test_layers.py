"""The layer contract (pyproject.toml, [tool.importlinter]) holds, and breaks when it should.

`lint-imports` runs on the real tree, then on copies of it with one forbidden import added: a
lower layer importing a higher one, one family importing another, the corpus importing torch,
and a module other than the CLI importing the experiments. Each copy must fail, naming the
contract.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        found = shutil.which("lint-imports")
        assert found, "lint-imports not found: pip install -e '.[dev]' installs import-linter"
        exe = Path(found)
    env = {"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(ROOT / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_layer_contract_holds_on_the_tree():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("train/loop.py", "import spikefm.families", "Layers: imports point down"),
    ("corpus/binning.py", "from spikefm.data import windows", "Layers: imports point down"),
    ("eval/metrics.py", "from spikefm.experiments import transfer", "Layers: imports point down"),
    ("families/ndt/tasks.py", "from spikefm.experiments import transfer", "Layers: imports point down"),
    ("families/ar/tokens.py", "import spikefm.families.ndt.model", "Model families never import each other"),
    ("families/ndt/masking.py", "from spikefm.families.ar import tokens", "Model families never import each other"),
    ("corpus/reader.py", "import torch", "The corpus layer never imports torch"),
])
def test_a_forbidden_import_breaks_the_contract(tmp_path, module, line, contract):
    root = _copy_tree(tmp_path)
    path = root / "src" / "spikefm" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    proc = _lint_imports(root)
    assert proc.returncode != 0, proc.stdout
    broken = proc.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, proc.stdout
