"""axeq.torch: QuantLinear's integer datapath against a plain transliteration of core/simulate.cc
and against `axeq simulate --json` on the same stories260K layers and inputs (identical overflow
counts and output errors, wrapping and saturating, two's complement and symmetric); certified
layers never overflow on the worst-case inputs of Eq. 6 and equal fake mode to float rounding;
uncertified ones overflow exactly where their certificate says; the loader refuses bad results;
save/load keep everything. Seeds are logged (AXEQ_TEST_SEED)."""
import copy
import json
import os
import tempfile
import unittest

import numpy as np
import torch

from axeq.llama import load_llama2c
from axeq.result import read_result
from axeq.safetensors import read_safetensors
from axeq.torch import (QuantLinear, apply_result, datapath, load_quantized, overflow_counters, reset_counters,
                        save_quantized, set_datapath)
from test_result import CKPT, cli_files, run_cli

SEED = int(os.environ.get("AXEQ_TEST_SEED", "7"))


def plain_datapath(x, q, p, t, po, mode, twos):
    """core/simulate.cc's Register and Dot, one term at a time in Python integers."""
    def reg(bits):
        if bits <= 0:
            return None
        hi = (1 << (bits - 1)) - 1
        return (-hi - 1 if twos else -hi), hi, 1 << bits

    def add(r, acc, term, ev):
        s = acc + term
        if r is None or r[0] <= s <= r[1]:
            return s
        ev[0] += 1
        if mode == "saturate":
            return r[1] if s > r[1] else r[0]
        return (s + r[2] // 2) % r[2] - r[2] // 2

    d, k = x.shape
    t = k if t <= 0 or t >= k else t
    inner, outer = reg(p), reg(0 if t == k else po)
    out, events = np.zeros((d, q.shape[0]), np.int64), np.zeros((d, q.shape[0]), np.int64)
    for i in range(d):
        for c in range(q.shape[0]):
            ev, o = [0], 0
            for b in range(0, k, t):
                acc = 0
                for j in range(b, min(k, b + t)):
                    acc = add(inner, acc, int(q[c, j]) * int(x[i, j]), ev)
                o = add(outer, o, acc, ev)
            out[i, c], events[i, c] = o, ev[0]
    return out, events


def worst_case_inputs(codes, mu, nu):
    """Rows 2c, 2c+1: channel c's maximising and minimising input codes (Eq. 6)."""
    pos = codes >= 0
    return np.stack([np.where(pos, nu, mu), np.where(pos, mu, nu)], axis=1).reshape(-1, codes.shape[1])


class DatapathTest(unittest.TestCase):
    def test_equals_the_plain_simulator(self):
        print(f"seed {SEED} (AXEQ_TEST_SEED overrides)")
        rng = np.random.default_rng(SEED)
        for trial in range(60):
            k, c, d = int(rng.integers(1, 40)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
            q = rng.integers(-8, 8, (c, k)).astype(np.int8)
            x = rng.integers(-128, 256, (d, k))
            p, t = int(rng.integers(4, 14)), int(rng.integers(0, k + 2))
            po, mode, twos = int(rng.choice([0, p + 1, p + 3])), str(rng.choice(["wrap", "saturate"])), bool(rng.integers(0, 2))
            want, want_ev = plain_datapath(x, q, p, t, po, mode, twos)
            tiled = 0 < t < k
            got, exact, ev = datapath(torch.from_numpy(x), torch.from_numpy(q), p, t, po if tiled else 0, mode, twos)
            np.testing.assert_array_equal(got.numpy(), want, err_msg=str((trial, k, t, p, po, mode, twos)))
            np.testing.assert_array_equal(ev.numpy(), want_ev)
            np.testing.assert_array_equal(exact.numpy(), x @ q.astype(np.int64).T)


class CliSimulateTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.f = cli_files()
        cls.cal = read_safetensors(cls.f["cal"])[0]

    def layers(self, key, **datapath_kw):
        out = {}
        for name, r in read_result(self.f[key]).items():
            ql = QuantLinear(r, mode="integer", **datapath_kw)
            ql(torch.from_numpy(self.cal[name + ".inputs"]))
            out[name] = ql
        return out

    def test_counts_equal_axeq_simulate(self):
        for key, flags, kw in (("base", [], {}), ("base", ["--saturate"], {"overflow": "saturate"}),
                               ("base", ["--symmetric", "--saturate"], {"overflow": "saturate", "twos_complement": False}),
                               ("base", ["--acc-bits", 12, "--tile", 16], {"accumulator_bits": 12, "tile_size": 16}),
                               ("axe", ["--acc-bits", 12, "--symmetric"], {"accumulator_bits": 12, "twos_complement": False}),
                               ("axe", [], {})):
            sim = json.loads(run_cli("simulate", self.f[key], "--calibration", self.f["cal"], "--json", *flags).stdout)
            mine = self.layers(key, **kw)
            self.assertEqual(sorted(s["layer"] for s in sim), sorted(mine))
            total = 0
            for s in sim:
                ql = mine[s["layer"]]
                c = ql.counters
                self.assertEqual((ql.accumulator_bits, ql.tile_size if ql.tile_size < ql.in_features else 0),
                                 (s["accumulator_bits"], s["tile_size"] if s["tile_size"] < ql.in_features else 0))
                for field in ("dot_products", "overflowing_dot_products", "overflow_events", "wrong_outputs"):
                    self.assertEqual(c[field], s[field], (key, flags, s["layer"], field))
                self.assertAlmostEqual(ql.relative_error, s["relative_error"], delta=1e-12 + 1e-9 * s["relative_error"])
                total += c["overflow_events"]
            if key == "base" and not flags:
                self.assertGreater(total, 0, "the uncertified P=14 codes should overflow on calibration inputs")
            if key == "axe" and not flags:
                self.assertEqual(total, 0)

    def test_worst_case_overflows_exactly_where_the_certificate_says(self):
        for key in ("axe", "base"):
            unsafe = 0
            for name, r in read_result(self.f[key]).items():
                ql = QuantLinear(r, mode="integer", twos_complement=False)
                mu, nu = r.certificate["input_min"], r.certificate["input_max"]
                x = torch.from_numpy(worst_case_inputs(r.codes, mu, nu))
                ql.reset_counters()
                got, exact, ev = datapath(x, ql.codes, ql.accumulator_bits, ql.tile_size,
                                          ql.outer_bits if ql.tile_size < ql.in_features else 0, "wrap", False)
                own = torch.arange(r.codes.shape[0])
                ev_own = ev[2 * own, own] + ev[2 * own + 1, own]
                self.assertEqual(bool((ev_own > 0).any()), not r.certificate["safe"], (key, name))
                unsafe += not r.certificate["safe"]
                if r.certificate["safe"]:  # certified: integer == fake to float rounding on Eq. 6 inputs
                    xf = torch.from_numpy(((worst_case_inputs(r.codes, mu, nu) - r.activation.zero_point)
                                           * np.float32(r.activation.scale)).astype(np.float32))
                    yi = ql(xf)
                    ql.set_datapath("fake")
                    yf = ql(xf)
                    self.assertEqual(ql.counters["overflow_events"], 0)
                    scale = float(yf.abs().max()) + 1e-30
                    self.assertLess(float((yi - yf).abs().max()) / scale, 1e-5, (key, name))
            self.assertEqual(unsafe > 0, key == "base")


class LoaderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.f = cli_files()
        cls.model = load_llama2c(CKPT)
        cls.tokens = torch.tensor([list(range(1, 65))])

    def test_integer_model_equals_fake_when_certified(self):
        m = copy.deepcopy(self.model)
        qls = apply_result(m, self.f["axe"], mode="integer", require_certified=True)
        self.assertEqual(len(qls), 35)
        yi = m(self.tokens)
        self.assertTrue(all(c["overflow_events"] == 0 and c["dot_products"] > 0 for c in overflow_counters(m).values()))
        set_datapath(m, mode="fake")
        yf = m(self.tokens)
        self.assertLess(float((yi - yf).abs().max()), 1e-3 * float(yf.abs().max()))
        # the narrow register: same codes at P = 10 overflow and change the logits
        set_datapath(m, mode="integer", accumulator_bits=10, tile_size=0, overflow="wrap")
        self.assertFalse(any(q.certified for q in qls.values()))
        y10 = m(self.tokens)
        self.assertGreater(sum(c["overflow_events"] for c in overflow_counters(m).values()), 0)
        self.assertGreater(float((y10 - yf).abs().max()), 1e-2 * float(yf.abs().max()))
        reset_counters(m)
        self.assertEqual(sum(c["dot_products"] for c in overflow_counters(m).values()), 0)

    def test_loader_rejects_what_does_not_verify_or_fit(self):
        results = read_result(self.f["axe"])
        name = "layers.1.attention.wq"
        bad = copy.deepcopy(results)
        bad[name].certificate["channels"][3]["hi"] -= 1
        with self.assertRaisesRegex(ValueError, f"{name}.*does not verify"):
            apply_result(copy.deepcopy(self.model), bad)
        bad = copy.deepcopy(results)
        bad[name].codes[0, 0] = 7 if bad[name].codes[0, 0] != 7 else -7  # the digest no longer matches
        with self.assertRaisesRegex(ValueError, "does not verify"):
            apply_result(copy.deepcopy(self.model), bad)
        with self.assertRaisesRegex(ValueError, "layers.0.feed_forward.w1.*the model's layer is"):
            apply_result(copy.deepcopy(self.model), {"layers.0.feed_forward.w1": results[name]})
        with self.assertRaisesRegex(ValueError, "no such module"):
            apply_result(copy.deepcopy(self.model), {"layers.9.attention.wq": results[name]})
        with self.assertRaisesRegex(ValueError, "overflow-free"):
            apply_result(copy.deepcopy(self.model), self.f["base"], mode="integer", require_certified=True)

    def test_group_scaled_runs_fake_and_refuses_integer(self):
        m = copy.deepcopy(self.model)
        qls = apply_result(m, self.f["group"], mode="fake")
        ql = qls["layers.0.feed_forward.w2"]
        self.assertEqual(ql.group_size, 32)
        w = ql.codes.float() * ql.scales.repeat_interleave(32, dim=1)[:, :ql.in_features]
        self.assertTrue(torch.equal(ql.weight, w))
        m(self.tokens)
        set_datapath(m, mode="integer")
        with self.assertRaisesRegex(ValueError, "group size 32"):
            m(self.tokens)

    def test_save_and_load_keep_state_and_datapath(self):
        m = copy.deepcopy(self.model)
        apply_result(m, self.f["base"], mode="integer", accumulator_bits=14, tile_size=32, overflow="saturate")
        y = m(self.tokens)
        path = os.path.join(tempfile.mkdtemp(), "q.safetensors")
        save_quantized(m, path)
        with open(path, "rb") as f:
            head = f.read(9)
        self.assertEqual(head[8:9], b"{")  # safetensors: a length and a JSON header, nothing pickled
        m2 = copy.deepcopy(self.model)
        qls = load_quantized(m2, path)
        self.assertEqual(qls["layers.2.feed_forward.w2"].datapath_settings(),
                         {"mode": "integer", "accumulator_bits": 14, "tile_size": 32, "outer_bits": 17,
                          "overflow": "saturate", "twos_complement": True})
        self.assertTrue(torch.equal(m2(self.tokens), y))
        self.assertEqual(overflow_counters(m2), overflow_counters(m))


if __name__ == "__main__":
    unittest.main()
