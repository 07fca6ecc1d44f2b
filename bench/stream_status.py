"""How often does a gRPC stream that the server ends early reach the client with the
server's status? MLServer ends a ModelStreamInfer stream for an unknown model at its
first request; a client that sends more requests races that status. Counted three ways
in one run: through the router, straight to MLServer with grpcio's sync client, and
straight to MLServer with grpcio's asyncio client (the client the router relays with:
grpc/grpc#36066 makes a write after the status overwrite it with INTERNAL).

    .venv/bin/python bench/stream_status.py --streams 300 --requests 3
    .venv/bin/python bench/stream_status.py --streams 300 --requests 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
from pathlib import Path

import grpc
import requests
from tritonclient.grpc import service_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rollout.demo.models import make_good_model  # noqa: E402
from rollout.platforms.local import supervisor as sv  # noqa: E402
from rollout.registry.base import ModelVersion  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def messages(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        req = pb.ModelInferRequest(model_name="no-such-model", id=f"s-{i}")
        inp = req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        inp.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
        out.append(req.SerializeToString())
    return out


def sync_codes(target: str, streams: int, n: int) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(METHOD)
        for _ in range(streams):
            try:
                list(call(iter(messages(n)), timeout=60))
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    return codes


async def aio_codes(target: str, streams: int, n: int) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(METHOD)
        for _ in range(streams):
            async def requests_of() -> object:
                for m in messages(n):
                    yield m
            try:
                async for _ in call(requests_of(), timeout=60):
                    pass
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--requests", type=int, default=3, help="requests per stream")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stream-status-"))
    home = root / "home"
    model = make_good_model(root / "model", seed=0)
    started = []
    try:
        server = sv.start_server(home, ModelVersion("iris", "v1", str(model)), sv.MLSERVER, 120)
        started.append(server)
        router = sv.start_router(home, "iris", 0, grpc_port=0, options={"data_plane": "python"})
        started.append(router)
        direct = f"127.0.0.1:{server.extra_ports['grpc']}"
        requests.put(router.url + "/router/config", timeout=5, json={
            "backends": {"v1": server.url}, "grpc_backends": {"v1": direct}, "stable": "v1",
        }).raise_for_status()
        rows = {
            "through the router": sync_codes(f"127.0.0.1:{router.extra_ports['grpc']}", args.streams, args.requests),
            "direct, sync client": sync_codes(direct, args.streams, args.requests),
            "direct, asyncio client": asyncio.run(aio_codes(direct, args.streams, args.requests)),
        }
    finally:
        for record in reversed(started):
            sv.stop(record, 5.0)
    print(f"{args.streams} streams of {args.requests} request(s) for an unknown model, MLServer, grpcio {grpc.__version__}")
    for name, codes in rows.items():
        print(f"  {name:<24} " + ", ".join(f"{code} {n}" for code, n in codes.most_common()))


if __name__ == "__main__":
    main()
