"""The state stays inside what a ConfigMap can hold (1 MiB, enforced by the fake API
server as by a real one): past rollouts are summarised in the state ConfigMap and kept
in full in rotated archive ConfigMaps; a state that cannot fit is refused before
anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.errors import PlatformError
from rollout.platforms.kubernetes import state as kstate
from rollout.platforms.kubernetes.client import CONFIGMAP
from rollout.spec import parse_spec
from rollout.state import HISTORY_LIMIT, MeasurementRecord, ModelState, Phase
from tests.kubernetes.fake_apiserver import CONFIGMAP_LIMIT, RESOURCES, ApiError, FakeCluster
from tests.kubernetes.helpers import MODEL, NAMESPACE, make_rig, version

pytestmark = pytest.mark.timeout(600)

METRICS = ["error-rate", "latency-p50", "latency-p90", "latency-p99", "latency-mean", "throughput", "agreement",
           "slow-ratio"]


def long_analysis_spec():
    """3 analysis steps of 300 s, measured every 50 s, 8 metrics: 6 x 3 x 8 candidate values a rollout
    (~60 kB: the old bounded history of 20 full rollouts was ~1.2 MB)."""
    return parse_spec({
        "model": MODEL, "registry": {"type": "git", "url": "/nonexistent"},
        "platform": {"type": "kubernetes", "namespace": NAMESPACE, "router": "istio", "replicas": 2,
                     "ready_timeout_s": 5},
        "strategy": {"type": "canary", "weights": [10, 30, 60], "scale_down_delay_s": 0},
        "analysis": {"interval_s": 50, "duration_s": 300, "metrics": [
            {"name": m, "provider": "knob", "query": m, "judge": {"type": "threshold", "max": 0.05}} for m in METRICS]},
    })


def engine(rig, clock=None):
    """The rig's engine, polling for requests every 30 virtual seconds (not 0.01: a 300 s
    analysis would read the state 30,000 times)."""
    from rollout.clock import VirtualClock
    from rollout.engine import Engine, Services

    services = Services(store=rig.store, platform=rig.platform, providers={"knob": rig.knob},
                        clock=clock or VirtualClock(), poll_s=30)
    return Engine(rig.spec, services, command="start")


def configmap_bytes(cluster: FakeCluster) -> dict[str, int]:
    return {c["metadata"]["name"]: sum(len(k) + len(v.encode()) for k, v in (c.get("data") or {}).items())
            for c in cluster.all("configmaps", NAMESPACE)}


def test_the_fake_server_refuses_a_configmap_over_1_mib_like_a_real_one(cluster: FakeCluster) -> None:
    res = next(r for r in RESOURCES if r.plural == "configmaps")
    with pytest.raises(ApiError, match="Too long: must have at most 1048576 bytes") as err:
        cluster.create(res, NAMESPACE, {"metadata": {"name": "big"}, "data": {"x": "a" * CONFIGMAP_LIMIT}})
    assert err.value.code == 422


@pytest.mark.slow
def test_rollouts_past_the_history_limit_with_long_analyses_stay_within_a_configmap(cluster, kubelet, kubeconfig) -> None:
    """HISTORY_LIMIT + 5 rollouts: the history is full for the last five (its largest), and
    more than ARCHIVE_LIMIT archives have been written, so the oldest were deleted."""
    rig = make_rig(cluster, kubeconfig, long_analysis_spec())
    from rollout.clock import VirtualClock

    clock = VirtualClock()  # one clock for all runs: rollouts finish in order, as in real time
    engine(rig, clock).start(version("v1"))
    last = HISTORY_LIMIT + 6
    assert last - 1 > kstate.ARCHIVE_LIMIT
    sizes = []
    for n in range(2, last + 1):
        if n % 10 == 0:
            rig.knob.values[f"v{n}"] = 0.5  # every tenth candidate is bad: rolled back
        ms = engine(rig, clock).start(version(f"v{n}"))
        expected = Phase.ROLLED_BACK if n % 10 == 0 else Phase.PROMOTED
        assert ms.rollout.phase is expected, (n, ms.rollout.reason)
        sizes.append(configmap_bytes(cluster)[f"{MODEL}-rollout-state"])

    ms = rig.store.load(MODEL)
    assert ms.stable.version == f"v{last}"  # every promotion was saved: nothing stuck at an old version
    assert len(ms.history) == HISTORY_LIMIT  # full: the state's largest shape was measured
    assert max(sizes) < kstate.STATE_BUDGET
    assert max(configmap_bytes(cluster).values()) < CONFIGMAP_LIMIT
    # a full rollout measured 3 x 6 x 8 candidate values; its record is in its archive
    archives = rig.store.archived(MODEL)
    assert len(archives) == kstate.ARCHIVE_LIMIT
    # every finished rollout is archived (the last one too), newest first
    assert [a.candidate.version for a in archives] == [f"v{n}" for n in range(last, last - kstate.ARCHIVE_LIMIT, -1)]
    assert len(cluster.all("configmaps", NAMESPACE)) == 1 + kstate.ARCHIVE_LIMIT  # older archives deleted
    full = archives[0]  # the last one, promoted after all three analysis steps
    assert len([m for m in full.measurements if m.version == f"v{last}"]) >= 3 * 6 * len(METRICS)
    assert len(full.model_dump_json()) * 20 > CONFIGMAP_LIMIT  # the old history of 20 full rollouts could not fit
    # the state keeps a summary of each past rollout: outcome, reason, what decided
    rolled_back = next(h for h in ms.history if h.candidate.version == "v20")
    assert rolled_back.phase is Phase.ROLLED_BACK and "error-rate" in rolled_back.reason
    assert rolled_back.measurements and all(m.verdict != "pass" for m in rolled_back.measurements)


def test_a_state_that_cannot_fit_is_refused_before_anything_is_written(cluster, kubeconfig, monkeypatch) -> None:
    rig = make_rig(cluster, kubeconfig, long_analysis_spec())
    ms = rig.store.save(ModelState(model=MODEL))
    before = cluster.find("configmaps", f"{MODEL}-rollout-state", NAMESPACE)
    from rollout.state import RolloutState, VersionRecord

    huge = [MeasurementRecord(metric="m" * 200, step_index=0, tick=i, at=float(i), version="v2", status="value",
                              value=0.0, verdict="pass", reason="x" * 400) for i in range(3000)]
    ms.rollout = RolloutState(id="abc", model=MODEL, stable=None, candidate=VersionRecord(version="v2", uri="s3://x"),
                              strategy="canary", spec={}, plan=[], started_at=0.0, measurements=huge)
    with pytest.raises(PlatformError, match=r"would be \d+ bytes, over the \d+-byte budget of ConfigMap "
                                            rf"{NAMESPACE}/{MODEL}-rollout-state.*nothing was changed"):
        rig.store.save(ms)
    assert cluster.find("configmaps", f"{MODEL}-rollout-state", NAMESPACE) == before


def test_ended_steps_are_compacted_to_what_later_steps_carry(cluster, kubeconfig, monkeypatch) -> None:
    monkeypatch.setattr(kstate, "STATE_BUDGET", 16_000)
    rig = make_rig(cluster, kubeconfig, long_analysis_spec())
    from rollout.state import RolloutState, VersionRecord

    measurements = [MeasurementRecord(metric=m, step_index=step, tick=t, at=float(t), version="v2", status="value",
                                      value=t / 100, verdict="fail" if (step, t, m) == (0, 3, "latency-p99") else "pass",
                                      detail={"candidate.requests": float(t)})
                    for step in (0, 1) for t in range(20) for m in ("error-rate", "latency-p99")]
    ms = ModelState(model=MODEL)
    ms.rollout = RolloutState(id="abc", model=MODEL, stable=None, candidate=VersionRecord(version="v2", uri="s3://x"),
                              strategy="canary", spec={}, plan=[], started_at=0.0, step_index=1,
                              measurements=measurements)
    saved = rig.store.save(ms)
    kept = saved.rollout.measurements
    step0 = [m for m in kept if m.step_index == 0]
    assert {(m.metric, m.tick) for m in step0} == {("error-rate", 19), ("latency-p99", 19), ("latency-p99", 3)}
    assert step0[-1].detail == {"candidate.requests": 19.0}  # the evidence a later step carries forward
    assert len([m for m in kept if m.step_index == 1]) == 40  # the running step is untouched
    assert rig.store.load(MODEL).rollout.measurements == kept
    assert rig.kube.get(CONFIGMAP, f"{MODEL}-rollout-state") is not None
