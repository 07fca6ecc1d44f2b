"""Whole rollouts on the fake cluster: the real engine, the real platform and state
store, the official client over HTTP; the split is checked from the raw objects after
every step."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.errors import Unsupported
from rollout.platforms.base import Traffic
from rollout.platforms.kubernetes.render import version_name
from rollout.state import Phase
from tests.kubernetes.fake_apiserver import FakeCluster
from tests.kubernetes.helpers import MODEL, NAMESPACE, make_rig, make_spec, observed_split, replicas, version

ROUTERS = ["service", "gateway-api", "istio"]


def _split(router: str, stable: str, candidate: str | None, weight: int, mirror: int = 0) -> dict:
    """What observed_split should show for a split, per router."""
    if router == "gateway-api":
        name = lambda v: version_name(MODEL, v)  # noqa: E731
    else:
        name = lambda v: f"v-{v}"  # noqa: E731
    out: dict = {name(stable): 100 - weight if candidate else 100}
    if candidate:
        out[name(candidate)] = weight
        if mirror:
            out["mirror"] = (name(candidate), mirror if router == "gateway-api" else float(mirror))
    return out


def _rig(cluster: FakeCluster, kubeconfig: Path, router: str, **kw):
    rig = make_rig(cluster, kubeconfig, make_spec(router, **kw))
    rig.engine().start(version("v1"))
    rig.steps.clear()
    return rig


@pytest.mark.parametrize("router", ROUTERS)
def test_canary_promotes_and_every_step_shows_its_split(router, cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, router)
    ms = rig.engine().start(version("v2"))

    assert ms.rollout.phase is Phase.PROMOTED and ms.stable.version == "v2"
    observed = [split for _, split in rig.steps]
    if router == "service":  # replicas=4: 20% -> 1 of 4 pods, 50% -> 2 of 4; at 100% the selector pins v2
        assert observed == [
            {"selector": "*", "v1": 3, "v2": 1}, {"selector": "*", "v1": 3, "v2": 1},
            {"selector": "*", "v1": 2, "v2": 2}, {"selector": "*", "v1": 2, "v2": 2},
            {"selector": "v2"}, {"selector": "v2"}, {"selector": "v2"},
        ]
    else:
        assert observed == [
            _split(router, "v1", "v2", 20), _split(router, "v1", "v2", 20),
            _split(router, "v1", "v2", 50), _split(router, "v1", "v2", 50),
            # promotion makes v2 the stable route on its own; then the old stable is retired
            _split(router, "v1", "v2", 100), _split(router, "v2", None, 0), _split(router, "v2", None, 0),
        ]
    assert replicas(cluster, "v1") == 0 and replicas(cluster, "v2") == 4  # old stable retired (delay 0)
    assert rig.platform.get_traffic() == Traffic(stable="v2", candidate=None, weight=0, mirror=0)
    assert rig.platform.running_versions() == ["v2"]


@pytest.mark.parametrize("router", ROUTERS)
def test_failed_analysis_restores_stable_weight_before_scaling_the_candidate_down(router, cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, router)
    rig.knob.values["v2"] = 0.5  # error rate far over max 0.05
    mark = cluster.mark()
    ms = rig.engine().start(version("v2"))

    assert ms.rollout.phase is Phase.ROLLED_BACK and "error-rate" in ms.rollout.reason
    assert ms.stable.version == "v1"
    if router == "service":
        assert observed_split(cluster, router) == {"selector": "v1"}
    else:
        assert observed_split(cluster, router) == _split(router, "v1", None, 0)
    assert replicas(cluster, "v1") == 4 and replicas(cluster, "v2") == 0
    # Order on the wire: the last routing write comes before the candidate's scale-down.
    reqs = cluster.requests[mark:]
    route_kind = {"service": "services", "gateway-api": "httproutes", "istio": "virtualservices"}[router]
    last_route = max(i for i, r in enumerate(reqs) if r.verb == "apply" and r.resource == route_kind)
    scale_down = max(i for i, r in enumerate(reqs) if r.verb == "patch" and r.name == version_name(MODEL, "v2"))
    assert last_route < scale_down


@pytest.mark.parametrize("router", ROUTERS)
def test_blue_green_switches_at_once_after_preview(router, cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, router,
               strategy={"type": "blue_green", "auto_promotion_s": 5, "scale_down_delay_s": 30})
    ms = rig.engine().start(version("v2"))

    assert ms.rollout.phase is Phase.PROMOTED
    observed = [split for _, split in rig.steps]
    if router == "service":
        assert observed[0] == {"selector": "v1"}  # preview: v2 runs at full size, gets no live traffic
        assert observed[3] == {"selector": "v2"}
    else:
        assert observed[0] == _split(router, "v1", "v2", 0)
        assert observed[3] == _split(router, "v1", "v2", 100)
    assert replicas(cluster, "v2") == 4 and replicas(cluster, "v1") == 4  # v1 kept 30s for an instant rollback
    assert [r.version for r in ms.retirements] == ["v1"]


@pytest.mark.parametrize("router", ["gateway-api", "istio"])
def test_shadow_mirrors_then_promotes(router, cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, router, strategy={"type": "shadow", "mirror_percent": 40, "scale_down_delay_s": 0})
    ms = rig.engine().start(version("v2"))

    assert ms.rollout.phase is Phase.PROMOTED
    observed = [split for _, split in rig.steps]
    assert observed[0] == _split(router, "v1", "v2", 0, mirror=40)
    assert observed[2] == _split(router, "v1", "v2", 100)  # mirror removed with the switch
    assert rig.steps[0][0].startswith("v2 at 0%, mirror 40%")


def test_service_router_refuses_to_mirror_and_says_so_at_lint_time(cluster, kubeconfig):
    from rollout.app import lint

    spec = make_spec("service", strategy={"type": "shadow"})
    with pytest.raises(Unsupported, match="router 'service' cannot mirror"):
        lint(spec)
    rig = make_rig(cluster, kubeconfig, make_spec("service"))
    with pytest.raises(Unsupported, match="cannot mirror"):
        rig.platform.set_traffic(Traffic("v1", "v2", 0, 50))


def test_never_ready_candidate_times_out_naming_the_deployment_and_pod_condition(cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, "gateway-api", ready_timeout_s=1)
    kubelet.never_ready.add(version_name(MODEL, "v2"))
    ms = rig.engine().start(version("v2"))

    assert ms.rollout.phase is Phase.FAILED
    reason = ms.rollout.reason
    assert f"Deployment {NAMESPACE}/{version_name(MODEL, 'v2')} not ready after 1s: 0/4 replicas ready" in reason
    assert "condition Ready=False (ContainersNotReady" in reason and "CrashLoopBackOff" in reason
    assert observed_split(cluster, "gateway-api") == _split("gateway-api", "v1", None, 0)  # stable still serves
    assert replicas(cluster, "v1") == 4 and replicas(cluster, "v2") == 0  # nothing of v2 left running


def test_abort_keeps_the_candidate_running_for_inspection(cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, "istio", strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]})
    ms = rig.engine().start(version("v2"))
    assert ms.rollout.phase is Phase.PAUSED
    assert observed_split(cluster, "istio") == _split("istio", "v1", "v2", 30)

    ms = rig.engine("abort").abort()
    assert ms.rollout.phase is Phase.ABORTED
    assert observed_split(cluster, "istio") == _split("istio", "v1", None, 0)
    assert replicas(cluster, "v2") == 4
    subsets = [s["name"] for s in cluster.find("destinationrules", MODEL, NAMESPACE)["spec"]["subsets"]]
    assert subsets == ["v-v1"]  # pruned after the route stopped using v-v2


def test_rollback_command_restores_previous_stable(cluster, kubelet, kubeconfig):
    rig = _rig(cluster, kubeconfig, "gateway-api")
    rig.engine().start(version("v2"))
    assert replicas(cluster, "v1") == 0

    ms = rig.engine("rollback").rollback()
    assert ms.stable.version == "v1"
    assert observed_split(cluster, "gateway-api") == _split("gateway-api", "v1", None, 0)
    assert replicas(cluster, "v1") == 4 and replicas(cluster, "v2") == 0


def test_objects_carry_rollout_labels_and_foreign_objects_are_left_alone(cluster, kubelet, kubeconfig):
    from rollout.errors import PlatformError
    from tests.kubernetes.fake_apiserver import RESOURCES

    services = next(r for r in RESOURCES if r.plural == "services")
    cluster.create(services, NAMESPACE, {"metadata": {"name": MODEL}, "spec": {"selector": {"app": "legacy"}}})
    rig = make_rig(cluster, kubeconfig, make_spec("gateway-api"))
    with pytest.raises(PlatformError, match=f"Service {NAMESPACE}/{MODEL} exists but was not created by rollout"):
        rig.engine().start(version("v1"))
    assert cluster.find("services", MODEL, NAMESPACE)["spec"]["selector"] == {"app": "legacy"}

    cluster.delete(services, NAMESPACE, MODEL)
    rig.engine().start(version("v1"))
    for plural in ("deployments", "services", "httproutes", "podmonitors", "configmaps", "leases"):
        for obj in cluster.all(plural, NAMESPACE):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "rollout", (plural, obj["metadata"]["name"])
            assert labels["app.kubernetes.io/name"] == MODEL


def test_stale_resource_version_conflict_is_retried(cluster, kubelet, kubeconfig):
    """Another command (here: `rollout promote` from a second client) writes the state
    ConfigMap while the run holds a stale resourceVersion: the PUT gets 409, the engine
    reloads, adopts the request and saves again."""
    from rollout.platforms.kubernetes.state import ConfigMapStateStore

    rig = _rig(cluster, kubeconfig, "gateway-api", strategy={"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}]})
    ms = rig.engine().start(version("v2"))
    assert ms.rollout.phase is Phase.PAUSED

    other = ConfigMapStateStore(rig.kube)
    engine = rig.engine("promote")
    real_save = rig.store.save
    injected = []

    def save_after_someone_else(state):
        if not injected:  # between our load and our save, another client writes
            fresh = other.load(MODEL)
            fresh.rollout.request, fresh.rollout.requested_by = "promote_full", "a second client"
            other.save(fresh)
            injected.append(True)
        return real_save(state)

    rig.store.save = save_after_someone_else  # type: ignore[method-assign]
    mark = cluster.mark()
    ms = engine.promote()
    conflicts = [r for r in cluster.requests[mark:] if r.verb == "update" and r.resource == "configmaps"]
    assert injected and len(conflicts) >= 3  # the other client's write, our 409, our retry, ...
    assert ms.rollout.phase is Phase.PROMOTED
    assert ms.revision == rig.store.load(MODEL).revision


def test_stale_lease_is_taken_over_and_a_live_one_refused(cluster, kubelet, kubeconfig):
    from rollout.errors import Locked
    from rollout.platforms.kubernetes.state import ConfigMapStateStore

    rig = make_rig(cluster, kubeconfig, make_spec("service"))
    now = [1_000_000.0]
    a = ConfigMapStateStore(rig.kube, lease_duration_s=10, clock=lambda: now[0], renew=False)
    b = ConfigMapStateStore(rig.kube, lease_duration_s=10, clock=lambda: now[0], renew=False)
    held = a.lock(MODEL, "run A")
    held.__enter__()  # run A is killed: it never releases
    with pytest.raises(Locked, match="locked by run A"):
        with b.lock(MODEL, "run B"):
            pass
    now[0] += 11  # past renewTime + leaseDurationSeconds
    with b.lock(MODEL, "run B"):
        lease = cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "run B" and lease["spec"]["leaseTransitions"] == 1
    assert "holderIdentity" not in cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)["spec"]


def test_renewal_keeps_the_lease_and_a_lost_lease_stops_saves(cluster, kubeconfig):
    from rollout.errors import Locked
    from rollout.platforms.kubernetes.state import ConfigMapStateStore

    rig = make_rig(cluster, kubeconfig, make_spec("service"))
    store = ConfigMapStateStore(rig.kube, lease_duration_s=10, renew=False)
    with store.lock(MODEL, "run A"):
        held = store._held[MODEL]
        before = cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)["spec"]["renewTime"]
        held.renew()
        assert cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)["spec"]["renewTime"] >= before
        # someone else takes the lease (e.g. after a long network partition)
        lease = cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)
        lease["spec"]["holderIdentity"] = "run B"
        from tests.kubernetes.fake_apiserver import RESOURCES

        cluster.write(next(r for r in RESOURCES if r.plural == "leases"), NAMESPACE, lease["metadata"]["name"], lease)
        held.renew()
        ms = store.load(MODEL)
        with pytest.raises(Locked, match="run B"):
            store.save(ms)
