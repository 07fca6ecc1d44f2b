"""The CLI under GITHUB_ACTIONS=true: a real rollout on the local platform (built-in
servers, live traffic through the router) writes the job summary, the step outputs, a
group per step and an annotation for the decision, and exits with DESIGN.md's code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.state import FileStateStore

pytestmark = pytest.mark.slow


def parse_outputs(text: str) -> dict[str, str]:
    """Read $GITHUB_OUTPUT as the runner does (``name<<DELIM`` ... ``DELIM``; ``name=value``)."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line:
            name, delim = line.split("<<", 1)
            value = []
            for inner in lines:
                if inner == delim:
                    break
                value.append(inner)
            out[name] = "\n".join(value)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
    return out


class Actions:
    """Runs `rollout ...` in-process as a GitHub Actions step would, with fresh
    $GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY files per step."""

    def __init__(self, tmp: Path, home: Path, spec: Path) -> None:
        self.tmp, self.home, self.spec = tmp, home, spec
        self.steps = 0

    def run(self, *args: str) -> tuple[int, str, dict[str, str], str]:
        self.steps += 1
        out_file = self.tmp / f"output-{self.steps}"
        summary_file = self.tmp / f"summary-{self.steps}.md"
        out_file.touch()
        summary_file.touch()
        env = {"GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_OUTPUT": str(out_file),
               "GITHUB_STEP_SUMMARY": str(summary_file)}
        result = CliRunner().invoke(cli, [*args, "-f", str(self.spec), "--home", str(self.home)], env=env)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output, parse_outputs(out_file.read_text()), summary_file.read_text()


@pytest.fixture
def actions(tmp_path: Path, local_home: Path) -> Callable[[Path], Actions]:
    return lambda spec: Actions(tmp_path, local_home, spec)


def table_rows(summary: str) -> list[list[str]]:
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def mermaid_blocks(summary: str) -> list[str]:
    return re.findall(r"```mermaid\n(.*?)```", summary, flags=re.S)


def test_a_promoted_rollout_writes_rows_chart_outputs_and_exits_0(actions: Any, write_spec: Any, live_traffic: Any,
                                                                  local_home: Path) -> None:
    gh = actions(write_spec())
    code, _, outputs, _ = gh.run("start", "iris:v1")
    assert code == 0 and outputs["phase"] == "Promoted" and outputs["stable-version"] == "v1"

    code, stdout, outputs, summary = gh.run("start", "iris:v2")

    state = FileStateStore(local_home).load("iris")
    assert code == 0, stdout + summary
    assert outputs == {"model": "iris", "phase": "Promoted", "rollout-id": state.history[0].id,
                       "stable-version": "v2", "candidate-version": "v2", "exit-code": "0"}
    rows = table_rows(summary)
    assert [r[1] for r in rows] == ["traffic weight=50%", "analysis 1s", "traffic weight=100%", "promote",
                                    "scale down previous"]
    analysis = rows[1]
    assert analysis[2] == "50%"
    assert re.fullmatch(r"0 ✅ pass", analysis[3]), analysis
    assert re.fullmatch(r"\d+\.\ds", analysis[4])
    assert all(r[-1] == "✅ passed" for r in rows)
    assert "v1 → v2 Promoted" in summary
    [chart] = mermaid_blocks(summary)
    assert chart.startswith("xychart-beta\n") and 'title "error-rate"' in chart
    assert re.search(r"line \[0(, 0)*\]", chart)
    assert "::group::step 2/5: analysis 1s" in stdout and "::endgroup::" in stdout
    assert "::notice title=rollout iris%3Av2 promoted::" in stdout


def test_a_rolled_back_rollout_reports_the_failing_value_and_exits_3(actions: Any, write_spec: Any,
                                                                     live_traffic: Any) -> None:
    gh = actions(write_spec())
    assert gh.run("start", "iris:v1")[0] == 0

    code, stdout, outputs, summary = gh.run("start", "iris:v3")

    assert code == 3
    assert outputs["phase"] == "RolledBack"
    assert outputs["stable-version"] == "v1" and outputs["candidate-version"] == "v3" and outputs["exit-code"] == "3"
    rows = table_rows(summary)
    assert rows[0][1:3] == ["traffic weight=50%", "50%"] and rows[0][-1] == "✅ passed"
    assert rows[1][1] == "analysis 1s" and rows[1][-1] == "❌ rolled back"
    assert rows[1][3] == "1 ❌ fail"
    assert all(r[-1] == "– not reached" for r in rows[2:])
    assert "**Decision:** analysis failed at step 2: error-rate" in summary
    [chart] = mermaid_blocks(summary)
    assert re.search(r"line \[1(, 1)*\]", chart)
    [error] = [line for line in stdout.splitlines() if line.startswith("::error ")]
    assert error.startswith("::error title=rollout iris%3Av3 rolledback::analysis failed at step 2")


def test_a_paused_rollout_reports_values_so_far_and_exits_4(actions: Any, write_spec: Any, live_traffic: Any) -> None:
    steps = [{"set_weight": 50}, {"analysis": {}}, {"pause": {}}]
    gh = actions(write_spec(strategy={"type": "canary", "steps": steps, "scale_down_delay_s": 0}))
    assert gh.run("start", "iris:v1")[0] == 0

    code, stdout, outputs, summary = gh.run("start", "iris:v2")

    assert code == 4
    assert outputs["phase"] == "Paused" and outputs["stable-version"] == "v1" and outputs["candidate-version"] == "v2"
    rows = table_rows(summary)
    assert [r[-1] for r in rows[:3]] == ["✅ passed", "✅ passed", "⏸️ paused"]
    assert rows[1][3] == "0 ✅ pass"
    assert len(mermaid_blocks(summary)) == 1
    assert "::warning title=rollout iris%3Av2 paused::waiting for `rollout promote iris:v2`" in stdout.splitlines()

    # the workflow's second dispatch: promote, which finishes the rollout
    code, _, outputs, summary = gh.run("promote", "iris:v2")
    assert code == 0 and outputs["phase"] == "Promoted" and outputs["stable-version"] == "v2"


def test_an_error_becomes_an_annotation_and_outputs_with_its_exit_code(actions: Any, write_spec: Any) -> None:
    gh = actions(write_spec())
    code, stdout, outputs, summary = gh.run("start", "iris:v9")
    assert code == 2
    assert outputs["exit-code"] == "2" and outputs["phase"] == ""
    assert any(line.startswith("::error title=rollout::") and "v9" in line for line in stdout.splitlines())
    assert "v9" in summary


def test_status_under_actions_sets_outputs_and_keeps_json_clean(actions: Any, write_spec: Any) -> None:
    gh = actions(write_spec())
    assert gh.run("start", "iris:v1")[0] == 0
    code, stdout, outputs, summary = gh.run("status", "iris", "-o", "json")
    assert code == 0
    assert json.loads(stdout)["stable"] == "v1"
    assert outputs["phase"] == "Promoted" and outputs["stable-version"] == "v1"
    assert summary == ""


def test_a_detached_start_exits_0_with_the_phase_as_an_output(actions: Any, write_spec: Any, live_traffic: Any) -> None:
    steps = [{"set_weight": 50}, {"pause": {"duration_s": 600}}]
    gh = actions(write_spec(strategy={"type": "canary", "steps": steps}))
    assert gh.run("start", "iris:v1")[0] == 0

    code, stdout, outputs, _ = gh.run("start", "iris:v2", "--detach")

    assert code == 0, stdout
    assert outputs["phase"] == "Progressing" and outputs["candidate-version"] == "v2" and outputs["exit-code"] == "0"
    assert "iris:v2 Progressing at step 2/" in stdout
    assert gh.run("abort", "iris")[0] == 0
