"""Exception types the engine and the CLI branch on.

Each maps to one exit code (see ``exit_code``); messages name the field, object or
version at fault and say what to do, because the CLI prints them as one line.
"""

from __future__ import annotations

from dataclasses import dataclass


class RolloutError(Exception):
    """Base of every error a user can cause or fix; never a bug."""

    exit_code = 1


class BadInput(RolloutError):
    """A spec, reference or argument is wrong (exit 2)."""

    exit_code = 2


class SpecError(BadInput):
    """The rollout spec does not validate; the message lists every bad field."""


class BadYaml(BadInput):
    """A YAML file (spec, registry file) is malformed or refused by the safe loader; the
    message names the file, the line and what is wrong."""


class NotFound(BadInput):
    """A model, version or rollout that does not exist; the message lists what does."""


class Unsupported(BadInput):
    """The chosen platform or router cannot do what the spec asks (e.g. mirror)."""


class Locked(RolloutError):
    """Another run holds the model's lock (exit 5)."""

    exit_code = 5

    def __init__(self, model: str, holder: str) -> None:
        self.model = model
        self.holder = holder
        super().__init__(f"model {model!r} is locked by {holder}; wait for it, or stop it first")


class Conflict(RolloutError):
    """A compare-and-swap save lost against a newer write; callers reload and retry."""


class RolloutInProgress(RolloutError):
    """A rollout of another version is in progress (exit 5 unless --supersede)."""

    exit_code = 5


class DeployError(RolloutError):
    """A version could not be deployed or never became ready."""


class PlatformError(RolloutError):
    """The platform refused or failed an operation (router, API server, process)."""


class RegistryError(RolloutError):
    """The registry could not be read (missing repository, bad model.yaml)."""


class StateDamaged(RolloutError):
    """A state file is unreadable and no good previous copy exists; the message names the
    file and how to recover."""


class StateUnwritable(RolloutError):
    """The state directory cannot be written (read-only, full, no permission); detected
    before any traffic moves. The message names the path."""


# --------------------------------------------------------------------------- message hygiene

MESSAGE_LIMIT = 2000  # characters of one error message shown to a user


def printable(text: str, limit: int = MESSAGE_LIMIT, keep_newlines: bool = True) -> str:
    """``text`` safe to print on a terminal or in a CI log: control characters (terminal
    escapes, NUL, CR...) shown escaped as ``\\x1b``, and cut at ``limit`` characters with a
    note of how much was left out, so a 50 MB input never becomes a 50 MB error."""
    out = []
    for ch in text[: limit + 1]:
        code = ord(ch)
        if ch == "\n" and keep_newlines or ch == "\t":
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    shown = "".join(out)
    if len(text) > limit:
        cut = shown[:limit]
        return f"{cut}… ({len(text) - limit} more characters)"
    return shown


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for naming a bad input in a message."""
    text = repr(value) if not isinstance(value, str) or len(value) <= 4 * limit else repr(value[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ErrorRecord:
    """An error as stored and shown: what kind it was and a scrubbed, bounded message.

    Providers and platforms turn exceptions into this instead of keeping ``str(exc)`` of
    an arbitrary exception (whose text may carry a request's headers or URL): however it
    is built, the message has passed the redactor (rollout/redact.py) and ``printable``.
    ``kind`` is a short word callers branch on or show: ``timeout``, ``unreachable``,
    ``http``, ``bad_answer``, or an exception's class name.
    """

    kind: str
    message: str

    def __post_init__(self) -> None:
        from rollout.redact import scrub  # imported late: redact imports this module

        object.__setattr__(self, "message", printable(scrub(self.message), limit=500, keep_newlines=False))
        object.__setattr__(self, "kind", printable(self.kind, limit=40, keep_newlines=False))

    @classmethod
    def of(cls, exc: BaseException, kind: str | None = None) -> "ErrorRecord":
        return cls(kind or type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
