"""What of .github/workflows/e2e-kind.yml can run without a cluster, runs here:

- the model/registry/spec preparation, lint and render of that spec;
- every manifest the workflow applies (the shipped RBAC as Kustomize builds it, the
  preflight ClusterRole, the in-cluster pieces, the model-files ConfigMap) against the
  Kubernetes schemas, the upstream CRDs and their CEL rules;
- the kind config against kind v0.27.0's config types, the Prometheus chart values
  against the pinned chart's values.yaml;
- every `run:` script under shellcheck, as the runner runs it (`bash -e`);
- the models under MLServer configured as the shipped template configures the pod, with
  the request the workflow's traffic loop sends;
- a rehearsal of the CLI step on the fake API server authorising with exactly the
  ServiceAccount's Role and the preflight ClusterRole, checked by the same
  tests/kubernetes/e2e/check_status.py the workflow runs.

What only GitHub can prove is listed in the report of issue 12: image pulls, Envoy
Gateway programming the route, the storage initializer's download, Prometheus scraping
real pods, and the measured promotion and rollback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import kubernetes_validate
import pytest
import requests
import yaml
from typer.testing import CliRunner

from rollout.app import lint
from rollout.cli import cli
from rollout.clock import VirtualClock
from rollout.engine import Engine, Services
from rollout.platforms.kubernetes.client import Kube
from rollout.platforms.kubernetes.platform import KubernetesPlatform
from rollout.platforms.kubernetes.state import ConfigMapStateStore
from rollout.platforms.kubernetes.render import render_spec
from rollout.platforms.local import supervisor as sv
from rollout.registry.base import parse_ref
from rollout.registry.git import GitRegistry
from rollout.spec import load_spec, parse_spec
from rollout.state import Phase
from tests.kubernetes import cel, crds
from tests.kubernetes.e2e import check_status, prepare
from tests.kubernetes.fake_apiserver import Authorizer
from tests.kubernetes.helpers import Knob
from tests.kubernetes.test_manifests import validate
from tests.waiting import stop_process

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent / "e2e"
WORKFLOW = REPO / ".github" / "workflows" / "e2e-kind.yml"
CHART_VALUES = REPO / "tests" / "data" / "charts" / "kube-prometheus-stack-65.1.1-values.yaml"
IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]
K8S = "1.32"  # the kind node's Kubernetes

# kind v0.27.0 (commit 6cb934219ac54aa0ddb1d8313adc05304421ccb6): the node image it is
# released for (pkg/apis/config/defaults/image.go) and the fields of its v1alpha4 Cluster
# and Node (pkg/apis/config/v1alpha4/types.go).
KIND_IMAGE = "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f"
KIND_CLUSTER_FIELDS = {"kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
                       "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
                       "containerdConfigPatchesJSON6902"}
KIND_NODE_FIELDS = {"role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
                    "kubeadmConfigPatchesJSON6902"}
# helm/kind-action's inputs (action.yml, v1.9.0)
KIND_ACTION_INPUTS = {"version", "config", "kubeconfig", "node_image", "cluster_name", "wait", "verbosity",
                      "kubectl_version", "registry", "registry_image", "registry_name", "registry_port",
                      "registry_enable_delete", "install_only", "ignore_failed_clean", "cloud_provider"}
# Envoy Gateway v1.4.2 (commit da09b3a7a34690bbff1da2bfffb79ec5a55d20d4): the proxy pods'
# labels (internal/infrastructure/kubernetes/proxy/resource.go EnvoyAppLabel, plus
# internal/gatewayapi/helpers.go GatewayOwnerLabels) and the stats port's name.
ENVOY_POD_LABELS = {"app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
                    "app.kubernetes.io/managed-by": "envoy-gateway",
                    "gateway.envoyproxy.io/owning-gateway-name": "e2e",
                    "gateway.envoyproxy.io/owning-gateway-namespace": prepare.NAMESPACE}
ENVOY_METRICS_PORT = ("metrics", "/stats/prometheus")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare.prepare(tmp_path_factory.mktemp("e2e"))


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def run_steps() -> list[dict[str, Any]]:
    return [s for s in workflow()["jobs"]["kind"]["steps"] if "run" in s]


def step(prefix: str) -> dict[str, Any]:
    [found] = [s for s in workflow()["jobs"]["kind"]["steps"] if s.get("name", "").startswith(prefix)]
    return found


def check_all(obj: dict[str, Any]) -> None:
    """What a real API server would refuse: built-in kinds by the Kubernetes schema (strict),
    custom resources by the upstream CRD and its CEL rules."""
    if crds.schema(obj["apiVersion"], obj["kind"]) is not None:
        assert crds.errors(obj) == [], (obj["kind"], crds.errors(obj))
    else:
        kubernetes_validate.validate(obj, K8S, strict=True)


# ----------------------------------------------------------------------------- the spec and its objects


def test_the_spec_lints_and_renders_objects_the_api_server_accepts(prepared: Path, tmp_path: Path) -> None:
    spec = load_spec(prepared)
    steps = lint(spec)
    assert any("analysis" in s for s in steps)
    assert [m.query for m in spec.analysis.metrics] == list(prepare.METRICS.values())
    registry = GitRegistry(spec.registry.url, spec.registry.ref, cache_dir=tmp_path / "cache")
    for v in ("v1", "v2", "v3"):
        version = registry.resolve(parse_ref(f"iris:{v}"))
        docs = list(yaml.safe_load_all(render_spec(spec, version)))
        for d in docs:
            validate(d)  # schema, upstream CRD and its CEL rules
        [dep] = [d for d in docs if d["kind"] == "Deployment"]
        fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
        assert fetch["args"][0] == f"{prepare.STORE}/{v}/model.joblib"  # what the model store serves
        assert "$" not in yaml.safe_dump(docs)  # no placeholder left
        [route] = [d for d in docs if d["kind"] == "HTTPRoute"]
        assert route["spec"]["parentRefs"][0]["name"] == "e2e" and route["spec"]["hostnames"] == [prepare.HOST]


def test_everything_the_workflow_applies_is_accepted(prepared: Path) -> None:
    applied: list[dict[str, Any]] = []
    # kubectl apply -k manifests/rbac: Kustomize sets the namespace of namespaced objects
    # and of ServiceAccount subjects (the only transformation the kustomization asks for)
    kustomization = yaml.safe_load((REPO / "manifests" / "rbac" / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "namespace", "resources"}
    assert kustomization["namespace"] == prepare.NAMESPACE
    built = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((REPO / "manifests" / "rbac" / resource).read_text()):
            doc["metadata"]["namespace"] = kustomization["namespace"]
            for subject in doc.get("subjects") or []:
                if subject["kind"] == "ServiceAccount":
                    subject["namespace"] = kustomization["namespace"]
            built.append(doc)
    if shutil.which("kubectl"):  # the real Kustomize agrees with that reading, where it is installed
        out = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests" / "rbac")], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted((key(d), d) for d in yaml.safe_load_all(out)) == sorted((key(d), d) for d in built)
    applied += built
    applied += list(yaml.safe_load_all((REPO / "manifests" / "rbac" / "preflight.yaml").read_text()))
    applied += list(yaml.safe_load_all((E2E / "cluster.yaml").read_text()))
    # kubectl create configmap model-files --from-file=vN=...: binary files go to binaryData
    files = {v: (prepared.parent / "models" / v / "model.joblib").read_bytes() for v in ("v1", "v2", "v3")}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "model-files"},
                 "binaryData": {v: base64.b64encode(b).decode() for v, b in files.items()}}
    assert sum(len(k) + len(b) for k, b in files.items()) < 1024 * 1024  # the ConfigMap size limit
    applied.append(configmap)
    kinds = []
    for obj in applied:
        check_all(obj)
        kinds.append(obj["kind"])
    assert sorted(kinds) == sorted(["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                                    "GatewayClass", "Gateway", "PodMonitor", "Deployment", "Service", "ConfigMap"])
    # the store mounts exactly the ConfigMap's keys at the paths the storage URIs name
    [store] = [d for d in applied if d["kind"] == "Deployment"]
    items = store["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]
    assert {i["key"]: i["path"] for i in items} == {v: f"{v}/model.joblib" for v in files}


def test_the_envoy_pod_monitor_selects_envoy_gateways_proxy_for_the_gateway() -> None:
    docs = list(yaml.safe_load_all((E2E / "cluster.yaml").read_text()))
    [gateway] = [d for d in docs if d["kind"] == "Gateway"]
    [monitor] = [d for d in docs if d["kind"] == "PodMonitor"]
    assert gateway["metadata"]["name"] == "e2e" and gateway["metadata"]["namespace"] == prepare.NAMESPACE
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ENVOY_POD_LABELS.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ENVOY_METRICS_PORT
    assert monitor["metadata"]["namespace"] == "envoy-gateway-system"  # where the Helm release puts the proxies
    assert "envoy-gateway-system" in step("Gateway API CRDs")["run"]


def test_kind_config_uses_only_kinds_fields_and_its_release_image() -> None:
    config = yaml.safe_load((E2E / "kind.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(config) <= KIND_CLUSTER_FIELDS
    for node in config["nodes"]:
        assert set(node) <= KIND_NODE_FIELDS and node["role"] in ("control-plane", "worker")
        assert node["image"] == KIND_IMAGE
    create = step("Create the kind cluster")
    assert set(create["with"]) <= KIND_ACTION_INPUTS
    assert create["with"]["version"] == "v0.27.0" and create["with"]["config"] == "tests/kubernetes/e2e/kind.yaml"
    assert K8S in KIND_IMAGE


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    return [(path, node)]


def test_prometheus_values_are_keys_of_the_pinned_chart() -> None:
    """Helm ignores a misspelt value silently: every key must exist in the chart's own
    values.yaml (tests/data/charts, the version the workflow pins), with the same type."""
    assert workflow()["env"]["KUBE_PROMETHEUS_STACK_VERSION"] in CHART_VALUES.name
    chart = yaml.safe_load(CHART_VALUES.read_text())
    ours = yaml.safe_load((E2E / "prometheus-values.yaml").read_text())
    for path, value in _leaves(ours):
        node: Any = chart
        for key in path:
            assert isinstance(node, dict) and key in node, f"{'.'.join(path)} is not a value of the chart"
            node = node[key]
        assert type(node) is type(value), (path, node, value)
    # PodMonitors in every namespace: no selector of its own, and the nil-selector switch off
    spec = chart["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelector"] == {} and spec["podMonitorNamespaceSelector"] == {}
    assert ours["prometheus"]["prometheusSpec"]["podMonitorSelectorNilUsesHelmValues"] is False
    assert "-f tests/kubernetes/e2e/prometheus-values.yaml" in step("Prometheus")["run"]


# ----------------------------------------------------------------------------- the workflow's scripts


def test_every_workflow_script_passes_shellcheck_as_the_runner_runs_it(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/setup.sh --dev installs it from Debian)")
    for s in run_steps():
        proc = subprocess.run(["bash", "-n", "-c", s["run"]], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (s["name"], proc.stderr)
        script = tmp_path / "step.sh"
        # GitHub runs `run:` with `bash -e {0}`: say so, or shellcheck cannot see an errexit bypass
        script.write_text("# shellcheck shell=bash\nset -e\n" + s["run"])
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (s["name"], proc.stdout)


def test_workflow_pins_its_versions_and_runs_the_cli_as_the_service_account() -> None:
    wf = workflow()
    env = wf["env"]
    assert re.fullmatch(r"v1\.(3|4|5)\.\d+", env["GATEWAY_API_VERSION"])  # mirror percent needs v1.3+
    assert env["GATEWAY_API_VERSION"] == "v1.3.0"  # the CRDs in tests/data/crds
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["ENVOY_GATEWAY_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["KUBE_PROMETHEUS_STACK_VERSION"])
    cli_step = step("Lint against the cluster")
    assert cli_step["env"]["KUBECONFIG"] == "/tmp/rollout-sa.kubeconfig"  # the shipped RBAC is what is used
    assert 'test "$code" = 3' in cli_step["run"] and "check_status" in cli_step["run"]
    body = re.search(r'-d "(\{.*?\})" \\', step("Port-forward")["run"])
    assert body, "the traffic step's request body"
    request = json.loads(body[1].replace('\\"', '"'))
    assert request["inputs"][0]["data"] == IRIS_ROW[0] and request["inputs"][0]["shape"] == [1, 4]


# ----------------------------------------------------------------------------- the models under MLServer

MLSERVER = Path(sys.executable).parent / "mlserver"


def _free_port() -> int:
    from tests.fixtures.prometheus import free_port

    return free_port()


@pytest.mark.mlserver
@pytest.mark.skipif(not MLSERVER.exists(), reason="mlserver is not installed next to this Python")
def test_the_models_under_mlserver_as_the_pod_runs_them(prepared: Path, tmp_path: Path) -> None:
    """MLServer 1.7.1 (the image's version) configured by exactly the environment the
    rendered Deployment gives the server container, the model file where the storage
    initializer puts it, and the request the traffic loop sends: v1 and v2 answer 200,
    v3 answers 500 (what the gateway pack counts as an error), and MLServer's metrics carry
    the model name the mlserver pack selects on, with the request path's version ("None")."""
    spec = load_spec(prepared)
    registry = GitRegistry(spec.registry.url, spec.registry.ref, cache_dir=tmp_path / "cache")
    body = json.loads(re.search(r'-d "(\{.*?\})" \\', step("Port-forward")["run"])[1].replace('\\"', '"'))
    for v, expected in (("v2", 200), ("v3", 500)):
        docs = list(yaml.safe_load_all(render_spec(spec, registry.resolve(parse_ref(f"iris:{v}")))))
        [dep] = [d for d in docs if d["kind"] == "Deployment"]
        server = dep["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in server["env"]}
        models = tmp_path / v / "mnt-models"  # the emptyDir the init container fills
        models.mkdir(parents=True)
        shutil.copy(prepared.parent / "models" / v / "model.joblib", models / "model.joblib")
        http, metrics = _free_port(), _free_port()
        # the pod's environment, with this machine's ports; parallel_workers 0 for this
        # machine's uvloop (ENVIRONMENT.md), which the image does not need
        env.update(MLSERVER_MODEL_URI=str(models), MLSERVER_HTTP_PORT=str(http), MLSERVER_GRPC_PORT=str(_free_port()),
                   MLSERVER_METRICS_PORT=str(metrics), MLSERVER_HOST="127.0.0.1", MLSERVER_PARALLEL_WORKERS="0")
        log = open(tmp_path / v / "mlserver.log", "wb")
        proc = subprocess.Popen([str(MLSERVER), "start", str(models)], cwd=tmp_path / v, stdout=log, stderr=log,
                                env={**os.environ, **env}, start_new_session=True)
        try:
            ready = server["readinessProbe"]["httpGet"]["path"]
            sv.wait_ready(proc, [f"http://127.0.0.1:{http}{ready}"], 90, f"MLServer for {v} as the pod runs it",
                          tmp_path / v / "mlserver.log")
            answer = requests.post(f"http://127.0.0.1:{http}/v2/models/iris/infer", json=body, timeout=10)
            assert answer.status_code == expected, answer.text[:300]
            text = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
            counter = "model_infer_request_success_total" if expected == 200 else "model_infer_request_failure_total"
            assert f'{counter}{{model="iris",version="None"}} 1.0' in text
        finally:
            stop_process(proc)
            log.close()


def test_the_good_models_answer_the_workflows_row_and_the_bad_one_fails_it(prepared: Path) -> None:
    models = prepared.parent / "models"
    for v in ("v1", "v2"):
        assert len(joblib.load(models / v / "model.joblib").predict(IRIS_ROW)) == 1
    with pytest.raises(ValueError, match="features"):
        joblib.load(models / "v3" / "model.joblib").predict(IRIS_ROW)


# ----------------------------------------------------------------------------- a rehearsal of the CLI step


class ServiceAccount(Authorizer):
    """The `rollout` ServiceAccount as the workflow binds it: the Role of manifests/rbac in
    its namespace, and the ClusterRole of manifests/rbac/preflight.yaml everywhere."""

    def __init__(self) -> None:
        role = next(d for d in yaml.safe_load_all((REPO / "manifests/rbac/rbac.yaml").read_text()) if d["kind"] == "Role")
        super().__init__(role["rules"], prepare.NAMESPACE)
        cluster_role = next(d for d in yaml.safe_load_all((REPO / "manifests/rbac/preflight.yaml").read_text())
                            if d["kind"] == "ClusterRole")
        self.cluster = Authorizer(cluster_role["rules"], "*")

    def allows(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None = None) -> bool:
        return self.cluster.allows(verb, group, resource, "*", name) or super().allows(verb, group, resource,
                                                                                        namespace, name)


def test_rehearsal_of_the_cli_step_on_the_fake_api_server(prepared: Path, tmp_path: Path, cluster, kubelet, kubeconfig,
                                                          monkeypatch) -> None:
    """The workflow's spec (metrics answered by a knob instead of Prometheus) on a fake API
    server that authorises as the ServiceAccount and checks every write against the
    schemas, CRDs and CEL rules: lint --cluster passes, v1 is deployed, v2 promoted, v3
    rolled back, and the workflow's own checks of `rollout status -o json` and of the
    HTTPRoute hold."""
    cluster.authorizer = ServiceAccount()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = CliRunner().invoke(cli, ["lint", "--cluster", "-f", str(prepared)])
    assert result.exit_code == 0, result.output

    raw = yaml.safe_load(prepared.read_text())
    for m in raw["analysis"]["metrics"]:
        m["provider"] = "knob"
    spec = parse_spec(raw)
    kube = Kube.connect(prepare.NAMESPACE, kubeconfig=str(kubeconfig))
    services = Services(store=ConfigMapStateStore(kube, lease_duration_s=spec.platform.lease_duration_s),
                        platform=KubernetesPlatform(spec.model, spec.platform, kube),
                        providers={"knob": Knob(values={"v2": 0.0, "v3": 1.0})}, clock=VirtualClock(), poll_s=5.0)
    registry = GitRegistry(spec.registry.url, spec.registry.ref, cache_dir=tmp_path / "cache")

    def start(v: str) -> Phase:
        return Engine(spec, services).start(registry.resolve(parse_ref(f"iris:{v}"))).rollout.phase

    def status(candidate: str, outcome: str, stable: str) -> None:
        out = CliRunner().invoke(cli, ["status", "iris", "-f", str(prepared), "-o", "json"])
        assert out.exit_code == 0, out.output
        path = tmp_path / f"status-{candidate}.json"
        path.write_text(out.output)
        assert check_status.main([str(path), outcome, candidate, stable]) == 0, out.output
        other = "rolled-back" if outcome == "promoted" else "promoted"
        assert check_status.problems(json.loads(out.output), other, candidate, stable)  # the check can fail

    start("v1")
    assert start("v2") is Phase.PROMOTED
    status("v2", "promoted", "v2")
    assert start("v3") is Phase.ROLLED_BACK
    status("v3", "rolled-back", "v2")
    # test "$(kubectl -n models get httproute iris -o jsonpath='{.spec.rules[0].backendRefs[*].name}')" = "iris-v2"
    route = cluster.find("httproutes", "iris", prepare.NAMESPACE)
    assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == ["iris-v2"]
    assert cel.refusals(crds.schema(route["apiVersion"], route["kind"]), route) == []
