"""What a CLI command runs beside the engine, as listeners, and finishes when it is done:
the progress display or plain lines, the GitHub Actions integration (when
``GITHUB_ACTIONS=true``), notifications and post-rollout hooks.

``finish`` flushes them in that order of importance: a display is stopped, GitHub gets
its outputs and summary, notifications get a bounded time to leave (they never hold a
rollout or a rollback back; they may only delay the process exit by a few seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rollout.integrations import github
from rollout.gates import PostRolloutHooks
from rollout.integrations.notify import Notifier
from rollout.cli.progress import printer
from rollout.spec import RolloutSpec
from rollout.state import Event, ModelState

log = logging.getLogger("rollout.cli.session")

NOTIFY_FLUSH_S = 10.0


class Session:
    def __init__(self, spec: RolloutSpec | None, echo: Callable[[str], None], live: bool | None = None,
                 env: dict[str, str] | None = None, report: bool = True) -> None:
        self.spec = spec
        self.report = report  # False: GitHub outputs only (status), no summary or annotation
        self.github = github.GitHubActions(env, write=echo) if github.active(env) else None
        self.display = printer(echo, live)
        self.notifier = Notifier(spec.webhooks.notify) if spec is not None and spec.webhooks.notify else None
        self.post_rollout = PostRolloutHooks(spec) if spec is not None and any(
            h.type == "post-rollout" for h in spec.webhooks.hooks) else None
        self.last: ModelState | None = None

    @property
    def listeners(self) -> list[Callable[[Event, ModelState], None]]:
        out: list[Any] = [self._remember]
        if self.github is not None:
            out.append(self.github)  # opens/closes ::group:: before the line is printed
        out.append(self.display)
        out += [x for x in (self.notifier, self.post_rollout) if x is not None]
        return out

    def _remember(self, event: Event, ms: ModelState) -> None:
        self.last = ms

    def observe(self, ms: ModelState) -> None:
        """A state read without running the engine (status): still reported to GitHub."""
        self.last = ms

    def finish(self, exit_code: int, error: str | None = None, model: str = "") -> None:
        try:
            self.display.close()
        except Exception:  # pragma: no cover - a display must not hide the outcome
            log.exception("closing the progress display failed")
        if self.github is not None:
            self.github.finish(self.last, exit_code, error, model, report=self.report)
        if self.notifier is not None:
            self.notifier.close(NOTIFY_FLUSH_S)
        if self.post_rollout is not None:
            self.post_rollout.close(NOTIFY_FLUSH_S)
