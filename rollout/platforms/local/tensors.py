"""Raw tensor bytes of the Open Inference Protocol as values, for the shadow comparison.

The same little-endian layout is used by gRPC's ``raw_output_contents`` and by REST's
binary tensor extension, so both protocols' answers reduce to the JSON shape
``{"outputs": [{"name", "datatype", "shape", "data"}]}`` and are compared by one
function (``stats.outputs_agree``) with one float tolerance. Only the shadow comparison
decodes tensors; answers to clients are never touched.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# Datatype -> numpy dtype of one element, little endian (the protocol's byte order).
NUMPY_DTYPES = {
    "BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


class TensorError(ValueError):
    """Tensor bytes that do not fit their datatype."""


def raw_values(datatype: str, raw: bytes) -> list[Any]:
    """The elements of one raw tensor as a flat list: numbers for numeric types, bytes
    for BYTES (each element a 4-byte little-endian length, then that many bytes)."""
    if datatype == "BYTES":
        out: list[Any] = []
        i = 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise TensorError("BYTES tensor: element length runs past the end")
            (n,) = struct.unpack_from("<I", raw, i)
            i += 4
            if i + n > len(raw):
                raise TensorError("BYTES tensor: element runs past the end")
            out.append(bytes(raw[i:i + n]))
            i += n
        return out
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise TensorError(f"datatype {datatype!r} is not one the protocol defines")
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise TensorError(f"{datatype} tensor of {len(raw)} bytes is not a whole number of elements")
    return list(np.frombuffer(raw, dtype=dtype).tolist())
