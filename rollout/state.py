"""Rollout state: everything needed to resume a rollout after a crash, and to explain it.

One document per model (``ModelState``) holds the stable version, older stables (the
rollback targets), the current or last rollout with its plan, step index, phase and
every measurement, and a bounded history. Stores save it with compare-and-swap on
``revision`` and guard a run with a per-model lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import psutil
from pydantic import BaseModel, Field, ValidationError

from rollout import redact
from rollout.errors import Conflict, Locked, StateDamaged, StateUnwritable, printable
from rollout.registry.base import ModelVersion, validate_model_name
from rollout.steps import Step

HISTORY_LIMIT = 20

log = logging.getLogger("rollout.state")


class Phase(str, Enum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    COMPLETED = "Completed"  # plan ran to the end without promoting (shadow, discard)
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    FAILED = "Failed"  # could not even start (candidate never became ready)
    REJECTED = "Rejected"  # refused before anything was deployed or moved (the registry gate)

    @property
    def active(self) -> bool:
        return self in (Phase.PROGRESSING, Phase.PAUSED)


class VersionRecord(BaseModel):
    version: str
    uri: str
    runtime: str = "sklearn"
    metadata: dict[str, Any] = Field(default_factory=dict)
    eval_metrics: dict[str, float] = Field(default_factory=dict, description="Logged evaluation metrics (registry gate)")

    @classmethod
    def of(cls, mv: ModelVersion) -> "VersionRecord":
        return cls(version=mv.version, uri=mv.uri, runtime=mv.runtime, metadata=dict(mv.metadata),
                   eval_metrics=dict(mv.eval_metrics))

    def to_model_version(self, name: str) -> ModelVersion:
        return ModelVersion(name=name, version=self.version, uri=self.uri, runtime=self.runtime, metadata=self.metadata,
                            eval_metrics=dict(self.eval_metrics))


class MeasurementRecord(BaseModel):
    """One measured value and what it meant, kept so no decision is ever a mystery."""

    metric: str
    step_index: int
    tick: int
    at: float
    version: str
    status: Literal["value", "no_data", "error"]
    value: float | None = None
    stable_value: float | None = None
    verdict: Literal["pass", "fail", "inconclusive", "error"]
    reason: str = ""
    dry_run: bool = False
    final: bool = False  # the judge says the evidence is already enough to end the step
    # Counts behind the value, per version ("candidate.requests", "stable.errors", ...).
    detail: dict[str, float] = Field(default_factory=dict)
    # For no data or an error: what kind (empty, nan, zero_requests, timeout, unreachable, http,
    # bad_answer, ...); the scrubbed words are in ``reason``.
    kind: str = ""


class Event(BaseModel):
    at: float
    kind: str
    message: str
    step_index: int | None = None


class TrafficRecord(BaseModel):
    weight: int = 0
    mirror: int = 0


Request = Literal["abort", "promote", "promote_full", "rollback"]

StepOutcome = Literal["passed", "failed", "inconclusive", "skipped", "passed_by_operator"]


REGISTRY_GATE_INDEX = -1  # StepRecord.index of the registry gate, checked before the plan's first step


class StepRecord(BaseModel):
    """How one step of the plan ended, decided once by the engine and only rendered by
    reports (status, history, the job summary), never re-derived from free text. The
    registry gate, checked before the plan begins, is recorded at REGISTRY_GATE_INDEX with
    one measurement per rule (value = candidate's, stable_value = stable's, detail = the
    rule's limit)."""

    index: int
    kind: str
    step: str  # the step as described to people ("traffic weight=30%")
    outcome: StepOutcome
    started_at: float | None = None
    ended_at: float
    reason: str = ""
    by: str | None = None  # who passed or skipped it (passed_by_operator, skipped)
    deciding: list[MeasurementRecord] = Field(default_factory=list, description="The measurements that decided")


class Ending(BaseModel):
    """A rollout's end, recorded before any traffic moves (intent first): a run killed
    halfway through a rollback resumes the rollback and never re-applies the canary split."""

    phase: Phase
    reason: str
    retire_candidate: bool
    at: float


class RolloutState(BaseModel):
    id: str
    model: str
    stable: VersionRecord | None
    candidate: VersionRecord
    strategy: str
    spec: dict[str, Any]
    plan: list[Step]
    step_index: int = 0
    phase: Phase = Phase.PROGRESSING
    step_started_at: float | None = None
    started_at: float
    finished_at: float | None = None
    traffic: TrafficRecord = Field(default_factory=TrafficRecord)
    measurements: list[MeasurementRecord] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    reason: str = ""
    promoted: bool = False
    request: Request | None = None
    requested_by: str | None = None
    steps: list[StepRecord] = Field(default_factory=list, description="Every step that ended, in order")
    ending: Ending | None = None

    def current_step(self) -> Step | None:
        return self.plan[self.step_index] if self.step_index < len(self.plan) else None

    def step_measurements(self, step_index: int | None = None) -> list[MeasurementRecord]:
        idx = self.step_index if step_index is None else step_index
        return [m for m in self.measurements if m.step_index == idx]

    def step_record(self, index: int) -> StepRecord | None:
        """The last record of step ``index`` (a retried step has one per attempt)."""
        return next((s for s in reversed(self.steps) if s.index == index), None)


class Retirement(BaseModel):
    version: str
    due_at: float


class ModelState(BaseModel):
    model: str
    revision: int = 0
    stable: VersionRecord | None = None
    previous: list[VersionRecord] = Field(default_factory=list, description="Older stables, newest first")
    rollout: RolloutState | None = None
    history: list[RolloutState] = Field(default_factory=list, description="Finished rollouts, newest first")
    retirements: list[Retirement] = Field(default_factory=list)

    def archive(self) -> None:
        """Move a finished rollout into the history (bounded)."""
        if self.rollout is not None and not self.rollout.phase.active:
            self.history = [self.rollout, *[h for h in self.history if h.id != self.rollout.id]][:HISTORY_LIMIT]


def home_dir(home: str | Path | None = None) -> Path:
    """Where local state, locks, exports and processes live: --home, $ROLLOUT_HOME or ./.rollout."""
    return Path(home or os.environ.get("ROLLOUT_HOME") or ".rollout").resolve()


CONTROLLER_COMMAND = "controller"
UNNAMED_HOLDER = "another process"  # a held lock whose record is not written (yet, or any more)


def holder_identity(command: str) -> str:
    """Who holds a lock, in words an operator can act on (includes the CI run when there is one)."""
    parts = [f"pid {os.getpid()} on {socket.gethostname()}", f"`rollout {command}`"]
    run_id = os.environ.get("GITHUB_RUN_ID")
    if run_id:
        repo = os.environ.get("GITHUB_REPOSITORY", "")
        parts.append(f"GitHub Actions run {repo}#{run_id}".replace(" #", " "))
    return ", ".join(parts)


def held_for_one_pass(holder: str) -> bool:
    """Whether the words ``holder_identity`` wrote name a controller. A controller holds a
    model's lock for one reconcile pass, so a command that finds it there waits the pass out
    rather than being turned away; any other holder (a foreground `rollout start`) holds it
    for a whole rollout."""
    return f"`rollout {CONTROLLER_COMMAND}`" in holder


class StateStore(Protocol):
    def load(self, model: str) -> ModelState:
        """The model's state; an empty one (revision 0) if it has none yet."""

    def save(self, state: ModelState) -> ModelState:
        """Write if the stored revision still equals ``state.revision``; return the
        saved state with its new revision. Raises Conflict otherwise."""

    def lock(self, model: str, holder: str) -> contextlib.AbstractContextManager[None]:
        """Hold the model's run lock; raises Locked naming the current holder."""

    def holder(self, model: str) -> LockHolder | None:
        """Who holds the model's lock, asked WITHOUT taking it (a probe that took it would
        turn a concurrent `rollout start` away with exit 5); a record whose process died
        is returned with ``alive`` False. None: free, released cleanly."""

    def models(self) -> list[str]: ...


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock, read without taking it. ``alive`` False: the
    process that took it is gone (killed: the OS released the lock, its record stayed);
    ``since``: when it took the lock (epoch seconds)."""

    words: str
    alive: bool
    since: float | None = None
    pid: int | None = None


def _process_start(pid: int) -> float | None:
    """The start time of ``pid`` (None if no such live process): with the pid it tells a
    process apart from a later one that reused its pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.Error, OSError):
        return None


def holder_record(words: str) -> str:
    """What a lock file holds while held: the holder's words, pid and start time, so
    another process can tell who holds it, and whether that process still lives,
    without taking the lock (``read_holder``)."""
    return json.dumps({"holder": words, "pid": os.getpid(), "pid_started": _process_start(os.getpid()),
                       "since": time.time()})


def read_holder(path: Path) -> LockHolder | None:
    """Who holds the lock file ``path``, without taking it (a probe by taking it would
    make a concurrent ``rollout start`` fail with exit 5). None: nobody holds it and the
    last holder released it cleanly. A record whose process is gone (or whose pid now
    belongs to another process) is returned with ``alive`` False."""
    try:
        text = path.read_text(errors="replace").strip()
    except (FileNotFoundError, OSError):
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
        words, pid, started = str(data["holder"]), int(data["pid"]), data.get("pid_started")
        since = float(data["since"]) if data.get("since") is not None else None
    except (ValueError, KeyError, TypeError):
        return LockHolder(printable(text, 200, False), alive=True)  # an older holder's plain words
    now_started = _process_start(pid)
    alive = now_started is not None and (started is None or abs(now_started - float(started)) < 1.0)
    return LockHolder(printable(words, 200, False), alive=alive, since=since, pid=pid)


@contextlib.contextmanager
def holding(fh: IO[str], holder: str) -> Iterator[str | None]:
    """Try to hold an OS lock on the open file ``fh`` with a holder record (``holder_record``)
    in it, so the next process can name who holds it. Yields None while held, or (without
    holding) the current holder's words when another process has it. The file is closed on
    exit, and the OS releases the lock of a process that dies, even by kill -9 (its record
    stays, naming a dead pid: ``read_holder`` says it is gone)."""
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            try:
                yield str(json.loads(text)["holder"])
            except (ValueError, KeyError, TypeError):
                yield text or UNNAMED_HOLDER
            return
        record = holder_record(holder)  # before the truncate: the file is unnamed as briefly as can be
        fh.seek(0)
        fh.truncate()
        fh.write(record)
        fh.flush()
        try:
            yield None
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


class FileStateStore:
    """State as JSON files under ``<home>/state``; the lock is an OS file lock, so a
    killed process releases it and the next run resumes.

    Damage is expected, not exceptional: every save keeps the previous good copy as
    ``<model>.json.bak`` (a hard link, so the state file itself never disappears, even for
    an instant); a state file that is truncated or corrupt is reported in one warning line
    naming it, and the previous copy is used; with no usable copy, ``StateDamaged`` says
    which file and how to recover. What is written passes the redactor first
    (rollout/redact.py): no secret reaches the disk, whatever a provider echoed.
    """

    PROBE_BYTES = 64 * 1024  # a probe this big fails on a full disk before traffic moves

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.dir = self.home / "state"

    def _path(self, model: str) -> Path:
        validate_model_name(model)
        return self.dir / f"{model}.json"

    @staticmethod
    def backup_path(path: Path) -> Path:
        return path.with_name(path.name + ".bak")

    def load(self, model: str) -> ModelState:
        path = self._path(model)
        state, problem = _read_state(path)
        if state is not None:
            return state
        backup, backup_problem = _read_state(self.backup_path(path))
        if problem == "missing" and backup is None:
            return ModelState(model=model)
        if backup is not None:
            log.warning("state file %s is %s; using the previous copy %s (revision %d): the last transition may "
                        "be repeated. The damaged file is kept as %s.damaged at the next save", path, problem,
                        self.backup_path(path), backup.revision, path)
            return backup
        raise StateDamaged(
            f"state file {path} is {problem} and its previous copy {self.backup_path(path)} is {backup_problem}; "
            f"move it aside (mv {path} {path}.damaged) and rerun: `rollout abort/rollback {model}` then work from "
            "what the platform serves")

    @contextlib.contextmanager
    def _guard(self, model: str) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.dir / f".{model}.cas", "a")
        except OSError as exc:
            raise _unwritable(self.dir, exc) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def save(self, state: ModelState) -> ModelState:
        path = self._path(state.model)
        with self._guard(state.model):
            current = self.load(state.model).revision
            if current != state.revision:
                raise Conflict(f"state of {state.model!r} changed (revision {current}, expected {state.revision})")
            saved = state.model_copy(update={"revision": state.revision + 1})
            text = redact.scrubbed_json(saved)
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{state.model}.", suffix=".tmp")
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                self._keep_previous(path)
                os.replace(tmp, path)
                tmp = None
            except OSError as exc:
                raise _unwritable(path, exc) from None
            finally:
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
        return saved

    def _keep_previous(self, path: Path) -> None:
        """Link the current file as the backup if it is good; move a damaged one aside."""
        current, problem = _read_state(path)
        if current is not None:
            link = path.with_name(f".{path.name}.bak.tmp")
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.link(path, link)
            os.replace(link, self.backup_path(path))
        elif problem != "missing":
            os.replace(path, path.with_name(path.name + ".damaged"))

    def check_writable(self) -> None:
        """Fail now, with the path, if state cannot be saved (read-only, full, no
        permission): called before any traffic moves, so a rollout never starts that
        could not record its own progress."""
        probe = self.dir / f".probe-{os.getpid()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.home / "locks").mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as fh:
                fh.write(b"\0" * self.PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _unwritable(self.dir, exc) from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def holder(self, model: str) -> LockHolder | None:
        validate_model_name(model)
        return read_holder(self.home / "locks" / f"{model}.lock")

    @contextlib.contextmanager
    def lock(self, model: str, holder: str) -> Iterator[None]:
        validate_model_name(model)
        locks = self.home / "locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            fh = open(locks / f"{model}.lock", "a+")
        except OSError as exc:
            raise _unwritable(locks, exc) from None
        with holding(fh, holder) as other:
            if other is not None:
                raise Locked(model, other)
            yield

    def models(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def revisions(self) -> dict[str, str]:
        """model -> a token that changes with every save (each save replaces the file: a new
        inode), for the controller's scan."""
        out: dict[str, str] = {}
        for model in self.models():
            try:
                st = (self.dir / f"{model}.json").stat()
            except FileNotFoundError:
                continue
            out[model] = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        return out


def _read_state(path: Path) -> tuple[ModelState | None, str]:
    """(the state, "") or (None, what is wrong: "missing", "unreadable (...)", "corrupt (...)")."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    if not text.strip():
        return None, "empty (truncated)"
    try:
        return ModelState.model_validate_json(text), ""
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return None, "corrupt (" + printable(f"{where + ': ' if where else ''}{first['msg']}", 120, False) + ")"


def _unwritable(path: Path, exc: OSError) -> StateUnwritable:
    return StateUnwritable(f"cannot write rollout state at {path}: {exc.strerror or exc}; nothing was changed. "
                           "Free space or fix permissions, or point --home / $ROLLOUT_HOME at a writable directory")
