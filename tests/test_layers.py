"""The import direction of the package layout (README: Architecture) holds, and the check of it can fail.

The contracts live in pyproject.toml ([tool.importlinter]); import-linter checks them, function-level imports
included. A new module or package directly under runner/ must be given a layer, so the shape cannot drift back.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("runner", "reports", "equiv")


def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess:
    """import-linter on the packages found first on the path from `cwd` (its copies shadow the installed ones)."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "300"}  # wide: no wrapped lines to match across
    command = [str(LINT_IMPORTS), "--no-cache", *(arg for c in contract_ids for arg in ("--contract", c))]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_every_part_of_runner_has_a_layer():
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    parts = {f"runner.{p.stem}" for p in (ROOT / "runner").glob("*.py") if p.stem not in ("__init__", "__main__")}
    parts |= {f"runner.{p.parent.name}" for p in (ROOT / "runner").glob("*/__init__.py")}
    assert parts - named == set(), "give each new part of runner/ a layer in pyproject.toml [tool.importlinter]"
    assert named - parts - {"reports", "equiv"} == set(), "a layer names a module that is gone"


def copy_of_the_code(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(("module", "line", "contract", "reported"), [
    ("runner/spec/identity.py", "from runner.store import Database", "layers",  # spec -> store: up
     "runner.spec.identity -> runner.store"),
    ("runner/store/tables.py", "from runner.search import plan", "layers",  # store -> search: up
     "runner.store.tables -> runner.search"),
    ("runner/training/loop.py", "from runner.cli import main", "cli-on-top", "runner.training.loop -> runner.cli"),
    ("equiv/groups.py", "import runner.spec", "equiv-alone", "equiv.groups -> runner.spec"),
])
def test_an_import_against_the_direction_breaks_its_contract(tmp_path, module, line, contract, reported):
    copy = copy_of_the_code(tmp_path)
    assert lint_imports(copy, contract).returncode == 0  # the copy keeps the contract before the injection
    path = copy / module
    path.write_text(path.read_text() + f"\n\ndef _injected():\n    {line}  # against the direction\n")
    result = lint_imports(copy, contract)
    assert result.returncode != 0 and "Contracts: 0 kept, 1 broken." in result.stdout, result.stdout
    assert reported in result.stdout, result.stdout
