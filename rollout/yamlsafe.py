"""A YAML loader for files from outside (rollout specs, registry files) that cannot be
turned against the process reading it.

PyYAML's ``safe_load`` constructs no objects, but it still expands aliases (a 514-byte
"billion laughs" document grows to gigabytes), keeps the last of two duplicate keys
silently (a manual gate became an automatic one), recurses once per nesting level
(10,000 ``[`` end in a RecursionError traceback) and reads ``.nan``/``.inf`` as floats
(a ``max: .nan`` threshold always passes). This loader refuses each of those with a
``BadYaml`` naming the file and line:

- input larger than ``max_bytes`` (default 128 KiB; a real spec is a few KiB);
- more than ``MAX_NODES`` (10,000) values in all (85,000 one-character items take
  seconds to parse in pure Python);
- any alias (``*name``); anchors alone are harmless and allowed;
- a key repeated in one mapping (names the key and both lines);
- nesting deeper than ``max_depth`` (default 64);
- ``.nan``, ``.inf`` and ``-.inf``.

It is PyYAML's pure-Python SafeLoader with those checks added (the C loader composes
in C, where none of them can be hooked), after a pass over libyaml's event stream that
refuses aliases, depth and size cheaply; a spec loads in about a millisecond.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent
from yaml.nodes import MappingNode, Node

from rollout.errors import BadYaml, printable, short_repr

MAX_BYTES = 128 * 1024
MAX_DEPTH = 64
MAX_NODES = 10_000  # a real spec has a few hundred; bounds the work of a document of tiny items


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, line: int | None) -> None:
        super().__init__(problem)
        self.problem_text = problem
        self.line = line


def _line(node_or_event: Any) -> int | None:
    mark = getattr(node_or_event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


class SafeLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys, deep nesting or non-finite floats."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise _Refused(f"aliases are not allowed (found *{event.anchor}); write the value out", _line(event))
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > self.max_nodes:
                raise _Refused(f"more than {self.max_nodes} values in one document", _line(self.peek_event()))
            if self._depth > self.max_depth:
                raise _Refused(f"nested more than {self.max_depth} levels deep", _line(self.peek_event()))
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: dict[Any, int | None] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused("merge keys (<<) are not allowed; write the keys out", _line(key_node))
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key, 0)
            except TypeError:
                raise _Refused(f"a mapping key must be a plain value, got {type(key).__name__}",
                               _line(key_node)) from None
            if first != 0:
                raise _Refused(f"duplicate key {short_repr(key)} (first at line {first}); a key may appear "
                               "once in a mapping", _line(key_node))
            seen[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]

    def construct_yaml_float(self, node: Node) -> float:  # type: ignore[override]
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Refused(f"{node.value!r} is not a finite number; NaN and infinity are not allowed", _line(node))
        return value  # type: ignore[no-any-return]


SafeLoader.add_constructor("tag:yaml.org,2002:float", SafeLoader.construct_yaml_float)


def _prescan(text: str, max_depth: int, max_nodes: int) -> None:
    """Refuse aliases, deep nesting and too many values from libyaml's event stream (C,
    no recursion) before the pure-Python pass: PyYAML's Python scanner spends quadratic
    time on thousands of unclosed ``[`` before the composer sees the first one. A
    syntax error found here is reported with libyaml's message and position."""
    if not getattr(yaml, "__with_libyaml__", False):
        return
    depth = nodes = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, AliasEvent):
                raise _Refused(f"aliases are not allowed (found *{event.anchor}); write the value out", _line(event))
            if isinstance(event, NodeEvent):
                nodes += 1
                if nodes > max_nodes:
                    raise _Refused(f"more than {max_nodes} values in one document", _line(event))
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise _Refused(f"nested more than {max_depth} levels deep", _line(event))
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    except ValueError as exc:  # libyaml's reader: a character YAML does not allow
        raise _Refused(f"not valid YAML text ({exc})", None) from None


def load(data: str | bytes, source: str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one YAML document from outside; ``BadYaml`` names ``source``, the line and
    the problem (control characters escaped, length bounded)."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise BadYaml(f"{source}: {size} bytes is larger than the {max_bytes}-byte limit for this file")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadYaml(f"{source}: not UTF-8 text (byte {exc.start})") from None
    loader: SafeLoader | None = None
    try:
        _prescan(data, max_depth, MAX_NODES)
        loader = SafeLoader(data)
        loader.max_depth = max_depth
        return loader.get_single_data()
    except _Refused as exc:
        where = f" at line {exc.line}" if exc.line else ""
        raise BadYaml(printable(f"{source}: refused{where}: {exc.problem_text}", limit=300)) from None
    except (yaml.YAMLError, ComposerError, ConstructorError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__
        if isinstance(exc, yaml.reader.ReaderError):
            where = f" at character {exc.position}"
            problem = f"{problem} ({exc.character:#x})"
        raise BadYaml(printable(f"{source}: malformed YAML{where}: {problem}", limit=300)) from None
    except RecursionError:  # pragma: no cover - max_depth stops nesting long before this
        raise BadYaml(f"{source}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
