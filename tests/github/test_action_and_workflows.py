"""action.yml and the workflows: they parse, reference only inputs, steps and outputs
that exist, and the action's main step really runs the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load(path: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / path).read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [e for v in node.values() for e in expressions(v)] + [e for k in node for e in expressions(k)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return EXPR.findall(node) if isinstance(node, str) else []


def referenced(exprs: list[str], prefix: str) -> set[str]:
    return {m for e in exprs for m in re.findall(rf"\b{re.escape(prefix)}\.([A-Za-z0-9_-]+)", e)}


ACTION = load("action.yml")
ACTION_INPUTS = set(ACTION["inputs"])
ACTION_OUTPUTS = set(ACTION["outputs"])


def test_the_action_is_composite_and_offers_the_documented_inputs_and_outputs() -> None:
    assert ACTION["runs"]["using"] == "composite"
    assert {"command", "model", "spec", "platform", "kubeconfig", "context", "prometheus-url"} <= ACTION_INPUTS
    assert {"phase", "rollout-id", "stable-version", "candidate-version"} <= ACTION_OUTPUTS
    steps = ACTION["runs"]["steps"]
    assert any("pip install" in s.get("run", "") for s in steps)
    assert any(s.get("uses", "").startswith("actions/cache@") for s in steps)


def test_the_action_references_only_inputs_and_steps_that_exist() -> None:
    exprs = expressions(ACTION)
    assert referenced(exprs, "inputs") <= ACTION_INPUTS
    step_ids = {s["id"] for s in ACTION["runs"]["steps"] if "id" in s}
    assert referenced(exprs, "steps") <= step_ids
    for name, out in ACTION["outputs"].items():
        assert out["value"] == f"${{{{ steps.run.outputs.{name} }}}}"


def test_ci_runs_the_projects_own_tests() -> None:
    ci = load(".github/workflows/ci.yml")
    runs = [s.get("run", "") for job in ci["jobs"].values() for s in job["steps"]]
    assert "bash .ci/run" in runs
    assert {"push", "pull_request"} <= set(ci["on"])


def test_the_example_workflow_wires_tags_dispatch_and_per_model_concurrency() -> None:
    wf = load(".github/workflows/rollout.yml")
    assert wf["on"]["push"]["tags"] == ["*/v*"]
    dispatch = wf["on"]["workflow_dispatch"]["inputs"]
    assert {"promote", "rollback"} <= set(dispatch["command"]["options"])
    exprs = expressions(wf)
    assert referenced(exprs, "inputs") <= set(dispatch)
    jobs = wf["jobs"]
    resolve_outputs = set(jobs["resolve"]["outputs"])
    assert referenced(exprs, "needs.resolve.outputs") <= resolve_outputs
    rollout = jobs["rollout"]
    assert rollout["concurrency"] == {"group": "rollout-${{ needs.resolve.outputs.name }}", "cancel-in-progress": False}
    [action_step] = [s for s in rollout["steps"] if s.get("uses") == "./"]
    assert set(action_step["with"]) <= ACTION_INPUTS
    step_refs = {m for e in exprs for m in re.findall(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)", e)}
    for step_id, output in step_refs:
        if step_id == action_step["id"]:
            assert output in ACTION_OUTPUTS, output
        else:
            assert step_id == "ref" and output in resolve_outputs


@pytest.fixture
def action_script(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The action's main step as bash would run it, with `rollout` and `python` on PATH."""
    [step] = [s for s in ACTION["runs"]["steps"] if s.get("id") == "run"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rollout").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rollout "$@"\n')
    (bin_dir / "rollout").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    out = tmp_path / "github-output"
    out.touch()
    env = {**{k: v for k, v in os.environ.items() if k not in ("CI",)},
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "RUNNER_TEMP": str(tmp_path),
           "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
           "INPUT_SPEC": "rollout.yaml", "INPUT_PLATFORM": "", "INPUT_CONTEXT": "", "INPUT_PROMETHEUS_URL": "",
           "INPUT_TO": "", "INPUT_FULL": "false", "INPUT_SUPERSEDE": "false", "INPUT_OK_EXIT_CODES": "0 4"}
    return step["run"], env


def test_the_action_rejects_an_unknown_command_with_exit_2(action_script: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    script, env = action_script
    env.update({"INPUT_COMMAND": "deploy", "INPUT_MODEL": "iris:v1", "INPUT_HOME": str(tmp_path / "home")})
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "::error title=rollout action::input command must be" in proc.stdout


def test_the_action_runs_the_cli_and_sets_the_outputs(action_script: tuple[str, dict[str, str]], tmp_path: Path,
                                                       write_spec: Any, local_home: Path) -> None:
    script, env = action_script
    spec = write_spec()
    env.update({"INPUT_COMMAND": "start", "INPUT_MODEL": "iris:v1", "INPUT_SPEC": str(spec),
                "INPUT_HOME": str(local_home)})
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = Path(env["GITHUB_OUTPUT"]).read_text()
    assert re.search(r"^phase<<(\S+)\nPromoted\n\1$", outputs, re.M)
    assert re.search(r"^stable-version<<(\S+)\nv1\n\1$", outputs, re.M)

    env.update({"INPUT_COMMAND": "status", "INPUT_MODEL": "iris:v1", "INPUT_PROMETHEUS_URL": "http://127.0.0.1:9/"})
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stable    v1" in proc.stdout
    rewritten = yaml.safe_load((tmp_path / "rollout-spec.yaml").read_text())
    assert rewritten["analysis"]["prometheus"]["url"] == "http://127.0.0.1:9/"
