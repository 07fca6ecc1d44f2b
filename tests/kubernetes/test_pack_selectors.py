"""Each metric pack's selector finds the series of the objects `rollout render` produces,
and only those, for awkward versions (1.2.0, V2, rc_1) and model names starting with a
digit. The series labels are derived from the rendered objects the way each data plane
derives them:

- Istio: canonical service/revision from the pod labels;
- MLServer: ``model`` is the served model's name; its ``version`` label is the version in
  the request's path, ``"None"`` for ``/v2/models/<model>/infer`` (mlserver/handlers/dataplane.py,
  1.7.1); ``model_version`` is the target label the rendered PodMonitor's relabeling
  derives from the pod's labels (Prometheus' ``__meta_kubernetes_pod_label_<name>``);
- Envoy Gateway: ``envoy_cluster_name`` is the xDS cluster name, derived from the rendered
  HTTPRoute by ``envoy_gateway_clusters`` below, which follows Envoy Gateway v1.4.2 (the
  version the kind workflow runs; the same in v1.9.0):
  internal/gatewayapi/helpers.go (``irRouteDestinationName``: ``httproute/<ns>/<name>/rule/<i>``,
  ``irDestinationSettingName``: ``.../backend/<j>``, j the backendRef's index),
  internal/gatewayapi/route.go (a zero-weight backendRef gets no destination;
  ``getBackendFilters``: a destination has filters only when its backendRef has),
  internal/ir/xds.go (``NeedsClusterPerSetting``: a cluster per backend when one has
  filters, else one cluster for the rule), internal/gatewayapi/filters.go (a RequestMirror
  at filter index k: ``.../rule/<i>-mirror-<k>``). The label is Envoy's
  ``envoy.cluster_name`` tag as Prometheus shows it (Envoy Gateway's own
  charts/gateway-addons-helm/dashboards/envoy-clusters.json selects on it).
"""

from __future__ import annotations

import re

import pytest

from rollout.analysis import packs, promql
from rollout.analysis.base import QueryContext
from rollout.errors import Unsupported
from rollout.platforms.base import Traffic
from rollout.platforms.kubernetes.render import Renderer
from rollout.registry.base import ModelVersion
from tests.kubernetes.helpers import NAMESPACE, make_spec

pytestmark = pytest.mark.timeout(120)

MODELS = ["fraud", "3d-model"]
VERSIONS = ["v1", "1.2.0", "V2", "rc_1", "1-2-0"]
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def matchers(selector: str) -> list[tuple[str, str, str]]:
    """PromQL label matchers -> (label, op, unescaped value)."""
    out, pos = [], 0
    while pos < len(selector):
        m = _MATCHER.match(selector, pos)
        assert m, f"cannot read matcher at {selector[pos:]!r}"
        out.append((m[1], m[2], m[3].encode().decode("unicode_escape")))
        pos = m.end()
    return out


def selects(selector: str, labels: dict[str, str]) -> bool:
    for name, op, value in matchers(selector):
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value, "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def series_labels(pack: str, model: str, version: str) -> dict[str, str]:
    """The labels the data plane puts on this version's series, from the rendered objects."""
    r = Renderer(model, make_spec("istio").platform)
    deployment = r.deployment(ModelVersion(model, version, uri=f"s3://m/{model}/{version}"), 1)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if pack == "istio":  # Istio's canonical labels: app.kubernetes.io/name and .../version of the pod
        return {"reporter": "destination", "destination_workload": deployment["metadata"]["name"],
                "destination_workload_namespace": NAMESPACE,
                "destination_canonical_service": pod_labels["app.kubernetes.io/name"],
                "destination_canonical_revision": pod_labels["app.kubernetes.io/version"]}
    if pack == "mlserver":
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return {"model": env["MLSERVER_MODEL_NAME"], "version": "None", **target_labels(r.pod_monitor(), pod_labels)}
    raise AssertionError(pack)


def target_labels(monitor: dict, pod_labels: dict[str, str]) -> dict[str, str]:
    """What the PodMonitor's relabelings add to a pod's series (Prometheus' default
    ``replace`` action: source values joined by ';', regex (.*), replacement $1)."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod_labels.items()}
    out = {}
    for r in monitor["spec"]["podMetricsEndpoints"][0].get("relabelings") or []:
        assert set(r) <= {"sourceLabels", "targetLabel"}, r  # only the default action is emulated
        out[r["targetLabel"]] = ";".join(meta.get(src, "") for src in r["sourceLabels"])
    return out


def selector(pack: str, model: str, version: str, stable: str | None = None, candidate: str | None = None) -> str:
    ctx = QueryContext(model=model, version=version, stable=stable, candidate=candidate or version,
                       namespace=NAMESPACE)
    return promql.render(packs.PACKS[pack].selector, ctx)


@pytest.mark.parametrize("pack", ["istio", "mlserver"])
@pytest.mark.parametrize("model", MODELS)
def test_each_pack_selects_exactly_the_rendered_version(pack: str, model: str) -> None:
    for version in VERSIONS:
        sel = selector(pack, model, version)
        assert selects(sel, series_labels(pack, model, version)), (pack, model, version, sel)
        for other in VERSIONS:
            if other != version:
                assert not selects(sel, series_labels(pack, model, other)), (pack, model, version, other, sel)


def envoy_gateway_clusters(route: dict) -> dict[str, set[str]]:
    """Envoy Gateway's cluster names for an HTTPRoute -> the Services whose requests each
    one carries (the rules are cited in the module docstring)."""
    ns, name = route["metadata"]["namespace"], route["metadata"]["name"]
    out: dict[str, set[str]] = {}
    for i, rule in enumerate(route["spec"].get("rules") or []):
        dest = f"httproute/{ns}/{name}/rule/{i}"
        settings = [(j, b) for j, b in enumerate(rule.get("backendRefs") or []) if b.get("weight", 1) != 0]
        if any(b.get("filters") for _, b in settings):
            for j, b in settings:
                out[f"{dest}/backend/{j}"] = {b["name"]}
        elif settings:
            out[dest] = {b["name"] for _, b in settings}
        for k, f in enumerate(rule.get("filters") or []):
            if f["type"] == "RequestMirror":
                out[f"{dest}-mirror-{k}"] = {f["requestMirror"]["backendRef"]["name"]}
    return out


SPLITS = [  # every kind of split the strategies produce
    lambda s, c: Traffic(s), lambda s, c: Traffic(s, c, 0), lambda s, c: Traffic(s, c, 30),
    lambda s, c: Traffic(s, c, 100), lambda s, c: Traffic(s, c, 0, 100), lambda s, c: Traffic(s, c, 10, 50),
]


def _gets_requests(traffic: Traffic, version: str) -> bool:
    if version == traffic.candidate:
        return traffic.weight > 0 or traffic.mirror > 0
    return not traffic.candidate or traffic.weight < 100


@pytest.mark.parametrize("model", MODELS)
def test_gateway_api_pack_selects_exactly_the_envoy_gateway_clusters_of_each_version(model: str) -> None:
    """Every ordered pair of awkward versions in every split rollout renders: a version's
    selector matches each cluster that carries its requests (there is one whenever it gets
    traffic or a mirror) and no cluster that carries another version's."""
    r = Renderer(model, make_spec("gateway-api").platform)
    checked = 0
    for stable in VERSIONS:
        for candidate in VERSIONS:
            if candidate == stable:
                continue
            for split in SPLITS:
                traffic = split(stable, candidate)
                clusters = envoy_gateway_clusters(r.httproute(traffic))
                for version in filter(None, (traffic.stable, traffic.candidate)):
                    service = r.version_service(ModelVersion(model, version, uri="s3://m"))["metadata"]["name"]
                    sel = selector("gateway-api", model, version, traffic.stable, traffic.candidate)
                    mine = {c for c, services in clusters.items() if services == {service}}
                    picked = {c for c in clusters if selects(sel, {"envoy_cluster_name": c})}
                    assert picked == mine, (model, traffic, version, sel, clusters)
                    assert bool(mine) == _gets_requests(traffic, version), (model, traffic, version, clusters)
                    checked += 1
    assert checked == 20 * (1 + 5 * 2)


def test_without_backend_filters_envoy_gateway_would_merge_the_versions() -> None:
    """Why rollout puts a filter on each backendRef: without one, Envoy Gateway gives the
    rule a single cluster, and no selector could tell stable's requests from the candidate's."""
    route = Renderer("fraud", make_spec("gateway-api").platform).httproute(Traffic("1.2.0", "V2", 30))
    assert len(envoy_gateway_clusters(route)) == 2
    for b in route["spec"]["rules"][0]["backendRefs"]:
        del b["filters"]
    [(name, services)] = envoy_gateway_clusters(route).items()
    assert name == f"httproute/{NAMESPACE}/fraud/rule/0" and len(services) == 2


def test_gateway_api_selector_is_anchored_to_rollouts_route_and_rule() -> None:
    sel = selector("gateway-api", "fraud", "v2", "v1", "v2")
    assert selects(sel, {"envoy_cluster_name": f"httproute/{NAMESPACE}/fraud/rule/0/backend/1"})
    assert selects(sel, {"envoy_cluster_name": f"httproute/{NAMESPACE}/fraud/rule/0-mirror-2"})
    for other in (f"httproute/{NAMESPACE}/fraud-x/rule/0/backend/1", f"httproute/{NAMESPACE}/fraud/rule/0/backend/10",
                  f"httproute/{NAMESPACE}/fraud/rule/1/backend/1", "httproute/other/fraud/rule/0/backend/1",
                  f"grpcroute/{NAMESPACE}/fraud/rule/0/backend/1"):
        assert not selects(sel, {"envoy_cluster_name": other}), other
    assert not selects(sel, {})  # a series without the label (every other Envoy metric)
    stable = selector("gateway-api", "fraud", "v1", "v1", "v2")
    assert not selects(stable, {"envoy_cluster_name": f"httproute/{NAMESPACE}/fraud/rule/0-mirror-0"})


def test_gateway_responses_name_the_version_that_answered() -> None:
    """The filter that splits the clusters is one a caller can use: the answer's
    x-rollout-version header, as through the local router."""
    route = Renderer("fraud", make_spec("gateway-api").platform).httproute(Traffic("1.2.0", "V2", 30))
    headers = [b["filters"][0]["responseHeaderModifier"]["set"] for b in route["spec"]["rules"][0]["backendRefs"]]
    assert headers == [[{"name": "x-rollout-version", "value": "1.2.0"}], [{"name": "x-rollout-version", "value": "V2"}]]


def test_lint_refuses_the_knative_pack_on_kubernetes() -> None:
    from rollout.app import lint
    from rollout.spec import parse_spec

    spec = make_spec("istio").model_dump(mode="json", exclude_none=True)
    spec["analysis"] = {"metrics": [{"name": "errors", "provider": "prometheus", "query": "pack:knative/error_rate",
                                     "judge": {"type": "threshold", "max": 0.1}}],
                        "prometheus": {"url": "http://127.0.0.1:9"}}
    with pytest.raises(Unsupported, match="analysis.metrics.errors.query: pack knative"):
        lint(parse_spec(spec))
