"""`rollout status --watch` in a real pseudo-terminal: the live view follows a rollout
run by another process and exits with the outcome's exit code."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rollout import app as wiring
from rollout.spec import load_spec
from rollout.state import Phase

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Terminal:
    """A process on a pty; ``expect`` reads until a text appears, ``finish`` until EOF."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS")}
        env.update({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "ROLLOUT_WATCH_INTERVAL_S": "0.1",
                    "PYTHONPATH": str(ROOT)})
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True)
        os.close(slave)
        self.master = master
        self.output = ""

    def _read(self, bound_s: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], bound_s)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        if not chunk:
            return False
        self.output += chunk.decode(errors="replace")
        return True

    def expect(self, text: str) -> None:
        for _ in range(600):  # a bound against hangs (60 s), not a timing assertion
            if text in self.output:
                return
            if not self._read(0.1):
                break
        assert text in self.output, f"{text!r} never appeared in:\n{self.output[-2000:]}"

    def finish(self) -> int:
        while self._read(1.0):
            if self.proc.poll() is not None and not select.select([self.master], [], [], 0.2)[0]:
                break
        code = self.proc.wait(60)
        os.close(self.master)
        return code


@pytest.fixture
def paused_rollout(write_spec: Any, local_home: Path) -> tuple[Path, Path]:
    """iris v1 stable and a canary of v2 paused at 50%, waiting for `rollout promote`."""
    steps = [{"set_weight": 50}, {"pause": {}}]
    spec = write_spec(analysis={"interval_s": 0.1, "metrics": []},
                      strategy={"type": "canary", "steps": steps, "scale_down_delay_s": 0})
    loaded = load_spec(spec)
    registry = wiring.make_registry(loaded, local_home)
    wiring.build_engine(loaded, local_home, "start").start(registry.resolve("iris:v1"))
    ms = wiring.build_engine(loaded, local_home, "start").start(registry.resolve("iris:v2"))
    assert ms.rollout.phase is Phase.PAUSED
    return spec, local_home


def watch(home: Path) -> Terminal:
    return Terminal([sys.executable, "-m", "rollout", "status", "iris", "--watch", "--home", str(home)])


def test_watch_follows_a_paused_rollout_until_promoted_and_exits_0(paused_rollout: tuple[Path, Path]) -> None:
    spec, home = paused_rollout
    term = watch(home)
    term.expect("Paused")
    term.expect("v1 50% / v2 50%")
    wiring.build_engine(load_spec(spec), home, "promote").promote("v2")
    assert term.finish() == 0
    assert "iris: Promoted (exit 0)" in term.output


def test_watch_exits_3_when_the_rollout_is_rolled_back(paused_rollout: tuple[Path, Path]) -> None:
    spec, home = paused_rollout
    term = watch(home)
    term.expect("Paused")
    wiring.build_engine(load_spec(spec), home, "rollback").rollback()
    assert term.finish() == 3
    assert "iris: RolledBack (exit 3)" in term.output


def test_watch_of_a_finished_rollout_exits_at_once_with_its_code(paused_rollout: tuple[Path, Path]) -> None:
    spec, home = paused_rollout
    wiring.build_engine(load_spec(spec), home, "abort").abort()
    term = watch(home)
    assert term.finish() == 3
    assert "Aborted" in term.output


def test_watch_without_a_terminal_prints_plain_lines_and_exits_with_the_code(paused_rollout: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from rollout.cli import cli

    spec, home = paused_rollout
    wiring.build_engine(load_spec(spec), home, "rollback").rollback()
    result = CliRunner().invoke(cli, ["status", "iris", "--watch", "--home", str(home)])
    assert result.exit_code == 3
    assert "\x1b[" not in result.output and "phase     RolledBack" in result.output
    assert result.output.rstrip().endswith("(exit 3)")
