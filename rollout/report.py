"""Text for people: status and history of a model, built from the state alone."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml

from rollout.state import MeasurementRecord, ModelState, RolloutState


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_dict(ms: ModelState) -> dict[str, Any]:
    r = ms.rollout
    out: dict[str, Any] = {
        "model": ms.model,
        "stable": ms.stable.version if ms.stable else None,
        "previous": [p.version for p in ms.previous],
        "rollout": None,
    }
    if r is not None:
        step = r.current_step()
        out["rollout"] = {
            "id": r.id, "strategy": r.strategy, "phase": r.phase.value,
            "stable": r.stable.version if r.stable else None, "candidate": r.candidate.version,
            "step": r.step_index + (1 if step else 0), "steps": len(r.plan),
            "current_step": step.describe() if step else None,
            "traffic": {"weight": r.traffic.weight, "mirror": r.traffic.mirror},
            "reason": r.reason, "started_at": r.started_at, "finished_at": r.finished_at,
            "measurements": [m.model_dump(mode="json") for m in latest_measurements(r)],
        }
    return out


def latest_measurements(r: RolloutState) -> list[MeasurementRecord]:
    """The newest measurement of each metric: what the last decision was made on."""
    latest: dict[str, MeasurementRecord] = {}
    for m in r.measurements:
        latest[m.metric] = m
    return list(latest.values())


def render(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    raise ValueError(fmt)


def status_text(ms: ModelState) -> str:
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
        f"step      {min(r.step_index + 1, len(r.plan))}/{len(r.plan)}" + (f" {step.describe()}" if step else " (done)"),
        f"traffic   {r.candidate.version} {r.traffic.weight}%"
        + (f" (mirror {r.traffic.mirror}%)" if r.traffic.mirror else "")
        + (f", {r.stable.version} {100 - r.traffic.weight}%" if r.stable else ""),
        f"started   {_time(r.started_at)}" + (f", finished {_time(r.finished_at)}" if r.finished_at else ""),
    ]
    latest = latest_measurements(r)
    if latest:
        lines.append("measured  (latest of each metric)")
        for m in latest:
            value = "-" if m.value is None else f"{m.value:.4g}"
            lines.append(f"  {m.metric:<18} {m.version:<8} {value:>10}  {m.verdict:<12} {m.reason}")
    return "\n".join(lines)


def history_rows(ms: ModelState) -> list[dict[str, Any]]:
    rows = []
    for r in ([ms.rollout] if ms.rollout and ms.rollout.phase.active else []) + ms.history:
        decisive = [m for m in r.measurements if m.verdict in ("fail", "inconclusive", "error")]
        rows.append({
            "id": r.id, "strategy": r.strategy, "stable": r.stable.version if r.stable else None,
            "candidate": r.candidate.version, "phase": r.phase.value, "reason": r.reason,
            "started_at": _time(r.started_at), "finished_at": _time(r.finished_at),
            "measurements": len(r.measurements),
            "deciding": [m.reason for m in decisive[-3:]],
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


def local_text(row: Any) -> str:
    """One model's local processes (a LocalModelStatus), for `rollout local status`."""
    lines = [row.model]
    if row.router is not None:
        r = row.router
        grpc = r.record.extra_ports.get("grpc")
        lines.append(f"  router  REST {r.record.url}" + (f"  gRPC 127.0.0.1:{grpc}" if grpc else "")
                     + f"  pid {r.record.pid} {'running' if r.alive else 'DEAD'}")
    if row.traffic is not None:
        t = row.traffic
        split = f"{t.stable} {100 - t.weight}%" + (f", {t.candidate} {t.weight}%" if t.candidate else "")
        lines.append(f"  traffic {split}" + (f", mirror {t.mirror}% to {t.candidate}" if t.mirror else ""))
    for s in row.servers:
        lines.append(f"  {s.record.version:<8} pid {s.record.pid} port {s.record.port} {'running' if s.alive else 'DEAD'}")
    return "\n".join(lines)
