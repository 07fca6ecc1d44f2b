"""action.yml and the workflows: they parse, reference only inputs, steps and outputs
that exist, and every `run:` step works as the GitHub runner runs it (bash -e -o pipefail)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.github.test_github_actions_cli import parse_outputs

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


def test_no_step_of_the_action_splices_an_expression_into_its_script() -> None:
    """Inputs reach `run:` scripts through env only: ${{ }} in a script is an injection."""
    for step in ACTION["runs"]["steps"]:
        assert "${{" not in step.get("run", ""), step.get("name")


# --------------------------------------------------------------------------- the runner


class Context:
    """The expression contexts a composite action's steps see: inputs, steps.<id>.outputs,
    runner and github (enough of the expression language for action.yml: a context
    value, ``a || b``, and ``x == 'lit'`` / ``x != 'lit'``)."""

    def __init__(self, inputs: dict[str, str]) -> None:
        defaults = {k: str(v.get("default", "")) for k, v in ACTION["inputs"].items()}
        self.inputs = {**defaults, **inputs}
        self.steps: dict[str, dict[str, str]] = {}

    def value(self, ref: str) -> str:
        ref = ref.strip()
        if ref.startswith("'") and ref.endswith("'"):
            return ref[1:-1]
        parts = ref.split(".")
        if parts[0] == "inputs":
            return self.inputs[parts[1]]
        if parts[0] == "steps":
            assert parts[2] == "outputs", ref
            return self.steps.get(parts[1], {}).get(parts[3], "")
        return {"runner.os": "Linux", "github.action_ref": "", "github.sha": "abc123"}[ref]

    def evaluate(self, expr: str) -> str:
        m = re.fullmatch(r"\s*(.+?)\s*(==|!=)\s*('[^']*')\s*", expr)
        if m:
            equal = self.value(m[1]) == self.value(m[3])
            return "true" if equal == (m[2] == "==") else "false"
        for alternative in expr.split("||"):
            v = self.value(alternative)
            if v:
                return v
        return ""

    def substitute(self, text: str) -> str:
        return EXPR.sub(lambda m: self.evaluate(m[1]), text)


@dataclass
class ActionRun:
    code: int  # the action's result: the failing step's exit code, 0 if every step passed
    stdout: str
    outputs: dict[str, str]  # the action's outputs, as a calling workflow sees them
    summary: str
    env_file: str  # what the action left in $GITHUB_ENV / $GITHUB_PATH for later steps of the job
    path_file: str
    spec_copy: Path | None


class ActionRunner:
    """Runs action.yml's steps the way the runner runs a composite action: each `run:`
    as ``bash --noprofile --norc -e -o pipefail {0}`` with the step's env, fresh
    $GITHUB_OUTPUT per step and the job's $GITHUB_STEP_SUMMARY, $GITHUB_ENV and
    $GITHUB_PATH; a failing step ends the action. The `uses:` steps are played:
    setup-python reports this interpreter, and the cache is a hit on a venv whose
    `rollout` runs this checkout (pip installs nothing here)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "runner-home"
        venv_bin = self.home / ".cache" / "rollout-action" / "venv" / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "rollout").write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m rollout "$@"\n')
        (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        for f in venv_bin.iterdir():
            f.chmod(0o755)
        self.temp = tmp / "runner-temp"
        self.temp.mkdir()
        self.runs = 0

    def run(self, workdir: Path, **inputs: str) -> ActionRun:
        self.runs += 1
        job = self.tmp / f"job-{self.runs}"
        job.mkdir()
        files = {k: job / k.lower() for k in ("GITHUB_STEP_SUMMARY", "GITHUB_ENV", "GITHUB_PATH")}
        for f in files.values():
            f.touch()
        ctx = Context(inputs)
        stdout, code = [], 0
        for i, step in enumerate(ACTION["runs"]["steps"]):
            if "if" in step and ctx.substitute(step["if"]) != "true":
                continue
            if "uses" in step:
                played = {"actions/setup-python": {"python-path": sys.executable, "python-version": "3.11.9"},
                          "actions/cache": {"cache-hit": "true"}}[step["uses"].split("@")[0]]
                ctx.steps[step.get("id", f"_{i}")] = played
                continue
            assert step["shell"] == "bash"
            script = job / f"step-{i}.sh"
            script.write_text(step["run"])
            output = job / f"output-{i}"
            output.touch()
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
                   "GITHUB_ACTIONS": "true", "CI": "true", "RUNNER_TEMP": str(self.temp),
                   "GITHUB_ACTION_PATH": str(ROOT), "GITHUB_ACTION": "__rollout", "GITHUB_OUTPUT": str(output),
                   **{k: str(v) for k, v in files.items()},
                   **{k: ctx.substitute(str(v)) for k, v in (step.get("env") or {}).items()}}
            proc = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(script)], env=env,
                                  cwd=workdir, capture_output=True, text=True, timeout=240)
            stdout.append(proc.stdout + proc.stderr)
            ctx.steps[step.get("id", f"_{i}")] = parse_outputs(output.read_text())
            if proc.returncode != 0:
                code = proc.returncode
                break
        outputs = {name: ctx.substitute(o["value"]) for name, o in ACTION["outputs"].items()}
        copy = self.temp / "rollout-spec-__rollout.yaml"
        return ActionRun(code, "".join(stdout), outputs, files["GITHUB_STEP_SUMMARY"].read_text(),
                         files["GITHUB_ENV"].read_text(), files["GITHUB_PATH"].read_text(),
                         copy if copy.exists() else None)


@pytest.fixture
def action(tmp_path: Path) -> ActionRunner:
    return ActionRunner(tmp_path)


def test_an_unknown_command_or_bad_ok_exit_codes_fail_with_exit_2(action: ActionRunner, tmp_path: Path) -> None:
    run = action.run(tmp_path, command="deploy", model="iris:v1")
    assert run.code == 2 and run.outputs["exit-code"] == "2"
    assert "::error title=rollout action::input command must be" in run.stdout
    run = action.run(tmp_path, command="status", model="iris", **{"ok-exit-codes": "0 paused"})
    assert run.code == 2 and "ok-exit-codes" in run.stdout


@pytest.mark.slow
def test_promoted_noop_paused_and_rolled_back_as_the_runner_runs_them(
        action: ActionRunner, tmp_path: Path, write_spec: Any, local_home: Path, live_traffic: Any) -> None:
    spec = write_spec()
    common = {"spec": str(spec), "home": str(local_home)}

    promoted = action.run(tmp_path, command="start", model="iris:v1", **common)
    assert promoted.code == 0, promoted.stdout
    assert promoted.outputs["phase"] == "Promoted" and promoted.outputs["stable-version"] == "v1"
    assert promoted.outputs["exit-code"] == "0"
    assert "rollout iris" in promoted.summary and "Promoted" in promoted.summary
    assert promoted.env_file == "" and promoted.path_file == ""  # nothing left for the caller's later steps

    noop = action.run(tmp_path, command="start", model="iris:v1", **common)
    assert noop.code == 0, noop.stdout
    assert "nothing to do" in noop.summary and "Decision" not in noop.summary

    paused_spec = write_spec(strategy={"type": "canary", "steps": [{"set_weight": 50}, {"pause": {}}],
                                       "scale_down_delay_s": 0})
    paused = action.run(tmp_path, command="start", model="iris:v2", spec=str(paused_spec), home=str(local_home),
                        **{"ok-exit-codes": "0"})
    assert paused.code == 4, paused.stdout  # 4 is not ok here: the step fails with it
    assert paused.outputs["exit-code"] == "4" and paused.outputs["phase"] == "Paused"
    again = action.run(tmp_path, command="start", model="iris:v2", spec=str(paused_spec), home=str(local_home))
    assert again.code == 0, again.stdout  # default ok-exit-codes "0 4": a pause is not a failure
    assert again.outputs["exit-code"] == "4"

    write_spec()  # the same file again, without the pause (write_spec always writes rollout.yaml)
    rolled = action.run(tmp_path, command="start", model="iris:v3", supersede="true", **common)
    assert rolled.code == 3, rolled.stdout  # 3 is not in the default ok-exit-codes
    assert rolled.outputs["exit-code"] == "3" and rolled.outputs["phase"] == "RolledBack"
    assert rolled.outputs["stable-version"] == "v1" and rolled.outputs["candidate-version"] == "v3"
    assert "rolled back" in rolled.summary.lower()
    status = action.run(tmp_path, command="status", model="iris", **common, **{"ok-exit-codes": "0 3"})
    assert status.code == 0 and status.outputs["phase"] == "RolledBack"

    from tests.github import mermaid

    charts = [b for r in (promoted, paused, rolled) for b in mermaid.blocks(r.summary)]
    assert charts, "a rollout with analysis draws its metrics"
    if shutil.which("node") and (mermaid.mermaid_dir() / "node_modules" / "mermaid").is_dir():
        assert all(r["ok"] for r in mermaid.parse(charts)), charts


def test_the_platform_input_changes_only_the_platform_type(action: ActionRunner, tmp_path: Path,
                                                           write_spec: Any, local_home: Path) -> None:
    spec = write_spec()
    run = action.run(tmp_path, command="status", model="iris", spec=str(spec), home=str(local_home),
                     platform="local", **{"prometheus-url": "http://127.0.0.1:9/", "ok-exit-codes": "0 2"})
    assert run.spec_copy is not None, run.stdout
    rewritten = yaml.safe_load(run.spec_copy.read_text())
    assert rewritten["platform"] == {"type": "local", "server": "builtin", "ready_timeout_s": 30}
    assert rewritten["analysis"]["prometheus"] == {"url": "http://127.0.0.1:9/"}
    assert rewritten["analysis"]["metrics"] == yaml.safe_load(spec.read_text())["analysis"]["metrics"]
    assert yaml.safe_load(spec.read_text())["platform"] == rewritten["platform"]  # the original is untouched
