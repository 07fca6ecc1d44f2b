"""Preflight: before anything moves, ask the cluster whether the spec can work there.

- Permissions: every (verb, resource) the spec's router needs (rbac.PERMISSIONS) is
  asked with a SelfSubjectAccessReview, which any authenticated identity may create;
  each one refused is named.
- CRDs: the kinds the router and the PodMonitor need are installed, in the version
  rollout uses, and with the fields the strategy uses: a shadow on gateway-api needs
  HTTPRoute RequestMirror ``percent`` (Gateway API v1.3.0 standard channel, v1.2
  experimental). Reading CRDs is cluster-scoped: it needs the optional ClusterRole in
  manifests/rbac/preflight.yaml; without it the CRD check is skipped and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollout.platforms.kubernetes import rbac
from rollout.platforms.kubernetes.client import CRD, Forbidden, Kube
from rollout.spec import KubernetesPlatformSpec


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # what will fail
    notes: list[str] = field(default_factory=list)  # what could not be checked


def _needed_crds(spec: KubernetesPlatformSpec) -> list[tuple[str, str]]:
    """(CRD name, version rollout uses)."""
    out = []
    if spec.router == "gateway-api":
        out.append(("httproutes.gateway.networking.k8s.io", "v1"))
    if spec.router == "istio":
        out += [("virtualservices.networking.istio.io", "v1beta1"), ("destinationrules.networking.istio.io", "v1beta1")]
    if spec.pod_monitor:
        out.append(("podmonitors.monitoring.coreos.com", "v1"))
    return out


def _has_mirror_percent(version: dict[str, Any]) -> bool:
    schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    try:
        rules = schema["properties"]["spec"]["properties"]["rules"]["items"]
        mirror = rules["properties"]["filters"]["items"]["properties"]["requestMirror"]
        return "percent" in mirror["properties"]
    except (KeyError, TypeError):
        return False


def check(kube: Kube, spec: KubernetesPlatformSpec, mirror: bool) -> Report:
    report = Report()
    for verb, group, resource in rbac.needed(spec.router, spec.pod_monitor):
        review = kube.create({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                              "metadata": {}, "spec": {"resourceAttributes": {
                                  "namespace": kube.namespace, "verb": verb, "group": group, "resource": resource}}})
        if not (review.get("status") or {}).get("allowed"):
            report.problems.append(f"permission: cannot {verb} {resource}{'.' + group if group else ''} in namespace "
                                   f"{kube.namespace!r} (apply the Role in manifests/rbac/rbac.yaml and bind it)")
    for name, version in _needed_crds(spec):
        try:
            crd = kube.get(CRD, name)
        except Forbidden:
            report.notes.append(f"CRD {name} not checked: this identity may not read CRDs "
                                "(optional: manifests/rbac/preflight.yaml)")
            continue
        if crd is None:
            report.problems.append(f"CRD {name} is not installed (router {spec.router!r} needs it)")
            continue
        served = {v["name"]: v for v in crd["spec"].get("versions") or [] if v.get("served")}
        if version not in served:
            report.problems.append(f"CRD {name} does not serve {version} (served: {', '.join(served) or 'none'})")
            continue
        if mirror and name.startswith("httproutes.") and not _has_mirror_percent(served[version]):
            bundle = (crd["metadata"].get("annotations") or {}).get("gateway.networking.k8s.io/bundle-version", "?")
            report.problems.append(f"CRD {name} (Gateway API {bundle}) has no RequestMirror percent, which a shadow "
                                   "or mirror step needs: install Gateway API v1.3.0 or later")
    return report
