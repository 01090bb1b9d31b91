"""The block-wise pipeline's pieces without a server (a stand-in client rounds to nearest): the
repeated blocks are found, the first block's positional and keyword arguments are caught and
reproduce the model's own forward, layers are grouped by shared input in execution order, merged
calibration batches give the per-batch results, float64 statistics match a numpy reference (and
quantizing X~ chunk by chunk inside them gives the same bits as quantizing it whole), a layer's
inputs collected into one buffer equal the concatenated per-pass inputs (also when the passes do
not fill it, or overflow it), SmoothQuant folding keeps the float function, and quantize_model works in place (no copy of the
model, only of one block at a time), quantizes exactly the blocks' linears and never stacks two
activation quantizers on a layer."""
import copy
import unittest

import numpy as np
import torch

import test_pipeline  # noqa: F401  (puts the build tree's stubs on sys.path)
from axeq import Config
from axeq.blocks import (ActivationHook, capture_block_inputs, find_blocks, fold_smoothing, hidden, layer_inputs,
                         linear_groups, merge_stream, smoothing_scales, statistics)
from axeq.config import ActivationQuantizer
from axeq.gpt2 import GPT2, GPT2Config
from axeq.llama import random_llama
from axeq.pipeline import quantize_model
from axeq.result import LayerResult


class RoundingClient:
    """Stands in for Client.quantize_many: per-channel round-to-nearest, records what it was sent."""

    def __init__(self):
        self.specs = []

    def quantize_many(self, specs, max_concurrency=4, progress=None, on_result=None):
        out = []
        for s in specs:
            self.specs.append(s)
            w, m = s["weight"], 2 ** (s["config"].weight_bits - 1) - 1
            scale = np.maximum(np.abs(w).max(1, keepdims=True) / m, 1e-12).astype(np.float32)
            codes = np.clip(np.rint(w / scale), -m, m).astype(np.int8)
            r = LayerResult(s["name"], "", codes, scale, s.get("bias"), s["activation"],
                            {"relative_error": float("nan"), "weight_bits": 4, "input_bits": 8},
                            {"min_outer_accumulator_bits": 0})
            if on_result:
                on_result(r)
            out.append(r)
        return out


def small_llama():
    return random_llama(dim=32, n_layers=2, hidden_dim=48, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32, seed=3)


def small_gpt2():
    return GPT2(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4), seed=5).eval()


def padded_batches(seed=0, n=3, t=12):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mask = torch.ones(2, t, dtype=torch.long)
        mask[1, t - 3 - i:] = 0  # different padding per batch: the masks differ
        out.append({"input_ids": torch.randint(0, 64, (2, t), generator=g), "attention_mask": mask})
    return out


class BlocksTest(unittest.TestCase):
    def test_finds_blocks_and_groups_by_shared_input(self):
        m = small_llama()
        name, blocks = find_blocks(m)
        self.assertEqual(name, "layers")
        self.assertIs(blocks, m.layers)
        stream = capture_block_inputs(m, m.layers[0], [torch.randint(0, 64, (2, 16))])
        self.assertEqual(linear_groups(m.layers[0], stream),
                         [["attention.wq", "attention.wk", "attention.wv"], ["attention.wo"],
                          ["feed_forward.w1", "feed_forward.w3"], ["feed_forward.w2"]])
        g = small_gpt2()
        self.assertEqual(find_blocks(g)[0], "h")
        stream = capture_block_inputs(g, g.h[0], padded_batches())
        self.assertEqual(linear_groups(g.h[0], stream), [["attn.q", "attn.k", "attn.v"], ["attn.o"], ["mlp.c_fc"], ["mlp.c_proj"]])
        with self.assertRaises(ValueError):
            find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))

    @torch.no_grad()
    def test_keyword_arguments_are_caught_and_merged_batches_agree(self):
        g = small_gpt2()
        batches = padded_batches()
        stream = capture_block_inputs(g, g.h[0], batches)
        self.assertEqual(len(stream), 3)
        self.assertEqual(set(stream[0][2]), {"attention_mask"})  # keyword-only in GPT-2's block
        self.assertFalse(torch.equal(stream[0][2]["attention_mask"], stream[1][2]["attention_mask"]))
        self.assertFalse(hasattr(g.h[0], "forward") and "forward" in g.h[0].__dict__)  # the stop hook is gone
        merged = merge_stream(stream)
        self.assertEqual(len(merged), 1)
        self.assertEqual(tuple(merged[0][0].shape), (6, 12, 32))
        for s in (stream, merged):  # the blocks over the caught inputs reproduce the model's logits
            xs = [x for x, _, _ in s]
            for block in g.h:
                xs = [hidden(block(x, *a, **kw)) for x, (_, a, kw) in zip(xs, s)]
            logits = torch.cat([g.ln_f(x) @ g.wte.weight.T for x in xs])
            ref = torch.cat([g(**b) for b in batches])
            torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
        self.assertEqual([len(s[0]) for s in merge_stream(stream, max_tokens=48)], [4, 2])  # 24 tokens each

    def test_statistics_match_a_float64_reference(self):
        rng = np.random.default_rng(7)
        xq = rng.standard_normal((1000, 24)).astype(np.float32)
        x = xq + 0.1 * rng.standard_normal((1000, 24)).astype(np.float32)
        st = statistics(torch.from_numpy(xq), torch.from_numpy(x), xx=True, means=True, chunk_bytes=8 * 24 * 97)
        a, b = xq.astype(np.float64), x.astype(np.float64)
        ref = {"gram": a.T @ a / 1000, "cross": a.T @ b / 1000, "xx": b.T @ b / 1000,
               "mean_x": b.mean(0), "mean_xq": a.mean(0)}
        self.assertEqual(set(st), set(ref))
        for k, v in ref.items():
            self.assertEqual(st[k].dtype, torch.float64)
            np.testing.assert_allclose(st[k].numpy(), v, rtol=1e-12, atol=1e-13, err_msg=k)

    def test_statistics_quantize_chunks_like_the_whole(self):
        g = torch.Generator().manual_seed(8)
        x = torch.randn(1003, 40, generator=g) * 3
        xq_raw = x + 0.2 * torch.randn(1003, 40, generator=g)
        for dynamic in (False, True):
            hook = ActivationHook(ActivationQuantizer.from_range(-4.0, 6.0, 8, False), dynamic)
            whole = statistics(hook.quantize(xq_raw), x, xx=True, means=True, chunk_bytes=8 * 40 * 97)
            chunked = statistics(xq_raw, x, xx=True, means=True, chunk_bytes=8 * 40 * 97, quantize=hook.quantize)
            self.assertEqual(set(whole), set(chunked))
            for k in whole:
                self.assertTrue(torch.equal(whole[k], chunked[k]), (dynamic, k))
            self.assertFalse(torch.equal(chunked["gram"], statistics(xq_raw, chunk_bytes=8 * 40 * 97)["gram"]))

    @torch.no_grad()
    def test_layer_inputs_in_one_buffer_equal_the_concatenation(self):
        m = small_llama()
        blk = m.layers[0]
        stream = capture_block_inputs(m, blk, [torch.randint(0, 64, (2, n)) for n in (20, 7, 13)])
        for name in ("attention.wq", "feed_forward.w2"):
            layer = dict(blk.named_modules())[name]
            seen = []
            h = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].reshape(-1, inp[0].shape[-1])))
            for x, a, kw in stream:
                blk(x, *a, **kw)
            h.remove()
            got = layer_inputs(blk, stream, layer)
            self.assertEqual(got.shape, (80, layer.in_features))
            self.assertTrue(torch.equal(got, torch.cat(seen)), name)

        class Rows(torch.nn.Module):  # a layer seeing fewer or more rows than the stream's tokens
            def __init__(self, keep):
                super().__init__()
                self.keep, self.lin = keep, torch.nn.Linear(4, 3)

            def forward(self, x):
                return self.lin(x[:, :self.keep] if self.keep > 0 else torch.cat([x, x[:, :-self.keep]], 1))
        stream = [[torch.randn(2, t, 4), (), {}] for t in (5, 6, 3)]
        for keep in (2, -2):
            blk = Rows(keep)
            ref = torch.cat([(x[:, :keep] if keep > 0 else torch.cat([x, x[:, :-keep]], 1)).reshape(-1, 4)
                             for x, _, _ in stream])
            self.assertTrue(torch.equal(layer_inputs(blk, stream, blk.lin), ref), keep)

    @torch.no_grad()
    def test_smoothing_keeps_the_float_function(self):
        g = small_gpt2()
        ids = torch.randint(0, 64, (2, 10))
        before = g(ids)
        blk = g.h[1]
        rows = torch.randn(50, 32) * torch.linspace(0.1, 20, 32)
        s = smoothing_scales(rows, [blk.attn.q, blk.attn.k, blk.attn.v])
        self.assertGreater(float(s.max() / s.min()), 2.0)  # the test exercises a real rescaling
        fold_smoothing(blk.ln_1, [blk.attn.q, blk.attn.k, blk.attn.v], s)
        torch.testing.assert_close(g(ids), before, rtol=1e-4, atol=1e-4)

    def test_quantizes_in_place_without_copying_the_model(self):
        m = small_llama()
        batches = [torch.randint(0, 64, (1, 20)) for _ in range(3)]
        ptrs = {n: p.data_ptr() for n, p in m.named_parameters()}
        copied = []
        real = copy.deepcopy
        copy.deepcopy = lambda obj, *a: (copied.append(type(obj).__name__), real(obj, *a))[1]
        try:
            client = RoundingClient()
            res = quantize_model(m, batches, client, Config(algorithm="gpfq"), smooth_pairs=m.smooth_pairs(), progress=False)
            res2 = quantize_model(m, batches, client, Config(algorithm="gpfq"), progress=False)
        finally:
            copy.deepcopy = real
        self.assertTrue(set(copied) <= {"Block"}, copied)  # one block at a time, never the model
        self.assertEqual(len(copied), 4)
        linears = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
        self.assertEqual(sorted(res), sorted(linears))
        self.assertEqual(sorted(res2), sorted(linears))
        self.assertEqual(ptrs, {n: p.data_ptr() for n, p in m.named_parameters()})
        for n in linears:
            mod = dict(m.named_modules())[n]
            self.assertEqual(len(mod._forward_pre_hooks), 1, n)
            np.testing.assert_array_equal(mod.weight.detach().numpy(), res2[n].dequantized())
        spec = client.specs[0]
        self.assertIn("gram", spec)
        self.assertIn("cross", spec)  # GPFQ needs X~^T X
        self.assertNotIn("inputs", spec)
        self.assertEqual(spec["samples"], 60)
        self.assertGreater(res.timings["total"], 0.0)


if __name__ == "__main__":
    unittest.main()
