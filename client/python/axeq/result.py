"""A quantized layer (LayerResult) and the RESULT file of docs/result-format.md: write_result writes
schema version 2, read_result reads versions 1 and 2 and checks every listed layer (tensors,
dtypes, shapes, group size, certificate against the codes' shape and the report's bit widths),
naming the layer and the field on failure. The C++ twin is formats/result_file.{h,cc}."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .certificate import input_range, verify_certificate
from .config import ActivationQuantizer, Config
from .safetensors import read_safetensors, write_safetensors

SCHEMA_VERSION = 2
_REQUIRED = (".qweight", ".scales", ".input_scale", ".input_zero_point")


@dataclass
class LayerResult:
    name: str
    job_id: str
    codes: np.ndarray            # int8 [C, K]
    scales: np.ndarray           # float32 [C, groups]
    bias: Optional[np.ndarray]   # corrected bias [C] or None
    activation: ActivationQuantizer
    report: dict
    certificate: Optional[dict]
    config: Optional[Config] = None  # what the caller asked for (verify() checks against it)

    @property
    def group_size(self) -> int:
        """G (0 = one scale per channel): the report's, else the requested Config's, else inferred."""
        groups, k = self.scales.shape[1], self.codes.shape[1]
        if groups == 1:
            return 0
        for g in (self.report.get("group_size"), getattr(self.config, "group_size", None)):
            if isinstance(g, int) and not isinstance(g, bool) and g > 0 and -(-k // g) == groups:
                return g
        fits = [g for g in range(1, k + 1) if -(-k // g) == groups]
        if len(fits) != 1:  # never guess: a wrong G dequantizes every column after the first group wrongly
            raise ValueError(f"layer {self.name!r}: {groups} scale groups over K = {k} inputs fit group sizes "
                             f"{fits[:1] + fits[-1:]} (range); give the result its config or report['group_size']")
        return fits[0]

    def dequantized(self) -> np.ndarray:
        """codes * scales as float32 [C, K] (scale of input i: column i // G)."""
        k, g = self.codes.shape[1], self.group_size
        s = self.scales if g == 0 else np.repeat(self.scales, g, axis=1)[:, :k]
        return (self.codes.astype(np.float32) * s).astype(np.float32)

    def verify(self, config: Config | None = None, **pinned):
        """Re-checks the certificate from the codes (never trusts the server) against the hardware:
        pinned P/T/N/signedness/M (verify_certificate's keywords), else the Config that was asked
        for (config, else self.config), else the certificate's own word. Also checks that the
        certificate matches the activation quantizer. Returns a Verdict (consistent, safe, problems)."""
        config = config or self.config
        pins = {}
        if config is not None:
            pins = {"accumulator_bits": config.accumulator_bits, "tile_size": config.tile_size,
                    "twos_complement": config.twos_complement}
            if config.method != "naive":  # the naive method lowers M and N on purpose
                pins.update(input_bits=config.input_bits, inputs_signed=config.signed_inputs,
                            weight_bits=config.weight_bits)
        pins.update(pinned)
        v = verify_certificate(self.codes, self.certificate, **pins)
        cert = self.certificate or {}
        extra = [f"{key}: the certificate says {cert.get(key)!r}, the activation quantizer has {want!r}"
                 for key, want in (("input_bits", self.activation.bits), ("inputs_signed", self.activation.signed))
                 if self.certificate is not None and cert.get(key) != want]
        return v._replace(consistent=v.consistent and not extra, problems=v.problems + extra) if extra else v


def verify_results(results, config: Config | None = None, **pinned) -> dict:
    """Verifies every layer of {name: LayerResult} (or a list); a layer without a certificate fails."""
    items = results.items() if isinstance(results, dict) else ((r.name, r) for r in results)
    return {name: r.verify(config, **pinned) for name, r in items}


def _layers(results):
    return list(results.values()) if isinstance(results, dict) else list(results)


def _report(r: LayerResult) -> dict:
    rep = dict(r.report)
    wb = rep.get("weight_bits") or (r.certificate or {}).get("weight_bits") or getattr(r.config, "weight_bits", None)
    rep.update({"layer": r.name, "group_size": r.group_size, "weight_bits": wb, "input_bits": r.activation.bits,
                "input_signed": r.activation.signed, "input_scale": r.activation.scale,
                "input_zero_point": r.activation.zero_point, "output_channels": int(r.codes.shape[0]),
                "inputs": int(r.codes.shape[1])})
    if r.job_id:
        rep["job_id"] = r.job_id
    return rep


def write_result(path, results, extra_metadata: dict | None = None):
    """Writes LayerResults (a list, or {name: LayerResult}) as a RESULT file of schema version 2.
    `axeq.group_size` is added too when every layer has the same G, for readers of version 1."""
    layers = _layers(results)
    if len({r.name for r in layers}) != len(layers):
        raise ValueError("layer names must be unique")
    tensors = {}
    meta = {"format": "axeq-result", "axeq.schema_version": str(SCHEMA_VERSION),
            "axeq.layers": json.dumps([r.name for r in layers])}
    for r in layers:
        if r.certificate is None:
            raise ValueError(f"layer {r.name!r}: no certificate to write")
        n = r.name
        tensors[f"{n}.qweight"] = np.asarray(r.codes, dtype=np.int8)
        tensors[f"{n}.scales"] = np.asarray(r.scales, dtype=np.float32)
        tensors[f"{n}.input_scale"] = np.array(r.activation.scale, dtype=np.float32)
        tensors[f"{n}.input_zero_point"] = np.array(r.activation.zero_point, dtype=np.int32)
        if r.bias is not None:
            tensors[f"{n}.bias"] = np.asarray(r.bias, dtype=np.float32)
        meta[f"{n}.certificate"] = json.dumps(r.certificate)
        meta[f"{n}.report"] = json.dumps(_report(r))
    sizes = {r.group_size for r in layers}
    if len(sizes) == 1:
        meta["axeq.group_size"] = str(sizes.pop())
    meta.update(extra_metadata or {})
    write_safetensors(path, tensors, meta)


class _Layer:
    """Checks one layer of a RESULT file; every error names the layer and the field."""

    def __init__(self, path, name, tensors, meta):
        self.where, self.name, self.tensors, self.meta = f"{path}: layer {name!r}", name, tensors, meta

    def fail(self, field, what):
        raise ValueError(f"{self.where}: {field}: {what}")

    def tensor(self, suffix, dtype, shape):
        key = self.name + suffix
        if key not in self.tensors:
            self.fail(key, "missing")
        a = self.tensors[key]
        if a.dtype != np.dtype(dtype):
            self.fail(key, f"dtype {a.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and a.shape != shape:
            self.fail(key, f"shape {list(a.shape)}, expected {list(shape)}")
        return a

    def json(self, suffix):
        key = self.name + suffix
        if key not in self.meta:
            self.fail(key, "missing")
        try:
            v = json.loads(self.meta[key])
        except ValueError as e:
            self.fail(key, f"not JSON ({e})")
        if not isinstance(v, dict):
            self.fail(key, "not a JSON object")
        return v

    def integer(self, obj, field, key, lo=None):
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            self.fail(f"{field}.{key}", f"expected an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
        return v


def _read_layer(path, name, tensors, meta, version) -> LayerResult:
    L = _Layer(path, name, tensors, meta)
    codes = L.tensor(".qweight", np.int8, None)
    if codes.ndim != 2 or 0 in codes.shape:
        L.fail(name + ".qweight", f"shape {list(codes.shape)}, expected [C, K] with C, K >= 1")
    c, k = codes.shape
    cert, rep = L.json(".certificate"), (L.json(".report") if version == 2 or name + ".report" in meta else {})
    scales = L.tensor(".scales", np.float32, None)
    if scales.ndim != 2 or scales.shape[0] != c or scales.shape[1] < 1:
        L.fail(name + ".scales", f"shape {list(scales.shape)}, expected [{c}, groups]")
    groups = scales.shape[1]
    if version == 2:
        g = L.integer(rep, name + ".report", "group_size", 0)
        bits = (L.integer(rep, name + ".report", "weight_bits"), L.integer(rep, name + ".report", "input_bits"))
        signed = rep.get("input_signed")
        if not isinstance(signed, bool):
            L.fail(name + ".report.input_signed", f"expected a boolean, got {signed!r}")
    else:  # v1: the file-wide group size (sometimes a wrong "0"), bit widths from the certificate
        g = int(meta.get("axeq.group_size", "0") or 0) if groups > 1 else 0
        g = g if g > 0 and -(-k // g) == groups else (-(-k // groups) if groups > 1 else 0)
        bits = (L.integer(cert, name + ".certificate", "weight_bits"),
                rep.get("input_bits", L.integer(cert, name + ".certificate", "input_bits")))
        signed = rep.get("input_signed", cert.get("inputs_signed"))
    want_groups = 1 if g == 0 or g >= k else -(-k // g)
    if groups != want_groups:
        L.fail(name + ".scales", f"{groups} groups, but group_size {g} with K = {k} needs {want_groups}")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        L.fail(name + ".scales", "values must be finite and > 0")
    s_x = L.tensor(".input_scale", np.float32, ())
    zp = L.tensor(".input_zero_point", np.int32, ())
    if not (np.isfinite(s_x) and s_x > 0):
        L.fail(name + ".input_scale", f"{float(s_x)} is not finite and > 0")
    bias = tensors.get(name + ".bias")
    if bias is not None:
        bias = L.tensor(".bias", np.float32, (c,))
    for key, want in (("output_channels", c), ("inputs", k), ("weight_bits", bits[0]), ("input_bits", bits[1]),
                      ("inputs_signed", signed)):
        if cert.get(key) != want or isinstance(cert.get(key), bool) != isinstance(want, bool):
            L.fail(f"{name}.certificate.{key}", f"{cert.get(key)!r}, but the {'codes' if key in ('output_channels', 'inputs') else 'report'} say {want!r}")
    if not isinstance(bits[1], int) or not 2 <= bits[1] <= 16:
        L.fail(name + ".report.input_bits", f"{bits[1]!r} is outside 2..16")
    mu, nu = input_range(bits[1], signed)
    if not (mu <= int(zp) <= nu) or (signed and int(zp) != 0):
        L.fail(name + ".input_zero_point", f"{int(zp)} is outside the code range [{mu}, {nu}] (0 when signed)")
    rep = dict(rep, group_size=g, weight_bits=bits[0], input_bits=bits[1], input_signed=signed)
    act = ActivationQuantizer(bits=bits[1], signed=signed, scale=float(s_x), zero_point=int(zp))
    return LayerResult(name, str(rep.get("job_id", "")), codes, scales, bias, act, rep, cert)


def _layer_names(path, tensors, meta, version):
    if version == 2:
        try:
            names = json.loads(meta.get("axeq.layers", ""))
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"{path}: axeq.layers must be a JSON array of unique layer names")
    else:
        names = [key[:-len(".certificate")] for key in meta if key.endswith(".certificate")]
    listed = set(names)
    strays = sorted(t[:-len(".qweight")] for t in tensors if t.endswith(".qweight") and t[:-len(".qweight")] not in listed)
    if strays:
        raise ValueError(f"{path}: layer {strays[0]!r}: {strays[0]}.qweight has no "
                         f"{'entry in axeq.layers' if version == 2 else 'certificate'}")
    if not names:
        raise ValueError(f"{path}: the file lists no layers")
    return names


def _read(path):
    """(results, metadata) of a RESULT file; see read_result."""
    tensors, meta = read_safetensors(path)
    if meta.get("format", "axeq-result") != "axeq-result":
        raise ValueError(f"{path}: format is {meta.get('format')!r}, not axeq-result")
    version = meta.get("axeq.schema_version", "1")
    if version not in ("1", "2"):
        raise ValueError(f"{path}: axeq.schema_version {version!r} is not supported (1 or 2)")
    version = int(version)
    names = _layer_names(path, tensors, meta, version)
    return {n: _read_layer(path, n, tensors, meta, version) for n in names}, meta


def read_result(path) -> dict:
    """Returns {layer name: LayerResult} in the file's layer order; accepts schema versions 1 and 2.
    ValueError naming the layer and field on anything missing, mis-shaped or inconsistent."""
    return _read(path)[0]
