"""`rollout status --watch`: follow a rollout until it ends, then exit with its code.

It only reads the state store (so it works next to a run in another process, terminal
or CI job) and shows phase, step, the traffic split and the latest values: a live rich
view on a terminal, a plain line per change elsewhere. A pause is not an end (someone
may still promote); the watch ends on promoted (0), rolled back / aborted / failed (3),
at once if nothing is in progress, and with exit 6 when the rollout is Progressing but
no process moves it any more: the run it followed died (kill -9, a cancelled CI job) and
no controller leads. The holder is asked without taking the model's lock, and only after
``grace_s`` without a holder or a save (a command hands the lock over in between).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from rollout.cli import report
from rollout.clock import Clock, SystemClock
from rollout.engine import EXIT_UNHELD, exit_code_for
from rollout.errors import BadInput
from rollout.cli.progress import interactive
from rollout.state import LockHolder, ModelState, Phase, StateStore
from rollout.view import rollout_view

PHASE_STYLE = {Phase.PROGRESSING: "cyan", Phase.PAUSED: "yellow", Phase.PROMOTED: "green", Phase.COMPLETED: "green",
               Phase.ROLLED_BACK: "red", Phase.ABORTED: "yellow", Phase.FAILED: "red", Phase.REJECTED: "red"}


def outcome(ms: ModelState) -> int | None:
    """The exit code once the rollout has ended, None while it is in progress."""
    r = ms.rollout
    if r is None:
        return 0
    return None if r.phase.active else exit_code_for(r.phase)


def renderable(ms: ModelState) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    r = ms.rollout
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("model", ms.model)
    head.add_row("stable", ms.stable.version if ms.stable else "-")
    if r is None:
        head.add_row("rollout", "none yet")
        return Panel(head, title=f"rollout {ms.model}")
    v = rollout_view(r)
    head.add_row("phase", Text(v.phase.value, style=PHASE_STYLE.get(v.phase, "")) + Text(f"  {v.reason}" if v.reason else ""))
    head.add_row("step", f"{v.step}/{v.steps} " + (v.current_step or "(done)"))
    width = 40
    filled = round(width * v.weight / 100)
    bar = Text("█" * (width - filled), style="blue") + Text("█" * filled, style="magenta")
    head.add_row("traffic", bar + Text(f"  {v.stable or '-'} {100 - v.weight}% / {v.candidate} {v.weight}%"
                                       + (f" (mirror {v.mirror}%)" if v.mirror else "")))
    parts: list[Any] = [head]
    if v.latest:
        table = Table(title="latest values", title_justify="left", expand=False)
        for col in ("metric", "version", "value", "verdict", "reason"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for m in v.latest:
            style = {"pass": "green", "fail": "red"}.get(m.verdict, "yellow")
            table.add_row(m.metric, m.version, "-" if m.value is None else f"{m.value:.4g}",
                          Text(m.verdict, style=style), m.reason)
        parts.append(table)
    if r.events:
        parts.append(Text(f"last event: {r.events[-1].kind} {r.events[-1].message}", style="dim"))
    return Panel(Group(*parts), title=f"rollout {ms.model}: {r.stable.version if r.stable else '-'} → {r.candidate.version}")


def _signature(ms: ModelState) -> tuple[Any, ...]:
    r = ms.rollout
    if r is None:
        return (ms.revision,)
    return (r.id, r.phase, r.step_index, r.traffic.weight, r.traffic.mirror, len(r.measurements))


class Follower:
    """Tells when a Progressing rollout has been left with nobody to move it: no live
    holder of the model's lock, no controller, and no save, for ``grace_s`` in a row."""

    def __init__(self, store: StateStore, model: str, clock: Clock, grace_s: float,
                 controller: Callable[[], str | None]) -> None:
        self.store, self.model, self.clock, self.grace_s, self.controller = store, model, clock, grace_s, controller
        self.unheld_since: float | None = None
        self.seen: tuple[Any, ...] | None = None
        self.last: LockHolder | None = None

    def abandoned(self, ms: ModelState) -> bool:
        r = ms.rollout
        now = self.clock.now()
        revision = (ms.revision,)
        if r is None or r.phase is not Phase.PROGRESSING or revision != self.seen:
            self.seen, self.unheld_since = revision, None
            if r is None or r.phase is not Phase.PROGRESSING:
                return False
        found = self.store.holder(self.model)
        if found is not None and found.alive or self.controller():
            self.unheld_since = None
            self.last = found
            return False
        self.last = found or self.last
        if self.unheld_since is None:
            self.unheld_since = now
        return now - self.unheld_since >= self.grace_s

    def message(self, ms: ModelState) -> str:
        r = ms.rollout
        assert r is not None
        gone = self.last
        who = f"the process that ran it ({gone.words}) is gone" if gone is not None else "no process holds it"
        info = report.unheld(ms, gone) or {}
        return (f"{self.model}: {r.phase.value} at step {min(r.step_index + 1, len(r.plan))}/{len(r.plan)} but {who}; "
                f"nothing has moved it since {info.get('since', '-')} (its last save). "
                f"`rollout start {self.model}:{r.candidate.version}` resumes it, `rollout abort {self.model}` "
                f"puts all traffic on stable (exit {EXIT_UNHELD})")


def watch_status(store: StateStore, model: str, interval_s: float | None = None, clock: Clock | None = None,
                 echo: Callable[[str], None] | None = None, live: bool | None = None,
                 controller: Callable[[], str | None] | None = None, grace_s: float | None = None) -> int:
    """Follow ``model`` until its rollout ends; returns the outcome's exit code (6 when the
    process that moved it died and nothing else does)."""
    clock = clock or SystemClock()
    interval = interval_s if interval_s is not None else float(os.environ.get("ROLLOUT_WATCH_INTERVAL_S", "1"))
    grace = grace_s if grace_s is not None else max(3.0, 2 * interval)
    echo = echo or (lambda line: print(line, flush=True))
    live = interactive(sys.stdout) or bool(os.environ.get("ROLLOUT_WATCH_LIVE")) if live is None else live
    follower = Follower(store, model, clock, grace, controller or (lambda: None))
    ms = store.load(model)
    if ms.revision == 0:
        raise BadInput(f"model {model!r} has no rollout state; known: {', '.join(store.models()) or 'none'}")
    if not live:
        return _watch_plain(store, model, ms, interval, clock, echo, follower)
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(renderable(ms), console=console, refresh_per_second=4, transient=False) as view:
        while (code := outcome(ms)) is None:
            if follower.abandoned(ms):
                break
            clock.sleep(interval)
            ms = store.load(model)
            view.update(renderable(ms))
    if code is None:
        console.print(follower.message(ms), style="red", highlight=False)
        return EXIT_UNHELD
    r = ms.rollout
    console.print(f"{model}: {r.phase.value if r else 'no rollout'} (exit {code})",
                  style=PHASE_STYLE.get(r.phase, "") if r else "", highlight=False)
    return code


def _watch_plain(store: StateStore, model: str, ms: ModelState, interval: float, clock: Clock,
                 echo: Callable[[str], None], follower: Follower) -> int:
    echo(report.status_text(ms))
    seen = _signature(ms)
    while (code := outcome(ms)) is None:
        if follower.abandoned(ms):
            echo(follower.message(ms))
            return EXIT_UNHELD
        clock.sleep(interval)
        ms = store.load(model)
        if _signature(ms) != seen:
            seen = _signature(ms)
            assert ms.rollout is not None
            v = rollout_view(ms.rollout)
            echo(f"{model} {v.phase.value} step {v.step}/{v.steps} {v.current_step or '(done)'} "
                 f"traffic {v.candidate} {v.weight}%" + (f" mirror {v.mirror}%" if v.mirror else ""))
    r = ms.rollout
    echo(f"{model}: {r.phase.value if r else 'no rollout'}" + (f": {r.reason}" if r and r.reason else "") + f" (exit {code})")
    return code
