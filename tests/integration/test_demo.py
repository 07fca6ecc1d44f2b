"""`rollout demo` is the README's first command: it must keep working, on MLServer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env


def _model_servers_running() -> set[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if "rollout-demo-" in line}


@pytest.mark.mlserver
def test_demo_promotes_the_good_version_rolls_back_the_bad_one_and_cleans_up(tmp_path):
    before = _model_servers_running()
    result = subprocess.run([sys.executable, "-m", "rollout", "demo"], env=cli_env(tmp_path / "unused"),
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "ok  iris:v2: Promoted" in out
    assert "ok  iris:v3: RolledBack" in out
    v3_summary = out[out.index("iris:v3: RolledBack"):]
    assert ("error-rate" in v3_summary and "> max 0.05" in v3_summary) or "worse by" in v3_summary
    assert _model_servers_running() <= before, "the demo left processes running"
    workdir = next(line.split()[1] for line in out.splitlines() if line.startswith("workdir "))
    assert "temporary" in out and not Path(workdir).exists(), "the demo's temporary registry and state were left"
