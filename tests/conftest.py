"""Shared fixtures. The real metal-tag photos ship in the repository (`data/metal-tags/`, MIT-0), so
the suite runs from a clone with nothing beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from label_studio_server import label_studio  # noqa: F401  (a session fixture: a real Label Studio)
from moto_s3 import moto  # noqa: F401  (a module fixture: moto's S3 server)

REPO = Path(__file__).resolve().parent.parent
METAL_TAGS = REPO / "data" / "metal-tags"
BUNDLED_MODEL = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"


@pytest.fixture(scope="session")
def metal_tags() -> Path:
    assert (METAL_TAGS / "labels.csv").is_file(), f"the metal-tag photos are missing at {METAL_TAGS}"
    return METAL_TAGS


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free loopback port, for one test."""
    from mosquitto import Broker

    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """Certificates for the TLS tests (see `tls_pki.make_pki`)."""
    from tls_pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path, pki):
    """A real mosquitto with a plain listener and a TLS one that requires a client certificate."""
    from tls_pki import start_tls_broker

    broker = start_tls_broker(tmp_path, pki)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    assert BUNDLED_MODEL.is_file(), "the bundled model is missing from device/models/"
    return BUNDLED_MODEL


def make_onnx(path: Path, *, output_shape=(1, 5, 100), metadata: dict[str, str] | None = None,
              input_shape=(1, 3, 64, 64), scale: float = 1.0) -> Path:
    """A small real ONNX graph (input -> reshape/slice -> x scale -> output of the given shape)
    carrying the given metadata: enough to exercise the detector's model checks without training
    anything. `scale=float("nan")` makes a model whose every score is NaN."""
    import onnx
    from onnx import TensorProto, helper

    n_out = int(np.prod(output_shape))
    n_in = int(np.prod(input_shape))
    assert n_out <= n_in, "keep the fake output smaller than the input"
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["head"]),
        helper.make_node("Mul", ["head", "scale"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "out_shape"], ["output0"]),
    ]
    inits = [
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [1, n_in]),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [n_out]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("out_shape", TensorProto.INT64, [len(output_shape)], list(output_shape)),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
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
