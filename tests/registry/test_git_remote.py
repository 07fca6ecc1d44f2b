"""The git registry with a remote (a bare repository on disk, reached by file:// as a
remote would be): cached clone, tags as versions, the environment file recorded back
with a push race, and hostile or malformed content refused naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import git
import pytest
import yaml

from rollout.errors import NotFound, RegistryError
from rollout.registry.base import Outcome, RegistryContentError
from rollout.registry.git import GitRegistry, publish_version
from rollout.spec import parse_spec
from rollout.errors import SpecError
from tests.integration.conftest import cli_env

pytestmark = pytest.mark.timeout(300)


def _mktree(repo: Path, entries: dict[str, tuple[str, bytes | str]]) -> str:
    """A tree from {path: (mode, content)} written with git's plumbing, which (unlike
    the index) accepts hostile names: what a crafted remote could serve."""
    def write(items: dict[str, tuple[str, bytes | str]]) -> str:
        here: dict[str, tuple[str, bytes | str]] = {}
        sub: dict[str, dict[str, tuple[str, bytes | str]]] = {}
        for path, value in items.items():
            head, _, rest = path.partition("/")
            if rest:
                sub.setdefault(head, {})[rest] = value
            else:
                here[head] = value
        lines = []
        for name, (mode, content) in here.items():
            if mode == "160000":
                lines.append(f"160000 commit {content}\t{name}")
                continue
            data = content.encode() if isinstance(content, str) else content
            sha = subprocess.run(["git", "hash-object", "-w", "--stdin"], input=data, cwd=repo, capture_output=True,
                                 check=True).stdout.decode().strip()
            lines.append(f"{mode} blob {sha}\t{name}")
        for name, children in sub.items():
            lines.append(f"040000 tree {write(children)}\t{name}")
        return subprocess.run(["git", "mktree", "-z"], input="\0".join(lines) + "\0", text=True, cwd=repo,
                              capture_output=True, check=True).stdout.strip()

    tree = write(entries)
    commit = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit-tree", tree, "-m", "crafted"],
                            cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/heads/main", commit], cwd=repo, check=True)
    return commit


@pytest.fixture
def remote(tmp_path: Path) -> str:
    """A bare remote with iris v1, v2 (directories; metrics in model.yaml) and fraud as tags."""
    work = tmp_path / "author"
    for version, acc in [("v1", 0.95), ("v2", 0.96)]:
        src = tmp_path / f"src-{version}"
        src.mkdir()
        (src / "model.joblib").write_bytes(version.encode())
        publish_version(work, "iris", version, src, metrics={"accuracy": acc})
    repo = git.Repo(work)
    (work / "models" / "fraud").mkdir()
    for n in (1, 2):
        (work / "models" / "fraud" / "model.joblib").write_bytes(f"fraud-{n}".encode())
        repo.index.add(["models/fraud/model.joblib"])
        repo.index.commit(f"fraud v{n}")
        repo.create_tag(f"fraud/v{n}")
    bare = tmp_path / "remote.git"
    git.Repo.clone_from(work, bare, bare=True)
    return bare.as_uri()


def test_remote_is_cloned_once_and_refreshed_on_each_run(remote, tmp_path):
    cache = tmp_path / "cache"
    reg = GitRegistry(remote, "main", cache_dir=cache)
    mv = reg.resolve("iris:v2")
    assert Path(mv.uri, "model.joblib").read_bytes() == b"v2" and mv.eval_metrics == {"accuracy": 0.96}
    clones = list((cache / "repos").iterdir())
    assert (clones[0] / "shallow").is_file(), "the cached clone is shallow"
    author = git.Repo(Path(remote.removeprefix("file://")).parent / "author")
    src = tmp_path / "src-v3"
    src.mkdir()
    (src / "model.joblib").write_bytes(b"v3")
    publish_version(Path(author.working_tree_dir), "iris", "v3", src)
    author.git.push(remote, "main")
    assert GitRegistry(remote, "main", cache_dir=cache).list("iris") == ["v1", "v2", "v3"]  # next run sees it
    assert list((cache / "repos").iterdir()) == clones  # the same clone, fetched


def test_versions_can_be_tags(remote, tmp_path):
    reg = GitRegistry(remote, "main", cache_dir=tmp_path / "c")
    assert reg.list("fraud") == ["v1", "v2"]
    assert Path(reg.resolve("fraud:v1").uri, "model.joblib").read_bytes() == b"fraud-1"
    assert Path(reg.resolve("fraud:latest").uri, "model.joblib").read_bytes() == b"fraud-2"


def test_a_branch_tag_or_commit_can_be_read(remote, tmp_path):
    bare = git.Repo(remote.removeprefix("file://"))
    first = list(bare.iter_commits("main"))[-1].hexsha
    assert GitRegistry(remote, first, cache_dir=tmp_path / "c").list("iris") == ["v1"]
    assert GitRegistry(remote, "fraud/v1", cache_dir=tmp_path / "c").list("iris") == ["v1", "v2"]
    with pytest.raises(RegistryError, match="has no commit, branch or tag 'nope'"):
        GitRegistry(remote, "nope", cache_dir=tmp_path / "c").list("iris")


def test_two_runs_race_to_record_one_retries_on_the_new_head_and_nothing_is_lost(remote, tmp_path):
    a = GitRegistry(remote, "main", cache_dir=tmp_path / "a", environment_file="environments/production.yaml")
    b = GitRegistry(remote, "main", cache_dir=tmp_path / "b", environment_file="environments/production.yaml")
    a.list("iris"), b.list("iris")  # both runs start (and refresh) before either records
    a.record(Outcome("iris", "promoted", serving="v2", previous="v1", candidate="v2", rollout_id="run-a", at=0))
    b.record(Outcome("fraud", "promoted", serving="v2", previous="v1", candidate="v2", rollout_id="run-b", at=60))
    bare = git.Repo(remote.removeprefix("file://"))
    messages = [c.message for c in bare.iter_commits("main", max_count=2)]
    assert messages == ["fraud: v2 promoted (rollout run-b)", "iris: v2 promoted (rollout run-a)"]
    env = yaml.safe_load(bare.git.show("main:environments/production.yaml"))
    assert env["models"]["iris"]["version"] == "v2" and env["models"]["iris"]["rollout_id"] == "run-a"
    assert env["models"]["fraud"] == {"version": "v2", "previous": "v1", "outcome": "promoted", "rollout_id": "run-b",
                                      "candidate": "v2", "platform": "local", "time": "1970-01-01T00:01:00Z"}
    assert len(list(bare.iter_commits("main"))) == len(list(bare.iter_commits("main", first_parent=True)))  # no merges
    b.record(Outcome("iris", "rolled_back", serving="v1", previous="v2", candidate="v2", rollout_id="run-c", at=120))
    env = yaml.safe_load(bare.git.show("main:environments/production.yaml"))
    assert env["models"]["iris"]["version"] == "v1" and env["models"]["iris"]["outcome"] == "rolled_back"


def test_without_environment_file_nothing_is_written(remote, tmp_path):
    reg = GitRegistry(remote, "main", cache_dir=tmp_path / "c")
    before = git.Repo(remote.removeprefix("file://")).commit("main").hexsha
    assert reg.record(Outcome("iris", "promoted", "v2", "v1", "v2", "r", 0)) == ""
    assert git.Repo(remote.removeprefix("file://")).commit("main").hexsha == before


def test_unreachable_remote_is_exit_1_and_nothing_moves(tmp_path):
    from tests.fixtures.prometheus import free_port

    home = tmp_path / "home"
    spec = tmp_path / "rollout.yaml"
    spec.write_text(yaml.safe_dump({"model": "iris", "registry": {
        "type": "git", "url": f"http://127.0.0.1:{free_port()}/registry.git"}}))
    done = subprocess.run([sys.executable, "-m", "rollout", "start", "iris:v1", "-f", str(spec)], env=cli_env(home),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1 and "cannot be reached or read" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not list(home.glob("state/*.json")) and not (home / "local").exists()


@pytest.mark.parametrize("url, problem", [
    ("ext::sh -c touch% /tmp/pwned", "ext:: remote helpers are not supported"),
    ("https://user:s3cret@example.com/r.git", "must not carry credentials"),
    ("ftp://example.com/r.git", "URL scheme 'ftp' is not supported"),
    ("--upload-pack=touch /tmp/x", "must not start with '-'"),
])
def test_unsupported_or_credentialed_urls_are_refused_at_lint(url, problem, tmp_path):
    with pytest.raises(SpecError, match=problem):
        parse_spec({"model": "iris", "registry": {"type": "git", "url": url}})
    spec = tmp_path / "r.yaml"
    spec.write_text(yaml.safe_dump({"model": "iris", "registry": {"type": "git", "url": url}}))
    done = subprocess.run([sys.executable, "-m", "rollout", "lint", "-f", str(spec)], env=cli_env(tmp_path / "h"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "registry.git.url" in done.stderr and "s3cret" not in done.stderr


def test_https_credentials_reach_git_only_through_its_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REG_USER", "ci")
    monkeypatch.setenv("REG_TOKEN", "ghp_secret_value")
    reg = GitRegistry("https://127.0.0.1:9/r.git", cache_dir=tmp_path, username_env="REG_USER",
                      password_env="REG_TOKEN")
    env = reg.git_env()
    assert env["GIT_ALLOW_PROTOCOL"] == "file:https:http:ssh"
    # A credential helper that reads the variables when the server asks; their values are copied nowhere.
    assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == ("credential.helper", "")
    assert env["GIT_CONFIG_KEY_1"] == "credential.helper" and '"$REG_USER" "$REG_TOKEN"' in env["GIT_CONFIG_VALUE_1"]
    assert "ghp_secret_value" not in repr(env) and "Y2k6Z2hw" not in repr(env)
    with pytest.raises(RegistryError) as err:
        reg.list("iris")
    assert "ghp_secret_value" not in str(err.value) and "Y2k6Z2hw" not in str(err.value)


# ---------------------------------------------------------------- hostile and malformed content

@pytest.fixture
def crafted(tmp_path: Path):
    repo = tmp_path / "crafted"
    git.Repo.init(repo, initial_branch="main")

    def make(entries: dict[str, tuple[str, bytes | str]]) -> GitRegistry:
        _mktree(repo, {"models/iris/v0/model.joblib": ("100644", b"ok"), **entries})
        return GitRegistry(str(repo), "main", cache_dir=tmp_path / "cache")

    return make


@pytest.mark.parametrize("entries, problem", [
    ({"models/iris/v1/evil": ("120000", "../../../../../etc/passwd")}, r"symlink evil -> \.\./.* points outside"),
    ({"models/iris/v1/evil": ("120000", "/etc/passwd")}, r"symlink evil -> /etc/passwd points outside"),
    ({"models/iris/v1/../escape": ("100644", b"x")}, r"a path escapes the registry \(Invalid repository path '.*\.\.'\); refused"),
    ({"models/iris/v1/sub": ("160000", "a" * 40)}, r"sub is a submodule"),
])
def test_paths_that_escape_the_version_are_refused(crafted, entries, problem, tmp_path):
    entries = {**entries, "models/iris/v1/model.joblib": ("100644", b"x")}
    reg = crafted(entries)
    with pytest.raises(RegistryContentError, match=problem):
        reg.resolve("iris:v1")
    assert not any((tmp_path / "cache" / "exports" / "iris").glob("v1-*[!l]")), "nothing half-exported is left"
    assert Path(reg.resolve("iris:v0").uri, "model.joblib").read_bytes() == b"ok"  # other versions unaffected


def test_a_symlink_inside_the_version_is_kept(crafted):
    reg = crafted({"models/iris/v1/model.joblib": ("100644", b"x"), "models/iris/v1/link": ("120000", "model.joblib")})
    assert Path(reg.resolve("iris:v1").uri, "link").read_bytes() == b"x"


@pytest.mark.parametrize("entries, problem", [
    ({"models/iris/aliases.yaml": ("100644", "production: [v0\n")}, r"models/iris/aliases.yaml is malformed"),
    ({"models/iris/aliases.yaml": ("100644", "- v0\n")}, r"aliases.yaml must be a mapping"),
    ({"models/iris/aliases.yaml": ("100644", "production: ../v0\n")}, r"version '\.\./v0' is not valid"),
    ({"models/iris/aliases.yaml": ("100644", "'bad alias': v0\n")}, r"alias 'bad alias' is not valid"),
    ({"models/iris/v0/model.yaml": ("100644", "metrics: {accuracy: high}\n")}, r"metric 'accuracy' must be a number"),
    ({"models/iris/v0/model.yaml": ("100644", "runtime: '../../bin/sh'\n")}, r"runtime '../../bin/sh' is not a valid"),
    ({"models/iris/v0/model.yaml": ("100644", "- a list\n")}, r"iris:v0: model.yaml must be a mapping"),
    ({"models/iris/v 1/model.joblib": ("100644", b"x")}, r"version 'v 1' is not valid"),
    ({"models/iris/v1\n/model.joblib": ("100644", b"x")}, r"version 'v1\\n' is not valid"),
])
def test_malformed_registry_files_are_exit_2_naming_the_file(crafted, entries, problem):
    reg = crafted(entries)
    with pytest.raises(RegistryContentError, match=problem) as err:
        reg.resolve("iris@production" if "aliases" in next(iter(entries)) else "iris:v0")
    assert err.value.exit_code == 2


def test_unknown_alias_lists_the_aliases(crafted):
    reg = crafted({"models/iris/aliases.yaml": ("100644", "production: v0\ncanary: v0\n")})
    with pytest.raises(NotFound, match="iris@staging: no such alias; aliases: canary, production"):
        reg.resolve("iris@staging")
