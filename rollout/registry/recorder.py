"""Recording back: a listener that tells the registry what a rollout did.

It reacts to the engine's ``promoted`` and ``rolled_back`` events (after them, the
model state's ``stable`` is the version that serves) and calls ``Registry.record``:
MLflow moves its alias and writes tags, git commits its environment file. A registry
that cannot be written never stops or undoes a rollout: the failure is logged as a
warning naming the registry and what was not recorded, and shown to the user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rollout.registry.base import Outcome, Registry

log = logging.getLogger("rollout.registry")

RECORDED_EVENTS = ("promoted", "rolled_back")


class RegistryRecorder:
    def __init__(self, registry: Registry | Callable[[], Registry], platform: str = "local",
                 echo: Callable[[str], None] | None = None) -> None:
        self._registry = registry
        self.platform = platform
        self.echo = echo
        self.recorded: list[str] = []
        self.failed: list[str] = []

    def _get(self) -> Registry:
        if callable(self._registry) and not hasattr(self._registry, "record"):
            self._registry = self._registry()
        return self._registry  # type: ignore[return-value]

    def __call__(self, event: Any, ms: Any) -> None:
        if event.kind not in RECORDED_EVENTS or ms.rollout is None or ms.stable is None:
            return
        r = ms.rollout
        serving = ms.stable.version
        # The version the rollout was about: the candidate, or (`rollout rollback`) the stable it left.
        subject = r.candidate.version if r.candidate.version != serving else (r.stable.version if r.stable else serving)
        if event.kind == "promoted":
            previous = r.stable.version if r.stable is not None and r.stable.version != serving else None
        else:
            previous = subject if subject != serving else None
        outcome = Outcome(model=ms.model, kind=event.kind, serving=serving, previous=previous,
                          candidate=subject, rollout_id=r.id, at=event.at, platform=self.platform)
        try:
            line = self._get().record(outcome)
        except Exception as exc:  # the rollout's outcome stands; say what was not recorded
            message = (f"the registry was not told that {ms.model}:{outcome.serving} {event.kind.replace('_', ' ')}: "
                       f"{exc}")
            self.failed.append(message)
            log.warning("%s", message)
            if self.echo is not None:
                self.echo(f"warning: {message}")
            return
        if line:
            self.recorded.append(line)
            log.info("%s", line)
            if self.echo is not None:
                self.echo(line)
