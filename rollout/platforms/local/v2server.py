"""The project's own Open Inference Protocol V2 server for sklearn models.

Why not always MLServer: it takes ~1.5 s and ~500 MB to start, while this starts in
well under a second with nothing but aiohttp, joblib and numpy, which keeps the local
platform and its tests fast. Its answers follow MLServer's sklearn runtime (output
``predict`` by default, ``predict_proba`` on request, ``[n, 1]`` shapes for 1-D
results) so a rollout can switch between them without clients noticing.

    python -m rollout.platforms.local.v2server --model-dir DIR --name iris --version v1 --port 8080

Beyond infer and health it answers ``GET /v2`` (server metadata), model metadata with
the inputs and outputs the model declares, Triton's binary tensor extension (request
and answer bodies of JSON followed by raw tensor bytes, ``Inference-Header-Content-Length``
giving the JSON's length), and refuses bodies over ``--body-limit-bytes`` with 413:
enough for tritonclient and schemathesis to use it as a stand-in for MLServer in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import struct
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("rollout.v2server")

DATATYPE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_KIND_TO_DATATYPE = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64", "U": "BYTES", "S": "BYTES", "O": "BYTES"}
SUPPORTED_OUTPUTS = ("predict", "predict_proba", "transform")
BINARY_HEADER = "Inference-Header-Content-Length"
DEFAULT_BODY_LIMIT_BYTES = 64 * 1024 * 1024
EXTENSIONS = ["binary_tensor_data"]


class RequestError(Exception):
    """The request is malformed (HTTP 400); the message names the field."""


def _binary_bytes(values: list[bytes]) -> bytes:
    """BYTES elements in the binary extension: each a 4-byte little-endian length, then it."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _unpack_bytes(raw: bytes, name: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise RequestError(f"input {name!r}: truncated BYTES element in binary data")
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def decode_input(inp: dict[str, Any], binary: bytes | None = None) -> Any:
    """One V2 input tensor -> numpy array of its declared shape and datatype; ``binary``
    is its raw bytes when the request used the binary tensor extension."""
    import numpy as np

    if not isinstance(inp, dict):
        raise RequestError("each input must be a JSON object")
    for key in ("name", "shape", "datatype") + (() if binary is not None else ("data",)):
        if key not in inp:
            raise RequestError(f"input is missing {key!r}")
    datatype = inp["datatype"]
    if not isinstance(inp["shape"], list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in inp["shape"]):
        raise RequestError(f"input {inp['name']!r}: shape must be a list of integers")
    if datatype == "BYTES":
        data = _unpack_bytes(binary, inp["name"]) if binary is not None else inp["data"]
        arr = np.array(data, dtype=object)
    elif datatype in DATATYPE_TO_NUMPY and binary is not None:
        dtype = np.dtype(DATATYPE_TO_NUMPY[datatype]).newbyteorder("<")
        if len(binary) % dtype.itemsize:
            raise RequestError(f"input {inp['name']!r}: {len(binary)} bytes is not a whole number of {datatype}")
        arr = np.frombuffer(binary, dtype=dtype)
    elif datatype in DATATYPE_TO_NUMPY:
        try:
            arr = np.array(inp["data"], dtype=DATATYPE_TO_NUMPY[datatype])
        except (TypeError, ValueError) as exc:
            raise RequestError(f"input {inp['name']!r}: data is not {datatype}: {exc}") from exc
    else:
        raise RequestError(f"input {inp['name']!r}: unsupported datatype {datatype!r}")
    try:
        return arr.reshape(inp["shape"])
    except ValueError as exc:
        raise RequestError(f"input {inp['name']!r}: data does not fit shape {inp['shape']}: {exc}") from exc


def encode_output(name: str, value: Any, binary: bool = False) -> tuple[dict[str, Any], bytes]:
    """A numpy result -> V2 output tensor, shaped like MLServer's NumpyCodec, and its raw
    bytes when ``binary`` (the binary tensor extension: data then leaves the JSON)."""
    import numpy as np

    arr = np.asarray(value)
    shape = list(arr.shape)
    if len(shape) == 1:
        shape.append(1)
    datatype = NUMPY_KIND_TO_DATATYPE.get(arr.dtype.kind, "BYTES")
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype, "parameters": {"content_type": "np"}}
    if binary:
        if datatype == "BYTES":
            raw = _binary_bytes([str(x).encode() for x in arr.flatten().tolist()])
        else:
            raw = np.ascontiguousarray(arr, dtype=np.dtype(DATATYPE_TO_NUMPY[datatype]).newbyteorder("<")).tobytes()
        tensor["parameters"]["binary_data_size"] = len(raw)
        return tensor, raw
    data = arr.flatten().tolist()
    if datatype == "BYTES":
        data = [str(x) for x in data]
    tensor["data"] = data
    return tensor, b""


def split_binary_body(body: bytes, header: str | None) -> tuple[Any, bytes]:
    """(JSON part, binary part) of a request body under the binary tensor extension."""
    if header is None:
        return json.loads(body), b""
    try:
        n = int(header)
    except ValueError:
        raise RequestError(f"{BINARY_HEADER} must be an integer, got {header!r}") from None
    if not 0 <= n <= len(body):
        raise RequestError(f"{BINARY_HEADER} {n} is outside the body's {len(body)} bytes")
    return json.loads(body[:n]), body[n:]


class ModelServer:
    """Holds one loaded model and answers V2 requests for it."""

    def __init__(self, model: Any, name: str, version: str) -> None:
        self.model = model
        self.name = name
        self.version = version

    def _check_name(self, request: web.Request) -> None:
        name = request.match_info["name"]
        if name != self.name:
            raise web.HTTPNotFound(
                text=f'{{"error": "model {name!r} not found; this server serves {self.name!r}"}}',
                content_type="application/json",
            )
        version = request.match_info.get("version")
        if version is not None and version != self.version:
            raise web.HTTPNotFound(
                text=f'{{"error": "version {version!r} of {name!r} not found; this server serves {self.version!r}"}}',
                content_type="application/json",
            )

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def model_ready(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response({"name": self.name, "ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        import rollout

        return web.json_response({"name": "rollout-v2server", "version": getattr(rollout, "__version__", "0"),
                                  "extensions": EXTENSIONS})

    def model_metadata(self) -> dict[str, Any]:
        """Inputs and outputs as the model declares them (``n_features_in_``, the
        outputs it can compute), with -1 for the batch dimension."""
        features = getattr(self.model, "n_features_in_", None)
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, int(features)] if features else [-1, -1]}]
        outputs = [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]
        if hasattr(self.model, "predict_proba"):
            classes = getattr(self.model, "classes_", None)
            outputs.append({"name": "predict_proba", "datatype": "FP64",
                            "shape": [-1, len(classes) if classes is not None else -1]})
        return {"name": self.name, "versions": [self.version], "platform": "sklearn",
                "inputs": inputs, "outputs": outputs}

    async def metadata(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response(self.model_metadata())

    async def infer(self, request: web.Request) -> web.Response:
        self._check_name(request)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return web.json_response({"error": f"request body over the limit of {request.client_max_size} bytes: "
                                      f"{exc.text}"}, status=413)
        try:
            body, binary = split_binary_body(raw, request.headers.get(BINARY_HEADER))
            if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
                raise RequestError("request body must be a JSON object with a non-empty 'inputs' list")
            X = decode_input(body["inputs"][0], self._input_bytes(body["inputs"], binary))
            requested = body.get("outputs") or []
            if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
                raise RequestError("'outputs' must be a list of objects with a 'name'")
            all_binary = bool((body.get("parameters") or {}).get("binary_data_output", False))
            wanted = [(o.get("name"), bool((o.get("parameters") or {}).get("binary_data", all_binary)))
                      for o in requested] or [("predict", all_binary)]
            for out, _ in wanted:
                if out not in SUPPORTED_OUTPUTS:
                    raise RequestError(f"output {out!r} is not supported; use one of {list(SUPPORTED_OUTPUTS)}")
        except (RequestError, ValueError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            # predict runs in a thread: a slow model must not stall health checks.
            encoded = await asyncio.to_thread(self._predict, X, wanted)
        except Exception as exc:  # the model's own failure is the client's 500
            log.warning("predict failed: %s: %s", type(exc).__name__, exc)
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        response: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "parameters": {"content_type": "np"},
            "outputs": [tensor for tensor, _ in encoded],
        }
        if "id" in body:
            response["id"] = body["id"]
        blobs = b"".join(raw_out for _, raw_out in encoded)
        if not any(binary_out for _, binary_out in wanted):
            return web.json_response(response)
        header = json.dumps(response).encode()
        return web.Response(body=header + blobs, content_type="application/octet-stream",
                            headers={BINARY_HEADER: str(len(header))})

    @staticmethod
    def _input_bytes(inputs: list[Any], binary: bytes) -> bytes | None:
        """The first input's raw bytes if it came under the binary extension."""
        first = inputs[0]
        size = (first.get("parameters") or {}).get("binary_data_size") if isinstance(first, dict) else None
        if size is None:
            return None
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise RequestError(f"input {first.get('name')!r}: binary_data_size {size!r} does not fit the "
                               f"{len(binary)} binary bytes sent")
        return binary[:size]

    def _predict(self, X: Any, wanted: list[tuple[str, bool]]) -> list[tuple[dict[str, Any], bytes]]:
        return [encode_output(name, getattr(self.model, name)(X), binary) for name, binary in wanted]


def build_app(model: Any, name: str, version: str, body_limit_bytes: int = DEFAULT_BODY_LIMIT_BYTES) -> web.Application:
    return app_for(ModelServer(model, name, version), body_limit_bytes)


def app_for(server: ModelServer, body_limit_bytes: int = DEFAULT_BODY_LIMIT_BYTES) -> web.Application:
    app = web.Application(client_max_size=body_limit_bytes)
    app.router.add_get("/v2", server.server_metadata)
    app.router.add_get("/v2/", server.server_metadata)
    app.router.add_get("/v2/health/live", server.live)
    app.router.add_get("/v2/health/ready", server.ready)
    app.router.add_get("/v2/models/{name}", server.metadata)
    app.router.add_get("/v2/models/{name}/ready", server.model_ready)
    app.router.add_post("/v2/models/{name}/infer", server.infer)
    app.router.add_get("/v2/models/{name}/versions/{version}", server.metadata)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", server.model_ready)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", server.infer)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Open Inference Protocol V2 server for one sklearn model")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--body-limit-bytes", type=int, default=DEFAULT_BODY_LIMIT_BYTES)
    parser.add_argument("--grpc-port", type=int, default=None, help="also serve V2 gRPC on this port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import joblib

    path = args.model_dir / "model.joblib"
    try:
        model = joblib.load(path)
    except Exception as exc:
        log.error("cannot load %s: %s: %s", path, type(exc).__name__, exc)
        sys.exit(3)
    log.info("loaded %s as %s:%s, listening on %s:%d", path, args.name, args.version, args.host, args.port)
    server = ModelServer(model, args.name, args.version)
    try:
        asyncio.run(serve(server, args.host, args.port, args.grpc_port, args.body_limit_bytes))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        sys.exit(4)


async def serve(server: ModelServer, host: str, port: int, grpc_port: int | None, body_limit_bytes: int) -> None:
    """REST and, with ``grpc_port``, gRPC on one event loop until a signal ends it."""
    runner = web.AppRunner(app_for(server, body_limit_bytes), access_log=None, handle_signals=True)
    await runner.setup()
    grpc_server = None
    try:
        if grpc_port is not None:  # before REST: ready on REST means both are up
            from rollout.platforms.local import v2grpc

            grpc_server = await v2grpc.start(server, host, grpc_port, body_limit_bytes)
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(None)  # retire drained it already: no grace to wait out
        await runner.cleanup()


if __name__ == "__main__":
    main()
