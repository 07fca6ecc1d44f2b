"""Metric packs: ready-made PromQL for the data planes and model servers users run.

A metric selects a pack query with ``query: "pack:<pack>/<query>"`` (provider
``prometheus``). Every pack answers per version of a model, over the analysis window
(``{{interval}}`` = time since the analysis step began):

==================  ==========================================================  ========
query               value                                                       detail
==================  ==========================================================  ========
requests            requests served in the window                               counts
errors              failed requests (5xx; router: also connection failures)     counts
request_rate        requests per second over the window                         counts
error_rate          errors / requests (0 when requests but no error series)     counts
success_rate        1 - error_rate (Flagger's request-success-rate)              counts
latency_mean_ms     mean latency                                                -
latency_p50_ms ..   p50 / p90 / p99 from the histogram (not MLServer)           -
slow_ratio>250ms    share of requests slower than 250 ms; the bound must be     counts
                    one of the pack's histogram buckets (not MLServer)
agreement           shadow: share of mirrored answers equal to stable's          -
                    (local-router only)
==================  ==========================================================  ========

"counts" means the measurement carries ``detail = {"requests", "errors"|"slow",
"bad"}`` over the window, which is what the ``sequential`` judge tests.

Packs and what they assume:

- ``local-router``: this project's router (``rollout_router_*``). Histogram in seconds.
- ``mlserver``: MLServer's own metrics port. It exports a *summary* without buckets, so
  only ``latency_mean_ms`` exists there: no percentiles, no ``slow_ratio``. MLServer's
  own ``version`` label is the version in the request's path, ``"None"`` for
  ``/v2/models/<model>/infer`` - what callers through a Service or a gateway send - so the
  pack selects a version by ``model_version``, the target label rollout's PodMonitor sets
  from the pod's ``app.kubernetes.io/version`` (manifests/podmonitor.yaml). A Prometheus
  that scrapes MLServer by other means must set that target label itself.
Selectors use only what rollout sets itself (tests/kubernetes/test_pack_selectors.py
checks each against the objects ``rollout render`` produces):

- ``istio``: ``istio_requests_total`` / ``istio_request_duration_milliseconds`` with
  ``reporter="destination"``, selected by Istio's canonical service and revision, which
  Istio takes from the pod labels ``app.kubernetes.io/name`` (the model) and
  ``app.kubernetes.io/version`` (the version) that rollout puts on every model pod.
- ``gateway-api``: the Envoy cluster stats of Envoy Gateway (``envoy_cluster_upstream_rq_total``,
  ``envoy_cluster_upstream_rq_xx``, ``envoy_cluster_upstream_rq_time``; Prometheus scrapes the
  proxy pods' ``metrics`` port, ``/stats/prometheus``). Envoy Gateway names clusters per route
  rule, ``httproute/<namespace>/<route>/rule/<i>``, one cluster for all backends of the rule,
  unless a backendRef carries a filter: then each backend gets its own cluster,
  ``.../rule/<i>/backend/<position>``. rollout puts an ``x-rollout-version`` response header
  filter on every backendRef it renders, stable at position 0 and the candidate at 1, so
  each version has its own series (``{{gateway_clusters_re}}``, rollout/names.py); the
  candidate's shadow traffic is the rule's mirror cluster, ``.../rule/0-mirror-<k>``. It
  assumes the default cluster naming: an EnvoyProxy ``telemetry.metrics.clusterStatName``
  renames the series and the pack finds nothing. Traffic sent straight to a version's
  Service (a blue-green preview) does not pass the gateway and is not counted.
- ``knative``: the queue-proxy's ``revision_request_count`` /
  ``revision_request_latencies`` (Knative Serving, KServe serverless), revision named
  ``<model>-<version>``. Rollout's platforms do not deploy Knative revisions, so this
  pack is for Prometheus data of revisions deployed otherwise; ``rollout lint``
  refuses it on the kubernetes platform, where it could never find rollout's pods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rollout.errors import SpecError

PREFIX = "pack:"


@dataclass(frozen=True)
class Pack:
    name: str
    description: str
    selector: str  # label matchers for one version, a template
    requests: str  # PromQL: counter(s) summed over the window, with {sel} and {w}
    errors: str
    histogram: str | None = None  # base name of a histogram (…_bucket, …_sum, …_count)
    histogram_unit_s: float = 1.0  # 1.0 when `le` is in seconds, 0.001 when in milliseconds
    mean_sum: str | None = None  # for summaries: sum and count series names
    mean_count: str | None = None
    buckets_ms: tuple[float, ...] = ()  # bucket bounds slow_ratio may use
    agreement: str | None = None
    # The raw counters behind requests and errors (series selectors with {sel}); counts
    # are their deltas between scrapes (see prometheus.py), never increase()'s extrapolation.
    requests_counters: tuple[str, ...] = ()
    errors_counters: tuple[str, ...] = ()


PACKS: dict[str, Pack] = {
    "local-router": Pack(
        name="local-router",
        description="the project's local router (rollout_router_*)",
        selector='model="{{model}}",version="{{version}}"',
        requests='sum(increase(rollout_router_requests_total{{{sel}}}[{w}]))',
        errors='sum(increase(rollout_router_requests_total{{{sel},code=~"5..|0"}}[{w}]))',
        requests_counters=('rollout_router_requests_total{{{sel}}}',),
        errors_counters=('rollout_router_requests_total{{{sel},code=~"5..|0"}}',),
        histogram="rollout_router_request_duration_seconds",
        histogram_unit_s=1.0,
        buckets_ms=(1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        agreement=(
            'sum(increase(rollout_router_mirror_total{{{sel},result="agree"}}[{w}])) / '
            'sum(increase(rollout_router_mirror_total{{{sel},result=~"agree|disagree"}}[{w}]))'
        ),
    ),
    "mlserver": Pack(
        name="mlserver",
        description="MLServer's metrics port (model_infer_request_*); latency: mean only (a summary, no buckets)",
        selector='model="{{model}}",model_version="{{version}}"',
        requests=('(sum(increase(model_infer_request_success_total{{{sel}}}[{w}])) or vector(0)) + '
                  '(sum(increase(model_infer_request_failure_total{{{sel}}}[{w}])) or vector(0))'),
        errors='sum(increase(model_infer_request_failure_total{{{sel}}}[{w}]))',
        requests_counters=('model_infer_request_success_total{{{sel}}}', 'model_infer_request_failure_total{{{sel}}}'),
        errors_counters=('model_infer_request_failure_total{{{sel}}}',),
        mean_sum="model_infer_request_duration_sum",
        mean_count="model_infer_request_duration_count",
        histogram_unit_s=1.0,
    ),
    "istio": Pack(
        name="istio",
        description="Istio telemetry (istio_requests_total, istio_request_duration_milliseconds)",
        selector=('reporter="destination",destination_workload_namespace="{{namespace}}",'
                  'destination_canonical_service="{{model}}",destination_canonical_revision="{{version}}"'),
        requests='sum(increase(istio_requests_total{{{sel}}}[{w}]))',
        errors='sum(increase(istio_requests_total{{{sel},response_code=~"5.."}}[{w}]))',
        requests_counters=('istio_requests_total{{{sel}}}',),
        errors_counters=('istio_requests_total{{{sel},response_code=~"5.."}}',),
        histogram="istio_request_duration_milliseconds",
        histogram_unit_s=0.001,
        buckets_ms=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000),
    ),
    "gateway-api": Pack(
        name="gateway-api",
        description="Envoy Gateway's cluster stats (envoy_cluster_*, one cluster per backend of rollout's HTTPRoute)",
        selector='envoy_cluster_name=~"{{gateway_clusters_re}}"',
        requests='sum(increase(envoy_cluster_upstream_rq_total{{{sel}}}[{w}]))',
        errors='sum(increase(envoy_cluster_upstream_rq_xx{{{sel},envoy_response_code_class="5"}}[{w}]))',
        requests_counters=('envoy_cluster_upstream_rq_total{{{sel}}}',),
        errors_counters=('envoy_cluster_upstream_rq_xx{{{sel},envoy_response_code_class="5"}}',),
        histogram="envoy_cluster_upstream_rq_time",
        histogram_unit_s=0.001,
        buckets_ms=(0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                    600000, 1800000, 3600000),
    ),
    "knative": Pack(
        name="knative",
        description="Knative / KServe queue-proxy (revision_request_count, revision_request_latencies)",
        selector='namespace_name="{{namespace}}",revision_name="{{model}}-{{version}}"',
        requests='sum(increase(revision_request_count{{{sel}}}[{w}]))',
        errors='sum(increase(revision_request_count{{{sel},response_code_class="5xx"}}[{w}]))',
        requests_counters=('revision_request_count{{{sel}}}',),
        errors_counters=('revision_request_count{{{sel},response_code_class="5xx"}}',),
        histogram="revision_request_latencies",
        histogram_unit_s=0.001,
        buckets_ms=(5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900,
                    1000, 2000, 5000, 10000, 20000, 50000, 100000),
    ),
}

COUNT_QUERIES = ("requests", "errors", "request_rate", "error_rate", "success_rate")
QUANTILES = {"latency_p50_ms": 0.5, "latency_p90_ms": 0.9, "latency_p99_ms": 0.99}
_REF = re.compile(r"^pack:(?P<pack>[a-z][a-z0-9-]*)/(?P<query>[a-z0-9_]+)(?:>(?P<bound>[0-9]+(?:\.[0-9]+)?)ms)?$")


@dataclass(frozen=True)
class PackQuery:
    """What the provider runs for one pack query. Templates still hold {{placeholders}}.

    ``value`` None means: derive the value from the counts (``derive``)."""

    pack: str
    query: str
    value: str | None
    requests: str | None = None
    bad: str | None = None
    bad_key: str = "errors"
    derive: str = ""  # "ratio", "success", "rate", "requests", "bad"
    # Counter selectors whose deltas give the counts, each with a sign (+1 / -1).
    requests_counters: tuple[tuple[float, str], ...] = ()
    bad_counters: tuple[tuple[float, str], ...] = ()


def _le_matcher(bound: float) -> str:
    """Exporters write the same bucket as "1", "1.0" or "0.250": match all spellings."""
    text = f"{bound:g}"
    tail = "0*" if "." in text else "(\\\\.0+)?"
    return re.escape(text).replace("\\", "\\\\") + tail


def is_pack_ref(query: str) -> bool:
    return query.strip().startswith(PREFIX)


def _fill(template: str, pack: Pack) -> str:
    return template.format(sel=pack.selector, w="{{interval}}")


def known_queries(pack: Pack) -> list[str]:
    names = list(COUNT_QUERIES)
    if pack.mean_sum or pack.histogram:
        names.append("latency_mean_ms")
    if pack.histogram:
        names += list(QUANTILES) + ["slow_ratio>Nms"]
    if pack.agreement:
        names.append("agreement")
    return names


def resolve(ref: str) -> PackQuery:
    """Turn ``pack:<pack>/<query>`` into PromQL templates; SpecError names what exists."""
    m = _REF.match(ref.strip())
    if not m:
        raise SpecError(f"query {ref!r}: expected pack:<pack>/<query> (e.g. pack:local-router/error_rate, "
                        f"pack:istio/slow_ratio>250ms); packs: {', '.join(PACKS)}")
    pack = PACKS.get(m["pack"])
    if pack is None:
        raise SpecError(f"query {ref!r}: unknown metric pack {m['pack']!r}; known: {', '.join(PACKS)}")
    q, bound = m["query"], m["bound"]
    unknown = SpecError(f"query {ref!r}: pack {pack.name} has no query {q!r}; known: {', '.join(known_queries(pack))}"
                        + ("" if pack.histogram else f" ({pack.description})"))
    if bound is not None and q != "slow_ratio":
        raise SpecError(f"query {ref!r}: only slow_ratio takes a latency bound (>Nms)")
    requests, errors = _fill(pack.requests, pack), _fill(pack.errors, pack)
    if q in COUNT_QUERIES:
        return PackQuery(pack.name, q, None, requests, errors, "errors",
                         {"requests": "requests", "errors": "bad", "request_rate": "rate",
                          "error_rate": "ratio", "success_rate": "success"}[q],
                         tuple((1.0, _fill(c, pack)) for c in pack.requests_counters),
                         tuple((1.0, _fill(c, pack)) for c in pack.errors_counters))
    if q == "latency_mean_ms":
        if pack.histogram:
            s, c = pack.histogram + "_sum", pack.histogram + "_count"
        elif pack.mean_sum and pack.mean_count:
            s, c = pack.mean_sum, pack.mean_count
        else:
            raise unknown
        unit_ms = pack.histogram_unit_s * 1000.0
        value = (f"sum(increase({s}{{{pack.selector}}}[{{{{interval}}}}])) / "
                 f"sum(increase({c}{{{pack.selector}}}[{{{{interval}}}}])) * {unit_ms:g}")
        return PackQuery(pack.name, q, value)
    if q in QUANTILES and pack.histogram:
        unit_ms = pack.histogram_unit_s * 1000.0
        value = (f"histogram_quantile({QUANTILES[q]}, sum by (le) (rate({pack.histogram}_bucket{{{pack.selector}}}"
                 f"[{{{{interval}}}}]))) * {unit_ms:g}")
        return PackQuery(pack.name, q, value)
    if q == "slow_ratio" and pack.histogram:
        if bound is None:
            raise SpecError(f"query {ref!r}: slow_ratio needs a latency bound, e.g. pack:{pack.name}/slow_ratio>250ms")
        bound_ms = float(bound)
        if not any(abs(b - bound_ms) < 1e-9 for b in pack.buckets_ms):
            raise SpecError(f"query {ref!r}: {bound}ms is not a histogram bucket of pack {pack.name}; "
                            f"buckets (ms): {', '.join(f'{b:g}' for b in pack.buckets_ms)}")
        le = _le_matcher(bound_ms * 0.001 / pack.histogram_unit_s)
        count = f"sum(increase({pack.histogram}_count{{{pack.selector}}}[{{{{interval}}}}]))"
        fast = f'sum(increase({pack.histogram}_bucket{{{pack.selector},le=~"{le}"}}[{{{{interval}}}}]))'
        counter = f"{pack.histogram}_count{{{pack.selector}}}"
        bucket = f'{pack.histogram}_bucket{{{pack.selector},le=~"{le}"}}'
        return PackQuery(pack.name, f"slow_ratio>{bound}ms", None, count, f"({count} - {fast})", "slow", "ratio",
                         ((1.0, counter),), ((1.0, counter), (-1.0, bucket)))
    if q == "agreement" and pack.agreement:
        return PackQuery(pack.name, q, _fill(pack.agreement, pack))
    raise unknown
