"""The package's layering holds (import-linter's contracts in pyproject.toml), the
contracts can fail, and `strategies` is installed only as ``rollout.strategies``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=100,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_layering_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("spec.py", "import rollout.cli"),                   # the spec reaching for the CLI
    ("engine/reconcile.py", "import rollout.controller"),  # the engine reaching for a runner
    ("platforms/base.py", "import rollout.app"),          # a platform reaching for the wiring
])
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "rollout", copy / "rollout", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "manifests"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "rollout" / module
    target.write_text(target.read_text() + f"\n{upward}  # planted by the test\n")
    result = lint_imports(copy)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


def test_strategies_are_installed_inside_the_package_only() -> None:
    packages = find_packages(where=str(ROOT), include=["rollout*"])  # pyproject.toml's [tool.setuptools.packages.find]
    assert "rollout.strategies" in packages
    assert not any(p == "strategies" or p.startswith("strategies.") for p in packages)
