"""Activation ranges: "output" (the first range of Config's default "auto") is never worse in the
layer's output error than the other rules; "mse" (ActivationQuantizer.calibrate's default) is never worse
than "minmax" or "percentile" on the inputs' mean squared quantization error, on heavy-tailed,
skewed, Gaussian and real (stories260K) inputs, 4 and 8 bits, signed and unsigned, from numpy
arrays and from torch tensors (which give the same quantizer); the tensor percentile equals
numpy's; bad inputs are refused."""
import unittest

import numpy as np
import torch

import test_pipeline  # noqa: F401  (puts the build tree's stubs on sys.path)
from axeq import ActivationQuantizer, Config


def inputs(seed):
    rng = np.random.default_rng(seed)
    s = np.exp(1.5 * rng.standard_normal(64))  # outlier channels, as in transformer activations
    yield "gaussian", rng.standard_normal(50_000)
    yield "student-t(2) channels", s * rng.standard_t(2, size=(3000, 64))
    yield "post-GELU-like", np.maximum(rng.standard_t(3, 80_000), -0.17)
    yield "log-normal", rng.lognormal(0.0, 1.2, 40_000)
    yield "one outlier", np.concatenate([rng.standard_normal(20_000), [400.0]])


def stories_inputs():
    from axeq.llama import load_llama2c
    m = load_llama2c(test_pipeline.stories260k_path())
    seen = []
    h = m.layers[2].feed_forward.w2.register_forward_pre_hook(lambda mod, i: seen.append(i[0].detach().reshape(-1)))
    with torch.no_grad():
        m(torch.randint(3, 512, (2, 128), generator=torch.Generator().manual_seed(0)))
    h.remove()
    return torch.cat(seen).numpy()


class RangeTest(unittest.TestCase):
    def test_mse_never_worse_than_minmax_or_percentile(self):
        cases = list(inputs(11)) + [("stories260K w2 inputs", stories_inputs())]
        for name, x in cases:
            x = np.asarray(x, dtype=np.float32)
            for bits in (4, 8):
                for signed in (False, True):
                    fit = {m: ActivationQuantizer.calibrate(x, bits, signed, method=m)
                           for m in ("mse", "minmax", "percentile")}
                    err = {m: q.mse(x) for m, q in fit.items()}
                    label = f"{name}, {bits} bits, signed={signed}: {err}"
                    self.assertLessEqual(err["mse"], err["minmax"], label)
                    self.assertLessEqual(err["mse"], err["percentile"], label)
                    self.assertEqual(ActivationQuantizer.calibrate(torch.from_numpy(x), bits, signed), fit["mse"], label)
        # The search must actually find better ranges (else minmax or percentile would pass alone):
        # at 4 bits, clipping the tails pays on every distribution with tails.
        for name, x in list(inputs(11))[:4]:
            x = np.asarray(x, dtype=np.float32)
            mse = ActivationQuantizer.calibrate(x, 4).mse(x)
            for method in ("minmax", "percentile"):
                self.assertLess(mse, 0.8 * ActivationQuantizer.calibrate(x, 4, method=method).mse(x), (name, method))

    def test_defaults_and_percentiles(self):
        self.assertEqual(Config().act_range, "auto")
        x = np.random.default_rng(3).standard_t(3, 10_001).astype(np.float32)
        self.assertEqual(ActivationQuantizer.calibrate(x, 8), ActivationQuantizer.calibrate(x, 8, method="mse"))
        # Giving percentiles alone keeps the older meaning (a percentile range).
        self.assertEqual(ActivationQuantizer.calibrate(x, 8, percentiles=(0.001, 99.999)),
                         ActivationQuantizer.calibrate(x, 8, method="percentile"))
        from axeq.config import _percentile
        t = torch.from_numpy(x)
        for p in (0.0, 0.001, 0.5, 37.0, 50.0, 99.0, 99.999, 100.0):
            self.assertAlmostEqual(_percentile(t, p), float(np.percentile(x, p)), places=5, msg=str(p))

    def test_output_range_never_worse_in_output_error(self):
        """ "output" (and "auto"'s first range): never worse in ||(x - q(x)) W^T|| than "minmax",
        "percentile" or "mse"; numpy and torch agree; without weights of width K it is refused."""
        rng = np.random.default_rng(17)
        moved = 0
        for c in (32, 160):  # C < K and C > K (through W^T W)
            for signed in (False, True):
                for name, x in list(inputs(5))[1:2] + [("stories260K w2 inputs", stories_inputs())]:
                    x = np.asarray(x, dtype=np.float32).reshape(-1, 64)
                    w = rng.standard_normal((c, 64)).astype(np.float32)
                    w[:, rng.integers(0, 64, 4)] *= 8

                    def err(q):
                        e = (x - q.apply(x)).astype(np.float64) @ w.T.astype(np.float64)
                        return float((e ** 2).sum())
                    out = ActivationQuantizer.calibrate(x, 8, signed, method="output", weights=w)
                    for m in ("minmax", "percentile", "mse"):
                        q = ActivationQuantizer.calibrate(x, 8, signed, method=m)
                        self.assertLessEqual(err(out), err(q) * (1 + 1e-6), (name, c, signed, m))
                        moved += m == "mse" and q != out
                    t = ActivationQuantizer.calibrate(torch.from_numpy(x), 8, signed, method="output",
                                                      weights=torch.from_numpy(w))
                    self.assertEqual((t.scale, t.zero_point), (out.scale, out.zero_point), (name, c, signed))
                    auto = ActivationQuantizer.candidates(x, 8, signed, method="auto", weights=w)
                    self.assertEqual(auto[0], out)
                    self.assertEqual(len({(a.scale, a.zero_point) for a in auto}), len(auto))
        self.assertGreater(moved, 0, "weighted channels should move the range away from the input-MSE one")
        x = np.ones((4, 8), dtype=np.float32)
        for bad in (None, np.ones((3, 7), dtype=np.float32)):
            with self.assertRaises(ValueError):
                ActivationQuantizer.calibrate(x, method="output", weights=bad)

    def test_bad_inputs(self):
        for bad in (np.array([]), np.array([1.0, np.nan]), torch.tensor([np.inf])):
            with self.assertRaises(ValueError):
                ActivationQuantizer.calibrate(bad)
        with self.assertRaises(ValueError):
            ActivationQuantizer.calibrate(np.ones(4), method="kl")
        q = ActivationQuantizer.calibrate(np.zeros(8, dtype=np.float32))
        self.assertEqual(q.mse(np.zeros(8, dtype=np.float32)), 0.0)


if __name__ == "__main__":
    unittest.main()
