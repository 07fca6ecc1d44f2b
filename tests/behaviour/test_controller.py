"""`rollout controller` in virtual time: one timer queue carries many detached rollouts
to their outcomes, skips a model another process holds, and keeps the per-model lock."""

from __future__ import annotations

import re

import pytest

from rollout.controller import Controller, metrics_registry
from rollout.engine import Engine, Services
from rollout.errors import Locked
from rollout.state import CONTROLLER_COMMAND, UNNAMED_HOLDER, ModelState, Phase, holder_identity
from rollout.testing import MemoryStore, ScriptedProvider, SimPlatform, VirtualClock

from rollout.registry.base import ModelVersion

from .world import make_spec


def _fleet(n: int):
    clock, store = VirtualClock(), MemoryStore()
    platforms: dict[str, SimPlatform] = {}
    bad = {f"m{i}" for i in range(n) if i % 3 == 0}

    def services_for(model: str, ms: ModelState | None = None) -> Services:
        if model not in platforms:
            platforms[model] = SimPlatform(model)
        rate = 0.2 if model in bad else 0.01
        return Services(store=store, platform=platforms[model], clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": rate}})})

    for i in range(n):
        model = f"m{i}"
        spec = make_spec().model_copy(update={"model": model})
        Engine(spec, services_for(model)).start(ModelVersion(model, "v1", "sim://v1"))
        Engine(spec, services_for(model)).start(ModelVersion(model, "v2", "sim://v2"), detach=True)
    return clock, store, platforms, bad, Controller(store, services_for, clock, scan_s=60)


def _drive(clock, controller, until_s: float) -> None:
    end = clock.now() + until_s
    controller.scan()
    while clock.now() < end:
        controller.run_due()
        clock.sleep(max(0.0, min(controller.next_wake(), end) - clock.now()))


def test_one_controller_carries_many_detached_rollouts_to_the_right_outcome():
    clock, store, platforms, bad, controller = _fleet(30)
    assert all(store.load(m).rollout.phase is Phase.PROGRESSING for m in platforms)

    _drive(clock, controller, 600)

    for model in platforms:
        ms = store.load(model)
        expected = Phase.ROLLED_BACK if model in bad else Phase.PROMOTED
        assert ms.history[0].phase is expected, model
        assert platforms[model].traffic.stable == ("v1" if model in bad else "v2")
    assert controller.stats.errors == 0
    assert controller.stats.decisions["failed"] == len(bad)


def test_the_controller_skips_a_model_another_process_holds_and_comes_back():
    clock, store, platforms, _, controller = _fleet(2)
    with store.lock("m1", "pid 7 `rollout promote`"):
        _drive(clock, controller, 30)
        held = store.load("m1").rollout
        assert held.step_index == 1 and not held.measurements and controller.stats.skipped_locked > 0
    _drive(clock, controller, 600)
    assert store.load("m1").history[0].phase is Phase.PROMOTED


def test_metrics_say_phases_weights_last_values_and_decisions():
    from prometheus_client import generate_latest

    clock, store, platforms, bad, controller = _fleet(3)
    _drive(clock, controller, 15)
    text = generate_latest(metrics_registry(controller)).decode()
    assert 'rollout_rollouts{phase="Progressing"}' in text
    assert 'rollout_candidate_weight{candidate="v2",model="m1"} 20.0' in text
    assert 'rollout_metric_last_value{metric="error-rate",model="m0",version="v2"} 0.2' in text
    _drive(clock, controller, 600)
    text = generate_latest(metrics_registry(controller)).decode()
    assert 'rollout_decisions_total{outcome="failed"} 1.0' in text
    assert 'rollout_rollouts{phase="Promoted"} 2.0' in text


def test_ended_rollouts_are_not_reconciled_again_until_their_state_changes():
    """With many ended rollouts, a rescan that reconciled every idle model would cost a lock
    and a read per model per scan (on Kubernetes: four API requests each, every 2 s)."""
    from rollout.controller.local import RESYNC_S

    clock, store, platforms, _, controller = _fleet(6)
    _drive(clock, controller, 1200)  # every rollout ended, every retirement done
    assert all(store.load(m).rollout is None or not store.load(m).rollout.phase.active for m in platforms)
    _drive(clock, controller, 60)  # the scan after a model's last save looks at it once more (its token moved)
    before = controller.stats.reconciles

    _drive(clock, controller, 240)  # four scans: nothing changed, nothing due
    assert controller.stats.reconciles == before

    detached = Engine(make_spec().model_copy(update={"model": "m1"}), Services(
        store=store, platform=platforms["m1"], clock=clock, providers={"sim": ScriptedProvider({})})).start(ModelVersion("m1", "v3", "sim://v3"), detach=True).rollout
    assert detached.step_index == 1 and not detached.measurements
    _drive(clock, controller, 600)  # the changed model is picked up at the next scan and carried on
    r = store.load("m1").rollout
    assert r.candidate.version == "v3" and r.measurements, "the controller measured the new rollout"
    assert r.phase is Phase.PAUSED  # v3 is not in the provider's script: no data pauses it, as it should
    untouched = controller.stats.reconciles

    _drive(clock, controller, RESYNC_S)  # and every model is looked at once per resync period
    assert controller.stats.reconciles >= untouched + len(platforms)


def _controller_pass_holding(store: MemoryStore, clock: VirtualClock, model: str, for_s: float,
                             words: str | None = None) -> str:
    """Have a controller hold ``model``'s lock (as in one reconcile pass) until ``for_s``
    seconds of virtual time have passed; returns the controller's lock words."""
    words = words or holder_identity(CONTROLLER_COMMAND)
    store._holders[model] = words
    ends, sleep = clock.now() + for_s, clock.sleep

    def sleep_then_release(seconds: float) -> None:
        sleep(seconds)
        if clock.now() >= ends and store._holders.get(model) == words:
            del store._holders[model]

    clock.sleep = sleep_then_release  # type: ignore[method-assign]
    return words


def test_a_start_that_meets_a_controller_pass_waits_for_it_instead_of_exiting_5():
    """CI saw `rollout start --detach` refused with exit 5 because the controller was in the
    middle of a pass over the same model; a pass is short, so the start waits it out."""
    clock, store, platforms, _, _ = _fleet(1)
    spec = make_spec().model_copy(update={"model": "m0"})
    services = Services(store=store, platform=platforms["m0"], clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.01, "v3": 0.01}})})
    _controller_pass_holding(store, clock, "m0", 3.0)
    before = clock.now()

    ms = Engine(spec, services).start(ModelVersion("m0", "v3", "sim://v3"), supersede=True, detach=True)

    assert ms.rollout.candidate.version == "v3" and ms.rollout.phase is Phase.PROGRESSING
    assert 3.0 <= clock.now() - before < 10.0


def test_a_controller_pass_that_never_ends_is_reported_as_locked_after_the_request_timeout():
    clock, store, platforms, _, _ = _fleet(1)
    spec = make_spec().model_copy(update={"model": "m0"})
    services = Services(store=store, platform=platforms["m0"], clock=clock, request_timeout_s=30.0,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.01, "v3": 0.01}})})
    words = _controller_pass_holding(store, clock, "m0", float("inf"))
    before = clock.now()

    with pytest.raises(Locked, match=re.escape(f"locked by {words}")):
        Engine(spec, services).start(ModelVersion("m0", "v3", "sim://v3"), supersede=True, detach=True)

    assert 30.0 <= clock.now() - before < 31.0
    assert store.load("m0").rollout.candidate.version == "v2", "nothing changed"


def test_a_start_that_meets_a_foreground_start_is_refused_at_once():
    clock, store, platforms, _, _ = _fleet(1)
    spec = make_spec().model_copy(update={"model": "m0"})
    services = Services(store=store, platform=platforms["m0"], clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.01, "v3": 0.01}})})
    before = clock.now()
    with store.lock("m0", "pid 7 on ci, `rollout start`"):
        with pytest.raises(Locked, match="locked by pid 7 on ci, `rollout start`"):
            Engine(spec, services).start(ModelVersion("m0", "v3", "sim://v3"), supersede=True, detach=True)
    assert clock.now() == before


def test_a_lock_whose_holder_has_not_written_its_name_yet_is_waited_for_a_moment():
    """A lock file read between its holder's flock and its record (or its clearing and its
    release) names nobody: that holder is named, or gone, a moment later."""
    clock, store, platforms, _, _ = _fleet(1)
    spec = make_spec().model_copy(update={"model": "m0"})
    services = Services(store=store, platform=platforms["m0"], clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.01, "v3": 0.01}})})
    _controller_pass_holding(store, clock, "m0", 0.5, words=UNNAMED_HOLDER)
    started = Engine(spec, services).start(ModelVersion("m0", "v3", "sim://v3"), supersede=True, detach=True)
    assert started.rollout.candidate.version == "v3"

    clock, store, platforms, _, _ = _fleet(1)
    services = Services(store=store, platform=platforms["m0"], clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {"v1": 0.01, "v2": 0.01, "v4": 0.01}})})
    _controller_pass_holding(store, clock, "m0", float("inf"), words=UNNAMED_HOLDER)
    before = clock.now()
    with pytest.raises(Locked, match="locked by another process"):
        Engine(spec, services).start(ModelVersion("m0", "v4", "sim://v4"), supersede=True, detach=True)
    assert 2.0 <= clock.now() - before < 3.0, "an unnamed holder that stays is a holder: refused after a moment"


def test_a_detached_rollout_on_a_model_waiting_on_a_far_timer_is_carried_from_the_next_scan():
    """A trial found the controller leaving a new detached rollout alone for ~100 s: the model
    was scheduled for its old stable's retirement (scale_down_delay_s), and the scan skipped
    every model that had a timer. A changed state now wakes it at the next scan."""
    clock, store, platform = VirtualClock(), MemoryStore(), SimPlatform("m0")

    def services_for(model: str, ms: ModelState | None = None) -> Services:
        return Services(store=store, platform=platform, clock=clock,
                        providers={"sim": ScriptedProvider({"error_rate": {v: 0.01 for v in ("v1", "v2", "v3")}})})

    plan = {"type": "canary", "scale_down_delay_s": 600,
            "steps": [{"set_weight": 30}, {"pause": {"duration_s": 5}}, {"set_weight": 60}]}
    spec = make_spec(plan, metrics=[]).model_copy(update={"model": "m0"})
    for v in ("v1", "v2"):
        Engine(spec, services_for("m0")).start(ModelVersion("m0", v, f"sim://{v}"))
    assert [x.version for x in store.load("m0").retirements] == ["v1"]
    controller = Controller(store, services_for, clock, scan_s=2)
    _drive(clock, controller, 3)
    assert controller.scheduled["m0"] > clock.now() + 500, "waiting on the retirement"

    Engine(spec, services_for("m0")).start(ModelVersion("m0", "v3", "sim://v3"), detach=True)
    _drive(clock, controller, 30)

    assert store.load("m0").history[0].candidate.version == "v3"
    assert store.load("m0").history[0].phase is Phase.PROMOTED and platform.traffic.stable == "v3"
