"""The permissions rollout's Kubernetes code needs, declared once next to the calls, and
the Role rendered from them (``manifests/rbac/rbac.yaml``).

Why a table and not a hand-written Role: a Role written by hand drifted from the code
(server-side apply that *creates* an object is authorised as ``create`` as well as
``patch``; the first ``rollout start`` of every model got 403). Here every verb on every
resource is listed with the calls that need it; the Role file is generated from this
table (``python -m rollout.platforms.kubernetes.rbac > manifests/rbac/rbac.yaml``), a
test checks the file equals the rendering, and a test runs every command on every
router against an API server that authorises with exactly that file, and checks every
rule it grants was used.

The preflight (``rollout lint --cluster``) asks the cluster about the same table with
SelfSubjectAccessReview, so a missing permission is named before anything moves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import yaml

from rollout.platforms.kubernetes.client import (
    CONFIGMAP,
    DEPLOYMENT,
    DESTINATION_RULE,
    HTTPROUTE,
    LEASE,
    POD,
    POD_MONITOR,
    SERVICE,
    VIRTUAL_SERVICE,
    Kind,
)

ALL_ROUTERS = frozenset({"service", "gateway-api", "istio"})


@dataclass(frozen=True)
class Permission:
    """Verbs on one resource, the calls that need them, and when they are needed."""

    kind: Kind
    verbs: tuple[str, ...]
    why: str
    routers: frozenset[str] = ALL_ROUTERS
    pod_monitor_only: bool = False

    @property
    def group(self) -> str:
        return self.kind.api_version.rpartition("/")[0]

    @property
    def resource(self) -> str:
        return self.kind.plural

    def needed(self, router: str, pod_monitor: bool) -> bool:
        return router in self.routers and (pod_monitor or not self.pod_monitor_only)


# Server-side apply (Kube.apply) is PATCH; when the object does not exist yet the API
# server also requires `create`. Kube.replace is `update`, Kube.patch is `patch`.
PERMISSIONS: tuple[Permission, ...] = (
    Permission(DEPLOYMENT, ("get", "list", "watch", "create", "patch"),
               "model servers: read before the first apply (ownership), list running versions, watch readiness, "
               "server-side apply (patch, and create the first time), scale (patch). Never deleted."),
    Permission(SERVICE, ("get", "create", "patch"),
               "the stable Service and one per version: read before the first apply, server-side apply"),
    Permission(POD, ("list",), "why a Deployment is not ready: the pods' conditions, read on timeout"),
    Permission(CONFIGMAP, ("get", "list", "create", "update", "delete"),
               "rollout state: one ConfigMap per model (compare-and-swap update; list: the models), and one "
               "archive per finished rollout (create; list and delete: the oldest beyond the limit)"),
    Permission(LEASE, ("get", "create", "update"), "the per-model run lock (taken, renewed and released by update)"),
    Permission(HTTPROUTE, ("get", "create", "patch"), "the model's HTTPRoute: read before the first apply, server-side apply",
               routers=frozenset({"gateway-api"})),
    Permission(VIRTUAL_SERVICE, ("get", "create", "patch"), "the model's VirtualService: read before the first apply, server-side apply",
               routers=frozenset({"istio"})),
    Permission(DESTINATION_RULE, ("get", "create", "patch"), "the version subsets: read before the first apply, server-side apply",
               routers=frozenset({"istio"})),
    Permission(POD_MONITOR, ("get", "create", "patch"), "the model's PodMonitor (platform.pod_monitor: true): read before the first apply, server-side apply",
               pod_monitor_only=True),
)


# What `rollout controller --platform kubernetes` needs beyond the calls above: it does
# every command's work (the engine is the same), and elects its leader with one more Lease.
CONTROLLER_PERMISSIONS: tuple[Permission, ...] = (
    Permission(LEASE, ("get", "update"),
               "the controller's leader Lease `rollout-controller` (shipped in manifests/controller; read, then taken "
               "over or renewed by update)"),
)


def needed(router: str, pod_monitor: bool) -> list[tuple[str, str, str]]:
    """(verb, group, resource) a spec with this router needs, for SelfSubjectAccessReview."""
    return [(verb, p.group, p.resource) for p in PERMISSIONS if p.needed(router, pod_monitor) for verb in p.verbs]


def role_rules() -> list[dict[str, list[str]]]:
    return [{"apiGroups": [p.group], "resources": [p.resource], "verbs": list(p.verbs)} for p in PERMISSIONS]


def controller_permissions() -> list[Permission]:
    """The CLI's table with the controller's additions merged into it (one Permission per
    resource, verbs in first-seen order, reasons joined), so the controller's Role is
    generated from the same lines as the CLI's and cannot drift from it."""
    merged: dict[tuple[str, str], Permission] = {}
    for p in (*PERMISSIONS, *CONTROLLER_PERMISSIONS):
        key = (p.group, p.resource)
        if key not in merged:
            merged[key] = p
            continue
        old = merged[key]
        verbs = tuple(dict.fromkeys((*old.verbs, *p.verbs)))
        merged[key] = Permission(old.kind, verbs, f"{old.why}; {p.why}", old.routers | p.routers,
                                 old.pod_monitor_only and p.pod_monitor_only)
    return list(merged.values())


def controller_role_rules() -> list[dict[str, list[str]]]:
    return [{"apiGroups": [p.group], "resources": [p.resource], "verbs": list(p.verbs)}
            for p in controller_permissions()]


_HEADER = """\
# GENERATED from rollout/platforms/kubernetes/rbac.py (PERMISSIONS): do not edit by hand;
#   python -m rollout.platforms.kubernetes.rbac > manifests/rbac/rbac.yaml
# What the rollout CLI needs in the namespace it rolls models out in, and no more.
# Apply once per namespace: set `namespace:` in manifests/rbac/kustomization.yaml, then
#   kubectl apply -k manifests/rbac
# (a CI job then runs with this ServiceAccount's token, or binds its own identity).
# `rollout lint --cluster` also reads CRD versions; that needs the ClusterRole in
# manifests/rbac/preflight.yaml (optional: without it the CRD check is skipped and said so).
"""

_LABELS = {"app.kubernetes.io/name": "rollout", "app.kubernetes.io/managed-by": "rollout"}


def _dump(obj: object) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=120)


def render() -> str:
    """The whole manifests/rbac/rbac.yaml: ServiceAccount, Role (commented), RoleBinding."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "rollout", "labels": _LABELS}}
    role_head = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "rollout", "labels": _LABELS}}
    rules = []
    for p, rule in zip(PERMISSIONS, role_rules()):
        scope = "" if p.routers == ALL_ROUTERS else f" (only router {', '.join(sorted(p.routers))})"
        rules.append(f"  # {p.kind.kind}{scope}: {p.why}\n" + _indent(_dump([rule]), "  "))
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "rollout", "labels": _LABELS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rollout"},
               "subjects": [{"kind": "ServiceAccount", "name": "rollout", "namespace": "models"}]}
    return (_HEADER + _dump(account) + "---\n" + _dump(role_head) + "rules:\n" + "".join(rules) + "---\n"
            + _dump(binding).rstrip("\n") + "  # rewritten by the kustomization's namespace\n")


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line if line.strip() else line for line in text.splitlines(keepends=True))


if __name__ == "__main__":  # pragma: no cover - exercised by the test that compares the file
    sys.stdout.write(render())
