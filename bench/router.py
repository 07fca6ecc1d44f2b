"""What does the built-in router cost? One run, side by side, REST and V2 gRPC:

    direct   clients -> model server
    router   clients -> rollout router -> model server
    nginx    clients -> nginx (reverse proxy, keepalive upstream) -> model server (REST)

Two measurements per target, V2 infer requests of one iris row each:
- closed loop: N concurrent clients back to back; throughput as a ratio to direct;
- open loop: requests started at a fixed rate (``--load`` x direct's throughput),
  the same offered load for every target; p99 and the p99 added over direct.
gRPC rows need a server with a gRPC port (MLServer). Everything runs on 127.0.0.1 and
every process started here is stopped at the end.

    python bench/router.py [--requests 3000] [--concurrency 16] [--backends builtin,mlserver]

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import requests  # noqa: E402

from rollout.demo.models import iris_request, make_good_model  # noqa: E402
from rollout.platforms.local import supervisor as sv  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402

INFER = "/v2/models/iris/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"

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


def rest_sender(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bool]]:
    body = json.dumps(iris_request()).encode()
    headers = {"Content-Type": "application/json"}

    async def one() -> bool:
        async with session.post(url + INFER, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status == 200

    return one


def grpc_sender(channel: Any) -> Callable[[], Awaitable[bool]]:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="iris")
    inp = req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    inp.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    payload = req.SerializeToString()
    call = channel.unary_unary(GRPC_INFER)

    async def one() -> bool:
        await call(payload, timeout=30)
        return True

    return one


@dataclass
class Row:
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def _row(latencies: list[float], errors: int, duration_s: float) -> Row:
    lat = sorted(latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
    return Row(len(lat), errors, len(lat) / duration_s, pct(0.50), pct(0.99))


async def closed_loop(one: Callable[[], Awaitable[bool]], n: int, concurrency: int) -> Row:
    """``concurrency`` clients back to back: the most the target can serve."""
    latencies: list[float] = []
    errors = 0
    todo = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for _ in todo:
            t = time.perf_counter()
            try:
                ok = await one()
            except Exception:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t) * 1000)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _row(latencies, errors, time.perf_counter() - started)


async def open_loop(one: Callable[[], Awaitable[bool]], n: int, rate: float) -> Row:
    """Requests started at a fixed rate whatever the answers do: latency at the same
    offered load for every target (a closed loop would hide a slower proxy's queueing)."""
    latencies: list[float] = []
    errors = 0

    async def timed() -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            ok = await one()
        except Exception:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - t) * 1000)
        else:
            errors += 1

    started = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed()))
    await asyncio.gather(*tasks)
    return _row(latencies, errors, time.perf_counter() - started)


async def bench_target(kind: str, where: str, args: argparse.Namespace, rate: float | None) -> tuple[Row, Row | None]:
    if kind == "rest":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency * 4))
        one, close = rest_sender(session, where), session.close
    else:
        import grpc

        channel = grpc.aio.insecure_channel(where)
        one, close = grpc_sender(channel), channel.close
    try:
        await closed_loop(one, args.warmup, args.concurrency)
        closed = await closed_loop(one, args.requests, args.concurrency)
        opened = await open_loop(one, args.requests // 2, rate) if rate else None
        return closed, opened
    finally:
        await close()


def run_backend(backend: str, tmp: Path, args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    stop: list[sv.ProcessRecord] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        mv = ModelVersion("iris", "v1", str(make_good_model(tmp / "model")))
        server, ready_s = start_backend(tmp / "home", mv, backend)
        stop.append(server)
        router = sv.start_router(tmp / "home", "iris", 0, grpc_port=0)
        stop.append(router)
        config: dict[str, Any] = {"backends": {"v1": server.url}, "stable": "v1"}
        targets: dict[tuple[str, str], str] = {("rest", "direct"): server.url, ("rest", "router"): router.url}
        if server.extra_ports.get("grpc"):
            config["grpc_backends"] = {"v1": f"127.0.0.1:{server.extra_ports['grpc']}"}
            targets[("grpc", "direct")] = config["grpc_backends"]["v1"]
            targets[("grpc", "router")] = f"127.0.0.1:{router.extra_ports['grpc']}"
        requests.put(router.url + "/router/config", json=config, timeout=5).raise_for_status()
        if shutil.which("nginx"):
            nginx, nginx_port = start_nginx(tmp / "nginx", server.port)
            targets[("rest", "nginx")] = f"http://127.0.0.1:{nginx_port}"
        else:
            lines.append("nginx not installed: no nginx row")

        lines.append(f"backend {backend}: ready in {ready_s:.2f}s; closed loop: {args.requests} requests, "
                     f"{args.concurrency} clients; open loop: {args.requests // 2} requests at "
                     f"{args.load:.0%} of direct's throughput")
        results: dict[tuple[str, str], tuple[Row, Row | None]] = {}
        for proto in ("rest", "grpc"):
            if (proto, "direct") not in targets:
                continue
            closed_direct, _ = asyncio.run(bench_target(proto, targets[(proto, "direct")], args, None))
            rate = closed_direct.rps * args.load
            for name in ("direct", "router", "nginx"):
                if (proto, name) in targets:
                    # Rounds alternate so drift on a shared machine hits every target alike.
                    results[(proto, name)] = asyncio.run(bench_target(proto, targets[(proto, name)], args, rate))
        lines.append(f"{'proto':<5} {'target':<7} {'req/s':>7} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7}  "
                     f"| open loop {'p50 ms':>7} {'p99 ms':>7} {'+p99 ms':>8} {'errors':>6}")
        for (proto, name), (closed, opened) in results.items():
            base_closed, base_open = results[(proto, "direct")]
            assert opened is not None and base_open is not None
            lines.append(
                f"{proto:<5} {name:<7} {closed.rps:>7.0f} {closed.rps / base_closed.rps:>8.2f} {closed.p50_ms:>7.2f} "
                f"{closed.p99_ms:>7.2f}  |           {opened.p50_ms:>7.2f} {opened.p99_ms:>7.2f} "
                f"{opened.p99_ms - base_open.p99_ms:>+8.2f} {closed.errors + opened.errors:>6}")
    finally:
        if nginx is not None:
            sv.kill_group(nginx.pid, None, 5)
            nginx.wait()
        for record in stop:
            sv.stop(record, 5)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--load", type=float, default=0.5, help="open-loop rate as a share of direct's throughput")
    parser.add_argument("--backends", default="builtin,mlserver",
                        help="comma-separated: builtin, mlserver, mlserver-workers1")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    for backend in args.backends.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
        try:
            for line in run_backend(backend.strip(), tmp, args):
                print(line)
            print()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
