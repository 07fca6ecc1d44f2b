"""Reading Open Inference Protocol protobuf messages without generated classes.

The gRPC proxy routes on two short strings of a request (``model_name`` = 1,
``model_version`` = 2: the same numbers in ModelInferRequest, ModelMetadataRequest,
ModelReadyRequest, ModelConfigRequest and ModelStatisticsRequest) and must not decode
(and copy) the tensors to find them; the shadow comparison needs the outputs of an
answer as values. The wire format (varints, tag = field << 3 | wire type) is a stable
published spec; ``tests/protocol`` checks this reader against the generated classes
tritonclient ships. Every length is checked, so a truncated message is a WireError and
never half-read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from rollout.platforms.local.tensors import TensorError, raw_values


class WireError(ValueError):
    """The message is not valid protobuf wire format (or not the expected message)."""


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


def fields(buf: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Walk a protobuf message without decoding it: (field number, wire type, where the
    value starts, where it ends) for each field. For a length-delimited field (wire type
    2) ``buf[start:end]`` is the payload; for the others it is the encoded value."""
    i = 0
    n = len(buf)
    while i < n:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        start = i
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, start = _varint(buf, i)
            i = start + length
        else:
            raise WireError(f"wire type {wire} is not supported")
        if i > n:
            raise WireError(f"field {field} runs past the end")
        yield field, wire, start, i


def _text(buf: memoryview, field: int) -> str:
    try:
        return bytes(buf).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field {field} is not UTF-8") from exc


def model_and_version(message: bytes) -> tuple[str, str]:
    """Fields 1 and 2 (strings) of a protobuf message, skipping everything else without
    copying it. The last occurrence wins, as in protobuf itself."""
    buf = memoryview(message)
    found = {1: "", 2: ""}
    for field, wire, start, end in fields(buf):
        if wire == 2 and field in found:
            found[field] = _text(buf[start:end], field)
    return found[1], found[2]


def _varints(buf: memoryview, start: int, end: int, wire: int, signed: bool) -> list[int]:
    """A repeated integer field's values: packed (wire 2) or one value (wire 0)."""
    out = []
    i = start
    while i < end:
        value, i = _varint(buf, i)
        if signed and value >= 1 << 63:  # negative int32/int64: ten-byte two's complement
            value -= 1 << 64
        out.append(value)
        if wire == 0:
            break
    return out


# InferTensorContents: field number -> (kind, signed or struct format)
_CONTENTS = {1: ("varint", False), 2: ("varint", True), 3: ("varint", True), 4: ("varint", False),
             5: ("varint", False), 6: ("fixed", "<f"), 7: ("fixed", "<d"), 8: ("bytes", None)}


def _contents(buf: memoryview) -> list[Any]:
    values: list[Any] = []
    for field, wire, start, end in fields(buf):
        kind, how = _CONTENTS.get(field, (None, None))
        if kind == "varint":
            values.extend(_varints(buf, start, end, wire, bool(how)))
        elif kind == "fixed":
            chunk = bytes(buf[start:end])
            size = struct.calcsize(str(how))
            if len(chunk) % size:
                raise WireError(f"contents field {field} is not a whole number of values")
            values.extend(v for (v,) in struct.iter_unpack(str(how), chunk))
        elif kind == "bytes":
            values.append(bytes(buf[start:end]))
    return values


def _output_tensor(buf: memoryview) -> dict[str, Any]:
    """One ModelInferResponse.InferOutputTensor: name 1, datatype 2, shape 3, contents 5."""
    tensor: dict[str, Any] = {"name": "", "datatype": "", "shape": [], "data": []}
    for field, wire, start, end in fields(buf):
        if field == 1 and wire == 2:
            tensor["name"] = _text(buf[start:end], field)
        elif field == 2 and wire == 2:
            tensor["datatype"] = _text(buf[start:end], field)
        elif field == 3 and wire in (0, 2):
            tensor["shape"].extend(_varints(buf, start, end, wire, True))
        elif field == 5 and wire == 2:
            tensor["data"] = _contents(buf[start:end])
    return tensor


def infer_outputs(message: bytes) -> dict[str, Any]:
    """The outputs of a ModelInferResponse in the REST answer's JSON shape,
    ``{"outputs": [{"name", "datatype", "shape", "data"}]}`` with ``data`` flat, from
    ``contents`` or from ``raw_output_contents`` (field 6, one per output, in order).
    Name, version and id (fields 1-3) legitimately differ between two versions."""
    buf = memoryview(message)
    outputs: list[dict[str, Any]] = []
    raws: list[bytes] = []
    for field, wire, start, end in fields(buf):
        if field == 5 and wire == 2:
            outputs.append(_output_tensor(buf[start:end]))
        elif field == 6 and wire == 2:
            raws.append(bytes(buf[start:end]))
    if raws:
        if len(raws) != len(outputs):
            raise WireError(f"{len(raws)} raw output contents for {len(outputs)} outputs")
        try:
            for tensor, raw in zip(outputs, raws):
                tensor["data"] = raw_values(tensor["datatype"], raw)
        except TensorError as exc:
            raise WireError(str(exc)) from exc
    return {"outputs": outputs}

