"""safetensors files without the safetensors package: the LAYERS / CAL / RESULT formats the axeq
CLI reads and writes (docs/certificate.md), so CLI and Python client exchange files."""
from __future__ import annotations

import json
import os
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64,
           "F64": np.float64, "U8": np.uint8, "I16": np.int16}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def read_safetensors(path):
    """Returns (tensors: dict name -> ndarray, metadata: dict). BF16 is widened to float32."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        buf = data[b:end]
        if e["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif e["dtype"] in _DTYPES:
            arr = np.frombuffer(buf, dtype=_DTYPES[e["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {e['dtype']}")
        out[name] = arr.reshape(e["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors: dict, metadata: dict | None = None):
    """Writes atomically (temporary file + rename)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NAMES:
            a = a.astype(np.float32)
        b = a.tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def write_result(path, results):
    """Writes LayerResults in the CLI's RESULT format (`axeq verify` and `llama2c-eval` read it)."""
    tensors, meta = {}, {"format": "axeq-result", "axeq.group_size": "0"}
    for r in results:
        n = r.name
        tensors[f"{n}.qweight"] = r.codes.astype(np.int8)
        tensors[f"{n}.scales"] = r.scales.astype(np.float32)
        tensors[f"{n}.input_scale"] = np.array(r.activation.scale, dtype=np.float32)
        tensors[f"{n}.input_zero_point"] = np.array(r.activation.zero_point, dtype=np.int32)
        if r.bias is not None:
            tensors[f"{n}.bias"] = r.bias.astype(np.float32)
        meta[f"{n}.certificate"] = json.dumps(r.certificate)
        rep = dict(r.report)
        rep.update({"layer": n, "input_bits": r.activation.bits, "input_signed": r.activation.signed,
                    "input_scale": r.activation.scale, "input_zero_point": r.activation.zero_point})
        meta[f"{n}.report"] = json.dumps(rep)
    write_safetensors(path, tensors, meta)


def read_result(path):
    """Returns {layer: dict(codes, scales, bias, certificate, report)} from a RESULT file."""
    tensors, meta = read_safetensors(path)
    out = {}
    for key, text in meta.items():
        if not key.endswith(".certificate"):
            continue
        n = key[: -len(".certificate")]
        out[n] = {"codes": tensors[f"{n}.qweight"], "scales": tensors[f"{n}.scales"],
                  "bias": tensors.get(f"{n}.bias"), "certificate": json.loads(text),
                  "report": json.loads(meta.get(f"{n}.report", "{}"))}
    return out
