"""Shared fixtures. Tests may read ../shared (the real metal-tag photos); the product may not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(__file__).resolve().parents[2] / "shared"
METAL_TAGS = SHARED / "data" / "metal-tags"
BUNDLED_MODEL = REPO / "models" / "metal-tags-yolov8n.onnx"


@pytest.fixture(scope="session")
def metal_tags() -> Path:
    assert (METAL_TAGS / "labels.csv").is_file(), f"the shared data set is missing at {METAL_TAGS}"
    return METAL_TAGS


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port, for one test."""
    from mosquitto import Broker

    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    assert BUNDLED_MODEL.is_file(), "the bundled model is missing from models/"
    return BUNDLED_MODEL


def make_onnx(path: Path, *, output_shape=(1, 5, 100), metadata: dict[str, str] | None = None,
              input_shape=(1, 3, 64, 64)) -> Path:
    """A small real ONNX graph (input -> reshape/slice -> output of the given shape) carrying the
    given metadata: enough to exercise the detector's model checks without training anything."""
    import onnx
    from onnx import TensorProto, helper

    n_out = int(np.prod(output_shape))
    n_in = int(np.prod(input_shape))
    assert n_out <= n_in, "keep the fake output smaller than the input"
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["head"]),
        helper.make_node("Reshape", ["head", "out_shape"], ["output0"]),
    ]
    inits = [
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [1, n_in]),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [n_out]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("out_shape", TensorProto.INT64, [len(output_shape)], list(output_shape)),
    ]
    graph = helper.make_graph(
        nodes, "fake",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path
