"""`rollout demo --registry mlflow`: the demo against a real local MLflow registry."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.integration.conftest import cli_env

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
# Looked up, not imported: MLServer's generated protobufs and tritonclient's share the
# `inference` package, and importing both into one pytest process collides.
if importlib.util.find_spec("mlserver_mlflow") is None:
    pytest.skip("the mlflow extra is not installed", allow_module_level=True)


@pytest.mark.mlserver
@pytest.mark.mlflow
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_with_the_mlflow_registry_promotes_records_and_rolls_back(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rollout", "demo", "--registry", "mlflow"],
                          env=cli_env(tmp_path / "unused"), capture_output=True, text=True, timeout=850, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok  iris:2: Promoted" in done.stdout and "ok  iris:3: RolledBack" in done.stdout
    assert "MLflow: iris@production -> 2 (promoted" in done.stdout
    assert "MLflow: iris@production -> 2 (rolled_back" in done.stdout  # the alias stays on what serves
