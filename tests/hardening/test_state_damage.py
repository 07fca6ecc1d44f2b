"""Damaged state is one line naming the file and the way back; the previous good copy is
kept on every save and used when the file is truncated or corrupt; a read-only or full
home is refused, naming the path, before any traffic moves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rollout.errors import StateDamaged, StateUnwritable
from rollout.state import FileStateStore, ModelState, VersionRecord

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[2]


def rollout_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ROLLOUT_HOME": str(home)}
    env.pop("GITHUB_ACTIONS", None)
    return subprocess.run([sys.executable, "-m", "rollout", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=home.parent)


def saved_twice(home: Path) -> FileStateStore:
    store = FileStateStore(home)
    ms = store.save(ModelState(model="iris", stable=VersionRecord(version="v1", uri="/m/v1")))
    store.save(ms.model_copy(update={"stable": VersionRecord(version="v2", uri="/m/v2")}))
    return store


def test_every_save_keeps_the_previous_good_copy(tmp_path: Path) -> None:
    store = saved_twice(tmp_path)
    backup = FileStateStore.backup_path(tmp_path / "state" / "iris.json")
    assert store.load("iris").stable.version == "v2"
    assert ModelState.model_validate_json(backup.read_text()).stable.version == "v1"


@pytest.mark.parametrize("damage", [b"", b'{"model": "iris", "revis', b"\x00" * 512, b'{"model": 5}'])
def test_a_damaged_state_file_falls_back_to_the_previous_copy_with_one_warning(
        tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    store = saved_twice(tmp_path)
    path = tmp_path / "state" / "iris.json"
    path.write_bytes(damage)
    ms = store.load("iris")
    assert ms.stable.version == "v1" and ms.revision == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "using the previous copy" in warnings[0]
    # The next save replaces the damaged file and keeps it aside for inspection.
    store.save(ms)
    assert store.load("iris").revision == 2
    assert (tmp_path / "state" / "iris.json.damaged").read_bytes() == damage


def test_a_deleted_state_file_is_not_a_first_deployment_while_its_copy_exists(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = saved_twice(tmp_path)
    (tmp_path / "state" / "iris.json").unlink()
    assert store.load("iris").stable.version == "v1"
    assert "is missing; using the previous copy" in caplog.text


def test_damage_with_no_usable_copy_is_one_line_naming_the_file_and_the_way_back(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.save(ModelState(model="iris"))
    path = tmp_path / "state" / "iris.json"
    path.write_text('{"model": "iris", "revision": ')
    with pytest.raises(StateDamaged) as err:
        store.load("iris")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"mv {path} {path}.damaged" in message


def test_status_and_history_on_a_truncated_file_use_the_last_good_copy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    saved_twice(home)
    (home / "state" / "iris.json").write_text('{"model": "iris", "stab')
    for command in (["history", "iris"], ["status", "iris"]):
        result = rollout_cli(home, *command)
        assert "Traceback" not in result.stderr
        assert "using the previous copy" in result.stderr and str(home / "state" / "iris.json") in result.stderr


def test_status_with_both_copies_damaged_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    saved_twice(home)
    (home / "state" / "iris.json").write_text("{")
    (home / "state" / "iris.json.bak").write_text("[]")
    result = rollout_cli(home, "status", "iris")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is corrupt" in lines[0] and "mv " in lines[0]


# ------------------------------------------------------------------ read-only and full homes


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    mounts: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_check_writable_names_a_read_only_home(tmpfs) -> None:
    home = tmpfs("ro,size=1m")
    with pytest.raises(StateUnwritable, match=f"cannot write rollout state at {home}/state: Read-only file system"):
        FileStateStore(home).check_writable()


def test_check_writable_names_a_full_home(tmpfs) -> None:
    home = tmpfs("size=256k")
    (home / "state").mkdir()
    fd = os.open(home / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    with pytest.raises(StateUnwritable, match="No space left on device"):
        FileStateStore(home).check_writable()


def test_start_in_a_read_only_home_fails_in_one_line_before_anything_runs(tmpfs, tmp_path: Path) -> None:
    home = tmpfs("ro,size=1m")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": "iris", "registry": {"type": "git", "url": str(tmp_path / "nowhere")},
                                    "platform": {"type": "local", "server": "builtin"}}))
    result = rollout_cli(home, "start", "iris:v1", "-f", str(spec))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write rollout state at {home}/state: Read-only file system; nothing was changed. "
        "Free space or fix permissions, or point --home / $ROLLOUT_HOME at a writable directory"]
    assert not (home / "local").exists()
