"""The RESULT file (docs/result-format.md) in Python: round trips of schema version 2, version 1
files (including the wrong axeq.group_size = "0" of old writers), every malformed-file case as a
ValueError naming the layer and field, and conformance with the C++ CLI: files written by
`axeq quantize` (per channel and --group-size 32) are read, rewritten by Python, and `axeq verify`,
`axeq simulate` and `axeq llama2c-eval` give the same answers on Python's files as on the CLI's.
Needs the build tree: AXEQ_BUILD_DIR (default build/) with client/axeq."""
import json
import os
import struct
import subprocess
import tempfile
import unittest

import numpy as np

from axeq import ActivationQuantizer, Config, LayerResult, compute_certificate
from axeq.result import read_result, write_result
from axeq.safetensors import read_safetensors, write_safetensors

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.environ.get("AXEQ_BUILD_DIR", os.path.join(ROOT, "build"))
CLI = os.environ.get("AXEQ_CLI_BIN") or next(
    (p for p in (os.path.join(BUILD, d, "axeq") for d in ("cli", "client", "tools")) if os.path.exists(p)),
    os.path.join(BUILD, "client", "axeq"))
CKPT = os.path.join(ROOT, "examples", "data", "stories260K.bin")
_CACHE = {}


def run_cli(*args, check=True):
    if not os.path.exists(CLI):
        raise AssertionError(f"{CLI} is missing: build the axeq target (AXEQ_BUILD_DIR={BUILD})")
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"axeq {' '.join(map(str, args))} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


def cli_files():
    """stories260K layers captured by the CLI and quantized by it (once per process): AXE at P=16,
    T=32 per channel and with --group-size 32, and the unconstrained base at P=14."""
    if not _CACHE:
        d = tempfile.mkdtemp(prefix="axeq-cli-")
        f = {k: os.path.join(d, k + ".st") for k in ("layers", "cal", "axe", "group", "base")}
        run_cli("llama2c-capture", "--checkpoint", CKPT, "--out-model", f["layers"], "--out-calibration", f["cal"],
                "--sequences", 2, "--length", 48)
        common = ["quantize", "--model", f["layers"], "--calibration", f["cal"], "--quiet"]
        run_cli(*common, "--acc-bits", 16, "--tile", 32, "--out", f["axe"])
        run_cli(*common, "--acc-bits", 16, "--tile", 32, "--group-size", 32, "--out", f["group"])
        run_cli(*common, "--acc-bits", 14, "--no-axe", "--out", f["base"])
        _CACHE.update(f, dir=d)
    return _CACHE


def layer(name="l", c=4, k=70, groups=1, g=0, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-7, 8, (c, k)).astype(np.int8)
    cert = compute_certificate(codes, 8, False, 20, 0, False, 4)
    act = ActivationQuantizer(bits=8, signed=False, scale=float(np.float32(0.02)), zero_point=11)
    scales = rng.uniform(0.01, 0.1, (c, groups)).astype(np.float32)
    return LayerResult(name, "", codes, scales, rng.normal(size=c).astype(np.float32) if bias else None, act,
                       {"group_size": g, "weight_bits": 4, "relative_error": 0.1}, cert)


class ResultFormatTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "r.st")

    def write(self, *layers):
        write_result(self.path, list(layers))
        return read_safetensors(self.path)

    def rewrite(self, tensors, meta):
        write_safetensors(self.path, tensors, meta)

    def test_round_trip_v2_keeps_order_and_group_size(self):
        a, b = layer("z.first", g=0), layer("a.second", k=70, groups=3, g=32, bias=False, seed=1)
        tensors, meta = self.write(a, b)
        self.assertEqual(meta["axeq.schema_version"], "2")
        self.assertEqual(json.loads(meta["axeq.layers"]), ["z.first", "a.second"])
        self.assertEqual(json.loads(meta["a.second.report"])["group_size"], 32)
        back = read_result(self.path)
        self.assertEqual(list(back), ["z.first", "a.second"])
        for want in (a, b):
            got = back[want.name]
            np.testing.assert_array_equal(got.codes, want.codes)
            np.testing.assert_array_equal(got.scales, want.scales)
            self.assertEqual(got.certificate, want.certificate)
            self.assertEqual(got.activation, want.activation)
            self.assertEqual(got.group_size, want.group_size)
        self.assertIsNone(back["a.second"].bias)
        w = back["a.second"].dequantized()
        self.assertEqual(w[2, 63], b.codes[2, 63] * b.scales[2, 1])  # column i uses scale i // G
        self.assertEqual(w[2, 64], b.codes[2, 64] * b.scales[2, 2])

    def test_group_size_is_never_guessed(self):
        r = layer("g", k=172, groups=6, g=32)
        del r.report["group_size"]
        with self.assertRaisesRegex(ValueError, "layer 'g'.*fit group sizes"):
            r.dequantized()
        with self.assertRaisesRegex(ValueError, "group sizes"):
            write_result(self.path, [r])
        r.config = Config(group_size=32)
        self.assertEqual(r.group_size, 32)
        write_result(self.path, [r])
        self.assertEqual(read_result(self.path)["g"].group_size, 32)

    def test_version_1_with_a_wrong_group_size(self):
        b = layer("g", k=70, groups=3, g=32)
        tensors, meta = self.write(b)
        for key in ("axeq.schema_version", "axeq.layers"):
            del meta[key]
        meta["axeq.group_size"] = "0"
        self.rewrite(tensors, meta)
        self.assertEqual(read_result(self.path)["g"].group_size, 24)  # inferred ceil(70 / 3), as the spec says
        meta["axeq.group_size"] = "32"
        self.rewrite(tensors, meta)
        self.assertEqual(read_result(self.path)["g"].group_size, 32)

    def expect(self, pattern, tensors, meta):
        self.rewrite(tensors, meta)
        with self.assertRaisesRegex(ValueError, pattern):
            read_result(self.path)

    def test_malformed_layers_name_the_layer_and_field(self):
        tensors, meta = self.write(layer("x", groups=3, g=32))
        cases = [
            (r"layer 'x'.*x\.scales.*missing", {"x.scales": None}, {}),
            (r"layer 'x'.*x\.qweight.*shape", {"x.qweight": np.zeros(5, np.int8)}, {}),
            (r"layer 'x'.*x\.qweight.*dtype", {"x.qweight": tensors["x.qweight"].astype(np.int32)}, {}),
            (r"layer 'x'.*x\.scales.*2 groups", {"x.scales": tensors["x.scales"][:, :2]}, {}),
            (r"layer 'x'.*x\.scales.*finite", {"x.scales": np.where(tensors["x.scales"] > 0.05, np.nan, tensors["x.scales"]).astype(np.float32)}, {}),
            (r"layer 'x'.*x\.bias.*shape", {"x.bias": np.zeros(3, np.float32)}, {}),
            (r"layer 'x'.*x\.input_zero_point.*outside", {"x.input_zero_point": np.array(300, np.int32)}, {}),
            (r"layer 'x'.*x\.input_scale", {"x.input_scale": np.array(-1.0, np.float32)}, {}),
            (r"layer 'x'.*certificate\.output_channels", {}, {"x.certificate": json.dumps(dict(json.loads(meta["x.certificate"]), output_channels=5))}),
            (r"layer 'x'.*certificate\.weight_bits", {}, {"x.certificate": json.dumps(dict(json.loads(meta["x.certificate"]), weight_bits=8))}),
            (r"layer 'x'.*x\.report\.group_size", {}, {"x.report": json.dumps({"weight_bits": 4})}),
            (r"layer 'x'.*x\.certificate.*not JSON", {}, {"x.certificate": "{"}),
            (r"axeq\.layers", {}, {"axeq.layers": "{}"}),
            (r"schema_version '3'", {}, {"axeq.schema_version": "3"}),
            (r"layer 'y'.*y\.qweight.*missing", {}, {"axeq.layers": '["x", "y"]', "y.certificate": "{}", "y.report": "{}"}),
            (r"layer 'stray'.*axeq\.layers", {"stray.qweight": np.zeros((1, 1), np.int8)}, {}),
        ]
        for pattern, t_change, m_change in cases:
            t, m = dict(tensors), dict(meta)
            for key, v in t_change.items():
                t.pop(key) if v is None else t.__setitem__(key, v)
            m.update(m_change)
            with self.subTest(pattern=pattern):
                self.expect(pattern, t, m)

    def raw_file(self, header: dict, data: bytes = b"\0" * 16):
        h = json.dumps(header).encode()
        with open(self.path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + data)

    def test_hostile_headers_are_value_errors(self):
        cases = [
            ({"x.qweight": {"dtype": "I8", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}, "overflows int64"),
            ({"x.qweight": {"dtype": "F64", "shape": [1 << 31, 1 << 31], "data_offsets": [0, 16]}}, "needs"),
            ({"x.qweight": {"dtype": "I8", "shape": [4, 4], "data_offsets": [0, 1 << 62]}}, "outside"),
            ({"x.qweight": {"dtype": "I8", "shape": [-4, 4], "data_offsets": [0, 16]}}, "non-negative"),
            ({"x.qweight": {"dtype": "Q9", "shape": [4, 4], "data_offsets": [0, 16]}}, "dtype"),
            ({"x.qweight": {"dtype": "I8", "shape": [4, 4], "data_offsets": [8, 4]}}, "outside"),
            ({"__metadata__": {"a": 1}}, "strings"),
            ([], "object"),
        ]
        for header, pattern in cases:
            with self.subTest(header=header):
                self.raw_file(header)
                with self.assertRaisesRegex(ValueError, pattern):
                    read_result(self.path)
        with open(self.path, "wb") as f:
            f.write(struct.pack("<Q", 1 << 60) + b"{}")
        with self.assertRaisesRegex(ValueError, "header length"):
            read_result(self.path)


class CliConformanceTest(unittest.TestCase):
    """Files written by the C++ CLI, read and rewritten by Python, read back by the C++ CLI."""

    @classmethod
    def setUpClass(cls):
        cls.f = cli_files()

    def python_copy(self, key):
        out = os.path.join(self.f["dir"], f"py-{key}.st")
        write_result(out, read_result(self.f[key]))
        return out

    def test_python_reads_cli_files(self):
        for key, g in (("axe", 0), ("group", 32)):
            results = read_result(self.f[key])
            self.assertEqual(len(results), 35, key)
            for name, r in results.items():
                self.assertEqual(r.group_size, g, name)
                self.assertEqual(r.scales.shape[1], 1 if g == 0 else -(-r.codes.shape[1] // g), name)
                v = r.verify(accumulator_bits=16, tile_size=32, input_bits=8, inputs_signed=False, weight_bits=4)
                self.assertTrue(v.ok, (key, name, v.problems))
        base = read_result(self.f["base"])
        self.assertFalse(all(r.verify().safe for r in base.values()))

    def test_cli_tools_answer_the_same_on_python_files(self):
        ev = ["llama2c-eval", "--checkpoint", CKPT, "--sequences", 2, "--length", 32]
        for key in ("axe", "group", "base"):
            mine = self.python_copy(key)
            a, b = run_cli("verify", self.f[key], check=False), run_cli("verify", mine, check=False)
            self.assertEqual(a.returncode, 0 if key != "base" else 1, a.stdout + a.stderr)
            self.assertEqual(b.returncode, a.returncode, b.stdout + b.stderr)
            self.assertEqual(sorted(a.stdout.splitlines()[:-1]), sorted(b.stdout.splitlines()[:-1]))
            sa = json.loads(run_cli("simulate", self.f[key], "--calibration", self.f["cal"], "--json").stdout)
            sb = json.loads(run_cli("simulate", mine, "--calibration", self.f["cal"], "--json").stdout)
            self.assertEqual(sorted(sa, key=lambda r: r["layer"]), sorted(sb, key=lambda r: r["layer"]))
            pa = run_cli(*ev, "--result", self.f[key]).stdout
            pb = run_cli(*ev, "--result", mine).stdout
            quantized = [line for line in pa.splitlines() if line.startswith("quantized")]
            self.assertEqual(len(quantized), 1, pa)
            self.assertIn("35 linear layers", quantized[0])
            self.assertEqual(quantized, [line for line in pb.splitlines() if line.startswith("quantized")])


if __name__ == "__main__":
    unittest.main()
