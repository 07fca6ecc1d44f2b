"""`rollout status --watch`: follow a rollout until it ends, then exit with its code.

It only reads the state store (so it works next to a run in another process, terminal
or CI job) and shows phase, step, the traffic split and the latest values: a live rich
view on a terminal, a plain line per change elsewhere. A pause is not an end (someone
may still promote); the watch ends on promoted (0), rolled back / aborted / failed (3),
or at once if nothing is in progress.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from rollout import report
from rollout.clock import Clock, SystemClock
from rollout.engine import exit_code_for
from rollout.errors import BadInput
from rollout.progress import interactive
from rollout.state import ModelState, Phase, StateStore
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


def watch_status(store: StateStore, model: str, interval_s: float | None = None, clock: Clock | None = None,
                 echo: Callable[[str], None] | None = None, live: bool | None = None) -> int:
    """Follow ``model`` until its rollout ends; returns the outcome's exit code."""
    clock = clock or SystemClock()
    interval = interval_s if interval_s is not None else float(os.environ.get("ROLLOUT_WATCH_INTERVAL_S", "1"))
    echo = echo or (lambda line: print(line, flush=True))
    live = interactive(sys.stdout) or bool(os.environ.get("ROLLOUT_WATCH_LIVE")) if live is None else live
    ms = store.load(model)
    if ms.revision == 0:
        raise BadInput(f"model {model!r} has no rollout state; known: {', '.join(store.models()) or 'none'}")
    if not live:
        return _watch_plain(store, model, ms, interval, clock, echo)
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(renderable(ms), console=console, refresh_per_second=4, transient=False) as view:
        while (code := outcome(ms)) is None:
            clock.sleep(interval)
            ms = store.load(model)
            view.update(renderable(ms))
    r = ms.rollout
    console.print(f"{model}: {r.phase.value if r else 'no rollout'} (exit {code})",
                  style=PHASE_STYLE.get(r.phase, "") if r else "", highlight=False)
    return code


def _watch_plain(store: StateStore, model: str, ms: ModelState, interval: float, clock: Clock,
                 echo: Callable[[str], None]) -> int:
    echo(report.status_text(ms))
    seen = _signature(ms)
    while (code := outcome(ms)) is None:
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
