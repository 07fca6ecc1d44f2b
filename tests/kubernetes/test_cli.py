"""The CLI against the fake cluster: a second run is refused by the Lease (exit 5,
naming the holder); --context and --namespace reach the client."""

from __future__ import annotations

from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.platforms.kubernetes.client import Kube
from rollout.platforms.kubernetes.state import ConfigMapStateStore
from tests.kubernetes.helpers import MODEL, NAMESPACE


def make_registry(tmp_path: Path) -> Path:
    """A git registry with fraud v1 and v2 whose files live in object storage."""
    repo_dir = tmp_path / "registry"
    repo = git.Repo.init(repo_dir)
    for v in ("v1", "v2"):
        d = repo_dir / "models" / MODEL / v
        d.mkdir(parents=True)
        (d / "model.joblib").write_bytes(b"not really a model")
        (d / "model.yaml").write_text(yaml.safe_dump(
            {"runtime": "sklearn", "metadata": {"storage_uri": f"s3://models/{MODEL}/{v}"}}))
    repo.index.add([str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*") if p.is_file() and ".git" not in p.parts])
    repo.index.commit("models")
    return repo_dir


def write_spec(tmp_path: Path, registry: Path, kubeconfig: Path | None, **platform) -> Path:
    spec = {
        "model": MODEL,
        "registry": {"type": "git", "url": str(registry)},
        "platform": {"type": "kubernetes", "namespace": NAMESPACE, "router": "gateway-api",
                     "gateway": {"name": "public"}, "ready_timeout_s": 5,
                     **({"kubeconfig": str(kubeconfig)} if kubeconfig else {}), **platform},
        "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0},
    }
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_second_run_is_refused_by_the_lease(tmp_path, cluster, kubelet, kubeconfig, monkeypatch):
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    spec = write_spec(tmp_path, make_registry(tmp_path), kubeconfig)
    runner = CliRunner()
    first = runner.invoke(cli, ["start", f"{MODEL}:v1", "-f", str(spec), "--home", str(tmp_path / "home")])
    assert first.exit_code == 0, first.output

    holder = "pid 1 on ci-runner-7, `rollout start`, GitHub Actions run acme/models#4242"
    store = ConfigMapStateStore(Kube.connect(NAMESPACE, kubeconfig=str(kubeconfig)), renew=False)
    with store.lock(MODEL, holder):
        second = runner.invoke(cli, ["start", f"{MODEL}:v2", "-f", str(spec), "--home", str(tmp_path / "home")])
    assert second.exit_code == 5, second.output
    assert f"model '{MODEL}' is locked by {holder}" in second.output

    third = runner.invoke(cli, ["start", f"{MODEL}:v2", "-f", str(spec), "--home", str(tmp_path / "home")])
    assert third.exit_code == 0, third.output
    lease = cluster.find("leases", f"{MODEL}-rollout-lock", NAMESPACE)
    assert "holderIdentity" not in lease["spec"]  # released at exit


def test_context_and_namespace_options_reach_the_client(tmp_path, apiserver, cluster, kubelet, monkeypatch):
    config = apiserver.kubeconfig()
    config["contexts"].append({"name": "staging", "context": {"cluster": "fake", "user": "fake"}})
    config["clusters"].append({"name": "broken", "cluster": {"server": "http://127.0.0.1:9"}})
    config["contexts"][0]["context"]["cluster"] = "broken"  # the current context points nowhere
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    cluster.create_namespace("staging-models")
    spec = write_spec(tmp_path, make_registry(tmp_path), kubeconfig)

    result = CliRunner().invoke(cli, ["--context", "staging", "--namespace", "staging-models",
                                      "start", f"{MODEL}:v1", "-f", str(spec), "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    assert cluster.find("deployments", f"{MODEL}-v1", "staging-models") is not None
    assert cluster.find("deployments", f"{MODEL}-v1", NAMESPACE) is None

    status = CliRunner().invoke(cli, ["--context", "staging", "--namespace", "staging-models",
                                      "status", MODEL, "-f", str(spec)])
    assert status.exit_code == 0 and "v1" in status.output


def test_unreachable_cluster_is_one_clear_line(tmp_path, monkeypatch):
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "x",
              "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
              "users": [{"name": "x", "user": {"token": "t"}}],
              "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    spec = write_spec(tmp_path, make_registry(tmp_path), kubeconfig)
    result = CliRunner().invoke(cli, ["start", f"{MODEL}:v1", "-f", str(spec), "--home", str(tmp_path / "home")])
    assert result.exit_code == 1
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in result.output


def test_without_a_kubeconfig_the_in_cluster_service_account_is_used_and_named_when_missing(tmp_path, monkeypatch):
    """Inside a pod there is no kubeconfig: the client must go for the service account,
    and an error must say that is what it tried (not blame a ~/.kube/config that never existed)."""
    from rollout.errors import PlatformError

    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(PlatformError, match="no Kubernetes configuration: .*run inside a cluster"):
        Kube.connect("models")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(PlatformError, match=r"from the in-cluster service account .*: .*token") as err:
        Kube.connect("models")
    assert ".kube/config" not in str(err.value)
