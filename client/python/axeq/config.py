"""Quantization options and the activation quantizer, mirroring axeq.v1.QuantizationConfig."""
from __future__ import annotations

from dataclasses import dataclass

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
    # Client side only (not on the wire): how the N-bit activation range is fitted to X~ by the
    # pipeline and by Client.quantize when it is given rows without a quantizer.
    act_range: str = "auto"          # auto | output | mse | percentile | minmax (ActivationQuantizer.calibrate)
    act_percentiles: tuple = (0.001, 99.999)

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


RANGE_METHODS = ("minmax", "percentile", "mse", "output", "auto")
MSE_MULTIPLIERS = np.linspace(0.3, 1.0, 100)  # of the min/max range, searched by "mse"
MSE_SAMPLE = 1 << 15                          # values the grid is searched on (strided subsample)
MSE_FINALISTS = 4                             # best grid points re-scored on all values
OUTPUT_MAX_ROWS = 512                         # rows "output" scores (see _output_rows)
OUTPUT_TOP_ROWS = 128                         # of which the rows with the largest max |x|
OUTPUT_COARSE_STEP = 10                       # its coarse pass: grid points 0, 10, ..., 90, 99
OUTPUT_INPUT_FINALISTS = 4                    # best by input MSE, always scored
SCAN_CHUNK = 1 << 20                          # values per step of the finiteness check and top-k of tensors


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _flat_finite(x):
    """x as a flat float32 array or tensor (a torch tensor stays on its device)."""
    if _is_torch(x):
        import torch
        x = x.detach().reshape(-1).float()
        ok = x.numel() > 0 and all(bool(torch.isfinite(c).all()) for c in x.split(SCAN_CHUNK))
    else:
        x = np.asarray(x, dtype=np.float32).ravel()
        ok = x.size > 0 and bool(np.isfinite(x).all())
    if not ok:
        raise ValueError("calibration inputs must be non-empty and finite")
    return x


def _topk_values(x, k: int, largest: bool):
    """x.topk(k)'s values (flat tensor x), sorted, from the top k of each chunk of SCAN_CHUNK values:
    the same values, without topk's copy of all of x (4 x its size on the CPU)."""
    if x.numel() > SCAN_CHUNK:
        import torch
        x = torch.cat([c.topk(min(k, c.numel()), largest=largest).values for c in x.split(SCAN_CHUNK)])
    return x.topk(min(k, x.numel()), largest=largest).values.sort(descending=largest).values


def _percentile(x, p: float) -> float:
    """np.percentile's linear interpolation; for tensors, through topk of the tail (on the device)."""
    if not _is_torch(x):
        return float(np.percentile(x, p))
    n = x.numel()
    pos = p / 100.0 * (n - 1)
    i = int(np.floor(pos))
    if p <= 50:
        v = _topk_values(x, i + 2, largest=False)
        a, b = float(v[i]), float(v[min(i + 1, n - 1)])
    else:
        j = n - 1 - i  # how many values lie above index i
        v = _topk_values(x, j + 1, largest=True)
        a, b = float(v[j]), float(v[max(j - 1, 0)])
    return a + (pos - i) * (b - a)


def _output_rows(n, peak):
    """core's kOutput row sample of n rows (peak[r] = max |x_r|, numpy): (indices, weights)."""
    if n <= OUTPUT_MAX_ROWS:
        return np.arange(n), np.ones(n)
    top = np.argsort(-peak, kind="stable")[:OUTPUT_TOP_ROWS]
    rest = np.setdiff1d(np.arange(n), top)  # in order
    taken = rest[::-(-len(rest) // (OUTPUT_MAX_ROWS - OUTPUT_TOP_ROWS))]
    return (np.concatenate([top, taken]),
            np.concatenate([np.ones(len(top)), np.full(len(taken), len(rest) / len(taken))]))


def _output_search(rows, weights, cand, input_err):
    """core's kOutput: the candidate with the least sum ||(x - q(x)) W^T||^2 over the sampled rows
    (_output_rows; through W^T W when C > K); cand = the grid then the percentile range."""
    if _is_torch(rows):
        import torch
        w = torch.as_tensor(weights).to(device=rows.device, dtype=torch.float32)
        peak = torch.maximum(rows.amax(1), -rows.amin(1))  # max |x| per row, without an |x| copy
        idx, rw = _output_rows(rows.shape[0], peak.float().cpu().numpy())
        xs = rows[torch.from_numpy(idx).to(rows.device)].float()
        rw = torch.from_numpy(rw).to(rows.device)

        def dot(a, b):
            return float(((a.double() * b.double()).sum(1) * rw).sum())
    else:
        w = np.asarray(weights, dtype=np.float32)
        idx, rw = _output_rows(rows.shape[0], np.maximum(rows.max(1), -rows.min(1)))
        xs = np.asarray(rows, dtype=np.float32)[idx]

        def dot(a, b):
            return float(((a.astype(np.float64) * b.astype(np.float64)).sum(1) * rw).sum())
    gram = w.T @ w if w.shape[0] > w.shape[1] else None
    grid = len(cand) - 1
    err = {}

    def score(i):
        if 0 <= i <= grid and i not in err:
            e = xs - cand[i].apply(xs)
            err[i] = dot(e @ gram, e) if gram is not None else dot(*(2 * [e @ w.T]))

    for i in list(range(0, grid, OUTPUT_COARSE_STEP)) + [grid - 1, grid]:
        score(i)
    for i in np.argsort(input_err, kind="stable")[:OUTPUT_INPUT_FINALISTS]:
        score(int(i))

    def argmin():
        return min(err, key=lambda i: (err[i], i))
    for step in (5, 3, 2, 1):
        b = argmin()
        if b < grid:
            score(b - step), score(b + step)
    return cand[argmin()]


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
    def from_range(cls, lo: float, hi: float, bits: int = 8, signed: bool = False) -> "ActivationQuantizer":
        """The quantizer whose grid covers [lo, hi] (widened to hold 0; symmetric when signed)."""
        q = cls(bits=bits, signed=signed)
        if signed:
            m = max(abs(lo), abs(hi))
            q.scale = m / q.max_code if m > 0 else 1.0
        else:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            q.scale = (hi - lo) / q.max_code if hi > lo else 1.0
            q.zero_point = int(np.clip(np.rint(-lo / q.scale), 0, q.max_code))
        q.scale = float(np.float32(q.scale))
        if q.scale <= 0 or not np.isfinite(q.scale):  # a range below float32's resolution
            q.scale = 1.0
        return q

    @classmethod
    def candidates(cls, x, bits: int = 8, signed: bool = False, percentiles=None,
                   method: str | None = None, weights=None) -> list:
        """The ranges "auto" tries end to end, in order: the "output" range, then the "minmax"
        and "percentile" ones that differ from every earlier one (core's ActivationCandidates);
        for other methods the one range of calibrate()."""
        fixed = []  # "auto": min/max and percentile from the same pass over x
        out = [cls.calibrate(x, bits, signed, percentiles, method, weights, _fixed=fixed)]
        for q in fixed:
            if all((q.scale, q.zero_point) != (o.scale, o.zero_point) for o in out):
                out.append(q)
        return out

    @classmethod
    def calibrate(cls, x, bits: int = 8, signed: bool = False, percentiles=None,
                  method: str | None = None, weights=None, _fixed=None) -> "ActivationQuantizer":
        """Fits the range to x (numpy array or torch tensor, any shape; a tensor stays on its
        device). method: "minmax"; "percentile" (`percentiles`, default 0.001/99.999, as the
        reference implementation); or "mse" (the default): the range among 100 multipliers 0.3..1.0
        of the min/max range and the percentile range that minimises the mean squared quantization
        error of x; never worse on x than "minmax" or "percentile". Giving only `percentiles`
        selects "percentile" (older callers). "output" (needs weights [C, K], x [..., K]): among the
        same candidates, the least error of the layer's output with its float weights,
        sum ||(x - apply(x)) W^T||^2 over at most OUTPUT_MAX_ROWS rows, found as core's kOutput
        does (coarse grid, input-MSE finalists, pattern search). "auto" returns the "output" range
        here; Client.quantize (as the CLI) then quantizes the layer with every range of
        candidates() and keeps the least relative output error, the pipeline the range whose
        block output is closest to the float model's (axeq.pipeline._Run.choose). Raises ValueError on
        empty or non-finite x, or missing / mis-shaped weights for "output" and "auto"."""
        method = method or ("percentile" if percentiles is not None else "mse")
        if method not in RANGE_METHODS:
            raise ValueError(f"activation range method must be one of {RANGE_METHODS}, got {method!r}")
        pct = tuple(percentiles) if percentiles is not None else (0.001, 99.999)
        rows = None
        if method in ("output", "auto"):
            x = x if _is_torch(x) else np.asarray(x, dtype=np.float32)
            if weights is None or len(weights.shape) != 2 or x.shape[-1] != weights.shape[1]:
                raise ValueError(f'activation range "{method}" needs the layer\'s weights [C, K] with K = '
                                 f'{x.shape[-1]}, got {None if weights is None else tuple(weights.shape)}')
            rows = x.reshape(-1, x.shape[-1])
        x = _flat_finite(x)
        if method == "percentile":
            return cls.from_range(_percentile(x, pct[0]), _percentile(x, pct[1]), bits, signed)
        lo, hi = float(x.min()), float(x.max())
        minmax = cls.from_range(lo, hi, bits, signed)
        if method == "minmax":
            return minmax
        pctq = cls.from_range(_percentile(x, pct[0]), _percentile(x, pct[1]), bits, signed)
        n = x.numel() if _is_torch(x) else x.size
        sample = x[::-(-n // MSE_SAMPLE)]
        sample = sample.contiguous() if _is_torch(sample) else np.ascontiguousarray(sample)
        grid = [cls.from_range(a * lo, a * hi, bits, signed) for a in MSE_MULTIPLIERS]
        input_err = cls._mse_grid(sample, grid)
        if rows is not None:
            if _fixed is not None and method == "auto":
                _fixed += [minmax, pctq]
            return _output_search(rows, weights, grid + [pctq], np.append(input_err, pctq.mse(sample)))
        best = [grid[i] for i in np.argsort(input_err, kind="stable")[:MSE_FINALISTS]]
        return min(best + [minmax, pctq], key=lambda q: q.mse(x))  # exact, on all of x

    @staticmethod
    def _mse_grid(x, grid) -> np.ndarray:
        """Mean squared quantization error of x [n] under every quantizer of grid, at once."""
        s = np.array([[q.scale] for q in grid], dtype=np.float32)
        z = np.array([[q.zero_point] for q in grid], dtype=np.float32)
        lo, hi = grid[0].min_code, grid[0].max_code
        if _is_torch(x):
            import torch
            s, z = (torch.from_numpy(a).to(x.device) for a in (s, z))
            codes = torch.clamp(torch.round(x[None, :] * (1.0 / s)) + z, lo, hi)
            return (s * (codes - z) - x[None, :]).pow(2).mean(-1).cpu().numpy()
        codes = np.clip(np.rint(x[None, :] * (np.float32(1.0) / s)) + z, lo, hi)
        return ((s * (codes - z) - x[None, :]) ** 2).mean(-1)

    def mse(self, x) -> float:
        """Mean squared error between x and apply(x)."""
        e = self.apply(x) - x
        return float(e.double().pow(2).mean()) if _is_torch(e) else float((e.astype(np.float64) ** 2).mean())

    def codes(self, x):
        """Integer codes of x as float32 (numpy array, or a tensor of x's dtype on x's device)."""
        inv = float(np.float32(1.0) / np.float32(self.scale))
        if _is_torch(x):
            import torch
            return torch.clamp(torch.round(x * inv) + self.zero_point, self.min_code, self.max_code)
        x = np.asarray(x, dtype=np.float32)
        return np.clip(np.rint(x * np.float32(inv)) + self.zero_point, self.min_code, self.max_code).astype(np.float32)

    def apply(self, x):
        """Returns the dequantized quantized inputs X~ (float32 numpy, or a tensor like x)."""
        if _is_torch(x):
            return (self.codes(x) - self.zero_point) * self.scale
        return (np.float32(self.scale) * (self.codes(x) - np.float32(self.zero_point))).astype(np.float32)

    def to_proto(self, pb):
        return pb.ActivationQuantizer(bits=self.bits, is_signed=self.signed, scale=self.scale, zero_point=self.zero_point)
