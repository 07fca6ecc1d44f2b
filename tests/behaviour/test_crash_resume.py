"""A process killed at any call to the store or the platform (before or after the call
took effect) is resumed by the next `rollout start` to the outcome an uninterrupted run
reaches, and a rollback, once recorded, is never undone by re-applying the canary split."""

from __future__ import annotations

import pytest

from rollout.platforms.base import Traffic
from rollout.state import Phase
from rollout.testing import SimulatedCrash

from .world import World, make_spec

SCENARIOS = {
    "promoted": ({"v1": 0.01, "v2": 0.01}, Phase.PROMOTED, Traffic(stable="v2")),
    "rolled back": ({"v1": 0.01, "v2": 0.3}, Phase.ROLLED_BACK, Traffic(stable="v1")),
}


def _world(script):
    w = World(make_spec({"type": "canary", "weights": [20, 50], "scale_down_delay_s": 0}), script=dict(script))
    w.serving()
    w.faults.calls.clear()
    return w


def _calls(script) -> int:
    w = _world(script)
    w.start("v2")
    return len(w.faults.calls)


def _carry_on_by_controller(w: World):
    """What a controller does after the crash: reconcile whenever asked to, until it ends."""
    reconciler = w.reconciler()
    for _ in range(1000):
        result = reconciler.reconcile("fraud")
        r = result.state.rollout
        if r is not None and not r.phase.active:
            return result.state
        w.clock.sleep(max(0.0, (result.wake_at or w.clock.now() + 5) - w.clock.now()))
    raise AssertionError("the controller never finished the rollout")


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("after", [False, True], ids=["before-effect", "after-effect"])
@pytest.mark.parametrize("resume", ["start", "controller"])
def test_a_crash_at_every_call_resumes_to_the_same_outcome(name, after, resume):
    script, phase, traffic = SCENARIOS[name]
    total = _calls(script)
    assert total > 10
    for crash_at in range(total):
        w = _world(script)
        w.faults.crash_at, w.faults.after = crash_at, after
        with pytest.raises(SimulatedCrash):
            w.start("v2")
        crashed = w.state()
        ending_recorded = crashed.rollout is not None and crashed.rollout.ending is not None
        w.faults.crash_at = None
        mark = len(w.platform.history)

        if resume == "start":
            ms = w.start("v2")  # the rerun, as after a killed CI job
        elif crashed.rollout is None or crashed.rollout.candidate.version != "v2":
            continue  # killed before the rollout was recorded: nothing for a controller to carry on
        else:
            ms = _carry_on_by_controller(w)

        r = ms.rollout if ms.rollout is not None and ms.rollout.phase.active else ms.history[0]
        where = f"crash {'after' if after else 'before'} call {crash_at} ({w.faults.calls[crash_at]})"
        assert r.phase is phase, where
        assert w.platform.traffic == traffic, where
        assert ms.stable.version == traffic.stable, where
        if ending_recorded:
            assert all(not t.weight and not t.mirror for t in w.platform.history[mark:]), \
                f"{where}: a resumed rollback re-applied a canary split"
        assert len([s for s in r.steps if s.kind == "analysis"]) == len({s.index for s in r.steps if s.kind == "analysis"})


def test_traffic_never_moves_when_the_state_cannot_be_saved():
    w = _world({"v1": 0.01, "v2": 0.01})
    saves = {"n": 0}
    real_save = w.store.save

    def save(state):
        saves["n"] += 1
        if saves["n"] > 2:  # the rollout and its first step are recorded, then the disk fills up
            raise OSError("No space left on device")
        return real_save(state)

    w.store.save = save  # type: ignore[method-assign]
    with pytest.raises(OSError):
        w.start("v2")
    assert all(not t.candidate or not t.weight for t in w.platform.history), \
        "a split was applied that the state could not record"
