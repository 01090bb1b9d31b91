"""Activation ranges: "mse" (the default of Config and ActivationQuantizer.calibrate) is never worse
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
        self.assertEqual(Config().act_range, "mse")
        x = np.random.default_rng(3).standard_t(3, 10_001).astype(np.float32)
        self.assertEqual(ActivationQuantizer.calibrate(x, 8), ActivationQuantizer.calibrate(x, 8, method="mse"))
        # Giving percentiles alone keeps the older meaning (a percentile range).
        self.assertEqual(ActivationQuantizer.calibrate(x, 8, percentiles=(0.001, 99.999)),
                         ActivationQuantizer.calibrate(x, 8, method="percentile"))
        from axeq.config import _percentile
        t = torch.from_numpy(x)
        for p in (0.0, 0.001, 0.5, 37.0, 50.0, 99.0, 99.999, 100.0):
            self.assertAlmostEqual(_percentile(t, p), float(np.percentile(x, p)), places=5, msg=str(p))

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
