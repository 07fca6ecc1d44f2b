"""Building blocks for the Kubernetes tests: specs, a metric provider whose values the
test sets, an engine wired to the fake cluster, and an independent reading of the
split straight from the raw objects (not through the router under test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.analysis.base import Measurement, QueryContext
from rollout.clock import VirtualClock
from rollout.engine import Engine, Services
from rollout.platforms.kubernetes.client import Kube
from rollout.platforms.kubernetes.platform import KubernetesPlatform
from rollout.platforms.kubernetes.render import version_name
from rollout.platforms.kubernetes.state import ConfigMapStateStore
from rollout.registry.base import ModelVersion
from rollout.spec import RolloutSpec, parse_spec
from rollout.state import Event, ModelState
from tests.kubernetes.fake_apiserver import FakeCluster

MODEL = "fraud"
NAMESPACE = "models"


def make_spec(router: str, strategy: dict[str, Any] | None = None, **platform: Any) -> RolloutSpec:
    plat: dict[str, Any] = {"type": "kubernetes", "namespace": NAMESPACE, "router": router, "replicas": 4,
                            "ready_timeout_s": 5}
    if router == "gateway-api":
        plat["gateway"] = {"name": "public", "namespace": "gateways"}
        plat["hosts"] = ["fraud.example.com"]
    plat.update(platform)
    return parse_spec({
        "model": MODEL,
        "registry": {"type": "git", "url": "/nonexistent"},
        "platform": plat,
        "strategy": strategy or {"type": "canary", "weights": [20, 50], "scale_down_delay_s": 0},
        "analysis": {"interval_s": 1, "duration_s": 2, "metrics": [
            {"name": "error-rate", "provider": "knob", "query": "error_rate", "judge": {"type": "threshold", "max": 0.05}},
        ]},
    })


def version(v: str) -> ModelVersion:
    return ModelVersion(name=MODEL, version=v, uri=f"s3://models/{MODEL}/{v}", runtime="sklearn")


@dataclass
class Knob:
    """A metric provider that answers whatever the test set for a version (default 0)."""

    name: str = "knob"
    values: dict[str, float] = field(default_factory=dict)

    def query(self, query: str, ctx: QueryContext) -> Measurement:
        return Measurement.of(self.values.get(ctx.version, 0.0))


@dataclass
class Rig:
    spec: RolloutSpec
    kube: Kube
    platform: KubernetesPlatform
    store: ConfigMapStateStore
    knob: Knob
    cluster: FakeCluster
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (step message, observed split)

    def engine(self, command: str = "start") -> Engine:
        services = Services(store=self.store, platform=self.platform, providers={"knob": self.knob},
                            clock=VirtualClock(), listeners=[self._on_event], poll_s=0.01)
        return Engine(self.spec, services, command=command)

    def _on_event(self, event: Event, ms: ModelState) -> None:
        if event.kind == "step_done":
            self.steps.append((event.message, observed_split(self.cluster, self.spec.platform.router)))


def make_rig(cluster: FakeCluster, kubeconfig: Path, spec: RolloutSpec) -> Rig:
    kube = Kube.connect(NAMESPACE, kubeconfig=str(kubeconfig))
    platform = KubernetesPlatform(MODEL, spec.platform, kube)
    store = ConfigMapStateStore(kube, lease_duration_s=spec.platform.lease_duration_s)
    return Rig(spec, kube, platform, store, Knob(), cluster)


def replicas(cluster: FakeCluster, v: str) -> int | None:
    dep = cluster.find("deployments", version_name(MODEL, v), NAMESPACE)
    return None if dep is None else dep["spec"]["replicas"]


def observed_split(cluster: FakeCluster, router: str) -> dict[str, Any]:
    """The split as the raw objects say: {service-or-subset: weight, 'mirror': (name, pct)}."""
    if router == "gateway-api":
        route = cluster.find("httproutes", MODEL, NAMESPACE)
        if route is None:
            return {}
        rule = route["spec"]["rules"][0]
        out: dict[str, Any] = {b["name"]: b["weight"] for b in rule["backendRefs"]}
        for f in rule.get("filters") or []:
            if f["type"] == "RequestMirror":
                out["mirror"] = (f["requestMirror"]["backendRef"]["name"], f["requestMirror"]["percent"])
        return out
    if router == "istio":
        vs = cluster.find("virtualservices", MODEL, NAMESPACE)
        if vs is None:
            return {}
        http = vs["spec"]["http"][0]
        out = {d["destination"]["subset"]: d["weight"] for d in http["route"]}
        if "mirror" in http:
            out["mirror"] = (http["mirror"]["subset"], http["mirrorPercentage"]["value"])
        return out
    svc = cluster.find("services", MODEL, NAMESPACE)
    if svc is None:
        return {}
    selected = svc["spec"]["selector"].get("app.kubernetes.io/version")
    deps = [d for d in cluster.all("deployments", NAMESPACE) if d["spec"]["replicas"]]
    if selected:
        return {"selector": selected}
    return {"selector": "*", **{d["metadata"]["labels"]["app.kubernetes.io/version"]: d["spec"]["replicas"] for d in deps}}
