"""The CEL rules (x-kubernetes-validations) of the upstream CRDs, evaluated as the API
server evaluates them (tests/kubernetes/cel.py): every rule compiles, every object rollout
renders passes every rule that applies to it, and what a real server refuses by a rule -
with the schema alone accepting it - is refused here too, also by the fake API server."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from rollout.errors import PlatformError
from rollout.platforms.base import Traffic
from rollout.platforms.kubernetes.render import Renderer, default_templates_dir
from tests.kubernetes import cel, crds
from tests.kubernetes.helpers import MODEL, make_rig, make_spec, version
from tests.kubernetes.test_manifests import every_rendered_object

pytestmark = pytest.mark.timeout(300)

CRD_FILES = sorted(crds.CRD_DIR.glob("*.yaml")) + sorted((crds.CRD_DIR / "older").glob("*.yaml"))


def _all_rules() -> set[str]:
    out: set[str] = set()
    for path in CRD_FILES:
        for schema in crds.load(path).values():
            out.update(cel.rules(schema))
    return out


def refused(obj: dict, path: Path | None = None) -> list[cel.Refusal]:
    schema = crds.schema(obj["apiVersion"], obj["kind"], str(path) if path else None)
    assert schema is not None, obj["kind"]
    assert crds.validator(obj["apiVersion"], obj["kind"], str(path) if path else None).is_valid(obj), \
        "these cases are schema-valid: only a CEL rule refuses them"
    return cel.refusals(schema, obj)


def test_every_rule_compiles() -> None:
    rules = _all_rules()
    assert len(rules) >= 60  # Gateway API v1.3.0 (HTTPRoute, Gateway, GatewayClass) and v1.2.1, Istio 1.30
    for rule in rules:
        cel._program(rule)  # raises on a rule cel-python cannot parse


def test_transition_rules_run_on_updates_only() -> None:
    """GatewayClass' controllerName is immutable (``self == oldSelf``): any value on create,
    the same value on update."""
    gc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "eg"},
          "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller"}}
    assert crds.errors(gc) == [] and crds.errors(gc, old=gc) == []
    changed = copy.deepcopy(gc)
    changed["spec"]["controllerName"] = "example.com/other"
    assert crds.errors(changed) == []
    assert crds.errors(changed, old=gc) == ["spec.controllerName: Invalid value: Value is immutable "
                                            "(rule: self == oldSelf)"]


def test_every_rendered_object_passes_every_rule_that_applies() -> None:
    seen: set[str] = set()
    checked = 0
    for what, obj in every_rendered_object():
        schema = crds.schema(obj["apiVersion"], obj["kind"])
        if schema is None:
            continue
        for path in [None] + ([CRD_FILES[-1]] if obj["kind"] == "HTTPRoute" and "RequestMirror" not in str(obj)
                              else []):  # and on Gateway API v1.2.1 where it can run there
            root = crds.schema(obj["apiVersion"], obj["kind"], str(path) if path else None)
            problems = cel.refusals(root, obj, seen)
            assert problems == [], (what, [str(p) for p in problems])
            checked += 1
    assert checked >= 20
    # the rules on what rollout writes ran: backendRef filters, the mirror, matches, parentRefs
    for fragment in ("self.type == 'ResponseHeaderModifier'", "!(has(self.percent) && has(self.fraction))",
                     "self.value.startsWith('/')", "p1.__namespace__", "has(self.port)"):
        assert any(fragment in r for r in seen), fragment


def _route(**change) -> dict:
    route = Renderer(MODEL, make_spec("gateway-api").platform).httproute(Traffic("v1", "v2", 20, 10))
    rule = route["spec"]["rules"][0]
    for key, value in change.items():
        rule[key] = value
    return route


def test_a_path_a_real_server_refuses_is_refused() -> None:
    route = _route(matches=[{"path": {"type": "PathPrefix", "value": "/v2//models"}}])
    [r] = refused(route)
    assert r.path == "spec.rules[0].matches[0].path" and "must not contain '//'" in r.message and r.error is None


def test_mirror_with_both_percent_and_fraction_is_refused() -> None:
    route = _route()
    route["spec"]["rules"][0]["filters"][0]["requestMirror"]["fraction"] = {"numerator": 1, "denominator": 10}
    [r] = refused(route)
    assert "Only one of percent or fraction" in r.message


def test_backend_request_timeout_longer_than_the_request_is_refused() -> None:
    route = _route(timeouts={"request": "10s", "backendRequest": "20s"})
    [r] = refused(route)
    assert r.path == "spec.rules[0].timeouts" and "backendRequest timeout cannot be longer" in r.message


def test_a_filter_whose_type_names_another_field_is_refused() -> None:
    route = _route()
    f = route["spec"]["rules"][0]["backendRefs"][1]["filters"][0]
    f["requestHeaderModifier"] = f.pop("responseHeaderModifier")
    messages = {r.message for r in refused(route)}
    assert any("filter.responseHeaderModifier must be specified" in m for m in messages), messages


def test_defaults_are_applied_before_the_rules() -> None:
    """group "" and kind Service are schema defaults; the rule that a Service backendRef
    needs a port only fires once they are filled in, as on a real server."""
    route = _route()
    b = route["spec"]["rules"][0]["backendRefs"][0]
    del b["group"], b["kind"], b["port"]
    [r] = refused(route)
    assert "Must have port for Service reference" in r.message


def test_property_names_are_escaped_as_kubernetes_escapes_them() -> None:
    """parentRefs rules read ``namespace`` as ``__namespace__``: the same Gateway name in two
    namespaces is two parents (accepted); twice in one namespace needs distinct sectionNames."""
    route = _route()
    gw = route["spec"]["parentRefs"][0]
    route["spec"]["parentRefs"] = [gw, {**gw, "namespace": "other"}]
    assert refused(route) == []
    route["spec"]["parentRefs"] = [gw, copy.deepcopy(gw)]
    assert any("sectionName must be unique" in r.message for r in refused(route))


def test_istio_durations_below_a_millisecond_are_refused() -> None:
    r = Renderer(MODEL, make_spec("istio").platform)
    vs = r.virtual_service(Traffic("v1", "v2", 20))
    vs["spec"]["http"][0]["timeout"] = "0s"
    [v] = refused(vs)
    assert v.path == "spec.http[0].timeout" and "greater than 1ms" in v.message
    dr = r.destination_rule(["v1", "v2"])
    dr["spec"]["trafficPolicy"] = {"connectionPool": {"tcp": {"connectTimeout": "10"}}}  # no unit: not a duration
    [d] = refused(dr)
    assert "greater than 1ms" in d.message and d.error  # an evaluation error refuses, as on a real server


def test_the_fake_api_server_refuses_what_a_rule_refuses_and_applies_nothing(cluster, kubelet, kubeconfig, tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), templates)
    route = templates / "httproute.yaml"
    route.write_text(route.read_text().replace("value: /v2", "value: /v2//"))
    rig = make_rig(cluster, kubeconfig, make_spec("gateway-api", templates=str(templates)))
    rig.platform.deploy(version("v1"))
    with pytest.raises(PlatformError, match="must not contain '//'"):
        rig.platform.set_traffic(Traffic("v1"))
    assert cluster.find("httproutes", MODEL, "models") is None


def test_rule_free_kinds_and_unknown_kinds_pass_through() -> None:
    assert crds.errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}) == []
    monitor = Renderer(MODEL, make_spec("istio").platform).pod_monitor()
    assert crds.errors(monitor) == [] and cel.rules(crds.schema(monitor["apiVersion"], monitor["kind"])) == []
    assert yaml.safe_dump(monitor)  # rendered, valid, and no rule to run
