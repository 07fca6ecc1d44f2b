"""Unique secrets planted in every credential slot never appear in any output, file,
summary, log, webhook body or child process environment — for a promoted, a rolled-back
and two provider-error rollouts, where the "Prometheus" echoes the request's headers in
its answer (as a non-numeric value, and in an HTTP 500 error body).

The provider-error runs check what the redaction layer guarantees whatever the provider
code does with the echo: the state file, the CLI's output and everything else written is
scrubbed. Real CLI subprocesses, real router and model servers, real HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from rollout.demo.traffic import LoadGenerator
from rollout.platforms.local import supervisor as sv
from rollout.platforms.local.platform import LocalPlatform

from tests.integration.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECRETS = {
    "PROM_TOKEN": "tok-Prom/Bearer+91a7",
    "PROM_USER": "user-prom-5c2e",
    "PROM_PASS": "pass-prom-7d3f!x",
    "PROM_HEADER": "hdr-org-2b8e",
    "HOOK_URL_SECRET": "gate-path-6a1d",
    "NOTIFY_URL_SECRET": "notify-path-3f9c",
    "GITHUB_TOKEN": "ghp-planted-0e4b",
    "MLFLOW_TRACKING_TOKEN": "mlflow-planted-8a2f",
    "AWS_SECRET_ACCESS_KEY": "aws-planted-1c7d",
}
FILE_TOKEN = "tok-from-file-4d6e"


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}


LEAK_FORMS = set().union(*(forms(s) for s in [*SECRETS.values(), FILE_TOKEN])) | {
    base64.b64encode(f"{SECRETS['PROM_USER']}:{SECRETS['PROM_PASS']}".encode()).decode()}


class Echo:
    """A fake Prometheus that echoes every request header back (mode "nonnum": as a
    vector's value; "error": in a 500's error body), plus a webhook sink that keeps bodies."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.headers_seen: list[str] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                headers = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                echo.headers_seen.append(headers)
                if self.path.startswith("/error/"):
                    self._send(500, {"status": "error", "errorType": "internal", "error": headers})
                else:
                    self._send(200, {"status": "success", "data": {"resultType": "vector", "result": [
                        {"metric": {}, "value": [1.0, headers]}]}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                echo.bodies.append(self.rfile.read(length).decode())
                self._send(200, {"ok": True})

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Echo":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as e:
        yield e


class Runs:
    def __init__(self, tmp: Path, home: Path, echo: Echo) -> None:
        self.tmp, self.home, self.echo = tmp, home, echo
        self.outputs: list[str] = []
        self.count = 0
        (tmp / "token").write_text(FILE_TOKEN + "\n")
        (tmp / "notify-url").write_text(f"{echo.url}/notify/{SECRETS['NOTIFY_URL_SECRET']}\n")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
        env.update(SECRETS)
        env["HOOK_URL"] = f"{self.echo.url}/gate/{SECRETS['HOOK_URL_SECRET']}?key={SECRETS['HOOK_URL_SECRET']}"
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["ROLLOUT_HOME"] = str(self.home)
        self.count += 1
        env.update({"GITHUB_ACTIONS": "true", "CI": "true",
                    "GITHUB_OUTPUT": str(self.tmp / f"gh-output-{self.count}"),
                    "GITHUB_STEP_SUMMARY": str(self.tmp / f"gh-summary-{self.count}.md")})
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "rollout", *args], env=self.env(), capture_output=True,
                                text=True, timeout=180, cwd=self.home.parent)
        self.outputs.append(result.stdout + result.stderr)
        return result


def spec(tmp: Path, registry: Path, echo: Echo, prometheus: dict[str, Any], metrics: list[dict[str, Any]]) -> Path:
    doc = {
        "model": "iris",
        "registry": {"type": "git", "url": str(registry)},
        "platform": {"type": "local", "server": "builtin", "ready_timeout_s": 30},
        "strategy": {"type": "canary", "weights": [50]},
        "analysis": {"interval_s": 0.5, "duration_s": 1.5, "inconclusive": "fail", "metrics": metrics,
                     "prometheus": {"timeout_s": 2, **prometheus}},
        "webhooks": {
            "hooks": [{"name": "gate", "type": "pre-rollout", "url_env": "HOOK_URL", "retries": 0}],
            "notify": [{"name": "hook", "type": "webhook", "url_file": str(tmp / "notify-url")},
                       {"name": "slack", "type": "slack", "url_env": "HOOK_URL"}],
        },
    }
    path = tmp / f"spec-{len(list(tmp.glob('spec-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# min_requests 0: this test sends a handful of requests on purpose (it is about leaks, not decisions)
ROUTER_METRIC = [{"name": "error-rate", "query": "error_rate",
                  "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}]
PROM_METRIC = [{"name": "echo", "provider": "prometheus", "query": "up", "consecutive_error_limit": 1,
                "judge": {"type": "threshold", "max": 1}}]


def leaks_in(text: str) -> set[str]:
    return {f for f in LEAK_FORMS if f in text}


def test_no_planted_secret_appears_anywhere(tmp_path: Path, registry: Path, local_home: Path, echo: Echo) -> None:
    runs = Runs(tmp_path, local_home, echo)
    bearer = {"url": f"{echo.url}/nonnum", "bearer_token_env": "PROM_TOKEN",
              "headers_env": {"X-Scope-OrgID": "PROM_HEADER"}}
    basic = {"url": f"{echo.url}/error", "basic_auth_user_env": "PROM_USER", "basic_auth_password_env": "PROM_PASS",
             "headers_env": {"X-Scope-OrgID": "PROM_HEADER"}}
    file_token = {"url": f"{echo.url}/nonnum", "bearer_token_file": str(tmp_path / "token")}

    first = runs.cli("start", "iris:v1", "-f", str(spec(tmp_path, registry, echo, bearer, ROUTER_METRIC)))
    assert first.returncode == 0, first.stderr
    platform = LocalPlatform("iris", local_home)
    with LoadGenerator(f"{platform.endpoint()}/v2/models/iris/infer", rate_per_s=40, workers=2):
        promoted = runs.cli("start", "iris:v2", "-f", str(spec(tmp_path, registry, echo, bearer, ROUTER_METRIC)))
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        rolled_back = runs.cli("start", "iris:v3", "-f", str(spec(tmp_path, registry, echo, bearer, ROUTER_METRIC)))
        assert rolled_back.returncode == 3, rolled_back.stdout + rolled_back.stderr
        # Provider errors: the answer echoes the Authorization header (bearer, then basic auth, then a
        # token read from a file) as a non-numeric value or in an HTTP 500 body.
        # inconclusive: fail, so each ends rolled back (exit 3) whatever the error's wording.
        for creds in (bearer, basic, file_token):
            errored = runs.cli("start", "iris:v3", "-f", str(spec(tmp_path, registry, echo, creds, PROM_METRIC)))
            assert errored.returncode == 3, errored.stdout + errored.stderr
    assert any(SECRETS["PROM_TOKEN"] in h for h in echo.headers_seen), "the echo server never saw the token"
    assert any(base64.b64encode(f"{SECRETS['PROM_USER']}:{SECRETS['PROM_PASS']}".encode()).decode() in h
               for h in echo.headers_seen), "the echo server never saw the basic-auth pair"
    assert any(FILE_TOKEN in h for h in echo.headers_seen)
    for command in (["status", "iris"], ["status", "iris", "-o", "json"], ["status", "iris", "-o", "yaml"],
                    ["history", "iris"], ["history", "iris", "-o", "json"], ["local", "status"]):
        assert runs.cli(*command).returncode == 0

    # Child processes: the router and every model server still running.
    procs = sv.marked_processes(sv.marker_for(local_home, "iris", ""), exact=False)
    assert len(procs) >= 2
    for proc in procs:
        env = proc.environ()
        assert not leaks_in("\n".join(f"{k}={v}" for k, v in env.items())), f"pid {proc.pid}: {proc.cmdline()}"
        assert not set(SECRETS) & set(env)

    found: dict[str, set[str]] = {}
    for i, text in enumerate(runs.outputs):
        if leaks_in(text):
            found[f"output of command {i}"] = leaks_in(text)
    for path in [*local_home.rglob("*"), *tmp_path.glob("gh-*")]:
        if path.is_file() and path.suffix != ".joblib":
            text = path.read_bytes().decode("utf-8", "replace")
            if leaks_in(text):
                found[str(path)] = leaks_in(text)
    for i, body in enumerate(echo.bodies):
        if leaks_in(body):
            found[f"webhook body {i}"] = leaks_in(body)
    assert not found, found
    assert echo.bodies, "no webhook or notification was delivered"
    summaries = "".join(p.read_text() for p in tmp_path.glob("gh-summary-*"))
    assert "rolled back" in summaries.lower() or "RolledBack" in summaries
