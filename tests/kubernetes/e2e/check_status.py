"""What the kind workflow asserts on ``rollout status <model> -o json`` after each rollout,
in one place so tests/kubernetes/test_e2e_kind_pieces.py runs the same checks against a
rehearsal on the fake API server.

Usage: python -m tests.kubernetes.e2e.check_status STATUS_JSON promoted|rolled-back CANDIDATE STABLE
(STABLE: the version that must be stable afterwards). Exit 0 when it holds, 1 with the
reasons otherwise; the measurements are printed either way.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.kubernetes.e2e.prepare import METRICS


def problems(status: dict[str, Any], outcome: str, candidate: str, stable: str) -> list[str]:
    out = []
    r = status.get("rollout") or {}
    if status.get("stable") != stable:
        out.append(f"stable is {status.get('stable')!r}, expected {stable!r}")
    if r.get("candidate") != candidate:
        out.append(f"the last rollout's candidate is {r.get('candidate')!r}, expected {candidate!r}")
    latest = {m["metric"]: m for m in r.get("measurements") or []}
    if outcome == "promoted":
        if r.get("phase") != "Promoted":
            out.append(f"phase {r.get('phase')!r}, expected 'Promoted'")
        for name in METRICS:  # every metric measured a value and passed: each pack found the version's series
            m = latest.get(name)
            if m is None or m["status"] != "value" or m["verdict"] != "pass":
                out.append(f"metric {name}: {m and (m['status'], m['verdict'], m['reason'])}, expected a passing value")
    elif outcome == "rolled-back":
        if r.get("phase") != "RolledBack":
            out.append(f"phase {r.get('phase')!r}, expected 'RolledBack'")
        if not any(m["status"] == "value" and m["verdict"] == "fail" for m in latest.values()):
            out.append("no metric failed on a measured value: the rollback was not decided by measurement")
    else:
        raise ValueError(f"outcome {outcome!r}: expected promoted or rolled-back")
    return out


def main(argv: list[str]) -> int:
    path, outcome, candidate, stable = argv
    with open(path) as fh:
        status = json.load(fh)
    for m in (status.get("rollout") or {}).get("measurements") or []:
        print(f"{m['metric']} [{m['version']}] = {m['value']} ({m['status']}, {m['verdict']}): {m['reason']}")
    found = problems(status, outcome, candidate, stable)
    for p in found:
        print(f"FAILED: {p}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
