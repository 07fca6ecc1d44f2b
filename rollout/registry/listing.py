"""What `rollout registry list` shows: a model's versions with their aliases, runtime,
metadata and logged evaluation metrics, and which version is stable on which platform.
Rows are data (``VersionInfo``); text and JSON are two renderings of them."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rollout.registry.base import ModelRef, Registry, VersionInfo


def describe(registry: Registry, model: str) -> list[VersionInfo]:
    """Every version of ``model``, oldest first (one resolve per version)."""
    by_version: dict[str, list[str]] = {}
    for alias, version in registry.aliases(model).items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for version in registry.list(model):
        mv = registry.resolve(ModelRef(model, version))
        rows.append(VersionInfo(version=version, aliases=sorted(by_version.get(version, [])), runtime=mv.runtime,
                                uri=mv.uri, metadata=dict(mv.metadata), eval_metrics=dict(mv.eval_metrics)))
    return rows


def as_dict(model: str, rows: list[VersionInfo], stable: dict[str, str]) -> dict[str, Any]:
    """``stable``: platform -> the version stable there (from the rollout state)."""
    return {"model": model, "stable": stable, "versions": [asdict(r) for r in rows]}


def render(model: str, rows: list[VersionInfo], stable: dict[str, str], output: str) -> str:
    if output == "json":
        return json.dumps(as_dict(model, rows, stable), indent=2, sort_keys=True)
    if output == "yaml":
        import yaml

        return yaml.safe_dump(as_dict(model, rows, stable), sort_keys=False)
    where = {v: p for p, v in stable.items()}
    lines = [f"{model}: {len(rows)} version(s)"
             + ("; stable " + ", ".join(f"{v} on {p}" for p, v in stable.items()) if stable else "; not deployed here")]
    for r in rows:
        marks = [f"@{a}" for a in r.aliases] + ([f"stable on {where[r.version]}"] if r.version in where else [])
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r.eval_metrics.items())) or "no metrics"
        lines.append(f"  {r.version:<10} {r.runtime:<8} {metrics}" + (f"  [{', '.join(marks)}]" if marks else ""))
    return "\n".join(lines)
