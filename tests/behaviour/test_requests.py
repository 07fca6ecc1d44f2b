"""Promote, abort and rollback arriving in every phase: acted on by whoever holds the
model, never lost, never parked for a later command to trip over."""

from __future__ import annotations

import pytest

from rollout.analysis.base import Measurement
from rollout.engine import mailbox
from rollout.errors import BadInput, Locked, NotFound
from rollout.integrations.github import step_rows
from rollout.platforms.base import Traffic
from rollout.state import Phase

from .world import MODEL, World, make_spec, version


def _request_during_analysis(request: str, tick: int = 1, duration_s: float = 300) -> World:
    """A world whose provider, at the ``tick``-th candidate measurement, has another
    process leave ``request`` in the state (the running start holds the lock)."""
    w = World(make_spec(duration_s=duration_s)).serving()

    def measure(ctx, n):
        if n == tick:
            mailbox.leave(w.store, MODEL, request, "operator in another terminal", None)
        return Measurement.of(0.01)

    w.provider.script = {"error_rate": {"v1": 0.01, "v2": measure}}
    return w


def test_abort_during_an_analysis_sends_traffic_back_and_keeps_the_candidate():
    w = _request_during_analysis("abort")
    ms = w.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.ABORTED and "operator in another terminal" in r.reason
    assert w.platform.traffic == Traffic(stable="v1") and "v2" in w.platform.running
    assert r.request is None and step_rows(r)[1]["result"] == "⛔ aborted"


def test_rollback_during_an_analysis_retires_the_candidate():
    w = _request_during_analysis("rollback")
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and "v2" in w.platform.retired


def test_promote_during_an_analysis_passes_that_step_only():
    w = _request_during_analysis("promote")
    ms = w.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED
    assert r.step_record(1).outcome == "passed_by_operator"
    assert r.step_record(3).outcome == "passed", "the next analysis still ran"


def test_promote_full_during_an_analysis_skips_to_promotion():
    w = _request_during_analysis("promote_full")
    ms = w.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED and ms.stable.version == "v2"
    assert [s.outcome for s in r.steps if s.index in (1, 2, 3, 4)] == ["skipped"] * 4


def test_an_abort_arriving_as_the_run_pauses_is_acted_on_not_parked():
    w = World(make_spec(), script={"v1": 0.01, "v2": None}).serving()  # inconclusive: the run pauses

    def no_data(ctx, n):
        if n == 2:
            mailbox.leave(w.store, MODEL, "abort", "operator", None)
        return Measurement.no_data("nothing yet")

    w.provider.script = {"error_rate": {"v1": 0.01, "v2": no_data}}
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ABORTED and "paused" not in w.listener.kinds


@pytest.mark.parametrize("command", ["promote", "abort", "rollback"])
def test_a_command_on_a_paused_rollout_acts_itself_when_nobody_holds_it(command):
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]}, metrics=[])).serving()
    assert w.start("v2").rollout.phase is Phase.PAUSED

    engine = w.engine(command)
    ms = getattr(engine, command)()

    expected = {"promote": Phase.PROMOTED, "abort": Phase.ABORTED, "rollback": Phase.ROLLED_BACK}[command]
    assert ms.history[0].phase is expected and not engine.handed_over
    assert w.platform.traffic == Traffic(stable="v2" if command == "promote" else "v1")


def test_a_command_while_another_process_holds_the_model_is_left_as_a_request_and_applied_by_the_holder():
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 30}, {"pause": {"duration_s": 600}}]},
                        metrics=[])).serving()
    w.engine().start(version("v2"), detach=True)
    with w.store.lock(MODEL, "pid 1 `rollout start`"):
        with pytest.raises(Locked, match="has not acted on the request yet"):
            w.engine("abort").abort()
        assert w.state().rollout.request == "abort"
        ms = w.reconciler().reconcile(MODEL).state  # the holder's next reconcile

    assert ms.history[0].phase is Phase.ABORTED and ms.history[0].request is None


def test_requests_that_cannot_apply_are_refused_at_the_requester_and_change_nothing():
    w = World(make_spec({"type": "shadow", "on_success": "discard"}, duration_s=600)).serving()
    w.engine().start(version("v2"), detach=True)
    before = w.state()

    with pytest.raises(BadInput, match="has no promotion step"):
        w.engine("promote").promote("v2", full=True)
    with pytest.raises(BadInput, match="the rollout in progress is of v2, not v9"):
        w.engine("promote").promote("v9")
    with w.store.lock(MODEL, "another run"), pytest.raises(BadInput, match="has no promotion step"):
        w.engine("promote").promote("v2", full=True)
    assert w.state().rollout == before.rollout

    w.engine("abort").abort()
    with pytest.raises(NotFound, match="no rollout of 'fraud' is in progress"):
        w.engine("abort").abort()
    with pytest.raises(NotFound, match="no rollout of 'fraud' is in progress"):
        w.engine("promote").promote()


def test_rollback_to_a_version_never_stable_here_is_refused():
    w = World(make_spec({"type": "canary", "weights": [50]}, metrics=[])).serving()
    w.start("v2")
    with pytest.raises(NotFound, match="v7 was never stable here"):
        w.engine("rollback").rollback("v7")
    assert w.state().stable.version == "v2" and w.platform.traffic == Traffic(stable="v2")


def test_a_request_the_holder_applies_just_before_the_requester_takes_the_lock_is_not_applied_twice():
    """The requester saw its promote still pending, then the holder's pass applied it and let
    go: the requester, now holding the lock, must not promote a second time (that would pass
    a pause nobody approved)."""
    plan = {"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}, {"set_weight": 60}, {"pause": {}}]}
    w = World(make_spec(plan, metrics=[])).serving()
    assert w.engine().start(version("v2"), detach=True).rollout.phase is Phase.PAUSED
    w.store._holders[MODEL] = "pid 7 on ci, `rollout start`"
    real_lock, passes = w.store.lock, []

    def lock(model: str, holder: str):  # type: ignore[no-untyped-def]
        if holder != "test controller" and not passes and w.state().rollout.request == "promote":
            passes.append(model)
            del w.store._holders[MODEL]  # the holder's pass ends, having applied the promote
            w.reconciler().reconcile(MODEL)
        return real_lock(model, holder)

    w.store.lock = lock  # type: ignore[method-assign]
    engine = w.engine("promote")
    ms = engine.promote()

    assert passes and engine.handed_over
    r = w.state().rollout
    assert r.phase is Phase.PAUSED and r.step_index == 3, "the promote was applied twice"
    assert ms.rollout.step_index == 3
