"""GitHub Actions integration, active when ``GITHUB_ACTIONS=true``.

- a job summary (``$GITHUB_STEP_SUMMARY``): the decision, one table row per step
  (weight, each metric's value and verdict, duration, result) and a Mermaid
  ``xychart-beta`` chart of each metric over the rollout;
- step outputs (``$GITHUB_OUTPUT``, heredoc form so any value is safe): ``phase``,
  ``rollout-id``, ``stable-version``, ``candidate-version``, ``model``, ``exit-code``;
- a ``::group::`` per step around the log lines of that step;
- an annotation for the decision (``::error::`` rolled back / failed, ``::warning::``
  paused / aborted, ``::notice::`` promoted), escaped as the workflow-command spec says.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from rollout import redact
from rollout.state import REGISTRY_GATE_INDEX, Event, MeasurementRecord, ModelState, Phase, RolloutState
from rollout.view import step_views

VERDICT_ICON = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "error": "⚠️"}
PHASE_ICON = {Phase.PROMOTED: "✅", Phase.COMPLETED: "✅", Phase.ROLLED_BACK: "❌", Phase.FAILED: "❌", Phase.REJECTED: "❌",
              Phase.ABORTED: "⛔", Phase.PAUSED: "⏸️", Phase.PROGRESSING: "⏳"}
ENDING_EVENTS = ("promoted", "completed", "rolled_back", "aborted", "failed", "rejected", "paused", "noop")


def active(env: Mapping[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get("GITHUB_ACTIONS") == "true"


# --------------------------------------------------------------------------- workflow commands


def escape_data(text: str) -> str:
    """Escape a workflow command's message: ``%``, CR and LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: also ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", **properties: str) -> str:
    props = ",".join(f"{k}={escape_property(v)}" for k, v in properties.items() if v)
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


def annotation_for(ms: ModelState) -> str | None:
    """The decision as one annotation, or None while the rollout is still running."""
    r = ms.rollout
    if r is None:
        return None
    title = f"rollout {ms.model}:{r.candidate.version} {r.phase.value.lower()}"
    if r.phase in (Phase.ROLLED_BACK, Phase.FAILED, Phase.REJECTED):
        return command("error", r.reason, title=title)
    if r.phase in (Phase.PAUSED, Phase.ABORTED):
        return command("warning", r.reason, title=title)
    if r.phase in (Phase.PROMOTED, Phase.COMPLETED):
        return command("notice", r.reason, title=title)
    return None


# --------------------------------------------------------------------------- outputs


def format_outputs(outputs: Mapping[str, str]) -> str:
    """``$GITHUB_OUTPUT`` text in the heredoc form, with a delimiter no value contains."""
    chunks = []
    for name, value in outputs.items():
        value = "" if value is None else str(value)
        delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
        while delimiter in value:  # pragma: no cover - astronomically unlikely
            delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
        chunks.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(chunks)


def outputs_for(ms: ModelState | None, exit_code: int, model: str = "") -> dict[str, str]:
    r = ms.rollout if ms is not None else None
    return {
        "model": ms.model if ms is not None else model,
        "phase": r.phase.value if r is not None else "",
        "rollout-id": r.id if r is not None else "",
        "stable-version": ms.stable.version if ms is not None and ms.stable else "",
        "candidate-version": r.candidate.version if r is not None else "",
        "exit-code": str(exit_code),
    }


def _append(path: str | None, text: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(redact.scrub(text))  # summary and outputs: a sink like any other


# --------------------------------------------------------------------------- job summary


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


RESULT_ICON = {"passed": "✅", "failed": "❌", "inconclusive": "⚠️", "skipped": "⏭️", "passed_by_operator": "👤",
               "running": "⏳", "paused": "⏸️", "rolled_back": "❌", "aborted": "⛔", "deploy_failed": "❌",
               "not_reached": "–"}


def step_rows(r: RolloutState) -> list[dict[str, Any]]:
    """One row per plan step, from the one view of the state (rollout/view.py): what it
    did, the weight during it, the latest value and verdict of each metric measured in
    it, how long it took, and how it ended as the engine recorded it."""
    return [{"index": row.index, "step": row.step, "weight": row.weight, "mirror": row.mirror,
             "metrics": row.metrics, "duration_s": row.duration_s,
             "result": f"{RESULT_ICON[row.result]} {row.result_text}"} for row in step_views(r)]


def mermaid_number(value: float) -> str:
    """A number Mermaid's xychart grammar accepts: plain decimal, no exponent (``4e-05``
    and ``1.23457e+06`` do not parse), six significant digits."""
    text = format(Decimal(f"{value:.6g}"), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def mermaid_label(text: str) -> str:
    """A Mermaid string's content: a double quote would end the string (Mermaid has no
    backslash escape; ``#quot;`` is its entity code), and a line break would end the
    statement."""
    return " ".join(text.replace('"', "#quot;").split())


def chart(metric: str, points: list[MeasurementRecord], stable_points: list[MeasurementRecord]) -> str | None:
    """A Mermaid xychart-beta block of one metric over the rollout (candidate line first,
    then stable's when it was measured too); None when nothing had a finite value.
    Points without a finite value (no data, inf, nan) are left out of both lines."""
    values = [m for m in points if m.value is not None and math.isfinite(m.value)]
    if not values:
        return None
    labels = [f"s{m.step_index + 1}.{m.tick + 1}" for m in values]
    stable_by_key = {(m.step_index, m.tick): m.value for m in stable_points if m.value is not None}
    if not stable_by_key:
        stable_by_key = {(m.step_index, m.tick): m.stable_value for m in values if m.stable_value is not None}
    name = mermaid_label(metric)
    lines = ["```mermaid", "xychart-beta",
             f'    title "{name}' + (' (candidate, stable)' if stable_by_key else '') + '"',
             "    x-axis [" + ", ".join(f'"{x}"' for x in labels) + "]",
             f'    y-axis "{name}"',
             "    line [" + ", ".join(mermaid_number(m.value) for m in values) + "]"]
    if stable_by_key:
        series = [stable_by_key.get((m.step_index, m.tick)) for m in values]
        if all(v is not None and math.isfinite(v) for v in series):
            lines.append("    line [" + ", ".join(mermaid_number(v) for v in series) + "]")
    lines.append("```")
    return "\n".join(lines)


def summary_markdown(ms: ModelState, exit_code: int) -> str:
    r = ms.rollout
    if r is None:
        return f"### rollout {ms.model}\n\nNo rollout yet (exit {exit_code}).\n"
    icon = PHASE_ICON.get(r.phase, "")
    out = [f"### {icon} rollout {ms.model}: {r.stable.version if r.stable else '-'} → {r.candidate.version} "
           f"{r.phase.value}", "",
           f"**Decision:** {_md(r.reason or r.phase.value)} (exit code {exit_code})", "",
           f"Strategy `{r.strategy}`, rollout `{r.id}`, stable now **{ms.stable.version if ms.stable else '-'}**.", ""]
    rows = step_rows(r)
    # Columns: every metric a row shows (the registry gate's rules, then what analysis measured).
    metrics = list(dict.fromkeys([name for row in rows for name in row["metrics"]]
                                 + [m.metric for m in r.measurements]))
    if rows:
        out.append("| # | step | weight | " + "".join(f"{_md(m)} | " for m in metrics) + "duration | result |")
        out.append("|---|---|---|" + "---|" * len(metrics) + "---|---|")
        for row in rows:
            weight = f"{row['weight']}%" + (f" (mirror {row['mirror']}%)" if row["mirror"] else "")
            cells = []
            for name in metrics:
                m = row["metrics"].get(name)
                if m is None:
                    cells.append("")
                else:
                    extra = f" (stable {_fmt(m.stable_value)})" if m.stable_value is not None else ""
                    if m.step_index == REGISTRY_GATE_INDEX:  # the rule's limit: min 0.9, max_decrease 0.01
                        extra += "".join(f", {k} {_fmt(v)}" for k, v in m.detail.items())
                    cells.append(f"{_fmt(m.value)}{extra} {VERDICT_ICON.get(m.verdict, '')} {m.verdict}")
            duration = "" if row["duration_s"] is None else f"{row['duration_s']:.1f}s"
            out.append(f"| {row['index']} | {_md(row['step'])} | {weight} | " + "".join(f"{_md(c)} | " for c in cells)
                       + f"{duration} | {row['result']} |")
        out.append("")
    charts = []
    for name in dict.fromkeys(m.metric for m in r.measurements):  # charts: analysis measurements only
        cand = [m for m in r.measurements if m.metric == name and m.version == r.candidate.version]
        stab = [m for m in r.measurements if m.metric == name and r.stable and m.version == r.stable.version]
        block = chart(name, cand or stab, stab if cand else [])
        if block:
            charts += [f"#### {name}", "", block, ""]
    if charts:
        out += charts
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the listener


class GitHubActions:
    """Listener + finisher used by the CLI when running under GitHub Actions."""

    def __init__(self, env: Mapping[str, str] | None = None, write: Callable[[str], None] | None = None) -> None:
        self.env = dict(env if env is not None else os.environ)
        self.write = write or (lambda line: print(redact.scrub(line), flush=True))
        self._group_open = False
        self.last: ModelState | None = None
        self.noop: str | None = None  # start found the version already stable: this run decided nothing

    def __call__(self, event: Event, ms: ModelState) -> None:
        self.last = ms
        if event.kind == "noop":
            self.noop = event.message
        if event.kind == "step":
            self.end_group()
            self.write(command("group", event.message))
            self._group_open = True
        elif event.kind in ENDING_EVENTS:
            self.end_group()

    def end_group(self) -> None:
        if self._group_open:
            self.write("::endgroup::")
            self._group_open = False

    def finish(self, ms: ModelState | None, exit_code: int, error: str | None = None, model: str = "",
               report: bool = True) -> None:
        """Outputs, the job summary and the decision's annotation, once the command is done
        (``report=False``: outputs only, for commands that only read the state)."""
        self.end_group()
        ms = ms if ms is not None else self.last
        _append(self.env.get("GITHUB_OUTPUT"), format_outputs(outputs_for(ms, exit_code, model)))
        name = model or (ms.model if ms else "")
        if error is not None:
            self.write(command("error", error, title=f"rollout {name}".strip()))
            _append(self.env.get("GITHUB_STEP_SUMMARY"), f"### ❌ rollout {name}\n\n{_md(error)} (exit code {exit_code})\n\n")
            return
        if not report or ms is None:
            return
        if self.noop is not None:  # the stored rollout is an earlier run's: do not post it as this one's
            _append(self.env.get("GITHUB_STEP_SUMMARY"),
                    f"### rollout {name}: nothing to do\n\n{_md(self.noop)} (exit code {exit_code})\n\n")
            return
        note = annotation_for(ms)
        if note:
            self.write(note)
        _append(self.env.get("GITHUB_STEP_SUMMARY"), summary_markdown(ms, exit_code))

