"""The names rollout gives a model's Kubernetes objects, as pure functions of the model
name and the version, so the platform that creates the objects and the metric packs
that find their series (Envoy clusters are named after the version's Service) agree.

Model names are DNS-1123 labels (validated where they enter); versions are label
values (letters, digits, ``-``, ``_``, ``.``). Object names must be DNS-1123 labels,
and Service names DNS-1035 labels (start with a letter), so a version is slugged
(``1.2.0`` -> ``1-2-0``) with a short hash when the slug differs from the version, and
a model name that starts with a digit gets an ``m-`` prefix.
"""

from __future__ import annotations

import hashlib
import re


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
