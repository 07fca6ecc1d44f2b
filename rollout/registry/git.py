"""A model registry in a git repository: ``models/<name>/<version>/`` holds the model
files and an optional ``model.yaml`` (runtime, metadata); ``models/<name>/aliases.yaml``
maps aliases (``production: v2``) to versions.

Versions are exported from the commit the registry is read at into a cache directory
named after the version's tree hash, so a running server never sees a half-changed
checkout and the same bytes are never exported twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import git
import yaml

from rollout.errors import NotFound, RegistryError
from rollout.registry.base import ModelRef, ModelVersion, parse_ref, validate_model_name


def _natural_key(version: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


class GitRegistry:
    def __init__(self, url: str, ref: str = "HEAD", cache_dir: Path | None = None) -> None:
        self.url = url
        self.ref = ref
        self.cache_dir = Path(cache_dir) if cache_dir else Path(".rollout") / "registry"
        self._repo: git.Repo | None = None

    # ------------------------------------------------------------------ repository access

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        local = Path(self.url).expanduser()
        try:
            if local.exists():
                self._repo = git.Repo(local)
            else:
                mirror = self.cache_dir / "repos" / re.sub(r"[^A-Za-z0-9._-]+", "_", self.url)
                if mirror.exists():
                    self._repo = git.Repo(mirror)
                    self._repo.remote().fetch()
                else:
                    self._repo = git.Repo.clone_from(self.url, mirror, bare=True)
        except git.exc.NoSuchPathError:
            raise RegistryError(f"registry {self.url!r} does not exist") from None
        except git.exc.InvalidGitRepositoryError:
            raise RegistryError(f"registry {self.url!r} is not a git repository") from None
        except git.exc.GitCommandError as exc:
            raise RegistryError(f"registry {self.url!r} cannot be read: {exc.stderr.strip() or exc}") from None
        return self._repo

    def _commit(self) -> git.Commit:
        repo = self._open()
        try:
            return repo.commit(self.ref)
        except (git.exc.BadName, ValueError):
            raise RegistryError(f"registry {self.url!r} has no commit, branch or tag {self.ref!r}") from None

    def _models_tree(self) -> git.Tree:
        try:
            return self._commit().tree / "models"
        except KeyError:
            raise RegistryError(f"registry {self.url!r} at {self.ref} has no models/ directory") from None

    def models(self) -> list[str]:
        return sorted(t.name for t in self._models_tree().trees)

    def list(self, name: str) -> list[str]:
        validate_model_name(name)
        try:
            tree = self._models_tree() / name
        except KeyError:
            known = ", ".join(self.models()) or "none"
            raise NotFound(f"model {name!r} is not in the registry {self.url!r}; models: {known}") from None
        return sorted((t.name for t in tree.trees), key=_natural_key)

    # ------------------------------------------------------------------ resolving

    def _alias(self, name: str, alias: str) -> str:
        try:
            blob = self._models_tree() / name / "aliases.yaml"
            aliases = yaml.safe_load(blob.data_stream.read()) or {}
        except KeyError:
            aliases = {}
        if alias not in aliases:
            raise NotFound(f"{name}@{alias}: no such alias; aliases: {', '.join(sorted(aliases)) or 'none'}")
        return str(aliases[alias])

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        parsed = parse_ref(ref, require_version=True) if isinstance(ref, str) else ref
        versions = self.list(parsed.name)
        if not versions:
            raise NotFound(f"model {parsed.name!r} has no versions in the registry")
        if parsed.alias:
            version = self._alias(parsed.name, parsed.alias)
        elif parsed.version in (None, "latest"):
            version = versions[-1]
        else:
            version = parsed.version
        if version not in versions:
            raise NotFound(f"{parsed.name}:{version} is not in the registry; versions: {', '.join(versions)}")
        tree = self._models_tree() / parsed.name / version
        meta = self._model_yaml(tree, f"{parsed.name}:{version}")
        path = self._export(tree, parsed.name, version)
        return ModelVersion(
            name=parsed.name, version=version, uri=str(path),
            runtime=str(meta.get("runtime", "sklearn")), metadata=dict(meta.get("metadata") or {}),
        )

    @staticmethod
    def _model_yaml(tree: git.Tree, what: str) -> dict[str, Any]:
        try:
            raw = (tree / "model.yaml").data_stream.read()
        except KeyError:
            return {}
        try:
            data = yaml.safe_load(raw) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"{what}: model.yaml is malformed: {exc}") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{what}: model.yaml must be a mapping")
        return data

    def _export(self, tree: git.Tree, name: str, version: str) -> Path:
        target = (self.cache_dir / "exports" / name / f"{version}-{tree.hexsha[:12]}").resolve()
        if (target / ".complete").exists():
            return target
        tmp = target.with_name(target.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        for item in tree.traverse():
            if item.type != "blob":
                continue
            rel = Path(item.path).relative_to(tree.path)
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(item.data_stream.read())
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / ".complete").write_text(tree.hexsha)
        try:
            tmp.rename(target)
        except OSError:  # another process exported the same tree first: theirs is identical
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return target


def publish_version(repo_dir: Path, name: str, version: str, source_dir: Path, runtime: str = "sklearn",
                    metadata: dict[str, Any] | None = None, message: str | None = None) -> str:
    """Commit a model version into a git registry (creating the repository if needed).

    Returns the commit hash. Used by `rollout demo` and by tests; a team's CI would do
    the same after training."""
    import shutil

    from rollout.registry.base import validate_version

    validate_model_name(name)
    validate_version(version)
    repo_dir = Path(repo_dir)
    repo = git.Repo(repo_dir) if (repo_dir / ".git").exists() else git.Repo.init(repo_dir, initial_branch="main")
    dest = repo_dir / "models" / name / version
    if dest.exists():
        raise RegistryError(f"{name}:{version} already exists in {repo_dir}; versions are immutable")
    shutil.copytree(source_dir, dest)
    (dest / "model.yaml").write_text(yaml.safe_dump({"runtime": runtime, "metadata": metadata or {}}, sort_keys=False))
    repo.index.add([str(p.relative_to(repo_dir)) for p in dest.rglob("*") if p.is_file()])
    author = git.Actor("rollout", "rollout@localhost")
    commit = repo.index.commit(message or f"{name}:{version}", author=author, committer=author)
    return commit.hexsha
