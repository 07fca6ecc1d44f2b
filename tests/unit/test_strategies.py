"""Strategies are pure: a spec in, a list of steps out."""

import pytest

from rollout.errors import SpecError
from rollout.spec import parse_spec
from rollout.steps import AnalysisStep, PauseStep, PromoteStep, ScaleDownStep, TrafficStep
from rollout.strategies import plan

METRIC = {"name": "error-rate", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}}


def make(strategy, metrics=(METRIC,), **analysis):
    return parse_spec({"model": "iris", "registry": {"type": "git", "url": "/r"}, "strategy": strategy,
                       "analysis": {"metrics": list(metrics), **analysis}})


def kinds(steps):
    return [s.kind for s in steps]


def test_canary_weights_get_an_analysis_after_each_then_full_promotion():
    steps = plan(make({"type": "canary", "weights": [10, 50]}, duration_s=30))
    assert [s.weight for s in steps if isinstance(s, TrafficStep)] == [10, 50, 100]
    assert kinds(steps) == ["traffic", "analysis", "traffic", "analysis", "traffic", "promote", "scale_down"]
    assert all(s.duration_s == 30 for s in steps if isinstance(s, AnalysisStep))
    assert steps[-1] == ScaleDownStep(version="previous", after_s=30)


def test_canary_explicit_steps_keep_their_order_and_manual_pause():
    steps = plan(make({"type": "canary", "steps": [
        {"set_weight": 25}, {"pause": {}}, {"analysis": {"duration_s": 5}}, {"set_weight": 100}]}))
    assert kinds(steps) == ["traffic", "pause", "analysis", "traffic", "promote", "scale_down"]
    assert steps[1] == PauseStep(seconds=None)
    assert steps[2].duration_s == 5


def test_canary_analysis_step_with_unknown_metric_is_refused():
    with pytest.raises(SpecError, match=r"strategy\.steps\.0: unknown metric\(s\) latency; known: error-rate"):
        plan(make({"type": "canary", "steps": [{"analysis": {"metrics": ["latency"]}}]}))


def test_canary_without_metrics_just_moves_traffic():
    steps = plan(make({"type": "canary", "weights": [50]}, metrics=()))
    assert kinds(steps) == ["traffic", "traffic", "promote", "scale_down"]


def test_blue_green_previews_then_switches_at_once():
    steps = plan(make({"type": "blue_green", "auto_promotion_s": None, "scale_down_delay_s": 60}))
    assert kinds(steps) == ["traffic", "analysis", "pause", "traffic", "promote", "scale_down"]
    assert steps[0].weight == 0 and steps[1].preview and steps[3].weight == 100
    assert steps[-1].after_s == 60


def test_shadow_mirrors_then_promotes_by_switch():
    steps = plan(make({"type": "shadow", "mirror_percent": 40}))
    assert steps[0] == TrafficStep(weight=0, mirror=40)
    assert kinds(steps) == ["traffic", "analysis", "traffic", "promote", "scale_down"]
    assert steps[2] == TrafficStep(weight=100, mirror=0)


def test_shadow_discard_retires_the_candidate_without_promoting():
    steps = plan(make({"type": "shadow", "on_success": "discard"}))
    assert not any(isinstance(s, PromoteStep) for s in steps)
    assert steps[-1] == ScaleDownStep(version="candidate", after_s=0)


def test_shadow_needs_metrics_to_judge_the_copy():
    with pytest.raises(SpecError, match="analysis step needs metrics"):
        plan(make({"type": "shadow"}, metrics=()))
