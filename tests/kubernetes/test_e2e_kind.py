"""End-to-end on a real cluster (the kind workflow in .github/workflows/e2e-kind.yml).
Skipped unless ROLLOUT_E2E_KUBECONFIG points at a kubeconfig; the cluster needs the
Gateway API CRDs (standard channel) and the Prometheus Operator CRDs.

The workflow runs these with the shipped templates (MLServer) and the model store of
tests/kubernetes/e2e/cluster.yaml (ROLLOUT_E2E_MODEL_URI); its CLI step is the part that
measures real traffic through a Gateway with Prometheus."""

from __future__ import annotations

import os
import uuid

import pytest

from rollout.clock import VirtualClock
from rollout.engine import Engine, Services
from rollout.platforms.kubernetes.client import Kube
from rollout.platforms.kubernetes.platform import KubernetesPlatform
from rollout.platforms.kubernetes.state import ConfigMapStateStore
from rollout.registry.base import ModelVersion
from rollout.spec import parse_spec
from rollout.state import Phase
from tests.kubernetes.helpers import Knob

KUBECONFIG = os.environ.get("ROLLOUT_E2E_KUBECONFIG")
pytestmark = [pytest.mark.kind, pytest.mark.skipif(not KUBECONFIG, reason="ROLLOUT_E2E_KUBECONFIG is not set")]

TEMPLATES = os.environ.get("ROLLOUT_E2E_TEMPLATES")  # templates with a lightweight server image


@pytest.fixture
def namespace():
    from kubernetes import client, config

    name = f"rollout-e2e-{uuid.uuid4().hex[:6]}"
    api = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
    api.create_namespace({"metadata": {"name": name}})
    yield name
    api.delete_namespace(name)


@pytest.mark.parametrize("router", ["service", "gateway-api"])
def test_canary_on_a_real_cluster(router, namespace):
    plat = {"type": "kubernetes", "namespace": namespace, "router": router, "replicas": 2,
            "kubeconfig": KUBECONFIG, "ready_timeout_s": 240, "pod_monitor": True}
    if router == "gateway-api":
        plat["gateway"] = {"name": "e2e", "namespace": namespace}
    if TEMPLATES:
        plat["templates"] = TEMPLATES
    if os.environ.get("ROLLOUT_E2E_IMAGE"):
        plat["image"] = os.environ["ROLLOUT_E2E_IMAGE"]
    spec = parse_spec({
        "model": "iris", "registry": {"type": "git", "url": "/unused"}, "platform": plat,
        "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0},
        "analysis": {"interval_s": 1, "duration_s": 2, "metrics": [
            {"name": "err", "provider": "knob", "query": "x", "judge": {"type": "threshold", "max": 0.1}}]},
    })
    uri = os.environ.get("ROLLOUT_E2E_MODEL_URI", "https://example.com/model.joblib")
    kube = Kube.connect(namespace, kubeconfig=KUBECONFIG)
    platform = KubernetesPlatform("iris", spec.platform, kube)
    store = ConfigMapStateStore(kube)
    services = Services(store=store, platform=platform, providers={"knob": Knob()}, clock=VirtualClock(), poll_s=0.01)
    for v in ("v1", "v2"):
        ms = Engine(spec, services).start(ModelVersion("iris", v, uri=uri))
        assert ms.rollout.phase is Phase.PROMOTED, ms.rollout.reason
    assert platform.running_versions() == ["v2"]
    from rollout.platforms.base import Traffic

    assert platform.get_traffic() == Traffic(stable="v2")  # promoted: v2 is the stable route, no candidate
