"""Registries: where model versions come from."""

from rollout.registry.base import ModelRef, ModelVersion, Registry, parse_ref, validate_model_name

__all__ = ["ModelRef", "ModelVersion", "Registry", "parse_ref", "validate_model_name"]
