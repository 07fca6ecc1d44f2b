"""One validator per kind of name that comes from outside: the CLI, a spec, a git tree,
MLflow, an aliases file, the Kubernetes flags.

Names become file names, label values, URL path segments and process arguments, so each
is checked where it enters, with ``re.fullmatch`` (``re.match`` with ``$`` lets a trailing
newline through) and a length bound. Every function returns the name unchanged or raises
``BadInput`` naming the kind, the value (shortened, control characters escaped) and the rule.
"""

from __future__ import annotations

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
