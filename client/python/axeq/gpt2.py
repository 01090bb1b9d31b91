"""A GPT-2 architecture in PyTorch with nn.Linear projections (OpenAI's Conv1D layers transposed):
learned positions, pre-LayerNorm blocks with biased q/k/v/o and a GELU MLP, tied classifier.
Blocks take the attention mask as a keyword argument (as Hugging Face's do), so pipelines must
carry keyword arguments. Random initialisation (GPT-2's: N(0, 0.02), residual projections scaled
by 1/sqrt(2 L)), or the real attention projections of GPT-2 small from safetensors files
(../shared/data/gpt2-attn: blocks 0, 5 and 11 hold q, k, v, o [768, 768] with biases)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    eps: float = 1e-5


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, attention_mask):
        b, t, d = x.shape
        h = self.n_head
        q, k, v = (p(x).view(b, t, h, d // h).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h) + attention_mask
        out = F.softmax(att, dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, hidden_states, *, attention_mask):
        """attention_mask: additive [B, 1, T, T] (0 where attended, -inf elsewhere); keyword only."""
        x = hidden_states + self.attn(self.ln_1(hidden_states), attention_mask)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.eps)
        if seed is not None:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int):
        """GPT-2's initialisation, from a seeded generator (reproducible on any device)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.ones_like(p))
                continue
            std = 0.02 / (math.sqrt(2 * self.cfg.n_layer) if name.endswith(("attn.o.weight", "c_proj.weight")) else 1)
            p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, input_ids, attention_mask=None):
        """input_ids [B, T]; attention_mask [B, T] (1 = token, 0 = padding) or None. Returns logits."""
        b, t = input_ids.shape
        x = self.wte(input_ids) + self.wpe(torch.arange(t, device=input_ids.device))[None]
        keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, None, :]
        keep = keep | torch.eye(t, dtype=torch.bool, device=x.device)  # a padded row attends to itself
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        for block in self.h:
            x = block(x, attention_mask=mask)
        return self.ln_f(x) @ self.wte.weight.T

    def smooth_pairs(self):
        """(norm, linears) pairs SmoothQuant can fold scales into (LayerNorm weight and bias)."""
        out = []
        for i in range(self.cfg.n_layer):
            p = f"h.{i}."
            out += [(self.h[i].ln_1, [p + "attn.q", p + "attn.k", p + "attn.v"]), (self.h[i].ln_2, [p + "mlp.c_fc"])]
        return out


@torch.no_grad()
def load_attention(model: GPT2, path: str, into: int) -> int:
    """Copies the q/k/v/o weights and biases of one GPT-2 block from a safetensors file of
    ../shared/data/gpt2-attn into model.h[into].attn; returns the source block number.
    ValueError if the file holds no attention block or its shapes do not fit the model."""
    from .safetensors import read_safetensors
    tensors, _ = read_safetensors(path)
    blocks = {k.split(".")[1] for k in tensors if k.startswith("h.") and ".attn." in k}
    if len(blocks) != 1:
        raise ValueError(f"{path}: expected the attention of one block, found blocks {sorted(blocks)}")
    src = blocks.pop()
    attn = model.h[into].attn
    for p in ("q", "k", "v", "o"):
        for kind in ("weight", "bias"):
            a = np.asarray(tensors[f"h.{src}.attn.{p}.{kind}"], dtype=np.float32)
            dst = getattr(getattr(attn, p), kind)
            if tuple(a.shape) != tuple(dst.shape):
                raise ValueError(f"{path}: h.{src}.attn.{p}.{kind} has shape {a.shape}, the model {tuple(dst.shape)}")
            dst.copy_(torch.from_numpy(a))
    return int(src)
