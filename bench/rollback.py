"""Time from `rollout rollback` to 100% of traffic on the restored version.

Measured from a client's point of view, side by side in one run:
  kept   - the old stable is still running (within scale_down_delay_s, the default path)
  cold   - the old stable was already retired, so it must be started again
for the built-in V2 server and for MLServer. A probe sends requests continuously;
the figure is the time from the command's start to the first response after which
every response comes from the restored version. Also reported: the CLI's wall time.

Run: .venv/bin/python bench/rollback.py [--servers builtin,mlserver] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rollout.demo.models import make_good_model  # noqa: E402
from rollout.demo.traffic import LoadGenerator  # noqa: E402
from rollout.platforms.local.platform import LocalPlatform  # noqa: E402
from rollout.registry.git import publish_version  # noqa: E402


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROLLOUT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rollout", *args], env=env, capture_output=True, text=True, check=False)


def one_run(root: Path, server: str, keep: bool) -> tuple[float, float]:
    home = root / f"home-{server}-{keep}-{time.monotonic_ns()}"
    spec = root / f"spec-{server}-{keep}.yaml"
    spec.write_text(yaml.safe_dump({
        "model": "iris", "registry": {"type": "git", "url": str(root / "registry")},
        "platform": {"type": "local", "server": server, "ready_timeout_s": 120},
        "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 600 if keep else 0},
    }))
    try:
        assert cli(home, "start", "iris:v1", "-f", str(spec)).returncode == 0
        assert cli(home, "start", "iris:v2", "-f", str(spec)).returncode == 0
        url = f"{LocalPlatform('iris', home).endpoint()}/v2/models/iris/infer"
        with LoadGenerator(url, rate_per_s=200, workers=4) as probe:
            time.sleep(0.5)
            t0 = time.time()
            result = cli(home, "rollback", "iris")
            wall = time.time() - t0
            time.sleep(0.5)
        assert result.returncode == 0, result.stderr
        after = sorted((s for s in probe.snapshot() if s.at >= t0), key=lambda s: s.at)
        last_other = max((s.at for s in after if s.version != "v1"), default=t0)
        first_all_v1 = min(s.at for s in after if s.at > last_other)
        return first_all_v1 - t0, wall
    finally:
        LocalPlatform("iris", home).down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", default="builtin,mlserver")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for v, seed in [("v1", 1), ("v2", 2)]:
            make_good_model(root / "src" / v, seed=seed)
            publish_version(root / "registry", "iris", v, root / "src" / v)
        print(f"| server | old version | to 100% on v1, s (median of {args.repeat}) | CLI wall time, s | ratio cold/kept |")
        print("|---|---|---|---|---|")
        for server in args.servers.split(","):
            medians = {}
            for keep in (True, False):
                runs = [one_run(root, server, keep) for _ in range(args.repeat)]
                switch = statistics.median(r[0] for r in runs)
                wall = statistics.median(r[1] for r in runs)
                medians[keep] = switch
                label = "kept running" if keep else "retired (cold start)"
                ratio = "" if keep else f"{switch / medians[True]:.0f}x"
                print(f"| {server} | {label} | {switch:.3f} | {wall:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
