"""A model registry in a git repository, on disk or remote (https, ssh).

Layout: ``models/<name>/<version>/`` holds a version's files and an optional
``model.yaml`` (``runtime``, ``metadata``, ``metrics``: logged evaluation metrics);
``models/<name>/aliases.yaml`` maps aliases to versions (``production: v2``). A version
may also be a tag ``<name>/<version>`` whose commit holds the files in ``models/<name>/``.

A remote registry is cloned (bare, shallow: the tip of each branch and tag) into the rollout
home once and fetched on each run; an older commit named by ``ref`` is fetched alone.
Credentials come from the environment: git's credential helper (set through
``GIT_CONFIG_*``) prints the user's ``username_env`` / ``password_env`` variables when the
server challenges, and ``GIT_SSH_COMMAND`` names the ssh key; never a command line, a URL,
a config file or a log line. Only file, https, http and ssh transports are allowed (``GIT_ALLOW_PROTOCOL``).

Versions are exported from the commit the registry is read at into a cache directory
named after the version's tree hash (content-addressed), so a running server never sees
a half-changed checkout and the same bytes are never exported twice. Every name from the
repository is validated; a path or symlink that would leave the version directory, a
submodule or a malformed YAML file is refused (exit 2) naming the file.

With ``environment_file`` set, ``record`` commits what serves where to that file and
pushes it; a push that loses a race is retried on the new head, never forced.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import git
import yaml

from rollout.errors import NotFound, RegistryError
from rollout.registry.base import (
    ModelRef,
    ModelVersion,
    Outcome,
    RegistryContentError,
    parse_ref,
    require_cluster_readable,
    safe_relative,
    samples_in,
    validate_alias,
    validate_metrics,
    validate_model_name,
    validate_version,
)

SYMLINK_MODE = 0o120000
RUNTIME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
PUSH_ATTEMPTS = 5
AUTHOR = git.Actor("rollout", "rollout@localhost")


def _natural_key(version: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


def _is_local(url: str) -> bool:
    return "://" not in url and not re.match(r"^[^/]+@[^/:]+:", url)


class GitRegistry:
    def __init__(self, url: str, ref: str = "HEAD", cache_dir: Path | None = None, *,
                 environment_file: str | None = None, username_env: str | None = None,
                 password_env: str | None = None, ssh_key_file: str | None = None,
                 ssh_known_hosts_file: str | None = None) -> None:
        self.url = url
        self.ref = ref
        self.cache_dir = Path(cache_dir) if cache_dir else Path(".rollout") / "registry"
        self.environment_file = environment_file
        self.username_env, self.password_env, self.ssh_key_file = username_env, password_env, ssh_key_file
        self.ssh_known_hosts_file = ssh_known_hosts_file
        self._repo: git.Repo | None = None
        self._work: git.Repo | None = None
        self._commit_cache: git.Commit | None = None

    @classmethod
    def from_spec(cls, spec: Any, cache_dir: Path) -> "GitRegistry":
        return cls(spec.url, spec.ref, cache_dir=cache_dir, environment_file=spec.environment_file,
                   username_env=spec.username_env, password_env=spec.password_env, ssh_key_file=spec.ssh_key_file,
                   ssh_known_hosts_file=spec.ssh_known_hosts_file)

    # ------------------------------------------------------------------ repository access

    def git_env(self) -> dict[str, str]:
        """The environment rollout adds to every git command: allowed transports, no
        prompts, and for https credentials a credential helper that reads them from the
        user's own variables when the server asks (``username_env`` / ``password_env``).
        The secret is never copied: not into argv, a URL, a config value, a file or another
        variable; git answers the server's 401 challenge with it, and a wrong one makes git
        say "Authentication failed" instead of falling back to a prompt."""
        env = {"GIT_ALLOW_PROTOCOL": "file:https:http:ssh", "GIT_TERMINAL_PROMPT": "0"}
        if self.password_env:
            if not os.environ.get(self.password_env, ""):
                raise RegistryError(f"registry.password_env: environment variable {self.password_env} is not set")
            user = f'"${self.username_env}"' if self.username_env else "x-access-token"
            helper = (f"!f() {{ test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' {user} "
                      f"\"${self.password_env}\"; }}; f")
            # The empty value first clears helpers from the user's config: these credentials win.
            env.update({"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
                        "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": helper})
        ssh = []
        if self.ssh_key_file:
            ssh.append(f"-i '{Path(self.ssh_key_file).expanduser()}' -o IdentitiesOnly=yes")
        if self.ssh_known_hosts_file:
            ssh.append(f"-o UserKnownHostsFile='{Path(self.ssh_known_hosts_file).expanduser()}' "
                       "-o StrictHostKeyChecking=yes")
        if ssh:
            env["GIT_SSH_COMMAND"] = "ssh " + " ".join(ssh) + " -o BatchMode=yes"
        return env

    def _scrub(self, text: str) -> str:
        for name in (self.password_env,):
            value = os.environ.get(name, "") if name else ""
            if value:
                text = text.replace(value, "***")
        return text

    def _git_failure(self, what: str, exc: git.exc.GitCommandError) -> RegistryError:
        # GitPython wraps git's stderr as "stderr: '<text>'"; git's first lines say what failed
        # ("fatal: Authentication failed for ...", "Host key verification failed.").
        text = str(exc.stderr or "").strip().removeprefix("stderr:").strip().removeprefix("'").removesuffix("'")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = self._scrub("; ".join(lines[:2]) if lines else f"git exited with {exc.status}")
        return RegistryError(f"registry {self.url!r} {what}: {detail}")

    def _mirror_path(self) -> Path:
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return self.cache_dir / "repos" / digest

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        env = self.git_env()
        try:
            if _is_local(self.url):
                local = Path(self.url).expanduser()
                if not local.exists():
                    raise RegistryError(f"registry {self.url!r} does not exist")
                self._repo = git.Repo(local)
            else:
                mirror = self._mirror_path()
                if not (mirror / "HEAD").exists():
                    mirror.parent.mkdir(parents=True, exist_ok=True)
                    tmp = mirror.with_name(mirror.name + f".partial-{os.getpid()}")
                    shutil.rmtree(tmp, ignore_errors=True)
                    git.Repo.clone_from(self.url, tmp, bare=True, env=env, depth=1, no_single_branch=True,
                                        quiet=True)
                    os.replace(tmp, mirror)
                self._repo = git.Repo(mirror)
                self._repo.git.update_environment(**env)
                # Shallow: the tip of every branch and every tag, refreshed on each run.
                self._repo.git.fetch("origin", "--prune", "--force", "--depth", "1", "+refs/heads/*:refs/heads/*",
                                     "+refs/tags/*:refs/tags/*")
            self._repo.git.update_environment(**env)
        except git.exc.NoSuchPathError:
            raise RegistryError(f"registry {self.url!r} does not exist") from None
        except git.exc.InvalidGitRepositoryError:
            raise RegistryError(f"registry {self.url!r} is not a git repository") from None
        except git.exc.GitCommandError as exc:
            raise self._git_failure("cannot be reached or read", exc) from None
        if self.environment_file:
            self._worktree()  # refreshed now, at the start of the run (see record)
        return self._repo

    def _commit(self) -> git.Commit:
        if self._commit_cache is not None:
            return self._commit_cache
        repo = self._open()
        try:
            self._commit_cache = repo.commit(self.ref)
        except (git.exc.BadName, ValueError):
            try:  # an older commit than the shallow clone holds: fetch just that one
                if _is_local(self.url):
                    raise git.exc.BadName(self.ref)
                repo.git.fetch("origin", "--depth", "1", self.ref)
                self._commit_cache = repo.commit(self.ref)
            except (git.exc.BadName, ValueError, git.exc.GitCommandError):
                raise RegistryError(f"registry {self.url!r} has no commit, branch or tag {self.ref!r}") from None
        return self._commit_cache

    def _models_tree(self) -> git.Tree:
        try:
            return self._commit().tree / "models"
        except KeyError:
            raise RegistryError(f"registry {self.url!r} at {self.ref} has no models/ directory") from None

    def models(self) -> list[str]:
        return sorted(validate_model_name(t.name, RegistryContentError) for t in self._models_tree().trees)

    def _model_tree(self, name: str) -> git.Tree:
        validate_model_name(name)
        try:
            return self._models_tree() / name
        except KeyError:
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"model {name!r} is not in the registry {self.url!r}; models: {known}") from None

    def _tag_versions(self, name: str) -> dict[str, git.Commit]:
        out: dict[str, git.Commit] = {}
        prefix = f"{name}/"
        for tag in self._open().tags:
            if tag.name.startswith(prefix):
                version = validate_version(tag.name[len(prefix):], RegistryContentError)
                out[version] = tag.commit
        return out

    def list(self, name: str) -> list[str]:
        validate_model_name(name)
        tags = self._tag_versions(name)
        try:
            tree = self._models_tree() / name
            dirs = [t.name for t in tree.trees]
        except (KeyError, RegistryError):
            if not tags:
                raise NotFound(f"model {name!r} is not in the registry {self.url!r}; models: "
                               f"{', '.join(self.models()) or 'none'}") from None
            dirs = []
        for d in dirs:
            validate_version(d, RegistryContentError)
        return sorted(set(dirs) | set(tags), key=_natural_key)

    # ------------------------------------------------------------------ resolving

    def aliases(self, name: str) -> dict[str, str]:
        where = f"models/{name}/aliases.yaml"
        try:
            blob = self._model_tree(name) / "aliases.yaml"
        except KeyError:
            return {}
        if blob.type != "blob":
            raise RegistryContentError(f"{where}: is not a file")
        try:
            data = yaml.safe_load(blob.data_stream.read())
        except yaml.YAMLError as exc:
            raise RegistryContentError(f"{where} is malformed: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise RegistryContentError(f"{where} must be a mapping of alias to version, got {type(data).__name__}")
        out = {}
        for alias, version in data.items():
            validate_alias(alias, RegistryContentError)
            if isinstance(version, int) and not isinstance(version, bool):
                version = str(version)
            out[alias] = validate_version(version, RegistryContentError)
        return out

    def _version_tree(self, name: str, version: str) -> git.Tree:
        try:
            return self._model_tree(name) / version
        except (KeyError, NotFound):
            commit = self._tag_versions(name).get(version)
            if commit is None:
                raise
            try:
                return commit.tree / "models" / name
            except KeyError:
                raise RegistryContentError(f"tag {name}/{version} has no models/{name}/ directory") from None

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        parsed = parse_ref(ref, require_version=True) if isinstance(ref, str) else ref
        versions = self.list(parsed.name)
        if not versions:
            raise NotFound(f"model {parsed.name!r} has no versions in the registry")
        if parsed.alias:
            aliases = self.aliases(parsed.name)
            if parsed.alias not in aliases:
                raise NotFound(f"{parsed.name}@{parsed.alias}: no such alias; aliases: "
                               f"{', '.join(sorted(aliases)) or 'none'}")
            version = aliases[parsed.alias]
        elif parsed.version in (None, "latest"):
            version = versions[-1]
        else:
            version = parsed.version
        if version not in versions:
            raise NotFound(f"{parsed.name}:{version} is not in the registry; versions: {', '.join(versions)}")
        tree = self._version_tree(parsed.name, version)
        try:
            meta = self._model_yaml(tree, f"{parsed.name}:{version}")
        except ValueError as exc:  # GitPython refuses '..', '/'-leading and NUL paths while walking
            raise RegistryContentError(f"{parsed.name}:{version} in registry {self.url!r}: a path escapes the "
                                       f"registry ({exc}); refused") from None
        runtime = str(meta.get("runtime", "sklearn"))
        if not RUNTIME_PATTERN.fullmatch(runtime):
            raise RegistryContentError(f"{parsed.name}:{version}: model.yaml runtime {runtime!r} is not a valid name")
        metadata = meta.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise RegistryContentError(f"{parsed.name}:{version}: model.yaml metadata must be a mapping")
        metrics = validate_metrics(meta.get("metrics"), f"{parsed.name}:{version}: model.yaml")
        path = self._export(tree, parsed.name, version)
        storage = metadata.get("storage_uri")
        return ModelVersion(name=parsed.name, version=version, uri=str(storage or path), runtime=runtime,
                            metadata=dict(metadata), eval_metrics=metrics)

    @staticmethod
    def _model_yaml(tree: git.Tree, what: str) -> dict[str, Any]:
        try:
            raw = (tree / "model.yaml").data_stream.read()
        except KeyError:
            return {}
        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise RegistryContentError(f"{what}: model.yaml is malformed: {exc}") from None
        if not isinstance(data, dict):
            raise RegistryContentError(f"{what}: model.yaml must be a mapping")
        return data

    def materialise(self, version: ModelVersion) -> Path:
        """The version's files on this machine (exported from git, cached by tree hash)."""
        return self._export(self._version_tree(version.name, version.version), version.name, version.version)

    def storage_uri(self, version: ModelVersion) -> str:
        """A cluster cannot read this repository's exports: a version names where its files
        are published with ``metadata.storage_uri`` in its model.yaml."""
        uri = str(version.metadata.get("storage_uri") or version.uri)
        return require_cluster_readable(version.ref, uri, "publish the files to object storage and set "
                                        "metadata.storage_uri in the version's model.yaml")

    def samples(self, version: ModelVersion) -> list[Path]:
        return samples_in(self.materialise(version), f"{version.ref} in registry {self.url!r}")

    def _export(self, tree: git.Tree, name: str, version: str) -> Path:
        target = (self.cache_dir / "exports" / name / f"{version}-{tree.hexsha[:12]}").resolve()
        if (target / ".complete").exists():
            return target
        where = f"{name}:{version} in registry {self.url!r}"
        tmp = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for item in tree.traverse():
                rel = safe_relative(str(PurePosixPath(item.path).relative_to(tree.path)), where)
                if item.type == "tree":
                    continue
                if item.type != "blob":  # a submodule: a commit we would have to fetch from elsewhere
                    raise RegistryContentError(f"{where}: {rel} is a submodule ({item.type}); refused")
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = item.data_stream.read()
                if item.mode == SYMLINK_MODE:
                    link = data.decode("utf-8", "replace")
                    inside = PurePosixPath(os.path.normpath(str(rel.parent / link)))
                    if link.startswith("/") or inside.parts[:1] == ("..",) or str(inside) == "..":
                        raise RegistryContentError(f"{where}: symlink {rel} -> {link} points outside the version; "
                                                   "refused")
                    os.symlink(link, dest)
                else:
                    dest.write_bytes(data)
                    if item.mode & 0o111:
                        dest.chmod(0o644)  # nothing from the registry is executable here
        except ValueError as exc:  # GitPython refuses '..', '/'-leading and NUL paths while walking
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryContentError(f"{where}: a path escapes the registry ({exc}); refused") from None
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text(tree.hexsha)
        try:
            os.replace(tmp, target)
        except OSError:  # another process exported the same tree first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ recording

    def _branch(self) -> str:
        if self.ref != "HEAD":
            return self.ref
        work = self._work
        assert work is not None
        head = work.git.symbolic_ref("refs/remotes/origin/HEAD", "--short") if work else ""
        return head.removeprefix("origin/") or "main"

    def _worktree(self) -> git.Repo:
        """A non-bare clone for writing the environment file, refreshed once per run."""
        if self._work is not None:
            return self._work
        env = self.git_env()
        path = self.cache_dir / "work" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        try:
            if (path / ".git").exists():
                work = git.Repo(path)
                work.git.update_environment(**env)
                work.git.fetch("origin", "--prune")
            else:
                shutil.rmtree(path, ignore_errors=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                source = str(Path(self.url).expanduser().resolve()) if _is_local(self.url) else self.url
                work = git.Repo.clone_from(source, path, env=env, quiet=True)
                work.git.update_environment(**env)
            self._work = work
            branch = self._branch()
            work.git.checkout("-B", branch, f"origin/{branch}")
            work.git.reset("--hard", f"origin/{branch}")
        except git.exc.GitCommandError as exc:
            raise self._git_failure("cannot be cloned for recording", exc) from None
        return work

    def record(self, outcome: Outcome) -> str:
        """Commit ``environment_file``'s entry for the model and push it. A rejected push
        is retried on the new head (fetch, reset, re-apply); never forced."""
        if not self.environment_file:
            return ""
        validate_model_name(outcome.model)
        validate_version(outcome.serving)
        safe_relative(self.environment_file, "registry.environment_file")
        work = self._worktree()
        branch = self._branch()
        message = (f"{outcome.model}: {outcome.serving} {outcome.kind.replace('_', ' ')} "
                   f"(rollout {outcome.rollout_id})")
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            if attempt > 1:
                work.git.fetch("origin")
                work.git.reset("--hard", f"origin/{branch}")
            self._apply(work, outcome)
            work.index.add([self.environment_file])
            work.index.commit(message, author=AUTHOR, committer=AUTHOR)
            before = work.git.rev_parse(f"origin/{branch}")
            try:
                work.git.push("origin", f"HEAD:refs/heads/{branch}")
                return f"recorded {outcome.model}={outcome.serving} in {self.environment_file} ({branch})"
            except git.exc.GitCommandError as exc:
                work.git.fetch("origin")
                if work.git.rev_parse(f"origin/{branch}") == before:  # not a race: the push itself failed
                    raise self._git_failure(f"refused the push of {self.environment_file}", exc) from None
                time.sleep(0.05 * attempt)
        raise RegistryError(f"registry {self.url!r}: {self.environment_file} could not be pushed after "
                            f"{PUSH_ATTEMPTS} attempts (the branch {branch} keeps moving)")

    def _apply(self, work: git.Repo, outcome: Outcome) -> None:
        path = Path(work.working_tree_dir or ".") / self.environment_file  # type: ignore[operator]
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise RegistryContentError(f"{self.environment_file} is malformed: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
                raise RegistryContentError(f"{self.environment_file} must be a mapping with a 'models' mapping")
        models = data.setdefault("models", {})
        models[outcome.model] = {
            "version": outcome.serving, "previous": outcome.previous, "outcome": outcome.kind,
            "rollout_id": outcome.rollout_id, "candidate": outcome.candidate, "platform": outcome.platform,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(outcome.at)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=True))


def publish_version(repo_dir: Path, name: str, version: str, source_dir: Path, runtime: str = "sklearn",
                    metadata: dict[str, Any] | None = None, message: str | None = None,
                    metrics: dict[str, float] | None = None) -> str:
    """Commit a model version into a git registry (creating the repository if needed).

    Returns the commit hash. Used by `rollout demo` and by tests; a team's CI would do
    the same after training."""
    validate_model_name(name)
    validate_version(version)
    repo_dir = Path(repo_dir)
    repo = git.Repo(repo_dir) if (repo_dir / ".git").exists() else git.Repo.init(repo_dir, initial_branch="main")
    dest = repo_dir / "models" / name / version
    if dest.exists():
        raise RegistryError(f"{name}:{version} already exists in {repo_dir}; versions are immutable")
    shutil.copytree(source_dir, dest)
    doc: dict[str, Any] = {"runtime": runtime, "metadata": metadata or {}}
    if metrics:
        doc["metrics"] = dict(metrics)
    (dest / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    repo.index.add([str(p.relative_to(repo_dir)) for p in dest.rglob("*") if p.is_file()])
    commit = repo.index.commit(message or f"{name}:{version}", author=AUTHOR, committer=AUTHOR)
    return commit.hexsha
