"""PyTorch pipeline: quantize the nn.Linear layers of a model's repeated blocks through axeq-server,
block by block, as GPTQModel and llm-compressor do.

The inputs (and keyword arguments: masks, positions) of the first block are caught once; then per
block, the calibration set runs through the float block (X) and the block quantized so far (X~),
true-sequentially inside the block (layers sharing an input, e.g. q/k/v, go together, then o, then
up/gate, then down); each group's statistics X~^T X~, X~^T X (and X^T X, means when needed) are
accumulated in float64 on the model's device and uploaded, the layers are quantized concurrently,
the dequantized weights and corrected biases written back in place and the N-bit activation
quantizer installed as a forward pre-hook; both streams are carried to the next block. Memory: the
model once, one float copy of the current block and one block's activations. SmoothQuant
(alpha 0.4, the paper's Appendix D) can be folded in per block first. Codes and certificates are
returned per layer."""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import weakref
from dataclasses import replace

import torch

from .blocks import (ActivationHook, capture_block_inputs, find_blocks, hidden, host, install_activation_hook,
                     fold_smoothing, layer_inputs, linear_groups, merge_stream, smoothing_scales, statistics)
from .client import Client, LayerResult, _error_or_inf
from .config import ActivationQuantizer, Config
from .memo import BlockMemo, release_freed_memory


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


AUTO_JUDGE_TOKENS = 4096  # "auto" judges its trials on the first calibration batches up to this many tokens
MEMO_STREAM_COPIES = 4  # default budget of the BlockMemos (split between the streams): copies of one
MEMO_MIN_BYTES = 64 << 20  # stream's hidden states, but at least this much


class QuantizedModel(dict):
    """{layer name: LayerResult}, plus .timings (seconds: capture, forward, statistics, server,
    total) and .upload_bytes."""
    timings: dict
    upload_bytes: int = 0


class LayerProgress:
    """Progress over the layers: a tqdm bar when stderr is a terminal (and tqdm is installed),
    else one line per finished layer (log files stay readable)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.t0, self.bar = total, 0, time.time(), None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="layer", desc="axeq", file=sys.stderr)
            except ImportError:
                pass

    def layer(self, r: LayerResult):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(r.name, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            err = r.report.get("relative_error", float("nan"))
            sys.stderr.write(f"axeq {self.done}/{self.total} {r.name} W{r.report.get('weight_bits')}"
                             f"A{r.report.get('input_bits')} rel.err {err:.4f} min P_O "
                             f"{r.certificate['min_outer_accumulator_bits']} {time.time() - self.t0:.1f}s\n")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _Run:
    """One quantize_model call: its options, client, progress, timings and results."""

    def __init__(self, client, config, opts):
        self.client, self.config, self.o = client, config, opts
        self.results = QuantizedModel()
        self.results.timings = dict(capture=0.0, forward=0.0, statistics=0.0, server=0.0, total=0.0)
        self.xx = None  # (weak reference to X, X^T X / D) of the group being quantized

    def tick(self, key, t0):
        self.results.timings[key] += time.time() - t0
        return time.time()

    def layer_config(self, lin) -> Config:
        c = self.config
        if c.method != "naive":
            return c
        m, n = naive_bit_widths(lin.in_features, c.weight_bits, c.input_bits, c.signed_inputs, c.accumulator_bits)
        return replace(c, method="base", weight_bits=m, input_bits=n)

    def float_inputs(self, fblock, fstream, names, mods, pair):
        """The group's float-stream inputs X if read (SmoothQuant, rows, GPFQ, relative errors,
        bias correction), else None: OPTQ's "auto" carries the float stream only for choose."""
        if fblock is None:
            return None
        cfgs = [(self.layer_config(mods[n]), mods[n].bias is not None) for n in names]
        if not (pair or self.o["upload"] == "rows" or self.o["relative_error"]
                or any(c.algorithm == "gpfq" or (b and c.bias_correction) for c, b in cfgs)):
            return None
        return layer_inputs(fblock, fstream, dict(fblock.named_modules())[names[0]])

    def calibration(self, cfg, hook, xq_raw, x, bias: bool, relative_error: bool) -> dict:
        """quantize()'s calibration arguments for the layers of a group that share cfg's input bit
        width: rows (X, X~) or statistics, computed once for them all. X is the float stream's
        inputs when carried, else the quantized stream's before activation quantization."""
        o = self.o
        if o["upload"] == "rows":
            return {"inputs": host(xq_raw if x is None else x), "quant_inputs": host(hook.quantize(xq_raw))}
        cross = cfg.algorithm == "gpfq" or relative_error
        src = xq_raw if x is None and relative_error else x
        if relative_error and (self.xx is None or self.xx[0]() is not src):
            self.xx = None  # X^T X / D does not depend on the range tried: once per group
            self.xx = (weakref.ref(src), host(statistics(src)["gram"]))
        st = statistics(xq_raw, src, cross=cross, means=bias and cfg.bias_correction, quantize=hook.quantize)
        for k in st:  # to float32 one at a time (each float64 K x K is freed before the next)
            st[k] = host(st[k])
        if relative_error:
            st["xx"] = self.xx[1]
        release_freed_memory()  # the chunks' and float64 buffers
        return dict(samples=xq_raw.shape[0], **st)

    def ranges(self, names, mods, xq_raw):
        """Per layer: the activation ranges to try (ActivationQuantizer.candidates; one fit per input
        bit width, shared by the layers that read the same input, on their stacked weights)."""
        release_freed_memory()  # the passes that caught xq_raw
        keys = {n: (self.layer_config(mods[n]).input_bits, self.layer_config(mods[n]).signed_inputs) for n in names}
        fits = {}
        for n in names:
            if keys[n] not in fits:
                cfg = self.layer_config(mods[n])
                w = torch.cat([mods[m].weight.detach() for m in names if keys[m] == keys[n]])
                fits[keys[n]] = ActivationQuantizer.candidates(xq_raw, cfg.input_bits, cfg.signed_inputs,
                                                               cfg.act_percentiles, cfg.act_range, w)
        return keys, fits

    @torch.no_grad()
    def group(self, prefix, block, fblock, names, qstream, fstream, pairs, progress):
        """Quantizes one group of layers of block (they share an input) and installs their results.
        With several activation ranges (act_range "auto") every layer is quantized with each and
        the trial to keep is chosen by the block's output (choose)."""
        t0 = time.time()
        mods = dict(block.named_modules())
        xq_raw = layer_inputs(block, qstream, mods[names[0]])
        pair = pairs.get(names[0])
        x = self.float_inputs(fblock, fstream, names, mods, pair)
        if pair:  # SmoothQuant, from the float inputs when they are carried: fold, rescale the inputs
            s = smoothing_scales(xq_raw if x is None else x, [mods[n] for n in pair[1]], self.o["smoothquant_alpha"])
            for blk in (block, fblock) if fblock is not None else (block,):
                m = dict(blk.named_modules())
                fold_smoothing(m[pair[0]], [m[n] for n in pair[1]], s)
            xq_raw = xq_raw / s.to(xq_raw)
            x = None if x is None else x / s.to(x)
        t0 = self.tick("forward", t0)
        keys, fits = self.ranges(names, mods, xq_raw)
        trials = max(len(f) for f in fits.values())
        rel = self.o["relative_error"] or (trials > 1 and fblock is None)  # choose()'s fallback needs it
        bias = any(mods[n].bias is not None for n in names)
        tried = []  # per range tried: {layer name: (result, hook)}
        for t in range(trials):
            specs, hooks, shared = [], {}, {}
            for n in names:
                if len(fits[keys[n]]) <= t:
                    continue
                lin, cfg = mods[n], self.layer_config(mods[n])
                if keys[n] not in shared:  # one set of statistics per bit width: a shared input
                    hook = ActivationHook(fits[keys[n]][t], self.o["dynamic_activations"])
                    shared[keys[n]] = (hook, self.calibration(cfg, hook, xq_raw, x, bias, rel))
                hooks[n], data = shared[keys[n]]
                if lin.bias is None:
                    data = {k: v for k, v in data.items() if not k.startswith("mean_")}
                specs.append(dict(data, name=prefix + n, weight=host(lin.weight), config=cfg, activation=hooks[n].act,
                                  bias=None if lin.bias is None else host(lin.bias), relative_error=rel))
            del shared
            t0 = self.tick("statistics", t0)
            done = {}
            for r in self.client.quantize_many(specs, max_concurrency=self.o["max_concurrency"],
                                               on_result=progress.layer if trials == 1 else None):
                done[r.name[len(prefix):]] = (r, hooks[r.name[len(prefix):]])
            tried.append({**tried[0], **done} if tried else done)  # fewer ranges: a layer keeps its first
            t0 = self.tick("server", t0)
        del xq_raw, x
        best = self.choose(mods, block, fblock, qstream, fstream, tried)
        self.tick("forward", t0)
        for n, (r, hook) in best.items():
            self.results[r.name] = r
            if trials > 1:
                progress.layer(r)

    @staticmethod
    @torch.no_grad()
    def choose(mods, block, fblock, qstream, fstream, tried) -> dict:
        """Installs and returns the trial to keep, {layer name: (result, hook)}. Several trials
        (act_range "auto") with the float stream carried: the one whose block output (this group
        quantized, later layers float) is closest to the float block's, sum ||block(X~) -
        fblock(X)||^2 over the first calibration batches (whole ones, until AUTO_JUDGE_TOKENS
        tokens), the first on ties (docs/results-stories260k.md). Without the float stream: per
        layer the least relative output error the server reports (the CLI's rule)."""
        if len(tried) > 1 and fblock is None:
            tried = [{n: min((t[n] for t in tried), key=lambda rh: _error_or_inf(rh[0])) for n in tried[0]}]
        weights = [{n: (torch.from_numpy(r.dequantized()), None if r.bias is None else torch.from_numpy(r.bias), hook)
                    for n, (r, hook) in t.items()} for t in tried]

        def install(i):  # trial i's weights, biases and activation quantizers into the block
            for n, (w, b, hook) in weights[i].items():
                mods[n].weight.copy_(w.to(mods[n].weight))
                if b is not None and mods[n].bias is not None:
                    mods[n].bias.copy_(b.to(mods[n].bias))
                install_activation_hook(mods[n], hook)
        err = [0.0] * len(tried)
        seen = 0
        for (xq, a, kw), (xf, fa, fkw) in zip(qstream, fstream) if len(tried) > 1 else ():
            if seen >= AUTO_JUDGE_TOKENS:
                break
            seen += xq.shape[:-1].numel()
            y = hidden(fblock(xf, *fa, **fkw))  # one batch's output at a time
            for i in range(len(tried)):
                install(i)
                err[i] += float((hidden(block(xq, *a, **kw)) - y).double().pow(2).sum())
        i = min(range(len(tried)), key=lambda i: (err[i], i))
        install(i)
        return tried[i]

    @torch.no_grad()
    def block(self, prefix, block, qstream, fstream, pairs, groups, progress):
        """Quantizes one block true-sequentially; returns the streams at its output."""
        t0 = time.time()
        for m in block.modules():
            if isinstance(m, torch.nn.Linear):
                install_activation_hook(m, None)
        fblock = copy.deepcopy(block) if fstream is not None else None  # this block's float weights
        groups = groups or linear_groups(block, qstream)
        t0 = self.tick("forward", t0)
        with contextlib.ExitStack() as stack:
            carried = [b for b in (block, fblock) if b is not None]
            memos = [stack.enter_context(BlockMemo(b, self.o["memo_bytes"] // len(carried)))
                     for b in carried if self.o["memo_bytes"]]
            for i, names in enumerate(groups):
                for memo in memos:  # layers that will change: modules holding them are not kept (the
                    mods = dict(memo.block.named_modules())  # float block's change only by SmoothQuant)
                    memo.pending = {mods[n] for g in groups[i:] for n in g} if memo.block is block else set()
                self.group(prefix, block, fblock, names, qstream, fstream, pairs, progress)
                self.xx = None
                release_freed_memory()
            t0 = time.time()
            for blk, stream in ((block, qstream), (fblock, fstream)):
                memo = next((m for m in memos if m.block is blk), None)
                if memo is not None:
                    memo.pending = set()
                for e in stream or ():  # in place, batch by batch: the block's input and its
                    x, e[0] = e[0], hidden(blk(e[0], *e[1], **e[2]))  # memo entries are freed as we go
                    if memo is not None:
                        memo.forget(x)
                    del x
            self.tick("forward", t0)
        release_freed_memory()
        return qstream, fstream


def quantize_model(model, batches, client: Client, config: Config | None = None, *, blocks=None,
                   groups=None, smooth_pairs=None, smoothquant_alpha: float | None = 0.4,
                   upload: str = "statistics", relative_error: bool = False,
                   dynamic_activations: bool = False, max_concurrency: int = 4,
                   max_batch_tokens: int = 8192, memo_bytes: int | None = None,
                   progress: bool = True) -> QuantizedModel:
    """Quantizes the nn.Linear layers of model's repeated blocks in place, block by block; returns
    {layer name: LayerResult} (codes, scales, certificate) with .timings.

    batches: model inputs (tensors, or tuples/dicts of arguments). blocks: the nn.ModuleList of
    blocks (default: find_blocks). groups: optional lists of layer names (full names) quantized
    together, in execution order; default: found by running the block (layers sharing an input).
    smooth_pairs: (norm module, [linear names]) for SmoothQuant. upload: "statistics" (K x K,
    computed here in float64) or "rows". relative_error: also compute X^T X so the server reports
    relative errors. max_batch_tokens: calibration batches are merged into forward passes of up
    to this many tokens (merge_stream; lower it to bound attention's memory). memo_bytes: what axeq.memo.BlockMemo may keep,
    split evenly between the quantized and the float stream when both are carried, to reuse
    sub-results across the passes over a block (default: MEMO_STREAM_COPIES copies of one stream's
    hidden states, at least MEMO_MIN_BYTES; 0 turns it off; results are the same either way).
    Memory: the model, one float copy of the current block, the streams, the memo, one group's
    inputs and its statistics; freed heap is returned between phases (axeq.memo.release_freed_memory)
    unless axeq.memo.keep_freed_memory() was called. The activation range is fitted by
    config.act_range on X~; with "auto" (the default)
    each group is quantized with every range of ActivationQuantizer.candidates and the one whose
    block output is closest to the float block's is kept (_Run.choose; the float stream is carried
    for it). Layers outside the blocks (embeddings, classifier) stay float. ValueError on bad options."""
    config = config or Config()
    if upload not in ("statistics", "rows"):
        raise ValueError(f"upload must be 'statistics' or 'rows', got {upload!r}")
    t_start = time.time()
    model.eval()
    prefix, blocks = find_blocks(model) if blocks is None else (_name_of(model, blocks), blocks)
    run = _Run(client, config, dict(upload=upload, relative_error=relative_error, max_concurrency=max_concurrency,
                                    dynamic_activations=dynamic_activations, smoothquant_alpha=smoothquant_alpha,
                                    memo_bytes=memo_bytes))
    has_bias = any(m.bias is not None for m in blocks.modules() if isinstance(m, torch.nn.Linear))
    need_float = (config.algorithm == "gpfq" or relative_error or (has_bias and config.bias_correction)
                  or config.act_range == "auto")  # auto's trials are judged against the float block (_Run.choose)
    mods = dict(model.named_modules())
    total = sum(isinstance(m, torch.nn.Linear) for m in blocks.modules())
    bar = LayerProgress(total, progress)
    t0 = time.time()
    qstream = merge_stream(capture_block_inputs(model, blocks[0], batches), max_batch_tokens)
    fstream = [list(s) for s in qstream] if need_float else None
    if memo_bytes is None:  # room for a few tensors of the stream's size per batch
        run.o["memo_bytes"] = max(MEMO_MIN_BYTES, MEMO_STREAM_COPIES * sum(x.numel() * x.element_size()
                                                                        for x, _, _ in qstream))
    run.tick("capture", t0)
    try:
        for i, block in enumerate(blocks):
            p = f"{prefix}.{i}." if prefix else f"{i}."
            pairs = _block_pairs(block, smooth_pairs, p) if smoothquant_alpha else {}
            bgroups = None if groups is None else [[n[len(p):] for n in g] for g in groups if g[0].startswith(p)]
            qstream, fstream = run.block(p, block, qstream, fstream, pairs, bgroups, bar)
    finally:
        bar.close()
    run.results.timings["total"] = time.time() - t_start
    return run.results


def _name_of(model, module) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n
    raise ValueError("blocks is not a submodule of model")


def _block_pairs(block, smooth_pairs, prefix) -> dict:
    """{first linear's name: (norm's name, [linear names])} for the SmoothQuant pairs inside block
    (names relative to it)."""
    names = {m: n for n, m in block.named_modules()}
    out = {}
    for norm, linears in smooth_pairs or ():
        if norm in names:
            rel = [n[len(prefix):] for n in linears]
            out.update({n: (names[norm], rel) for n in rel})
    return out
