"""Quantization options and the activation quantizer, mirroring axeq.v1.QuantizationConfig."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_ALGORITHMS = {"optq": 1, "gpfq": 2}
_METHODS = {"base": 1, "axe": 2, "ep-init": 3, "naive": 4}
_ROUNDING = {"rtn": 1, "rtz": 2}


@dataclass
class Config:
    """Defaults follow the AXE paper: W4A8, OPTQ + AXE, act-order, 1% damping."""
    algorithm: str = "optq"          # optq | gpfq
    method: str = "axe"              # base | axe | ep-init | naive
    weight_bits: int = 4
    full_alphabet: bool = False
    group_size: int = 0
    input_bits: int = 8
    signed_inputs: bool = False
    accumulator_bits: int = 32
    tile_size: int = 0
    twos_complement: bool = False
    rounding: str = "rtn"            # rtn | rtz
    soft_threshold: bool = True      # False gives AXE-HCO
    act_order: bool = True
    damping: float = 0.01
    block_size: int = 128
    optq_error: str = "original"     # original | constrained
    precision: str = "float32"
    bias_correction: bool = True
    quality_report: bool = True      # False skips the relative errors (large layers)

    def to_proto(self, pb):
        c = pb.QuantizationConfig()
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(_ALGORITHMS)}, got {self.algorithm!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {list(_METHODS)}, got {self.method!r}")
        c.algorithm = _ALGORITHMS[self.algorithm]
        c.method = _METHODS[self.method]
        c.weight_bits = self.weight_bits
        c.full_alphabet = self.full_alphabet
        c.group_size = self.group_size
        c.input_bits = self.input_bits
        c.signed_inputs = self.signed_inputs
        c.accumulator_bits = self.accumulator_bits
        c.tile_size = self.tile_size
        c.twos_complement = self.twos_complement
        c.rounding = _ROUNDING[self.rounding]
        c.no_soft_threshold = not self.soft_threshold
        c.no_act_order = not self.act_order
        c.damping = self.damping
        c.block_size = self.block_size
        c.optq_error = 1 if self.optq_error == "original" else 2
        c.precision = 1 if self.precision == "float32" else 2
        c.no_bias_correction = not self.bias_correction
        c.no_quality_report = not self.quality_report
        return c


@dataclass
class ActivationQuantizer:
    """x~ = scale * (code - zero_point), code in [min_code, max_code] (per tensor)."""
    bits: int = 8
    signed: bool = False
    scale: float = 1.0
    zero_point: int = 0

    @property
    def min_code(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @classmethod
    def calibrate(cls, x, bits: int = 8, signed: bool = False, percentiles=(0.0, 100.0)) -> "ActivationQuantizer":
        """Fits the range to x (min/max, or percentiles such as (0.001, 99.999)); the range holds 0."""
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0 or not np.isfinite(x).all():
            raise ValueError("calibration inputs must be non-empty and finite")
        lo, hi = (float(v) for v in np.percentile(x, percentiles))
        q = cls(bits=bits, signed=signed)
        if signed:
            m = max(abs(lo), abs(hi))
            q.scale = m / q.max_code if m > 0 else 1.0
        else:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            q.scale = (hi - lo) / q.max_code if hi > lo else 1.0
            q.zero_point = int(np.clip(np.rint(-lo / q.scale), 0, q.max_code))
        q.scale = float(np.float32(q.scale))
        return q

    def codes(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return np.clip(np.rint(x * np.float32(1.0 / np.float32(self.scale))) + self.zero_point,
                       self.min_code, self.max_code).astype(np.float32)

    def apply(self, x) -> np.ndarray:
        """Returns the dequantized quantized inputs X~ (float32)."""
        return (np.float32(self.scale) * (self.codes(x) - np.float32(self.zero_point))).astype(np.float32)

    def to_proto(self, pb):
        return pb.ActivationQuantizer(bits=self.bits, is_signed=self.signed, scale=self.scale, zero_point=self.zero_point)
