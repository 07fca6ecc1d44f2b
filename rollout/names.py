"""Names: one validator per kind of name that comes from outside (the CLI, a spec, a git
tree, MLflow, an aliases file, the Kubernetes flags), and the names rollout gives a
model's Kubernetes objects (below), which the platform and the metric packs share.

Names become file names, label values, URL path segments and process arguments, so each
is checked where it enters, with ``re.fullmatch`` (``re.match`` with ``$`` lets a trailing
newline through) and a length bound. Every function returns the name unchanged or raises
``BadInput`` naming the kind, the value (shortened, control characters escaped) and the rule.
"""

from __future__ import annotations

import hashlib
import re

from rollout.errors import BadInput, short_repr

# DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, <= 63.
DNS1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
# DNS-1123 subdomain: dot-separated labels, <= 253 in all (most Kubernetes object names).
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
# Versions become label values and file names: a conservative subset of both (no '/', no '..').
VERSION = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# Aliases (MLflow allows letters, digits, '_' and '-'); also used for git environment names.
ALIAS = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_]{0,61}[A-Za-z0-9])?")


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str, max_len: int = 63) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{kind} {short_repr(value)} is not a string")
    if len(value) > max_len or not pattern.fullmatch(value) or ".." in value:
        raise BadInput(f"{kind} {short_repr(value)} is not valid: {rule}")
    return value


def model_name(name: object) -> str:
    """A model name: a DNS-1123 label (it names Kubernetes objects, files and label values)."""
    return _check("model name", name, DNS1123_LABEL, "use 1-63 lower-case letters, digits and '-', "
                  "starting and ending with a letter or digit (a DNS-1123 label)")


def version(value: object) -> str:
    """A model version: 1-63 letters, digits, '-', '_' or '.', no '..'."""
    return _check("version", value, VERSION, "use 1-63 letters, digits, '-', '_' or '.', "
                  "starting and ending with a letter or digit")


def alias(value: object) -> str:
    """A registry alias (``name@alias``) or environment name."""
    return _check("alias", value, ALIAS, "use 1-63 letters, digits, '-' or '_', "
                  "starting and ending with a letter or digit")


def k8s_namespace(value: object) -> str:
    """A Kubernetes namespace: a DNS-1123 label; checked before any API URL is built."""
    return _check("Kubernetes namespace", value, DNS1123_LABEL, "use 1-63 lower-case letters, digits and '-', "
                  "starting and ending with a letter or digit (a DNS-1123 label)")


def k8s_name(value: object) -> str:
    """A Kubernetes object name: a DNS-1123 subdomain of at most 253 characters."""
    return _check("Kubernetes object name", value, DNS1123_SUBDOMAIN, "use lower-case letters, digits, '-' and "
                  "'.', at most 253, each dot-separated part starting and ending with a letter or digit",
                  max_len=253)


def k8s_label(value: object) -> str:
    """A name that must be a DNS-1123 label (Service names, label-derived object names)."""
    return _check("Kubernetes name", value, DNS1123_LABEL, "use 1-63 lower-case letters, digits and '-', "
                  "starting and ending with a letter or digit (a DNS-1123 label)")

# ---- The names rollout gives a model's Kubernetes objects, as pure functions of the model
# name and the version, so the platform that creates the objects and the metric packs that
# find their series (Envoy clusters are named after the version's Service) agree. Object
# names must be DNS-1123 labels, Service names DNS-1035 labels (start with a letter), so a
# version is slugged (``1.2.0`` -> ``1-2-0``) with a short hash when the slug differs from
# the version, and a model name that starts with a digit gets an ``m-`` prefix.


def base_name(model: str) -> str:
    """Service names must be DNS-1035 labels (start with a letter); model names may start with a digit."""
    return model if model[0].isalpha() else f"m-{model}"


def version_slug(version: str) -> str:
    """A DNS-1123 form of a version; a short hash keeps distinct versions distinct."""
    slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-") or "v"
    if slug != version:
        slug = f"{slug}-{hashlib.sha1(version.encode()).hexdigest()[:5]}"
    return slug


def version_name(model: str, version: str) -> str:
    """Name of a version's Deployment and Service (at most 63 characters)."""
    name = f"{base_name(model)}-{version_slug(version)}"
    if len(name) > 63:
        name = f"{base_name(model)[:52].rstrip('-')}-{hashlib.sha1(version.encode()).hexdigest()[:10]}"
    return name


def stable_name(model: str) -> str:
    """The model's stable Service and its routing objects (HTTPRoute, VirtualService, ...)."""
    return base_name(model)


def state_name(model: str) -> str:
    return f"{model}-rollout-state"


def lease_name(model: str) -> str:
    return f"{model}-rollout-lock"


def subset_name(version: str) -> str:
    return f"v-{version_slug(version)}"[:63].rstrip("-")


def route_backends(stable: str | None, candidate: str | None) -> list[str]:
    """The versions in the order rollout lists them as the backends of a route's first
    rule (HTTPRoute backendRefs): stable first, then the candidate. Envoy Gateway names a
    backend's cluster by its position there, so the renderer and the gateway-api metric
    pack both take the order from here."""
    return [v for v in (stable, candidate) if v]


def envoy_gateway_clusters(namespace: str, model: str, version: str, stable: str | None,
                           candidate: str | None) -> tuple[str, list[str]]:
    """The Envoy Gateway clusters that carry ``version``'s requests through rollout's
    HTTPRoute, as (prefix, alternatives): the cluster names are the prefix followed by
    one alternative (regular expressions, RE2).

    Envoy Gateway (v1.x, default ``clusterStatName``) names the clusters of an HTTPRoute
    rule ``httproute/<namespace>/<route>/rule/<rule index>`` - one cluster for all its
    backends - unless a backendRef carries filters; then each backend gets its own cluster,
    ``.../rule/<i>/backend/<position>``. Rollout gives every backendRef a filter
    (the ``x-rollout-version`` response header), so each version has its own cluster and
    its own ``envoy_cluster_*`` series. A RequestMirror filter at position ``k`` of the
    rule's filters mirrors to ``.../rule/<i>-mirror-<k>``: the candidate's shadow traffic.
    """
    prefix = f"httproute/{namespace}/{stable_name(model)}/rule/0"
    order = route_backends(stable, candidate)
    alternatives = [f"/backend/{order.index(version)}"] if version in order else []
    if candidate and version == candidate:
        alternatives.append("-mirror-[0-9]+")
    return prefix, alternatives


# ----------------------------------------------------------------------------- storage URIs

# What KServe's storage initializer downloads (its ClusterStorageContainer's URI formats),
# plus pvc://<claim>/<path>, which the Kubernetes platform mounts into the initializer.
CLUSTER_SCHEMES = ("s3", "gs", "https", "http", "hdfs", "webhdfs", "hf", "pvc")


def uri_scheme(uri: str) -> str:
    """The scheme of ``uri`` ("" for a plain path; ``C:\\...`` is a path, not scheme ``c``)."""
    head, sep, _ = uri.partition(":")
    if not sep or len(head) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head):
        return ""
    return head.lower()


def cluster_readable(uri: str) -> bool:
    """Whether a cluster's storage initializer can download ``uri`` (``scheme://...``)."""
    return uri_scheme(uri) in CLUSTER_SCHEMES and uri.split(":", 1)[1].startswith("//")
