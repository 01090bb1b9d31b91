#!/usr/bin/env python3
"""Writes hostile or damaged variants of a RESULT file for the CLI tests (standalone: no axeq
package, so it does not share code with the readers it attacks).

usage: mutate_result.py KIND IN OUT
  drop-certificate   remove the first layer's certificate and set its codes to +7 (they overflow)
  forge-input-bits   set every code to +7 and claim input_bits 62 with a self-consistent-looking
                     certificate that says SAFE
  drop-scales        remove the first layer's .scales tensor
  v1-group-zero      rewrite as a version-1 file with axeq.group_size = "0" (the old writers' bug)
  huge-shape         a header whose shape's element count overflows int64
"""
import hashlib
import json
import struct
import sys


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {k: (v["dtype"], v["shape"], bytearray(data[v["data_offsets"][0]:v["data_offsets"][1]]))
               for k, v in header.items()}
    return tensors, meta


def write(path, tensors, meta):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, b = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(bytes(b))
        off += len(b)
    header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def layers(meta):
    if "axeq.layers" in meta:
        return json.loads(meta["axeq.layers"])
    return sorted(k[: -len(".certificate")] for k in meta if k.endswith(".certificate"))


def main():
    kind, src, dst = sys.argv[1:4]
    if kind == "huge-shape":
        h = json.dumps({"x.qweight": {"dtype": "I8", "shape": [4294967296, 4294967296, 8],
                                      "data_offsets": [0, 0]}}).encode()
        open(dst, "wb").write(struct.pack("<Q", len(h)) + h)
        return
    tensors, meta = read(src)
    first = layers(meta)[0]
    if kind == "drop-certificate":
        del meta[first + ".certificate"]
        dtype, shape, b = tensors[first + ".qweight"]
        tensors[first + ".qweight"] = (dtype, shape, bytearray([7]) * len(b))
    elif kind == "forge-input-bits":
        for name in layers(meta):
            dtype, shape, b = tensors[name + ".qweight"]
            b = bytearray([7]) * len(b)
            tensors[name + ".qweight"] = (dtype, shape, b)
            c = json.loads(meta[name + ".certificate"])
            c.update(input_bits=62, input_min=0, input_max=(1 << 62) - 1, weights_sha256=hashlib.sha256(b).hexdigest(),
                     safe=True, unsafe_channels=0)
            meta[name + ".certificate"] = json.dumps(c)
    elif kind == "drop-scales":
        del tensors[first + ".scales"]
    elif kind == "v1-group-zero":
        meta.pop("axeq.schema_version", None)
        meta.pop("axeq.layers", None)
        meta["axeq.group_size"] = "0"
    else:
        sys.exit(f"unknown kind {kind}")
    write(dst, tensors, meta)


if __name__ == "__main__":
    main()
