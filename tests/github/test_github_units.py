"""Small pieces without processes: workflow-command escaping, multiline-safe outputs,
where the hooks go in a plan, the plain fallbacks and shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rollout.integrations import github
from rollout.cli.progress import interactive
from rollout.spec import parse_spec
from rollout.steps import GateStep, PromoteStep, TrafficStep
from rollout.strategies import plan

ROOT = Path(__file__).resolve().parents[2]


def spec(strategy: dict[str, Any] | None = None, hooks: list[dict[str, Any]] | None = None) -> Any:
    return parse_spec({"model": "iris", "registry": {"type": "git", "url": "."},
                       "strategy": strategy or {"type": "canary", "weights": [20, 50]},
                       "webhooks": {"hooks": hooks or []}})


def hook(name: str, type_: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "url": f"http://hooks.internal/{name}", **extra}


def test_annotations_escape_percent_cr_and_lf_and_property_separators() -> None:
    line = github.command("error", "50% failed\r\nsecond line", title="rollout iris:v3, canary")
    assert line == "::error title=rollout iris%3Av3%2C canary::50%25 failed%0D%0Asecond line"


def test_outputs_use_a_heredoc_delimiter_so_multiline_values_are_safe() -> None:
    text = github.format_outputs({"phase": "Promoted", "reason": "line one\nline two=three"})
    lines = text.splitlines()
    name, delim = lines[0].split("<<")
    assert name == "phase" and lines[1:3] == ["Promoted", delim]
    assert lines[3].startswith("reason<<") and lines[4:6] == ["line one", "line two=three"]
    assert lines[6] == lines[3].split("<<")[1] != delim


def test_hooks_go_where_flagger_calls_them_in_a_canary() -> None:
    s = spec(hooks=[hook("go", "confirm-rollout"), hook("smoke", "pre-rollout"), hook("more", "confirm-traffic-increase"),
                    hook("ship", "confirm-promotion"), hook("undo", "rollback"), hook("tell", "post-rollout")])
    described = [step.describe() for step in plan(s)]
    assert described == [
        "gate go (confirm-rollout)", "traffic weight=0%", "gate smoke (pre-rollout)",
        "gate more (confirm-traffic-increase)", "traffic weight=20%",
        "gate more (confirm-traffic-increase)", "traffic weight=50%",
        "gate ship (confirm-promotion)", "traffic weight=100%", "promote", "scale down previous after 30s",
    ]


def test_blue_green_keeps_its_own_zero_step_and_gets_confirm_promotion_before_the_switch() -> None:
    s = spec({"type": "blue_green", "preview_analysis": False},
             hooks=[hook("smoke", "pre-rollout"), hook("ship", "confirm-promotion")])
    steps = plan(s)
    assert isinstance(steps[0], TrafficStep) and steps[0].weight == 0
    assert [type(x).__name__ for x in steps[1:4]] == ["GateStep", "GateStep", "TrafficStep"]
    assert [x.hook for x in steps if isinstance(x, GateStep)] == ["pre-rollout", "confirm-promotion"]
    assert isinstance(steps[4], PromoteStep)


def test_a_plan_without_hooks_is_unchanged() -> None:
    assert [x.describe() for x in plan(spec())] == [
        "traffic weight=20%", "traffic weight=50%", "traffic weight=100%", "promote", "scale down previous after 30s"]


@pytest.mark.parametrize("bad, message", [
    ({"name": "x", "type": "rollback"}, "needs exactly one of url, url_env, url_file, builtin"),
    ({"name": "x", "type": "confirm-promotion", "builtin": "samples"}, "builtin checks run as type pre-rollout"),
    ({"name": "x", "type": "pre-rollout", "url": "http://h", "wait_s": 5}, "wait_s applies to confirm-* hooks only"),
])
def test_bad_hooks_are_rejected_naming_the_field(bad: dict[str, Any], message: str) -> None:
    from rollout.errors import SpecError

    with pytest.raises(SpecError, match="webhooks.hooks.0") as err:
        spec(hooks=[bad])
    assert message in str(err.value)


def test_a_literal_notification_url_is_refused_without_echoing_it() -> None:
    from rollout.errors import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({"model": "iris", "registry": {"type": "git", "url": "."},
                    "webhooks": {"notify": [{"name": "s", "type": "slack", "url": "https://hooks.slack.com/T/B/secret"}]}})
    assert "url_env" in str(err.value) and "secret" not in str(err.value)


def test_the_live_display_is_off_under_ci_and_when_not_a_terminal() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert interactive(Tty(), env={"TERM": "xterm"})  # type: ignore[arg-type]
    assert not interactive(Tty(), env={"CI": "true"})  # type: ignore[arg-type]
    assert not interactive(Tty(), env={"GITHUB_ACTIONS": "true"})  # type: ignore[arg-type]
    assert not interactive(open(os.devnull), env={})


def test_shell_completion_is_offered_for_the_rollout_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHELL": "/bin/bash"}
    shown = subprocess.run([sys.executable, "-m", "rollout", "--show-completion", "bash"], env=env,
                           capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 0 and "complete -o default -F _rollout_completion rollout" in shown.stdout
    completed = subprocess.run([sys.executable, "-m", "rollout"], capture_output=True, text=True, cwd=ROOT,
                               env={**env, "_ROLLOUT_COMPLETE": "complete_bash", "COMP_WORDS": "rollout st",
                                    "COMP_CWORD": "1"})
    assert completed.stdout.split() == ["start", "status"]
