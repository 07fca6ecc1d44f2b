"""A backend that records exactly what reached it, for tests of what the router changes
on the way (it must change nothing but hop-by-hop headers and Forwarded).

It runs a real aiohttp server in a thread of the test process on 127.0.0.1, so the
router (a real subprocess) talks HTTP to it over a real socket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

GZIPPED = gzip.compress(json.dumps({"outputs": [{"name": "x", "data": list(range(300))}]}).encode())


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Recorder:
    """``seen``: every request that reached the backend, in order."""

    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _poisoned: set[int] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        conn = id(request.transport)
        # The action is named by the path, or by the header x-recorder (so that an
        # inference path, which the nginx front serves itself, can ask for it too).
        path = request.raw_path
        action = "/v2/" + request.headers.get("x-recorder", "") if "x-recorder" in request.headers else path
        self.seen.append(Seen(request.method, path, [(k.decode("latin-1"), v.decode("latin-1"))
                                                     for k, v in request.raw_headers], body))
        if conn in self._poisoned:
            # The keep-alive race: this connection was "closed by the server" before this
            # request arrived; nothing of an answer is sent.
            self._poisoned.discard(conn)
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if action.startswith("/v2/poison"):
            self._poisoned.add(conn)  # answer normally; the next request on it is reset
        if action.startswith("/v2/reset"):
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if action.startswith("/v2/cut"):
            resp = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(b'{"outputs": [')
            assert request.transport is not None
            request.transport.abort()
            return resp
        if action.startswith("/v2/redirect"):
            return web.Response(status=302, headers={"Location": "/v2/elsewhere"}, body=b"")
        if action.startswith("/v2/gzip"):
            return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        headers = [("Inference-Header-Content-Length", "7"), ("Allow", "GET, POST"), ("Retry-After", "3"),
                   ("Location", "/v2/models/iris"), ("ce-id", "42"), ("ce-type", "io.seldon.inference"),
                   ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Backend", "recorder"),
                   ("Content-Type", "application/x-made-up")]
        resp = web.Response(status=207, reason="Multi Things", body=b'{"ok":1}' + body)
        for k, v in headers:
            resp.headers.add(k, v)
        return resp

    def start(self) -> Recorder:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "recorder did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def last(self) -> Seen:
        return self.seen[-1]

    def json(self) -> Any:
        return [s.__dict__ for s in self.seen]
