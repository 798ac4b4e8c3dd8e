"""The machine under test: CPU model, instruction sets, library versions, and the peak FP32 and
INT8 arithmetic rates ONNX Runtime reaches on it (the roofline's ceilings)."""

from __future__ import annotations

import gc
import os
import platform
import time
from pathlib import Path

import numpy as np

from device import cpu
from device.model_card import package_versions

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp")
PACKAGES = ("edge-inspect", "onnxruntime", "openvino", "nncf", "numpy", "opencv-python-headless", "opencv-python",
            "ultralytics", "torch")


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "logical_cores": os.cpu_count(), "model": platform.processor() or "",
            "isa_in_use": cpu.describe()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    info.update({"model": fields.get("model name", info["model"]),
                 "physical_cores": int(fields.get("cpu cores", 0)) or None,
                 "isa": [f for f in ISA_FLAGS if f in flags]})
    return info


def versions() -> dict[str, str]:
    return package_versions(PACKAGES)


def _gemm_model(op: str, size: int):
    from onnx import TensorProto, helper

    if op == "MatMul":
        a, b, c = TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT
        node, init = helper.make_node("MatMul", ["a", "b"], ["c"]), []
    else:  # u8 activations x s8 weights -> s32: the kernel family of the INT8 models' QLinearConv
        a, b, c = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["c"])
        init = [helper.make_tensor("a_zero", TensorProto.UINT8, [], [128]),
                helper.make_tensor("b_zero", TensorProto.INT8, [], [0])]
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a, [size, size]),
                                               helper.make_tensor_value_info("b", b, [size, size])],
                              [helper.make_tensor_value_info("c", c, [size, size])], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def peak_ops(precision: str, threads: int | None, size: int = 1024, seconds: float = 2.0) -> float:
    """Operations per second of a large square GEMM in ONNX Runtime (MLAS): FP32 MatMul, or INT8
    MatMulInteger (u8 x s8, the same QGEMM kernels as the INT8 models' convolutions: VNNI where the
    CPU has it, AVX2's vpmaddubsw where not). Best of repeated runs."""
    import onnxruntime as ort

    from device.detector import session_options

    model = _gemm_model("MatMul" if precision == "fp32" else "MatMulInteger", size)
    session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if precision == "fp32":
        feeds = {"a": rng.random((size, size), dtype=np.float32), "b": rng.random((size, size), dtype=np.float32)}
    else:
        feeds = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                 "b": rng.integers(-64, 64, (size, size), dtype=np.int8)}
    session.run(None, feeds)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - started)
    del session
    gc.collect()
    return 2.0 * size**3 / best
