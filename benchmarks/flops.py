"""Arithmetic per inference, split by the precision it runs in, counted from the model graph:
2 x multiply-accumulates of every convolution and matrix product (the rest of YOLOv8 is
negligible next to them). An INT8 model keeps part of its head in float, so its roofline bound
is int8_ops / INT8 peak + float_ops / FP32 peak, not all of it over either peak."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Ops:
    int8: float
    float: float

    @property
    def total(self) -> float:
        return self.int8 + self.float

    def bound_s(self, int8_peak: float, fp32_peak: float) -> float:
        return self.int8 / int8_peak + self.float / fp32_peak


def onnx_ops(model_path: Path) -> Ops:
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def weight(name: str) -> tuple[tuple | list | None, bool]:
        """(shape, quantized): a QDQ graph's weight arrives through a DequantizeLinear."""
        node = producers.get(name)
        if name in weights:
            return weights[name], False
        if node is not None and node.op_type == "DequantizeLinear":
            return weight(node.input[0])[0], True
        return shapes.get(name), False

    int8 = flt = 0.0
    for node in graph.node:
        ops, quantized = 0.0, False
        if node.op_type == "Conv":
            (w, quantized), out = weight(node.input[1]), shapes.get(node.output[0])
            if w and out and len(out) == 4:
                ops = 2.0 * np.prod(out) * np.prod(w[1:])  # (N*Cout*H*W) x (Cin/groups * kh * kw)
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            quantized = weight(node.input[1])[1]
            if a and out:
                ops = 2.0 * np.prod(out) * a[-1]
        if quantized:
            int8 += ops
        else:
            flt += ops
    return Ops(float(int8), float(flt))


def openvino_ops(model_path: Path) -> Ops:
    """An OpenVINO IR: a convolution is INT8 when its weights come from an 8-bit constant (NNCF
    stores them so) or through a FakeQuantize."""
    import openvino as ov

    model = ov.Core().read_model(str(model_path))

    def quantized(node, depth: int = 0) -> bool:
        if node.get_type_name() == "FakeQuantize":
            return True
        if node.get_type_name() == "Constant":
            return str(node.get_element_type()) in ("<Type: 'int8_t'>", "<Type: 'uint8_t'>", "i8", "u8")
        if depth > 4:
            return False
        return any(quantized(i.get_source_output().get_node(), depth + 1) for i in node.inputs())

    int8 = flt = 0.0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        out = list(op.get_output_shape(0))
        w = list(op.input(1).get_shape())
        if op.get_type_name() == "Convolution":
            ops = 2.0 * np.prod(out) * np.prod(w[1:])
        elif op.get_type_name() == "GroupConvolution":  # weights (groups, Cout/g, Cin/g, kh, kw)
            ops = 2.0 * np.prod(out) * np.prod(w[2:])
        else:
            ops = 2.0 * np.prod(out) * list(op.input(0).get_shape())[-1]
        if quantized(op.input(1).get_source_output().get_node()):
            int8 += ops
        else:
            flt += ops
    return Ops(float(int8), float(flt))


def model_ops(model_path: Path) -> Ops:
    return openvino_ops(model_path) if model_path.suffix == ".xml" else onnx_ops(model_path)


def count_flops(model_path: Path) -> float:
    return model_ops(model_path).total
