"""Names from outside (CLI, spec, registry trees, aliases) are validated by full match,
and server templates can never turn a value into a command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rollout import names
from rollout.errors import BadInput
from rollout.registry.base import ModelVersion, parse_ref
from rollout.server_template import parse_template, render_template

pytestmark = pytest.mark.timeout(120)

HOSTILE_VERSIONS = ["v9$(touch x)", "v1\n", "v1\r", "../v1", "v1..v2", "v1;rm", "v 1", "", "v" * 64, "-v1", "v1/x",
                    "v1\x1b[31m", "`id`"]


@pytest.mark.parametrize("value", HOSTILE_VERSIONS)
def test_hostile_versions_are_refused_by_name(value: str) -> None:
    with pytest.raises(BadInput, match="version .* is not valid"):
        names.version(value)


@pytest.mark.parametrize("value", ["iris\n", "Iris", "iris-", "-iris", "a" * 64, "ir_is", "ir.is", "", "iris\x00"])
def test_model_names_are_dns1123_labels_with_no_trailing_newline(value: str) -> None:
    with pytest.raises(BadInput, match="model name"):
        names.model_name(value)


@pytest.mark.parametrize("value", ["kube-system/../x", "../kube-system", "default\n", "Default", "a" * 64, "a.b"])
def test_kubernetes_namespaces_are_dns1123_labels(value: str) -> None:
    with pytest.raises(BadInput, match="Kubernetes namespace"):
        names.k8s_namespace(value)


def test_good_names_pass_unchanged() -> None:
    assert names.model_name("iris-2") == "iris-2"
    assert names.version("v1.2_rc-3") == "v1.2_rc-3"
    assert names.alias("production") == "production"
    assert names.k8s_namespace("team-a") == "team-a"
    assert names.k8s_name("iris-v1.canary") == "iris-v1.canary"


def test_a_model_version_cannot_even_be_made_with_a_hostile_version() -> None:
    """Wherever a version comes from (a git tree, MLflow, an alias, the state), it becomes a
    ModelVersion first: the check there covers every registry."""
    with pytest.raises(BadInput, match="version"):
        ModelVersion("iris", "v9$(touch x)", "/tmp")


def test_references_refuse_bad_aliases_and_trailing_newlines() -> None:
    for ref in ["iris@", "iris@prod\n", "iris@a b", "iris:v1\n", "iris\n:v1"]:
        with pytest.raises(BadInput):
            parse_ref(ref)


def test_a_shell_line_template_quotes_each_value_so_nothing_runs(tmp_path: Path) -> None:
    """Even a value no validator would pass (the second wall) runs nothing through `sh -c`."""
    marker = tmp_path / "pwned"
    template = 'sh -c "echo serving {name} {version} on {port}"'
    argv = render_template(template, {"port": "8000", "model_dir": str(tmp_path), "name": "iris",
                                      "version": f"v9$(touch {marker}); touch {marker}"})
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    assert not marker.exists()
    assert f"v9$(touch {marker}); touch {marker}" in out  # passed as data, verbatim


def test_a_template_value_stays_one_argv_item() -> None:
    argv = render_template("serve --dir {model_dir} --port {port}", {"port": "1", "model_dir": "/a b/c --evil",
                                                                      "name": "", "version": ""})
    assert argv == ["serve", "--dir", "/a b/c --evil", "--port", "1"]


@pytest.mark.parametrize("template, problem", [
    ("serve --port {prot}", "unknown placeholder '{prot}'"),
    ('sh -c "serve {port}', "cannot be parsed"),
    ("serve {port!r}", "takes no conversion"),
    ("serve {port:>10}", "takes no conversion"),
    ("serve {port.__class__}", "unknown placeholder"),
    ("serve {", "write a literal brace"),
    ("   ", "command template"),
])
def test_bad_templates_are_refused_naming_the_problem(template: str, problem: str) -> None:
    with pytest.raises(BadInput, match=__import__("re").escape(problem)):
        parse_template(template)
