"""What a real API server does that the happy path never shows: watches that end with
410 Gone, 504 "Too large resource version" or a cut stream (rollout re-reads and
carries on), a rolling update that is not done while old pods still serve, a
Deployment whose pods cannot be created (ReplicaFailure, reported at once), and names
that are not DNS-1123 (refused before any URL is built)."""

from __future__ import annotations

import pytest

from rollout.errors import BadInput, DeployError
from rollout.platforms.kubernetes.client import DEPLOYMENT, Kube
from rollout.platforms.kubernetes.render import version_name
from rollout.state import Phase
from tests.kubernetes.helpers import MODEL, NAMESPACE, make_rig, make_spec, version

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("fault", ["410", "504", "cut"])
def test_a_failing_watch_is_re_read_and_the_deployment_still_becomes_ready(fault, cluster, kubelet, kubeconfig):
    rig = make_rig(cluster, kubeconfig, make_spec("gateway-api"))
    kubelet.stop()  # hold readiness back so rollout has to watch
    cluster.watch_faults += [fault, fault]
    import threading

    restarted = []

    def late_kubelet():
        # Readiness comes only once rollout has met both watch faults (whenever that is on
        # a loaded machine), so it must have re-read after each one to see the pods ready.
        import time

        from tests.kubernetes.fake_apiserver import FakeKubelet

        deadline = time.monotonic() + 60
        while cluster.watch_faults and time.monotonic() < deadline:
            time.sleep(0.05)
        restarted.append(FakeKubelet(cluster, delay_s=0.02).start())

    timer = threading.Thread(target=late_kubelet, daemon=True)
    timer.start()
    try:
        rig.platform.deploy(version("v1"), replicas=2)
    finally:
        timer.join(70)
        for k in restarted:
            k.stop()
    assert cluster.watch_faults == []  # both faults were met, and survived
    dep = cluster.find("deployments", version_name(MODEL, "v1"), NAMESPACE)
    assert dep["status"]["readyReplicas"] == 2


def test_replica_failure_is_reported_at_once_with_the_controllers_reason(cluster, kubelet, kubeconfig):
    rig = make_rig(cluster, kubeconfig, make_spec("gateway-api", ready_timeout_s=60))
    rig.engine().start(version("v1"))
    quota = 'pods "fraud-v2-abc" is forbidden: exceeded quota: compute, requested: cpu=1, limited: cpu=4'
    kubelet.fail_create[version_name(MODEL, "v2")] = quota
    ms = rig.engine().start(version("v2"))
    assert ms.rollout.phase is Phase.FAILED
    assert "cannot become ready: ReplicaFailure (FailedCreate)" in ms.rollout.reason and "exceeded quota" in ms.rollout.reason
    assert ms.stable.version == "v1"


def test_a_rolling_update_is_not_ready_until_every_pod_runs_the_new_template(cluster, kubelet, kubeconfig):
    rig = make_rig(cluster, kubeconfig, make_spec("service", replicas=3))
    rig.platform.deploy(version("v1"), replicas=3)
    mark = cluster.mark()
    changed = make_rig(cluster, kubeconfig, make_spec("service", replicas=3, image="seldonio/mlserver:1.7.0"))
    changed.platform.deploy(version("v1"), replicas=3)
    dep = cluster.find("deployments", version_name(MODEL, "v1"), NAMESPACE)
    assert dep["status"]["updatedReplicas"] == 3 and "unavailableReplicas" not in dep["status"]
    pods = cluster.all("pods", NAMESPACE)
    assert len(pods) == 3 and {p["spec"]["containers"][0]["image"] for p in pods} == {"seldonio/mlserver:1.7.0"}
    assert cluster.counts(mark)["watch deployments"] >= 1  # it waited through the roll, not on a stale ready


def test_a_mid_rollout_status_is_not_ready() -> None:
    from rollout.platforms.kubernetes.platform import _ready

    mid = {"metadata": {"generation": 2}, "spec": {"replicas": 3},
           "status": {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "readyReplicas": 4,
                      "unavailableReplicas": 2}}
    assert not _ready(mid)


@pytest.mark.parametrize("namespace", ["Models", "models/../kube-system", "a" * 64, "-x", ""])
def test_a_namespace_that_is_not_dns_1123_is_refused_before_any_request(namespace, cluster, kubeconfig):
    mark = cluster.mark()
    with pytest.raises(BadInput, match="is not a DNS-1123 label"):
        Kube.connect(namespace, kubeconfig=str(kubeconfig))
    assert cluster.counts(mark) == {}


def test_an_object_name_that_is_not_dns_1123_is_refused_before_any_request(cluster, kubeconfig):
    kube = Kube.connect(NAMESPACE, kubeconfig=str(kubeconfig))
    mark = cluster.mark()
    with pytest.raises(BadInput, match="not a DNS-1123 subdomain"):
        kube.get(DEPLOYMENT, "../../secrets/x")
    assert cluster.counts(mark) == {}


def test_the_fake_server_refuses_bad_names_and_labels_like_a_real_one(cluster, kubeconfig):
    from rollout.errors import PlatformError

    kube = Kube.connect(NAMESPACE, kubeconfig=str(kubeconfig))
    with pytest.raises(PlatformError, match="must have at most 63|valid label"):
        kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "ok", "labels": {"app.kubernetes.io/version": "x" * 64}}})
    with pytest.raises(PlatformError, match="DNS-1035|RFC 1123"):
        kube.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1abc"},
                     "spec": {"ports": [{"port": 80}]}})


def test_deploy_error_names_the_failure_not_a_timeout(cluster, kubelet, kubeconfig):
    rig = make_rig(cluster, kubeconfig, make_spec("service", ready_timeout_s=60))
    kubelet.fail_create[version_name(MODEL, "v1")] = "admission webhook denied the request"
    with pytest.raises(DeployError, match="admission webhook denied"):
        rig.platform.deploy(version("v1"), replicas=1)
