"""The real Mermaid parser (the ``mermaid`` npm package, run under node) for tests of
the job summary's charts. The package lives outside the repository, in
``$ROLLOUT_MERMAID_DIR`` (default ``~/.cache/rollout-mermaid``), where
``scripts/setup.sh --dev`` installs it; without node or the package the tests that
need it are skipped, saying why."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("mermaid_parse.mjs")
BLOCK = re.compile(r"```mermaid\n(.*?)\n```", re.S)


def mermaid_dir() -> Path:
    return Path(os.environ.get("ROLLOUT_MERMAID_DIR") or Path.home() / ".cache" / "rollout-mermaid")


def require_mermaid() -> Path:
    """The package directory, or skip the test naming what is missing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/setup.sh --dev installs it)")
    d = mermaid_dir()
    if not (d / "node_modules" / "mermaid" / "dist" / "mermaid.core.mjs").exists() or \
            not (d / "node_modules" / "jsdom").is_dir():
        pytest.skip(f"the mermaid npm package is not installed in {d} (scripts/setup.sh --dev installs it)")
    return d


def blocks(markdown: str) -> list[str]:
    return BLOCK.findall(markdown)


def parse(texts: list[str]) -> list[dict]:
    """Each text parsed by mermaid: {"ok": True, "type": ...} or {"ok": False, "error": ...}."""
    d = require_mermaid()
    proc = subprocess.run(["node", str(SCRIPT), str(d)], input=json.dumps(texts), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
