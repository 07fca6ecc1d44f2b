"""The Kubernetes platform: one Deployment and Service per model version, a stable
Service, and a router (Service replica ratio, Gateway API HTTPRoute or Istio
VirtualService) that splits traffic between versions.

Apply strategy: server-side apply (field manager ``rollout``, forced). One request per
object whether it exists or not, a no-op when nothing changed (the server keeps
``generation`` and ``resourceVersion``), fields other managers own (an HPA's replicas
aside, annotations added by kubectl or controllers) are kept, fields rollout stops
rendering are removed, and it works the same for custom resources, where strategic
merge does not exist. Before the first write of an object in a process, rollout reads
it once: an object of the same name that rollout did not create (no
``app.kubernetes.io/managed-by: rollout`` label for this model) is never changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rollout.errors import DeployError, PlatformError
from rollout.platforms.base import Capabilities, Health, Router, Traffic
from rollout.platforms.kubernetes.client import DEPLOYMENT, DESTINATION_RULE, POD, POD_MONITOR, SERVICE, Kube, kind_of
from rollout.platforms.kubernetes.render import Renderer, is_ours, stable_name, version_name
from rollout.platforms.kubernetes.routers import CAPABILITIES, GatewayRouter, IstioRouter, ServiceRouter
from rollout.registry.base import ModelVersion
from rollout.spec import KubernetesPlatformSpec, RolloutSpec

log = logging.getLogger("rollout.kubernetes")

# Objects whose rendered body is re-applied only when it changed within this process.
_CACHED_KINDS = (SERVICE.kind, DESTINATION_RULE.kind, POD_MONITOR.kind)


def capabilities_for(spec: KubernetesPlatformSpec) -> Capabilities:
    """What the router can do, known without contacting the cluster (for `rollout lint`)."""
    return CAPABILITIES[spec.router]


def connection(spec: KubernetesPlatformSpec) -> Kube:
    """A client for the spec's cluster. `rollout --context/--namespace` reach here as values
    the CLI folded into the spec (``app.with_cluster``), validated there: no side channel."""
    return Kube.connect(spec.namespace, kubeconfig=spec.kubeconfig, context=spec.context)


class KubernetesPlatform:
    name = "kubernetes"

    def __init__(self, model: str, spec: KubernetesPlatformSpec, kube: Kube,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 storage_uri: Callable[[ModelVersion], str] | None = None) -> None:
        self.model = model
        self.spec = spec
        self.kube = kube
        # The registry's Registry.storage_uri: the URI the storage initializer downloads a version from.
        self.renderer = Renderer(model, spec, namespace=kube.namespace, **({"storage_uri": storage_uri}
                                                                           if storage_uri else {}))
        self._clock, self._sleep = clock, sleep
        self._ours: set[tuple[str, str]] = set()  # (kind, name) confirmed as rollout's in this process
        self._applied: dict[tuple[str, str], dict[str, Any]] = {}
        self._monitor_applied = False
        self.router: Router = self._router()

    @classmethod
    def from_spec(cls, spec: RolloutSpec, storage_uri: Callable[[ModelVersion], str] | None = None
                  ) -> "KubernetesPlatform":
        assert isinstance(spec.platform, KubernetesPlatformSpec)
        return cls(spec.model, spec.platform, connection(spec.platform), storage_uri=storage_uri)

    def _router(self) -> Router:
        return ROUTERS[self.spec.router](self)

    def capabilities(self) -> Capabilities:
        return capabilities_for(self.spec)

    # ------------------------------------------------------------------ applying

    def _guard(self, kind: str, name: str, live: dict[str, Any] | None) -> None:
        if live is not None and not is_ours(live, self.model):
            raise PlatformError(
                f"{kind} {self.kube.namespace}/{name} exists but was not created by rollout for model {self.model!r} "
                "(it lacks the labels app.kubernetes.io/managed-by=rollout and "
                f"app.kubernetes.io/name={self.model}); rollout changes nothing it did not create: rename or remove it")
        self._ours.add((kind, name))

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        key = (kind, name)
        if kind in _CACHED_KINDS and self._applied.get(key) == obj:
            return obj
        if key not in self._ours:
            self._guard(kind, name, self.kube.get(kind_of(obj), name))
        try:
            saved = self.kube.apply(obj)
        except PlatformError as exc:
            if kind == POD_MONITOR.kind and "could not find the requested resource" in str(exc):
                raise PlatformError(f"{exc}; is the Prometheus Operator installed? "
                                    "Otherwise set platform.pod_monitor: false") from None
            raise
        self._applied[key] = obj
        return saved

    # ------------------------------------------------------------------ versions

    def deploy(self, version: ModelVersion, replicas: int = 1) -> None:
        name = version_name(self.model, version.version)
        self._apply(self.renderer.version_service(version))
        saved = self._apply(self.renderer.deployment(version, replicas))
        if self.spec.pod_monitor and not self._monitor_applied:
            self._apply(self.renderer.pod_monitor())
            self._monitor_applied = True
        try:
            self._wait_ready(name, saved)
        except DeployError:
            self._scale_to_zero(name)
            raise

    def _scale(self, version: str, replicas: int, wait: bool) -> None:
        """Change a version's replicas (router service); unknown versions are a no-op."""
        name = version_name(self.model, version)
        if (DEPLOYMENT.kind, name) not in self._ours:
            live = self.kube.get(DEPLOYMENT, name)
            if live is None:
                return
            self._guard(DEPLOYMENT.kind, name, live)
        saved = self.kube.patch(DEPLOYMENT, name, {"spec": {"replicas": replicas}})
        if wait and replicas:
            self._wait_ready(name, saved)

    def _scale_to_zero(self, name: str) -> None:
        try:
            self.kube.patch(DEPLOYMENT, name, {"spec": {"replicas": 0}})
        except PlatformError as exc:  # report the readiness failure, not this one
            log.warning("could not scale %s to 0 after it failed: %s", name, exc)

    def _wait_ready(self, name: str, obj: dict[str, Any]) -> None:
        """Ready means: the controller saw this generation and every replica is ready and
        updated. Watches the Deployment from the version just written."""
        deadline = self._clock() + self.spec.ready_timeout_s
        while not _ready(obj):
            failure = _failed(obj)
            if failure:  # the controller gave up (quota, admission, progress deadline): waiting cannot help
                raise DeployError(f"Deployment {self.kube.namespace}/{name} cannot become ready: {failure}")
            left = deadline - self._clock()
            if left <= 0:
                raise DeployError(self._not_ready(name, obj))
            rv = obj["metadata"].get("resourceVersion")
            seen = False
            for type_, event in self.kube.watch(DEPLOYMENT, name, rv, timeout_s=left):
                seen = True
                if type_ == "DELETED":
                    raise DeployError(f"Deployment {self.kube.namespace}/{name} was deleted while rollout waited for it")
                obj = event
                if _ready(obj) or _failed(obj) or self._clock() >= deadline:
                    break
            if not seen and not _ready(obj):
                fresh = self.kube.get(DEPLOYMENT, name)  # the watch ended without news: re-read, then watch again
                if fresh is None:
                    raise DeployError(f"Deployment {self.kube.namespace}/{name} disappeared while rollout waited for it")
                if fresh == obj and not _ready(fresh):  # nothing moved (e.g. a refused watch): do not spin
                    self._sleep(min(1.0, max(0.0, deadline - self._clock())))
                obj = fresh

    def _not_ready(self, name: str, obj: dict[str, Any]) -> str:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        want = int(spec.get("replicas", 1))
        head = (f"Deployment {self.kube.namespace}/{name} not ready after {self.spec.ready_timeout_s:g}s: "
                f"{int(status.get('readyReplicas') or 0)}/{want} replicas ready")
        gen, observed = obj["metadata"].get("generation"), status.get("observedGeneration")
        if observed is None or gen is None or observed < gen:
            head += f", controller has not observed generation {gen} (observedGeneration {observed})"
        reasons = []
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        try:
            pods = self.kube.list(POD, selector) if selector else []
        except PlatformError:
            pods = []
        for pod in pods[:3]:
            pstatus = pod.get("status") or {}
            for cond in pstatus.get("conditions") or []:
                if cond.get("status") != "True" and cond.get("type") in ("Ready", "PodScheduled", "Initialized"):
                    reasons.append(f"pod {pod['metadata']['name']} condition {cond['type']}=False "
                                   f"({cond.get('reason', '')}: {cond.get('message', '')})".replace(" (: )", ""))
                    break
            for cs in (pstatus.get("initContainerStatuses") or []) + (pstatus.get("containerStatuses") or []):
                waiting = (cs.get("state") or {}).get("waiting")
                if waiting:
                    reasons.append(f"container {cs['name']} waiting: {waiting.get('reason')}"
                                   + (f" ({waiting['message']})" if waiting.get("message") else ""))
        for cond in status.get("conditions") or []:
            bad = cond.get("status") == "True" if cond.get("type") == "ReplicaFailure" else cond.get("status") == "False"
            if bad and (not reasons or cond.get("type") in ("ReplicaFailure", "Progressing")):
                reasons.append(f"condition {cond['type']}={cond.get('status')} ({cond.get('reason')}: "
                               f"{cond.get('message')})")
        return head + ("; " + "; ".join(reasons) if reasons else "; no pods found")

    def retire(self, version: str) -> None:
        """Scale the version to 0; its Deployment and Service stay (cheap, and a later
        rollback re-uses them). Unknown versions and objects not ours are left alone."""
        name = version_name(self.model, version)
        live = self.kube.get(DEPLOYMENT, name)
        if live is None or not is_ours(live, self.model):
            return
        if int((live.get("spec") or {}).get("replicas") or 0) != 0:
            self.kube.patch(DEPLOYMENT, name, {"spec": {"replicas": 0}})

    def health(self, version: str) -> Health:
        live = self.kube.get(DEPLOYMENT, version_name(self.model, version))
        if live is None:
            return Health(version, False, "not deployed")
        status = live.get("status") or {}
        detail = f"{int(status.get('readyReplicas') or 0)}/{int(live['spec'].get('replicas', 1))} replicas ready"
        return Health(version, _ready(live) and int(live["spec"].get("replicas", 1)) > 0, detail)

    def running_versions(self) -> list[str]:
        deps = self.kube.list(DEPLOYMENT, {"app.kubernetes.io/name": self.model, "app.kubernetes.io/managed-by": "rollout"})
        return sorted(d["metadata"]["labels"]["app.kubernetes.io/version"] for d in deps
                      if int((d.get("spec") or {}).get("replicas") or 0) > 0)

    # ------------------------------------------------------------------ traffic

    def set_traffic(self, traffic: Traffic) -> None:
        self.router.set(traffic)

    def get_traffic(self) -> Traffic | None:
        return self.router.read()

    def router_health(self) -> Health:
        """The routing objects can be read (the cluster keeps them serving; a deleted or
        unreadable route is repaired by setting the recorded split again)."""
        try:
            traffic = self.router.read()
        except PlatformError as exc:
            return Health("router", False, str(exc))
        return Health("router", True, "routing objects present" if traffic is not None else "nothing routed yet")

    def endpoint(self) -> str | None:
        if self.kube.get(SERVICE, stable_name(self.model)) is None:
            return None
        if self.spec.router == "gateway-api" and self.spec.hosts:
            return f"http://{self.spec.hosts[0]}"
        return f"http://{self.renderer.stable_host}:8080"

    def preview_endpoint(self) -> str | None:
        traffic = self.router.read()
        if traffic is None or traffic.candidate is None:
            return None
        return f"http://{version_name(self.model, traffic.candidate)}.{self.kube.namespace}.svc.cluster.local:8080"


def _failed(obj: dict[str, Any]) -> str | None:
    """Why the Deployment controller says this generation will not come up, or None:
    ReplicaFailure=True (e.g. FailedCreate: quota, admission) or Progressing=False with
    ProgressDeadlineExceeded, for the generation it observed."""
    status = obj.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(obj["metadata"].get("generation") or 0):
        return None  # conditions of an older generation
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return f"ReplicaFailure ({cond.get('reason')}): {cond.get('message')}"
        if cond.get("type") == "Progressing" and cond.get("status") == "False" \
                and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"Progressing=False (ProgressDeadlineExceeded): {cond.get('message')}"
    return None


def _ready(obj: dict[str, Any]) -> bool:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    gen = obj["metadata"].get("generation")
    if gen is None or int(status.get("observedGeneration") or 0) < int(gen):
        return False
    if want == 0:
        return True
    # as `kubectl rollout status`: every replica updated and available, and no old one left
    return (int(status.get("readyReplicas") or 0) >= want and int(status.get("updatedReplicas") or 0) >= want
            and int(status.get("unavailableReplicas") or 0) == 0 and int(status.get("replicas") or 0) <= want)


# platform.router -> the Router that applies a split with it. A new router is a module in
# routers.py, a line here and in routers.CAPABILITIES, and its name in the spec.
ROUTERS: dict[str, Callable[[KubernetesPlatform], Router]] = {
    "service": lambda p: ServiceRouter(p.kube, p.renderer, p._apply, p._scale, p.spec.replicas),
    "gateway-api": lambda p: GatewayRouter(p.kube, p.renderer, p._apply),
    "istio": lambda p: IstioRouter(p.kube, p.renderer, p._apply),
}
