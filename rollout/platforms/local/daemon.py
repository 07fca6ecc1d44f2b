"""The local controller daemon: who leads for a state home, and starting or stopping a
background `rollout controller` for it.

Here, not in rollout/controller/, because the local platform starts the daemon itself
(``platform.controller: true``) beside the router it starts, and a platform must not
import the engine: the daemon is another process, reached by argv and files only.

- Leadership is an OS lock on ``<home>/locks/controller.leader`` holding the leader's
  words (pid, host, and where its /metrics are); the kernel releases it when the leader
  dies, even by kill -9, so a standby (or the next start) takes over at once.
- ``<home>/controller.pid`` names the daemon started here, so `rollout local down` stops
  that one, and never a pid that has since been recycled (it must still lead).
- Starting is serialised by ``<home>/locks/controller.spawn``: two commands starting the
  daemon at the same moment start one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rollout.errors import RolloutError
from rollout.state import holding, read_holder


def leader_path(home: Path) -> Path:
    return Path(home) / "locks" / "controller.leader"


def pid_path(home: Path) -> Path:
    return Path(home) / "controller.pid"


def log_path(home: Path) -> Path:
    return Path(home) / "logs" / "controller.log"


@contextlib.contextmanager
def leadership(home: Path, holder: str) -> Iterator[bool]:
    """Try to lead for ``home``: yields True while this process leads, False if another does."""
    path = leader_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with holding(open(path, "a+"), holder) as other:
        yield other is None


def leader(home: Path) -> str | None:
    """Who leads for ``home``, in its own words (None: no controller runs), read from the
    leader's record without taking the lock (a probe that took it could make a starting
    controller stand by)."""
    found = read_holder(leader_path(home))
    return found.words if found is not None and found.alive else None


def _leads(pid: int, home: Path) -> bool:
    return f"pid {pid} " in (leader(home) or "")


def start_daemon(home: Path, timeout_s: float = 30.0) -> int:
    """Start `rollout controller` for ``home`` in the background (its own session, output
    in ``<home>/logs/controller.log``) and return its pid once it leads; if a controller
    already leads for ``home``, return 0 and start nothing."""
    from rollout.platforms.local.supervisor import child_env

    home = Path(home)
    (home / "locks").mkdir(parents=True, exist_ok=True)
    with open(home / "locks" / "controller.spawn", "a+") as spawn:
        fcntl.flock(spawn, fcntl.LOCK_EX)  # released when the file closes (or this process dies)
        if leader(home) is not None:
            return 0
        log_path(home).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path(home), "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "rollout", "controller", "--home", str(home),
                                     "--port", "0"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=child_env())
        pid_path(home).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RolloutError(f"the controller exited at once (code {proc.returncode}); see {log_path(home)}")
            if _leads(proc.pid, home):
                return proc.pid
            time.sleep(0.05)
        if leader(home) is not None:
            return proc.pid  # a controller started by hand leads meanwhile: this one stands by
        raise RolloutError(f"the controller (pid {proc.pid}) did not take the lead for {home} within {timeout_s:g}s; "
                           f"see {log_path(home)}")


def ensure_daemon(home: Path) -> int:
    """A controller leads for ``home`` when this returns: the one already leading (0), or
    one started now (its pid). One lock probe when it runs already."""
    return 0 if leader(home) is not None else start_daemon(home)


def daemon_pid(home: Path) -> int | None:
    """The pid of the daemon started here, if it still leads (else None)."""
    try:
        pid = int(pid_path(home).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _leads(pid, home) else None


def stop_daemon(home: Path, timeout_s: float = 10.0) -> int | None:
    """Stop the controller daemon started for ``home`` (SIGTERM, then wait until it no
    longer leads, so what is stopped next is not restarted by it); its pid, or None if
    none ran."""
    pid = daemon_pid(home)
    pid_path(home).unlink(missing_ok=True)
    if pid is None:
        return None  # not (or no longer) our controller: never signal a recycled pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout_s
    while _leads(pid, home) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid
