"""A small PyTorch Llama-2 for llama2.c checkpoints (stories260K; no downloads) or random
initialisation, its tok512 tokenizer (llama2.c's BPE by scores, with byte fallback), and the
evaluations: windowed perplexity, seeded sampling of in-domain text from a model, and fidelity to a
reference model on that text (mean KL divergence, top-1 agreement, perplexity ratio: the figures
of llama.cpp's perplexity tool with --kl-divergence)."""
from __future__ import annotations

import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


_MASKS = {}


def _causal(t, device):
    """The [t, t] boolean mask of future positions (True above the diagonal), cached."""
    key = (t, str(device))
    if key not in _MASKS:
        _MASKS[key] = torch.ones(t, t, dtype=torch.bool, device=device).triu(1)
    return _MASKS[key]


ATTENTION_CHUNK_BYTES = 16 << 20


def attend(q, k, v, mask, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, mask -> -inf) @ v over the last two dimensions, the leading one (the
    sequences) a few at a time, so that the [.., t, t] scores of one step stay within
    ATTENTION_CHUNK_BYTES: below glibc's mmap threshold (32 MiB) a freed buffer is reused, above it
    every call maps fresh pages, and page faults cost more than the arithmetic on small models.
    Exact: each sequence is computed as if it were alone (same kernels, same order)."""
    per_seq = q[:1].numel() // q.shape[-1] * k.shape[-2] * q.element_size()
    step = max(1, ATTENTION_CHUNK_BYTES // per_seq)
    parts = []
    for i in range(0, q.shape[0], step):
        att = (q[i:i + step] @ k[i:i + step].transpose(-1, -2)) * scale
        att.masked_fill_(mask, float("-inf"))
        parts.append(F.softmax(att, dim=-1) @ v[i:i + step])
        del att
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class CausalAttention(nn.Module):
    """The parameter-free core of attention, a module of its own so that the pipeline's memo
    (axeq.memo) can reuse it when the projections feeding it did not change."""

    def forward(self, q, k, v):
        return attend(q, k, v, _causal(q.shape[-2], q.device), 1.0 / math.sqrt(q.shape[-1]))


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = n_heads, n_kv_heads, dim // n_heads
        self.core = CausalAttention()
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.hd)
        k = self.wk(x).view(b, t, self.n_kv, self.hd)
        v = self.wv(x).view(b, t, self.n_kv, self.hd)

        def rope(z):
            z0, z1 = z[..., 0::2], z[..., 1::2]
            out = torch.stack((z0 * cos - z1 * sin, z0 * sin + z1 * cos), dim=-1)
            return out.flatten(-2)

        q, k = rope(q), rope(k)
        rep = self.n_heads // self.n_kv
        # Grouped-query attention without copying k and v: query heads h * rep .. h * rep + rep - 1
        # share kv head h (as repeat_interleave would pair them).
        q = q.view(b, t, self.n_kv, rep, self.hd).permute(0, 2, 3, 1, 4)  # [b, kv, rep, t, hd]
        k, v = k.permute(0, 2, 1, 3)[:, :, None], v.permute(0, 2, 1, 3)[:, :, None]
        out = self.core(q, k, v)  # [b, kv, rep, t, hd]
        return self.wo(out.permute(0, 3, 1, 2, 4).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg["dim"])
        self.attention = Attention(cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"])
        self.ffn_norm = RMSNorm(cfg["dim"])
        self.feed_forward = FeedForward(cfg["dim"], cfg["hidden_dim"])

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg["vocab_size"], cfg["dim"])
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.norm = RMSNorm(cfg["dim"])
        hd = cfg["dim"] // cfg["n_heads"]
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(cfg["seq_len"]).float(), freqs)
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, self.cos[:, :t], self.sin[:, :t])
        return self.norm(x) @ self.tok_embeddings.weight.T  # tied classifier, stays float

    # Names of the linear layers in execution order, grouped by shared input (concurrent groups).
    def linear_groups(self):
        groups = []
        for i in range(self.cfg["n_layers"]):
            p = f"layers.{i}."
            groups += [[p + "attention.wq", p + "attention.wk", p + "attention.wv"], [p + "attention.wo"],
                       [p + "feed_forward.w1", p + "feed_forward.w3"], [p + "feed_forward.w2"]]
        return groups

    # (norm, linears) pairs SmoothQuant can fold scales into.
    def smooth_pairs(self):
        out = []
        for i, layer in enumerate(self.layers):
            p = f"layers.{i}."
            out.append((layer.attention_norm, [p + "attention.wq", p + "attention.wk", p + "attention.wv"]))
            out.append((layer.ffn_norm, [p + "feed_forward.w1", p + "feed_forward.w3"]))
        return out


def load_llama2c(path) -> Llama:
    """Loads a llama2.c legacy (v0) checkpoint (see ../shared/data/README.md)."""
    raw = open(path, "rb").read()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = struct.unpack("<7i", raw[:28])
    cfg = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
               vocab_size=abs(vocab), seq_len=seq)
    data = np.frombuffer(raw, dtype=np.float32, offset=28)
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = torch.from_numpy(data[off:off + n].copy()).view(*shape)
        off += n
        return a

    m = Llama(cfg)
    hd = dim // n_heads
    kv = n_kv * hd
    with torch.no_grad():
        m.tok_embeddings.weight.copy_(take(cfg["vocab_size"], dim))
        L = m.layers
        for l, w in zip(L, take(n_layers, dim)): l.attention_norm.weight.copy_(w)
        for l, w in zip(L, take(n_layers, dim, dim)): l.attention.wq.weight.copy_(w)
        for l, w in zip(L, take(n_layers, kv, dim)): l.attention.wk.weight.copy_(w)
        for l, w in zip(L, take(n_layers, kv, dim)): l.attention.wv.weight.copy_(w)
        for l, w in zip(L, take(n_layers, dim, dim)): l.attention.wo.weight.copy_(w)
        for l, w in zip(L, take(n_layers, dim)): l.ffn_norm.weight.copy_(w)
        for l, w in zip(L, take(n_layers, hidden, dim)): l.feed_forward.w1.weight.copy_(w)
        for l, w in zip(L, take(n_layers, dim, hidden)): l.feed_forward.w2.weight.copy_(w)
        for l, w in zip(L, take(n_layers, hidden, dim)): l.feed_forward.w3.weight.copy_(w)
        m.norm.weight.copy_(take(dim))
    return m.eval()


class Tokenizer:
    """llama2.c's tokenizer: codepoints (byte fallback ids 3..258), then greedy merges by score."""

    def __init__(self, path, vocab_size):
        raw = open(path, "rb").read()
        off = 4
        self.vocab, self.scores = [], []
        for _ in range(vocab_size):
            score, n = struct.unpack_from("<fi", raw, off)
            off += 8
            self.vocab.append(raw[off:off + n].decode("utf-8", errors="replace"))
            self.scores.append(score)
            off += n
        self.ids = {s: i for i, s in enumerate(self.vocab)}

    def _encode_segment(self, seg):
        toks = []
        for ch in seg:
            if ch in self.ids:
                toks.append(self.ids[ch])
            else:
                toks += [b + 3 for b in ch.encode("utf-8")]
        while True:
            best, best_i = -1e10, -1
            for i in range(len(toks) - 1):
                j = self.ids.get(self.vocab[toks[i]] + self.vocab[toks[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                return toks
            toks[best_i:best_i + 2] = [best_id]

    def encode(self, text, bos=True):
        """Pieces hold a space only at their start, so the text is split before every space that
        follows a non-space and each part merged on its own (same result, O(n) segments)."""
        text = " " + text  # llama2.c's dummy prefix
        segs, start = [], 0
        for i in range(1, len(text)):
            if text[i] == " " and text[i - 1] != " ":
                segs.append(text[start:i])
                start = i
        segs.append(text[start:])
        out = [1] if bos else []
        for s in segs:
            out += self._encode_segment(s)
        return out

    def decode(self, tokens):
        s = ""
        for i, t in enumerate(tokens):
            if t == 1:
                continue
            p = self.vocab[t]
            if i > 0 and tokens[i - 1] == 1 and p.startswith(" "):
                p = p[1:]
            if p.startswith("<0x") and p.endswith(">"):
                p = chr(int(p[3:-1], 16))
            s += p
        return s


@torch.no_grad()
def greedy(model, n=40):
    toks = [1]
    for _ in range(n):
        toks.append(int(model(torch.tensor([toks]))[0, -1].argmax()))
    return toks


@torch.no_grad()
def perplexity(model, tokens, window=512):
    """exp(mean NLL) of every token after the first (BOS): windows of `window` tokens that overlap by
    one, so each token is predicted once and only the first window starts with BOS."""
    nll, n = 0.0, 0
    for s in range(0, len(tokens) - 1, window - 1):
        chunk = tokens[s:s + window]
        if len(chunk) < 2:
            break
        logits = model(torch.tensor([chunk]))[0, :-1]
        nll += F.cross_entropy(logits, torch.tensor(chunk[1:]), reduction="sum").item()
        n += len(chunk) - 1
    return math.exp(nll / n)


def random_llama(dim=1024, n_layers=8, hidden_dim=2816, n_heads=16, n_kv_heads=16, vocab_size=512,
                 seq_len=512, seed=0) -> Llama:
    """A randomly initialised Llama (N(0, 0.02) weights from a seeded generator; output
    projections scaled by 1/sqrt(2 L)); ~100M parameters with the defaults."""
    cfg = dict(dim=dim, n_layers=n_layers, hidden_dim=hidden_dim, n_heads=n_heads, n_kv_heads=n_kv_heads,
               vocab_size=vocab_size, seq_len=seq_len)
    m = Llama(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                scale = 0.02 / (math.sqrt(2 * n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1)
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return m.eval()


@torch.no_grad()
def sample(model, n: int, length: int, seed: int = 0, bos: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """n sequences of `length` tokens (BOS first) sampled from model with a seeded generator:
    in-domain held-out text for fidelity figures. Deterministic for a fixed seed and thread count."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.full((n, 1), bos, dtype=torch.long)
    for _ in range(length - 1):
        p = F.softmax(model(toks)[:, -1].float() / temperature, dim=-1)
        toks = torch.cat([toks, torch.multinomial(p, 1, generator=g)], dim=1)
    return toks


@torch.no_grad()
def log_probs(model, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities [n, length - 1, vocab] of model on tokens [n, length]."""
    return F.log_softmax(model(tokens)[:, :-1].double(), dim=-1)


@torch.no_grad()
def fidelity(model, tokens: torch.Tensor, reference: torch.Tensor) -> dict:
    """How closely model follows the reference on tokens [n, length], given the reference's
    log_probs: mean KL(reference || model) over all predicted positions (nats), top-1 agreement
    (% of positions where both pick the same most likely token), perplexity of model on tokens and
    its ratio to the reference's."""
    lp = log_probs(model, tokens)
    target = tokens[:, 1:, None]
    kld = (reference.exp() * (reference - lp)).sum(-1).mean()
    nll, ref_nll = -lp.gather(-1, target).mean(), -reference.gather(-1, target).mean()
    return {"kld": float(kld), "top1_agreement": 100.0 * float((lp.argmax(-1) == reference.argmax(-1)).double().mean()),
            "ppl_sampled": math.exp(float(nll)), "ppl_ratio": math.exp(float(nll - ref_nll))}
