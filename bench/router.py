"""What does the built-in router cost? One run, side by side:

    direct   clients -> model server
    router   clients -> rollout router -> model server
    nginx    clients -> nginx (reverse proxy, keepalive upstream) -> model server

N concurrent clients send V2 infer requests (one iris row each); the table shows
throughput and client-side p50/p99 and the ratios to direct. Everything runs on
127.0.0.1 and every process started here is stopped at the end.

    python bench/router.py [--requests 3000] [--concurrency 16] [--backend builtin|mlserver|mlserver-workers1]

``mlserver-workers1`` runs MLServer with ``parallel_workers: 1`` (inference in a worker
process) instead of the platform's ``0``, to measure what that setting costs.
Note: client, proxy and server share this machine's cores, so absolute numbers are
lower bounds; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from rollout.demo_models import make_good_model  # noqa: E402
from rollout.platforms.local import loadgen  # noqa: E402
from rollout.platforms.local import supervisor as sv  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402

INFER = "/v2/models/iris/infer"

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream model {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def start_backend(home: Path, mv: ModelVersion, backend: str) -> tuple[sv.ProcessRecord, float]:
    """The model server under test and its time to ready in seconds."""
    started = time.perf_counter()
    if backend != "mlserver-workers1":
        record = sv.start_server(home, mv, backend, ready_timeout_s=60)
        return record, time.perf_counter() - started
    port = sv.free_port()
    runtime = home / "runtime"
    command, extra = sv.mlserver_command(mv, port, runtime)
    settings = json.loads((runtime / "settings.json").read_text())
    settings["parallel_workers"] = 1
    (runtime / "settings.json").write_text(json.dumps(settings))
    log = home / "mlserver.log"
    proc = sv.launch(command, log, cwd=runtime)
    sv.wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready"], 60, "mlserver (parallel_workers=1)", log)
    record = sv.ProcessRecord(mv.name, mv.version, "mlserver", proc.pid, port, command, str(log),
                              time.time(), sv.start_ticks(proc.pid), extra)
    return record, time.perf_counter() - started


def start_nginx(prefix: Path, backend_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = sv.free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend_port=backend_port))
    proc = sv.launch(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], prefix / "nginx.out")
    sv.wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready"], 10, "nginx", prefix / "error.log")
    return proc, port


def measure(url: str, n: int, concurrency: int, warmup: int) -> loadgen.Summary:
    async def go() -> loadgen.Summary:
        await loadgen.send(url, warmup, concurrency)
        started = time.perf_counter()
        results = await loadgen.send(url, n, concurrency)
        return loadgen.summarize(results, time.perf_counter() - started)

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--backend", default="builtin", choices=["builtin", "mlserver", "mlserver-workers1"])
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    stop: list[sv.ProcessRecord] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        mv = ModelVersion("iris", "v1", str(make_good_model(tmp / "model")))
        backend, ready_s = start_backend(tmp / "home", mv, args.backend)
        stop.append(backend)
        router = sv.start_router(tmp / "home", "iris", 0)
        stop.append(router)
        requests.put(router.url + "/router/config", json={"backends": {"v1": backend.url}, "stable": "v1"},
                     timeout=5).raise_for_status()
        targets = {"direct": backend.url, "router": router.url}
        if shutil.which("nginx"):
            nginx, nginx_port = start_nginx(tmp / "nginx", backend.port)
            targets["nginx"] = f"http://127.0.0.1:{nginx_port}"
        else:
            print("nginx not installed: skipping the nginx row")

        print(f"backend {args.backend}: ready in {ready_s:.2f}s; {args.requests} requests per target, "
              f"{args.concurrency} concurrent clients, {args.warmup} warm-up requests\n")
        rows = {name: measure(url + INFER, args.requests, args.concurrency, args.warmup)
                for name, url in targets.items()}

        print(f"{'target':<8} {'ok':>6} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, s in rows.items():
            print(f"{name:<8} {s.requests - s.errors:>6} {s.errors:>6} {s.rps:>8.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f}")
        direct = rows["direct"]
        for name in ("router", "nginx"):
            if name in rows:
                s = rows[name]
                print(f"{name}/direct: throughput x{s.rps / direct.rps:.2f}, p50 x{s.p50_ms / direct.p50_ms:.2f}, "
                      f"p99 x{s.p99_ms / direct.p99_ms:.2f}, p50 overhead {s.p50_ms - direct.p50_ms:+.2f} ms")
    finally:
        if nginx is not None:
            sv.kill_group(nginx.pid, None, 5)
            nginx.wait()
        for record in stop:
            sv.stop(record, 5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
