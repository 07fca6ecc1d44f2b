"""A fake Kubernetes API server that the official client talks to over real HTTP.

It is a ``ThreadingHTTPServer`` on 127.0.0.1, so the blocking ``kubernetes`` client never
shares an event loop with it. What it does, faithfully enough for the platform's tests:

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``;
- namespaced CRUD for the kinds in ``RESOURCES`` (plus cluster-scoped Namespaces), with
  ``/status`` subresources for the kinds that have one;
- server-assigned ``uid``, ``creationTimestamp``, ``generation`` (bumped when anything
  outside metadata/status changes) and one global ``resourceVersion`` that moves only
  when an object really changes;
- PUT with a stale ``resourceVersion`` -> 409 Conflict; POST of an existing name ->
  409 AlreadyExists; unknown name or namespace -> 404; all as ``kind: Status`` bodies;
- list with ``labelSelector`` (=, ==, !=, in, notin, exists, !exists) and
  ``fieldSelector`` on ``metadata.name`` / ``metadata.namespace``;
- PATCH as json-patch, merge-patch, strategic-merge-patch (built-in kinds only; 415 for
  custom resources, like the real server) and apply-patch (server-side apply);
- watch streams (chunked JSON lines) from a resourceVersion, honouring timeoutSeconds;
- a request log by Kubernetes verb and resource, for measuring;
- a fake kubelet thread (``FakeKubelet``) that turns Deployments into Pods and marks
  them ready, or never ready for the Deployments a test names.

Simplifications, stated: server-side apply is always treated as forced (no field
conflicts are reported) and lists are atomic (replaced whole) in apply and strategic
merge, except strategic merge of lists of objects keyed by ``name`` (containers, env,
ports), which merge by name as the real server does. No admission, no defaulting beyond
Deployment ``replicas`` and Service ``clusterIP``/``type``, no garbage collection.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import datetime as dt
import itertools
import json
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import yaml


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has a /status subresource

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: list[Resource] = [
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, status=True),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "services", "Service", status=True),
    Resource("", "v1", "pods", "Pod", status=True),
    Resource("", "v1", "serviceaccounts", "ServiceAccount"),
    Resource("", "v1", "events", "Event"),
    Resource("apps", "v1", "deployments", "Deployment", status=True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", status=True),
    Resource("gateway.networking.k8s.io", "v1", "gateways", "Gateway", status=True),
    Resource("networking.istio.io", "v1beta1", "virtualservices", "VirtualService", status=True),
    Resource("networking.istio.io", "v1beta1", "destinationrules", "DestinationRule", status=True),
    Resource("monitoring.coreos.com", "v1", "podmonitors", "PodMonitor"),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False),
    Resource("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", namespaced=False),
]
BUILTIN_GROUPS = {"", "apps", "coordination.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io",
                  "authorization.k8s.io"}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


class Authorizer:
    """RBAC for one subject: the rules of a Role (namespaced) the way the API server's
    RBAC authorizer reads them (apiGroups, resources incl. ``plural/subresource``,
    verbs, ``*`` wildcards, resourceNames). Discovery is always allowed (system:discovery)."""

    def __init__(self, rules: list[dict[str, Any]], namespace: str, user: str = "system:serviceaccount:models:rollout") -> None:
        self.rules, self.namespace, self.user = rules, namespace, user

    @classmethod
    def from_role_file(cls, path: str, namespace: str) -> "Authorizer":
        """The first Role in a YAML file (e.g. manifests/rbac/rbac.yaml), bound in ``namespace``."""
        with open(path) as fh:
            role = next(d for d in yaml.safe_load_all(fh) if d and d.get("kind") == "Role")
        return cls(role.get("rules") or [], namespace)

    def allows(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None = None) -> bool:
        if namespace != self.namespace:  # a Role grants nothing outside its namespace, nor cluster-scoped
            return False
        for rule in self.rules:
            if not _matches(rule.get("verbs"), verb) or not _matches(rule.get("apiGroups"), group):
                continue
            if not _matches(rule.get("resources"), resource):
                continue
            names = rule.get("resourceNames")
            if names and (name is None or name not in names):
                continue
            return True
        return False

    def check(self, verb: str, res: "Resource", namespace: str | None, name: str | None, sub: str | None) -> None:
        resource = res.plural + (f"/{sub}" if sub else "")
        if self.allows(verb, res.group, resource, namespace, name):
            return
        what = f'{res.plural}{"." + res.group if res.group else ""}' + (f' "{name}"' if name else "")
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{self.user}" cannot {verb} resource '
                       f'"{resource}" in API group "{res.group}"{where}',
                       {"name": name or "", "group": res.group, "kind": res.plural})


def _matches(allowed: list[str] | None, value: str) -> bool:
    return bool(allowed) and ("*" in allowed or value in allowed)


CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data (keys + values) in a ConfigMap or Secret
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _label_problems(key: str, value: str) -> list[str]:
    """The API server's label key and value validation."""
    out = []
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.fullmatch(prefix)):
        out.append(f"{key!r}: prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _QUALIFIED.fullmatch(name):
        out.append(f"{key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
                   "and end with an alphanumeric character (at most 63)")
    if value and (len(value) > 63 or not _QUALIFIED.fullmatch(value)):
        out.append(f"{value!r}: a valid label must be an empty string or consist of alphanumeric characters, '-', "
                   "'_' or '.', and must start and end with an alphanumeric character (at most 63)")
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- selectors

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def label_matcher(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """Parse a label selector the way the API server does; raise 400 on nonsense."""
    if not selector:
        return lambda labels: True
    tests: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split_selector(selector):
        term = raw.strip()
        m = _SET_RE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                tests.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                tests.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda l, k=k, v=v: l.get(k) != v)
        elif "==" in term or "=" in term:
            k, v = (s.strip() for s in re.split(r"==?", term, maxsplit=1))
            tests.append(lambda l, k=k, v=v: l.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda l, k=term[1:].strip(): k not in l)
        elif re.match(r"^[A-Za-z0-9./_-]+$", term):
            tests.append(lambda l, k=term: k in l)
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(t(labels) for t in tests)


def field_matcher(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    if not selector:
        return lambda obj: True
    tests = []
    for term in selector.split(","):
        neg = "!=" in term
        k, v = (s.strip() for s in re.split(r"!=|==?", term, maxsplit=1))
        if k not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: {k}')
        attr = k.split(".", 1)[1]
        tests.append(lambda o, a=attr, v=v, neg=neg: (o["metadata"].get(a) == v) != neg)
    return lambda obj: all(t(obj) for t in tests)


# ----------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch: a merge patch in which lists of objects keyed by ``name``
    merge element by element (containers, env, volumes, ports); other lists replace."""
    if isinstance(patch, dict):
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                result.pop(k, None)
            elif isinstance(v, list) and isinstance(result.get(k), list) and _keyed(v) and _keyed(result[k]):
                merged = {item["name"]: item for item in result[k]}
                for item in v:
                    merged[item["name"]] = strategic_merge(merged.get(item["name"]), item)
                result[k] = list(merged.values())
            else:
                result[k] = strategic_merge(result.get(k), v)
        return result
    return copy.deepcopy(patch)


def _keyed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy)."""
    doc = copy.deepcopy(target)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(path: str) -> Any:
        cur = doc
        for p in _pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    try:
        for op in ops:
            kind, path = op["op"], op["path"]
            if kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"test operation failed at {path}")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(get(op["from"]))
                if kind == "move":
                    p, k = parent(op["from"])
                    del p[int(k) if isinstance(p, list) else k]
                kind, op = "add", {"path": path, "value": value}
            p, k = parent(path)
            if kind == "add":
                if isinstance(p, list):
                    p.insert(len(p) if k == "-" else int(k), copy.deepcopy(op["value"]))
                else:
                    p[k] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if isinstance(p, list):
                    p[int(k)] = copy.deepcopy(op["value"])
                else:
                    if k not in p:
                        raise ApiError(422, "Invalid", f"replace operation does not apply: doc is missing key: {path}")
                    p[k] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del p[int(k) if isinstance(p, list) else k]
            else:
                raise ApiError(400, "BadRequest", f"unknown json patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"json patch does not apply: {exc}") from None
    return doc


def _leaves(obj: Any, prefix: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    if isinstance(obj, dict) and obj:
        out: set[tuple[Any, ...]] = set()
        for k, v in obj.items():
            out |= _leaves(v, prefix + (k,))
        return out
    return {prefix}


def _drop(obj: dict[str, Any], path: tuple[Any, ...]) -> None:
    cur: Any = obj
    for p in path[:-1]:
        if not isinstance(cur, dict) or p not in cur:
            return
        cur = cur[p]
    if isinstance(cur, dict):
        cur.pop(path[-1], None)


def _apply_merge(target: Any, applied: Any) -> Any:
    if isinstance(applied, dict):
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, v in applied.items():
            result[k] = _apply_merge(result.get(k), v)
        return result
    return copy.deepcopy(applied)


# ----------------------------------------------------------------------------- the store


@dataclass
class Request:
    verb: str  # get, list, watch, create, update, patch, apply, delete, discovery
    resource: str  # plural, plural/status, or the discovery path
    namespace: str | None
    name: str | None
    path: str
    at: float


@dataclass
class WatchEvent:
    rv: int
    type: str
    resource: Resource
    obj: dict[str, Any]


class FakeCluster:
    """The objects and their history; thread-safe; used by the HTTP handler and the kubelet."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.applied: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {}
        self.events: list[WatchEvent] = []
        self.rv = 0
        self.requests: list[Request] = []
        # Faults for the next watch requests, in order: "410" (an ERROR event: Expired),
        # "504" (HTTP 504 "Too large resource version"), "cut" (the stream breaks mid-event).
        self.watch_faults: list[str] = []
        # kind -> CRD file installed instead of the one in tests/data/crds (e.g. an older Gateway API)
        self.crd_files: dict[str, str] = {}
        self.authorizer: Authorizer | None = None  # None: everything allowed (a cluster-admin)
        self.authorized: Counter[tuple[str, str, str]] = Counter()  # (verb, group, resource) granted by it
        self._ips = itertools.count(10)
        self.create_namespace("default")
        from tests.kubernetes.crds import CRD_DIR

        for path in sorted(CRD_DIR.glob("*.yaml")):  # the CRDs a cluster with Gateway API, Istio, Prometheus Operator has
            self.install_crd(str(path))

    def install_crd(self, path: str) -> None:
        """Install (or replace) the CRD in a file; its schema is then what writes are checked against."""
        res = _BY_PATH[("apiextensions.k8s.io", "v1", "customresourcedefinitions")]
        crd = copy.deepcopy(_crd_file(path))
        with self.lock:
            if self.key(res, None, crd["metadata"]["name"]) in self.objects:
                self.delete(res, None, crd["metadata"]["name"])
            self.create(res, None, crd)
            self.crd_files[crd["spec"]["names"]["kind"]] = path

    # -- bookkeeping
    def record(self, req: Request) -> None:
        with self.lock:
            self.requests.append(req)

    def counts(self, since: int = 0) -> Counter[str]:
        """Requests since index ``since`` as 'verb resource' -> count."""
        with self.lock:
            return Counter(f"{r.verb} {r.resource}" for r in self.requests[since:] if r.verb != "discovery")

    def mark(self) -> int:
        with self.lock:
            return len(self.requests)

    @staticmethod
    def key(res: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (res.group, res.plural, namespace or "", name)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _emit(self, type_: str, res: Resource, obj: dict[str, Any]) -> None:
        self.events.append(WatchEvent(self.rv, type_, res, copy.deepcopy(obj)))
        self.changed.notify_all()

    def create_namespace(self, name: str) -> dict[str, Any]:
        res = _BY_PATH[("", "v1", "namespaces")]
        return self.create(res, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- verbs
    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get(self.key(res, namespace, name))
            if obj is None:
                raise self.not_found(res, name)
            return copy.deepcopy(obj)

    def list(self, res: Resource, namespace: str | None, labels: str | None = None,
             fields: str | None = None) -> tuple[list[dict[str, Any]], int]:
        lm, fm = label_matcher(labels), field_matcher(fields)
        with self.lock:
            items = [copy.deepcopy(o) for (g, p, ns, _), o in sorted(self.objects.items())
                     if g == res.group and p == res.plural and (namespace is None or ns == (namespace or ""))
                     and lm(o["metadata"].get("labels") or {}) and fm(o)]
            return items, self.rv

    def _check_namespace(self, res: Resource, namespace: str | None) -> None:
        if res.namespaced and self.key(_BY_PATH[("", "v1", "namespaces")], None, namespace or "") not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})

    def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._check_namespace(res, namespace)
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value: name or generateName is required")
            self._validate_body(res, obj)
            key = self.key(res, namespace, name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{res.plural}{"." + res.group if res.group else ""} "{name}" already exists',
                               {"name": name, "group": res.group, "kind": res.plural})
            if res.namespaced:
                meta["namespace"] = namespace
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta.pop("resourceVersion", None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            self._default(res, obj)
            if res.status and res.kind != "Namespace":
                obj.pop("status", None)
            self._bump(obj)
            self.objects[key] = obj
            self._emit("ADDED", res, obj)
            return copy.deepcopy(obj)

    def _validate_body(self, res: Resource, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        if obj.get("kind") not in (None, res.kind):
            raise ApiError(400, "BadRequest", f"the kind {obj.get('kind')!r} does not match the path ({res.kind})")
        meta = obj.get("metadata") or {}
        errors = []
        name = meta.get("name") or ""
        name_ok = (DNS1035_LABEL if res.kind == "Service" else DNS1123_LABEL if res.kind == "Namespace"
                   else DNS1123_SUBDOMAIN).fullmatch(name)
        limit = 63 if res.kind in ("Service", "Namespace") else 253
        if not name_ok or len(name) > limit:
            errors.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 "
                          f"{'label' if limit == 63 else 'subdomain'} must consist of lower case alphanumeric "
                          "characters, '-' or '.', and must start and end with an alphanumeric character")
        for key, value in (meta.get("labels") or {}).items():
            errors += [f"metadata.labels: Invalid value: {e}" for e in _label_problems(key, str(value))]
        if res.kind in ("ConfigMap", "Secret"):
            size = sum(len(k) + len(v.encode() if isinstance(v, str) else v)
                       for section in ("data", "binaryData") for k, v in (obj.get(section) or {}).items())
            if size > CONFIGMAP_LIMIT:
                errors.append(f"[]: Too long: must have at most {CONFIGMAP_LIMIT} bytes")
        if res.group not in BUILTIN_GROUPS:  # custom resources: the installed CRD's schema, strictly
            from tests.kubernetes import crds

            errors += crds.errors({**obj, "apiVersion": res.api_version, "kind": res.kind},
                                  self.crd_files.get(res.kind), old)  # schema, then CEL (transition rules: old)
        if errors:
            raise ApiError(422, "Invalid", f'{res.kind} "{name}" is invalid: ' + ", ".join(errors),
                           {"name": name, "group": res.group, "kind": res.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": e} for e in errors]})

    def _default(self, res: Resource, obj: dict[str, Any]) -> None:
        if res.kind == "Deployment":
            obj.setdefault("spec", {}).setdefault("replicas", 1)
        if res.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", f"10.96.0.{next(self._ips) % 250}")

    def write(self, res: Resource, namespace: str | None, name: str, new: dict[str, Any],
              expect_rv: str | None = None, subresource: str | None = None) -> dict[str, Any]:
        """Store an updated object (PUT and every patch end here)."""
        with self.lock:
            key = self.key(res, namespace, name)
            old = self.objects.get(key)
            if old is None:
                raise self.not_found(res, name)
            if expect_rv and expect_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {res.plural}{"." + res.group if res.group else ""} "{name}": '
                               "the object has been modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": res.group, "kind": res.plural})
            if (new.get("metadata") or {}).get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            self._validate_body(res, new, old)
            obj = copy.deepcopy(new)
            meta = obj.setdefault("metadata", {})
            for f in ("uid", "creationTimestamp", "generation", "namespace", "name", "resourceVersion"):
                if f in old["metadata"]:
                    meta[f] = old["metadata"][f]
                else:
                    meta.pop(f, None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            if subresource == "status":
                kept = copy.deepcopy(old)
                kept["status"] = obj.get("status")
                obj = kept
            elif res.status:
                if "status" in old:
                    obj["status"] = copy.deepcopy(old["status"])
                else:
                    obj.pop("status", None)
            self._default(res, obj)
            if obj == old:
                return copy.deepcopy(old)  # a no-op write changes nothing, not even resourceVersion
            if _spec_of(obj) != _spec_of(old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            self._bump(obj)
            self.objects[key] = obj
            self._emit("MODIFIED", res, obj)
            return copy.deepcopy(obj)

    def apply(self, res: Resource, namespace: str | None, name: str, body: dict[str, Any], manager: str) -> dict[str, Any]:
        """Server-side apply: create, or merge the applied configuration over the live object,
        removing fields this manager applied before and no longer applies."""
        with self.lock:
            key = self.key(res, namespace, name)
            if (body.get("metadata") or {}).get("name") != name:
                raise ApiError(400, "BadRequest", "metadata.name in the applied configuration must match the URL")
            if key not in self.objects:
                created = self.create(res, namespace, body)
                self.applied.setdefault(key, {})[manager] = copy.deepcopy(body)
                return created
            live = copy.deepcopy(self.objects[key])
            previous = self.applied.get(key, {}).get(manager)
            if previous is not None:
                for path in _leaves(previous) - _leaves(body):
                    _drop(live, path)
            merged = _apply_merge(live, body)
            saved = self.write(res, namespace, name, merged)
            self.applied.setdefault(key, {})[manager] = copy.deepcopy(body)
            return saved

    def delete(self, res: Resource, namespace: str | None, name: str, precondition_rv: str | None = None) -> dict[str, Any]:
        with self.lock:
            key = self.key(res, namespace, name)
            obj = self.objects.get(key)
            if obj is None:
                raise self.not_found(res, name)
            if precondition_rv and precondition_rv != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": '
                               "the ResourceVersion in the precondition does not match")
            del self.objects[key]
            self.applied.pop(key, None)
            self._bump(obj)
            self._emit("DELETED", res, obj)
            return copy.deepcopy(obj)

    @staticmethod
    def not_found(res: Resource, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{res.plural}{"." + res.group if res.group else ""} "{name}" not found',
                        {"name": name, "group": res.group, "kind": res.plural})

    # -- helpers for tests
    def find(self, plural: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        res = next(r for r in RESOURCES if r.plural == plural)
        with self.lock:
            obj = self.objects.get(self.key(res, namespace if res.namespaced else None, name))
            return copy.deepcopy(obj) if obj else None

    def all(self, plural: str, namespace: str = "default") -> list[dict[str, Any]]:
        res = next(r for r in RESOURCES if r.plural == plural)
        return self.list(res, namespace)[0]


@functools.lru_cache(maxsize=None)
def _crd_file(path: str) -> dict[str, Any]:
    with open(path) as fh:
        return next(d for d in yaml.load_all(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d)


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# ----------------------------------------------------------------------------- HTTP


def _discovery_group(group: str, version: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
        "resources": [
            {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for r in RESOURCES if r.group == group and r.version == version
        ] + [
            {"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
             "verbs": ["get", "patch", "update"]}
            for r in RESOURCES if r.group == group and r.version == version and r.status
        ],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes; no 40 ms delayed-ACK stalls
    cluster: FakeCluster  # set on the subclass made per server

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing
    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> tuple[Any, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if not raw:
            return None, ctype
        try:
            if ctype.endswith("yaml"):
                return yaml.safe_load(raw), ctype
            return json.loads(raw), ctype
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"the request body is not valid: {exc}") from None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._route(method, url.path, query)
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except BrokenPipeError:
            pass

    def _route(self, method: str, path: str, query: dict[str, str]) -> None:
        c = self.cluster
        parts = [p for p in path.split("/") if p]
        discovery = self._discovery(parts)
        if discovery is not None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            c.record(Request("discovery", path, None, None, path, time.time()))
            self._send(200, discovery)
            return
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        res = _BY_PATH.get((group, version, rest[0]))
        if res is None or (res.namespaced and namespace is None and len(rest) > 1):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub not in (None, "status") or (sub == "status" and not res.status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        label = res.plural + (f"/{sub}" if sub else "")
        if name is None:
            if method == "GET" and query.get("watch") in ("1", "true"):
                self._authorize("watch", res, namespace, None, sub)
                c.record(Request("watch", label, namespace, None, path, time.time()))
                self._watch(res, namespace, query)
            elif method == "GET":
                self._authorize("list", res, namespace, None, sub)
                c.record(Request("list", label, namespace, None, path, time.time()))
                items, rv = c.list(res, namespace, query.get("labelSelector"), query.get("fieldSelector"))
                self._send(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})
            elif method == "POST" and res.plural == "selfsubjectaccessreviews":  # any identity may ask
                body, _ = self._body()
                attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
                az = c.authorizer
                allowed = az is None or az.allows(attrs.get("verb", ""), attrs.get("group", ""),
                                                  attrs.get("resource", "") + (f"/{attrs['subresource']}"
                                                                               if attrs.get("subresource") else ""),
                                                  attrs.get("namespace"), attrs.get("name"))
                c.record(Request("create", label, None, None, path, time.time()))
                self._send(201, {**(body or {}), "status": {"allowed": allowed}})
            elif method == "POST":
                self._authorize("create", res, namespace, None, sub)
                c.record(Request("create", label, namespace, None, path, time.time()))
                body, _ = self._body()
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body of a create must be an object")
                self._send(201, c.create(res, namespace, body))
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not supported here")
            return
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is not None:
            self._authorize(verb, res, namespace, name, sub)
        if method == "GET":
            c.record(Request("get", label, namespace, name, path, time.time()))
            self._send(200, c.get(res, namespace, name))
        elif method == "PUT":
            c.record(Request("update", label, namespace, name, path, time.time()))
            body, _ = self._body()
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of an update must be an object")
            rv = (body.get("metadata") or {}).get("resourceVersion")
            self._send(200, c.write(res, namespace, name, body, expect_rv=rv, subresource=sub))
        elif method == "PATCH":
            self._patch(res, namespace, name, sub, label, path, query)
        elif method == "DELETE":
            c.record(Request("delete", label, namespace, name, path, time.time()))
            body, _ = self._body()
            pre = ((body or {}).get("preconditions") or {}).get("resourceVersion") if isinstance(body, dict) else None
            c.delete(res, namespace, name, precondition_rv=pre)
            self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "group": res.group, "kind": res.plural}})
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    def _authorize(self, verb: str, res: Resource, namespace: str | None, name: str | None, sub: str | None) -> None:
        c = self.cluster
        if c.authorizer is None:
            return
        c.authorizer.check(verb, res, namespace, name, sub)
        with c.lock:
            c.authorized[(verb, res.group, res.plural + (f"/{sub}" if sub else ""))] += 1

    def _patch(self, res: Resource, namespace: str | None, name: str, sub: str | None, label: str, path: str,
               query: dict[str, str]) -> None:
        c = self.cluster
        body, ctype = self._body()
        if ctype == "application/apply-patch+yaml":
            c.record(Request("apply", label, namespace, name, path, time.time()))
            manager = query.get("fieldManager")
            if not manager:
                raise ApiError(400, "BadRequest", "PATCH /apply requests require fieldManager to be set")
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "an applied configuration must be an object")
            exists = c.find_key(res, namespace, name)
            if not exists:  # an apply that creates is authorised as create too
                self._authorize("create", res, namespace, name, sub)
            self._send(200 if exists else 201, c.apply(res, namespace, name, body, manager))
            return
        c.record(Request("patch", label, namespace, name, path, time.time()))
        if ctype == "application/strategic-merge-patch+json" and res.group not in BUILTIN_GROUPS:
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types include: "
                           "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
        with c.lock:
            live = c.get(res, namespace, name)
            if ctype == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a json patch must be a list of operations")
                new = json_patch(live, body)
                expect = None
            elif ctype == "application/merge-patch+json":
                new = merge_patch(live, body)
                expect = ((body or {}).get("metadata") or {}).get("resourceVersion")
            elif ctype == "application/strategic-merge-patch+json":
                new = strategic_merge(live, body)
                expect = ((body or {}).get("metadata") or {}).get("resourceVersion")
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
            if expect is None:
                new.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
            self._send(200, c.write(res, namespace, name, new, expect_rv=expect or live["metadata"]["resourceVersion"],
                                    subresource=sub))

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["api", "v1"]:
            return _discovery_group("", "v1")
        groups: dict[str, list[str]] = {}
        for r in RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            g, vs = parts[1], groups[parts[1]]
            return {"kind": "APIGroup", "apiVersion": "v1", "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], []):
            return _discovery_group(parts[1], parts[2])
        return None

    def _watch(self, res: Resource, namespace: str | None, query: dict[str, str]) -> None:
        c = self.cluster
        lm, fm = label_matcher(query.get("labelSelector")), field_matcher(query.get("fieldSelector"))
        timeout = float(query.get("timeoutSeconds") or 30)
        deadline = time.monotonic() + timeout
        start_rv = query.get("resourceVersion")
        with c.lock:
            fault = c.watch_faults.pop(0) if c.watch_faults else None
        if fault == "504":
            raise ApiError(504, "Timeout", f"Too large resource version: {start_rv}, current: {c.rv}",
                           {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                            "retryAfterSeconds": 1})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        if fault == "410":
            gone = ApiError(410, "Expired", f"too old resource version: {start_rv} ({c.rv})").status()
            chunk(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            chunk(b"")
            self.close_connection = True
            return
        if fault == "cut":  # half an event, then the connection drops without the closing chunk
            self.wfile.write(b"40\r\n" + b'{"type": "MODIFIED", "object": {"metadata": {"na')
            self.wfile.flush()
            self.close_connection = True
            import socket

            self.connection.shutdown(socket.SHUT_RDWR)
            return

        def matches(r: Resource, obj: dict[str, Any]) -> bool:
            return (r == res and (namespace is None or obj["metadata"].get("namespace") == namespace)
                    and lm(obj["metadata"].get("labels") or {}) and fm(obj))

        with c.lock:
            if start_rv in (None, "", "0"):
                initial = [("ADDED", o) for o in c.list(res, namespace, query.get("labelSelector"),
                                                        query.get("fieldSelector"))[0]]
                since = c.rv
            else:
                initial, since = [], int(start_rv)
            pos = next((i for i, e in enumerate(c.events) if e.rv > since), len(c.events))
        try:
            for type_, obj in initial:
                chunk(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
            while True:
                with c.lock:
                    while pos >= len(c.events):
                        left = deadline - time.monotonic()
                        if left <= 0 or self.server.closing:  # type: ignore[attr-defined]
                            break
                        c.changed.wait(min(left, 0.2))
                    fresh, pos = c.events[pos:], len(c.events)
                for ev in fresh:
                    if matches(ev.resource, ev.obj):
                        chunk(json.dumps({"type": ev.type, "object": ev.obj}).encode() + b"\n")
                if time.monotonic() >= deadline or self.server.closing:  # type: ignore[attr-defined]
                    break
            chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def _find_key(self: FakeCluster, res: Resource, namespace: str | None, name: str) -> bool:
    with self.lock:
        return self.key(res, namespace, name) in self.objects


FakeCluster.find_key = _find_key  # type: ignore[attr-defined]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    closing = False
    request_queue_size = 128  # the listen backlog: a hundred clients connecting at once are queued, not reset


class FakeApiServer:
    """Start with ``with FakeApiServer() as api:``; ``api.url`` is the base URL."""

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.cluster = cluster or FakeCluster()
        handler = type("BoundHandler", (Handler,), {"cluster": self.cluster})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-apiserver", daemon=True)

    def start(self) -> "FakeApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.closing = True
        with self.cluster.lock:
            self.cluster.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }


# ----------------------------------------------------------------------------- kubelet


@dataclass
class FakeKubelet:
    """Plays controller-manager + kubelet for Deployments: keeps one Pod per replica and
    reports readiness in the Deployment status. Deployments whose name is in
    ``never_ready`` get Pods stuck in CrashLoopBackOff (Ready=False) instead.
    Writes go straight to the store, so they are not counted as client requests."""

    cluster: FakeCluster
    delay_s: float = 0.05
    never_ready: set[str] = field(default_factory=set)
    # Deployments whose pods cannot be created (quota, admission): name -> the reason's message.
    fail_create: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "FakeKubelet":
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.delay_s):
            try:
                self.reconcile()
            except Exception:  # pragma: no cover - a kubelet bug must show, but not kill the loop
                import traceback

                traceback.print_exc()

    def reconcile(self) -> None:
        c = self.cluster
        deps = _BY_PATH[("apps", "v1", "deployments")]
        pods = _BY_PATH[("", "v1", "pods")]
        with c.lock:
            pods_in: dict[str, list[dict[str, Any]]] = {}  # listed once per namespace and tick, not per Deployment
            for (g, p, ns, name), dep in list(c.objects.items()):
                if (g, p) != ("apps", "deployments"):
                    continue
                if ns not in pods_in:
                    pods_in[ns] = c.list(pods, ns)[0]
                spec = dep.get("spec") or {}
                want = int(spec.get("replicas", 1))
                labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
                selector = (spec.get("selector") or {}).get("matchLabels") or {}
                owned = [o for o in pods_in[ns]
                         if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
                         and (o["metadata"].get("ownerReferences") or [{}])[0].get("name") == name]
                ok = name not in self.never_ready
                template_hash = hashlib.sha256(json.dumps(spec.get("template") or {}, sort_keys=True).encode()).hexdigest()[:10]
                if name in self.fail_create:
                    status = {"observedGeneration": dep["metadata"]["generation"], "replicas": len(owned),
                              "conditions": [
                                  {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                                   "message": f'ReplicaSet "{name}-{template_hash}" is progressing.'},
                                  {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                   "message": self.fail_create[name]}]}
                    if dep.get("status") != status:
                        c.write(deps, ns, name, {**dep, "status": status}, subresource="status")
                    continue
                # RollingUpdate (maxSurge 1, maxUnavailable 0): one new pod per tick, then one old pod goes.
                old = [o for o in owned if o["metadata"]["labels"].get("pod-template-hash") != template_hash]
                owned = [o for o in owned if o["metadata"]["labels"].get("pod-template-hash") == template_hash]
                for pod in owned[want:]:
                    c.delete(pods, ns, pod["metadata"]["name"])
                owned = owned[:want]
                if old and len(owned) < want:
                    target = len(owned) + 1  # surge one new pod this tick
                else:
                    target = want
                if old and (len(owned) >= want or not want):
                    for pod in old:
                        c.delete(pods, ns, pod["metadata"]["name"])
                    old = []
                elif old and owned and ok:
                    c.delete(pods, ns, old[0]["metadata"]["name"])  # a new one is ready: retire an old one
                    old = old[1:]
                while len(owned) < target:
                    pod = c.create(pods, ns, {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"generateName": f"{name}-", "labels": {**labels, "pod-template-hash": template_hash},
                                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                          "uid": dep["metadata"]["uid"], "controller": True}]},
                        "spec": copy.deepcopy((spec.get("template") or {}).get("spec") or {}),
                    })
                    c.write(pods, ns, pod["metadata"]["name"], {**pod, "status": _pod_status(pod, ok)}, subresource="status")
                    owned.append(pod)
                updated = len(owned)
                ready = (updated if ok else 0) + len(old)  # old pods were ready
                rolling = bool(old) or updated < want
                status: dict[str, Any] = {
                    "observedGeneration": dep["metadata"]["generation"], "replicas": updated + len(old),
                    "updatedReplicas": updated,
                    "conditions": [
                        {"type": "Available", "status": "True" if ready >= want else "False",
                         "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
                         "message": "Deployment has minimum availability." if ready >= want
                         else "Deployment does not have minimum availability."},
                        {"type": "Progressing", "status": "True",
                         "reason": "ReplicaSetUpdated" if rolling or not ok else "NewReplicaSetAvailable",
                         "message": f'ReplicaSet "{name}-{template_hash}" '
                                    + ("is progressing." if rolling or not ok else "has successfully progressed.")},
                    ],
                }
                if ready:
                    status["readyReplicas"] = ready
                    status["availableReplicas"] = ready
                unavailable = max(want - (updated if ok else 0), 0)  # desired pods not yet on the new template and ready
                if unavailable:
                    status["unavailableReplicas"] = unavailable
                if dep.get("status") != status:
                    c.write(deps, ns, name, {**dep, "status": status}, subresource="status")


def _pod_status(pod: dict[str, Any], ok: bool) -> dict[str, Any]:
    containers = [c.get("name", "c") for c in (pod.get("spec") or {}).get("containers") or []]
    if ok:
        return {"phase": "Running", "conditions": [
            {"type": "Initialized", "status": "True"}, {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": n, "ready": True, "restartCount": 0, "state": {"running": {}}} for n in containers]}
    return {"phase": "Running", "conditions": [
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
         "message": f"containers with unready status: [{' '.join(containers)}]"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
         "message": f"containers with unready status: [{' '.join(containers)}]"},
        {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": n, "ready": False, "restartCount": 3,
                               "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                     "message": "back-off 40s restarting failed container"}}}
                              for n in containers]}
