"""RBAC: the Role shipped in manifests/rbac/ is generated from the table of what the code
calls, and every command on every router works against an API server that authorises
with exactly that Role, and uses every rule it grants (nothing missing, nothing extra)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.errors import PlatformError
from rollout.platforms.kubernetes import rbac
from rollout.platforms.kubernetes.render import version_name
from rollout.state import Phase
from tests.kubernetes.fake_apiserver import Authorizer, FakeApiServer, FakeCluster, FakeKubelet
from tests.kubernetes.helpers import MODEL, NAMESPACE, make_rig, make_spec, version

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
ROLE_FILE = REPO / "manifests" / "rbac" / "rbac.yaml"
ROUTERS = ["service", "gateway-api", "istio"]


def test_the_shipped_role_is_the_rendering_of_the_code_table() -> None:
    assert ROLE_FILE.read_text() == rbac.render(), (
        "manifests/rbac/rbac.yaml is stale: python -m rollout.platforms.kubernetes.rbac > manifests/rbac/rbac.yaml")
    role = next(d for d in yaml.safe_load_all(ROLE_FILE.read_text()) if d["kind"] == "Role")
    assert role["rules"] == rbac.role_rules()


def test_server_side_apply_that_creates_needs_create_as_well_as_patch() -> None:
    for p in rbac.PERMISSIONS:
        if "patch" in p.verbs and p.kind.kind != "Deployment" or p.kind.kind in ("Service", "HTTPRoute"):
            assert "create" in p.verbs, p.kind.kind


def _registry(tmp_path: Path) -> Path:
    repo_dir = tmp_path / "registry"
    repo = git.Repo.init(repo_dir)
    for v in ("v1", "v2", "v3"):
        d = repo_dir / "models" / MODEL / v
        d.mkdir(parents=True)
        (d / "model.joblib").write_bytes(b"model")
        (d / "model.yaml").write_text(yaml.safe_dump({"runtime": "sklearn",
                                                      "metadata": {"storage_uri": f"s3://models/{MODEL}/{v}"}}))
    repo.index.add([str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*") if p.is_file() and ".git" not in p.parts])
    repo.index.commit("models")
    return repo_dir


def _spec_file(tmp_path: Path, registry: Path, kubeconfig: Path, router: str) -> Path:
    platform = {"type": "kubernetes", "namespace": NAMESPACE, "router": router, "replicas": 2, "ready_timeout_s": 5,
                "kubeconfig": str(kubeconfig), "pod_monitor": True}
    if router == "gateway-api":
        platform["gateway"] = {"name": "public"}
    spec = {"model": MODEL, "registry": {"type": "git", "url": str(registry)}, "platform": platform,
            "strategy": {"type": "canary", "steps": [{"set_weight": 30}, {"pause": {}}], "scale_down_delay_s": 0}}
    path = tmp_path / f"rollout-{router}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _every_command(tmp_path: Path, router: str) -> Counter[tuple[str, str, str]]:
    """Run every command once against a fake server authorising with the shipped Role;
    return the permissions it granted."""
    cluster = FakeCluster()
    cluster.create_namespace(NAMESPACE)
    cluster.authorizer = Authorizer.from_role_file(str(ROLE_FILE), NAMESPACE)
    kubelet = FakeKubelet(cluster, delay_s=0.02).start()
    try:
        with FakeApiServer(cluster) as server:
            kubeconfig = tmp_path / f"kubeconfig-{router}"
            kubeconfig.write_text(yaml.safe_dump(server.kubeconfig(NAMESPACE)))
            spec = _spec_file(tmp_path, _registry(tmp_path / router), kubeconfig, router)
            home = ["--home", str(tmp_path / f"home-{router}")]
            runner = CliRunner()

            def run(*args: str, code: int = 0) -> str:
                result = runner.invoke(cli, [*args, "-f", str(spec), *home])
                assert result.exit_code == code, (router, args, result.output)
                return result.output

            run("start", f"{MODEL}:v1")                      # first deployment: everything is created
            run("start", f"{MODEL}:v2", code=4)              # canary to 30%, paused
            run("status", MODEL)
            run("promote", f"{MODEL}:v2")                    # promoted
            run("rollback", MODEL)                           # back to v1
            run("start", f"{MODEL}:v3", code=4)
            run("abort", MODEL)                              # v3 keeps running for inspection
            run("history", MODEL)
            assert "no state" in run("status", "other-model", code=2)  # lists the models there are

            # The engine with a metric it can fail on: an analysis that rolls back, and a
            # candidate that never gets ready (the pods are read to say why).
            rig = make_rig(cluster, kubeconfig, make_spec(router, pod_monitor=True, replicas=2))
            rig.engine().start(version("v1"), supersede=True)
            rig.knob.values["v4"] = 0.9
            assert rig.engine().start(version("v4")).rollout.phase is Phase.ROLLED_BACK
            kubelet.never_ready.add(version_name(MODEL, "v5"))
            rig = make_rig(cluster, kubeconfig, make_spec(router, pod_monitor=True, replicas=2, ready_timeout_s=1))
            assert rig.engine().start(version("v5")).rollout.phase is Phase.FAILED
    finally:
        kubelet.stop()
    return cluster.authorized


def test_every_command_on_every_router_works_with_exactly_the_shipped_role(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rollout.platforms.kubernetes.state.ARCHIVE_LIMIT", 2)  # so old archives get deleted
    used: Counter[tuple[str, str, str]] = Counter()
    for router in ROUTERS:
        granted = _every_command(tmp_path, router)
        needed = set(rbac.needed(router, pod_monitor=True))
        assert set(granted) <= needed, f"router {router} used permissions its table does not declare"
        used.update(granted)
    role = next(d for d in yaml.safe_load_all(ROLE_FILE.read_text()) if d["kind"] == "Role")
    offered = {(verb, group, res) for rule in role["rules"] for group in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}
    assert offered - set(used) == set(), "the Role grants permissions no command used"


def test_a_role_without_create_fails_the_first_start_naming_the_verb_and_the_file(tmp_path: Path) -> None:
    """What every first `rollout start` did with the old hand-written Role (patch, no create)."""
    cluster = FakeCluster()
    cluster.create_namespace(NAMESPACE)
    rules = [{**r, "verbs": [v for v in r["verbs"] if v != "create" or r["resources"] == ["configmaps"]
                             or r["resources"] == ["leases"]]} for r in rbac.role_rules()]
    cluster.authorizer = Authorizer(rules, NAMESPACE)
    kubelet = FakeKubelet(cluster, delay_s=0.02).start()
    try:
        with FakeApiServer(cluster) as server:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(server.kubeconfig(NAMESPACE)))
            rig = make_rig(cluster, kubeconfig, make_spec("gateway-api"))
            with pytest.raises(PlatformError) as err:
                rig.engine().start(version("v1"))
    finally:
        kubelet.stop()
    message = str(err.value)
    assert "cannot create resource" in message and "403" in message
    assert "manifests/rbac/rbac.yaml" in message
    assert cluster.find("deployments", version_name(MODEL, "v1"), NAMESPACE) is None
