"""The MLflow Model Registry as a rollout registry.

References: ``name:3`` (a version number), ``name@champion`` (an alias), ``name:latest``
(the highest version number). A resolved version's ``uri`` is ``models:/<name>/<n>``
(what MLflow itself reads) and ``metadata.artifact_uri`` is where its files are, as MLflow
reports it: the version's source, the logged model's location for ``models:/m-...``, the
run's artifact URI plus the path for ``runs:/<run>/<path>``. ``storage_uri`` hands that
location (after ``artifact_uri_map``) to a cluster's storage initializer, and refuses one a
cluster cannot read (a local path, ``mlflow-artifacts:/``). Its ``runtime`` is
``mlflow`` (an MLflow model directory, served by MLServer's MLflow runtime) and its
``eval_metrics`` are the metrics of the run that logged it (MLflow 3: the logged model's
metrics when the run has none). ``materialise`` downloads the artifacts once into the
rollout home; versions are immutable in MLflow, so the cache key is the version's
identity (tracking server, name, version, source).

``record`` moves the alias (default ``production``) to the version that serves now and
tags it: ``rollout.id``, ``rollout.outcome``, ``rollout.time``, ``rollout.previous_version``.

The token (``token_env`` / ``token_file``) is read when calling and handed to the
client through ``MLFLOW_TRACKING_TOKEN`` only for the duration of a call, with retries
and timeouts bounded (MLflow's defaults retry for ~4 minutes); it never reaches a
message, a log line or the state. The client never unpickles or loads a model: files
are downloaded, and only the model server loads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollout.errors import NotFound, RegistryError
from rollout.registry.base import (
    ModelRef,
    ModelVersion,
    Outcome,
    RegistryContentError,
    contained,
    map_prefix,
    parse_ref,
    require_cluster_readable,
    samples_in,
    validate_alias,
    validate_metrics,
    validate_model_name,
    validate_version,
)

_ENV_LOCK = threading.RLock()
TAG_PREFIX = "rollout."


class MlflowRegistry:
    def __init__(self, tracking_uri: str, cache_dir: Path, *, token_env: str | None = None,
                 token_file: str | None = None, alias: str = "production", record: bool = True,
                 timeout_s: float = 10.0, max_retries: int = 1,
                 artifact_uri_map: dict[str, str] | None = None) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise RegistryError("registry.type mlflow needs the mlflow package: pip install 'rollout[mlflow]'") from None
        self.tracking_uri = tracking_uri.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.token_env, self.token_file = token_env, token_file
        self.alias = validate_alias(alias)
        self.record_enabled = record
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.artifact_uri_map = dict(artifact_uri_map or {})
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @classmethod
    def from_spec(cls, spec: Any, cache_dir: Path) -> "MlflowRegistry":
        return cls(spec.tracking_uri, cache_dir, token_env=spec.token_env, token_file=spec.token_file,
                   alias=spec.alias, record=spec.record, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                   artifact_uri_map=spec.artifact_uri_map)

    # ------------------------------------------------------------------ calling MLflow

    def _token(self) -> str | None:
        if self.token_env:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise RegistryError(f"registry.token_env: environment variable {self.token_env} is not set")
            return value
        if self.token_file:
            try:
                value = Path(self.token_file).expanduser().read_text().strip()
            except OSError as exc:
                raise RegistryError(f"registry.token_file {self.token_file} cannot be read ({exc.strerror})") from None
            if not value:
                raise RegistryError(f"registry.token_file {self.token_file} is empty")
            return value
        return None

    @contextlib.contextmanager
    def _env(self) -> Iterator[str | None]:
        """MLflow reads its token, retries and timeout from the environment at each call:
        set them for this call only (the token must not leak to child processes)."""
        token = self._token()
        values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, self.timeout_s))),
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_TRACKING_TOKEN": token}
        with _ENV_LOCK:
            saved = {k: os.environ.get(k) for k in values}
            try:
                for k, v in values.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                yield token
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def _scrub(self, text: str, token: str | None) -> str:
        if token:
            text = text.replace(token, "***")
        return text if len(text) <= 300 else text[:297] + "..."

    def _call(self, what: str, fn: Any, *args: Any, missing: str | None = None) -> Any:
        """One client call; MLflow's errors become the project's, by error code. With
        ``missing``, "does not exist" answers raise _Missing for the caller to explain."""
        from mlflow.exceptions import MlflowException

        with self._env() as token:
            try:
                return fn(*args)
            except MlflowException as exc:
                code = getattr(exc, "error_code", "")
                if missing is not None and code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise _Missing(missing) from None
                if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or "401" in code or "403" in code:
                    raise RegistryError(f"MLflow at {self.tracking_uri} refused {what}: not authorised ({code}); "
                                        "check the token (registry.token_env / token_file)") from None
                if code == "INTERNAL_ERROR" or code == "TEMPORARILY_UNAVAILABLE":
                    raise RegistryError(f"MLflow at {self.tracking_uri} is unreachable or failing ({what}): "
                                        f"{self._scrub(type(exc.__cause__ or exc).__name__, token)}; nothing was "
                                        "changed") from None
                raise RegistryError(f"MLflow at {self.tracking_uri} answered {what} with {code or 'an error'}: "
                                    f"{self._scrub(exc.message if hasattr(exc, 'message') else str(exc), token)}"
                                    ) from None
            except OSError as exc:
                raise RegistryError(f"MLflow at {self.tracking_uri} is unreachable ({what}): "
                                    f"{type(exc).__name__}; nothing was changed") from None

    # ------------------------------------------------------------------ reading

    def models(self) -> list[str]:
        found = self._call("search_registered_models", self.client.search_registered_models, None, 1000)
        return sorted(m.name for m in found)

    def _registered(self, name: str) -> Any:
        validate_model_name(name)
        try:
            return self._call(f"get_registered_model {name}", self.client.get_registered_model, name, missing=name)
        except _Missing:
            valid = [m for m in self.models() if _valid_name(m)]
            raise NotFound(f"model {name!r} is not in the MLflow registry at {self.tracking_uri}; models: "
                           f"{', '.join(valid) or 'none'}") from None

    def list(self, name: str) -> list[str]:
        self._registered(name)
        found = self._call(f"search_model_versions {name}", self.client.search_model_versions, f"name='{name}'")
        return [validate_version(str(v.version), RegistryContentError)
                for v in sorted(found, key=lambda v: int(v.version))]

    def aliases(self, name: str) -> dict[str, str]:
        rm = self._registered(name)
        return {validate_alias(a, RegistryContentError): validate_version(str(v), RegistryContentError)
                for a, v in (rm.aliases or {}).items()}

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        parsed = parse_ref(ref, require_version=True) if isinstance(ref, str) else ref
        name = parsed.name
        if parsed.alias:
            aliases = self.aliases(name)
            if parsed.alias not in aliases:
                raise NotFound(f"{name}@{parsed.alias}: no such alias; aliases: "
                               + (", ".join(f"{a} ({v})" for a, v in sorted(aliases.items())) or "none"))
            version = aliases[parsed.alias]
        elif parsed.version in (None, "latest"):
            versions = self.list(name)
            if not versions:
                raise NotFound(f"model {name!r} has no versions in the MLflow registry")
            version = versions[-1]
        else:
            version = parsed.version.removeprefix("v") if parsed.version.startswith("v") and \
                parsed.version[1:].isdigit() else parsed.version
            if not version.isdigit():
                raise NotFound(f"{name}:{parsed.version}: MLflow versions are numbers; versions: "
                               f"{', '.join(self.list(name)) or 'none'}")
        try:
            mv = self._call(f"get_model_version {name}:{version}", self.client.get_model_version, name, version,
                            missing=version)
        except _Missing:
            raise NotFound(f"{name}:{version} is not in the MLflow registry; versions: "
                           f"{', '.join(self.list(name)) or 'none'}") from None
        return self._version(mv)

    def _version(self, mv: Any) -> ModelVersion:
        name = validate_model_name(mv.name, RegistryContentError)
        version = validate_version(str(mv.version), RegistryContentError)
        where = f"MLflow {name}:{version}"
        metrics: dict[str, Any] = {}
        run = None
        if mv.run_id:
            run = self._call(f"get_run {mv.run_id}", self.client.get_run, mv.run_id)
            metrics = dict(run.data.metrics)
        model_id = _logged_model_id(mv.source)
        if not metrics and model_id:
            logged = self._call(f"get_logged_model {model_id}", self.client.get_logged_model, model_id)
            metrics = {m.key: m.value for m in (logged.metrics or [])}
        metadata = {
            "source": str(mv.source), "run_id": mv.run_id, "aliases": sorted(mv.aliases or []),
            "tags": {str(k): str(v)[:500] for k, v in (mv.tags or {}).items()},
            "description": (mv.description or "")[:500], "status": str(mv.status),
            "artifact_uri": self._artifact_uri(name, version, str(mv.source or ""), run),
        }
        return ModelVersion(name=name, version=version, uri=f"models:/{name}/{version}", runtime="mlflow",
                            metadata=metadata, eval_metrics=validate_metrics(metrics, where))

    def _artifact_uri(self, name: str, version: str, source: str, run: Any) -> str:
        """Where the version's files are, as MLflow reports it. ``models:/`` sources are
        resolved by the server (``get_model_version_download_uri``: the logged model's
        location); ``runs:/<run>/<path>`` is the run's artifact URI plus the path."""
        location = source
        if source.startswith("models:/"):
            location = str(self._call(f"get_model_version_download_uri {name}:{version}",
                                      self.client.get_model_version_download_uri, name, version))
        if location.startswith("runs:/"):
            run_id, _, path = location[len("runs:/"):].partition("/")
            if run is None or run.info.run_id != run_id:
                run = self._call(f"get_run {run_id}", self.client.get_run, run_id)
            location = str(run.info.artifact_uri).rstrip("/") + (f"/{path.strip('/')}" if path.strip("/") else "")
        return location

    def storage_uri(self, version: ModelVersion) -> str:
        """The version's artifact location, mapped by ``artifact_uri_map``, if a cluster can
        read it; else NotClusterReadable (exit 2) naming the version and the location."""
        location = version.metadata.get("artifact_uri")
        if not location:  # a version recorded before artifact locations were resolved
            location = self.resolve(ModelRef(version.name, version.version)).metadata["artifact_uri"]
        return require_cluster_readable(
            f"MLflow {version.ref}", map_prefix(str(location), self.artifact_uri_map),
            "give the MLflow server an object-store artifact root (mlflow server --default-artifact-root "
            "s3://... --no-serve-artifacts, or --artifacts-destination s3://... with registry.artifact_uri_map "
            "{'mlflow-artifacts:/': 's3://.../'}), or map this location to one the cluster reads with "
            "registry.artifact_uri_map (e.g. a shared volume: {'/srv/mlflow/': 'pvc://mlflow-artifacts/'})")

    # ------------------------------------------------------------------ files

    def materialise(self, version: ModelVersion) -> Path:
        """Download the version's artifacts once; later calls return the cached copy."""
        import mlflow.artifacts

        validate_model_name(version.name)
        validate_version(version.version)
        source = str(version.metadata.get("source", ""))
        key = hashlib.sha256("|".join((self.tracking_uri, version.name, version.version, source)).encode()).hexdigest()
        target = self.cache_dir / "mlflow" / version.name / f"{version.version}-{key[:16]}"
        if (target / ".complete").exists():
            return target
        tmp = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            uri = self._call(f"get_model_version_download_uri {version.ref}",
                             self.client.get_model_version_download_uri, version.name, version.version)
            downloaded = Path(self._call(f"download of {version.ref}", _download, mlflow.artifacts, uri, tmp,
                                         self.tracking_uri))
            files = contained(tmp, downloaded, f"MLflow {version.ref}")
            for p in files.rglob("*"):
                if p.is_symlink():
                    contained(files, p, f"MLflow {version.ref}")
            if not (files / "MLmodel").is_file():
                raise RegistryContentError(f"MLflow {version.ref}: the artifacts at {uri} have no MLmodel file; "
                                           "is it a model logged with mlflow.<flavor>.log_model?")
            if files != tmp:
                for p in files.iterdir():
                    p.rename(tmp / p.name)
            (tmp / ".complete").write_text(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except OSError as exc:
            if (target / ".complete").exists():  # another process finished first: theirs is identical
                return target
            raise RegistryError(f"MLflow {version.ref}: artifacts could not be stored in {target}: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def samples(self, version: ModelVersion) -> list[Path]:
        """``samples/*.json`` logged with the model (``mlflow.log_artifacts(dir, "model/samples")``)."""
        if "source" not in version.metadata:
            version = self.resolve(ModelRef(version.name, version.version))
        return samples_in(self.materialise(version), f"MLflow {version.ref}")

    # ------------------------------------------------------------------ recording

    def record(self, outcome: Outcome) -> str:
        """Move the alias to the version that serves now and tag it (and, after a rollback,
        tag the rolled-back candidate with its outcome)."""
        if not self.record_enabled:
            return ""
        name, serving = validate_model_name(outcome.model), validate_version(outcome.serving)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(outcome.at))
        self._call(f"set alias {name}@{self.alias}", self.client.set_registered_model_alias, name, self.alias, serving)
        tags = {"id": outcome.rollout_id, "outcome": outcome.kind, "time": stamp,
                "previous_version": outcome.previous or "", "platform": outcome.platform}
        for key, value in tags.items():
            self._call(f"set tag on {name}:{serving}", self.client.set_model_version_tag, name, serving,
                       TAG_PREFIX + key, value)
        if outcome.kind == "rolled_back" and outcome.candidate != serving:
            self._call(f"set tag on {name}:{outcome.candidate}", self.client.set_model_version_tag, name,
                       outcome.candidate, TAG_PREFIX + "outcome", "rolled_back")
        return f"MLflow: {name}@{self.alias} -> {serving} ({outcome.kind}, rollout {outcome.rollout_id})"


class _Missing(Exception):
    """MLflow said the object does not exist (internal: the caller lists what does)."""


def _valid_name(name: str) -> bool:
    try:
        validate_model_name(name)
        return True
    except Exception:
        return False


def _logged_model_id(source: str | None) -> str | None:
    if source and source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return None


def _download(artifacts: Any, uri: str, dst: Path, tracking_uri: str) -> str:
    return str(artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
