"""Exception types the engine and the CLI branch on.

Each maps to one exit code (see ``exit_code``); messages name the field, object or
version at fault and say what to do, because the CLI prints them as one line.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error a user can cause or fix; never a bug."""

    exit_code = 1


class BadInput(RolloutError):
    """A spec, reference or argument is wrong (exit 2)."""

    exit_code = 2


class SpecError(BadInput):
    """The rollout spec does not validate; the message lists every bad field."""


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
