"""The only module that talks to the Kubernetes API, and the only place where its
errors become the project's: 404 is ``None`` (or ``False`` for delete), 409 is
``Conflict``, everything else is ``PlatformError`` with the object and the server's
message. One small function per verb, kopf-style; callers pass and get plain dicts.

It uses the official ``kubernetes`` client for configuration (kubeconfig with a
context, or in-cluster service-account config), authentication, TLS and HTTP, and
calls the REST paths directly, so every kind - built-in or custom (HTTPRoute,
VirtualService, PodMonitor) - goes through the same six verbs without a discovery round.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rollout.errors import BadInput, Conflict, PlatformError

log = logging.getLogger("rollout.kubernetes")

FIELD_MANAGER = "rollout"
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def checked_namespace(namespace: str) -> str:
    """A namespace is a DNS-1123 label; checked before it becomes part of a URL."""
    if not isinstance(namespace, str) or not DNS1123_LABEL.fullmatch(namespace):
        raise BadInput(f"namespace {namespace!r} is not a DNS-1123 label: use 1-63 lower-case letters, digits and "
                       "'-', starting and ending with a letter or digit (platform.namespace or --namespace)")
    return namespace


def checked_name(kind: "Kind", name: str) -> str:
    """An object name is a DNS-1123 subdomain (at most 253); checked before it becomes part of a URL."""
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        raise BadInput(f"{kind.kind} name {name!r} is not a DNS-1123 subdomain: lower-case letters, digits, '-' "
                       "and '.', starting and ending with a letter or digit")
    return name
RBAC_FILE = "manifests/rbac/rbac.yaml"  # generated from rollout/platforms/kubernetes/rbac.py


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def builtin(self) -> bool:
        group = self.api_version.rpartition("/")[0]
        return group in ("", "apps", "coordination.k8s.io", "rbac.authorization.k8s.io")

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced:
            base += f"/namespaces/{checked_namespace(namespace or '')}"
        base += f"/{self.plural}"
        return f"{base}/{checked_name(self, name)}" if name else base


DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
SERVICE = Kind("v1", "Service", "services")
CONFIGMAP = Kind("v1", "ConfigMap", "configmaps")
POD = Kind("v1", "Pod", "pods")
SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
ROLE = Kind("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")
HTTPROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
VIRTUAL_SERVICE = Kind("networking.istio.io/v1beta1", "VirtualService", "virtualservices")
DESTINATION_RULE = Kind("networking.istio.io/v1beta1", "DestinationRule", "destinationrules")
POD_MONITOR = Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors")
CRD = Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False)
ACCESS_REVIEW = Kind("authorization.k8s.io/v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", namespaced=False)

KINDS = {k.kind: k for k in (DEPLOYMENT, SERVICE, CONFIGMAP, POD, SERVICE_ACCOUNT, LEASE, ROLE, ROLE_BINDING,
                             HTTPROUTE, VIRTUAL_SERVICE, DESTINATION_RULE, POD_MONITOR, CRD, ACCESS_REVIEW)}


def kind_of(obj: dict[str, Any]) -> Kind:
    try:
        return KINDS[obj["kind"]]
    except KeyError:
        raise PlatformError(f"rollout does not manage objects of kind {obj.get('kind')!r}; "
                            f"known: {', '.join(sorted(KINDS))}") from None


def describe(kind: Kind, name: str | None, namespace: str | None) -> str:
    return f"{kind.kind} {namespace}/{name}" if name else f"{kind.plural} in {namespace}"


class Kube:
    """A namespace-bound handle on one cluster."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.api = api_client
        self.namespace = checked_namespace(namespace)

    # ------------------------------------------------------------------ configuration

    @classmethod
    def connect(cls, namespace: str, kubeconfig: str | None = None, context: str | None = None) -> "Kube":
        """kubeconfig (the given path, else $KUBECONFIG, else ~/.kube/config) with an
        optional context; in-cluster service-account config when no kubeconfig exists
        and the pod's environment says we run in a cluster."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        explicit = kubeconfig or os.environ.get("KUBECONFIG")
        default_file = os.path.expanduser("~/.kube/config")
        where = explicit or default_file
        try:
            if explicit or os.path.exists(default_file) or context:
                config.load_kube_config(config_file=explicit or None, context=context,
                                        client_configuration=configuration)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                where = "the in-cluster service account (KUBERNETES_SERVICE_HOST is set, no kubeconfig found)"
                config.load_incluster_config(client_configuration=configuration)
            else:
                raise PlatformError("no Kubernetes configuration: set platform.kubeconfig or $KUBECONFIG, "
                                    "create ~/.kube/config, or run inside a cluster")
        except ConfigException as exc:
            raise PlatformError(f"cannot load Kubernetes configuration from {where}"
                                + (f" (context {context!r})" if context else "") + f": {exc}") from None
        return cls(client.ApiClient(configuration), namespace)

    # ------------------------------------------------------------------ the HTTP call

    def _call(self, method: str, path: str, what: str, query: dict[str, Any] | None = None,
              body: Any = None, content_type: str | None = None, stream: bool = False,
              timeout_s: float | None = None) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        q = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            _, url, headers, body, _ = self.api.param_serialize(
                method, path, query_params=q, header_params=headers, body=body, auth_settings=["BearerToken"])
            resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout_s)
        except ApiException as exc:  # raised by the REST layer for some transport errors
            raise _translate(exc.status or 0, exc.body, what) from None
        except (HTTPError, OSError) as exc:
            raise PlatformError(f"cannot reach the Kubernetes API at {self.api.configuration.host} "
                                f"while working on {what}: {exc}") from None
        if stream and 200 <= resp.status < 300:
            return resp.response
        if stream and resp.status in (410, 504):  # expired / too large resource version: re-list and watch again
            raise _Expired(f"{resp.status}: {resp.read().decode('utf-8', 'replace')[:200]}")
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise _translate(resp.status, data.decode("utf-8", "replace") if data else "", what)
        return json.loads(data) if data else {}

    # ------------------------------------------------------------------ verbs

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return self._call("GET", kind.path(self.namespace, name), describe(kind, name, self.namespace))
        except _Missing:
            return None

    def list(self, kind: Kind, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or None
        try:
            out = self._call("GET", kind.path(self.namespace), describe(kind, None, self.namespace),
                             query={"labelSelector": selector})
        except _Missing:
            raise PlatformError(f"cannot list {kind.plural} in namespace {self.namespace!r}: the namespace or the "
                                f"{kind.api_version} API does not exist (are its CRDs installed?)") from None
        return list(out.get("items") or [])

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create; an existing name is a Conflict."""
        kind = kind_of(obj)
        what = describe(kind, (obj.get("metadata") or {}).get("name") or kind.kind, self.namespace)
        return self._checked(lambda: self._call("POST", kind.path(self.namespace), what, body=obj), what)

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: a stale one is a Conflict."""
        kind = kind_of(obj)
        name = obj["metadata"]["name"]
        what = describe(kind, name, self.namespace)
        return self._checked(lambda: self._call("PUT", kind.path(self.namespace, name), what, body=obj), what)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with field manager ``rollout`` (forced: rollout is the
        authority over the fields it renders; fields other managers own are kept)."""
        kind = kind_of(obj)
        name = obj["metadata"]["name"]
        what = describe(kind, name, self.namespace)
        return self._checked(lambda: self._call(
            "PATCH", kind.path(self.namespace, name), what, body=obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml"), what)

    def patch(self, kind: Kind, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (works on built-in and custom kinds alike)."""
        what = describe(kind, name, self.namespace)
        return self._checked(lambda: self._call(
            "PATCH", kind.path(self.namespace, name), what, body=patch,
            query={"fieldManager": FIELD_MANAGER}, content_type="application/merge-patch+json"), what)

    def delete(self, kind: Kind, name: str) -> bool:
        """Delete; False if it was already gone."""
        try:
            self._call("DELETE", kind.path(self.namespace, name), describe(kind, name, self.namespace),
                       body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
            return True
        except _Missing:
            return False

    def watch(self, kind: Kind, name: str, resource_version: str | None, timeout_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events (type, object) for one object from ``resource_version`` until the
        server ends the stream after ``timeout_s``. A watch that cannot continue (410
        Gone, 504 "Too large resource version", an ERROR event, a stream cut mid-way)
        just ends: the caller re-reads the object and watches again from there."""
        from kubernetes.watch.watch import iter_resp_lines
        from urllib3.exceptions import HTTPError

        what = describe(kind, name, self.namespace)
        seconds = max(1, int(timeout_s + 0.999))
        try:
            resp = self._call("GET", kind.path(self.namespace), what, stream=True, timeout_s=seconds + 5,
                              query={"watch": "true", "fieldSelector": f"metadata.name={name}",
                                     "resourceVersion": resource_version, "timeoutSeconds": seconds,
                                     "allowWatchBookmarks": "false"})
        except _Missing:
            return
        except _Expired as exc:
            log.debug("watch of %s from resourceVersion %s refused (%s); re-reading", what, resource_version, exc)
            return
        try:
            for line in iter_resp_lines(resp):
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:  # a line cut by a broken stream
                    log.debug("watch of %s ended on a partial event", what)
                    return
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the caller re-reads and watches again
                    log.debug("watch of %s ended: %s", what, (event.get("object") or {}).get("message"))
                    return
                yield event["type"], event["object"]
        except (OSError, HTTPError) as exc:  # the connection was cut mid-stream
            log.debug("watch of %s ended: %s", what, exc)
        finally:
            resp.release_conn()

    @staticmethod
    def _checked(fn: Any, what: str) -> dict[str, Any]:
        try:
            return fn()
        except _Missing as exc:
            raise PlatformError(f"{what}: {exc}") from None


class _Missing(Exception):
    """404, kept inside this module: callers see None / False / PlatformError."""


class Forbidden(PlatformError):
    """401/403: the identity may not do this (the message names verb, resource and the Role file)."""


class _Expired(Exception):
    """A watch the server will not start from that resourceVersion (410, 504)."""


def _translate(status: int, body: str | None, what: str) -> Exception:
    message = body or ""
    reason = ""
    try:
        parsed = json.loads(body or "")
        message = parsed.get("message") or message
        reason = parsed.get("reason") or ""
    except ValueError:
        pass
    if status == 404:
        return _Missing(message or "not found")
    if status == 409:
        return Conflict(f"{what}: {message or reason or 'conflict'}")
    if status in (401, 403):
        return Forbidden(f"{what}: the Kubernetes API refused access ({status} {reason}): {message}; "
                             f"check the credentials and that the Role in {RBAC_FILE} is applied and bound to "
                             "them (kubectl apply -k manifests/rbac)")
    if status == 422:
        return PlatformError(f"{what} is invalid: {message}")
    return PlatformError(f"{what}: the Kubernetes API answered {status} {reason}: {message}".rstrip(": "))
