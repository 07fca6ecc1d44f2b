"""The registry gate's decision is part of the state like any other step: a refusal is a
Rejected rollout (exit 3) in status, history and the job summary, with the metric, both
values and the margin; a pass is row 0 of the rollout; nothing is deployed or moved for a
refused version, and a refused --supersede leaves the running rollout alone."""

from __future__ import annotations

import dataclasses

import pytest

from rollout.engine.outcome import exit_code_for
from rollout.integrations.github import summary_markdown
from rollout.registry.gate import RegistryGateRefused
from rollout.cli.report import history_rows, history_text, status_dict, status_text
from rollout.spec import parse_spec
from rollout.state import REGISTRY_GATE_INDEX, Phase
from rollout.view import model_view

from .world import MODEL, World, make_spec, version

pytestmark = pytest.mark.timeout(60)

REFUSAL = "registry gate refused fraud:v3 before any traffic moved: accuracy: v3 0.9 vs stable v2 0.96 " \
          "(-0.06; max_decrease 0.01)"


def gated_spec(**rules):
    raw = make_spec().model_dump(mode="json")
    raw["registry"]["gate"] = rules or {"accuracy": {"max_decrease": 0.01}, "auc": {"min": 0.8}}
    return parse_spec(raw)


def scored(v: str, **metrics: float):
    return dataclasses.replace(version(v), eval_metrics=metrics)


def gated_world() -> World:
    w = World(gated_spec())
    w.engine().start(scored("v1", accuracy=0.95, auc=0.9))
    w.engine().start(scored("v2", accuracy=0.96, auc=0.9))
    assert w.state().stable.version == "v2"
    return w


def test_a_refusal_is_a_rejected_rollout_in_status_history_and_the_summary():
    w = gated_world()
    platform_before = (set(w.platform.running), w.platform.traffic, list(w.platform.history))

    ms = w.engine().start(scored("v3", accuracy=0.90, auc=0.85))

    r = ms.rollout
    assert r.phase is Phase.REJECTED and exit_code_for(r.phase) == 3
    assert r.reason == REFUSAL
    assert ms.stable.version == "v2" and ms.history[0].id == r.id  # archived like any ending
    assert (set(w.platform.running), w.platform.traffic, list(w.platform.history)) == platform_before
    [gate] = r.steps
    assert (gate.index, gate.kind, gate.outcome) == (REGISTRY_GATE_INDEX, "registry_gate", "failed")
    assert gate.step == "registry gate (accuracy max_decrease 0.01; auc min 0.8)"
    [m] = gate.deciding  # only the failed rule decided; auc passed
    assert (m.metric, m.value, m.stable_value, m.detail, m.verdict) == ("accuracy", 0.90, 0.96,
                                                                        {"max_decrease": 0.01}, "fail")
    assert w.store.load(MODEL).rollout.phase is Phase.REJECTED  # saved, not only returned
    assert w.listener.kinds[-1] == "rejected" and w.listener.messages("rejected") == [REFUSAL]

    assert REFUSAL in history_text(ms)
    row = history_rows(ms)[0]
    assert row["phase"] == "Rejected" and row["deciding"] == [m.reason]
    assert row["steps"] == [{"step": 0, "description": gate.step, "result": "failed"}]
    status = status_dict(ms)["rollout"]
    assert (status["phase"], status["step"], status["current_step"]) == ("Rejected", 0, None)
    assert "step      0/7 registry gate: refused before the plan began" in status_text(ms)
    view = model_view(ms).rollout
    assert [(x.index, x.result) for x in view.rows] == [(0, "failed")] + [(i, "not_reached")
                                                                          for i in range(1, len(r.plan) + 1)]
    assert len(r.plan) > 1  # the plan it would have run is kept, none of it reached
    summary = summary_markdown(ms, 3)
    assert "❌ rollout fraud: v2 → v3 Rejected" in summary and REFUSAL in summary
    gate_row = next(line for line in summary.splitlines() if line.startswith("| 0 |"))
    assert "0.9 (stable 0.96), max_decrease 0.01 ❌ fail" in gate_row and "❌ failed" in gate_row


def test_a_pass_is_recorded_as_row_zero_of_the_rollout_with_every_rule():
    w = gated_world()
    r = w.state().history[0]
    assert r.phase is Phase.PROMOTED
    gate = r.steps[0]
    assert (gate.index, gate.outcome, gate.reason) == (REGISTRY_GATE_INDEX, "passed", "every rule holds")
    assert {(m.metric, m.value, m.stable_value, m.verdict) for m in gate.deciding} == {
        ("accuracy", 0.96, 0.95, "pass"), ("auc", 0.9, 0.9, "pass")}
    assert model_view(w.state()).history[0].rows[0].result == "passed"
    first = w.state().history[1]  # the first deployment: no stable, the relative rule was not checked
    assert {(m.metric, m.verdict) for m in first.steps[0].deciding} == {("accuracy", "inconclusive"),
                                                                      ("auc", "pass")}


def test_a_missing_metric_is_recorded_missing():
    w = gated_world()
    ms = w.engine().start(scored("v3", accuracy=0.97))
    [m] = ms.rollout.steps[0].deciding
    assert (m.metric, m.status, m.kind, m.value, m.verdict) == ("auc", "no_data", "missing", None, "fail")
    assert "auc: missing on v3" in ms.rollout.reason and ms.rollout.phase is Phase.REJECTED


def test_a_refused_supersede_leaves_the_running_rollout_alone_and_is_still_in_history():
    w = gated_world()
    running = w.engine().start(scored("v3", accuracy=0.96, auc=0.9), detach=True).rollout
    assert running.phase.active

    with pytest.raises(RegistryGateRefused, match="the rollout of v3 goes on"):
        w.engine().start(scored("v4", accuracy=0.5, auc=0.9), supersede=True)

    ms = w.state()
    assert ms.rollout.id == running.id and ms.rollout.phase.active and ms.rollout.candidate.version == "v3"
    assert ms.history[0].phase is Phase.REJECTED and ms.history[0].candidate.version == "v4"
    assert "accuracy: v4 0.5 vs stable v2 0.96" in history_text(ms)
    assert "v4" not in w.platform.running
