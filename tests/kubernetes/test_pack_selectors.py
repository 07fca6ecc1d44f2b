"""Each metric pack's selector finds the series of the objects `rollout render` produces,
and only those, for awkward versions (1.2.0, V2, rc_1) and model names starting with a
digit. The series labels are derived from the rendered objects the way each data plane
derives them (Istio: canonical service/revision from pod labels; Envoy (Contour):
``<namespace>_<service>_<port>``; MLServer: its model name and version settings)."""

from __future__ import annotations

import re

import pytest

from rollout.analysis import packs, promql
from rollout.analysis.base import QueryContext
from rollout.errors import Unsupported
from rollout.platforms.kubernetes.render import HTTP_PORT, Renderer
from rollout.registry.base import ModelVersion
from tests.kubernetes.helpers import NAMESPACE, make_spec

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
    spec = make_spec("gateway-api" if pack == "gateway-api" else "istio")
    r = Renderer(model, spec.platform)
    mv = ModelVersion(model, version, uri=f"s3://m/{model}/{version}")
    deployment, service = r.deployment(mv, 1), r.version_service(mv)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if pack == "istio":  # Istio's canonical labels: app.kubernetes.io/name and .../version of the pod
        return {"reporter": "destination", "destination_workload": deployment["metadata"]["name"],
                "destination_workload_namespace": NAMESPACE,
                "destination_canonical_service": pod_labels["app.kubernetes.io/name"],
                "destination_canonical_revision": pod_labels["app.kubernetes.io/version"]}
    if pack == "gateway-api":  # Contour names clusters <namespace>_<service>_<port>
        port = service["spec"]["ports"][0]["port"]
        assert port == HTTP_PORT
        return {"envoy_cluster_name": f"{NAMESPACE}_{service['metadata']['name']}_{port}"}
    if pack == "mlserver":  # MLServer labels its metrics with the model's name and version settings
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        return {"model": env["MLSERVER_MODEL_NAME"], "version": env["MLSERVER_MODEL_VERSION"]}
    raise AssertionError(pack)


def selector(pack: str, model: str, version: str) -> str:
    ctx = QueryContext(model=model, version=version, stable=None, candidate=version, namespace=NAMESPACE)
    return promql.render(packs.PACKS[pack].selector, ctx)


@pytest.mark.parametrize("pack", ["istio", "gateway-api", "mlserver"])
@pytest.mark.parametrize("model", MODELS)
def test_each_pack_selects_exactly_the_rendered_version(pack: str, model: str) -> None:
    for version in VERSIONS:
        sel = selector(pack, model, version)
        assert selects(sel, series_labels(pack, model, version)), (pack, model, version, sel)
        for other in VERSIONS:
            if other != version:
                assert not selects(sel, series_labels(pack, model, other)), (pack, model, version, other, sel)


def test_the_old_name_based_selectors_missed_slugged_versions() -> None:
    """What the review found: <model>-<version> is not the name render gives 1.2.0."""
    labels = series_labels("gateway-api", "fraud", "1.2.0")
    old = promql.render('envoy_cluster_name=~"{{namespace_re}}_{{model_re}}-{{version_re}}_[0-9]+"',
                        QueryContext(model="fraud", version="1.2.0", stable=None, candidate=None, namespace=NAMESPACE))
    assert not selects(old, labels)


def test_lint_refuses_the_knative_pack_on_kubernetes() -> None:
    from rollout.app import lint
    from rollout.spec import parse_spec

    spec = make_spec("istio").model_dump(mode="json", exclude_none=True)
    spec["analysis"] = {"metrics": [{"name": "errors", "provider": "prometheus", "query": "pack:knative/error_rate",
                                     "judge": {"type": "threshold", "max": 0.1}}],
                        "prometheus": {"url": "http://127.0.0.1:9"}}
    with pytest.raises(Unsupported, match="analysis.metrics.errors.query: pack knative"):
        lint(parse_spec(spec))
