"""What a registry is: something that turns ``name:version``, ``name:latest`` or
``name@alias`` into one concrete ``ModelVersion``, can put its files on this machine
(``materialise``) and is told what was promoted or rolled back (``record``).

Everything a registry returns is untrusted: names, versions and aliases are checked
with full-match validators where they enter (here), file paths are checked not to
escape their root, and nothing from a registry is executed or unpickled by the CLI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from rollout import names
from rollout.names import CLUSTER_SCHEMES, cluster_readable, uri_scheme  # noqa: F401 (re-exported)
from rollout.errors import BadInput

# Names, versions and aliases are validated by rollout/names.py (one validator per kind).
# Evaluation metric names (MLflow allows more; these reach reports and YAML keys).
METRIC_PATTERN = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_./ :@]{0,249}")


class RegistryContentError(BadInput):
    """Something in the registry is malformed or hostile (a bad aliases.yaml or model.yaml,
    a path escaping the registry, an invalid name from the registry): exit 2, the message
    names the file or object and the problem."""


@dataclass(frozen=True)
class ModelVersion:
    """One concrete version. ``uri`` says where its artifact is: a local directory (git,
    already exported) or a store URI (``models:/iris/3``, ``s3://...``) that the local
    platform asks the registry to ``materialise`` and Kubernetes hands to its storage
    initializer. ``runtime`` is the flavour that serves it (``sklearn``: a model.joblib;
    ``mlflow``: an MLflow model directory, served by MLServer's MLflow runtime)."""

    name: str
    version: str
    uri: str
    runtime: str = "sklearn"
    metadata: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Wherever a version comes from (CLI, spec, git tree, MLflow, an alias, state), it
        # becomes file names and process arguments: validated here, once, for all of them.
        validate_model_name(self.name)
        validate_version(self.version)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: ``name:version``, ``name:latest`` or ``name@alias``."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        return f"{self.name}:{self.version}" if self.version else self.name


@dataclass(frozen=True)
class Outcome:
    """What a rollout did, as told to the registry: ``serving`` is the version that serves
    now (the promoted candidate, or the stable a rollback returned to)."""

    model: str
    kind: Literal["promoted", "rolled_back"]
    serving: str
    previous: str | None
    candidate: str
    rollout_id: str
    at: float
    platform: str = "local"


@dataclass(frozen=True)
class VersionInfo:
    """One row of ``rollout registry list``."""

    version: str
    aliases: list[str]
    runtime: str
    uri: str
    metadata: dict[str, Any]
    eval_metrics: dict[str, float]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str, error: type[BadInput] = BadInput) -> str:
    if not isinstance(value, str):
        raise error(f"{kind} {_short(value)} is not a string")
    if not pattern.fullmatch(value) or ".." in value:
        raise error(f"{kind} {_short(value)} is not valid: {rule}")
    return value


def _as(error: type[BadInput], check: Any, value: object) -> str:
    """Run one of rollout.names' validators, raising ``error`` (e.g. RegistryContentError
    for a name read from a registry file) with the same message."""
    try:
        return check(value)
    except BadInput as exc:
        if error is BadInput:
            raise
        raise error(str(exc)) from None


def validate_model_name(name: object, error: type[BadInput] = BadInput) -> str:
    """A DNS-1123 label, full match (see rollout/names.py)."""
    return _as(error, names.model_name, name)


def validate_version(version: object, error: type[BadInput] = BadInput) -> str:
    """Letters, digits, '-', '_', '.'; full match, no '..' (see rollout/names.py)."""
    return _as(error, names.version, version)


def validate_alias(alias: object, error: type[BadInput] = BadInput) -> str:
    """Letters, digits, '-', '_'; full match (see rollout/names.py)."""
    return _as(error, names.alias, alias)


def validate_metrics(raw: object, where: str) -> dict[str, float]:
    """Evaluation metrics from a registry: a mapping of valid names to finite numbers."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RegistryContentError(f"{where}: metrics must be a mapping of name to number, got {type(raw).__name__}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        _check("metric name", name, METRIC_PATTERN, "use letters, digits, '_', '-', '.', '/', ':', '@' or ' '",
               RegistryContentError)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise RegistryContentError(f"{where}: metric {name!r} must be a number, got {_short(value)}")
        out[name] = float(value)
    return out


def parse_ref(text: str, *, require_version: bool = False) -> ModelRef:
    """Parse a reference as typed on the command line; errors name the bad part."""
    if "@" in text:
        name, alias = text.split("@", 1)
        validate_model_name(name)
        if not alias:
            raise BadInput(f"reference {text!r} has an empty alias after '@'")
        return ModelRef(name=name, alias=validate_alias(alias))
    if ":" in text:
        name, version = text.split(":", 1)
        validate_model_name(name)
        if version != "latest":
            validate_version(version)
        return ModelRef(name=name, version=version)
    validate_model_name(text)
    if require_version:
        raise BadInput(f"reference {text!r} names no version: write {text}:<version> or {text}:latest")
    return ModelRef(name=text)


def safe_relative(path: str, where: str) -> PurePosixPath:
    """A path inside a registry tree: relative, no '..', no empty or odd parts."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")) or "\\" in path \
            or any(ord(c) < 32 for c in path):
        raise RegistryContentError(f"{where}: path {_short(path)} escapes the registry (absolute, '..' or odd); refused")
    return p


def contained(root: Path, path: Path, where: str) -> Path:
    """``path`` resolved (symlinks followed) must stay inside ``root``."""
    real_root, real = Path(os.path.realpath(root)), Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise RegistryContentError(f"{where}: {path.name} points outside the registry ({real}); refused")
    return real


class Registry(Protocol):
    """The one version contract every registry implements (git, mlflow)."""

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """Resolve a reference to one concrete version; NotFound lists what exists."""

    def models(self) -> list[str]:
        """The models the registry holds."""

    def list(self, name: str) -> list[str]:
        """Versions of a model, oldest first."""

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version for one model."""

    def materialise(self, version: ModelVersion) -> Path:
        """A local directory with the version's files, cached by content under the
        rollout home; the same content is fetched once."""

    def samples(self, version: ModelVersion) -> list[Path]:
        """The version's sample requests (``samples/*.json``), for the samples gate."""

    def storage_uri(self, version: ModelVersion) -> str:
        """The URI a cluster's storage initializer downloads the version from (s3://, gs://,
        https://, pvc://...); ``NotClusterReadable`` (exit 2) naming the version and the
        location when its files are somewhere a cluster cannot read (a local path)."""

    def record(self, outcome: Outcome) -> str:
        """Write what was promoted or rolled back back to the registry; returns a line
        saying what was written ("" when the registry is configured not to record)."""


class NotClusterReadable(BadInput):
    """A version's files are somewhere a cluster cannot read (a path on this machine, or
    MLflow's proxied artifact store): exit 2, before anything is applied."""


def require_cluster_readable(ref: str, uri: str, remedy: str) -> str:
    """``uri`` if a cluster's storage initializer can read it, else NotClusterReadable
    naming the version, the location and what to do (``remedy``)."""
    if cluster_readable(uri):
        return uri
    scheme = uri_scheme(uri)
    what = ("a path on this machine" if scheme in ("", "file") else
            "MLflow's proxied artifact store (the tracking server's own disk)" if scheme == "mlflow-artifacts" else
            f"a {scheme}: URI")
    raise NotClusterReadable(f"{ref}: its files are at {uri}, {what}, which a cluster's storage initializer cannot "
                             f"read (it reads {', '.join(s + '://' for s in CLUSTER_SCHEMES)}); {remedy}")


def map_prefix(uri: str, mapping: dict[str, str]) -> str:
    """``uri`` with the longest matching prefix of ``mapping`` replaced (unchanged if none)."""
    for prefix in sorted(mapping, key=len, reverse=True):
        if uri.startswith(prefix):
            return mapping[prefix] + uri[len(prefix):]
    return uri


def samples_in(root: Path, where: str) -> list[Path]:
    """``samples/*.json`` of a materialised version, each checked to stay inside it."""
    folder = root / "samples"
    if not folder.is_dir():
        return []
    contained(root, folder, where)
    return [contained(root, p, where) for p in sorted(folder.glob("*.json"))]
