"""Everything that serves is watched, in virtual time: a dead router or stable is
repaired and never blamed on the candidate, a dead candidate is rolled back; a rollback
killed halfway is continued, never re-applies the canary split; a model with no state
whose platform serves a version adopts it; abort and rollback work from the platform's
own view; `status --watch` ends when nothing moves the rollout any more."""

from __future__ import annotations

from typing import Any

import pytest

from rollout.analysis.base import Measurement
from rollout.engine import EXIT_UNHELD
from rollout.errors import NotFound, StateDamaged
from rollout.platforms.base import Traffic
from rollout.state import LockHolder, ModelState, Phase
from rollout.testing import MemoryStore, SimulatedCrash
from rollout.cli.watch import watch_status

from .world import MODEL, World, make_spec, version

PAUSED_CANARY = {"type": "canary", "steps": [{"set_weight": 20}, {"pause": {"duration_s": 60}}, {"analysis": {}},
                                             {"set_weight": 50}]}


def _resolve(model: str, v: str):
    return version(v)


def _kill_when(w: World, weight: int, what: Any) -> None:
    """Run ``what`` (a kill) once, when the split first reaches ``weight``."""
    done: list[bool] = []

    def hook(traffic: Traffic) -> None:
        if traffic.weight == weight and traffic.candidate and not done:
            done.append(True)
            what()
    w.platform.on_traffic = hook


def test_a_dead_stable_is_restarted_and_the_canary_goes_on_to_promotion():
    w = World(make_spec(PAUSED_CANARY)).serving()
    _kill_when(w, 20, lambda: w.platform.kill("v1"))
    ms = w.start("v2")

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED, r.reason
    repaired = w.listener.messages("repaired")
    assert len(repaired) == 1 and "stable v1 was down" in repaired[0] and "Not held against candidate v2" in repaired[0]
    assert "v2" not in w.platform.retired and ms.stable.version == "v2"


def test_a_stable_that_cannot_be_restarted_pauses_and_the_candidate_is_not_rolled_back():
    w = World(make_spec(PAUSED_CANARY)).serving()

    def break_stable() -> None:
        w.platform.kill("v1")
        w.platform.broken.add("v1")

    _kill_when(w, 20, break_stable)
    ms = w.start("v2")

    r = ms.rollout
    assert r.phase is Phase.PAUSED and "stable v1 is down" in r.reason and "the candidate is not blamed" in r.reason
    assert "v2" in w.platform.running and not w.platform.retired
    assert w.platform.traffic == Traffic("v1", "v2", 20), "a stable outage never moves traffic on its own"

    w.platform.broken.discard("v1")  # the operator fixed it and reruns start: the canary continues
    assert w.start("v2").history[0].phase is Phase.PROMOTED


def test_a_dead_router_is_restarted_within_one_interval_with_the_recorded_split():
    w = World(make_spec(PAUSED_CANARY)).serving()
    killed_at: list[float] = []

    def kill_router() -> None:
        w.platform.router_down = True
        killed_at.append(w.clock.now())

    _kill_when(w, 20, kill_router)
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.PROMOTED
    [event] = [e for e, _ in w.listener.events if e.kind == "repaired"]
    assert "router was down" in event.message and "v2 at 20%" in event.message
    assert event.at - killed_at[0] <= w.spec.analysis.interval_s
    assert w.platform.router_restarts == 1
    restored = w.platform.history[w.platform.history.index(Traffic("v1", "v2", 20)) + 1]
    assert restored == Traffic("v1", "v2", 20), "the router came back with the split the state records"


def test_a_dead_router_during_a_shadow_comes_back_mirroring_and_the_repair_says_so():
    w = World(make_spec({"type": "shadow", "on_success": "discard"}, duration_s=600)).serving()
    done: list[Traffic] = []

    def hook(traffic: Traffic) -> None:
        if traffic.mirror and not done:
            done.append(traffic)
            w.platform.router_down = True
    w.platform.on_traffic = hook
    w.start("v2")

    [event] = [e for e, _ in w.listener.events if e.kind == "repaired"]
    assert f"v2 at 0%, mirror {done[0].mirror}% to it" in event.message, event.message
    assert w.platform.history[w.platform.history.index(done[0]) + 1] == done[0]


def test_a_start_of_a_canary_paused_for_promote_puts_back_a_split_the_router_lost():
    """`rollout local down` (or a reboot) during a manual pause: the start that resumes the
    rollout brings the servers back, and the router with the recorded split, not the
    stable alone, while status would say 50%."""
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 50}, {"pause": {}}]})).serving()
    assert w.start("v2").rollout.phase is Phase.PAUSED
    w.platform.set_traffic(Traffic("v1"))  # a router started afresh serves the stable alone
    w.platform.kill("v1")
    w.platform.kill("v2")

    ms = w.start("v2")

    assert ms.rollout.phase is Phase.PAUSED and w.platform.traffic == Traffic("v1", "v2", 50)
    repaired = w.listener.messages("repaired")
    assert repaired == ["the router served v1 100%, not the recorded split; put back v1 50%, v2 50%"], repaired
    assert w.start("v2") and w.listener.messages("repaired") == repaired  # nothing more to put back


def test_a_step_that_meets_a_dead_stable_repairs_it_and_carries_on_instead_of_rolling_back():
    w = World(make_spec(PAUSED_CANARY)).serving()

    def error_rate(ctx: Any, n: int) -> Measurement:
        if n == 2:  # the stable dies between two looks, just before the next traffic step
            w.platform.kill("v1")
        return Measurement.of(0.01)

    w.provider.script = {"error_rate": error_rate}
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.PROMOTED, ms.history[0].reason
    assert any("stable v1 was down" in m for m in w.listener.messages("repaired"))


def test_a_dead_candidate_is_still_rolled_back():
    w = World(make_spec(PAUSED_CANARY)).serving()
    _kill_when(w, 20, lambda: w.platform.kill("v2"))
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and "candidate v2 stopped being ready" in ms.history[0].reason
    assert w.platform.traffic == Traffic("v1")


def test_a_rollback_killed_before_traffic_moved_is_continued_never_re_applying_the_canary_split():
    w = World(make_spec()).serving()
    w.provider.script = {"error_rate": {"v1": 0.01, "v2": 0.5}}

    def die_on_rollback_traffic(what: str) -> None:
        r = w.store.load(MODEL).rollout
        if what == "platform.set_traffic" and r is not None and r.ending is not None:
            raise SimulatedCrash("kill -9 after the rollback was recorded, before traffic moved")

    w.platform.on_call = die_on_rollback_traffic
    with pytest.raises(SimulatedCrash):
        w.start("v2")
    assert w.state().rollout.ending is not None and w.platform.traffic == Traffic("v1", "v2", 20)

    w.platform.on_call = None
    mark = len(w.platform.history)
    ms = w.start("v2")

    assert ms.history[0].phase is Phase.ROLLED_BACK and "analysis failed" in ms.history[0].reason
    assert w.platform.history[mark:] == [Traffic("v1")], "the rerun re-applied a canary split before rolling back"
    assert "v2" in w.platform.retired


# ---------------------------------------------------------------------------------- adoption

def _lose_state(w: World) -> None:
    w.store = MemoryStore()


def test_a_model_with_no_state_adopts_the_served_version_and_runs_the_plan_with_analysis():
    w = World(make_spec()).serving("v1")
    _lose_state(w)
    mark = len(w.platform.history)

    ms = w.engine_with(resolve=_resolve).start(version("v2"))

    r = ms.history[0]
    assert r.phase is Phase.PROMOTED and r.strategy == "canary" and r.stable.version == "v1"
    assert [s.kind for s in r.steps][:2] == ["traffic", "analysis"], "adoption runs the normal plan"
    assert w.platform.history[mark] == Traffic("v1", "v2", 20), "never a first deployment at 100%"
    [adopted] = w.listener.messages("adopted")
    assert "already serves fraud:v1: adopted as the stable version" in adopted


def test_adopting_the_version_asked_for_is_a_no_op():
    w = World(make_spec()).serving("v1")
    _lose_state(w)
    engine = w.engine_with(resolve=_resolve)
    ms = engine.start(version("v1"))
    assert engine.noop and ms.stable.version == "v1" and w.platform.traffic == Traffic("v1")


def test_a_served_version_the_registry_lacks_stops_the_start_before_anything_moves():
    w = World(make_spec()).serving("v1")
    _lose_state(w)
    mark = len(w.platform.history)

    def missing(model: str, v: str):
        raise NotFound(f"{model}:{v} is not in the registry")

    with pytest.raises(NotFound, match="already serves fraud:v1, which cannot be adopted.*Nothing was changed"):
        w.engine_with(resolve=missing).start(version("v2"))
    assert len(w.platform.history) == mark and w.state().revision == 0


# ------------------------------------------------------------------ abort / rollback, no state

def _paused_at_20() -> World:
    w = World(make_spec({"type": "canary", "steps": [{"set_weight": 20}, {"pause": {}}]})).serving("v1")
    assert w.start("v2").rollout.phase is Phase.PAUSED
    return w


def test_abort_with_no_state_sends_all_traffic_to_the_stable_the_router_serves():
    w = _paused_at_20()
    _lose_state(w)
    engine = w.engine_with(command="abort", resolve=_resolve)
    engine.abort()

    assert engine.from_platform and w.platform.traffic == Traffic("v1")
    assert "v2" in w.platform.running, "abort keeps the candidate for inspection"
    [said] = w.listener.messages("aborted")
    assert "no rollout state" in said and "served v1 as stable and v2 at 20%" in said and "all traffic now on v1" in said


class DamagedStore(MemoryStore):
    def load(self, model: str) -> ModelState:
        raise StateDamaged(f"state file {model}.json is corrupt and its previous copy is missing")


def test_rollback_with_damaged_state_retires_the_candidate_and_restores_a_dead_stable():
    w = _paused_at_20()
    w.platform.kill("v1")
    w.store = DamagedStore()
    engine = w.engine_with(command="rollback", resolve=_resolve)
    engine.rollback()

    assert w.platform.traffic == Traffic("v1") and w.platform.health("v1").ready and "v2" in w.platform.retired
    [said] = w.listener.messages("rolled_back")
    assert "its state is damaged" in said and "v2 retired" in said


def test_rollback_with_no_state_and_no_candidate_says_there_is_nothing_on_record():
    w = World(make_spec()).serving("v1")
    _lose_state(w)
    with pytest.raises(NotFound, match="no record that v0 was ever stable here"):
        w.engine_with(command="rollback", resolve=_resolve).rollback("v0")
    assert w.platform.traffic == Traffic("v1")


# ------------------------------------------------------------------------------ status --watch

def test_watch_ends_with_exit_6_when_nothing_moves_a_progressing_rollout():
    w = World(make_spec()).serving()
    w.engine().start(version("v2"), detach=True)  # recorded, and nobody carries it on
    lines: list[str] = []

    code = watch_status(w.store, MODEL, interval_s=1, clock=w.clock, echo=lines.append, live=False, grace_s=3)

    assert code == EXIT_UNHELD == 6
    assert "but no process holds it" in lines[-1] and "`rollout start fraud:v2` resumes it" in lines[-1]


def test_watch_keeps_following_while_a_holder_lives_or_a_controller_leads():
    w = World(make_spec()).serving()
    w.engine().start(version("v2"), detach=True)
    ticks: list[float] = []
    advance = w.clock.sleep

    def clock_sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 20:  # 20 s with a controller leading and no save: then an abort ends the rollout
            w.engine(command="abort").abort()
        advance(seconds)

    w.clock.sleep = clock_sleep  # type: ignore[method-assign]
    code = watch_status(w.store, MODEL, interval_s=1, clock=w.clock, echo=lambda line: None, live=False, grace_s=3,
                        controller=lambda: "pid 9")
    assert code == 3 and len(ticks) == 20, "the watch gave up while a controller led"


def test_watch_names_the_holder_that_died():
    w = World(make_spec()).serving()
    w.engine().start(version("v2"), detach=True)
    dead = LockHolder("pid 41 on ci, `rollout start`", alive=False, since=w.clock.now())
    w.store.holder = lambda model: dead  # type: ignore[method-assign]
    lines: list[str] = []

    assert watch_status(w.store, MODEL, interval_s=1, clock=w.clock, echo=lines.append, live=False, grace_s=3) == 6
    assert "the process that ran it (pid 41 on ci, `rollout start`) is gone" in lines[-1]
