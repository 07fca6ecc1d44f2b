"""The git registry over ssh against a real OpenSSH server on 127.0.0.1 (tests/fixtures/
sshd.py; Debian's openssh-server, installed by `scripts/setup.sh --dev`): the key and the
server's host key come from the spec's files (``ssh_key_file``, ``ssh_known_hosts_file``),
resolve, materialise and the environment-file push work, and an unknown host key or a key
the server does not accept is exit 1 naming the failure, with nothing recorded."""

from __future__ import annotations

import time
from pathlib import Path

import git
import pytest
import yaml

from rollout.errors import RegistryError
from rollout.registry.base import Outcome
from rollout.registry.git import GitRegistry, publish_version
from tests.fixtures.sshd import SSHD, ssh_server

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not SSHD.exists(), reason="sshd not installed (apt-get install openssh-server; "
                                 "scripts/setup.sh --dev does)")]


@pytest.fixture
def served(tmp_path: Path, iris_models):
    work = tmp_path / "author"
    for v, kind in [("v1", "good"), ("v2", "other")]:
        publish_version(work, "iris", v, iris_models[kind])
    bare = tmp_path / "srv" / "registry.git"
    git.Repo.clone_from(work, bare, bare=True)
    with ssh_server(tmp_path / "sshd") as server:
        yield server, bare


def _registry(server, bare: Path, cache: Path, **over) -> GitRegistry:
    options = {"ssh_key_file": str(server.key_file), "ssh_known_hosts_file": str(server.known_hosts), **over}
    return GitRegistry(server.url(bare), "main", cache_dir=cache, environment_file="environments/production.yaml",
                       **options)


def test_resolve_materialise_and_record_over_ssh(served, tmp_path):
    server, bare = served
    reg = _registry(server, bare, tmp_path / "cache")

    mv = reg.resolve("iris:latest")
    assert mv.version == "v2" and (reg.materialise(mv) / "model.joblib").is_file()
    line = reg.record(Outcome(model="iris", kind="promoted", serving="v2", previous="v1", candidate="v2",
                              rollout_id="r-ssh-1", at=time.time()))
    assert "recorded iris=v2" in line
    recorded = yaml.safe_load(git.Repo(bare).git.show("main:environments/production.yaml"))["models"]["iris"]
    assert (recorded["version"], recorded["rollout_id"]) == ("v2", "r-ssh-1")


def test_an_unknown_host_key_or_a_refused_key_is_a_clear_error_and_nothing_is_recorded(served, tmp_path):
    server, bare = served
    head = git.Repo(bare).commit("main").hexsha
    stranger = tmp_path / "known_hosts_of_another_server"
    stranger.write_text("[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBy5ZfW1QrFvX0m8r2qKkq9x1n9m0o6Q2b6hU5w9ZQhT\n")
    with pytest.raises(RegistryError, match=r"cannot be reached or read: No ED25519 host key is known for "
                                            r"\[127.0.0.1\]:\d+ .*; Host key verification failed"):
        _registry(server, bare, tmp_path / "c1", ssh_known_hosts_file=str(stranger)).resolve("iris:v1")

    import subprocess

    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True, timeout=30)
    with pytest.raises(RegistryError, match=r"cannot be reached or read: .*(Permission denied|Could not read)"):
        _registry(server, bare, tmp_path / "c2", ssh_key_file=str(other_key)).resolve("iris:v1")
    assert git.Repo(bare).commit("main").hexsha == head
