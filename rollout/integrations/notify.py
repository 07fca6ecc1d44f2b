"""Notifications of phase changes: a generic JSON webhook and Slack incoming webhooks.

A ``Notifier`` is an engine listener. It only puts messages on a queue; one background
thread sends them with short timeouts and a few retries, so a notification endpoint that
is down never slows, blocks or fails a rollout (or its rollback). The URL is read from
the environment variable or file named in the spec when sending, and is never printed,
logged or stored: log lines name the notification, and errors keep only the exception's
type (requests' exception texts contain the URL).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from rollout.gates import UrlUnavailable, post_json, resolve_url
from rollout.spec import NotificationSpec
from rollout.state import Event, ModelState
from rollout.view import rollout_view

log = logging.getLogger("rollout.integrations.notify")

# Engine event kinds -> the names used in the spec's `events` (a passed step is "step").
EVENT_NAMES = {"started": "started", "step_done": "step", "paused": "paused", "promoted": "promoted",
               "completed": "completed", "rolled_back": "rolled_back", "aborted": "aborted", "failed": "failed",
               "rejected": "failed"}  # refused by the registry gate: it failed before it began
ICONS = {"started": ":rocket:", "step": ":white_check_mark:", "paused": ":double_vertical_bar:",
         "promoted": ":tada:", "completed": ":checkered_flag:", "rolled_back": ":rewind:", "aborted": ":no_entry:",
         "failed": ":x:"}


class Notifier:
    """Listener that announces phase changes to every configured target."""

    def __init__(self, targets: list[NotificationSpec], sleep: Callable[[float], None] = time.sleep,
                 backoff_s: float = 0.5) -> None:
        self.targets = list(targets)
        self.sleep = sleep
        self.backoff_s = backoff_s
        self.sent: list[tuple[str, str, bool]] = []  # (target name, event, delivered), for reports and tests
        self._queue: queue.Queue[tuple[NotificationSpec, str, dict[str, Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._http = requests.Session()

    def __call__(self, event: Event, ms: ModelState) -> None:
        name = EVENT_NAMES.get(event.kind)
        if name is None:
            return
        wanted = [t for t in self.targets if name in t.events]
        if not wanted:
            return
        body = message(name, event, ms)
        for target in wanted:
            self._queue.put((target, name, body))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name="rollout-notify")
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            target, name, body = item
            delivered = self._send(target, name, body)
            self.sent.append((target.name, name, delivered))

    def _send(self, target: NotificationSpec, name: str, body: dict[str, Any]) -> bool:
        try:
            url = resolve_url(None, target.url_env, target.url_file)
        except UrlUnavailable as exc:
            log.warning("notification %s (%s) not sent: %s", target.name, name, exc)
            return False
        data = slack_message(body) if target.type == "slack" else body
        result = post_json(url, data, target.timeout_s, target.retries, self.sleep, self.backoff_s, self._http)
        if result.ok:
            log.info("notification %s (%s) sent: %s", target.name, name, result.detail)
        else:
            log.warning("notification %s (%s) not sent: %s", target.name, name, result.detail)
        return result.ok

    def close(self, timeout_s: float = 5.0) -> int:
        """Wait up to ``timeout_s`` for queued messages; returns how many were left unsent."""
        if self._thread is None:
            return 0
        self._queue.put(None)
        self._thread.join(timeout_s)
        left = self._queue.qsize()
        if self._thread.is_alive():
            log.warning("%d notification(s) still pending after %.0fs; not waiting for them", max(left, 1), timeout_s)
        return left


def message(name: str, event: Event, ms: ModelState) -> dict[str, Any]:
    """The generic webhook body: what happened, why, and the values it was decided on."""
    r = ms.rollout
    body: dict[str, Any] = {"model": ms.model, "event": name, "message": event.message, "at": event.at,
                            "stable": ms.stable.version if ms.stable else None}
    if r is not None:
        latest: dict[str, Any] = {}
        for m in r.measurements:
            latest[f"{m.metric}/{m.version}"] = {"metric": m.metric, "version": m.version, "value": m.value,
                                                 "verdict": m.verdict, "reason": m.reason}
        body.update({"rollout_id": r.id, "phase": r.phase.value, "candidate": r.candidate.version,
                     "from": r.stable.version if r.stable else None, "strategy": r.strategy,
                     "step": (event.step_index + 1) if event.step_index is not None else None, "steps": len(r.plan),
                     "traffic": {"weight": r.traffic.weight, "mirror": r.traffic.mirror}, "reason": r.reason,
                     "measurements": list(latest.values()),
                     "deciding": [{"metric": m.metric, "version": m.version, "value": m.value, "verdict": m.verdict,
                                   "reason": m.reason} for m in rollout_view(r).decided_by]})
    return body


def slack_message(body: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook payload (plain mrkdwn text) for a generic body."""
    icon = ICONS.get(body["event"], "")
    head = f"{icon} *{body['model']}*"
    if body.get("candidate"):
        head += f" {body.get('from') or '-'} → {body['candidate']}"
    lines = [f"{head}: {body['event'].replace('_', ' ')}", body["message"]]
    values = [f"{m['metric']} [{m['version']}] = {'-' if m['value'] is None else format(m['value'], '.4g')} ({m['verdict']})"
              for m in body.get("measurements", [])]
    if values:
        lines.append("Latest values: " + "; ".join(values))
    return {"text": "\n".join(lines)}
