"""Commands from other processes reach a running rollout through the state; none may be
lost or parked for a later, unrelated command to trip over."""

from __future__ import annotations

from rollout.gates import GateResult
from rollout.state import FileStateStore, Phase

from .conftest import Recorder, serving_v1


def test_an_abort_arriving_just_as_the_run_pauses_is_acted_on_not_parked(make_spec, local_home):
    rig = serving_v1(make_spec(strategy={"type": "canary", "steps": [{"set_weight": 20},
                                                                    {"gate": {"url": "http://127.0.0.1:9/ok"}}]},
                               analysis={"metrics": []}), local_home)
    store = FileStateStore(local_home)

    def refusing_gate_while_someone_aborts(step, payload):
        ms = store.load("iris")  # another operator's `rollout abort` lands at this moment
        ms.rollout.request, ms.rollout.requested_by = "abort", "operator in another terminal"
        store.save(ms)
        return GateResult(False, "HTTP 503")

    rec = Recorder()
    ms = rig.start("v2", rec, gate=refusing_gate_while_someone_aborts)

    assert ms.rollout.phase is Phase.ABORTED and "operator in another terminal" in ms.rollout.reason
    stored = store.load("iris")
    assert stored.history[0].request is None
    assert "paused" not in [kind for _, kind, _, _ in rec.events]
    assert rig.platform.get_traffic().weight == 0
