"""The router's V2 gRPC side: ``inference.GRPCInferenceService`` proxied as raw bytes.

A grpcio generic handler takes every unary method of the service without decoding its
message, reads only the two fields it routes on (``model_name`` = 1, ``model_version``
= 2: the same numbers in ModelInferRequest, ModelMetadataRequest and ModelReadyRequest)
and forwards the untouched bytes, metadata and deadline to the chosen version's gRPC
port. Split, pinning, mirroring and stats are the REST side's (``Router``), so a
version's numbers are the same whichever protocol its clients speak.

Why a hand-written field reader and not the generated protobuf classes: parsing a
ModelInferRequest with them decodes (and copies) every tensor to read two short
strings, and the compiled classes would be one more generated artefact to keep in step
with protobuf's runtime. The wire format (varints, tag = field << 3 | wire type) is a
stable published spec; ``tests/protocol`` checks the reader against tritonclient's own
generated classes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import grpc

from rollout.platforms.local.routing import VERSION_HEADER, RouterConfig
from rollout.platforms.local.stats import HEALTH, LIVE, METADATA, PINNED, SHADOW

log = logging.getLogger("rollout.router.grpc")

SERVICE = "inference.GRPCInferenceService"
# Methods whose request starts with (name = 1, version = 2), and the kind each one is.
MODEL_METHODS = {"ModelInfer": LIVE, "ModelMetadata": METADATA, "ModelReady": HEALTH}
SERVER_METHODS = {"ServerLive": HEALTH, "ServerReady": HEALTH, "ServerMetadata": METADATA}
# Same mapping as grpc-gateway / KServe: so a gRPC answer counts like its REST twin.
GRPC_TO_HTTP = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# Metadata grpcio manages itself; passing it on would be refused or duplicated.
_NOT_FORWARDED = frozenset({"user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "te",
                            "content-type", "authority", ":authority"})


class WireError(ValueError):
    """The message is not valid protobuf wire format."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Walk a protobuf message without decoding it: (field number, wire type, where the
    field starts, where it ends) for each field, and for a length-delimited field the
    payload is ``buf[end - n:end]``; every length is checked against the buffer."""
    i = 0
    while i < len(buf):
        start = i
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            i += n
        else:
            raise WireError(f"wire type {wire} is not supported")
        if i > len(buf):
            raise WireError(f"field {field} runs past the end")
        yield field, wire, start, i


def _payload(buf: memoryview, start: int, end: int) -> memoryview:
    """The payload of the length-delimited field that spans ``buf[start:end]``."""
    _, i = _varint(buf, start)
    _, i = _varint(buf, i)
    return buf[i:end]


def model_and_version(message: bytes) -> tuple[str, str]:
    """Fields 1 and 2 (strings) of a protobuf message, skipping everything else without
    copying it. The last occurrence wins, as in protobuf itself."""
    buf = memoryview(message)
    found = {1: "", 2: ""}
    for field, wire, start, end in _fields(buf):
        if wire == 2 and field in found:
            try:
                found[field] = bytes(_payload(buf, start, end)).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise WireError(f"field {field} is not UTF-8") from exc
    return found[1], found[2]


def _outputs_part(message: bytes) -> bytes:
    """The output tensors of a ModelInferResponse (fields 5 and 6: metadata and raw
    contents) as bytes, in order: what a shadow comparison compares. Name, version and
    id (fields 1-3) legitimately differ between two versions' answers."""
    buf = memoryview(message)
    return b"".join(bytes(buf[start:end]) for field, _, start, end in _fields(buf) if field in (5, 6))


def http_code(code: grpc.StatusCode) -> int:
    return GRPC_TO_HTTP.get(code, 500)


class GrpcProxy(grpc.GenericRpcHandler):
    """Routes each V2 gRPC call with the REST router's config, stats and metrics."""

    def __init__(self, router: Any, max_message_bytes: int) -> None:
        self.router = router
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes)]
            ch = self._channels[target] = grpc.aio.insecure_channel(target, options=options)
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = details.method.lstrip("/").partition("/")
        if service != SERVICE or (method not in MODEL_METHODS and method not in SERVER_METHODS):
            return None  # grpcio answers UNIMPLEMENTED
        full = details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.call(full, method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)

    async def call(self, full: str, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        cfg: RouterConfig = self.router.config
        pinned = None
        kind = SERVER_METHODS.get(method)
        if kind is None:
            kind = MODEL_METHODS[method]
            try:
                _, pinned = model_and_version(request)
            except WireError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {method}Request: {exc}")
            pinned = pinned or None
            if pinned is not None and kind == LIVE:
                kind = PINNED
        if pinned is not None and pinned not in cfg.grpc_backends:
            pinned = None  # as on REST: stable's server answers for a version it does not know
        version = pinned or (cfg.choose() if kind == LIVE else cfg.stable)
        if version is None or version not in cfg.grpc_backends:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"model {self.router.model!r} has no gRPC backend for version {version!r}")
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k.lower() not in _NOT_FORWARDED)
        remaining = context.time_remaining()
        timeout = min(self.router.backend_timeout_s, remaining) if remaining is not None else self.router.backend_timeout_s
        mirror = kind == LIVE and version == cfg.stable and cfg.should_mirror()
        code, answer, initial, trailing, details = await self._send(
            version, cfg.grpc_backends[version], full, request, metadata, timeout, kind)
        if mirror and code == grpc.StatusCode.OK:
            self._spawn_shadow(cfg, full, request, metadata, answer)
        await context.send_initial_metadata((*initial, (VERSION_HEADER, version)))
        if code != grpc.StatusCode.OK:
            await context.abort(code, details, trailing_metadata=trailing)
        context.set_trailing_metadata(trailing)
        return answer

    async def _send(
        self, version: str, target: str, full: str, request: bytes, metadata: tuple[tuple[str, Any], ...],
        timeout: float, kind: str,
    ) -> tuple[grpc.StatusCode, bytes, tuple[Any, ...], tuple[Any, ...], str]:
        started = self.router.begin(version)
        code = grpc.StatusCode.UNKNOWN
        own_timeout = False
        try:
            call = self.channel(target).unary_unary(full)(request, metadata=metadata, timeout=timeout)
            try:
                answer = await call
                code = grpc.StatusCode.OK
                return code, answer, tuple(await call.initial_metadata() or ()), tuple(await call.trailing_metadata() or ()), ""
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                own_timeout = code == grpc.StatusCode.DEADLINE_EXCEEDED
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and not exc.initial_metadata():
                    details = f"backend {version} unreachable over gRPC at {target}: {details}"
                return code, b"", tuple(exc.initial_metadata() or ()), tuple(exc.trailing_metadata() or ()), details
        finally:
            self.router.end(version, kind, http_code(code), started, timed_out=own_timeout and kind == SHADOW)

    def _spawn_shadow(self, cfg: RouterConfig, full: str, request: bytes,
                      metadata: tuple[tuple[str, Any], ...], stable_answer: bytes) -> None:
        router = self.router
        current: RouterConfig = router.config
        candidate = cfg.candidate
        if candidate is None or current.candidate != candidate or candidate not in current.grpc_backends:
            return
        if len(router.shadow_tasks) >= router.max_shadow_inflight:
            router.mirror_result(candidate, "skipped")
            return
        coro = self._shadow(candidate, current.grpc_backends[candidate], full, request, metadata, stable_answer)
        task = asyncio.get_running_loop().create_task(coro)
        router.shadow_tasks.add(task)
        task.add_done_callback(router.shadow_tasks.discard)

    async def _shadow(self, candidate: str, target: str, full: str, request: bytes,
                      metadata: tuple[tuple[str, Any], ...], stable_answer: bytes) -> None:
        code, answer, _, _, _ = await self._send(candidate, target, full, request, metadata,
                                                 self.router.shadow_timeout_s, SHADOW)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            result = "skipped"
        elif code != grpc.StatusCode.OK:
            result = "error"
        else:
            try:
                same = _outputs_part(stable_answer) == _outputs_part(answer)
                result = "agree" if same else "disagree"
            except WireError:
                result = "error"
        self.router.mirror_result(candidate, result)


async def start_grpc(router: Any, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    """Start the gRPC proxy for ``router`` on ``host:port``; returns the running server."""
    proxy = GrpcProxy(router, max_message_bytes)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((proxy,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server
