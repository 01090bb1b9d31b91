"""Quantized layers back in PyTorch (exposed as axeq.torch): QuantLinear holds the integer codes,
scales, activation quantizer, bias and certificate of one layer and runs either

- mode="fake": dequantized float weights after the activation quantizer, or
- mode="integer": the datapath the certificate is about. Input codes (x * (1/s_x), rounded to
  nearest even, + zero point, clamped to [mu, nu]) times the weight codes are added exactly in
  int64 in the ORIGINAL input order into a P-bit register (P_I per tile of T inputs, then the
  tile sums into an outer P_O register, Eq. 21 by default), which wraps (two's complement) or
  saturates; the zero-point correction, scales and bias are applied in float outside it. Same
  semantics and counters as core/simulate.cc (`axeq simulate`).

apply_result() puts a RESULT file (or {name: LayerResult}) into a model, refusing certificates that
do not verify or do not match the layer's shape; save_quantized/load_quantized keep the state as a
RESULT file (safetensors, no pickle) plus the datapath settings."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from .certificate import effective_tile, input_range, outer_bits as eq21_outer_bits, verify_certificate
from .config import ActivationQuantizer
from .result import LayerResult, _read, write_result

MODES = ("fake", "integer")
OVERFLOW = ("wrap", "saturate")


def _register(bits: int, twos: bool):
    hi = (1 << (bits - 1)) - 1
    return (-hi - 1 if twos else -hi), hi


def _scan(term, m, valid, bits, twos, overflow):
    """Adds term(0), ..., term(m - 1) (each [n] int64) in order into a `bits`-bit register that
    wraps (two's complement: reduced into [-2^(P-1), 2^(P-1) - 1]) or saturates (clamped to the
    register's range) whenever a partial sum leaves the range [lo, hi] (symmetric or two's
    complement). valid(j) ([n] bool or None) skips padding. Returns (value, events), [n] each."""
    lo, hi = _register(bits, twos)
    half, mask = 1 << (bits - 1), (1 << bits) - 1
    acc = events = None
    for j in range(m):
        t = term(j)
        if acc is None:
            acc, events = torch.zeros_like(t), torch.zeros_like(t)
        s = acc + t
        out = (s < lo) | (s > hi)
        ok = None if valid is None else valid(j)
        if ok is not None:
            out &= ok
            s = torch.where(ok, s, acc)
        events += out
        acc = s.clamp(lo, hi) if overflow == "saturate" else torch.where(out, ((s + half) & mask) - half, s)
    return acc, events


def _pos_neg(x, q):
    """Per (row, channel, tile): the sums of the positive and of the negative products, [D, C, tiles]
    each, in float64 (exact: every product is below 2^23 and K < 2^30). Every partial sum of the
    tile, in any order, lies between them."""
    xp, xn, qp, qn = x.clamp(min=0), (-x).clamp(min=0), q.clamp(min=0), (-q).clamp(min=0)
    pos = torch.einsum("dnt,cnt->dcn", xp, qp)
    neg = torch.einsum("dnt,cnt->dcn", xp, qn)
    if bool((xn > 0).any()):
        pos += torch.einsum("dnt,cnt->dcn", xn, qn)
        neg += torch.einsum("dnt,cnt->dcn", xn, qp)
    return pos, -neg


def _columns(a):
    """[A, B, m] -> [m, A * B] contiguous: column j of every (a, b) row as one vector."""
    return a.permute(2, 0, 1).reshape(a.shape[2], -1).contiguous()


def _stage(x, q, pos, neg, exact, bits, twos, overflow, valid=None):
    """One register stage over D x C dot products of m terms each: x [D, tiles, m] and q [C, tiles, m]
    (int64; the terms are x * q) or q None and x [D, C, m] (the terms themselves). Only the dot
    products whose positive or negative part leaves the register (pos > hi or neg < lo) can
    overflow; they are scanned in order, the others are exact. Returns (value, events) like exact."""
    lo, hi = _register(bits, twos)
    value, events = exact.clone(), torch.zeros_like(exact)
    idx = ((pos > hi) | (neg < lo)).nonzero(as_tuple=True)
    if not idx[0].numel():
        return value, events
    m = x.shape[2]
    if q is None:  # outer stage: x holds the tile values [D, C, tiles]
        cols, r = _columns(x), idx[0] * x.shape[1] + idx[1]
        term = lambda j: cols[j][r]
    else:
        tiles = x.shape[1]
        xc, qc = _columns(x), _columns(q)
        ix, iq = idx[0] * tiles + idx[2], idx[1] * tiles + idx[2]
        term = lambda j: xc[j][ix] * qc[j][iq]
    ok = None if valid is None else (lambda j: valid[idx[2], j])
    v, e = _scan(term, m, ok, bits, twos, overflow)
    value[idx], events[idx] = v, e
    return value, events


def datapath(x_codes: torch.Tensor, codes: torch.Tensor, accumulator_bits: int, tile_size: int = 0,
             outer_bits: int = 0, overflow: str = "wrap", twos_complement: bool = True):
    """Integer dot products of input codes [D, K] with weight codes [C, K] through the register
    model above (core/simulate.cc): products added in input order into a P-bit register per tile of
    T inputs, tile sums into an outer register of outer_bits (0 = wide; monolithic rows have no
    outer register). Dot products whose positive and negative parts both fit the register cannot
    overflow and skip the sequential scan. Returns (out [D, C], exact [D, C], events [D, C]), int64."""
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    if not 2 <= accumulator_bits <= 62 or not (outer_bits == 0 or 2 <= outer_bits <= 62):
        raise ValueError(f"register widths must be in 2..62 (outer: 0 = wide), got {accumulator_bits}, {outer_bits}")
    d, k = x_codes.shape
    c = codes.shape[0]
    if k >= 1 << 30 or (x_codes.numel() and int(x_codes.abs().max()) > 1 << 16):
        raise ValueError("input codes must be within 2^16 in magnitude and K < 2^30")
    t = effective_tile(tile_size, k)
    tiles = -(-k // t)
    dev = x_codes.device
    x = torch.zeros((d, tiles * t), dtype=torch.int64, device=dev)
    x[:, :k] = x_codes.to(torch.int64)
    q = torch.zeros((c, tiles * t), dtype=torch.int64, device=dev)
    q[:, :k] = codes.to(torch.int64)
    x, q = x.view(d, tiles, t), q.view(c, tiles, t)
    pos, neg = _pos_neg(x.double(), q.double())
    exact_tiles = (pos + neg).to(torch.int64)
    valid = None if k % t == 0 else torch.arange(tiles * t, device=dev).view(tiles, t) < k
    vals, events = _stage(x, q, pos, neg, exact_tiles, accumulator_bits, twos_complement, overflow, valid)
    events, exact = events.sum(dim=-1), exact_tiles.sum(dim=-1)
    if tiles == 1 or outer_bits == 0:
        return vals.sum(dim=-1), exact, events
    out, ev_o = _stage(vals, None, vals.clamp(min=0).sum(dim=-1).double(), vals.clamp(max=0).sum(dim=-1).double(),
                       vals.sum(dim=-1), outer_bits, twos_complement, overflow)
    return out, exact, events + ev_o


class QuantLinear(nn.Module):
    """y = x W^T + b with W = codes * scales and x through the N-bit activation quantizer; see the
    module comment for the two modes. Counters (integer mode) accumulate over forwards until
    reset_counters(): dot_products, overflowing_dot_products, overflow_events, wrong_outputs
    (register result != exact int64 sum), max_abs_error and relative_error, as `axeq simulate`."""

    def __init__(self, r: LayerResult, mode: str = "fake", accumulator_bits: int | None = None,
                 tile_size: int | None = None, outer_bits: int | None = None, overflow: str = "wrap",
                 twos_complement: bool = True):
        super().__init__()
        self.name, self.job_id, self.group_size = r.name, r.job_id, r.group_size
        self.activation, self.certificate, self.report = r.activation, r.certificate, dict(r.report)
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(r.codes, dtype=np.int8)))
        self.register_buffer("scales", torch.from_numpy(np.ascontiguousarray(r.scales, dtype=np.float32)))
        self.register_buffer("bias", None if r.bias is None else torch.from_numpy(np.asarray(r.bias, np.float32)))
        self.register_buffer("weight", torch.from_numpy(r.dequantized()))
        self.register_buffer("weight64", self.codes.double() * self.scales.double().repeat_interleave(
            self.group_size or self.in_features, dim=1)[:, :self.in_features], persistent=False)
        self.register_buffer("code_sums", self.codes.to(torch.int64).sum(dim=1))
        self.certified = False
        self.set_datapath(mode, accumulator_bits, tile_size, outer_bits, overflow, twos_complement)
        self.reset_counters()

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    def set_datapath(self, mode="fake", accumulator_bits=None, tile_size=None, outer_bits=None, overflow="wrap",
                     twos_complement=True):
        """Selects the mode and the register model; None takes the certificate's P and T and P_O of
        Eq. 21. Recomputes `certified`: whether the certificate (recomputed from the codes) proves
        this datapath overflow-free."""
        if mode not in MODES or overflow not in OVERFLOW:
            raise ValueError(f"mode must be one of {MODES} and overflow one of {OVERFLOW}, got {mode!r}, {overflow!r}")
        cert, k = self.certificate or {}, self.in_features
        self.mode, self.overflow, self.twos_complement = mode, overflow, bool(twos_complement)
        self.accumulator_bits = int(accumulator_bits if accumulator_bits is not None else cert.get("accumulator_bits", 32))
        self.tile_size = effective_tile(int(tile_size if tile_size is not None else cert.get("tile_size", 0)), k)
        self.outer_bits = int(outer_bits if outer_bits is not None
                              else eq21_outer_bits(self.accumulator_bits, k, self.tile_size))
        v = verify_certificate(self.codes.cpu().numpy(), self.certificate, accumulator_bits=self.accumulator_bits,
                               tile_size=self.tile_size, input_bits=self.activation.bits,
                               inputs_signed=self.activation.signed, twos_complement=self.twos_complement)
        wide_enough = self.outer_bits == 0 or self.tile_size >= k or \
            self.outer_bits >= eq21_outer_bits(self.accumulator_bits, k, self.tile_size)
        self.certified = bool(v.safe and wide_enough)

    def reset_counters(self):
        self.counters = {"dot_products": 0, "overflowing_dot_products": 0, "overflow_events": 0,
                         "wrong_outputs": 0, "max_abs_error": 0}
        self._err2 = self._ref2 = 0.0

    @property
    def relative_error(self) -> float:
        return (self._err2 / self._ref2) ** 0.5 if self._ref2 > 0 else (float("inf") if self._err2 > 0 else 0.0)

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer input codes in [mu, nu] as float32 (core/simulate.cc InputCodes)."""
        a = self.activation
        inv = np.float32(1.0) / np.float32(a.scale)
        mu, nu = input_range(a.bits, a.signed)
        return torch.clamp(torch.round(x.float() * float(inv)) + a.zero_point, mu, nu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a = self.activation
        codes = self.input_codes(x2)
        if self.mode == "fake":  # float64: differs from the exact integer datapath by rounding only
            y = ((codes.double() - a.zero_point) * float(np.float32(a.scale))) @ self.weight64.t()
        else:
            y = self._integer(codes)
        if self.bias is not None:
            y = y + self.bias.double()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _integer(self, codes: torch.Tensor) -> torch.Tensor:
        if self.group_size:
            raise ValueError(f"layer {self.name!r}: integer mode needs one scale per channel "
                             f"(group size {self.group_size}); run it in fake mode")
        acc, exact, events = datapath(codes.to(torch.int64), self.codes, self.accumulator_bits, self.tile_size,
                                      self.outer_bits if self.tile_size < self.in_features else 0,
                                      self.overflow, self.twos_complement)
        self._count(acc, exact, events)
        a = self.activation
        corrected = (acc - a.zero_point * self.code_sums[None, :]).to(torch.float64)
        return corrected * (float(np.float32(a.scale)) * self.scales[:, 0].to(torch.float64))

    def _count(self, acc, exact, events):
        c = self.counters
        diff = acc - exact
        c["dot_products"] += acc.numel()
        c["overflowing_dot_products"] += int((events > 0).sum())
        c["overflow_events"] += int(events.sum())
        c["wrong_outputs"] += int((diff != 0).sum())
        c["max_abs_error"] = max(c["max_abs_error"], int(diff.abs().max()) if diff.numel() else 0)
        self._err2 += float((diff.to(torch.float64) ** 2).sum())
        self._ref2 += float((exact.to(torch.float64) ** 2).sum())

    def to_result(self) -> LayerResult:
        return LayerResult(self.name, self.job_id, self.codes.cpu().numpy().copy(), self.scales.cpu().numpy().copy(),
                           None if self.bias is None else self.bias.cpu().numpy().copy(), self.activation,
                           dict(self.report, group_size=self.group_size), self.certificate)

    def datapath_settings(self) -> dict:
        return {"mode": self.mode, "accumulator_bits": self.accumulator_bits, "tile_size": self.tile_size,
                "outer_bits": self.outer_bits, "overflow": self.overflow, "twos_complement": self.twos_complement}

    def extra_repr(self) -> str:
        s = f"{self.in_features} -> {self.out_features}, W{self.report.get('weight_bits', '?')}A{self.activation.bits}"
        if self.mode == "integer":
            s += f", integer P={self.accumulator_bits} T={self.tile_size} P_O={self.outer_bits} {self.overflow}"
        return s + (", certified" if self.certified else ", NOT certified for this datapath")


def _results(result) -> dict:
    if isinstance(result, (str, os.PathLike)):
        return _read(result)[0]
    if isinstance(result, dict):
        return result
    return {r.name: r for r in result}


def _replace(model: nn.Module, name: str, new: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_result(model: nn.Module, result, mode: str = "fake", accumulator_bits: int | None = None,
                 tile_size: int | None = None, overflow: str = "wrap", outer_bits: int | None = None,
                 twos_complement: bool = True, require_certified: bool = False, settings: dict | None = None):
    """Replaces each quantized nn.Linear of model (in place) by a QuantLinear; result is a RESULT
    path, {module name: LayerResult} (axeq.pipeline.quantize_model) or a list. ValueError when a
    layer is missing, has another shape, or its certificate does not verify against its codes and
    activation quantizer (or, with require_certified, does not prove this datapath safe).
    settings: per-layer datapath overrides {name: {...}} (load_quantized). Returns {name: QuantLinear}."""
    out = {}
    for name, r in _results(result).items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layer {name!r}: the model has no such module") from None
        shape = (mod.out_features, mod.in_features) if isinstance(mod, (nn.Linear, QuantLinear)) else None
        if shape is None:
            raise ValueError(f"layer {name!r}: {type(mod).__name__} is not an nn.Linear")
        if tuple(r.codes.shape) != shape:
            raise ValueError(f"layer {name!r}: the result's codes are {list(r.codes.shape)} [C, K], "
                             f"the model's layer is {list(shape)}")
        v = r.verify(**{"input_bits": r.activation.bits, "inputs_signed": r.activation.signed})
        if not v.consistent:
            raise ValueError(f"layer {name!r}: the certificate does not verify: {'; '.join(v.problems[:3])}")
        kw = dict(mode=mode, accumulator_bits=accumulator_bits, tile_size=tile_size, outer_bits=outer_bits,
                  overflow=overflow, twos_complement=twos_complement)
        kw.update((settings or {}).get(name, {}))
        ql = QuantLinear(r, **kw)
        if require_certified and not ql.certified:
            raise ValueError(f"layer {name!r}: the certificate does not prove P={ql.accumulator_bits}, "
                             f"T={ql.tile_size} overflow-free")
        _replace(model, name, ql)
        out[name] = ql
    return out


def quant_linears(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_datapath(model: nn.Module, **kw):
    """Sets every QuantLinear's mode and register model (QuantLinear.set_datapath's keywords)."""
    for m in quant_linears(model).values():
        m.set_datapath(**kw)
        m.reset_counters()


def overflow_counters(model: nn.Module) -> dict:
    """{layer name: counters (+ relative_error)} of every QuantLinear, since the last reset."""
    return {n: dict(m.counters, relative_error=m.relative_error) for n, m in quant_linears(model).items()}


def reset_counters(model: nn.Module):
    for m in quant_linears(model).values():
        m.reset_counters()


def save_quantized(model: nn.Module, path):
    """Writes every QuantLinear as a RESULT file (schema 2) plus each layer's datapath settings in
    the metadata key axeq.datapath; safetensors only, nothing pickled."""
    qls = quant_linears(model)
    if not qls:
        raise ValueError("the model has no QuantLinear to save")
    results = {n: m.to_result() for n, m in qls.items()}
    for n, r in results.items():
        r.name = n
    settings = {n: m.datapath_settings() for n, m in qls.items()}
    write_result(path, results, extra_metadata={"axeq.datapath": json.dumps(settings)})


def load_quantized(model: nn.Module, path, require_certified: bool = False) -> dict:
    """Applies a file written by save_quantized (or any RESULT file) with its saved datapath."""
    results, meta = _read(path)
    try:
        settings = json.loads(meta.get("axeq.datapath", "{}"))
    except ValueError:
        raise ValueError(f"{path}: axeq.datapath is not JSON") from None
    return apply_result(model, results, settings=settings if isinstance(settings, dict) else {},
                        require_certified=require_certified)
