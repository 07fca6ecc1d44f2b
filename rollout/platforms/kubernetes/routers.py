"""Traffic routers: apply a split, read it back, and check the two agree.

Flagger's shape: each router applies its objects for a ``Traffic`` and reads the split
back from the cluster. ``set`` verifies what it wrote by reading it again and raises
PlatformError if the cluster disagrees (a webhook, another controller or a person
changed it). The routers never touch Deployments except ``service``, whose weights
*are* replica counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rollout.errors import PlatformError, Unsupported
from rollout.platforms.base import Capabilities, Traffic
from rollout.platforms.kubernetes.client import DEPLOYMENT, HTTPROUTE, SERVICE, VIRTUAL_SERVICE, Kube
from rollout.platforms.kubernetes.render import (
    CANDIDATE_ANNOTATION,
    STABLE_ANNOTATION,
    Renderer,
    _service_selects,
    split_replicas,
    stable_name,
    subset_name,
    version_name,
)

log = logging.getLogger("rollout.kubernetes")

CAPABILITIES = {
    "service": Capabilities(mirror=False, preview=True, exact_weights=False),
    "gateway-api": Capabilities(mirror=True, preview=True, exact_weights=True),
    "istio": Capabilities(mirror=True, preview=True, exact_weights=True),
}

Apply = Callable[[dict[str, Any]], dict[str, Any]]
Scale = Callable[[str, int, bool], None]  # (version, replicas, wait until ready)


def _annotated(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    ann = obj["metadata"].get("annotations") or {}
    return ann.get(STABLE_ANNOTATION) or None, ann.get(CANDIDATE_ANNOTATION) or None


def _check(expected: Traffic, observed: Traffic | None, what: str) -> None:
    if observed != expected:
        raise PlatformError(f"{what} does not hold the split rollout just applied: expected {_show(expected)}, "
                            f"read back {_show(observed) if observed else 'nothing'}; something else changes it")


def _show(t: Traffic) -> str:
    return (f"{t.stable}={100 - t.weight if t.candidate else 100}%"
            + (f", {t.candidate}={t.weight}%" if t.candidate else "") + (f", mirror {t.mirror}%" if t.mirror else ""))


class ServiceRouter:
    """One Service over the model's pods; a split is a replica ratio. While split, the
    Service selects every version of the model, so other running versions (an old stable
    kept for rollback, an aborted candidate kept for inspection) are scaled to 0 first."""

    capabilities = CAPABILITIES["service"]

    def __init__(self, kube: Kube, renderer: Renderer, apply: Apply, scale: Scale, replicas: int) -> None:
        self.kube, self.r, self.apply, self.scale, self.replicas = kube, renderer, apply, scale, replicas

    def set(self, traffic: Traffic) -> None:
        if traffic.mirror:
            raise Unsupported(f"router 'service' cannot mirror traffic (asked for {traffic.mirror}%); "
                              "use router gateway-api or istio")
        selects = _service_selects(traffic)
        if selects is None:  # a split: replica ratio
            assert traffic.stable and traffic.candidate
            stable_n, cand_n = split_replicas(self.replicas, traffic.weight)
            self.scale(traffic.candidate, cand_n, True)  # capacity first, then less of the old
            self.scale(traffic.stable, stable_n, True)
            for version in self._running():
                if version not in (traffic.stable, traffic.candidate):
                    log.info("scaling %s to 0: the Service would send it traffic during the split", version)
                    self.scale(version, 0, False)
        else:
            self.scale(selects, self.replicas, True)
        obj = self.r.stable_service(selects)
        obj["metadata"].setdefault("annotations", {}).update(
            {STABLE_ANNOTATION: traffic.stable or "", CANDIDATE_ANNOTATION: traffic.candidate or ""})
        self.apply(obj)
        _check(self._expected(traffic), self.read(), f"Service {self.kube.namespace}/{stable_name(self.r.model)}")

    def _expected(self, traffic: Traffic) -> Traffic:
        if _service_selects(traffic) is None:
            assert traffic.candidate
            s, c = split_replicas(self.replicas, traffic.weight)
            return Traffic(traffic.stable, traffic.candidate, round(100 * c / (s + c)))
        return traffic

    def _running(self) -> dict[str, int]:
        out = {}
        for d in self.kube.list(DEPLOYMENT, {"app.kubernetes.io/name": self.r.model,
                                             "app.kubernetes.io/managed-by": "rollout"}):
            replicas = int((d.get("spec") or {}).get("replicas") or 0)
            if replicas:
                out[d["metadata"]["labels"]["app.kubernetes.io/version"]] = replicas
        return out

    def read(self) -> Traffic | None:
        svc = self.kube.get(SERVICE, stable_name(self.r.model))
        if svc is None:
            return None
        stable, candidate = _annotated(svc)
        selected = (svc.get("spec") or {}).get("selector", {}).get("app.kubernetes.io/version")
        if selected is not None:
            if candidate and selected == candidate:
                return Traffic(stable, candidate, 100)
            return Traffic(stable, candidate, 0) if candidate else Traffic(selected)
        running = self._running()
        s, c = running.get(stable or "", 0), running.get(candidate or "", 0)
        return Traffic(stable, candidate, round(100 * c / (s + c)) if s + c else 0)


class GatewayRouter:
    """Gateway API: the HTTPRoute's first rule weights per-version Services, and a
    RequestMirror filter (with percent) copies traffic to the candidate."""

    capabilities = CAPABILITIES["gateway-api"]

    def __init__(self, kube: Kube, renderer: Renderer, apply: Apply) -> None:
        self.kube, self.r, self.apply = kube, renderer, apply

    def set(self, traffic: Traffic) -> None:
        service, route = self.r.routing(traffic)
        self.apply(service)
        self.apply(route)
        _check(traffic, self.read(), f"HTTPRoute {self.kube.namespace}/{route['metadata']['name']}")

    def read(self) -> Traffic | None:
        route = self.kube.get(HTTPROUTE, stable_name(self.r.model))
        if route is None:
            return None
        _refuse_rejected(route)
        stable, candidate = _annotated(route)
        rule = ((route.get("spec") or {}).get("rules") or [{}])[0]
        weights = {b.get("name"): int(b.get("weight", 1)) for b in rule.get("backendRefs") or []}
        total = sum(weights.values())
        cand_w = weights.get(version_name(self.r.model, candidate), 0) if candidate else 0
        mirror = 0
        for f in rule.get("filters") or []:
            if f.get("type") == "RequestMirror" and candidate and \
                    f["requestMirror"]["backendRef"]["name"] == version_name(self.r.model, candidate):
                mirror = int(f["requestMirror"].get("percent", 100))
        if stable and version_name(self.r.model, stable) not in weights:
            raise PlatformError(f"HTTPRoute {stable_name(self.r.model)} has no backend for stable {stable}")
        return Traffic(stable, candidate, round(100 * cand_w / total) if total else 0, mirror)


def _refuse_rejected(route: dict[str, Any]) -> None:
    for parent in (route.get("status") or {}).get("parents") or []:
        for cond in parent.get("conditions") or []:
            if cond.get("type") == "Accepted" and cond.get("status") == "False":
                raise PlatformError(f"HTTPRoute {route['metadata']['name']} is not accepted by "
                                    f"{parent.get('parentRef', {}).get('name')}: {cond.get('reason')}: "
                                    f"{cond.get('message', '')}")


class IstioRouter:
    """Istio: DestinationRule subsets per version (applied first, so a route never names
    a missing subset), then the VirtualService's weights, mirror and mirrorPercentage."""

    capabilities = CAPABILITIES["istio"]

    def __init__(self, kube: Kube, renderer: Renderer, apply: Apply) -> None:
        self.kube, self.r, self.apply = kube, renderer, apply

    def set(self, traffic: Traffic) -> None:
        service, rule, vs = self.r.routing(traffic)
        self.apply(service)
        # Subsets: a route must never name a missing subset, so the DestinationRule first
        # gets the union of the live route's versions and the new ones, and loses the
        # old ones only after the VirtualService stopped using them.
        live = self.read()
        wanted = [v for v in (traffic.stable, traffic.candidate) if v]
        union = wanted + [v for v in ((live.stable, live.candidate) if live else ()) if v and v not in wanted]
        self.apply(self.r.destination_rule(union))
        self.apply(vs)
        if union != wanted:
            self.apply(rule)
        _check(traffic, self.read(), f"VirtualService {self.kube.namespace}/{vs['metadata']['name']}")

    def read(self) -> Traffic | None:
        vs = self.kube.get(VIRTUAL_SERVICE, stable_name(self.r.model))
        if vs is None:
            return None
        stable, candidate = _annotated(vs)
        http = ((vs.get("spec") or {}).get("http") or [{}])[0]
        weights = {d["destination"].get("subset"): int(d.get("weight", 100)) for d in http.get("route") or []}
        total = sum(weights.values())
        cand_w = weights.get(subset_name(candidate), 0) if candidate else 0
        mirror = 0
        if candidate and (http.get("mirror") or {}).get("subset") == subset_name(candidate):
            mirror = round(float((http.get("mirrorPercentage") or {}).get("value", 100)))
        return Traffic(stable, candidate, round(100 * cand_w / total) if total else 0, mirror)
