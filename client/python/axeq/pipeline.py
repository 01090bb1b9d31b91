"""PyTorch helper: quantize the nn.Linear layers of a model through axeq-server, true-sequentially.

For each group of layers that share an input (q/k/v of one block run concurrently), it collects the
float model's inputs X and the partially quantized model's inputs, quantizes the latter to N bits
(X~, per-tensor static by percentiles, or per-token dynamic), streams X and X~ to the service,
writes the dequantized weights and corrected biases back, and installs the activation quantizer on
the layer, so the next group is calibrated on the quantized model. SmoothQuant (alpha, default 0.4
as in the paper's Appendix D) can be applied first. Integer codes and certificates are kept."""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from .client import Client, LayerResult
from .config import ActivationQuantizer, Config


def data_type_bound(k: int, m: int, n: int, signed: bool) -> int:
    """P* of Eq. 3."""
    v = k * 2 ** (n + m - 1 - (1 if signed else 0)) + 1
    return math.ceil(math.log2(v) - 1e-12) + 1


def naive_bit_widths(k: int, m: int, n: int, signed: bool, p: int):
    """Naive bit-width manipulation: the largest (M', N') <= (M, N) with P* <= P (as the CLI)."""
    best = None
    for mm in range(2, m + 1):
        for nn in range(2, n + 1):
            if data_type_bound(k, mm, nn, signed) <= p:
                key = (mm + nn, min(mm, nn), nn)
                if best is None or key > best[0]:
                    best = (key, mm, nn)
    if best is None:
        raise ValueError(f"no W/A bit widths reach P={p} for K={k}")
    return best[1], best[2]


@torch.no_grad()
def smooth_quant(model, batches, pairs, alpha: float = 0.4):
    """SmoothQuant: per input channel j, s_j = max|X_j|^alpha / max|W_:j|^(1-alpha); the preceding
    norm's weight is divided by s and the following linears' columns multiplied by it."""
    mods = dict(model.named_modules())
    stats = {}
    hooks = []
    for norm, names in pairs:
        def hook(mod, inp, out, key=id(norm)):
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0)
            stats[key] = torch.maximum(stats[key], m) if key in stats else m
        hooks.append(norm.register_forward_hook(hook))
    for b in batches:
        model(b)
    for h in hooks:
        h.remove()
    for norm, names in pairs:
        wmax = torch.stack([mods[n].weight.abs().amax(0) for n in names]).amax(0)
        s = (stats[id(norm)].clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        norm.weight.div_(s)
        for n in names:
            mods[n].weight.mul_(s)


class _ActQuant:
    """Forward pre-hook applying the N-bit activation quantizer (static or per-token dynamic)."""

    def __init__(self, act: ActivationQuantizer, dynamic: bool):
        self.act, self.dynamic = act, dynamic

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act
        if not self.dynamic:
            s = torch.tensor(a.scale, dtype=x.dtype)
            return s * (torch.clamp(torch.round(x / s) + a.zero_point, a.min_code, a.max_code) - a.zero_point)
        lo = torch.minimum(x.amin(-1, keepdim=True), torch.zeros(()))
        hi = torch.maximum(x.amax(-1, keepdim=True), torch.zeros(()))
        if a.signed:
            s = torch.maximum(hi, -lo).clamp(min=1e-8) / a.max_code
            return s * torch.clamp(torch.round(x / s), a.min_code, a.max_code)
        s = ((hi - lo) / a.max_code).clamp(min=1e-8)
        zp = torch.clamp(torch.round(-lo / s), 0, a.max_code)
        return s * (torch.clamp(torch.round(x / s) + zp, 0, a.max_code) - zp)

    def __call__(self, mod, inputs):
        return (self.quantize(inputs[0]),) + tuple(inputs[1:])


def _capture(model, batches, names):
    mods = dict(model.named_modules())
    seen = {n: [] for n in names}
    hooks = [mods[n].register_forward_pre_hook(lambda m, i, n=n: seen[n].append(i[0].detach().reshape(-1, i[0].shape[-1])))
             for n in names]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).float().numpy() for n, v in seen.items()}


def quantize_model(model, batches, client: Client, config: Config, *, groups=None, smooth_pairs=None,
                   smoothquant_alpha: float | None = 0.4, act_percentiles=(0.001, 99.999),
                   dynamic_activations: bool = False, max_concurrency: int = 3, progress: bool = True):
    """Quantizes model in place; returns {layer name: LayerResult} (codes, scales, certificate).
    groups: lists of nn.Linear names in execution order (layers in one group share their input and
    go concurrently); default: every nn.Linear, one per group, in module order."""
    model.eval()
    mods = dict(model.named_modules())
    if groups is None:
        groups = [[n] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if smoothquant_alpha and smooth_pairs:
        smooth_quant(model, batches, smooth_pairs, smoothquant_alpha)
    reference = copy.deepcopy(model)  # the float model (after smoothing): source of X
    results, total, done, t0 = {}, sum(len(g) for g in groups), 0, time.time()
    for group in groups:
        xs = _capture(reference, batches, group)
        cur = _capture(model, batches, group)
        specs, hooks = [], {}
        for name in group:
            lin = mods[name]
            k = lin.in_features
            cfg = config
            if config.method == "naive":
                m, n = naive_bit_widths(k, config.weight_bits, config.input_bits, config.signed_inputs, config.accumulator_bits)
                cfg = replace(config, method="base", weight_bits=m, input_bits=n)
            act = ActivationQuantizer.calibrate(cur[name], cfg.input_bits, cfg.signed_inputs, act_percentiles)
            hook = _ActQuant(act, dynamic_activations)
            xq = hook.quantize(torch.from_numpy(cur[name])).numpy()
            hooks[name] = hook
            specs.append({"name": name, "weight": lin.weight.detach().float().numpy(),
                          "bias": None if lin.bias is None else lin.bias.detach().float().numpy(),
                          "inputs": xs[name], "quant_inputs": xq, "activation": act, "config": cfg})
        for r in client.quantize_many(specs, max_concurrency=max_concurrency):
            lin = mods[r.name]
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(r.dequantized()))
                if r.bias is not None and lin.bias is not None:
                    lin.bias.copy_(torch.from_numpy(r.bias))
            lin.register_forward_pre_hook(hooks[r.name])
            results[r.name] = r
            done += 1
            if progress:
                bar = "#" * int(30 * done / total)
                sys.stderr.write(f"\r[{bar:<30}] {done}/{total} layers {time.time() - t0:5.1f}s {r.name:<32}")
        if progress and done == total:
            sys.stderr.write("\n")
    return results
