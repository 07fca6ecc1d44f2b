"""The registry gate: logged evaluation metrics checked before any traffic moves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from rollout.registry.gate import evaluate
from rollout.registry.git import publish_version
from rollout.spec import MetricGateRule, parse_spec
from tests.registry.conftest import quick_canary_spec
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.timeout(400)

ACC = {"accuracy": MetricGateRule(max_decrease=0.01)}


def test_a_regression_beyond_the_margin_fails_naming_metric_values_and_margin():
    d = evaluate(ACC, {"accuracy": 0.93}, {"accuracy": 0.95}, "v2", "v1")
    assert not d.ok
    assert d.failures[0].detail == "accuracy: v2 0.93 vs stable v1 0.95 (-0.02; max_decrease 0.01)"


def test_a_regression_within_the_margin_and_an_improvement_pass():
    assert evaluate(ACC, {"accuracy": 0.945}, {"accuracy": 0.95}).ok
    assert evaluate(ACC, {"accuracy": 0.99}, {"accuracy": 0.95}).ok
    assert evaluate({"logloss": MetricGateRule(max_increase=0.05)}, {"logloss": 0.30}, {"logloss": 0.27}).ok
    assert not evaluate({"logloss": MetricGateRule(max_increase=0.05)}, {"logloss": 0.40}, {"logloss": 0.27}).ok


def test_absolute_bounds():
    rules = {"auc": MetricGateRule(min=0.9), "latency_ms": MetricGateRule(max=20)}
    d = evaluate(rules, {"auc": 0.85, "latency_ms": 12}, None, "v2")
    assert [c.detail for c in d.failures] == ["auc: v2 0.85 < min 0.9"]


def test_a_missing_metric_is_reported_missing_never_a_pass():
    d = evaluate(ACC, {"auc": 0.9}, {"accuracy": 0.95}, "v2", "v1")
    assert not d.ok and d.failures[0].detail == "accuracy: missing on v2 (no such logged metric; logged: auc)"
    d = evaluate(ACC, {"accuracy": 0.97}, {}, "v2", "v1")
    assert not d.ok and "missing on stable v1, so max_decrease 0.01 cannot be checked" in d.failures[0].detail


def test_without_a_stable_version_relative_rules_are_skipped_and_said_so():
    d = evaluate(ACC, {"accuracy": 0.5}, None)
    assert d.ok and "no stable version yet" in d.checks[0].detail


def test_a_rule_needs_a_bound():
    with pytest.raises(ValueError, match="needs min, max, max_decrease or max_increase"):
        MetricGateRule()


@pytest.fixture
def remote_with_metrics(tmp_path: Path, iris_models) -> Path:
    work = tmp_path / "author"
    for version, kind, acc in [("v1", "good", 0.95), ("v2", "other", 0.96), ("v3", "other", 0.90)]:
        publish_version(work, "iris", version, iris_models[kind], metrics={"accuracy": acc})
    bare = tmp_path / "remote.git"
    git.Repo.clone_from(work, bare, bare=True)
    return bare


def _spec(tmp_path: Path, remote: Path) -> Path:
    return quick_canary_spec(tmp_path, "iris", {
        "type": "git", "url": remote.as_uri(), "ref": "main", "environment_file": "environments/production.yaml",
        "gate": {"accuracy": {"max_decrease": 0.01}}})


def test_cli_rollouts_record_the_environment_file_and_the_gate_refuses_a_regression(
        tmp_path, local_home, remote_with_metrics):
    spec = _spec(tmp_path, remote_with_metrics)

    def rollout(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rollout", *args], env=cli_env(local_home), capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    def environment() -> dict:
        return yaml.safe_load(git.Repo(remote_with_metrics).git.show("main:environments/production.yaml"))["models"]

    assert rollout("start", "iris:v1", "-f", str(spec)).returncode == 0
    assert environment()["iris"]["version"] == "v1"
    done = rollout("start", "iris:v2", "-f", str(spec))
    assert done.returncode == 0, done.stderr
    env = environment()["iris"]
    assert (env["version"], env["previous"], env["outcome"]) == ("v2", "v1", "promoted")

    summary = tmp_path / "summary.md"
    refused = subprocess.run([sys.executable, "-m", "rollout", "start", "iris:v3", "-f", str(spec)],
                             env={**cli_env(local_home), "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)},
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    refusal = ("registry gate refused iris:v3 before any traffic moved: accuracy: v3 0.9 vs stable v2 0.96 "
               "(-0.06; max_decrease 0.01)")
    assert refusal in refused.stdout + refused.stderr
    status = rollout("status", "iris", "-o", "json")
    import json

    state = json.loads(status.stdout)
    assert state["stable"] == "v2"  # v3 never began: nothing deployed, nothing moved
    assert (state["rollout"]["candidate"], state["rollout"]["phase"]) == ("v3", "Rejected")
    assert environment()["iris"]["version"] == "v2"  # nothing recorded in the registry
    history = rollout("history", "iris")
    assert history.returncode == 0 and refusal in history.stdout and "Rejected" in history.stdout
    text = summary.read_text()
    assert "Rejected" in text and refusal in text
    assert "| 0 | registry gate (accuracy max_decrease 0.01) | 0% | 0.9 (stable 0.96), max_decrease 0.01 ❌ fail |" in text

    back = rollout("rollback", "iris")
    assert back.returncode == 0, back.stderr
    env = environment()["iris"]
    assert (env["version"], env["previous"], env["outcome"]) == ("v1", "v2", "rolled_back")
    listed = rollout("registry", "list", "iris", "-f", str(spec), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows["stable"] == {"local": "v1"}
    assert [(r["version"], r["eval_metrics"]) for r in rows["versions"]] == [
        ("v1", {"accuracy": 0.95}), ("v2", {"accuracy": 0.96}), ("v3", {"accuracy": 0.9})]
    text = rollout("registry", "list", "iris", "-f", str(spec)).stdout
    assert "v1" in text and "stable on local" in text.splitlines()[1]
    assert rollout("registry", "list", "-f", str(spec)).stdout.split() == ["iris"]
    log = [c.message for c in git.Repo(remote_with_metrics).iter_commits("main", max_count=3)]
    assert log == ["iris: v1 rolled back (rollout %s)" % env["rollout_id"],
                   "iris: v2 promoted (rollout %s)" % yaml.safe_load(
                       git.Repo(remote_with_metrics).git.show("main~1:environments/production.yaml"))["models"]["iris"]["rollout_id"],
                   "iris: v1 promoted (rollout %s)" % yaml.safe_load(
                       git.Repo(remote_with_metrics).git.show("main~2:environments/production.yaml"))["models"]["iris"]["rollout_id"]]


def test_lint_refuses_an_mlflow_registry_with_the_builtin_server():
    from rollout import app as wiring
    from rollout.errors import Unsupported

    spec = parse_spec({"model": "iris", "registry": {"type": "mlflow", "tracking_uri": "http://127.0.0.1:5000"},
                       "platform": {"type": "local", "server": "builtin"}})
    with pytest.raises(Unsupported, match="builtin server cannot load"):
        wiring.lint(spec)
