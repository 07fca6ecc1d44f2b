"""V2 gRPC (``inference.GRPCInferenceService``) for the builtin server, so tests and the
local platform can exercise the router's gRPC side without MLServer.

It uses the generated Open Inference Protocol classes that tritonclient[grpc] ships
(the same ``inference`` package and field numbers as KServe's and MLServer's protos)
rather than a second generated copy here; without tritonclient the builtin server
speaks REST only (``available()`` says so, and the supervisor then opens no gRPC port).
Inference is the REST side's (``ModelServer``): same outputs, same errors. Besides the
V2 methods it answers Triton's ``ModelStreamInfer`` and ``ModelStatistics`` (counts
only), so the router's streaming and Triton-method paths can be tested without Triton.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily: the supervisor asks available() on every deploy
    import grpc

    from rollout.platforms.local.v2server import ModelServer

CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def available() -> bool:
    """True if the generated protocol classes (tritonclient[grpc]) are installed, told
    without importing them (that takes half a second)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "grpc" / "service_pb2.py").exists() for p in spec.submodule_search_locations) and \
        importlib.util.find_spec("grpc") is not None


def _servicer(server: ModelServer) -> Any:
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    from rollout.platforms.local.v2server import (
        DATATYPE_TO_NUMPY, EXTENSIONS, SUPPORTED_OUTPUTS, RequestError, encode_output,
    )

    def known(name: str, version: str) -> bool:
        return name == server.name and version in ("", server.version)

    async def not_found(context: grpc.aio.ServicerContext, name: str, version: str) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"model {name!r} version {version!r} not found; this server serves "
                            f"{server.name!r} {server.version!r}")

    served = {"success": 0, "failure": 0}  # inference requests answered, for ModelStatistics

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (protocol names)
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ModelReadyResponse(ready=known(request.name, request.version))

        async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerMetadataResponse(name="rollout-v2server", version="1", extensions=EXTENSIONS)

        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            if not known(request.name, request.version):
                await not_found(context, request.name, request.version)
            meta = server.model_metadata()
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensors(**t) for t in meta["inputs"]], outputs=[tensors(**t) for t in meta["outputs"]])

        async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
            """Triton's statistics extension, the counts only (so clients of it work)."""
            if request.name and not known(request.name, request.version):
                await not_found(context, request.name, request.version)
            stats = pb.ModelStatistics(name=server.name, version=server.version,
                                       inference_count=served["success"], execution_count=served["success"])
            stats.inference_stats.success.count = served["success"]
            stats.inference_stats.fail.count = served["failure"]
            return pb.ModelStatisticsResponse(model_stats=[stats])

        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                return await infer(request)
            except Refused as exc:
                await context.abort(exc.code, str(exc))

        async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:  # noqa: N802
            """Triton's streaming inference: one answer per request, in order; a request
            that fails gets its error in the answer and the stream goes on."""
            async for request in requests:
                try:
                    yield pb.ModelStreamInferResponse(infer_response=await infer(request))
                except Refused as exc:
                    yield pb.ModelStreamInferResponse(error_message=str(exc))

    class Refused(Exception):
        def __init__(self, code: grpc.StatusCode, message: str) -> None:
            self.code = code
            super().__init__(message)

    async def infer(request: Any) -> Any:
        try:
            response = await infer_one(request)
        except Refused:
            served["failure"] += 1
            raise
        served["success"] += 1
        return response

    async def infer_one(request: Any) -> Any:
        if not known(request.model_name, request.model_version):
            raise Refused(grpc.StatusCode.NOT_FOUND,
                          f"model {request.model_name!r} version {request.model_version!r} not found; "
                          f"this server serves {server.name!r} {server.version!r}")
        try:
            if not request.inputs:
                raise RequestError("request has no inputs")
            first = request.inputs[0]
            if first.datatype not in DATATYPE_TO_NUMPY:
                raise RequestError(f"input {first.name!r}: unsupported datatype {first.datatype!r}")
            dtype = np.dtype(DATATYPE_TO_NUMPY[first.datatype]).newbyteorder("<")
            if request.raw_input_contents:
                X = np.frombuffer(request.raw_input_contents[0], dtype=dtype)
            else:
                X = np.array(getattr(first.contents, CONTENTS_FIELD[first.datatype]), dtype=dtype)
            try:
                X = X.reshape(list(first.shape))
            except ValueError as exc:
                raise RequestError(f"input {first.name!r}: data does not fit shape {list(first.shape)}") from exc
            wanted = [o.name for o in request.outputs] or ["predict"]
            for name in wanted:
                if name not in SUPPORTED_OUTPUTS:
                    raise RequestError(f"output {name!r} is not supported; use one of {list(SUPPORTED_OUTPUTS)}")
        except RequestError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        try:
            encoded = await asyncio.to_thread(
                lambda: [encode_output(n, getattr(server.model, n)(X), binary=True) for n in wanted])
        except Exception as exc:  # the model's own failure
            raise Refused(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from exc
        response = pb.ModelInferResponse(model_name=server.name, model_version=server.version, id=request.id)
        for tensor, raw in encoded:
            response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
            response.raw_output_contents.append(raw)
        return response

    return Servicer(), pb_grpc.add_GRPCInferenceServiceServicer_to_server


async def start(server: ModelServer, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server:
    import grpc

    servicer, add = _servicer(server)
    grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                           ("grpc.max_send_message_length", max_message_bytes)])
    add(servicer, grpc_server)
    if grpc_server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await grpc_server.start()
    return grpc_server
