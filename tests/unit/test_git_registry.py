"""The git registry on real repositories made in tmp dirs."""

from pathlib import Path

import git
import pytest

from rollout.errors import BadInput, NotFound, RegistryError
from rollout.registry.base import RegistryContentError
from rollout.registry.git import GitRegistry, publish_version


@pytest.fixture
def registry_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "registry"
    for version, payload in [("v1", b"one"), ("v2", b"two"), ("v10", b"ten")]:
        src = tmp_path / f"src-{version}"
        src.mkdir()
        (src / "model.joblib").write_bytes(payload)
        (src / "samples").mkdir()
        (src / "samples" / "a.json").write_text('{"inputs": []}')
        publish_version(repo, "iris", version, src, metadata={"trained_on": version})
    (repo / "models" / "iris" / "aliases.yaml").write_text("production: v2\n")
    r = git.Repo(repo)
    r.index.add(["models/iris/aliases.yaml"])
    r.index.commit("alias")
    return repo


def test_resolve_exports_the_version_files(registry_repo, tmp_path):
    mv = GitRegistry(str(registry_repo), cache_dir=tmp_path / "cache").resolve("iris:v2")
    assert (mv.name, mv.version, mv.runtime) == ("iris", "v2", "sklearn")
    assert mv.metadata == {"trained_on": "v2"}
    assert (Path(mv.uri) / "model.joblib").read_bytes() == b"two"
    assert (Path(mv.uri) / "samples" / "a.json").exists()


def test_latest_is_the_highest_version_in_natural_order(registry_repo, tmp_path):
    reg = GitRegistry(str(registry_repo), cache_dir=tmp_path / "cache")
    assert reg.list("iris") == ["v1", "v2", "v10"]
    assert reg.resolve("iris:latest").version == "v10"


def test_alias_resolves_through_aliases_yaml(registry_repo, tmp_path):
    assert GitRegistry(str(registry_repo), cache_dir=tmp_path / "c").resolve("iris@production").version == "v2"
    with pytest.raises(NotFound, match="iris@staging: no such alias; aliases: production"):
        GitRegistry(str(registry_repo), cache_dir=tmp_path / "c").resolve("iris@staging")


def test_unknown_version_lists_the_versions_that_exist(registry_repo, tmp_path):
    with pytest.raises(NotFound, match=r"iris:v3 is not in the registry; versions: v1, v2, v10"):
        GitRegistry(str(registry_repo), cache_dir=tmp_path / "c").resolve("iris:v3")


def test_unknown_model_lists_the_models_that_exist(registry_repo, tmp_path):
    with pytest.raises(NotFound, match=r"model 'fraud' is not in the registry .*; models: iris"):
        GitRegistry(str(registry_repo), cache_dir=tmp_path / "c").resolve("fraud:v1")


def test_bad_reference_forms_are_bad_input(registry_repo, tmp_path):
    reg = GitRegistry(str(registry_repo), cache_dir=tmp_path / "c")
    with pytest.raises(BadInput, match="names no version"):
        reg.resolve("iris")
    with pytest.raises(BadInput, match="DNS-1123"):
        reg.resolve("Iris:v1")
    with pytest.raises(BadInput, match="version 'v1;drop' is not valid"):
        reg.resolve("iris:v1;drop")


def test_registry_read_at_an_older_ref_does_not_see_newer_versions(registry_repo, tmp_path):
    first = list(git.Repo(registry_repo).iter_commits("main"))[-1].hexsha
    reg = GitRegistry(str(registry_repo), ref=first, cache_dir=tmp_path / "c")
    assert reg.list("iris") == ["v1"]


def test_missing_or_non_git_registry_is_named(tmp_path):
    with pytest.raises(RegistryError, match="is not a git repository"):
        GitRegistry(str(tmp_path), cache_dir=tmp_path / "c").list("iris")
    with pytest.raises(RegistryError, match="does not exist"):
        GitRegistry(str(tmp_path / "nowhere" / "x.git"), cache_dir=tmp_path / "c").list("iris")


def test_malformed_model_yaml_is_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.joblib").write_bytes(b"x")
    repo = tmp_path / "reg"
    publish_version(repo, "iris", "v1", src)
    (repo / "models/iris/v1/model.yaml").write_text("runtime: [unclosed\n")
    r = git.Repo(repo)
    r.index.add(["models/iris/v1/model.yaml"])
    r.index.commit("break")
    with pytest.raises(RegistryContentError, match=r"iris:v1: model.yaml is malformed"):
        GitRegistry(str(repo), cache_dir=tmp_path / "c").resolve("iris:v1")


def test_published_versions_are_immutable(registry_repo, tmp_path):
    with pytest.raises(RegistryError, match="already exists"):
        publish_version(registry_repo, "iris", "v1", tmp_path / "src-v1")
