"""manifests/controller: what `rollout render --controller` prints is what the repository
ships, every object validates against the Kubernetes schemas, bad options are refused
naming the option, and the controller carries a detached rollout to promotion on an API
server that authorises it with exactly the shipped Role (and nothing else)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.platforms.kubernetes import controller_manifests as cm
from rollout.platforms.kubernetes import rbac
from rollout.platforms.kubernetes.client import Kube
from rollout.platforms.kubernetes.state import ConfigMapStateStore
from rollout.state import Phase
from tests.kubernetes.fake_apiserver import Authorizer, FakeApiServer, FakeCluster, FakeKubelet
from tests.kubernetes.helpers import MODEL, NAMESPACE
from tests.kubernetes.test_cli import make_registry
from tests.kubernetes.test_manifests import validate
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "manifests" / "controller" / "controller.yaml"


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_the_shipped_files_are_the_rendering_and_render_prints_them() -> None:
    assert SHIPPED.read_text() == cm.render(), (
        "manifests/controller/controller.yaml is stale: rollout render --controller > manifests/controller/controller.yaml")
    out = CliRunner().invoke(cli, ["render", "--controller"])
    assert out.exit_code == 0, out.output
    assert _docs(out.output) == _docs(SHIPPED.read_text())
    kustomization = yaml.safe_load((SHIPPED.parent / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["controller.yaml"]


@pytest.mark.parametrize("namespace,image", [(cm.DEFAULT_NAMESPACE, cm.DEFAULT_IMAGE),
                                             ("ml-prod", "ghcr.io/acme/rollout:0.1.0"),
                                             ("team-a", "registry.example.com:5000/ml/rollout@sha256:" + "a" * 64)])
def test_every_controller_object_matches_its_schema(namespace: str, image: str) -> None:
    out = CliRunner().invoke(cli, ["render", "--controller", "-n", namespace, "--image", image])
    assert out.exit_code == 0, out.output
    docs = _docs(out.output)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "Lease", "Deployment"]
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == namespace
    binding = docs[2]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs[0]["metadata"]["name"], "namespace": namespace}]
    assert binding["roleRef"]["name"] == docs[1]["metadata"]["name"]
    pod = docs[4]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == docs[0]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["image"] == image
    assert container["args"][:2] == ["--namespace", namespace], "the controller serves the namespace it runs in"


def test_the_deployment_runs_unprivileged_with_probes_on_healthz() -> None:
    dep = next(d for d in _docs(SHIPPED.read_text()) if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], "a writable /tmp beside the read-only root"
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    args = c["args"]
    assert args[args.index("--port") + 1] == str(port["containerPort"])
    assert args[args.index("--address") + 1] == "0.0.0.0", "the kubelet probes the pod IP, not 127.0.0.1"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_the_role_is_the_cli_table_plus_the_leader_lease_verbs() -> None:
    role = next(d for d in _docs(SHIPPED.read_text()) if d["kind"] == "Role")
    assert role["rules"] == rbac.controller_role_rules()
    granted = {(v, g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    cli_needs = {(v, p.group, p.resource) for p in rbac.PERMISSIONS for v in p.verbs}
    leader = {(v, p.group, p.resource) for p in rbac.CONTROLLER_PERMISSIONS for v in p.verbs}
    assert granted == cli_needs | leader
    assert all("*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"] for rule in role["rules"])


@pytest.mark.parametrize("args,names", [
    (["render", "--controller", "-n", "Bad_NS"], "-n/--namespace"),
    (["render", "--controller", "--image", "Rollout:latest"], "--image"),
    (["render", "--controller", "--image", "rollout:0.1\nkind: Secret"], "--image"),
    (["render", "--controller", "-f", "rollout.yaml"], "--controller takes no -f"),
    (["render", "--image", "rollout:1"], "options of rollout render --controller"),
    (["render"], "needs -f spec.yaml"),
])
def test_bad_render_options_exit_2_naming_the_option_and_print_no_manifest(args: list[str], names: str) -> None:
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2, out.output
    assert names in out.output
    assert "kind:" not in out.stdout


def test_the_controller_carries_a_detached_rollout_with_exactly_the_shipped_role(tmp_path: Path) -> None:
    """Everything (the CLI's start and the controller) goes through an API server that
    authorises with the Role in manifests/controller/controller.yaml; the leader Lease is
    the shipped one (the controller takes it over, it never creates it)."""
    shipped = _docs(SHIPPED.read_text())
    cluster = FakeCluster()
    cluster.create_namespace(NAMESPACE)
    role_file = tmp_path / "role.yaml"
    role_file.write_text(SHIPPED.read_text())
    cluster.authorizer = Authorizer.from_role_file(str(role_file), NAMESPACE)
    assert cluster.authorizer.rules == rbac.controller_role_rules()
    kubelet = FakeKubelet(cluster, delay_s=0.02).start()
    controller = None
    try:
        with FakeApiServer(cluster) as server:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(server.kubeconfig(NAMESPACE)))
            kube = Kube.connect(NAMESPACE, kubeconfig=str(kubeconfig))
            kube.create(next(d for d in shipped if d["kind"] == "Lease"))  # as `kubectl apply` would
            spec = tmp_path / "rollout.yaml"
            spec.write_text(yaml.safe_dump({
                "model": MODEL, "registry": {"type": "git", "url": str(make_registry(tmp_path))},
                "platform": {"type": "kubernetes", "namespace": NAMESPACE, "router": "gateway-api",
                             "gateway": {"name": "public"}, "ready_timeout_s": 5, "kubeconfig": str(kubeconfig)},
                "strategy": {"type": "canary", "scale_down_delay_s": 0, "steps": [
                    {"set_weight": 30}, {"pause": {"duration_s": 1}}, {"set_weight": 60}, {"pause": {"duration_s": 1}}]},
            }))
            runner, home = CliRunner(), ["--home", str(tmp_path / "home")]
            first = runner.invoke(cli, ["start", f"{MODEL}:v1", "-f", str(spec), *home])
            assert first.exit_code == 0, first.output
            detached = runner.invoke(cli, ["start", f"{MODEL}:v2", "-f", str(spec), "--detach", *home])
            assert detached.exit_code == 0 and "Progressing" in detached.output, detached.output

            dep = next(d for d in shipped if d["kind"] == "Deployment")
            args = list(dep["spec"]["template"]["spec"]["containers"][0]["args"])  # the container's own arguments
            args[args.index("--port") + 1] = "0"
            args[args.index("--address") + 1] = "127.0.0.1"
            args[args.index("--lease-duration") + 1] = "2"
            env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
            env["KUBECONFIG"] = str(kubeconfig)  # in a pod: the service account; here: the fake server
            controller = subprocess.Popen([sys.executable, "-m", "rollout", *args], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            store = ConfigMapStateStore(kube, renew=False)

            def finished():
                ms = store.load(MODEL)
                return ms.history[0] if ms.history and ms.history[0].candidate.version == "v2" else None

            r = wait_for(finished, what="the controller to finish the rollout", timeout_s=90)
            assert r.phase is Phase.PROMOTED, r.phase
            assert store.load(MODEL).stable.version == "v2"
            lease = cluster.find("leases", "rollout-controller", NAMESPACE)
            assert f"pid {controller.pid} " in lease["spec"]["holderIdentity"]
            assert lease["spec"]["leaseTransitions"] == 1, "the shipped, empty Lease was taken over"
            assert any(r.verb == "update" and r.resource == "leases" and r.name == "rollout-controller"
                       for r in cluster.requests)
    finally:
        if controller is not None:
            controller.kill()
            output = controller.communicate(timeout=10)[0]
            assert "forbidden" not in output.lower(), output
        kubelet.stop()

