"""Forgeries the Python verifier must catch (issue 10, points 1-2): a layer whose certificate was
deleted, a self-consistent certificate whose sums overflow int64, an honest certificate for another
datapath, and a result checked against the Config that was asked for. Seeds are logged."""
import json
import os
import tempfile
import unittest

import numpy as np

from axeq import ActivationQuantizer, Config, LayerResult, compute_certificate, verify_certificate, verify_results
from axeq.result import read_result, write_result
from axeq.safetensors import read_safetensors, write_safetensors

SEED = int(os.environ.get("AXEQ_TEST_SEED", "12"))


def make_result(name, codes, p=16, t=0, n=8, signed=False, m=4, scales=None):
    c, k = codes.shape
    act = ActivationQuantizer(bits=n, signed=signed, scale=0.05, zero_point=0 if signed else 3)
    cert = compute_certificate(codes, n, signed, p, t, False, m)
    scales = np.full((c, 1), 0.01, np.float32) if scales is None else scales
    return LayerResult(name, "", codes.astype(np.int8), scales, None, act, {"weight_bits": m}, cert)


def exact_bounds(codes, mu, nu, t):
    """A deliberately plain twin of the bound: Python integers, one term at a time."""
    out = []
    for row in codes.tolist():
        tiles = [row[i:i + t] for i in range(0, len(row), t)]
        out.append([(sum(min(q * mu, q * nu) for q in tile), sum(max(q * mu, q * nu) for q in tile)) for tile in tiles])
    return out


class VerifyTest(unittest.TestCase):
    def setUp(self):
        print(f"seed {SEED} (AXEQ_TEST_SEED overrides)")
        self.rng = np.random.default_rng(SEED)
        self.dir = tempfile.mkdtemp()

    def small_codes(self, c=6, k=64, lim=2):
        return self.rng.integers(-lim, lim + 1, (c, k)).astype(np.int8)

    def test_deleted_certificate_fails_the_layer_not_passes_the_file(self):
        good = make_result("a", self.small_codes())
        bad = make_result("b", np.full((4, 64), 7, np.int8), p=32)
        path = os.path.join(self.dir, "r.st")
        write_result(path, [good, bad])
        tensors, meta = read_safetensors(path)
        del meta["b.certificate"]
        write_safetensors(path, tensors, meta)
        with self.assertRaisesRegex(ValueError, r"layer 'b'.*b\.certificate.*missing"):
            read_result(path)
        meta.pop("axeq.layers"), meta.pop("axeq.schema_version")  # as a version 1 file
        write_safetensors(path, tensors, meta)
        with self.assertRaisesRegex(ValueError, r"layer 'b'.*no certificate"):
            read_result(path)
        bad.certificate = None
        verdicts = verify_results([good, bad])
        self.assertTrue(verdicts["a"].ok)
        self.assertFalse(verdicts["b"].consistent or verdicts["b"].safe)
        self.assertIn("no certificate", verdicts["b"].problems[0])

    def test_int64_overflow_forgery_is_not_safe(self):
        codes = np.full((2, 4096), 7, np.int8)
        cert = compute_certificate(codes, 8, False, 32, 0, False, 4)
        forged = dict(cert, input_bits=62, input_max=(1 << 62) - 1, safe=True, unsafe_channels=0,
                      min_accumulator_bits=2, min_outer_accumulator_bits=2,
                      channels=[dict(ch, lo=0, hi=1, row_lo=0, row_hi=1) for ch in cert["channels"]])
        v = verify_certificate(codes, forged)
        self.assertFalse(v.safe)
        self.assertFalse(v.consistent)
        self.assertTrue(any("input_bits" in p for p in v.problems), v.problems)
        for key, value in (("accumulator_bits", 65), ("accumulator_bits", 1), ("weight_bits", 9), ("input_bits", 1),
                           ("input_bits", 17), ("accumulator_bits", True), ("tile_size", -1), ("inputs_signed", 1)):
            self.assertFalse(verify_certificate(codes, dict(cert, **{key: value})).consistent, (key, value))

    def test_honest_certificate_for_another_datapath_fails_when_pinned(self):
        codes = self.rng.integers(-7, 8, (8, 128)).astype(np.int8)
        cert = compute_certificate(codes, 8, False, 32, 0, False, 4)
        self.assertTrue(verify_certificate(codes, cert).ok)  # honest: P=32 holds
        v = verify_certificate(codes, cert, accumulator_bits=16)
        self.assertFalse(v.consistent)
        self.assertFalse(v.safe)  # recomputed at the hardware's P = 16: these codes need more
        self.assertIn("accumulator_bits", v.problems[0])
        for pins in ({"tile_size": 32}, {"input_bits": 4}, {"inputs_signed": True}, {"weight_bits": 3}):
            self.assertFalse(verify_certificate(codes, cert, **pins).consistent, pins)
        self.assertTrue(verify_certificate(codes, cert, accumulator_bits=32, tile_size=0, input_bits=8,
                                           inputs_signed=False, weight_bits=4).ok)
        self.assertTrue(verify_certificate(codes, cert, tile_size=128).ok)  # T = K is monolithic
        # a two's-complement register only widens a sign-magnitude certificate
        self.assertTrue(verify_certificate(codes, cert, twos_complement=True).ok)

    def test_layer_result_verifies_against_the_requested_config(self):
        r = make_result("l", self.rng.integers(-7, 8, (8, 128)).astype(np.int8), p=32)
        self.assertTrue(r.verify().ok)
        r.config = Config(accumulator_bits=16)
        self.assertFalse(r.verify().ok)
        self.assertTrue(r.verify(Config(accumulator_bits=32)).ok)
        self.assertFalse(r.verify(accumulator_bits=20).ok)
        r.config = None
        r.activation = ActivationQuantizer(bits=4, scale=0.1)  # the server's claim vs what the layer runs
        self.assertFalse(r.verify().consistent)

    def test_tampering_is_detected(self):
        codes = self.small_codes()
        cert = compute_certificate(codes, 8, False, 16, 32, False, 4)
        self.assertTrue(verify_certificate(codes, cert).ok)
        changed = codes.copy()
        changed[0, 0] = 7 if codes[0, 0] != 7 else 6
        self.assertFalse(verify_certificate(changed, cert).consistent)  # digest and bounds
        tampered = json.loads(json.dumps(cert))
        tampered["channels"][2]["hi"] -= 1
        self.assertFalse(verify_certificate(codes, tampered).consistent)
        self.assertFalse(verify_certificate(codes, dict(cert, tile_size=1000)).consistent)
        self.assertFalse(verify_certificate(codes, "not a dict").consistent)
        self.assertFalse(verify_certificate(np.full((2, 4), 8, np.int8), compute_certificate(
            np.full((2, 4), 8, np.int8), 8, False, 32, 0, False, 8), weight_bits=4).safe)  # off the 4-bit grid

    def test_bound_equals_a_plain_integer_twin(self):
        for trial in range(30):
            c, k = int(self.rng.integers(1, 5)), int(self.rng.integers(1, 80))
            n, signed, t = int(self.rng.integers(2, 17)), bool(self.rng.integers(0, 2)), int(self.rng.integers(0, k + 3))
            codes = self.rng.integers(-128, 128, (c, k)).astype(np.int8)
            p = int(self.rng.integers(2, 65))
            cert = compute_certificate(codes, n, signed, p, t, False, 8)
            mu, nu = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if signed else (0, (1 << n) - 1)
            tt = k if t <= 0 or t >= k else t
            plain = exact_bounds(codes, mu, nu, tt)
            lim = (1 << (p - 1)) - 1
            po = (1 << (cert["outer_accumulator_bits"] - 1)) - 1
            safe = all(hi <= lim and -lo <= lim for row in plain for lo, hi in row) and \
                all(sum(h for _, h in row) <= po and -sum(lo for lo, _ in row) <= po for row in plain)
            self.assertEqual(cert["safe"], safe, (trial, c, k, n, signed, t, p))
            for ch, row in zip(cert["channels"], plain):
                self.assertEqual((ch["lo"], ch["hi"]), row[ch["tile"]])
                self.assertEqual((ch["row_lo"], ch["row_hi"]), (sum(a for a, _ in row), sum(b for _, b in row)))


if __name__ == "__main__":
    unittest.main()
