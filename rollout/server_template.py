"""Custom model-server command templates (``platform.server``): checked at lint, and
rendered so that a value can never become a command.

A template is a shell-like word list with the placeholders ``{port}``, ``{model_dir}``,
``{name}`` and ``{version}``. It is split with ``shlex`` first and each placeholder is
substituted inside its own argv item, so a version never adds or splits arguments; in
the command line of a shell (``sh -c '...'``) values are shell-quoted as well. Names and
versions are validated besides (rollout/names.py), so this is the second wall, not the
only one: a version named ``v9$(touch x)`` is refused before it gets here, and would
run nothing if it did.
"""

from __future__ import annotations

import os
import shlex
import string

from rollout.errors import BadInput, short_repr

PLACEHOLDERS = ("port", "model_dir", "name", "version")
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"})


def parse_template(server: str) -> list[str]:
    """A custom server command template as argv items, checked: it must parse as a shell
    word list and use only the known placeholders, without format specs or conversions
    (a server that ignores {port} is allowed; it just never becomes ready). Raises
    BadInput naming the problem; `rollout lint` runs it through the spec."""
    if not server.strip():
        raise BadInput("platform.server must be 'builtin', 'mlserver' or a command template with {port}")
    try:
        argv = shlex.split(server)
    except ValueError as exc:
        raise BadInput(f"server command template cannot be parsed ({exc}): {short_repr(server)}") from None
    for item in argv:
        try:
            parsed = list(string.Formatter().parse(item))
        except ValueError as exc:
            raise BadInput(f"server command template: argument {short_repr(item)} is not a valid template ({exc}); "
                           "write a literal brace as {{ or }}") from None
        for _, fld, spec, conversion in parsed:
            if fld is None:
                continue
            if fld not in PLACEHOLDERS:
                raise BadInput(f"server command template: unknown placeholder {short_repr('{' + fld + '}')}; known: "
                               + ", ".join("{%s}" % p for p in PLACEHOLDERS))
            if spec or conversion:
                raise BadInput(f"server command template: placeholder {{{fld}}} takes no conversion or format "
                               f"spec (got {short_repr(item)})")
    return argv


def _shell_line_indexes(argv: list[str]) -> set[int]:
    """Indexes of argv items a shell runs as a command line (``sh -c '<line>'``)."""
    out: set[int] = set()
    for i, item in enumerate(argv):
        if os.path.basename(item) not in SHELLS:
            continue
        for j in range(i + 1, len(argv)):
            flag = argv[j]
            if not flag.startswith("-") or flag.startswith("--"):
                break
            if "c" in flag[1:]:
                if j + 1 < len(argv):
                    out.add(j + 1)
                break
    return out


def render_template(server: str, values: dict[str, str]) -> list[str]:
    """The argv of a custom server: each placeholder substituted inside its own argv item
    (never re-split), and shell-quoted inside a shell's command line (``sh -c``), so a
    value can never become a command, whatever it contains."""
    argv = parse_template(server)
    shell_lines = _shell_line_indexes(argv)
    out = []
    for i, item in enumerate(argv):
        pieces = []
        for literal, fld, _, _ in string.Formatter().parse(item):
            pieces.append(literal)
            if fld is not None:
                value = str(values[fld])
                pieces.append(shlex.quote(value) if i in shell_lines else value)
        out.append("".join(pieces))
    return out
