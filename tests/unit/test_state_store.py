"""The file state store: compare-and-swap saves and an OS lock that a killed run releases."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from rollout.errors import Conflict, Locked
from rollout import app as wiring
from rollout.state import FileStateStore, ModelState, VersionRecord


def test_save_bumps_revision_and_refuses_stale_writes(tmp_path):
    store = FileStateStore(tmp_path)
    first = store.save(ModelState(model="iris"))
    assert first.revision == 1
    stale = first.model_copy()
    first.stable = VersionRecord(version="v1", uri="/m")
    assert store.save(first).revision == 2
    stale.stable = VersionRecord(version="v9", uri="/m")
    with pytest.raises(Conflict, match="revision 2, expected 1"):
        store.save(stale)
    assert store.load("iris").stable.version == "v1"


def test_unknown_model_loads_empty(tmp_path):
    assert FileStateStore(tmp_path).load("fraud") == ModelState(model="fraud")


def _hold_lock(home: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from rollout.state import FileStateStore
        with FileStateStore({str(home)!r}).lock("iris", "pid-holder-marker `rollout start`"):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_held_by_another_process_names_the_holder(tmp_path):
    proc = _hold_lock(tmp_path)
    try:
        with pytest.raises(Locked, match="locked by pid-holder-marker `rollout start`"):
            with FileStateStore(tmp_path).lock("iris", "me"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_released(tmp_path):
    proc = _hold_lock(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FileStateStore(tmp_path)
    gone = store.holder("iris")
    assert gone is not None and not gone.alive and gone.pid == proc.pid, "a killed holder's record says it is gone"
    assert "pid-holder-marker" in gone.words and gone.since is not None
    with store.lock("iris", "me"):
        found = store.holder("iris")
        assert found is not None and found.alive and found.words == "me" and found.pid == os.getpid()
    assert store.holder("iris") is None, "a clean release leaves no holder"


def test_asking_who_holds_the_lock_never_takes_it(tmp_path):
    """`rollout status` asks who holds a model while `rollout start` takes the lock: the
    question must never turn the start away (it used to probe by taking the lock)."""
    store = FileStateStore(tmp_path)
    proc = _hold_lock(tmp_path)
    try:
        found = store.holder("iris")
        assert found is not None and found.alive and found.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()
    stop = threading.Event()
    asked = []

    def ask() -> None:  # what `rollout status` does, as fast as it can
        while not stop.is_set():
            asked.append(wiring.lock_holder(FileStateStore(tmp_path), "iris"))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        for _ in range(500):  # every take succeeds however the questions interleave
            with store.lock("iris", "me"):
                pass
    finally:
        stop.set()
        asker.join(10)
    assert len(asked) > 50 and set(asked) <= {None, "me"}


def test_lock_is_per_model(tmp_path):
    proc = _hold_lock(tmp_path)
    try:
        with FileStateStore(tmp_path).lock("fraud", "me"):
            pass
    finally:
        proc.kill()
        proc.wait()
