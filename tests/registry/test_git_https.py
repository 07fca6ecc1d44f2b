"""The git registry against a real git server over HTTP with basic auth (git's own
``git http-backend`` behind tests/fixtures/git_http.py on 127.0.0.1): the credentials come
from the user's environment variables named by ``username_env`` / ``password_env``, as the
README documents, never from the URL. Resolve, materialise and the environment-file push
work; a wrong password is exit 1 naming the failure; the password (raw or base64, alone or
as ``user:password``) is in no output, no file of the rollout home (state, caches, the
clones' git config) and no environment rollout gives a child (git's added variables, the
model servers, the router)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import git
import pytest
import yaml

from rollout.platforms.local import supervisor as sv
from rollout.registry.git import GitRegistry, publish_version
from rollout.spec import parse_spec
from tests.registry.conftest import quick_canary_spec
from tests.fixtures.git_http import git_http_server
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.timeout(300)

USER = "rollout-ci"


def _forms(user: str, password: str) -> list[str]:
    """Every spelling of the secret a leak could take."""
    return [password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"{user}:{password}".encode()).decode()]


def _leaks(text: str, forms: list[str]) -> list[str]:
    return [f for f in forms if f in text]


@pytest.fixture
def served(tmp_path: Path, iris_models):
    """iris v1, v2 in a bare repository served over HTTP with basic auth; yields (server, repo, password)."""
    work = tmp_path / "author"
    for v, kind in [("v1", "good"), ("v2", "other")]:
        publish_version(work, "iris", v, iris_models[kind])
    root = tmp_path / "srv"
    bare = root / "registry.git"
    git.Repo.clone_from(work, bare, bare=True)
    git.Repo(bare).git.config("http.receivepack", "true")
    password = f"pw-{uuid.uuid4().hex}"
    with git_http_server(root, USER, password) as server:
        yield server, bare, password


def _spec(tmp_path: Path, url: str) -> Path:
    return quick_canary_spec(tmp_path, "iris", {
        "type": "git", "url": url, "ref": "main", "username_env": "REGISTRY_USER",
        "password_env": "REGISTRY_TOKEN", "environment_file": "environments/production.yaml"})


def test_resolve_and_materialise_over_https_answer_the_servers_challenge(served, tmp_path, monkeypatch):
    server, _, password = served
    monkeypatch.setenv("REGISTRY_USER", USER)
    monkeypatch.setenv("REGISTRY_TOKEN", password)
    spec = parse_spec(yaml.safe_load(_spec(tmp_path, server.url("registry.git")).read_text()))
    reg = GitRegistry.from_spec(spec.registry, tmp_path / "home" / "registry")

    mv = reg.resolve("iris:v2")
    files = reg.materialise(mv)
    assert (files / "model.joblib").is_file() and reg.list("iris") == ["v1", "v2"]
    assert server.log[0] == ("GET", "-", 401)  # nothing sent before the server asked
    assert ("GET", USER, 200) in server.log and all(s != 401 for _, u, s in server.log if u == USER)
    added = reg.git_env()
    assert not _leaks(repr(added), _forms(USER, password))  # the helper names the variable, never its value
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert not _leaks(path.read_bytes().decode("latin-1"), _forms(USER, password)), path


def _supervised_environments(home: Path) -> list[str]:
    out = []
    records = [*sv.version_records(home, "iris"), sv.read_record(sv.router_record_path(home, "iris"))]
    for record in records:
        if record is not None and sv.is_alive(record):
            out.append(Path(f"/proc/{record.pid}/environ").read_bytes().decode("latin-1"))
    return out


def test_cli_rollouts_push_the_environment_file_and_a_wrong_password_is_exit_1(served, tmp_path, local_home):
    server, bare, password = served
    spec = _spec(tmp_path, server.url("registry.git"))
    forms = _forms(USER, password)

    def rollout(*args: str, token: str = password) -> subprocess.CompletedProcess:
        env = {**cli_env(local_home), "REGISTRY_USER": USER, "REGISTRY_TOKEN": token}
        done = subprocess.run([sys.executable, "-m", "rollout", *args], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert not _leaks(done.stdout + done.stderr, forms), args
        return done

    def recorded() -> dict:
        return yaml.safe_load(git.Repo(bare).git.show("main:environments/production.yaml"))["models"]["iris"]

    first = rollout("start", "iris:v1", "-f", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    second = rollout("start", "iris:v2", "-f", str(spec))
    assert second.returncode == 0, second.stdout + second.stderr
    assert (recorded()["version"], recorded()["previous"], recorded()["outcome"]) == ("v2", "v1", "promoted")
    assert git.Repo(bare).commit("main").message.startswith("iris: v2 promoted")
    assert ("POST", USER, 200) in server.log  # the push went through the authenticated receive-pack

    environments = _supervised_environments(local_home)
    assert environments, "the model server and router should be running"
    for environ in environments:
        assert not _leaks(environ, forms) and "REGISTRY_TOKEN" not in environ

    # v3 is published, but the token is wrong: exit 1 naming the failure; nothing moves.
    work = tmp_path / "author2"
    git.Repo.clone_from(bare, work, branch="main")
    publish_version(work, "iris", "v3", work / "models" / "iris" / "v2")
    git.Repo(work).git.push("origin", "main")
    state_before = (local_home / "state" / "iris.json").read_text()
    head_before = git.Repo(bare).commit("main").hexsha
    wrong = rollout("start", "iris:v3", "-f", str(spec), token=f"wrong-{uuid.uuid4().hex}")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert f"registry '{server.url('registry.git')}' cannot be reached or read" in wrong.stderr
    assert "Authentication failed" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    assert (local_home / "state" / "iris.json").read_text() == state_before
    assert git.Repo(bare).commit("main").hexsha == head_before
    assert ("GET", "wrong", 401) in server.log

    missing = subprocess.run([sys.executable, "-m", "rollout", "start", "iris:v3", "-f", str(spec)],
                             env={**cli_env(local_home), "REGISTRY_USER": USER}, capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
    assert missing.returncode == 1 and "environment variable REGISTRY_TOKEN is not set" in missing.stderr

    for path in local_home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not _leaks(path.read_bytes().decode("latin-1"), forms), path
    assert not _leaks(spec.read_text(), forms)


def test_an_env_name_that_is_not_a_variable_name_is_refused_at_lint(tmp_path):
    from rollout.errors import SpecError

    raw = yaml.safe_load(_spec(tmp_path, "https://git.example.com/registry.git").read_text())
    raw["registry"]["password_env"] = "TOKEN; rm -rf ~"
    with pytest.raises(SpecError, match=r"registry.git.password_env: .*is not an environment variable name"):
        parse_spec(raw)
    assert os.environ.get("TOKEN; rm -rf ~") is None
