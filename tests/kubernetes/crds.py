"""The upstream CRDs in tests/data/crds as strict JSON schemas: a schema node that
declares ``properties`` (and does not ``x-kubernetes-preserve-unknown-fields``) refuses
other fields, as server-side apply does ("field not declared in schema"), and the CEL
rules (``x-kubernetes-validations``) are evaluated after defaulting, as the API server
does (tests/kubernetes/cel.py). Used by the manifest tests and by the fake API server's
schema-strict writes."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "data" / "crds"


def strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def load(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, for every served version in a CRD file."""
    out = {}
    for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if not crd:
            continue
        for v in crd["spec"]["versions"]:
            if v.get("served", True):
                root = strict(v["schema"]["openAPIV3Schema"])
                # every object has these; ObjectMeta is checked by the server itself
                root.setdefault("properties", {}).update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
                root["additionalProperties"] = False
                out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = root
    return out


@functools.lru_cache(maxsize=None)
def shipped() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        out.update(load(path))
    return out


def schema(api_version: str, kind: str, path: str | None = None) -> dict[str, Any] | None:
    schemas = load(Path(path)) if path else shipped()
    return schemas.get((api_version, kind))


@functools.lru_cache(maxsize=None)
def validator(api_version: str, kind: str, path: str | None = None) -> jsonschema.Draft7Validator | None:
    found = schema(api_version, kind, path)
    return None if found is None else jsonschema.Draft7Validator(copy.deepcopy(found))


def errors(obj: dict[str, Any], path: str | None = None, old: dict[str, Any] | None = None) -> list[str]:
    """What the schema and then its CEL rules refuse in ``obj`` ([] if valid or not a
    shipped CRD kind). The rules run only on a schema-valid object, as a rule may assume
    the types the schema guarantees; ``old`` is the stored object on an update."""
    v = validator(obj.get("apiVersion", ""), obj.get("kind", ""), path)
    if v is None:
        return []
    found = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
             for e in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
    if found:
        return found
    from tests.kubernetes import cel

    root = schema(obj.get("apiVersion", ""), obj.get("kind", ""), path)
    assert root is not None
    return [str(r) for r in cel.refusals(root, obj, old=old)]
