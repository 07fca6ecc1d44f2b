"""Registries: where model versions come from, and where promotions are recorded.

``make_registry(spec, cache_dir)`` builds one from its spec section (the ``REGISTRIES``
table); every registry implements the contract in ``base.Registry``."""

from rollout.registry.base import (
    ModelRef,
    ModelVersion,
    NotClusterReadable,
    Outcome,
    Registry,
    RegistryContentError,
    VersionInfo,
    parse_ref,
    validate_alias,
    validate_model_name,
    validate_version,
)

__all__ = ["ModelRef", "ModelVersion", "NotClusterReadable", "Outcome", "Registry", "RegistryContentError", "VersionInfo", "parse_ref",
           "validate_alias", "validate_model_name", "validate_version"]
