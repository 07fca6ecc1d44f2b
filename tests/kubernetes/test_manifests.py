"""Every manifest rollout can render validates: built-in kinds against the Kubernetes
OpenAPI schemas (kubernetes_validate, strict: unknown fields fail), HTTPRoute,
VirtualService, DestinationRule and PodMonitor against the upstream CRDs shipped in
tests/data/crds (SOURCES.md names project and version), made strict as server-side
apply is (tests/kubernetes/crds.py), and against those CRDs' CEL rules
(tests/kubernetes/cel.py)."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rollout.platforms.base import Traffic
from rollout.platforms.kubernetes.render import Renderer, default_templates_dir, render_spec, version_name
from tests.kubernetes.helpers import MODEL, make_spec, version

K8S_VERSION = "1.33"
REPO = Path(__file__).resolve().parents[2]


def validate(obj: dict) -> None:
    """Raises what a real API server would refuse: the schema (strict), then the CRD's CEL rules."""
    from tests.kubernetes import cel, crds

    v = crds.validator(obj["apiVersion"], obj["kind"])
    if v is not None:
        v.validate(obj)
        refused = cel.refusals(crds.schema(obj["apiVersion"], obj["kind"]), obj)
        if refused:
            raise cel.Refused("; ".join(map(str, refused)))
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def every_rendered_object() -> list[tuple[str, dict]]:
    """All objects for all routers and the splits the strategies produce."""
    out = []
    splits = [Traffic("v1"), Traffic("v1", "v2", 0), Traffic("v1", "v2", 20), Traffic("v1", "v2", 100),
              Traffic("v1", "v2", 0, 40), Traffic("v1", "v2", 0, 100)]
    for router in ("service", "gateway-api", "istio"):
        spec = make_spec(router)
        r = Renderer(MODEL, spec.platform)
        out += [(f"{router} deployment", r.deployment(version("v1"), 3)),
                (f"{router} version service", r.version_service(version("v1.2_RC"))),
                (f"{router} podmonitor", r.pod_monitor())]
        for t in splits:
            if router == "service" and t.mirror:
                continue
            out += [(f"{router} {t}", o) for o in r.routing(t)]
    spec = make_spec("istio", gateway={"name": "ingress", "namespace": "istio-system"}, hosts=["fraud.example.com"])
    out += [("istio with gateway", o) for o in Renderer(MODEL, spec.platform).routing(Traffic("v1", "v2", 30, 10))]
    for name in ("rbac.yaml", "preflight.yaml"):
        for doc in yaml.safe_load_all((REPO / "manifests" / "rbac" / name).read_text()):
            out.append((f"{name} {doc['kind']}", doc))
    return out


@pytest.mark.parametrize("what,obj", every_rendered_object(), ids=lambda x: x if isinstance(x, str) else "")
def test_rendered_object_matches_its_schema(what, obj):
    validate(obj)


def test_schema_checks_are_not_vacuous():
    r = Renderer(MODEL, make_spec("gateway-api").platform)
    route = r.httproute(Traffic("v1", "v2", 0, 40))
    route["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"] = 140
    with pytest.raises(jsonschema.ValidationError, match="140"):
        validate(route)
    dep = r.deployment(version("v1"), 1)
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep)


def test_deployment_has_probes_labels_and_model_uri():
    dep = Renderer(MODEL, make_spec("service").platform).deployment(version("v3"), 2)
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == MODEL and labels["app.kubernetes.io/version"] == "v3"
    assert labels["app.kubernetes.io/managed-by"] == "rollout"
    server = dep["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == "seldonio/mlserver:1.7.1"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"] == [f"s3://models/{MODEL}/v3", "/mnt/models"]
    assert {"name": "MLSERVER_MODEL_IMPLEMENTATION", "value": "mlserver_sklearn.SKLearnModel"} in server["env"]
    assert dep["spec"]["replicas"] == 2


def test_version_names_are_dns_labels_and_distinct():
    names = {version_name(MODEL, v) for v in ("v1", "V1", "v1.0", "v1_0", "1.0", "x" * 63)}
    assert len(names) == 6
    for n in names:
        assert len(n) <= 63 and n[0].isalpha()


def test_user_templates_directory_is_used_and_bad_placeholders_named(tmp_path):
    from rollout.errors import SpecError

    for f in default_templates_dir().glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    text = (tmp_path / "model-server.yaml").read_text().replace("emptyDir: {}", "emptyDir: {medium: Memory}")
    (tmp_path / "model-server.yaml").write_text(text)
    r = Renderer(MODEL, make_spec("service", templates=str(tmp_path)).platform)
    assert r.deployment(version("v1"), 1)["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {"medium": "Memory"}

    (tmp_path / "podmonitor.yaml").write_text((tmp_path / "podmonitor.yaml").read_text().replace("${model}", "${modle}"))
    with pytest.raises(SpecError, match=r"unknown placeholder \$\{modle\}"):
        Renderer(MODEL, make_spec("service", templates=str(tmp_path)).platform).pod_monitor()


def test_local_model_path_is_refused_with_a_way_out():
    from rollout.errors import BadInput
    from rollout.registry.base import ModelVersion

    r = Renderer(MODEL, make_spec("service").platform)
    with pytest.raises(BadInput, match="metadata.storage_uri"):
        r.deployment(ModelVersion(MODEL, "v1", uri="/tmp/export/v1"), 1)
    ok = ModelVersion(MODEL, "v1", uri="/tmp/x", metadata={"storage_uri": "gs://b/fraud/v1"})
    assert r.deployment(ok, 1)["spec"]["template"]["spec"]["initContainers"][0]["args"][0] == "gs://b/fraud/v1"


@pytest.mark.parametrize("router", ["service", "gateway-api", "istio"])
def test_render_spec_prints_what_a_first_deployment_applies(router, cluster, kubelet, kubeconfig):
    """`rollout render` output == the objects the platform creates for a first deployment."""
    from tests.kubernetes.helpers import make_rig

    spec = make_spec(router)
    docs = list(yaml.safe_load_all(render_spec(spec, version("v1"))))
    for d in docs:
        validate(d)
    rig = make_rig(cluster, kubeconfig, spec)
    rig.engine().start(version("v1"))
    plural = {"Deployment": "deployments", "Service": "services", "HTTPRoute": "httproutes",
              "VirtualService": "virtualservices", "DestinationRule": "destinationrules", "PodMonitor": "podmonitors"}
    created = {(o["kind"], o["metadata"]["name"]) for p in plural.values() for o in cluster.all(p, "models")}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == created
    for d in docs:
        live = cluster.find(plural[d["kind"]], d["metadata"]["name"], "models")
        assert live["spec"] == {**live["spec"], **d["spec"]}  # apply may add defaults, never change what we render
        assert d["metadata"]["labels"].items() <= live["metadata"]["labels"].items()


def test_cli_render_prints_yaml(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rollout.cli import cli
    from tests.kubernetes.test_cli import make_registry, write_spec

    spec = write_spec(tmp_path, make_registry(tmp_path), kubeconfig=None)
    result = CliRunner().invoke(cli, ["render", "-f", str(spec), "--version", f"{MODEL}:v1"])
    assert result.exit_code == 0, result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(result.output)]
    assert kinds == ["Deployment", "Service", "Service", "HTTPRoute", "PodMonitor"]



def test_a_pvc_uri_mounts_the_claim_into_the_storage_initializer_only():
    """pvc://<claim>/<path> (a shared volume holding the registry's artifacts): the claim is
    mounted read-only at /mnt/pvc in the init container, which copies /mnt/pvc/<path>; the
    result still validates, and a claim name that is not DNS-1123 is refused."""
    from rollout.errors import BadInput

    r = Renderer(MODEL, make_spec("service").platform, storage_uri=lambda v: f"pvc://shared-models/fraud/{v.version}/")
    dep = r.deployment(version("v1"), 2)
    validate(dep)
    pod = dep["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"] == ["/mnt/pvc/fraud/v1", "/mnt/models"]
    assert dep["metadata"]["annotations"]["rollout.io/model-uri"] == "pvc://shared-models/fraud/v1/"
    assert {"name": "model-pvc", "persistentVolumeClaim": {"claimName": "shared-models", "readOnly": True}} \
        in pod["volumes"]
    assert [m["name"] for m in pod["containers"][0]["volumeMounts"]] == ["models"]
    bad = Renderer(MODEL, make_spec("service").platform, storage_uri=lambda v: "pvc://Bad_Claim/x")
    with pytest.raises(BadInput, match="Bad_Claim"):
        bad.deployment(version("v1"), 1)
