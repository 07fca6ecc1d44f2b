"""What of .github/workflows/e2e-kind.yml can run without a cluster, runs here: the
model/registry/spec preparation, lint and render of that spec with the shipped
templates (validated against the Kubernetes schemas), the good and bad models' real
behaviour on the traffic the workflow sends, the in-cluster manifests, the kind config
and the workflow's own scripts. What only GitHub can prove is listed in the workflow's
header and the lead's report: image pulls, Envoy Gateway programming the route,
Prometheus scraping MLServer, and the measured promotion and rollback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import joblib
import kubernetes_validate
import pytest
import yaml

from rollout.app import lint
from rollout.platforms.kubernetes.render import render_spec
from rollout.registry.base import parse_ref
from rollout.registry.git import GitRegistry
from rollout.spec import load_spec
from tests.kubernetes.e2e import prepare
from tests.kubernetes.test_manifests import validate

pytestmark = pytest.mark.timeout(120)

E2E = Path(__file__).resolve().parent / "e2e"
WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "e2e-kind.yml"
IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare.prepare(tmp_path_factory.mktemp("e2e"))


def test_the_spec_lints_and_renders_objects_the_api_server_accepts(prepared: Path, tmp_path: Path) -> None:
    spec = load_spec(prepared)
    steps = lint(spec)
    assert any("analysis" in s for s in steps)
    registry = GitRegistry(spec.registry.url, spec.registry.ref, cache_dir=tmp_path / "cache")
    for v in ("v1", "v2", "v3"):
        version = registry.resolve(parse_ref(f"iris:{v}"))
        docs = list(yaml.safe_load_all(render_spec(spec, version)))
        for d in docs:
            validate(d)
        [dep] = [d for d in docs if d["kind"] == "Deployment"]
        fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
        assert fetch["args"][0] == f"{prepare.STORE}/{v}/model.joblib"  # what the model store serves
        assert "$" not in yaml.safe_dump(docs)  # no placeholder left (the old rewrite put $0 in a template)
        [route] = [d for d in docs if d["kind"] == "HTTPRoute"]
        assert route["spec"]["parentRefs"][0]["name"] == "e2e" and route["spec"]["hostnames"] == [prepare.HOST]


def test_the_good_models_answer_the_workflows_traffic_and_the_bad_one_fails_it(prepared: Path) -> None:
    models = prepared.parent / "models"
    for v in ("v1", "v2"):
        assert len(joblib.load(models / v / "model.joblib").predict(IRIS_ROW)) == 1
    with pytest.raises(ValueError, match="features"):
        joblib.load(models / "v3" / "model.joblib").predict(IRIS_ROW)


def test_the_workflow_sends_the_request_the_models_take() -> None:
    text = WORKFLOW.read_text()
    body = re.search(r'-d "(\{.*?\})" \\', text)
    assert body, "the traffic step's request body"
    request = yaml.safe_load(body[1].replace('\\"', '"'))
    assert request["inputs"][0]["data"] == IRIS_ROW[0] and request["inputs"][0]["shape"] == [1, 4]


def test_in_cluster_manifests_and_kind_config_are_valid() -> None:
    docs = list(yaml.safe_load_all((E2E / "cluster.yaml").read_text()))
    for d in docs:
        if d["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue  # checked against the upstream CRDs in test_manifests when shipped
        kubernetes_validate.validate(d, "1.32", strict=True)
    [store] = [d for d in docs if d["kind"] == "Deployment"]
    items = store["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]
    assert {i["path"] for i in items} == {f"{v}/model.joblib" for v in ("v1", "v2", "v3")}
    kind = yaml.safe_load((E2E / "kind.yaml").read_text())
    assert kind["kind"] == "Cluster" and kind["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert all(n["role"] in ("control-plane", "worker") and re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+", n["image"])
               for n in kind["nodes"])


def test_every_workflow_script_is_valid_bash_and_pins_its_versions() -> None:
    wf = yaml.safe_load(WORKFLOW.read_text())
    env = wf["env"]
    assert re.fullmatch(r"v1\.(3|4|5)\.\d+", env["GATEWAY_API_VERSION"])  # mirror percent needs v1.3+
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["ENVOY_GATEWAY_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["KUBE_PROMETHEUS_STACK_VERSION"])
    steps = wf["jobs"]["kind"]["steps"]
    for step in steps:
        if "run" in step:
            proc = subprocess.run(["bash", "-n", "-c", step["run"]], capture_output=True, text=True)
            assert proc.returncode == 0, (step["name"], proc.stderr)
    [cli_step] = [s for s in steps if s.get("name", "").startswith("Lint against the cluster")]
    assert cli_step["env"]["KUBECONFIG"] == "/tmp/rollout-sa.kubeconfig"  # the shipped RBAC is what is used
    assert "code=3" not in cli_step["run"] and 'test "$code" = 3' in cli_step["run"]
