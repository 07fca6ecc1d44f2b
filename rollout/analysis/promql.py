"""PromQL templates: ``{{model}}``, ``{{version}}``, ``{{namespace}}``, ``{{interval}}``,
and the names rollout gives a version's objects on Kubernetes (see rollout/names.py):

- ``{{service}}``: the version's Service (and Deployment) name;
- ``{{route}}``: the model's HTTPRoute / VirtualService name;
- ``{{gateway_clusters_re}}``: a regular expression (for ``=~``) of the Envoy Gateway
  clusters that carry this version's requests through rollout's HTTPRoute (its backend,
  and for the candidate also the mirror of a shadow step).

Every substituted value is checked against a conservative character set first (a value
that could leave a label matcher is refused, not "cleaned"), then escaped for the
double-quoted string it is meant to sit in. Regex variants (``{{version_re}}`` ...)
are additionally regex-escaped, for ``=~`` matchers.
"""

from __future__ import annotations

import re

from rollout.analysis.base import QueryContext
from rollout.names import envoy_gateway_clusters, stable_name, version_name

PLACEHOLDERS = ("model", "version", "namespace", "interval", "service", "route", "gateway_clusters_re")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
# DNS-1123 names and the registry's version pattern are both inside this set.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")


class UnsafeLabelValue(ValueError):
    """A value that could break out of a PromQL label matcher; the query is not run."""


def escape_label_value(value: str) -> str:
    """Escape for a double-quoted PromQL string (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_regex(value: str) -> str:
    """Escape for an RE2 ``=~`` matcher inside a double-quoted PromQL string."""
    return escape_label_value(re.escape(value))


def checked(name: str, value: str) -> str:
    if not _SAFE_VALUE.fullmatch(value):
        raise UnsafeLabelValue(
            f"{name} {value!r} is not allowed in a PromQL query: use letters, digits, '-', '_' and '.' "
            "(starting and ending with a letter or digit)"
        )
    return value


def interval(window_s: float) -> str:
    """A PromQL duration covering the window, whole seconds, at least 1s."""
    return f"{max(1, int(round(window_s)))}s"


def values(ctx: QueryContext) -> dict[str, str]:
    raw = {"model": ctx.model, "version": ctx.version, "namespace": ctx.namespace}
    out: dict[str, str] = {}
    for key, value in raw.items():
        safe = checked(key, value)
        out[key] = escape_label_value(safe)
        out[f"{key}_re"] = escape_regex(safe)
    service = version_name(raw["model"], raw["version"])  # from checked values: [a-z0-9-] only
    out["service"], out["service_re"] = service, escape_regex(service)
    route = stable_name(raw["model"])
    out["route"], out["route_re"] = route, escape_regex(route)
    prefix, alternatives = envoy_gateway_clusters(raw["namespace"], raw["model"], raw["version"],
                                                  ctx.stable, ctx.candidate)
    # the alternatives are rollout's own regular expressions over fixed text: not escaped;
    # a version that is neither stable nor candidate matches no cluster
    out["gateway_clusters_re"] = escape_regex(prefix) + escape_label_value(
        f"({'|'.join(alternatives)})" if alternatives else "/backend/none")
    out["interval"] = interval(ctx.window_s)
    return out


def render(template: str, ctx: QueryContext, extra: dict[str, str] | None = None) -> str:
    """Substitute the placeholders; an unknown placeholder is an error naming the known ones."""
    subst = values(ctx)
    if extra:
        subst.update(extra)

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in subst:
            raise KeyError(f"unknown placeholder {{{{{key}}}}} in query; known: "
                           + ", ".join("{{%s}}" % p for p in PLACEHOLDERS))
        return subst[key]

    return _PLACEHOLDER.sub(sub, template)


def unknown_placeholders(template: str) -> list[str]:
    """For lint: placeholders a template uses that nobody fills."""
    allowed = set(PLACEHOLDERS) | {f"{p}_re" for p in ("model", "version", "namespace", "service", "route")}
    return sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - allowed)
