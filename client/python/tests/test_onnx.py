"""ONNX export (opset 13): the exported layer passes onnx.checker, holds the codes as an int8
initializer with per-channel scales and the activation scale/zero point, carries the certificate and
accumulator widths in metadata_props, survives a save/load round trip, and a numpy evaluation of
it equals QuantLinear's fake mode (unsigned 8-bit, signed 8-bit and 4-bit activations)."""
import json
import os
import tempfile
import unittest

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from axeq import ActivationQuantizer, LayerResult, compute_certificate
from axeq.onnx_export import export_layer, export_model, layer_to_onnx, run
from axeq.torch import QuantLinear, apply_result

SEED = int(os.environ.get("AXEQ_TEST_SEED", "5"))


def quant_linear(rng, c=24, k=80, bits=8, signed=False, bias=True, groups=1):
    codes = rng.integers(-7, 8, (c, k)).astype(np.int8)
    zp = 0 if signed else int(rng.integers(0, 1 << bits))
    act = ActivationQuantizer(bits=bits, signed=signed, scale=float(np.float32(rng.uniform(0.01, 0.1))), zero_point=zp)
    cert = compute_certificate(codes, bits, signed, 20, 32, False, 4)
    scales = rng.uniform(0.001, 0.02, (c, groups)).astype(np.float32)
    r = LayerResult("blocks.0.proj", "", codes, scales, rng.normal(size=c).astype(np.float32) if bias else None, act,
                    {"weight_bits": 4, "group_size": 0 if groups == 1 else -(-k // groups)}, cert)
    return QuantLinear(r, mode="fake")


class OnnxTest(unittest.TestCase):
    def setUp(self):
        print(f"seed {SEED} (AXEQ_TEST_SEED overrides)")
        self.rng = np.random.default_rng(SEED)

    def test_numpy_evaluation_equals_fake_mode(self):
        for bits, signed, bias in ((8, False, True), (8, True, False), (4, False, True)):
            ql = quant_linear(self.rng, bits=bits, signed=signed, bias=bias)
            x = self.rng.normal(scale=3.0, size=(33, ql.in_features)).astype(np.float32)
            model = layer_to_onnx(ql)
            path = os.path.join(tempfile.mkdtemp(), "l.onnx")
            onnx.save(model, path)
            loaded = onnx.load(path)
            onnx.checker.check_model(loaded)
            with torch.no_grad():
                want = ql(torch.from_numpy(x)).numpy()
            got = run(loaded, x=x)["y"]
            tol = 1e-5 * float(np.abs(want).max())
            self.assertLess(float(np.abs(got - want).max()), tol, (bits, signed, bias))
            # the activation codes themselves are identical
            env = {i.name: numpy_helper.to_array(i) for i in loaded.graph.initializer}
            xq = np.clip(np.rint(x / env["x_scale"]) + env["x_zero_point"].astype(np.float32),
                         env["x_min"].astype(np.float32), env["x_max"].astype(np.float32))
            np.testing.assert_array_equal(xq, ql.input_codes(torch.from_numpy(x)).numpy())
            np.testing.assert_array_equal(env["w_codes"], ql.codes.numpy().T)
            self.assertEqual(env["w_codes"].dtype, np.int8)
            self.assertEqual(env["w_scale"].shape, (ql.out_features,))
            props = {p.key: p.value for p in loaded.metadata_props}
            self.assertEqual(json.loads(props["axeq.certificate"]), ql.certificate)
            self.assertEqual(props["axeq.accumulator_bits"], "20")
            self.assertEqual(props["axeq.tile_size"], "32")
            self.assertEqual(props["axeq.outer_accumulator_bits"], "22")
            self.assertEqual(loaded.opset_import[0].version, 13)
            ops = [n.op_type for n in loaded.graph.node]
            self.assertEqual(ops[:5], ["QuantizeLinear", "Clip", "DequantizeLinear", "DequantizeLinear", "MatMul"])

    def test_a_changed_code_changes_the_output(self):
        ql = quant_linear(self.rng)
        model = layer_to_onnx(ql)
        x = self.rng.normal(size=(4, ql.in_features)).astype(np.float32)
        before = run(model, x=x)["y"]
        w = next(i for i in model.graph.initializer if i.name == "w_codes")
        arr = numpy_helper.to_array(w).copy()
        arr[3, 5] = 7 if arr[3, 5] != 7 else -7
        w.CopyFrom(numpy_helper.from_array(arr, "w_codes"))
        self.assertGreater(float(np.abs(run(model, x=x)["y"] - before)[:, 5].max()), 0)

    def test_model_export_and_refusals(self):
        net = torch.nn.Sequential(torch.nn.Linear(80, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8))
        first = quant_linear(self.rng)
        r = LayerResult("0", "", first.codes.numpy(), first.scales.numpy(), first.bias.numpy(), first.activation,
                        first.report, first.certificate)
        apply_result(net, {"0": r})
        paths = export_model(net, tempfile.mkdtemp())
        self.assertEqual(list(paths), ["0"])
        onnx.checker.check_model(onnx.load(paths["0"]))
        with self.assertRaisesRegex(ValueError, "per-group"):
            layer_to_onnx(quant_linear(self.rng, groups=3))
        with self.assertRaisesRegex(ValueError, "8-bit"):
            layer_to_onnx(quant_linear(self.rng, bits=12))
        export_layer(first, os.path.join(tempfile.mkdtemp(), "x.onnx"))


if __name__ == "__main__":
    unittest.main()
