"""MLflow versions on Kubernetes: the registry resolves a version to where MLflow says its
files are, and the Deployment's storage initializer gets that URI; a location a cluster
cannot read (the server's own disk) is refused before anything is applied.

Against the real `mlflow server` fixture (tests/registry/conftest.py) and the fake API
server (tests/kubernetes). The versions here are registered in experiments whose artifact
root is an object-store URI (s3://...), or a path on this machine; nothing is uploaded
(the tests check where the cluster is told to read, not a bucket)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.registry.base import NotClusterReadable
from rollout.registry.mlflow import MlflowRegistry
from tests.kubernetes.conftest import apiserver, cluster, kubeconfig, kubelet  # noqa: F401 (fixtures)
from tests.kubernetes.helpers import NAMESPACE

pytestmark = [pytest.mark.timeout(300), pytest.mark.mlflow]


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def _experiment(url: str, artifact_root: str) -> str:
    return _client(url).create_experiment(f"k8s-{uuid.uuid4().hex[:8]}", artifact_location=artifact_root)


def _register_run_version(url: str, model: str, artifact_root: str, accuracy: float = 0.9) -> tuple[str, str]:
    """A run in an experiment with this artifact root, registered as ``runs:/<run>/model``;
    returns (version, run artifact URI)."""
    c = _client(url)
    run = c.create_run(_experiment(url, artifact_root))
    c.log_metric(run.info.run_id, "accuracy", accuracy)
    c.set_terminated(run.info.run_id)
    try:
        c.create_registered_model(model)
    except Exception:  # noqa: BLE001 - already registered by an earlier call
        pass
    mv = c.create_model_version(model, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(mv.version), run.info.artifact_uri


def _register_logged_model_version(url: str, model: str, artifact_root: str) -> tuple[str, str]:
    """MLflow 3's way: a logged model (``models:/m-...``) registered; returns (version, its location)."""
    c = _client(url)
    exp = _experiment(url, artifact_root)
    run = c.create_run(exp)
    logged = c.create_logged_model(exp, source_run_id=run.info.run_id, name="model")
    try:
        c.create_registered_model(model)
    except Exception:  # noqa: BLE001
        pass
    mv = c.create_model_version(model, source=f"models:/{logged.model_id}", run_id=run.info.run_id,
                                model_id=logged.model_id)
    return str(mv.version), logged.artifact_location


def _spec(tmp_path: Path, url: str, model: str, kubeconfig: Path | None, **registry) -> Path:
    spec = {"model": model,
            "registry": {"type": "mlflow", "tracking_uri": url, "record": False, **registry},
            "platform": {"type": "kubernetes", "namespace": NAMESPACE, "router": "service", "ready_timeout_s": 5,
                         **({"kubeconfig": str(kubeconfig)} if kubeconfig else {})},
            "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0}}
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _init_args(dep: dict) -> list[str]:
    return dep["spec"]["template"]["spec"]["initContainers"][0]["args"]


def test_resolve_gives_the_artifact_location_mlflow_reports(mlflow_server, tmp_path):
    model = "k8s-resolve"
    root = f"s3://rollout-test/mlflow/{uuid.uuid4().hex[:8]}"
    v_run, run_artifacts = _register_run_version(mlflow_server.url, model, root)
    v_logged, logged_location = _register_logged_model_version(mlflow_server.url, model, root)
    reg = MlflowRegistry(mlflow_server.url, tmp_path)

    by_run = reg.resolve(f"{model}:{v_run}")
    assert run_artifacts.startswith(root + "/")
    assert by_run.metadata["artifact_uri"] == f"{run_artifacts}/model"  # the run's artifact URI + the path
    assert reg.storage_uri(by_run) == f"{run_artifacts}/model"
    by_logged = reg.resolve(f"{model}:{v_logged}")
    assert logged_location.startswith(root + "/")
    assert by_logged.metadata["artifact_uri"] == logged_location  # the server resolves models:/m-...
    assert by_logged.uri == f"models:/{model}/{v_logged}"


def test_a_canary_on_kubernetes_hands_the_s3_uri_to_the_storage_initializer(
        mlflow_server, tmp_path, cluster, kubelet, kubeconfig):
    model = "k8s-canary"
    root = f"s3://rollout-test/mlflow/{uuid.uuid4().hex[:8]}"
    v1, run1 = _register_run_version(mlflow_server.url, model, root)
    v2, logged2 = _register_logged_model_version(mlflow_server.url, model, root)
    spec = _spec(tmp_path, mlflow_server.url, model, kubeconfig)
    home = str(tmp_path / "home")
    runner = CliRunner()

    rendered = runner.invoke(cli, ["render", "-f", str(spec), "--version", f"{model}:{v2}"])
    assert rendered.exit_code == 0, rendered.output
    dep = next(d for d in yaml.safe_load_all(rendered.output) if d["kind"] == "Deployment")
    assert _init_args(dep)[0] == logged2
    assert dep["metadata"]["annotations"]["rollout.io/model-uri"] == logged2

    first = runner.invoke(cli, ["start", f"{model}:{v1}", "-f", str(spec), "--home", home])
    assert first.exit_code == 0, first.output
    assert _init_args(cluster.find("deployments", f"{model}-{v1}", NAMESPACE))[0] == f"{run1}/model"
    second = runner.invoke(cli, ["start", f"{model}:{v2}", "-f", str(spec), "--home", home])
    assert second.exit_code == 0, second.output
    live = cluster.find("deployments", f"{model}-{v2}", NAMESPACE)
    assert _init_args(live)[0] == logged2


def test_a_version_on_the_servers_own_disk_is_refused_before_anything_is_applied(
        mlflow_server, tmp_path, cluster, kubelet, kubeconfig):
    model = "k8s-local"
    served = mlflow_server.register(model, 0.9)  # the fixture's artifact store: mlflow-artifacts:/ (its own disk)
    local_root = str(tmp_path / "mlruns")
    v_path, run_path = _register_run_version(mlflow_server.url, model, local_root)
    spec = _spec(tmp_path, mlflow_server.url, model, kubeconfig)
    runner = CliRunner()

    for version, location in [(served, "mlflow-artifacts:/"), (v_path, f"{run_path}/model")]:
        result = runner.invoke(cli, ["start", f"{model}:{version}", "-f", str(spec), "--home", str(tmp_path / "h")])
        assert result.exit_code == 2, result.output
        assert f"MLflow {model}:{version}: its files are at {location}" in " ".join(result.output.split())
        assert "storage initializer cannot read" in result.output
        rendered = runner.invoke(cli, ["render", "-f", str(spec), "--version", f"{model}:{version}"])
        assert rendered.exit_code == 2 and f"MLflow {model}:{version}" in rendered.output
    assert cluster.all("deployments", NAMESPACE) == [] and cluster.all("services", NAMESPACE) == []
    assert not [c for c in cluster.all("configmaps", NAMESPACE) if model in c["metadata"]["name"]]  # no state


def test_artifact_uri_map_says_how_the_cluster_reads_a_proxied_or_shared_location(mlflow_server, tmp_path):
    model = "k8s-map"
    served = mlflow_server.register(model, 0.9)
    reg = MlflowRegistry(mlflow_server.url, tmp_path)
    mv = reg.resolve(f"{model}:{served}")
    location = mv.metadata["artifact_uri"]
    assert location.startswith("mlflow-artifacts:/")
    with pytest.raises(NotClusterReadable):
        reg.storage_uri(mv)
    mapped = MlflowRegistry(mlflow_server.url, tmp_path, artifact_uri_map={
        "mlflow-artifacts:/": "s3://ml-artifacts/", "mlflow-artifacts:/never/": "gs://other/"})
    assert mapped.storage_uri(mv) == "s3://ml-artifacts/" + location[len("mlflow-artifacts:/"):]

    spec = _spec(tmp_path, mlflow_server.url, model, None,
                 artifact_uri_map={"mlflow-artifacts:/": "pvc://mlflow-artifacts/"})
    rendered = CliRunner().invoke(cli, ["render", "-f", str(spec), "--version", f"{model}:{served}"])
    assert rendered.exit_code == 0, rendered.output
    dep = next(d for d in yaml.safe_load_all(rendered.output) if d["kind"] == "Deployment")
    path = location[len("mlflow-artifacts:/"):]
    assert _init_args(dep) == [f"/mnt/pvc/{path.strip('/')}", "/mnt/models"]
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "model-pvc", "persistentVolumeClaim": {"claimName": "mlflow-artifacts", "readOnly": True}} \
        in pod["volumes"]
    assert {"name": "model-pvc", "mountPath": "/mnt/pvc", "readOnly": True} in pod["initContainers"][0]["volumeMounts"]
    assert all(m["name"] != "model-pvc" for m in pod["containers"][0]["volumeMounts"])  # the server sees /mnt/models


@pytest.mark.parametrize("target, words", [
    ("file:///srv/mlflow/", "'file:///srv/mlflow/' is not a URI a cluster's storage initializer reads"),
    ("/srv/mlflow/", "'/srv/mlflow/' is not a URI a cluster's storage initializer reads"),
    ("s3://user:secret-9f2@bucket/", "credentials"),
])
def test_lint_refuses_an_artifact_uri_map_the_cluster_cannot_use(tmp_path, target, words):
    spec = _spec(tmp_path, "http://127.0.0.1:9", "k8s-lint", None, artifact_uri_map={"mlflow-artifacts:/": target})
    result = CliRunner().invoke(cli, ["lint", "-f", str(spec)])
    assert result.exit_code == 2, result.output
    assert "registry.mlflow.artifact_uri_map" in result.output and words in " ".join(result.output.split())
    assert "secret-9f2" not in result.output
