"""ONNX export of quantized layers (opset 13) and a small numpy evaluator of the graphs it writes.

Each QuantLinear becomes  x -> QuantizeLinear(s_x, z_x) -> Clip(mu, nu) -> DequantizeLinear ->
MatMul(DequantizeLinear(int8 codes^T, per-channel scales, axis 1)) (-> Add bias): the codes are an
int8 initializer, the scales a per-channel float initializer, the activation scale and zero point
scalars (uint8 zero point for unsigned inputs, int8 for signed; the Clip keeps N < 8 bit codes in
[mu, nu]). The certificate (JSON) and the accumulator widths go into metadata_props. A whole Llama
does not trace through opset 13 as one graph here, so a model exports as one file per layer."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _metadata(ql) -> dict:
    cert = ql.certificate or {}
    return {"axeq.layer": ql.name, "axeq.certificate": json.dumps(cert),
            "axeq.certificate_safe": str(bool(cert.get("safe"))),
            "axeq.certified_for_datapath": str(bool(ql.certified)),
            "axeq.accumulator_bits": str(ql.accumulator_bits), "axeq.tile_size": str(ql.tile_size),
            "axeq.outer_accumulator_bits": str(ql.outer_bits), "axeq.overflow": ql.overflow,
            "axeq.weight_bits": str(ql.report.get("weight_bits", cert.get("weight_bits"))),
            "axeq.input_bits": str(ql.activation.bits), "axeq.inputs_signed": str(ql.activation.signed)}


def layer_to_onnx(ql) -> onnx.ModelProto:
    """Returns the opset-13 model of one QuantLinear (input "x" [batch, K] float, output "y").
    ValueError for group-scaled layers (blocked DequantizeLinear needs opset 21) or N > 8."""
    a = ql.activation
    if ql.group_size:
        raise ValueError(f"layer {ql.name!r}: ONNX opset 13 has no per-group scales (group size {ql.group_size})")
    if a.bits > 8:
        raise ValueError(f"layer {ql.name!r}: {a.bits}-bit activations do not fit QuantizeLinear's 8-bit types")
    c, k = ql.out_features, ql.in_features
    qtype, qdt = (TensorProto.INT8, np.int8) if a.signed else (TensorProto.UINT8, np.uint8)
    mu, nu = (-(1 << (a.bits - 1)), (1 << (a.bits - 1)) - 1) if a.signed else (0, (1 << a.bits) - 1)
    inits = [
        numpy_helper.from_array(np.array(a.scale, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(a.zero_point, dtype=qdt), "x_zero_point"),
        numpy_helper.from_array(np.array(mu, dtype=qdt), "x_min"),
        numpy_helper.from_array(np.array(nu, dtype=qdt), "x_max"),
        numpy_helper.from_array(np.ascontiguousarray(ql.codes.numpy().T), "w_codes"),  # int8 [K, C]
        numpy_helper.from_array(ql.scales.numpy()[:, 0].astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(c, dtype=np.int8), "w_zero_point"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_q"]),
        helper.make_node("Clip", ["x_q", "x_min", "x_max"], ["x_codes"]),
        helper.make_node("DequantizeLinear", ["x_codes", "x_scale", "x_zero_point"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", "w_zero_point"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y" if ql.bias is None else "xw"]),
    ]
    if ql.bias is not None:
        inits.append(numpy_helper.from_array(ql.bias.numpy().astype(np.float32), "bias"))
        nodes.append(helper.make_node("Add", ["xw", "bias"], ["y"]))
    graph = helper.make_graph(nodes, ql.name.replace(".", "_") or "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="axeq")
    helper.set_model_props(model, _metadata(ql))
    onnx.checker.check_model(model)
    return model


def export_layer(ql, path):
    """Writes one QuantLinear as an ONNX file (checked by onnx.checker)."""
    onnx.save(layer_to_onnx(ql), path)
    return path


def export_model(model, out_dir) -> dict:
    """Writes every QuantLinear of model to out_dir/<name>.onnx; returns {name: path}."""
    from .quant import quant_linears
    os.makedirs(out_dir, exist_ok=True)
    return {n: export_layer(m, os.path.join(out_dir, f"{n}.onnx")) for n, m in quant_linears(model).items()}


def _quantize(x, scale, zp):
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point) to zp's type."""
    info = np.iinfo(zp.dtype)
    q = np.rint(x / scale.astype(np.float32)) + zp.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def _dequantize(x, scale, zp, axis=1):
    if scale.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((x.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(np.float32)


_OPS = {
    "QuantizeLinear": lambda n, x, s, z: _quantize(x, s, z),
    "DequantizeLinear": lambda n, x, s, z: _dequantize(x, s, z, next((a.i for a in n.attribute if a.name == "axis"), 1)),
    "Clip": lambda n, x, lo, hi: np.clip(x, lo, hi).astype(x.dtype),
    "MatMul": lambda n, a, b: np.matmul(a, b).astype(np.float32),
    "Add": lambda n, a, b: (a + b).astype(np.float32),
}


def run(model: onnx.ModelProto, **inputs) -> dict:
    """Evaluates a graph made of the ops above with numpy (the reference semantics of opset 13)."""
    env = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    env.update(inputs)
    for node in model.graph.node:
        if node.op_type not in _OPS:
            raise ValueError(f"the numpy evaluator has no {node.op_type}")
        env[node.output[0]] = _OPS[node.op_type](node, *(env[i] for i in node.input))
    return {o.name: env[o.name] for o in model.graph.output}
