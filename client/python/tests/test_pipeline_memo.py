"""The pipeline's speed-ups are exact (no server: the stand-in client of test_pipeline_blocks):
- BlockMemo (axeq.memo) reuses sub-results across the passes over a block: quantize_model with it
  gives bit-identical weights, activation quantizers and logits to quantize_model without it, for
  Llama (positional arguments, OPTQ: quantized stream only) and GPT-2 (keyword-only mask, biases,
  GPFQ: float and quantized streams), and it does reuse (hits are counted);
- an output the caller modified in place, a parameter changed in place and a new hook are never
  served from the memo; forgetting a batch frees its entries and their bytes;
- release_freed_memory returns glibc's free heap to the kernel (RSS drops), and leaves it alone
  after keep_freed_memory();
- the Llama attention computed a few sequences at a time equals the one-shot computation;
- the activation hook's one-buffer quantizer equals ActivationQuantizer.apply bit for bit."""
import unittest
from unittest import mock

import numpy as np
import torch

import test_pipeline  # noqa: F401  (puts the build tree's stubs on sys.path)
from test_pipeline_blocks import RoundingClient, padded_batches, small_gpt2, small_llama
from axeq import Config, llama
from axeq.blocks import ActivationHook, capture_block_inputs
from axeq.config import ActivationQuantizer
from axeq import memo as memo_module
from axeq.memo import BlockMemo, release_freed_memory
from axeq.pipeline import quantize_model


def count_hits():
    """Patches BlockMemo.__exit__ to sum the hits of every memo; returns (patcher, totals)."""
    totals = {"hits": 0, "misses": 0}
    real = BlockMemo.__exit__

    def exit_(self, *exc):
        totals["hits"] += self.hits
        totals["misses"] += self.misses
        return real(self, *exc)
    return mock.patch.object(BlockMemo, "__exit__", exit_), totals


class Doubler(torch.nn.Module):
    """A block that modifies its submodule's output in place."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.LayerNorm(4))
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.inner(x)
        h.mul_(2.0)
        return self.lin(h)


class MemoTest(unittest.TestCase):
    @torch.no_grad()
    def test_memo_is_exact_and_reuses(self):
        cases = [(small_llama, [torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
                                for _ in range(2)], Config(), lambda m: m.smooth_pairs()),
                 (small_gpt2, padded_batches(seed=4), Config(algorithm="gpfq"), lambda m: m.smooth_pairs())]
        for make, batches, cfg, pairs in cases:
            runs = {}
            for memo in (0, None):
                m = make()
                patch, totals = count_hits()
                with patch:
                    res = quantize_model(m, batches, RoundingClient(), cfg, smooth_pairs=pairs(m), memo_bytes=memo,
                                         max_batch_tokens=24, progress=False)
                b = batches[0]
                logits = m(**b) if isinstance(b, dict) else m(b)
                runs[memo] = (res, logits, {n: p.clone() for n, p in m.named_parameters()}, dict(totals))
            (r0, l0, p0, t0), (r1, l1, p1, t1) = runs[0], runs[None]
            name = make.__name__
            self.assertEqual(t0["hits"] + t0["misses"], 0, name)  # memo_bytes=0: no memo at all
            self.assertGreater(t1["hits"], 0, name)
            self.assertTrue(torch.equal(l0, l1), name)
            for n in p0:
                self.assertTrue(torch.equal(p0[n], p1[n]), (name, n))
            for n in r0:
                np.testing.assert_array_equal(r0[n].codes, r1[n].codes, err_msg=n)
                self.assertEqual(r0[n].activation, r1[n].activation, n)

    @torch.no_grad()
    def test_changes_are_never_served_from_the_memo(self):
        torch.manual_seed(0)
        blk, x = Doubler(), torch.randn(3, 4)
        with BlockMemo(blk, 1 << 20) as memo:
            memo.pending = {blk.lin}  # the block itself is not kept (as the quantized block in the pipeline)
            ref = blk(x)
            self.assertTrue(torch.equal(blk(x), ref))  # the stored output was doubled in place: recomputed
            self.assertEqual(memo.hits, 0)
            ln = blk.inner[0]
            a = ln(x)
            self.assertIs(ln(x), a)  # nothing changed: reused
            ln.weight.mul_(3.0)
            b = ln(x)
            self.assertTrue(torch.equal(b, torch.nn.functional.layer_norm(x, (4,), ln.weight, ln.bias)))
            self.assertIs(ln(x), b)
            h = ln.register_forward_hook(lambda mod, i, o: o + 1)
            self.assertTrue(torch.equal(ln(x), b + 1))
            h.remove()
            self.assertEqual(memo.hits, 2)
            memo.pending = set()
            out = blk(x)
            self.assertIs(blk(x), out)  # nothing pending: the block's own output is reused
        self.assertNotIn("forward", vars(ln))  # the wrappers are gone
        self.assertNotIn("forward", vars(blk))

    @torch.no_grad()
    def test_forget_frees_a_batch(self):
        m = small_llama()
        blk = m.layers[0]
        stream = capture_block_inputs(m, blk, [torch.randint(0, 64, (2, 9)) for _ in range(2)])
        (x0, a0, _), (x1, a1, _) = stream
        with BlockMemo(blk, 1 << 30) as memo:
            outs = [blk(x, *a) for x, a, _ in stream]
            full = memo.bytes
            self.assertGreater(full, 0)
            self.assertTrue(torch.equal(blk(x1, *a1), outs[1]))
            hits = memo.hits
            memo.forget(x0)
            self.assertTrue(0 < memo.bytes < full)
            self.assertTrue(all(k[1] != id(x0) for k in memo.entries))
            self.assertTrue(torch.equal(blk(x1, *a1), outs[1]))  # the other batch is still served
            self.assertGreater(memo.hits, hits)
            memo.forget(x1)
            self.assertEqual((memo.bytes, memo.entries, memo.held), (0, {}, {}))

    def test_release_freed_memory(self):
        def rss_mib():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        for kept in (True, False):
            bufs = [np.ones(100 << 10, np.uint8) for _ in range(1200)]  # 117 MiB of heap (below mmap's threshold)
            del bufs[:-1]  # the last one pins the heap's top: nothing is trimmed by itself
            before = rss_mib()
            with mock.patch.object(memo_module, "_kept", kept):
                freed = release_freed_memory(64 << 20)
            if kept:
                self.assertEqual(freed, 0)
                self.assertGreater(rss_mib(), before - 32)
            else:
                self.assertGreater(freed, 100 << 20)
                self.assertLess(rss_mib(), before - 64)
            del bufs

    def test_chunked_attention_equals_one_shot(self):
        g = torch.Generator().manual_seed(2)
        q, k, v = (torch.randn(5, 2, 2, 33, 8, generator=g) for _ in range(3))
        mask = torch.ones(33, 33, dtype=torch.bool).triu(1)
        whole = llama.attend(q, k[:, :, :1], v[:, :, :1], mask, 0.35)
        with mock.patch.object(llama, "ATTENTION_CHUNK_BYTES", 2 * 2 * 33 * 33 * 4 * 2):  # 2 sequences a step
            parts = llama.attend(q, k[:, :, :1], v[:, :, :1], mask, 0.35)
        self.assertTrue(torch.equal(whole, parts))

    def test_activation_hook_equals_apply(self):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(300, 17, generator=g) * 4
        x[0, :3] = torch.tensor([1e6, -1e6, 0.5])  # clamped both ways, and a tie
        for bits, signed in ((8, False), (4, False), (8, True), (3, True)):
            for lo, hi in ((-2.0, 5.0), (0.0, 1.0), (-7.5, 7.5)):
                act = ActivationQuantizer.from_range(lo, hi, bits, signed)
                self.assertTrue(torch.equal(ActivationHook(act).quantize(x), act.apply(x)), (bits, signed, lo, hi))


if __name__ == "__main__":
    unittest.main()
