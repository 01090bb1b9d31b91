"""safetensors files without the safetensors package (8-byte little-endian header length, JSON
header, raw little-endian tensor bytes): the LAYERS / CAL / RESULT files the axeq CLI reads and
writes. The reader trusts nothing: every shape, offset and element count is checked with Python
integers before any array is made, so a hostile header is a ValueError, never a MemoryError."""
from __future__ import annotations

import json
import os
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64,
           "F64": np.float64, "U8": np.uint8, "I16": np.int16, "BF16": np.uint16}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}
_INT64_MAX = (1 << 63) - 1
MAX_HEADER_BYTES = 100 << 20


def _entry(path, name, e, data_len):
    """Returns (dtype name, shape tuple, begin, end) of one header entry after checking them."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(e, dict):
        raise ValueError(f"{where}: header entry must be an object")
    dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if dtype not in _DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or any(isinstance(o, bool) or not isinstance(o, int) for o in offsets)):
        raise ValueError(f"{where}: data_offsets must be two integers, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise ValueError(f"{where}: data_offsets [{begin}, {end}] are outside the {data_len} data bytes")
    count = 1
    for d in shape:
        count *= d
        if count > _INT64_MAX:
            raise ValueError(f"{where}: shape {shape} has an element count that overflows int64")
    nbytes = count * np.dtype(_DTYPES[dtype]).itemsize
    if nbytes != end - begin:
        raise ValueError(f"{where}: shape {shape} needs {nbytes} bytes of {dtype}, data_offsets give {end - begin}")
    return dtype, tuple(shape), begin, end


def read_safetensors(path):
    """Returns (tensors: dict name -> ndarray, metadata: dict str -> str). BF16 is widened to
    float32. ValueError on any malformed header, offset or shape."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header length {n} exceeds the file ({len(raw)} bytes) or {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header must be a JSON object")
    data = memoryview(raw)[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or any(not isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    out = {}
    for name, e in header.items():
        dtype, shape, begin, end = _entry(path, name, e, len(data))
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
        if dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.astype(arr.dtype.newbyteorder("=")).reshape(shape)
    return out, meta


def write_safetensors(path, tensors: dict, metadata: dict | None = None):
    """Writes tensors (name -> array; unknown dtypes become float32) and string metadata,
    atomically (temporary file + rename)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype not in _NAMES:
            a = a.astype(np.float32)
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def __getattr__(name):  # read_result / write_result moved to axeq.result
    if name in ("read_result", "write_result"):
        from . import result
        return getattr(result, name)
    raise AttributeError(name)
