"""Text for people: status and history of a model, built from the state alone."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import yaml

from rollout.state import LockHolder, ModelState, Phase
from rollout.view import latest_measurements, model_view, rollout_view  # noqa: F401 (latest_measurements: API)


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_dict(ms: ModelState, holder: str | None = None, gone: LockHolder | None = None) -> dict[str, Any]:
    r = ms.rollout
    out: dict[str, Any] = {
        "model": ms.model,
        "stable": ms.stable.version if ms.stable else None,
        "previous": [p.version for p in ms.previous],
        "rollout": None,
    }
    if r is not None:
        v = rollout_view(r)
        step = r.current_step()
        out["rollout"] = {
            "id": v.id, "strategy": v.strategy, "phase": v.phase.value,
            "stable": v.stable, "candidate": v.candidate,
            "step": 0 if r.phase is Phase.REJECTED else r.step_index + (1 if step else 0), "steps": v.steps,
            "current_step": None if r.phase is Phase.REJECTED else v.current_step,
            "traffic": {"weight": v.weight, "mirror": v.mirror},
            "reason": v.reason, "started_at": v.started_at, "finished_at": v.finished_at,
            "measurements": [m.model_dump(mode="json") for m in v.latest],
            "steps_done": [{"step": row.index, "description": row.step, "result": row.result, "reason": row.reason}
                           for row in v.rows if row.result != "not_reached"],
        }
        if v.active:
            out["rollout"]["holder"] = holder
            out["rollout"]["unheld"] = None if holder else unheld(ms, gone)
    return out


def render(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    raise ValueError(fmt)


def unheld(ms: ModelState, gone: LockHolder | None = None) -> dict[str, Any] | None:
    """A rollout in progress that no process moves: since when (its last save), and which
    process held it last if its record says (``gone``: a holder that died, e.g. kill -9)."""
    r = ms.rollout
    if r is None or not r.phase.active:
        return None
    last = r.events[-1].at if r.events else r.started_at
    out: dict[str, Any] = {"since": _time(last), "since_epoch": last}
    if gone is not None and not gone.alive:
        out["last_holder"] = gone.words
        if gone.since is not None:
            out["last_holder_since"] = _time(gone.since)
    return out


def holder_line(ms: ModelState, holder: str | None, controller: str | None = None,
                gone: LockHolder | None = None) -> str | None:
    """Who moves a rollout in progress; said plainly when nobody does, and since when."""
    r = ms.rollout
    if r is None or not r.phase.active:
        return None
    if holder:
        return f"held by   {holder}"
    if controller:
        return f"carried   by the controller ({controller})"
    info = unheld(ms, gone)
    assert info is not None
    dead = (f"; the process that held it ({info['last_holder']}) is gone" if "last_holder" in info else "")
    return (f"held by   no process since {info['since']} (its last save){dead}: nothing moves this rollout; "
            f"`rollout start {ms.model}:{r.candidate.version}` resumes it, or run `rollout controller`")


def status_text(ms: ModelState, holder: str | None = None, controller: str | None = None,
                show_holder: bool = False, gone: LockHolder | None = None) -> str:
    lines = [f"model     {ms.model}", f"stable    {ms.stable.version if ms.stable else '-'}"]
    if ms.previous:
        lines.append(f"previous  {', '.join(p.version for p in ms.previous)}")
    r = ms.rollout
    if r is None:
        lines.append("rollout   none yet")
        return "\n".join(lines)
    step = r.current_step()
    lines += [
        f"rollout   {r.id} {r.strategy} {r.stable.version if r.stable else '-'} -> {r.candidate.version}",
        f"phase     {r.phase.value}" + (f": {r.reason}" if r.reason else ""),
        f"step      0/{len(r.plan)} registry gate: refused before the plan began" if r.phase is Phase.REJECTED else
        f"step      {min(r.step_index + 1, len(r.plan))}/{len(r.plan)}" + (f" {step.describe()}" if step else " (done)"),
        f"traffic   {r.candidate.version} {r.traffic.weight}%"
        + (f" (mirror {r.traffic.mirror}%)" if r.traffic.mirror else "")
        + (f", {r.stable.version} {100 - r.traffic.weight}%" if r.stable else ""),
        f"started   {_time(r.started_at)}" + (f", finished {_time(r.finished_at)}" if r.finished_at else ""),
    ]
    line = holder_line(ms, holder, controller, gone) if show_holder else None
    if line:
        lines.append(line)
    latest = latest_measurements(r)
    if latest:
        lines.append("measured  (latest of each metric)")
        for m in latest:
            value = "-" if m.value is None else f"{m.value:.4g}"
            lines.append(f"  {m.metric:<18} {m.version:<8} {value:>10}  {m.verdict:<12} {m.reason}")
    return "\n".join(lines)


def history_rows(ms: ModelState) -> list[dict[str, Any]]:
    rows = []
    for v in model_view(ms).history:
        rows.append({
            "id": v.id, "strategy": v.strategy, "stable": v.stable,
            "candidate": v.candidate, "phase": v.phase.value, "reason": v.reason,
            "started_at": _time(v.started_at), "finished_at": _time(v.finished_at),
            "measurements": v.measurements,
            # what the engine recorded as deciding a failed or inconclusive step (dry_run never decides)
            "deciding": [m.reason for m in v.deciding[-3:]],
            "steps": [{"step": row.index, "description": row.step, "result": row.result}
                      for row in v.rows if row.result != "not_reached"],
        })
    return rows


def history_text(ms: ModelState) -> str:
    rows = history_rows(ms)
    if not rows:
        return f"{ms.model}: no rollouts yet"
    out = []
    for row in rows:
        out.append(f"{row['started_at']}  {row['id']}  {row['strategy']:<10} {row['stable'] or '-'} -> "
                   f"{row['candidate']:<8} {row['phase']:<11} {row['reason']}")
    return "\n".join(out)


def local_text(row: Any, bring_back: str | None = None, retiring: Mapping[str, float] | None = None,
               controller: bool = False, now: float | None = None, where: str = "") -> str:
    """One model's local processes (a LocalModelStatus), for `rollout local status`;
    ``bring_back``: the command that starts a dead router again; ``retiring``: version ->
    when its scale-down delay ends. Nothing retires a version on its own: a reconcile does
    (a controller, or the next `rollout start`), so the line says which will."""
    bring_back = bring_back or f"rollout start {row.model}:{row.last_stable or '<stable>'}"
    retiring = retiring or {}
    lines = [row.model]
    if row.router is not None:
        r = row.router
        grpc = r.record.extra_ports.get("grpc")
        cmd = list(r.record.command)
        plane = cmd[cmd.index("--data-plane") + 1] if "--data-plane" in cmd[:-1] else "python"
        lines.append(f"  router  REST {r.record.url}" + (f"  gRPC 127.0.0.1:{grpc}" if grpc else "")
                     + f"  ({plane})  pid {r.record.pid} {'running' if r.alive else 'DEAD'}")
    if row.traffic is not None:
        lines.append(f"  traffic {row.traffic.describe()}")
    if row.front_alone:
        lines.append(f"  nginx   pid {row.front_pid} still serves the dead router's last split; "
                     f"`{bring_back}` brings the router back to adopt it")
    elif row.front_pid is not None:
        lines.append(f"  nginx   pid {row.front_pid} serves the router's ports")
    elif row.router is not None and not row.router.alive:
        lines.append(f"  nothing serves the router's ports; `{bring_back}` brings the router back")
    for s in row.servers:
        line = f"  {s.record.version:<8} pid {s.record.pid} port {s.record.port} {'running' if s.alive else 'DEAD'}"
        due = retiring.get(s.record.version)
        if due is not None:
            when = ("due " if now is None or due > now else "overdue since ") + _time(due)
            who = ("the controller retires it" if controller else
                   f"the next `rollout start {row.model}:...{where}` retires it, or a controller (none runs)")
            line += f"; retirement {when} (scale_down_delay_s): {who}"
        lines.append(line)
    return "\n".join(lines)
