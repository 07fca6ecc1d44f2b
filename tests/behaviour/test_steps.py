"""Every step type, in virtual time, through the real engine and an in-memory store whose
save returns a deep copy: what a user relies on from each, and the report rows it leaves."""

from __future__ import annotations

from rollout.integrations.github import step_rows
from rollout.platforms.base import Traffic
from rollout.cli.report import history_rows
from rollout.spec import HookSpec
from rollout.state import Phase

from rollout.steps import GateStep, PromoteStep, TrafficStep

from .world import World, make_spec, version


def test_a_good_canary_is_promoted_with_every_step_recorded_as_passed(world):
    ms = world.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED and ms.stable.version == "v2" and ms.previous[0].version == "v1"
    assert [t.weight for t in world.platform.history[-4:-1]] == [20, 50, 100]
    assert world.platform.traffic == Traffic(stable="v2")
    assert [s.outcome for s in r.steps] == ["passed"] * len(r.plan)
    analysis = [s for s in r.steps if s.kind == "analysis"]
    assert all(s.deciding and s.deciding[0].metric == "error-rate" for s in analysis)
    assert all(row["result"] == "✅ passed" for row in step_rows(r))


def test_a_failing_canary_is_rolled_back_and_the_failing_value_is_deciding():
    w = World(make_spec(), script={"v1": 0.01, "v2": 0.2}).serving()
    ms = w.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.ROLLED_BACK and ms.stable.version == "v1"
    assert w.platform.traffic == Traffic(stable="v1") and "v2" in w.platform.retired
    failed = r.steps[-1]
    assert failed.outcome == "failed" and failed.deciding[0].value == 0.2
    assert history_rows(ms)[0]["deciding"] == [failed.deciding[0].reason]
    assert [row["result"] for row in step_rows(r)][:3] == ["✅ passed", "❌ rolled back", "– not reached"]


def test_a_failing_dry_run_metric_is_recorded_but_never_deciding():
    latency = {"name": "latency", "provider": "sim", "query": "latency", "dry_run": True,
               "judge": {"type": "threshold", "max": 0.1}}
    err = {"name": "error-rate", "provider": "sim", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}}
    w = World(make_spec(metrics=[err, latency]), script={"v1": 0.01, "v2": 0.2}).serving()
    w.provider.script = {"error_rate": {"v2": 0.2}, "latency": {"v2": 5.0}}
    ms = w.start("v2")

    r = ms.history[0]
    assert any(m.metric == "latency" and m.verdict == "fail" for m in r.measurements)
    deciding = history_rows(ms)[0]["deciding"]
    assert deciding and all("latency" not in d for d in deciding) and "error-rate" in deciding[0]


def test_an_inconclusive_analysis_pauses_and_records_the_step_as_inconclusive():
    w = World(make_spec(), script={"v1": 0.01, "v2": None}).serving()
    ms = w.start("v2")

    r = ms.rollout
    assert r.phase is Phase.PAUSED and "inconclusive" in r.reason
    assert r.steps[-1].outcome == "inconclusive"
    assert w.platform.traffic.weight == 20, "a pause keeps the split it measured"
    assert [row["result"] for row in step_rows(r)][:3] == ["✅ passed", "⏸️ paused", "– not reached"]


def test_inconclusive_with_policy_fail_rolls_back():
    w = World(make_spec(inconclusive="fail"), script={"v1": 0.01, "v2": None}).serving()
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and ms.history[0].steps[-1].outcome == "inconclusive"


def test_a_timed_pause_waits_its_time_in_virtual_time():
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 600}}]},
                        metrics=[])).serving()
    t0 = w.clock.now()
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.PROMOTED
    assert 600 <= w.clock.now() - t0 < 620


def test_a_manual_pause_waits_for_promote_which_is_recorded_as_passed_by_operator():
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}, {"set_weight": 60}]},
                        metrics=[])).serving()
    assert w.start("v2").rollout.phase is Phase.PAUSED

    ms = w.engine("promote").promote("v2")

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED
    assert r.step_record(1).outcome == "passed_by_operator" and "promote" in r.step_record(1).by
    assert step_rows(r)[1]["result"] == "👤 passed by operator"


def test_promote_full_skips_the_rest_and_the_summary_says_skipped_not_passed():
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 10}, {"pause": {}}, {"set_weight": 30},
                                                      {"pause": {"duration_s": 60}}, {"set_weight": 60}]},
                        metrics=[])).serving()
    w.start("v2")

    ms = w.engine("promote").promote("v2", full=True)

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED and ms.stable.version == "v2"
    results = [row["result"] for row in step_rows(r)]
    assert results[0] == "✅ passed"
    assert results[1:6] == ["⏭️ skipped"] * 5, results  # through the 100% step: promotion came first
    assert results[6:] == ["✅ passed", "✅ passed"]  # promote, scale down
    assert [s["result"] for s in history_rows(ms)[0]["steps"]][1:6] == ["skipped"] * 5


def _gate_plan(wait_s):
    return [TrafficStep(weight=20), GateStep(name="qa", url="http://gate/ok", wait_s=wait_s),
            TrafficStep(weight=100), PromoteStep()]


def test_a_gate_is_asked_again_every_interval_until_it_passes():
    w = World(make_spec(metrics=[]), gate_answers=[False, False, True]).serving()
    t0 = w.clock.now()
    ms = w.engine().start(version("v2"), plan=_gate_plan(300))

    assert ms.history[0].phase is Phase.PROMOTED
    assert len(w.gate_calls) == 3 and w.listener.kinds.count("waiting") == 1
    assert 20 <= w.clock.now() - t0 < 30, "asked at 0, 10 and 20 s (analysis.interval_s 10)"


def test_a_gate_that_keeps_refusing_pauses_after_its_wait_and_a_pre_rollout_refusal_rolls_back():
    w = World(make_spec(metrics=[]), gate_answers=[False] * 100).serving()
    ms = w.engine().start(version("v2"), plan=_gate_plan(30))

    assert ms.rollout.phase is Phase.PAUSED and "gate qa" in ms.rollout.reason
    assert 3 <= len(w.gate_calls) <= 5
    w.engine("abort").abort()

    pre = [GateStep(name="pre", url="http://gate/pre", hook="pre-rollout"), TrafficStep(weight=100), PromoteStep()]
    ms = w.engine().start(version("v3"), plan=pre)
    assert ms.history[0].phase is Phase.ROLLED_BACK and "pre-rollout gate pre" in ms.history[0].reason
    assert w.platform.history[-1] == Traffic(stable="v1")


def test_a_candidate_that_never_deploys_fails_and_stable_keeps_all_traffic():
    w = World(make_spec()).serving()
    w.platform.broken.add("v2")
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.FAILED and "could not be deployed" in ms.history[0].reason
    assert w.platform.traffic == Traffic(stable="v1")
    assert step_rows(ms.history[0])[0]["result"] == "❌ failed"


def test_a_candidate_that_dies_mid_analysis_is_rolled_back_by_the_health_check():
    w = World(make_spec(duration_s=300)).serving()

    def kill_v2(traffic):
        if traffic.weight == 20:
            w.platform.unhealthy.add("v2")

    w.platform.on_traffic = kill_v2
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and "stopped being ready" in ms.history[0].reason
    assert w.platform.traffic == Traffic(stable="v1")


def test_shadow_with_discard_completes_and_keeps_stable():
    w = World(make_spec({"type": "shadow", "on_success": "discard"})).serving()
    w.platform.on_call = lambda what: w.clock.sleep(10)  # every platform call takes an interval: checks fall due
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.COMPLETED and ms.stable.version == "v1"
    assert (w.platform.traffic.weight, w.platform.traffic.mirror) == (0, 0) and "v2" in w.platform.retired


def test_blue_green_switches_at_once_after_the_preview_analysis():
    w = World(make_spec({"type": "blue_green"})).serving()
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.PROMOTED
    assert [t.weight for t in w.platform.history if t.candidate] == [0, 100]


def test_the_old_stable_is_retired_once_its_delay_has_passed_by_a_later_reconcile():
    w = World(make_spec({"type": "canary", "weights": [50], "scale_down_delay_s": 120}, metrics=[])).serving()
    w.start("v2")
    assert "v1" in w.platform.running and w.state().retirements

    result = w.reconciler().reconcile("fraud")
    assert result.wake_at is not None and result.wake_at > w.clock.now()
    w.clock.sleep(result.wake_at - w.clock.now())
    w.reconciler().reconcile("fraud")

    assert "v1" in w.platform.retired and not w.state().retirements


def test_start_of_the_stable_version_does_nothing():
    w = World(make_spec()).serving()
    engine = w.engine()
    ms = engine.start(version("v1"))
    assert engine.noop and engine.exit_code(ms) == 0


def test_rollback_restores_the_previous_stable_and_retires_the_current():
    w = World(make_spec({"type": "canary", "weights": [50], "scale_down_delay_s": 600}, metrics=[])).serving()
    w.start("v2")

    ms = w.engine("rollback").rollback()

    assert ms.stable.version == "v1" and ms.previous[0].version == "v2"
    assert ms.history[0].phase is Phase.ROLLED_BACK and ms.history[0].strategy == "rollback"
    assert w.platform.traffic == Traffic(stable="v1") and "v2" in w.platform.retired


def test_a_rollback_hook_rolls_back_a_canary_but_never_a_first_deployment():
    spec = make_spec({"type": "canary", "steps": [{"set_weight": 50}, {"pause": {"duration_s": 600}}]}, metrics=[])
    spec = spec.model_copy(update={"webhooks": spec.webhooks.model_copy(update={"hooks": [
        HookSpec(name="kill", type="rollback", url="http://hook/x")]})})
    w = World(spec, gate_answers=[True] * 100).serving()
    assert w.state().stable.version == "v1", "the first deployment is not on trial"

    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and "rollback webhook kill" in ms.history[0].reason
    assert w.platform.traffic == Traffic(stable="v1") and "kill" in [name for name, _ in w.gate_calls]
