"""What a registry is: something that turns ``name:version`` into files on disk."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from rollout import names
from rollout.errors import BadInput

# DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Versions become label values and file names: a conservative subset of both.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    uri: str  # where the files are: a local directory for git, a store URI elsewhere
    runtime: str = "sklearn"
    metadata: dict[str, Any] = field(default_factory=dict)

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


def validate_model_name(name: str) -> str:
    """A DNS-1123 label, full match (see rollout/names.py)."""
    return names.model_name(name)


def validate_version(version: str) -> str:
    """Letters, digits, '-', '_', '.'; full match, no '..' (see rollout/names.py)."""
    return names.version(version)


def validate_alias(alias: str) -> str:
    """Letters, digits, '-', '_'; full match (see rollout/names.py)."""
    return names.alias(alias)


def parse_ref(text: str, *, require_version: bool = False) -> ModelRef:
    """Parse a reference as typed on the command line; errors name the bad part."""
    if "@" in text:
        name, alias = text.split("@", 1)
        validate_model_name(name)
        validate_alias(alias)
        return ModelRef(name=name, alias=alias)
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


class Registry(Protocol):
    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """Resolve a reference to one concrete version; NotFound lists what exists."""

    def list(self, name: str) -> list[str]:
        """Versions of a model, oldest first."""
