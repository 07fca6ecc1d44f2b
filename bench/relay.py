"""The cheapest proxy the router's libraries allow: a byte relay with no routing, no
stats, no header rules. ``bench/router.py`` runs it as the ``bare`` row, so the router's
cost splits into what its libraries (grpcio's asyncio stack, aiohttp) cost by
themselves and what the router adds on top.

    python bench/relay.py grpc PORT BACKEND_HOST:PORT
    python bench/relay.py rest PORT http://BACKEND_HOST:PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


async def grpc_relay(port: int, backend: str) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(backend)
    calls: dict[str, Any] = {}

    class Relay(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            method = details.method
            call = calls.get(method) or calls.setdefault(method, channel.unary_unary(method))

            async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await call(request, timeout=60)

            return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Relay(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def rest_relay(port: int, backend: str) -> None:
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.request(request.method, backend + request.raw_path, data=body,
                                   headers={"Content-Type": request.headers.get("Content-Type", "")}) as resp:
            payload = await resp.read()
            return web.Response(status=resp.status, body=payload,
                                headers={"Content-Type": resp.headers.get("Content-Type", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    kind, port, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as the router does
    except ImportError:
        pass
    asyncio.run(grpc_relay(port, backend) if kind == "grpc" else rest_relay(port, backend))


if __name__ == "__main__":
    main()
