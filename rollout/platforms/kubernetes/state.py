"""Rollout state and the run lock, kept in the cluster next to the model.

State: one ConfigMap per model (``<model>-rollout-state``, key ``state.json``), saved
with compare-and-swap on its ``resourceVersion``: the store remembers which
resourceVersion it read for each state revision, and a PUT with a stale one is a 409,
which becomes ``Conflict`` (the engine reloads and retries).

Size: a ConfigMap holds at most 1 MiB of data, and a rollout with long analyses
measures a lot (3 steps of 300 s, 4 metrics: ~150 kB). So the state ConfigMap holds the
current rollout and a short *summary* of each past one (its outcome, reason, last
deciding measurements and events); the full record of each finished rollout goes into
its own archive ConfigMap (``<model>-rollout-<id>``, component ``history``), of which
the newest ``ARCHIVE_LIMIT`` are kept and older ones deleted. Before every write the
size is checked against ``STATE_BUDGET``; over it, the ended steps of the current
rollout are compacted (the last measurement of each metric and version per step,
which is what later steps carry forward, and every failing one), and if it still does
not fit, the save is refused with a message naming the size, before anything is
written (the engine saves before it moves traffic).

Lock: a ``coordination.k8s.io/v1`` Lease per model (``<model>-rollout-lock``) whose
``holderIdentity`` is the holder string (pid, host, command and, under GitHub Actions,
the run). A Lease whose ``renewTime + leaseDurationSeconds`` has passed is stale and
may be taken over (a killed CI job releases nothing). While held, a daemon thread
renews it every third of its duration; if it is lost, the next save raises ``Locked``
naming the new holder instead of writing over another run's state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from rollout import redact
from rollout.errors import Conflict, Locked, PlatformError
from rollout.platforms.kubernetes.client import CONFIGMAP, LEASE, Kube
from rollout.platforms.kubernetes.render import lease_name, model_labels, state_name
from rollout.registry.base import validate_model_name
from rollout.spec import KubernetesPlatformSpec, RolloutSpec
from rollout.state import LockHolder, ModelState, RolloutState

log = logging.getLogger("rollout.kubernetes")

STATE_KEY = "state.json"
ARCHIVE_KEY = "rollout.json"
CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data the API server accepts in one ConfigMap
STATE_BUDGET = 800 * 1024  # what the state ConfigMap may use, leaving room for metadata and a last event
ARCHIVE_LIMIT = 10  # full records of finished rollouts kept per model; older ones are deleted
SUMMARY_ITEMS = 3  # deciding measurements and events kept in the summary of a past rollout
FINISHED_AT = "rollout.io/finished-at"


def summary_of(r: RolloutState) -> RolloutState:
    """A past rollout as the state ConfigMap keeps it: what happened and why, without the
    measurements (the archive ConfigMap has them). Idempotent."""
    deciding = [m.model_copy(update={"detail": {}}) for m in r.measurements
                if m.verdict in ("fail", "inconclusive", "error")][-SUMMARY_ITEMS:]
    return r.model_copy(update={"measurements": deciding, "events": r.events[-SUMMARY_ITEMS:]})


def compact_ended_steps(r: RolloutState) -> RolloutState:
    """The current rollout with the measurements of its ended steps thinned to the last one
    of each (step, metric, version), plus every one that did not pass."""
    keep: dict[tuple[int, str, str], int] = {}
    for i, m in enumerate(r.measurements):
        if m.step_index < r.step_index:
            keep[(m.step_index, m.metric, m.version)] = i
    last = set(keep.values())
    kept = [m for i, m in enumerate(r.measurements)
            if m.step_index >= r.step_index or i in last or m.verdict != "pass"]
    return r.model_copy(update={"measurements": kept, "events": r.events[-200:]})


def _size(ms: ModelState) -> int:
    return len(ms.model_dump_json().encode())


def archive_name(model: str, rollout_id: str) -> str:
    return f"{model}-rollout-" + (re.sub(r"[^a-z0-9-]+", "-", rollout_id.lower()).strip("-") or "x")


def _micro_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            continue
    return None


class ConfigMapStateStore:
    def __init__(self, kube: Kube, lease_duration_s: float = 30.0, clock: Callable[[], float] = time.time,
                 renew: bool = True) -> None:
        self.kube = kube
        self.lease_duration_s = lease_duration_s
        self.clock = clock
        self.renew = renew
        self._rv: dict[tuple[str, int], str] = {}  # (model, revision) -> resourceVersion it was read/saved at
        self._held: dict[str, _HeldLease] = {}

    @classmethod
    def from_spec(cls, spec: RolloutSpec) -> "ConfigMapStateStore":
        from rollout.platforms.kubernetes.platform import connection

        assert isinstance(spec.platform, KubernetesPlatformSpec)
        return cls(connection(spec.platform), lease_duration_s=spec.platform.lease_duration_s)

    # ------------------------------------------------------------------ state

    def load(self, model: str) -> ModelState:
        validate_model_name(model)
        cm = self.kube.get(CONFIGMAP, state_name(model))
        if cm is None:
            return ModelState(model=model)
        ms = self._parse(model, cm)
        self._rv[(model, ms.revision)] = cm["metadata"]["resourceVersion"]
        return ms

    def _parse(self, model: str, cm: dict[str, Any]) -> ModelState:
        text = (cm.get("data") or {}).get(STATE_KEY)
        if not text:
            raise PlatformError(f"ConfigMap {self.kube.namespace}/{state_name(model)} has no {STATE_KEY}; "
                                "it was changed by hand: restore it or delete it to start over")
        return ModelState.model_validate_json(text)

    def save(self, state: ModelState) -> ModelState:
        model = state.model
        validate_model_name(model)
        held = self._held.get(model)
        if held is not None and held.lost is not None:
            raise Locked(model, held.lost)
        saved = self._fit(state.model_copy(update={"revision": state.revision + 1}))
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": state_name(model), "labels": model_labels(model, "state")},
            "data": {STATE_KEY: redact.scrubbed_json(saved, indent=None)},  # no secret in the ConfigMap
        }
        if state.revision == 0:
            out = self.kube.create(body)  # AlreadyExists is a Conflict: someone saved first
        else:
            rv = self._rv.get((model, state.revision))
            if rv is None:
                live = self.kube.get(CONFIGMAP, state_name(model))
                current = self._parse(model, live).revision if live else 0
                if current != state.revision:
                    raise Conflict(f"state of {model!r} changed (revision {current}, expected {state.revision})")
                rv = live["metadata"]["resourceVersion"] if live else None
            body["metadata"]["resourceVersion"] = rv
            out = self.kube.replace(body)
        self._rv = {k: v for k, v in self._rv.items() if k[0] != model}
        self._rv[(model, saved.revision)] = out["metadata"]["resourceVersion"]
        return saved

    # ------------------------------------------------------------------ size

    def _fit(self, ms: ModelState) -> ModelState:
        """Archive full past rollouts, keep their summaries, and compact the current
        rollout if the state is still over budget; refuse (nothing written) if it cannot fit."""
        history = []
        for past in ms.history:
            short = summary_of(past)
            if short != past:
                self._archive(ms.model, past)
            history.append(short)
        ms = ms.model_copy(update={"history": history})
        size = _size(ms)
        if size > STATE_BUDGET and ms.rollout is not None:
            ms = ms.model_copy(update={"rollout": compact_ended_steps(ms.rollout)})
            size = _size(ms)
            log.info("state of %s compacted to %d bytes", ms.model, size)
        if size > STATE_BUDGET:
            current = len(ms.rollout.measurements) if ms.rollout else 0
            raise PlatformError(
                f"the state of {ms.model!r} would be {size} bytes, over the {STATE_BUDGET}-byte budget of ConfigMap "
                f"{self.kube.namespace}/{state_name(ms.model)} (a ConfigMap holds at most {CONFIGMAP_LIMIT} bytes) "
                f"with {current} measurements in the current analysis step; nothing was changed. Measure less "
                "often (analysis.interval_s) or in shorter steps")
        return ms

    def _archive(self, model: str, r: RolloutState) -> None:
        """Write a finished rollout's full record to its own ConfigMap (compacted if even
        that is too big), then delete the oldest archives beyond ARCHIVE_LIMIT."""
        text = r.model_dump_json()
        if len(text.encode()) > STATE_BUDGET:
            thin = r.model_copy(update={"step_index": len(r.plan)})
            text = compact_ended_steps(thin).model_copy(update={"step_index": r.step_index}).model_dump_json()
            if len(text.encode()) > STATE_BUDGET:
                text = summary_of(r).model_dump_json()
        name = archive_name(model, r.id)
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {**model_labels(model, "history"), "rollout.io/rollout-id": r.id},
                         "annotations": {FINISHED_AT: f"{r.finished_at or r.started_at:.6f}"}},
            "data": {ARCHIVE_KEY: text},
        }
        try:
            self.kube.create(body)
        except Conflict:  # archived before, by a save that lost its compare-and-swap: it is the same record
            return
        archives = self._archives(model)
        for old in archives[ARCHIVE_LIMIT:]:
            self.kube.delete(CONFIGMAP, old["metadata"]["name"])

    def _archives(self, model: str) -> list[dict[str, Any]]:
        cms = self.kube.list(CONFIGMAP, {**model_labels(model, "history")})
        return sorted(cms, key=lambda c: float(((c["metadata"].get("annotations") or {}).get(FINISHED_AT)) or 0),
                      reverse=True)

    def archived(self, model: str) -> list[RolloutState]:
        """Full records of the model's past rollouts kept in archive ConfigMaps, newest first."""
        validate_model_name(model)
        return [RolloutState.model_validate_json((c.get("data") or {}).get(ARCHIVE_KEY) or "{}")
                for c in self._archives(model)]

    def models(self) -> list[str]:
        return sorted(self.revisions())

    def revisions(self) -> dict[str, str]:
        """model -> its state ConfigMap's resourceVersion (changes with every write), from
        one list call: how the controller tells which idle models changed."""
        cms = self.kube.list(CONFIGMAP, {"app.kubernetes.io/component": "state", "app.kubernetes.io/managed-by": "rollout"})
        return {c["metadata"]["labels"]["app.kubernetes.io/name"]: str(c["metadata"].get("resourceVersion"))
                for c in cms}

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, model: str, holder: str) -> Iterator[None]:
        validate_model_name(model)
        lease = self._acquire(model, holder)
        held = _HeldLease(self, model, holder, lease)
        self._held[model] = held
        if self.renew:
            held.start()
        try:
            yield
        finally:
            held.stop()
            self._held.pop(model, None)
            held.release()

    def holder(self, model: str) -> LockHolder | None:
        """Who holds the model's Lease, read without acquiring it; an expired Lease's holder
        is returned with ``alive`` False (it stopped renewing: killed or cut off)."""
        lease = self.kube.get(LEASE, lease_name(model))
        words = _holder_of(lease)
        if not words:
            return None
        spec = (lease or {}).get("spec") or {}
        return LockHolder(words, alive=not self._expired(spec), since=_parse_time(spec.get("acquireTime")))

    def _lease_body(self, model: str, holder: str, acquired: float, transitions: int) -> dict[str, Any]:
        now = self.clock()
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(model), "labels": model_labels(model, "lock")},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
                     "acquireTime": _micro_time(acquired), "renewTime": _micro_time(now),
                     "leaseTransitions": transitions},
        }

    def _acquire(self, model: str, holder: str) -> dict[str, Any]:
        live = self.kube.get(LEASE, lease_name(model))
        if live is None:
            try:
                return self.kube.create(self._lease_body(model, holder, self.clock(), 0))
            except Conflict:
                live = self.kube.get(LEASE, lease_name(model))
                raise Locked(model, _holder_of(live) or "another run") from None
        spec = live.get("spec") or {}
        current = spec.get("holderIdentity")
        if current and not self._expired(spec):
            raise Locked(model, current)
        if current:
            log.warning("taking over the stale lock of %s from %s (not renewed for %ss)", model, current,
                        spec.get("leaseDurationSeconds"))
        body = self._lease_body(model, holder, self.clock(), int(spec.get("leaseTransitions") or 0) + 1)
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            return self.kube.replace(body)
        except Conflict:  # another run took it between our read and write
            raise Locked(model, _holder_of(self.kube.get(LEASE, lease_name(model))) or "another run") from None

    def _expired(self, spec: dict[str, Any]) -> bool:
        renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        return renewed is None or renewed + duration < self.clock()


def _holder_of(lease: dict[str, Any] | None) -> str | None:
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


class _HeldLease:
    """Renews a held Lease from a daemon thread; records who took it if it was lost."""

    def __init__(self, store: ConfigMapStateStore, model: str, holder: str, lease: dict[str, Any]) -> None:
        self.store, self.model, self.holder, self.lease = store, model, holder, lease
        self.lost: str | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.model}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        interval = max(self.store.lease_duration_s / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # keep renewing; a transient API error must not drop the lock
                log.warning("could not renew the lock of %s: %s", self.model, exc)

    def renew(self) -> None:
        with self._mutex:
            if self.lost is not None:
                return
            body = {**self.lease, "spec": {**self.lease["spec"], "renewTime": _micro_time(self.store.clock())}}
            try:
                self.lease = self.store.kube.replace(body)
            except Conflict:
                live = self.store.kube.get(LEASE, lease_name(self.model))
                if live is not None and _holder_of(live) == self.holder:
                    self.lease = live  # changed but still ours (e.g. relabelled): renew from it next time
                else:
                    self.lost = _holder_of(live) or "nobody (the lease was deleted)"
                    log.error("lost the lock of %s to %s", self.model, self.lost)

    def release(self) -> None:
        with self._mutex:
            if self.lost is not None:
                return
            spec = {k: v for k, v in self.lease["spec"].items() if k not in ("holderIdentity", "acquireTime")}
            body = {**self.lease, "spec": spec}
            try:
                self.store.kube.replace(body)
            except (Conflict, PlatformError) as exc:  # an expiring lease is released by time anyway
                log.warning("could not release the lock of %s: %s", self.model, exc)
