"""Building blocks of the block-wise pipeline (axeq.pipeline): find a model's repeated blocks, catch
the first block's inputs and keyword arguments, find the groups of nn.Linear layers that share an
input, collect one layer's inputs over a stream of calibration batches (stopping each forward pass
there), accumulate float64 statistics on the tensors' device, fold SmoothQuant into a block, and
install the N-bit activation quantizer as a forward pre-hook. Everything stays on the model's
device; nothing here talks to a server."""
from __future__ import annotations

import numpy as np
import torch

from .config import ActivationQuantizer


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


class ActivationHook:
    """Forward pre-hook applying the layer's N-bit activation quantizer to its first input:
    per-tensor static (the calibrated ActivationQuantizer) or per-token dynamic."""

    def __init__(self, act: ActivationQuantizer, dynamic: bool = False):
        self.act, self.dynamic = act, dynamic

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act
        if not self.dynamic:  # a.apply(x) (same operations, same order: bit-identical) in one buffer
            y = x * float(np.float32(1.0) / np.float32(a.scale))
            y.round_().add_(a.zero_point).clamp_(a.min_code, a.max_code)
            return y.sub_(a.zero_point).mul_(a.scale)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        lo, hi = torch.minimum(x.amin(-1, keepdim=True), zero), torch.maximum(x.amax(-1, keepdim=True), zero)
        if a.signed:
            s = torch.maximum(hi, -lo).clamp(min=1e-8) / a.max_code
            return s * torch.clamp(torch.round(x / s), a.min_code, a.max_code)
        s = ((hi - lo) / a.max_code).clamp(min=1e-8)
        zp = torch.clamp(torch.round(-lo / s), 0, a.max_code)
        return s * (torch.clamp(torch.round(x / s) + zp, 0, a.max_code) - zp)

    def __call__(self, mod, inputs):
        return (self.quantize(inputs[0]),) + tuple(inputs[1:])


def install_activation_hook(linear: torch.nn.Module, hook: ActivationHook | None):
    """Replaces the activation quantizer axeq installed on linear (None: removes it), so that
    quantizing a model twice never stacks two quantizers on one layer."""
    old = getattr(linear, "_axeq_act_handle", None)
    if old is not None:
        old.remove()
    linear._axeq_act_handle = None if hook is None else linear.register_forward_pre_hook(hook)
    linear._axeq_act_hook = hook


def find_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """Returns (name, list) of the model's repeated blocks: the nn.ModuleList of modules of one
    class holding nn.Linear layers with the most parameters. ValueError if there is none."""
    best = None
    for name, m in model.named_modules():
        if (isinstance(m, torch.nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1
                and any(isinstance(x, torch.nn.Linear) for x in m[0].modules())):
            size = sum(p.numel() for p in m.parameters())
            if best is None or size > best[0]:
                best = (size, name, m)
    if best is None:
        raise ValueError("no nn.ModuleList of repeated blocks with nn.Linear layers found: pass blocks=")
    return best[1], best[2]


def _call(module, batch):
    if isinstance(batch, dict):
        return module(**batch)
    return module(*batch) if isinstance(batch, (tuple, list)) else module(batch)


def hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(model, block, batches) -> list:
    """Runs the model on each batch until `block` is called and returns, per batch,
    [hidden_states, other positional args, keyword args] (masks, positions: kept as given)."""
    seen = []

    def stop(*args, **kwargs):
        if args:
            seen.append([args[0], args[1:], kwargs])
        else:
            kw = dict(kwargs)
            seen.append([kw.pop("hidden_states"), (), kw])
        raise _Stop

    block.forward = stop
    try:
        for b in batches:
            try:
                _call(model, b)
            except _Stop:
                continue
            raise RuntimeError("the model finished a forward pass without calling its first block")
    finally:
        del block.forward
    return seen


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and (a is b or bool(torch.equal(a, b))))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _join(items, sizes):
    """One argument for a merged batch: the common value, or the per-batch tensors concatenated
    along their batch dimension; None if neither applies."""
    first = items[0]
    if all(_same(first, it) for it in items[1:]):
        return first
    if all(isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n for t, n in zip(items, sizes)):
        if all(t.shape[1:] == first.shape[1:] for t in items):
            return torch.cat(items)
    return None


def merge_stream(stream, max_tokens: int = 8192) -> list:
    """Merges consecutive batches of a stream into larger ones of at most max_tokens rows (x's
    leading dimensions), so that a block runs a few large forward passes instead of many small
    ones: arguments equal across the batches are kept once, per-batch tensors (masks) are
    concatenated along dimension 0. Batches that cannot be merged stay apart."""
    out, run = [], []

    def flush():
        if not run:
            return
        sizes = [e[0].shape[0] for e in run]
        x = torch.cat([e[0] for e in run]) if len(run) > 1 else run[0][0]
        args = [_join([e[1][i] for e in run], sizes) for i in range(len(run[0][1]))]
        keys = run[0][2].keys()
        kwargs = {k: _join([e[2][k] for e in run], sizes) for k in keys}
        if any(a is None for a in args) or any(v is None for v in kwargs.values()):
            out.extend(run)  # not mergeable: keep the batches as they were
        else:
            out.append([x, tuple(args), kwargs])
        run.clear()

    for e in stream:
        x = e[0]
        if run and (x.shape[1:] != run[0][0].shape[1:] or len(e[1]) != len(run[0][1])
                    or e[2].keys() != run[0][2].keys()
                    or (sum(r[0].shape[:-1].numel() for r in run) + x.shape[:-1].numel() > max_tokens)):
            flush()
        run.append(e)
    flush()
    return out


@torch.no_grad()
def linear_groups(block, stream) -> list[list[str]]:
    """Names (relative to block) of its nn.Linear layers in execution order, grouped by shared input
    (the same tensor): q/k/v, then o, then up/gate, then down. Runs one batch through the block."""
    order = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append((n, inp[0])))
             for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        x, args, kwargs = stream[0]
        n = x.shape[0]  # one sequence is enough to see the structure
        cut = lambda a: a[:1] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a
        block(x[:1], *[cut(a) for a in args], **{k: cut(v) for k, v in kwargs.items()})
    finally:
        for h in hooks:
            h.remove()
    groups, inputs, done = [], [], set()
    for name, t in order:
        if name in done:
            continue
        done.add(name)
        for g, t0 in zip(groups, inputs):
            if t0 is t:
                g.append(name)
                break
        else:
            groups.append([name])
            inputs.append(t)
    return groups


@torch.no_grad()
def layer_inputs(block, stream, layer) -> torch.Tensor:
    """The inputs [rows, K] that `layer` (a module of block) receives over the stream, before any
    activation quantizer of its own; stops each forward pass there. The rows are copied into one
    buffer of the stream's token count as they arrive (no list of parts concatenated at the end:
    half the peak); passes that do not fit it are concatenated after it (same values)."""
    total = sum(x.shape[:-1].numel() for x, _, _ in stream)
    buf, used, rest = None, 0, []

    def grab(mod, inp):
        nonlocal buf, used
        rows = inp[0].detach().reshape(-1, inp[0].shape[-1])
        if buf is None and not rest:
            buf = rows.new_empty((total, rows.shape[1]))
        if not rest and rows.shape[1:] == buf.shape[1:] and rows.dtype == buf.dtype and used + len(rows) <= total:
            buf[used:used + len(rows)] = rows
            used += len(rows)
        else:
            rest.append(rows)
        raise _Stop

    h = layer.register_forward_pre_hook(grab)
    try:
        for x, args, kwargs in stream:
            try:
                block(x, *args, **kwargs)
            except _Stop:
                pass
    finally:
        h.remove()
    if buf is None:
        return torch.cat(rest)
    return buf[:used] if not rest else torch.cat([buf[:used]] + rest)


@torch.no_grad()
def statistics(xq: torch.Tensor, x: torch.Tensor | None = None, *, cross=True, xx=False, means=False,
               quantize=None, chunk_bytes: int = 16 << 20) -> dict:
    """X~^T X~ / D, and with x: X~^T X / D (cross), X^T X / D (xx), the means; float64 on the rows'
    device, accumulated over row chunks of at most chunk_bytes (float64) each (below glibc's mmap
    threshold, so that the chunks reuse one buffer instead of faulting in fresh pages). quantize:
    a row-wise function applied to each chunk of xq first (ActivationHook.quantize), so that X~ is
    never materialised whole; the result is the same as statistics(quantize(xq), x)."""
    d, k = xq.shape
    f64 = dict(dtype=torch.float64, device=xq.device)
    out = {"gram": torch.zeros(k, k, **f64)}
    if x is not None:
        out.update({n: torch.zeros(k, k, **f64) for n, want in (("cross", cross), ("xx", xx)) if want})
        if means:
            out.update(mean_x=torch.zeros(k, **f64), mean_xq=torch.zeros(k, **f64))
    step = max(1, chunk_bytes // (8 * k))
    for r in range(0, d, step):
        q = xq[r:r + step] if quantize is None else quantize(xq[r:r + step])
        q = q.double()
        out["gram"].addmm_(q.T, q)
        if x is not None:
            f = x[r:r + step].double()
            if "cross" in out:
                out["cross"].addmm_(q.T, f)
            if "xx" in out:
                out["xx"].addmm_(f.T, f)
            if "mean_x" in out:
                out["mean_x"] += f.sum(0)
                out["mean_xq"] += q.sum(0)
    return {n: v.div_(d) for n, v in out.items()}


def host(t: torch.Tensor):
    return t.detach().to("cpu", torch.float32).numpy()


@torch.no_grad()
def smoothing_scales(rows: torch.Tensor, linears, alpha: float = 0.4) -> torch.Tensor:
    """SmoothQuant's per-input-channel scales s_j = max|X_j|^alpha / max|W_:j|^(1-alpha) from the
    rows [D, K] a norm feeds into linears (the max over all their weights' columns)."""
    xmax = rows.abs().amax(0).float()
    wmax = torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)
    return (xmax.clamp(min=1e-5) ** alpha / wmax.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def fold_smoothing(norm, linears, s: torch.Tensor):
    """Divides the norm's weight (and bias) by s and multiplies the linears' columns by it: the float
    function is unchanged, the linears' inputs are divided by s."""
    norm.weight.div_(s.to(norm.weight))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias))
    for lin in linears:
        lin.weight.mul_(s.to(lin.weight))
