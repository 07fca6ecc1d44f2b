"""`rollout controller --platform kubernetes`: one controller leads per namespace, chosen
by a ``coordination.k8s.io/v1`` Lease (``rollout-controller``). The leader renews it every
third of its duration; a replica that finds it unrenewed for a whole duration takes it
over (a killed leader releases nothing). Reconciling reuses rollout/controller/local.py: one
timer queue over the namespace's models, each reconciled under its own Lease lock."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rollout.controller.local import Controller, serve_http
from rollout.engine.services import Services
from rollout.errors import Conflict, RolloutError
from rollout.platforms.kubernetes.client import LEASE, Kube
from rollout.platforms.kubernetes.controller_manifests import LEADER_LEASE
from rollout.state import CONTROLLER_COMMAND, ModelState, holder_identity

log = logging.getLogger("rollout.controller")



def _micro(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class LeaseElector:
    """Acquire-or-renew on one Lease with compare-and-swap on its resourceVersion."""

    def __init__(self, kube: Kube, identity: str, name: str = LEADER_LEASE, duration_s: float = 15.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.kube, self.identity, self.name = kube, identity, name
        self.duration_s = duration_s
        self.clock = clock

    def _body(self, acquired: float, transitions: int, resource_version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "rollout",
                                                                  "app.kubernetes.io/component": "controller"}}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.duration_s)),
                         "acquireTime": _micro(acquired), "renewTime": _micro(self.clock()),
                         "leaseTransitions": transitions}}

    def holder(self) -> str | None:
        live = self.kube.get(LEASE, self.name)
        return ((live or {}).get("spec") or {}).get("holderIdentity")

    def try_lead(self) -> bool:
        """True if this replica leads now (acquired, renewed or taken over)."""
        live = self.kube.get(LEASE, self.name)
        try:
            if live is None:
                self.kube.create(self._body(self.clock(), 0))
                return True
            spec = live.get("spec") or {}
            rv = live["metadata"].get("resourceVersion")
            transitions = int(spec.get("leaseTransitions") or 0)
            if spec.get("holderIdentity") == self.identity:
                acquired = _parse(spec.get("acquireTime")) or self.clock()
                self.kube.replace(self._body(acquired, transitions, rv))
                return True
            renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
            duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
            if renewed is not None and renewed + duration >= self.clock():
                return False
            log.warning("taking over the controller lease from %s (not renewed for %ss)", spec.get("holderIdentity"),
                        duration)
            self.kube.replace(self._body(self.clock(), transitions + 1, rv))
            return True
        except Conflict:  # another replica wrote between our read and write
            return False


def kubernetes_services(context: str | None, namespace: str,
                        kubeconfig: str | None = None) -> Callable[[str, ModelState], Services]:
    """A model's services from the spec its rollout started with, connected the way the
    controller is: its namespace, context and kubeconfig win over the stored spec's (a
    kubeconfig path from the CI runner that started the rollout means nothing in the
    controller's pod, which uses its service account when it has no kubeconfig)."""
    from rollout import app as wiring
    from rollout.gates import WebhookCaller
    from rollout.spec import parse_spec

    def build(model: str, ms: ModelState) -> Services:
        last = ms.rollout or (ms.history[0] if ms.history else None)
        if last is None:
            raise RolloutError(f"model {model!r} has no rollout state to reconcile")
        spec = wiring.with_cluster(parse_spec(last.spec, source=f"the stored spec of {model}"), context, namespace)
        spec = spec.model_copy(update={"platform": spec.platform.model_copy(
            update={"kubeconfig": kubeconfig, "context": context})})
        platform = wiring.make_platform(spec, Path("."))
        return Services(store=wiring.make_store(spec, Path(".")), platform=platform,
                        providers=wiring.make_providers(spec, platform), gate=WebhookCaller(platform))

    return build


def run_kubernetes_controller(namespace: str, kubeconfig: str | None = None, context: str | None = None,
                              port: int = 9464, lease_duration_s: float = 15.0, address: str = "127.0.0.1",
                              echo: Callable[[str], None] = print, stop: threading.Event | None = None) -> int:
    """Lead (or stand by) for ``namespace`` and reconcile its models until stopped."""
    from rollout.clock import SystemClock
    from rollout.platforms.kubernetes.state import ConfigMapStateStore

    stop = stop or threading.Event()
    identity = holder_identity(CONTROLLER_COMMAND)
    kube = Kube.connect(namespace, kubeconfig=kubeconfig, context=context)
    store = ConfigMapStateStore(kube, lease_duration_s=lease_duration_s)
    elector = LeaseElector(kube, identity, duration_s=lease_duration_s)
    controller = Controller(store, kubernetes_services(context, namespace, kubeconfig), SystemClock(), holder=identity)
    server, bound = serve_http(controller, port, address)
    echo(f"controller for namespace {namespace}: /metrics and /healthz on http://{address}:{bound}")
    try:
        lead_and_reconcile(controller, elector, namespace, stop, lease_duration_s, echo)
        return 0
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def lead_and_reconcile(controller: Controller, elector: LeaseElector, namespace: str, stop: threading.Event,
                       lease_duration_s: float, echo: Callable[[str], None] = print) -> None:
    """The replica's loop until ``stop``: renew (or try to take) the leader Lease every third
    of its duration; while leading, reconcile what is due from the one timer queue."""
    renew_every = max(lease_duration_s / 3, 0.2)
    leading: bool | None = None  # unknown: the first answer is always said
    while not stop.is_set():
        try:
            now_leading = elector.try_lead()
        except RolloutError as exc:  # the API server is unreachable: stop acting, keep trying
            echo(f"cannot renew the controller lease: {exc}")
            now_leading = False
        if now_leading != leading:
            echo(f"{'leading' if now_leading else 'standing by'} for namespace {namespace}"
                 + ("" if now_leading else f" (leader: {elector.holder()})"))
            leading = now_leading
            if leading:
                controller.scan()
        deadline = time.time() + renew_every
        while leading and not stop.is_set() and time.time() < deadline:
            controller.run_due()
            stop.wait(max(0.0, min(controller.next_wake(), deadline) - time.time()))
        if not leading:
            stop.wait(renew_every)
