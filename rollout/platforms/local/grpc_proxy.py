"""The router's V2 gRPC side: every gRPC method proxied as raw bytes.

A grpcio generic handler takes each call without decoding its messages and forwards
the untouched bytes, metadata and deadline to one version's gRPC port. Split, pinning,
mirroring and stats are the REST side's (``Router``), so a version's numbers are the
same whichever protocol its clients speak. Which version serves a call:

- ``ModelInfer``: split by weight, or the version named in ``model_version`` (pinned);
  mirrored like REST inference.
- ``ModelStreamInfer`` (bidirectional): the whole stream goes to one version, chosen
  by weight when the stream opens, or the version the first request pins. Each request
  message counts as one inference of that version, answered when the next answer
  message arrives (streams are not mirrored). Only the client's own deadline applies.
- ``ModelMetadata``, ``ModelReady``, ``ModelConfig``, ``ModelStatistics``: the pinned
  version, else stable.
- Everything else (server health and metadata, Triton's repository, shared-memory,
  trace and log methods, any other service): stable, unread.

The answering version is in the trailing metadata ``x-rollout-version`` (trailing, so
the answer goes back in one write; the backend's own initial metadata is passed on
when it sends any). Messages are read only for ``model_name``/``model_version``
(``wire``); tensors are decoded only in the shadow comparison, off the caller's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Callable

import grpc

from rollout.platforms.local.routing import VERSION_HEADER, RouterConfig
from rollout.platforms.local.stats import HEALTH, LIVE, METADATA, OTHER, PINNED, SHADOW, outputs_agree
from rollout.platforms.local.tensors import TensorError
from rollout.platforms.local.wire import WireError, infer_outputs, model_and_version

log = logging.getLogger("rollout.router.grpc")

SERVICE = "inference.GRPCInferenceService"
# Unary methods whose request starts with (name = 1, version = 2), and the kind of each.
MODEL_METHODS = {"ModelInfer": LIVE, "ModelMetadata": METADATA, "ModelReady": HEALTH}
SERVER_METHODS = {"ServerLive": HEALTH, "ServerReady": HEALTH, "ServerMetadata": METADATA}
STREAM_INFER = "ModelStreamInfer"
# Triton's unary methods that name a model version the same way: pinned, else stable.
PINNABLE = {"ModelConfig": METADATA, "ModelStatistics": OTHER}
# Triton's other unary methods: stable, unread.
TRITON_METHODS = frozenset({
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
})
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
_END = object()
# A backend that cannot be reached is tried again this soon (grpc's default backoff grows
# to 120 s, during which every call to a restarted server would still fail or fail over).
_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
              ("grpc.max_reconnect_backoff_ms", 1000)]
CONNECT_TIMEOUT_S = 5.0  # as the nginx plane's proxy_connect_timeout and grpc_connect_timeout
_READY = grpc.ChannelConnectivity.READY
_UNREACHABLE = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


async def unreachable(channel: grpc.aio.Channel, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a call on ``channel`` now would fail before it is sent: the channel has no
    connection and its attempt to make one failed (a server whose process is gone refuses
    it). Decided before the call, because grpcio does not say afterwards whether a call
    that failed with UNAVAILABLE reached the server; only one that cannot have is resent
    to another version. Costs nothing while the channel is connected."""
    state = channel.get_state(try_to_connect=True)
    if state is _READY:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while state is not _READY:
        if state in _UNREACHABLE:
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False  # still connecting: the call decides, as before
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except asyncio.TimeoutError:
            return False
        state = channel.get_state(try_to_connect=True)
    return False


def http_code(code: grpc.StatusCode) -> int:
    return GRPC_TO_HTTP.get(code, 500)


_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def http_code_of_status(number: int) -> int:
    """``http_code`` of a gRPC status given as its number (as the nginx front sees it)."""
    code = _BY_NUMBER.get(number)
    return http_code(code) if code is not None else 500


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple(m for m in context.invocation_metadata() or () if m[0] not in _NOT_FORWARDED)


def _error_details(exc: grpc.aio.AioRpcError, version: str, target: str) -> str:
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and not exc.initial_metadata():
        details = f"backend {version} unreachable over gRPC at {target}: {details}"
    return details


def compare_outputs(stable: bytes, shadow: bytes, rtol: float, atol: float) -> str:
    """``agree``/``disagree`` on two ModelInferResponses' outputs, with the float
    tolerance of the REST comparison; ``error`` if either cannot be read."""
    try:
        agree = outputs_agree(infer_outputs(stable), infer_outputs(shadow), rtol, atol)
    except (WireError, TensorError):
        return "error"
    return "agree" if agree else "disagree"


class GrpcProxy(grpc.GenericRpcHandler):
    """Routes each gRPC call with the REST router's config, stats and metrics."""

    def __init__(self, router: Any, max_message_bytes: int) -> None:
        self.router = router
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unary_calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        self._stream_calls: dict[tuple[str, str], grpc.aio.StreamStreamMultiCallable] = {}
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            options = [("grpc.max_send_message_length", self.max_message_bytes),
                       ("grpc.max_receive_message_length", self.max_message_bytes), *_RECONNECT]
            ch = self._channels[target] = grpc.aio.insecure_channel(target, options=options)
        return ch

    def unary(self, target: str, full: str) -> grpc.aio.UnaryUnaryMultiCallable:
        found = self._unary_calls.get((target, full))
        if found is None:
            found = self._unary_calls[(target, full)] = self.channel(target).unary_unary(full)
        return found

    def stream(self, target: str, full: str) -> grpc.aio.StreamStreamMultiCallable:
        found = self._stream_calls.get((target, full))
        if found is None:
            found = self._stream_calls[(target, full)] = self.channel(target).stream_stream(full)
        return found

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        full = details.method
        handler = self._handlers.get(full)
        if handler is None:
            service, _, method = full.lstrip("/").partition("/")
            if service == SERVICE and (method in MODEL_METHODS or method in SERVER_METHODS or method in PINNABLE
                                       or method in TRITON_METHODS):
                handler = grpc.unary_unary_rpc_method_handler(self._unary_handler(full, method))
            else:
                # ModelStreamInfer, and methods of other services whose shape the router
                # cannot know: a stream-stream handler carries any call shape (on the
                # wire a unary call is a stream of one message each way).
                handler = grpc.stream_stream_rpc_method_handler(self._relay_handler(full, service, method))
            if len(self._handlers) < 1024:  # method names come from clients: keep the cache bounded
                self._handlers[full] = handler
        return handler

    # -- unary: the inference path, kept lean ------------------------------------------
    def _unary_handler(self, full: str, method: str) -> Callable[..., Any]:
        router = self.router
        server_kind = SERVER_METHODS.get(method) or (OTHER if method in TRITON_METHODS else None)
        model_kind = MODEL_METHODS.get(method) or PINNABLE.get(method)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            cfg: RouterConfig = router.config
            kind = server_kind
            pinned = ""
            if kind is None:
                kind = model_kind
                try:
                    _, pinned = model_and_version(request)
                except WireError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"request is not a valid {method}Request: {exc}")
                if pinned and kind == LIVE:
                    kind = PINNED
            if pinned and pinned in cfg.grpc_backends:
                version = pinned
            else:  # as on REST: stable's server answers for a version it does not know
                version = cfg.choose() if kind == LIVE else cfg.stable
            target = cfg.grpc_backends.get(version) if version is not None else None
            if target is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"model {router.model!r} has no gRPC backend for version {version!r}")
            assert version is not None and target is not None
            other = cfg.candidate if version == cfg.stable else cfg.stable
            other_target = cfg.grpc_backends.get(other) if kind == LIVE and other is not None else None
            mirror = kind == LIVE and version == cfg.stable and cfg.should_mirror()
            started = router.begin(version)  # in flight while its connection is awaited too
            remaining = context.time_remaining()
            try:
                gone = await unreachable(self.channel(target), CONNECT_TIMEOUT_S if remaining is None
                                         else max(0.0, min(CONNECT_TIMEOUT_S, remaining)))
            except BaseException:  # the client cancelled while the router waited: not in flight any more
                router.end(version, kind, http_code(grpc.StatusCode.CANCELLED), started)
                raise
            if gone:
                # As on REST: the chosen version's server cannot be reached, so the call is
                # never sent; it counts against that version as a connection error (stats,
                # analysis), and a live call goes to the other version of the split.
                router.end(version, kind, None, started)
                if other_target is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"backend {version} unreachable over gRPC at {target}",
                                        trailing_metadata=((VERSION_HEADER, version),))
                log.info("backend %s unreachable over gRPC; call sent to %s instead", version, other)
                assert other is not None and other_target is not None
                version, target, mirror = other, other_target, False
                started = router.begin(version)
            metadata = _forwarded(context)
            remaining = context.time_remaining()
            timeout = router.backend_timeout_s if remaining is None else min(router.backend_timeout_s, remaining)
            code = grpc.StatusCode.CANCELLED
            call = self.unary(target, full)(request, metadata=metadata, timeout=timeout)
            try:
                answer = await call
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                failure: grpc.aio.AioRpcError | None = exc
            else:
                failure = None
            finally:
                router.end(version, kind, http_code(code), started)
            if failure is not None:
                initial = tuple(failure.initial_metadata() or ())
                if initial:
                    await context.send_initial_metadata(initial)
                await context.abort(code, _error_details(failure, version, target),
                                    trailing_metadata=(*(failure.trailing_metadata() or ()), (VERSION_HEADER, version)))
            if mirror:
                self._spawn_shadow(cfg, full, request, metadata, answer)
            # The version that answered goes in the response headers (initial metadata),
            # where the nginx front puts it too; an error carries it in its trailers.
            initial = tuple(await call.initial_metadata() or ())
            await context.send_initial_metadata((*initial, (VERSION_HEADER, version)))
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            return answer

        return handle

    # -- everything else: a byte relay of message streams ----------------------------------
    def _relay_handler(self, full: str, service: str, method: str) -> Callable[..., Any]:
        router = self.router
        split = service == SERVICE and method == STREAM_INFER
        base_kind = LIVE if split else OTHER

        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            cfg: RouterConfig = router.config
            it = requests.__aiter__()
            first: Any = _END
            pinned = ""
            if split:  # a stream's client speaks first: its first request names the version
                first = await anext(it, _END)
                if first is not _END:
                    try:
                        _, pinned = model_and_version(first)
                    except WireError as exc:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            f"request is not a valid {method} request: {exc}")
            kind = PINNED if split and pinned else base_kind
            if pinned and pinned in cfg.grpc_backends:
                version = pinned
            else:
                version = cfg.choose() if split else cfg.stable
            target = cfg.grpc_backends.get(version) if version is not None else None
            if target is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"model {router.model!r} has no gRPC backend for version {version!r}")
            assert version is not None and target is not None
            # Streams and other services may be long-lived by design: only the client's
            # deadline applies, not backend_timeout_s.
            timeout = context.time_remaining()
            pending: deque[float] = deque()  # start times of request messages not yet answered
            closed = False

            async def upstream() -> AsyncIterator[bytes]:
                if first is not _END:
                    if split:
                        pending.append(router.begin(version))
                    yield first
                async for message in it:
                    if closed:
                        return
                    if split:
                        pending.append(router.begin(version))
                    yield message

            started = 0.0 if split else router.begin(version)
            code = grpc.StatusCode.CANCELLED
            failure: grpc.aio.AioRpcError | None = None
            call = self.stream(target, full)(upstream(), metadata=_forwarded(context), timeout=timeout)
            try:
                initial = tuple(await call.initial_metadata() or ())
                await context.send_initial_metadata((*initial, (VERSION_HEADER, version)))
                async for answer in call:
                    if pending:
                        router.end(version, kind, 200, pending.popleft())
                    yield answer
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code, failure = exc.code(), exc
            finally:
                closed = True
                if split:
                    while pending:
                        router.end(version, kind, http_code(code), pending.popleft())
                else:
                    router.end(version, kind, http_code(code), started)
                if code == grpc.StatusCode.CANCELLED and failure is None:
                    call.cancel()  # the client went away: so does the backend call
            if failure is not None:
                await context.abort(code, _error_details(failure, version, target),
                                    trailing_metadata=(*(failure.trailing_metadata() or ()), (VERSION_HEADER, version)))
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))

        return handle

    # -- mirroring --------------------------------------------------------------------
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
        coro = self._shadow(candidate, current.grpc_backends[candidate], full, request, metadata, stable_answer,
                            current)
        task = asyncio.get_running_loop().create_task(coro)
        router.shadow_tasks.add(task)
        task.add_done_callback(router.shadow_tasks.discard)

    async def _shadow(self, candidate: str, target: str, full: str, request: bytes,
                      metadata: tuple[tuple[str, Any], ...], stable_answer: bytes, cfg: RouterConfig) -> None:
        router = self.router
        started = router.begin(candidate)
        code = grpc.StatusCode.CANCELLED
        try:
            answer = await self.unary(target, full)(request, metadata=metadata, timeout=router.shadow_timeout_s)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        finally:
            router.end(candidate, SHADOW, http_code(code), started,
                       timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            result = "skipped"  # the shadow's timeout: neither agreement nor the candidate's error
        elif code != grpc.StatusCode.OK:
            result = "error"
        else:
            result = compare_outputs(stable_answer, answer, cfg.float_rtol, cfg.float_atol)
        router.mirror_result(candidate, result)


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
