"""What `rollout start` (and promote/abort/rollback) show while the engine runs.

On an interactive terminal: a rich progress bar over the plan's steps with the phase,
the current step and the traffic split, and every event printed above it. Elsewhere
(not a TTY, ``CI`` or ``GITHUB_ACTIONS`` set, ``TERM=dumb``): plain lines, one per
event, that read well in a CI log.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from typing import IO

from rollout import redact
from rollout.errors import printable
from rollout.state import Event, ModelState

ENDING_EVENTS = ("promoted", "completed", "rolled_back", "aborted", "failed", "rejected", "paused", "noop")


def interactive(stream: IO[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """True when a live display makes sense: a TTY, not CI, not a dumb terminal."""
    e = env if env is not None else os.environ
    s = stream if stream is not None else sys.stdout
    if e.get("CI") or e.get("GITHUB_ACTIONS") == "true" or e.get("TERM") == "dumb":
        return False
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


def plain_line(event: Event, ms: ModelState) -> str:
    stamp = dt.datetime.fromtimestamp(event.at).strftime("%H:%M:%S")
    return redact.scrub(printable(f"{stamp} {ms.model} {event.kind:<12} {event.message}"))


class PlainPrinter:
    """One line per event."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def __call__(self, event: Event, ms: ModelState) -> None:
        self.echo(plain_line(event, ms))

    def close(self) -> None:
        return None


class LiveProgress:
    """A rich progress bar over the plan, with events printed above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console()
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[model]}[/]"),
                                 BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.task: int | None = None
        self._started = False

    def __call__(self, event: Event, ms: ModelState) -> None:
        r = ms.rollout
        if not self._started:
            self.progress.start()
            self._started = True
        style = {"rolled_back": "red", "failed": "red", "rejected": "red", "aborted": "yellow", "paused": "yellow",
                 "promoted": "green", "completed": "green", "warning": "yellow", "waiting": "yellow"}.get(event.kind, "")
        line = plain_line(event, ms)
        self.progress.console.print(f"[{style}]{line}[/]" if style else line, markup=bool(style), highlight=False)
        if r is None:
            return
        step = r.current_step()
        split = (f"{r.stable.version if r.stable else '-'} {100 - r.traffic.weight}% / "
                 f"{r.candidate.version} {r.traffic.weight}%" + (f" (mirror {r.traffic.mirror}%)" if r.traffic.mirror else ""))
        description = f"{r.phase.value} · {step.describe() if step else 'done'} · {split}"
        total = max(len(r.plan), 1)
        if self.task is None:
            self.task = self.progress.add_task(description, total=total, model=ms.model)
        self.progress.update(self.task, description=description, total=total,
                             completed=min(r.step_index, total) if r.plan else total)
        if event.kind in ENDING_EVENTS:
            self.close()

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False


def printer(echo: Callable[[str], None], live: bool | None = None) -> PlainPrinter | LiveProgress:
    """The live display on a terminal, plain lines otherwise."""
    return LiveProgress() if (interactive() if live is None else live) else PlainPrinter(echo)
