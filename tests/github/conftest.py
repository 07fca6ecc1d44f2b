"""Fixtures for the GitHub Actions / terminal / webhook tests: a git registry of real
iris models, a spec writer, a background client that sends live traffic to the model's
local router, and a real HTTP server on 127.0.0.1 that plays webhook endpoints."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from rollout.demo.models import iris_request
from rollout.registry.git import publish_version


@pytest.fixture
def registry(tmp_path: Path, iris_models: dict[str, Path]) -> Path:
    """A git registry with iris v1 (good), v2 (good, other seed, with samples) and v3
    (every prediction fails)."""
    repo = tmp_path / "registry"
    for version, kind in (("v1", "good"), ("v2", "other"), ("v3", "broken")):
        src = tmp_path / "src" / version
        src.mkdir(parents=True)
        (src / "model.joblib").write_bytes((iris_models[kind] / "model.joblib").read_bytes())
        if version in ("v2", "v3"):
            (src / "samples").mkdir()
            (src / "samples" / "one.json").write_text(json.dumps(iris_request(1)))
            (src / "samples" / "three.json").write_text(json.dumps(iris_request(3, seed=7)))
        publish_version(repo, "iris", version, src)
    return repo


@pytest.fixture
def write_spec(tmp_path: Path, registry: Path) -> Callable[..., Path]:
    """``write_spec(strategy=..., webhooks=...)`` -> path of a rollout.yaml for iris on the
    local platform (built-in server), judged on the router's error rate."""

    def write(**overrides: Any) -> Path:
        spec: dict[str, Any] = {
            "model": "iris",
            "registry": {"type": "git", "url": str(registry)},
            "platform": {"type": "local", "server": "builtin", "ready_timeout_s": 30},
            "strategy": {"type": "canary", "weights": [50], "scale_down_delay_s": 0},
            "analysis": {
                "interval_s": 0.3, "duration_s": 1.0,
                "metrics": [{"name": "error-rate", "query": "error_rate",
                             # lifecycle, not statistics: a handful of requests on purpose (min_requests: 0)
                             "judge": {"type": "threshold", "max": 0.05, "min_requests": 0}}],
            },
        }
        spec.update(overrides)
        path = tmp_path / "rollout.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@dataclass
class Traffic:
    """Sends iris requests to the model's router (whatever port it is on) until stopped."""

    home: Path
    model: str = "iris"
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from rollout.platforms.local import LocalPlatform

        platform = LocalPlatform(self.model, self.home)
        http = requests.Session()
        while not self._stop.is_set():
            url = platform.endpoint()
            if not url:
                self._stop.wait(0.1)
                continue
            try:
                http.post(f"{url}/v2/models/{self.model}/infer", json=iris_request(1), timeout=5)
                self.sent += 1
            except requests.RequestException:
                self._stop.wait(0.05)
            self._stop.wait(0.01)


@pytest.fixture
def live_traffic(local_home: Path) -> Iterator[Traffic]:
    traffic = Traffic(local_home)
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    yield traffic
    traffic._stop.set()
    thread.join(10)


@dataclass
class HookServer:
    """A real HTTP server on 127.0.0.1: ``answers[path]`` is the status to answer with
    (default 200), ``calls[path]`` the JSON bodies received, ``seen[path]`` is set on
    each call."""

    url: str
    answers: dict[str, int] = field(default_factory=dict)
    calls: dict[str, list[Any]] = field(default_factory=dict)
    called: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, path: str) -> threading.Event:
        with self.lock:
            return self.called.setdefault(path, threading.Event())

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.calls.get(path, []))


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    state: dict[str, HookServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            server = state["s"]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode(errors="replace")
            with server.lock:
                server.calls.setdefault(self.path, []).append(body)
                status = server.answers.get(self.path, 200)
            server.event(self.path).set()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = HookServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    state["s"] = server
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
