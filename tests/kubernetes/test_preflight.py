"""`rollout lint --cluster` (and every `rollout start` on Kubernetes) asks the cluster
what the spec needs: permissions by SelfSubjectAccessReview, CRDs at a version with the
fields the strategy uses; each missing thing is named. `render` refuses what `lint` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import cli
from rollout.platforms.kubernetes import rbac
from tests.kubernetes.crds import CRD_DIR
from tests.kubernetes.fake_apiserver import RESOURCES, Authorizer
from tests.kubernetes.helpers import MODEL, NAMESPACE, make_rig, make_spec, version

pytestmark = pytest.mark.timeout(120)
OLD_HTTPROUTE = str(CRD_DIR / "older" / "gateway.networking.k8s.io_httproutes-v1.2.1.yaml")


def _spec(tmp_path: Path, kubeconfig: Path | None, router: str = "gateway-api", strategy: dict | None = None,
          **platform) -> Path:
    plat = {"type": "kubernetes", "namespace": NAMESPACE, "router": router, "pod_monitor": True, **platform}
    if kubeconfig:
        plat["kubeconfig"] = str(kubeconfig)
    if router == "gateway-api":
        plat["gateway"] = {"name": "public"}
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump({"model": MODEL, "registry": {"type": "git", "url": str(tmp_path)},
                                    "platform": plat, "strategy": strategy or {"type": "shadow", "mirror_percent": 20},
                                    "analysis": {"prometheus": {"url": "http://127.0.0.1:9"}, "metrics": [
                                        {"name": "errors", "provider": "prometheus", "query": "pack:mlserver/error_rate",
                                         "judge": {"type": "threshold", "max": 0.1}}]}}))
    return path


def lint(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["lint", "--cluster", "-f", str(path)])
    return result.exit_code, result.output


def test_everything_present_passes(tmp_path, cluster, kubeconfig):
    code, out = lint(_spec(tmp_path, kubeconfig))
    assert code == 0, out


def test_shadow_on_gateway_api_older_than_1_3_is_named(tmp_path, cluster, kubeconfig):
    cluster.install_crd(OLD_HTTPROUTE)
    code, out = lint(_spec(tmp_path, kubeconfig))
    assert code == 2
    assert "httproutes.gateway.networking.k8s.io (Gateway API v1.2.1) has no RequestMirror percent" in out
    assert "v1.3.0 or later" in out
    # a canary does not mirror: the same cluster is fine for it
    code, out = lint(_spec(tmp_path, kubeconfig, strategy={"type": "canary", "weights": [50]}))
    assert code == 0, out


def test_what_the_old_crd_refuses_is_refused_by_the_fake_server_too(cluster, kubelet, kubeconfig):
    """Schema-strict apply: without the preflight, the mirror step's apply fails on a v1.2 CRD."""
    from rollout.errors import PlatformError
    from rollout.platforms.base import Traffic

    cluster.install_crd(OLD_HTTPROUTE)
    rig = make_rig(cluster, kubeconfig, make_spec("gateway-api"))
    rig.platform.deploy(version("v1"))
    rig.platform.set_traffic(Traffic("v1"))
    with pytest.raises(PlatformError, match="percent"):
        rig.platform.set_traffic(Traffic("v1", "v2", 0, 20))


def test_missing_crd_and_missing_permissions_are_each_named(tmp_path, cluster, kubeconfig):
    crds = next(r for r in RESOURCES if r.plural == "customresourcedefinitions")
    cluster.delete(crds, None, "podmonitors.monitoring.coreos.com")
    rules = [{**r, "verbs": [v for v in r["verbs"] if v != "create"]} if r["resources"] == ["deployments"] else r
             for r in rbac.role_rules()]
    rules.append({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get"]})
    cluster.authorizer = Authorizer(rules, NAMESPACE)
    cluster.authorizer.allows = _cluster_scoped_reads(cluster.authorizer)  # the optional preflight ClusterRole
    code, out = lint(_spec(tmp_path, kubeconfig, strategy={"type": "canary", "weights": [50]}))
    assert code == 2
    assert "CRD podmonitors.monitoring.coreos.com is not installed" in out
    assert "cannot create deployments.apps in namespace 'models'" in out


def _cluster_scoped_reads(az: Authorizer):
    namespaced = az.allows

    def allows(verb, group, resource, namespace, name=None):
        if namespace is None:
            return verb == "get" and resource == "customresourcedefinitions"
        return namespaced(verb, group, resource, namespace, name)
    return allows


def test_with_only_the_shipped_role_crds_are_reported_unchecked_not_failed(tmp_path, cluster, kubeconfig):
    from tests.kubernetes.test_rbac import ROLE_FILE

    cluster.authorizer = Authorizer.from_role_file(str(ROLE_FILE), NAMESPACE)
    code, out = lint(_spec(tmp_path, kubeconfig, router="istio"))
    assert code == 0, out
    assert "not checked: this identity may not read CRDs" in out


def test_render_refuses_what_lint_refuses(tmp_path):
    result = CliRunner().invoke(cli, ["render", "-f", str(_spec(tmp_path, None, router="service"))])
    assert result.exit_code == 2
    assert "cannot mirror" in result.output
