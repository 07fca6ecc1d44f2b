"""The project's own Open Inference Protocol V2 server for sklearn models.

Why not always MLServer: it takes ~1.5 s and ~500 MB to start, while this starts in
well under a second with nothing but aiohttp, joblib and numpy, which keeps the local
platform and its tests fast. Its answers follow MLServer's sklearn runtime (output
``predict`` by default, ``predict_proba`` on request, ``[n, 1]`` shapes for 1-D
results) so a rollout can switch between them without clients noticing.

    python -m rollout.platforms.local.v2server --model-dir DIR --name iris --version v1 --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import logging
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


class RequestError(Exception):
    """The request is malformed (HTTP 400); the message names the field."""


def decode_input(inp: dict[str, Any]) -> Any:
    """One V2 input tensor -> numpy array of its declared shape and datatype."""
    import numpy as np

    for key in ("name", "shape", "datatype", "data"):
        if key not in inp:
            raise RequestError(f"input is missing {key!r}")
    datatype = inp["datatype"]
    if datatype == "BYTES":
        arr = np.array(inp["data"], dtype=object)
    elif datatype in DATATYPE_TO_NUMPY:
        arr = np.array(inp["data"], dtype=DATATYPE_TO_NUMPY[datatype])
    else:
        raise RequestError(f"input {inp['name']!r}: unsupported datatype {datatype!r}")
    try:
        return arr.reshape(inp["shape"])
    except ValueError as exc:
        raise RequestError(f"input {inp['name']!r}: data does not fit shape {inp['shape']}: {exc}") from exc


def encode_output(name: str, value: Any) -> dict[str, Any]:
    """A numpy result -> V2 output tensor, shaped like MLServer's NumpyCodec."""
    import numpy as np

    arr = np.asarray(value)
    shape = list(arr.shape)
    if len(shape) == 1:
        shape.append(1)
    datatype = NUMPY_KIND_TO_DATATYPE.get(arr.dtype.kind, "BYTES")
    data = arr.flatten().tolist()
    if datatype == "BYTES":
        data = [str(x) for x in data]
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": {"content_type": "np"}, "data": data}


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

    async def metadata(self, request: web.Request) -> web.Response:
        self._check_name(request)
        return web.json_response(
            {"name": self.name, "versions": [self.version], "platform": "sklearn", "inputs": [], "outputs": []}
        )

    async def infer(self, request: web.Request) -> web.Response:
        self._check_name(request)
        try:
            body = await request.json()
            if not isinstance(body, dict) or not body.get("inputs"):
                raise RequestError("request body must be a JSON object with a non-empty 'inputs' list")
            X = decode_input(body["inputs"][0])
            wanted = [o.get("name") for o in body.get("outputs") or []] or ["predict"]
            for out in wanted:
                if out not in SUPPORTED_OUTPUTS:
                    raise RequestError(f"output {out!r} is not supported; use one of {list(SUPPORTED_OUTPUTS)}")
        except (RequestError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            # predict runs in a thread: a slow model must not stall health checks.
            outputs = await asyncio.to_thread(self._predict, X, wanted)
        except Exception as exc:  # the model's own failure is the client's 500
            log.warning("predict failed: %s: %s", type(exc).__name__, exc)
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        response: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "parameters": {"content_type": "np"},
            "outputs": outputs,
        }
        if "id" in body:
            response["id"] = body["id"]
        return web.json_response(response)

    def _predict(self, X: Any, wanted: list[str]) -> list[dict[str, Any]]:
        return [encode_output(name, getattr(self.model, name)(X)) for name in wanted]


def build_app(model: Any, name: str, version: str) -> web.Application:
    server = ModelServer(model, name, version)
    app = web.Application()
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
    web.run_app(build_app(model, args.name, args.version), host=args.host, port=args.port,
                access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
