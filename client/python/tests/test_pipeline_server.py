"""The block-wise pipeline through a real axeq-server:
- statistics uploads (float64 on the client) give the rows upload's codes on >= 99.9% of entries
  and the same relative errors within 1e-4, for OPTQ and GPFQ;
- a configuration whose codes equal the base algorithm's gives exactly the base model (bit-equal
  logits), run after other configurations in one process: nothing but the codes changes the model
  (the P_I=15 artefact of docs/results-stories260k.md);
- (class RealGPT2Test, CTest python_pipeline_server_slow, label slow: its 768- and 3072-wide
  layers take most of this file's time) GPT-2 blocks (keyword-only attention mask, padded batches,
  biases) with the real GPT-2 attention weights of ../shared/data/gpt2-attn: every layer quantized
  and certified, biases corrected on the server from the uploaded means, W8A8 close to float.
  The fast suite keeps keyword-argument blocks through the pipeline in test_pipeline_blocks and
  test_pipeline_memo."""
import os
import unittest

import numpy as np
import torch

from test_pipeline import DATA, start_server, stop, stories260k_path
from axeq import Client, Config
from axeq.blocks import statistics
from axeq.gpt2 import GPT2, GPT2Config, load_attention
from axeq.llama import load_llama2c
from axeq.memo import keep_freed_memory
from axeq.pipeline import quantize_model


class TwinClient:
    """Sends each rows upload of the pipeline a second time as statistics of the same rows."""

    def __init__(self, client):
        self.client, self.pairs = client, []

    def quantize_many(self, specs, **kw):
        rows = self.client.quantize_many(specs, **kw)
        twins = []
        for s in specs:
            t = {k: v for k, v in s.items() if k not in ("inputs", "quant_inputs")}
            x, xq = torch.from_numpy(s["inputs"]), torch.from_numpy(s["quant_inputs"])
            st = statistics(xq, x, cross=True, xx=True, means=s.get("bias") is not None)
            twins.append(dict(t, samples=x.shape[0], **{k: v.float().numpy() for k, v in st.items()}))
        self.pairs += list(zip(rows, self.client.quantize_many(twins)))
        return rows


def stories_batches(n=4, t=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.ones(1, 1, dtype=torch.long), torch.randint(3, 512, (1, t), generator=g)], 1) for _ in range(n)]


class ServerCase(unittest.TestCase):
    """One server (2 workers) and client for the tests of a class."""

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)  # small kernels: one thread, the other core for the server
        keep_freed_memory()
        cls.proc, port = start_server("--workers", "2")
        cls.client = Client(f"127.0.0.1:{port}", deadline=300)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        stop(cls.proc)


class ServerPipelineTest(ServerCase):
    def run_stories(self, cfg, client=None, **kw):
        m = load_llama2c(stories260k_path())
        res = quantize_model(m, stories_batches(), client or self.client, cfg, smooth_pairs=m.smooth_pairs(),
                             progress=False, **kw)
        return m, res

    def test_statistics_upload_matches_rows_upload(self):
        # Every layer the pipeline sends as rows is also sent as float64 statistics of the same rows
        # (blocks.statistics, as the pipeline's default upload computes them): same inputs, two
        # uploads. (Whole-model runs drift apart after a few flipped codes: the next layers'
        # inputs differ; that is chaos, not the upload.)
        # One activation range per layer (not "auto", which quantizes each layer once per range
        # tried): one pair per layer.
        for cfg in (Config(accumulator_bits=16, act_range="mse"),
                    Config(algorithm="gpfq", accumulator_bits=16, act_range="mse")):
            twin = TwinClient(self.client)
            self.run_stories(cfg, upload="rows", relative_error=True, client=twin)
            self.assertEqual(len(twin.pairs), 35)
            same = sum(int((a.codes == b.codes).sum()) for a, b in twin.pairs)
            total = sum(a.codes.size for a, _ in twin.pairs)
            self.assertGreaterEqual(same / total, 0.999, f"{cfg.algorithm}: {total - same} of {total} codes differ")
            for rows, stats in twin.pairs:
                a, b = rows.report["relative_error"], stats.report["relative_error"]
                self.assertTrue(np.isfinite(a) and np.isfinite(b), rows.name)
                self.assertLess(abs(a - b), 1e-4, f"{cfg.algorithm} {rows.name}: {a} vs {b}")

    @torch.no_grad()
    def test_equal_codes_give_the_base_model_exactly(self):
        tokens = stories_batches(n=1, t=200, seed=9)[0]
        base_model, base = self.run_stories(Config(method="base"))
        self.run_stories(Config(accumulator_bits=13, tile_size=32))  # a binding configuration in between
        tiled_model, tiled = self.run_stories(Config(accumulator_bits=20, tile_size=32))
        again_model, again = self.run_stories(Config(method="base"))
        for n in base:  # the precondition: P_I = 20 never binds at these depths
            np.testing.assert_array_equal(base[n].codes, tiled[n].codes, err_msg=n)
            np.testing.assert_array_equal(base[n].codes, again[n].codes, err_msg=n)
            self.assertEqual(base[n].activation, tiled[n].activation, n)
        ref = base_model(tokens)
        self.assertTrue(torch.equal(ref, tiled_model(tokens)))
        self.assertTrue(torch.equal(ref, again_model(tokens)))



class RealGPT2Test(ServerCase):
    @torch.no_grad()
    def test_gpt2_blocks_with_real_attention_weights(self):
        files = [os.path.join(DATA, "gpt2-attn", f"gpt2_block{b}_attn.safetensors") for b in (0, 11)]
        if not all(os.path.exists(f) for f in files):
            self.skipTest("../shared/data/gpt2-attn is not available")

        def model():
            m = GPT2(GPT2Config(vocab_size=256, n_positions=64, n_layer=2), seed=1).eval()
            self.assertEqual([load_attention(m, f, i) for i, f in enumerate(files)], [0, 11])
            return m

        g = torch.Generator().manual_seed(2)
        batches = []
        for i in range(2):
            mask = torch.ones(2, 48, dtype=torch.long)
            mask[1, 40 - 4 * i:] = 0
            batches.append({"input_ids": torch.randint(0, 256, (2, 48), generator=g), "attention_mask": mask})
        test = {"input_ids": torch.randint(0, 256, (2, 48), generator=g)}
        ref = model()(**test)
        errors = {}
        for bits, cfg in ((8, Config(weight_bits=8, method="base")), (4, Config(accumulator_bits=16))):
            m = model()
            bias = {n: mod.bias.clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
            res = quantize_model(m, batches, self.client, cfg, smooth_pairs=m.smooth_pairs(), progress=False)
            self.assertEqual(len(res), 12)
            for n, r in res.items():
                v = r.verify(cfg)
                self.assertTrue(v.consistent and v.safe, (n, v.problems))
                self.assertTrue(r.report["bias_corrected"], n)  # from the means the pipeline uploaded
                self.assertFalse(torch.equal(bias[n], dict(m.named_modules())[n].bias), n)
            errors[bits] = float((m(**test) - ref).norm() / ref.norm())
        # Real GPT-2 attention on random embeddings attends sharply, so 8-bit inputs already move
        # the logits (~0.4 here); W4 with a 16-bit accumulator must still cost more than W8.
        self.assertLess(errors[8], 0.6, errors)
        self.assertLess(errors[8], errors[4], errors)


if __name__ == "__main__":
    unittest.main()
