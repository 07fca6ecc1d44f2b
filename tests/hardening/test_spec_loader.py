"""The spec loader cannot be abused: every hostile document is exit 2 with a short,
printable message naming the problem; nothing hangs, explodes or tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout import redact, yamlsafe
from rollout.errors import BadYaml, SpecError, printable
from rollout.spec import MAX_DURATION_S, parse_spec, spec_from_yaml

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = "model: iris\nregistry: {type: git, url: /srv/registry}\n"


def lint(tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "rollout", "lint", "-f", str(path)], capture_output=True,
                          text=True, timeout=60, env=env)


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_naming_the_alias(tmp_path: Path) -> None:
    doc = billion_laughs()
    assert len(doc) < 600
    result = lint(tmp_path, doc)
    assert result.returncode == 2
    assert "aliases are not allowed (found *a0)" in result.stderr and "line 2" in result.stderr
    assert len(result.stderr) < 400 and "Traceback" not in result.stderr


def test_ten_thousand_nested_brackets_are_exit_2_not_a_traceback(tmp_path: Path) -> None:
    result = lint(tmp_path, "[" * 10_000)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "nested more than 64 levels deep" in result.stderr or "maximum nesting depth" in result.stderr
    assert lint(tmp_path, "[" * 100).stderr.count("nested more than 64 levels deep") == 1


def test_a_duplicate_key_is_refused_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    """A repeated key silently replaced the first (a manual pause became a 1-s one)."""
    doc = BASE + "strategy:\n  type: canary\n  steps:\n  - pause: {}\n  - pause:\n      duration_s: 5\n      duration_s: 1\n"
    result = lint(tmp_path, doc)
    assert result.returncode == 2
    assert "duplicate key 'duration_s' (first at line 8)" in result.stderr and "line 9" in result.stderr


@pytest.mark.parametrize("field", [
    "analysis: {metrics: [{name: e, query: error_rate, judge: {type: threshold, max: .nan}}]}",
    "analysis: {metrics: [{name: e, query: error_rate, judge: {type: threshold, max: .inf}}]}",
    "analysis: {interval_s: -.inf}",
])
def test_nan_and_infinity_are_refused_in_yaml(tmp_path: Path, field: str) -> None:
    result = lint(tmp_path, BASE + field + "\n")
    assert result.returncode == 2
    assert "not a finite number" in result.stderr


def test_nan_and_infinity_are_refused_from_any_source_not_only_yaml() -> None:
    """A stored spec comes back from JSON, where NaN can be spelled too."""
    for doc in [{"analysis": {"metrics": [{"name": "e", "query": "error_rate",
                                           "judge": {"type": "threshold", "max": float("nan")}}]}},
                {"analysis": {"duration_s": float("inf")}},
                {"analysis": {"metrics": [{"name": "e", "query": "error_rate",
                                           "judge": {"type": "compare", "max_relative_increase": float("inf")}}]}}]:
        with pytest.raises(SpecError, match="finite number"):
            parse_spec({"model": "iris", "registry": {"type": "git", "url": "/r"}, **doc})


@pytest.mark.parametrize("field, problem", [
    ("strategy: {type: canary, weights: [true]}", "strategy.canary.weights.0: got True; Input should be a valid integer"),
    ("strategy: {type: canary, weights: ['10']}", "got '10'; Input should be a valid integer"),
    ("strategy: {type: canary, weights: [10.5]}", "Input should be a valid integer"),
    ("analysis: {interval_s: true}", "got True; Input should be a valid number"),
    ("analysis: {duration_s: 99999999}", f"not a duration of 0 to {MAX_DURATION_S} seconds"),
    ("strategy: {type: canary, steps: [{pause: {duration_s: 1.0e+12}}]}", "not a duration of 0 to"),
    ("analysis: {metrics: [{name: e, query: error_rate, failure_limit: 10000000, judge: {type: threshold, max: 1}}]}",
     "larger than 1000000"),
    ("platform: {type: local, server: 'serve --port {prot}'}", "unknown placeholder '{prot}'"),
    ("platform: {type: kubernetes, namespace: ../kube-system}", "Kubernetes namespace '../kube-system' is not valid"),
    ("webhooks: {hooks: [{name: g, type: pre-rollout, url: 'https://user:hunter22@hooks.example/x'}]}",
     "must not carry credentials"),
])
def test_lint_refuses_values_that_used_to_pass(tmp_path: Path, field: str, problem: str) -> None:
    result = lint(tmp_path, BASE + field + "\n")
    assert result.returncode == 2, result.stdout
    assert problem in result.stderr
    assert "hunter22" not in result.stderr


def test_a_git_registry_url_with_a_password_is_refused_and_the_password_not_printed(tmp_path: Path) -> None:
    result = lint(tmp_path, "model: iris\nregistry: {type: git, url: 'https://bob:s3cr3t-pw@git.example/r.git'}\n")
    assert result.returncode == 2
    assert "registry.git.url" in result.stderr and "must not carry credentials" in result.stderr
    assert "s3cr3t-pw" not in result.stderr


def test_a_huge_spec_is_refused_by_size_and_the_error_stays_short(tmp_path: Path) -> None:
    result = lint(tmp_path, BASE + "analysis: {metrics: [" + "x" * (2 * yamlsafe.MAX_BYTES) + "]}\n")
    assert result.returncode == 2
    assert "limit for a spec file" in result.stderr and len(result.stderr) < 300


def test_errors_escape_terminal_control_bytes_and_are_truncated(tmp_path: Path) -> None:
    # YAML refuses raw control bytes; its escapes ("\e", "\a") still make them.
    hostile = "\\e]0;owned\\a\\e[2J" + "A" * 100_000
    result = lint(tmp_path, BASE + f'strategy: {{type: "{hostile}"}}\n')
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b" in result.stderr
    assert len(result.stderr) < 3000


def test_printable_escapes_and_bounds() -> None:
    assert printable("a\x1b[31mb\rc\x00") == "a\\x1b[31mb\\rc\\x00"
    assert printable("x" * 50, limit=10) == "x" * 10 + "… (40 more characters)"
    assert printable("line1\nline2", keep_newlines=False) == "line1\\nline2"


def test_the_safe_loader_still_reads_ordinary_yaml() -> None:
    assert yamlsafe.load("a: &anchor 1\nb: [1, 2.5, {c: d}]\nt: true\n", "x") == {"a": 1, "b": [1, 2.5, {"c": "d"}],
                                                                                   "t": True}
    with pytest.raises(BadYaml, match="merge keys"):
        yamlsafe.load("a: {x: 1}\nb:\n  <<: {x: 1}\n", "x")


# ------------------------------------------------------------------ property: never a traceback

KEYS = ["model", "registry", "type", "url", "platform", "server", "strategy", "weights", "steps", "set_weight",
        "pause", "duration_s", "analysis", "metrics", "name", "query", "judge", "max", "min", "interval_s",
        "prometheus", "bearer_token_env", "webhooks", "hooks", "notify", "url_env", "namespace", "replicas",
        "canary", "local", "git", "threshold", "error_rate", "builtin", "kubernetes", "blue_green", "shadow"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.sampled_from(KEYS), st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6)),
    max_leaves=30)
yaml_noise = st.lists(st.sampled_from(list("[]{}:,-&*!|>'\"#%@`? \n\t") + KEYS + ["\\", ".nan", ".inf", "\x1b",
                                                                                    "<<", "0x1"]),
                      max_size=60).map("".join)


def _valid_like(doc: Any) -> Any:
    """Bias generated documents towards real specs, so validation (not only parsing) runs."""
    if isinstance(doc, dict):
        return {"model": "iris", "registry": {"type": "git", "url": "/r"}, **doc}
    return doc


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents.map(_valid_like).map(lambda d: yaml.safe_dump(d, allow_unicode=True)), yaml_noise))
def test_any_document_is_a_spec_or_a_spec_error_never_a_traceback(text: str) -> None:
    try:
        spec_from_yaml(text, "fuzz.yaml")
    except SpecError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml") or "fuzz.yaml" in message[:200]
        assert "\x1b" not in message and len(message) < 3500
    finally:
        redact.REDACTOR.clear()
