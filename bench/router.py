"""What does the built-in router cost? One run, side by side, REST and V2 gRPC:

    direct   clients -> model server
    router   clients -> rollout router (this checkout, --data-plane python) -> model server
    front    clients -> rollout router with --data-plane nginx (nginx + Lua in front of it) -> model server
    old      clients -> rollout router as of ``--ab REF`` (a git ref) -> model server
    bare     clients -> a byte relay on the router's libraries, no routing (bench/relay.py)
    nginx    clients -> nginx (proxy_pass / grpc_pass, keepalive upstream) -> model server

Two measurements per target, V2 infer requests of one iris row each:
- closed loop: N concurrent clients back to back; throughput as a ratio to direct;
- open loop: requests started at a fixed rate (``--load`` x direct's throughput),
  the same offered load for every target; p99 and the p99 added over direct.
Targets are measured in ``--rounds`` alternating rounds (direct, router, old, bare, nginx,
direct, ...) and each row pools its rounds, so load from other processes on a shared
machine drifts onto every target alike; the load average is printed before and after.
The ``old`` row is the A/B: the same machine, the same minute, the previous router.
gRPC rows need a server with a gRPC port (both servers have one). Everything runs on
127.0.0.1 and every process started here is stopped at the end.

    python bench/router.py [--requests 3000] [--concurrency 16] [--backends builtin,mlserver] \
        [--protocols rest,grpc] [--rounds 3] [--ab main]

``mlserver-workers1`` runs MLServer with ``parallel_workers: 1`` (inference in a worker
process) instead of the platform's ``0``, to measure what that setting costs.
Note: client, proxy and server share this machine's cores, so absolute numbers are
lower bounds; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from rollout.demo.models import iris_request, make_good_model  # noqa: E402
from rollout.platforms.local import nginx_front  # noqa: E402
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
  client_max_body_size 64m;
  keepalive_requests 1000000;
  upstream model {{ server 127.0.0.1:{backend_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
{grpc_block}}}
"""
NGINX_GRPC = """
  upstream model_grpc {{ server 127.0.0.1:{backend_grpc_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{grpc_port} http2;
    location / {{ grpc_pass grpc://model_grpc; }}
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


def start_nginx(
    prefix: Path, backend_port: int, backend_grpc_port: int | None,
) -> tuple[subprocess.Popen[bytes], int, int | None]:
    """nginx in front of the server: REST always, gRPC (``grpc_pass``) when it has a gRPC port."""
    port = sv.free_port()
    grpc_port = sv.free_port() if backend_grpc_port else None
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    grpc_block = NGINX_GRPC.format(grpc_port=grpc_port, backend_grpc_port=backend_grpc_port) if grpc_port else ""
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend_port=backend_port, grpc_block=grpc_block))
    proc = sv.launch(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], prefix / "nginx.out")
    sv.wait_ready(proc, [f"http://127.0.0.1:{port}/v2/health/ready"], 10, "nginx", prefix / "error.log")
    return proc, port, grpc_port


def start_relay(prefix: Path, kind: str, backend: str) -> tuple[subprocess.Popen[bytes], int]:
    port = sv.free_port()
    log = prefix / f"relay-{kind}.log"
    proc = sv.launch([sys.executable, str(Path(__file__).resolve().parent / "relay.py"), kind, str(port), backend], log)
    # Ready when it accepts connections (a gRPC relay has no HTTP endpoint to poll).
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"relay {kind} did not start: {sv.log_tail(log)}") from None
            time.sleep(0.1)


def start_old_router(prefix: Path, ref: str, state_file: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """The router as of git ``ref`` (its ``rollout`` package exported to ``prefix``),
    for the A/B row: started like the supervisor starts one, on its own state file."""
    src = prefix / "src"
    src.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "rollout"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    port, grpc_port = sv.free_port(), sv.free_port()
    env = sv.child_env()
    env["PYTHONPATH"] = str(src)  # ahead of the editable install: the old package is imported
    log = prefix / "router.log"
    command = [sys.executable, "-m", "rollout.platforms.local.router", "--model", "iris", "--port", str(port),
               "--grpc-port", str(grpc_port), "--state-file", str(state_file)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    sv.wait_ready(proc, [f"http://127.0.0.1:{port}/router/health"], 30, f"router at {ref}", log)
    return proc, port, grpc_port


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
    cpu_us: float = float("nan")  # CPU time of the proxy process(es) per request


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (nginx's worker) so far."""
    if pid is None:
        return 0.0
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        times = p.cpu_times()
        total += times.user + times.system
    return total


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


async def bench_target(kind: str, where: str, args: argparse.Namespace, rate: float | None,
                       pid: int | None = None) -> tuple[Row, Row | None]:
    if kind == "rest":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency * 4))
        one, close = rest_sender(session, where), session.close
    else:
        import grpc

        channel = grpc.aio.insecure_channel(where)
        one, close = grpc_sender(channel), channel.close
    try:
        await closed_loop(one, args.warmup, args.concurrency)
        cpu_before = cpu_seconds(pid)
        closed = await closed_loop(one, args.requests, args.concurrency)
        if pid is not None:
            closed.cpu_us = (cpu_seconds(pid) - cpu_before) / (closed.ok + closed.errors) * 1e6
        opened = await open_loop(one, args.requests // 2, rate) if rate else None
        return closed, opened
    finally:
        await close()


def pooled(rows: list[Row]) -> Row:
    """Rounds of one target as one row: throughput over the summed time, percentiles
    of the rounds' (requests-weighted) values."""
    ok = sum(r.ok for r in rows)
    seconds = sum(r.ok / r.rps for r in rows if r.rps)
    weights = [r.ok for r in rows]

    def weighted(values: list[float]) -> float:
        pairs = sorted(zip(values, weights))
        half, seen = sum(weights) / 2, 0
        for value, w in pairs:
            seen += w
            if seen >= half:
                return value
        return float("nan")

    return Row(ok, sum(r.errors for r in rows), ok / seconds if seconds else float("nan"),
               weighted([r.p50_ms for r in rows]), weighted([r.p99_ms for r in rows]),
               sum(r.cpu_us * r.ok for r in rows) / ok if ok else float("nan"))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run_backend(backend: str, tmp: Path, args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    stop: list[sv.ProcessRecord] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mv = ModelVersion("iris", "v1", str(make_good_model(tmp / "model")))
        server, ready_s = start_backend(tmp / "home", mv, backend)
        stop.append(server)
        router = sv.start_router(tmp / "home", "iris", 0, grpc_port=0)
        stop.append(router)
        config: dict[str, Any] = {"backends": {"v1": server.url}, "stable": "v1"}
        targets: dict[tuple[str, str], str] = {("rest", "direct"): server.url, ("rest", "router"): router.url}
        pids: dict[str, int] = {"router": router.pid}
        backend_grpc = server.extra_ports.get("grpc")
        if backend_grpc:
            config["grpc_backends"] = {"v1": f"127.0.0.1:{backend_grpc}"}
            targets[("grpc", "direct")] = config["grpc_backends"]["v1"]
            targets[("grpc", "router")] = f"127.0.0.1:{router.extra_ports['grpc']}"
        requests.put(router.url + "/router/config", json=config, timeout=5).raise_for_status()
        if nginx_front.missing() is None:
            front = sv.start_router(tmp / "home-front", "iris", 0, grpc_port=0, options={"data_plane": "nginx"})
            stop.append(front)
            requests.put(front.url + "/router/config", json=config, timeout=5).raise_for_status()
            pids["front"] = front.pid
            targets[("rest", "front")] = front.url
            if backend_grpc:
                targets[("grpc", "front")] = f"127.0.0.1:{front.extra_ports['grpc']}"
        else:
            lines.append(f"no front row: {nginx_front.missing()}")
        if args.ab:
            old, old_port, old_grpc = start_old_router(tmp / "old", args.ab, tmp / "old" / "state.json")
            procs.append(old)
            pids["old"] = old.pid
            requests.put(f"http://127.0.0.1:{old_port}/router/config", json=config, timeout=5).raise_for_status()
            targets[("rest", "old")] = f"http://127.0.0.1:{old_port}"
            if backend_grpc:
                targets[("grpc", "old")] = f"127.0.0.1:{old_grpc}"
        relay, relay_port = start_relay(tmp, "rest", server.url)
        procs.append(relay)
        pids["bare"] = relay.pid
        targets[("rest", "bare")] = f"http://127.0.0.1:{relay_port}"
        if backend_grpc:
            grelay, grelay_port = start_relay(tmp, "grpc", f"127.0.0.1:{backend_grpc}")
            procs.append(grelay)
            pids["bare-grpc"] = grelay.pid
            targets[("grpc", "bare")] = f"127.0.0.1:{grelay_port}"
        if shutil.which("nginx"):
            nginx, nginx_port, nginx_grpc = start_nginx(tmp / "nginx", server.port, backend_grpc)
            procs.append(nginx)
            pids["nginx"] = nginx.pid
            targets[("rest", "nginx")] = f"http://127.0.0.1:{nginx_port}"
            if nginx_grpc:
                targets[("grpc", "nginx")] = f"127.0.0.1:{nginx_grpc}"
        else:
            lines.append("nginx not installed: no nginx row")

        lines.append(f"backend {backend}: ready in {ready_s:.2f}s; closed loop: {args.rounds} x {args.requests} "
                     f"requests, {args.concurrency} clients; open loop: {args.rounds} x {args.requests // 2} requests "
                     f"at {args.load:.0%} of direct's throughput; rounds alternate the targets")
        lines.append(f"load average (1, 5, 15 min) before: {load_average()}")
        names = ("direct", "router", "front", "old", "bare", "nginx")
        results: dict[tuple[str, str], tuple[Row, Row | None]] = {}
        for proto in args.protocols.split(","):
            if (proto, "direct") not in targets:
                continue
            closed_direct, _ = asyncio.run(bench_target(proto, targets[(proto, "direct")], args, None))
            rate = closed_direct.rps * args.load
            rounds: dict[str, list[tuple[Row, Row | None]]] = {}
            for i in range(args.rounds):
                for name in names:
                    if (proto, name) in targets:
                        rounds.setdefault(name, []).append(asyncio.run(
                            bench_target(proto, targets[(proto, name)], args, rate,
                                         pids.get("bare-grpc" if (proto, name) == ("grpc", "bare") else name))))
            for name, got in rounds.items():
                results[(proto, name)] = (pooled([c for c, _ in got]), pooled([o for _, o in got if o is not None]))
        lines.append(f"load average (1, 5, 15 min) after:  {load_average()}")
        lines.append(f"{'proto':<5} {'target':<7} {'req/s':>7} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7} "
                     f"{'proxy CPU us/req':>16}  | open loop {'p50 ms':>7} {'p99 ms':>7} {'+p99 ms':>8} {'errors':>6}")
        for (proto, name), (closed, opened) in results.items():
            base_closed, base_open = results[(proto, "direct")]
            assert opened is not None and base_open is not None
            lines.append(
                f"{proto:<5} {name:<7} {closed.rps:>7.0f} {closed.rps / base_closed.rps:>8.2f} {closed.p50_ms:>7.2f} "
                f"{closed.p99_ms:>7.2f} {closed.cpu_us:>16.0f}  |           {opened.p50_ms:>7.2f} {opened.p99_ms:>7.2f} "
                f"{opened.p99_ms - base_open.p99_ms:>+8.2f} {closed.errors + opened.errors:>6}")
        if args.ab:
            for proto in args.protocols.split(","):
                if (proto, "old") in results:
                    new, old = results[(proto, "router")][0], results[(proto, "old")][0]
                    lines.append(f"A/B {proto}: router {new.rps:.0f} req/s vs {args.ab} {old.rps:.0f} req/s "
                                 f"(x{new.rps / old.rps:.2f}); proxy CPU {new.cpu_us:.0f} vs {old.cpu_us:.0f} us/req "
                                 f"(x{new.cpu_us / old.cpu_us:.2f})")
    finally:
        for proc in procs:
            sv.kill_group(proc.pid, None, 5)
            proc.wait()
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
    parser.add_argument("--protocols", default="rest,grpc", help="comma-separated: rest, grpc")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target, pooled")
    parser.add_argument("--ab", default="", metavar="REF",
                        help="also measure the router as of this git ref (e.g. main) in the same run")
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
