"""Gates and webhooks, with Flagger's names and semantics.

Where each hook runs (strategies/hooks.py puts the gate steps into the plan):

| hook | when | a non-2xx answer |
|---|---|---|
| confirm-rollout | before the first step | the rollout waits, re-asked every analysis interval |
| pre-rollout | candidate at 0%, before any traffic | rolls back (after the retries) |
| confirm-traffic-increase | before each traffic increase | waits, re-asked |
| confirm-promotion | before the switch to 100% that promotes | waits, re-asked |
| post-rollout | after the rollout ended | nothing: informational |
| rollback | polled while the rollout waits | (a 2xx rolls the rollout back) |

A waiting confirm-* gate is re-asked while the run lives, for ``wait_s`` (None: until
it passes), then the rollout pauses (exit 4); `rollout promote` passes it and
`rollout abort` ends it at any time. Any 2xx passes. Retries cover a URL that is
unreachable, times out or answers 502/503/504; any other answer is the answer.

URLs may be secrets (``url_env`` / ``url_file``): they are read when calling and never
appear in a result, an event or a log line, which name the hook instead.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from rollout import redact
from rollout.spec import HookSpec, RolloutSpec
from rollout.state import Event, ModelState, RolloutState
from rollout.steps import GateStep
from rollout.strategies.hooks import step_for

log = logging.getLogger("rollout.gates")

RETRYABLE_STATUS = (502, 503, 504)
ENDED_EVENTS = ("promoted", "completed", "rolled_back", "aborted", "failed")


@dataclass(frozen=True)
class GateResult:
    ok: bool
    detail: str


class _Redact(logging.Filter):
    """Removes secret URLs (and their paths, which is what urllib3 logs at DEBUG) from
    the records of the HTTP libraries' loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.lock = threading.Lock()

    def add(self, url: str) -> None:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        with self.lock:
            self.secrets.add(url)
            if len(path) > 1:
                self.secrets.add(path)
            if parts.query:
                self.secrets.add(parts.query)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        with self.lock:
            secrets = sorted(self.secrets, key=len, reverse=True)
        if any(s in message for s in secrets):
            for s in secrets:
                message = message.replace(s, "<secret url>")
            record.msg, record.args = message, ()
        return True


REDACT = _Redact()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(REDACT)


class UrlUnavailable(Exception):
    """The URL's environment variable is unset or its file unreadable (the message names
    the variable or file, never the URL)."""


def resolve_url(url: str | None, url_env: str | None, url_file: str | None) -> str:
    """The URL to call, read now from the spec, the environment or a file."""
    if url_env:
        value = os.environ.get(url_env, "").strip()
        if not value:
            raise UrlUnavailable(f"environment variable {url_env} is not set")
        REDACT.add(value)
        redact.register(value)
        return value
    if url_file:
        try:
            value = Path(url_file).expanduser().read_text().strip()
        except OSError as exc:
            raise UrlUnavailable(f"url_file {url_file} cannot be read ({exc.strerror})") from None
        if not value:
            raise UrlUnavailable(f"url_file {url_file} is empty")
        REDACT.add(value)
        redact.register(value)
        return value
    if url:
        return url
    raise UrlUnavailable("no url, url_env or url_file given")


def hooks_of(spec: RolloutSpec, hook_type: str) -> list[HookSpec]:
    return [h for h in spec.webhooks.hooks if h.type == hook_type]


def payload(model: str, r: RolloutState | None, name: str, hook_type: str,
            metadata: dict[str, str] | None = None, last: int = 20) -> dict[str, Any]:
    """What every hook receives (JSON): who, which versions, where, and the last values."""
    out: dict[str, Any] = {"name": name, "type": hook_type, "model": model, "metadata": dict(metadata or {})}
    if r is None:
        return out
    step = r.current_step()
    out.update({
        "rollout_id": r.id, "stable": r.stable.version if r.stable else None, "candidate": r.candidate.version,
        "candidate_uri": r.candidate.uri,
        "phase": r.phase.value, "step": r.step_index, "steps": len(r.plan),
        "current_step": step.describe() if step else None,
        "traffic": {"weight": r.traffic.weight, "mirror": r.traffic.mirror}, "reason": r.reason,
        "measurements": [m.model_dump(mode="json") for m in r.measurements[-last:]],
    })
    return out


def post_json(url: str, body: dict[str, Any], timeout_s: float, retries: int,
              sleep: Callable[[float], None] = time.sleep, backoff_s: float = 0.5,
              session: requests.Session | None = None) -> GateResult:
    """POST ``body``; retried while unreachable or 502/503/504. The detail never contains
    the URL (requests' exception texts do, so only the exception's type is kept)."""
    http = session or requests
    detail = "not called"
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * attempt)
        try:
            resp = http.post(url, json=redact.REDACTOR.scrub_data(body), timeout=timeout_s)
        except requests.RequestException as exc:
            detail = f"unreachable ({type(exc).__name__})"
            continue
        detail = f"HTTP {resp.status_code}"
        if resp.status_code not in RETRYABLE_STATUS:
            return GateResult(200 <= resp.status_code < 300, detail)
    tries = f" after {retries + 1} attempts" if retries else ""
    return GateResult(False, detail + tries)


class WebhookCaller:
    """The engine's GateCaller: calls a gate step's URL, or runs its built-in check.
    The platform is needed only by the built-in checks (to reach each version)."""

    def __init__(self, platform: Any | None = None, sleep: Callable[[float], None] = time.sleep,
                 backoff_s: float = 0.5, samples: Callable[[Any], list[Path]] | None = None) -> None:
        self.platform = platform
        self.sleep = sleep
        self.backoff_s = backoff_s
        self.samples = samples  # the registry's Registry.samples(version): where a version's samples are

    def __call__(self, step: GateStep, body: dict[str, Any]) -> GateResult:
        if step.builtin == "samples":
            return check_samples(self.platform, body, step.timeout_s, self.samples)
        try:
            url = resolve_url(step.url, step.url_env, step.url_file)
        except UrlUnavailable as exc:
            return GateResult(False, str(exc))
        body = {**body, "metadata": {**dict(step.metadata), **body.get("metadata", {})}}
        return post_json(url, body, step.timeout_s, step.retries, self.sleep, self.backoff_s)


def call_gate(step: GateStep, body: dict[str, Any]) -> GateResult:
    """A GateCaller without a platform (built-in checks say they cannot run)."""
    return WebhookCaller()(step, body)


# --------------------------------------------------------------------------- built-in: samples


def _signature(answer: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    return [(o.get("name"), o.get("datatype"), tuple(o.get("shape") or ())) for o in answer.get("outputs") or []]


def check_samples(platform: Any | None, body: dict[str, Any], timeout_s: float = 10.0,
                  registry_samples: Callable[[Any], list[Path]] | None = None) -> GateResult:
    """Send the candidate's sample requests (``samples/*.json`` of the version, as the
    registry gives them) to the candidate and to the stable version; pass if the candidate
    answers every one with 2xx and the same output names, datatypes and shapes as stable."""
    model, candidate = body.get("model"), body.get("candidate")
    uri = body.get("candidate_uri")
    if platform is None:
        return GateResult(False, "the samples check needs the platform, which this caller was not given")
    if not uri:
        return GateResult(False, "the samples check needs the candidate's model directory (candidate_uri)")
    if registry_samples is not None:  # issue 11: the registry says where a version's samples are
        from rollout.registry.base import ModelVersion

        try:
            samples = registry_samples(ModelVersion(name=str(model), version=str(candidate), uri=str(uri)))
        except Exception as exc:  # noqa: BLE001 - a refusal names the problem; the gate fails, nothing moves
            return GateResult(False, f"the registry could not give the samples of {model}:{candidate}: {exc}")
    else:
        samples = sorted((Path(uri) / "samples").glob("*.json"))
    if not samples:
        return GateResult(False, f"no samples/*.json in models/{model}/{candidate} of the registry "
                                 "(V2 inference request bodies); add some or remove the samples check")
    cand_base, stable_base = platform.preview_endpoint(), platform.endpoint()
    if not cand_base:
        return GateResult(False, f"the {getattr(platform, 'name', '')} platform offers no endpoint that reaches "
                                 "only the candidate, which the samples check needs")
    checked = 0
    for sample in samples:
        try:
            request = json.loads(sample.read_text())
        except (OSError, ValueError) as exc:
            return GateResult(False, f"sample {sample.name} is not JSON: {exc}")
        got = _infer(f"{cand_base}/v2/models/{model}/infer", request, timeout_s)
        if isinstance(got, str):
            return GateResult(False, f"candidate {candidate} failed sample {sample.name}: {got}")
        if stable_base and body.get("stable"):
            want = _infer(f"{stable_base}/v2/models/{model}/infer", request, timeout_s)
            if isinstance(want, dict) and _signature(got) != _signature(want):
                return GateResult(False, f"candidate {candidate} answered sample {sample.name} with outputs "
                                         f"{_signature(got)}, stable {body.get('stable')} with {_signature(want)}")
        checked += 1
    return GateResult(True, f"{checked} sample(s) answered with the stable version's output shape")


def _infer(url: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | str:
    try:
        resp = requests.post(url, json=request, timeout=timeout_s)
    except requests.RequestException as exc:
        return f"unreachable ({type(exc).__name__})"
    if not 200 <= resp.status_code < 300:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        return resp.json()
    except ValueError:
        return "the answer is not JSON"


# --------------------------------------------------------------------------- post-rollout


class PostRolloutHooks:
    """A listener: tells the post-rollout hooks that a rollout ended (promoted, rolled
    back, aborted, failed). Informational, so it runs in the background and its answer
    changes nothing; ``close`` waits (bounded) for the calls to finish."""

    def __init__(self, spec: RolloutSpec, caller: Callable[[GateStep, dict[str, Any]], GateResult] | None = None) -> None:
        self.hooks = hooks_of(spec, "post-rollout")
        self.caller = caller or call_gate
        self._threads: list[threading.Thread] = []

    def __call__(self, event: Event, ms: ModelState) -> None:
        if event.kind not in ENDED_EVENTS or not self.hooks or ms.rollout is None:
            return
        for hook in self.hooks:
            body = payload(ms.model, ms.rollout, hook.name, "post-rollout", hook.metadata)
            body["event"] = event.kind
            t = threading.Thread(target=self._call, args=(hook, body), daemon=True, name=f"post-rollout-{hook.name}")
            t.start()
            self._threads.append(t)

    def _call(self, hook: HookSpec, body: dict[str, Any]) -> None:
        result = self.caller(step_for(hook), body)
        log.info("post-rollout hook %s: %s", hook.name, result.detail)

    def close(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
