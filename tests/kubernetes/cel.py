"""The CEL rules (``x-kubernetes-validations``) of the upstream CRDs in tests/data/crds,
evaluated the way kube-apiserver evaluates them, so a rendered object that a real
server would refuse for a rule is refused here too.

What the API server does before and while it runs a rule, and this module copies:

- **defaults first**: the schema's ``default`` values are filled in (recursively) before
  validation; rules such as ``(size(self.group) == 0 && self.kind == 'Service') ?
  has(self.port) : true`` rely on them;
- **a rule runs at its node** with ``self`` bound to the value there, and only where
  that value is present;
- **property names are escaped**: ``namespace`` is ``__namespace__``, ``-`` is
  ``__dash__`` and so on (Kubernetes' CEL escaping); map keys are not;
- **false and an evaluation error both refuse** the object, with the rule's ``message``.

The evaluator is cel-python (``celpy``), a pure-Python CEL implementation with RE2
regular expressions. Kubernetes' own CEL libraries (``isURL``, ``ip``, ``quantity`` ...)
are not in it; none of the rules in tests/data/crds uses them, and
``test_cel.py`` checks that every rule there compiles and evaluates without error.
Transition rules (``oldSelf``, e.g. GatewayClass' immutable ``controllerName``) run only
on an update, with ``oldSelf`` the stored value at the same place, as on the API server:
correlated through object properties, not into list items (Kubernetes correlates those
only for map- and set-type lists, which no transition rule here needs).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

# https://kubernetes.io/docs/reference/using-api/cel/#escaping
RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
            "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


def escape(name: str) -> str:
    """A property name as a CEL rule spells it (``namespace`` -> ``__namespace__``)."""
    if name in RESERVED:
        return f"__{name}__"
    return (name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__")
            .replace("/", "__slash__"))


class Refused(ValueError):
    """An object a CEL rule of its CRD refuses (the API server's 422 Invalid)."""


@dataclass(frozen=True)
class Refusal:
    path: str
    rule: str
    message: str
    error: str | None = None  # the evaluator's error, when the rule could not be evaluated

    def __str__(self) -> str:
        why = f"could not be evaluated ({self.error})" if self.error else self.message
        return f"{self.path or '<root>'}: Invalid value: {why} (rule: {self.rule[:160]})"


_ENV = celpy.Environment()


@functools.lru_cache(maxsize=None)
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


def default(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does before validating."""
    if isinstance(value, dict):
        out = dict(value)
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        for name, v in list(out.items()):
            if name in props:
                out[name] = default(props[name], v)
            elif isinstance(schema.get("additionalProperties"), dict):
                out[name] = default(schema["additionalProperties"], v)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [default(schema["items"], v) for v in value]
    return value


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    """A JSON value as the CEL value a rule sees: objects with declared properties get
    escaped field names, maps keep their keys."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        items = {}
        for k, v in value.items():
            if v is None:
                continue  # a null field is an absent field to CEL (has() is false)
            if props is not None and k in props:
                items[celtypes.StringType(escape(k))] = to_cel(props[k], v)
            else:
                items[celtypes.StringType(k)] = to_cel(extra if isinstance(extra, dict) else {}, v)
        return celtypes.MapType(items)
    if isinstance(value, list):
        sub = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return celtypes.ListType([to_cel(sub, v) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    return celpy.json_to_cel(value)


_SCHEMAS: dict[int, dict[str, Any]] = {}  # id -> schema node, kept alive for the cache keys below


@functools.lru_cache(maxsize=50000)
def _evaluate(rule: str, schema_id: int, value_json: str, old_json: str | None) -> tuple[bool, str | None]:
    """(holds, evaluator error). Cached: the fake API server sees the same nodes again and again."""
    schema = _SCHEMAS[schema_id]
    activation = {"self": to_cel(schema, json.loads(value_json))}
    if old_json is not None:
        activation["oldSelf"] = to_cel(schema, json.loads(old_json))
    try:
        result = _program(rule).evaluate(activation)
    except Exception as exc:  # celpy raises CELEvalError and lark/Python errors alike
        return False, f"{type(exc).__name__}: {exc}"
    if isinstance(result, celpy.CELEvalError):
        return False, f"CELEvalError: {result}"
    if not isinstance(result, celtypes.BoolType):
        return False, f"rule gave {type(result).__name__}, not a bool"
    return bool(result), None


_MISSING = object()


def _walk(schema: dict[str, Any], value: Any, old: Any, path: str, out: list[Refusal], seen: set[str] | None) -> None:
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        _SCHEMAS.setdefault(id(schema), schema)
        value_json = json.dumps(value, sort_keys=True)
        old_json = None if old is _MISSING or old is None else json.dumps(old, sort_keys=True)
        for r in rules:
            if "oldSelf" in r["rule"] and old_json is None:
                continue  # a transition rule: only on an update of an existing value
            if seen is not None:
                seen.add(r["rule"])
            holds, error = _evaluate(r["rule"], id(schema), value_json, old_json if "oldSelf" in r["rule"] else None)
            if not holds:
                out.append(Refusal(path, r["rule"], r.get("message") or f"failed rule: {r['rule']}", error))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if v is None:
                continue
            sub = props.get(k) if k in props else (extra if isinstance(extra, dict) else None)
            if sub is not None:
                before = old.get(k, _MISSING) if isinstance(old, dict) else _MISSING
                _walk(sub, v, before, f"{path}.{k}" if path else k, out, seen)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            _walk(schema["items"], v, _MISSING, f"{path}[{i}]", out, seen)


def refusals(schema: dict[str, Any], obj: dict[str, Any], seen: set[str] | None = None,
             old: dict[str, Any] | None = None) -> list[Refusal]:
    """Every rule of ``schema`` (a CRD version's openAPIV3Schema) that ``obj`` breaks,
    after defaulting; [] when the object passes them all. ``old`` is the stored object
    on an update (transition rules need it). ``seen`` collects the rules that applied."""
    out: list[Refusal] = []
    _walk(schema, default(schema, obj), _MISSING if old is None else default(schema, old), "", out, seen)
    return out


def rules(schema: Any) -> list[str]:
    """Every rule text in a schema (for the coverage test)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(r["rule"] for r in node.get("x-kubernetes-validations") or [])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return found
