"""The objects that run `rollout controller` in a namespace: ServiceAccount, Role and
RoleBinding, the leader Lease, and the Deployment. Printed by
``rollout render --controller [-n NS] [--image IMAGE]``; ``manifests/controller/`` holds
the rendering with the defaults, and a test checks the files equal it.

Why generated and not hand-written: the Role comes from the permission table in
``rbac.py`` (the calls the code makes, plus the controller's leader Lease), so a new API
call cannot ship without its verb, and no verb ships that nothing uses; the namespace
appears in four places (objects, the binding's subject, the controller's ``--namespace``)
that must agree.

Deployment choices (the defaults a platform team would otherwise have to add):
- two replicas: one leads (the ``rollout-controller`` Lease), one stands by and takes
  over within the Lease duration when the leader dies;
- non-root (uid 65532), read-only root filesystem, no privilege escalation, every
  capability dropped, the runtime's seccomp profile; ``/tmp`` is an emptyDir;
- ``/healthz`` for liveness and readiness and ``/metrics`` on the named port ``metrics``;
- requests sized from ``bench/results/controller_scale_k8s.md`` (30 concurrent rollouts
  peaked at 83 MiB RSS in one process), a memory limit with headroom.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from rollout import names
from rollout.errors import BadInput
from rollout.platforms.kubernetes import rbac

LEADER_LEASE = "rollout-controller"  # the Lease the controller's replicas elect a leader with

NAME = "rollout-controller"
DEFAULT_NAMESPACE = "models"  # the namespace of the files in manifests/controller (as manifests/rbac)
DEFAULT_IMAGE = "rollout:0.1.0"  # built from manifests/controller/Dockerfile; no public image is published
METRICS_PORT = 9464
LEASE_DURATION_S = 15
REPLICAS = 2

_LABELS = {"app.kubernetes.io/name": "rollout", "app.kubernetes.io/component": "controller",
           "app.kubernetes.io/managed-by": "rollout"}
_SELECTOR = {"app.kubernetes.io/name": "rollout", "app.kubernetes.io/component": "controller"}

# A container image reference: [host[:port]/]path[:tag][@digest] (the distribution
# reference grammar, simplified to what a YAML value may safely hold).
_IMAGE = (r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
          r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
          r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?")


def checked_image(image: str) -> str:
    """An image reference as `docker pull` accepts it; anything else is refused naming --image."""
    import re

    if not isinstance(image, str) or len(image) > 255 or not re.fullmatch(_IMAGE, image):
        raise BadInput(f"--image {image!r} is not a container image reference: use [registry/]name[:tag][@sha256:digest], "
                       "lower-case name parts (e.g. ghcr.io/acme/rollout:0.1.0)")
    return image


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(_LABELS)}


def service_account(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, namespace)}


def role(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(NAME, namespace),
            "rules": rbac.controller_role_rules()}


def role_binding(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(NAME, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]}


def lease(namespace: str) -> dict[str, Any]:
    """The leader Lease, empty: the first replica takes it (so the Role needs no create for it)."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": _meta(LEADER_LEASE, namespace),
            "spec": {"leaseDurationSeconds": LEASE_DURATION_S}}


def controller_args(namespace: str) -> list[str]:
    """The container's arguments to the `rollout` entry point (also what the test runs)."""
    return ["--namespace", namespace, "controller", "--platform", "kubernetes", "--address", "0.0.0.0",
            "--port", str(METRICS_PORT), "--lease-duration", str(LEASE_DURATION_S)]


def deployment(namespace: str, image: str) -> dict[str, Any]:
    def probe(**extra: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 2,
                "failureThreshold": 3, **extra}

    container = {
        "name": "controller",
        "image": image,
        "command": ["rollout"],
        "args": controller_args(namespace),
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": probe(initialDelaySeconds=5),
        "readinessProbe": probe(),
        "resources": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME, namespace),
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": dict(_SELECTOR)},
            "template": {
                "metadata": {"labels": dict(_LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def objects(namespace: str = DEFAULT_NAMESPACE, image: str = DEFAULT_IMAGE) -> list[dict[str, Any]]:
    """Every object, in apply order (identity and permissions before the pods that use them)."""
    names.k8s_namespace(namespace)
    checked_image(image)
    return [service_account(namespace), role(namespace), role_binding(namespace), lease(namespace),
            deployment(namespace, image)]


_HEADER = """\
# GENERATED by `rollout render --controller -n {namespace} --image {image}`
# (rollout/platforms/kubernetes/controller_manifests.py; the Role from rbac.py's table): do not edit by hand.
# `rollout controller` for namespace {namespace}: two replicas, one leads (Lease {lease}), the other
# stands by. Another namespace or image: rollout render --controller -n NS --image IMAGE | kubectl apply -f -
"""


def _dump(obj: object) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=120)


def render(namespace: str = DEFAULT_NAMESPACE, image: str = DEFAULT_IMAGE) -> str:
    """All objects as one YAML stream, the Role's rules each preceded by why it is needed."""
    docs = objects(namespace, image)
    out = [_HEADER.format(namespace=namespace, image=image, lease=LEADER_LEASE)]
    for i, obj in enumerate(docs):
        if i:
            out.append("---\n")
        if obj["kind"] == "Role":
            head = {k: v for k, v in obj.items() if k != "rules"}
            out.append(_dump(head) + "rules:\n")
            for p, rule in zip(rbac.controller_permissions(), obj["rules"]):
                out.append(f"# {p.kind.kind}: {p.why}\n" + _dump([rule]))
        else:
            out.append(_dump(obj))
    return "".join(out)


if __name__ == "__main__":  # pragma: no cover - exercised by the test that compares the files
    sys.stdout.write(render())
