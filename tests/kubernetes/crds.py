"""The upstream CRDs in tests/data/crds as strict JSON schemas: a schema node that
declares ``properties`` (and does not ``x-kubernetes-preserve-unknown-fields``) refuses
other fields, as server-side apply does ("field not declared in schema"); CEL rules
(``x-kubernetes-validations``) are not evaluated. Used by the manifest tests and by the
fake API server's schema-strict writes."""

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


@functools.lru_cache(maxsize=None)
def validator(api_version: str, kind: str, path: str | None = None) -> jsonschema.Draft7Validator | None:
    schemas = load(Path(path)) if path else shipped()
    schema = schemas.get((api_version, kind))
    return None if schema is None else jsonschema.Draft7Validator(copy.deepcopy(schema))


def errors(obj: dict[str, Any], path: str | None = None) -> list[str]:
    """What the schema refuses in ``obj`` ([] if valid or not a shipped CRD kind)."""
    v = validator(obj.get("apiVersion", ""), obj.get("kind", ""), path)
    if v is None:
        return []
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
