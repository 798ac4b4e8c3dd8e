"""INT8 for ONNX Runtime: static QDQ quantization (onnxruntime.quantization).

Settings, and why:
- `quant_pre_process` first (shape inference and graph clean-up), as onnxruntime recommends.
- Unsigned 8-bit activations with signed per-channel weights (U8S8): ONNX Runtime's x86 kernels
  fuse every Conv in that form; its default S8S8 leaves most Convs unfused and runs slower.
- `reduce_range`: weights in 7 bits. On x86 CPUs without VNNI (AVX2 only), U8S8 products are
  summed in pairs into saturating 16-bit lanes (vpmaddubsw): with full 8-bit weights the sums
  clip, and the model built on a VNNI machine lost a third of its recall on an AVX2-only one. With
  7-bit weights no pair can clip, at the same speed as full range. The kernels still round
  requantization a little differently, so the outputs are close, not identical: the bundled INT8
  model scores mAP50 0.8949 with VNNI and 0.8973 on a real AVX2-only EPYC (Zen 3), both inside the
  gate. The card records which kind of CPU measured it. U8U8 ran 1.6x slower here.
- Parts of the detection head stay in float. Its last Concat joins box coordinates (0..imgsz) and
  class scores (0..1): one shared INT8 scale there rounds every score to zero. Candidate float
  sets, smallest first, go to the gate; the fastest that passes wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cloud.quantize.candidate import CandidateModel, chosen_sets
from cloud.quantize.gate import QuantizationError
from device.detector import Detector
from device.images import read_image

HEAD = "/model.22/"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FORMAT = "QDQ, U8 activations, S8 per-channel weights in 7 bits (reduce_range), quant_pre_process first"


def head_node_sets(model_path: Path) -> list[tuple[str, list[str]]]:
    """Candidate sets of nodes to leave in float, smallest first."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    head = [n for n in nodes if n.name.startswith(HEAD)]
    if not head:
        raise QuantizationError(f"{model_path} has no {HEAD} nodes: not a YOLOv8 detection graph")
    output = nodes[-1].output[0] if nodes else ""
    final = [n.name for n in head if output in n.output]
    branch = ("/cv2.", "/cv3.")
    tail = [n.name for n in head if not any(b in n.name for b in branch)]
    decode = [n.name for n in head if n.op_type in ("Sigmoid", "Sub", "Add", "Div", "Mul", "Concat", "Slice")
              and "/dfl/" not in n.name and not any(b in n.name for b in branch)]
    final_convs = [n.name for n in head if any(b in n.name for b in branch) and n.op_type == "Conv"
                   and n.name.rsplit("/", 2)[-2].endswith(".2")]
    sets = [
        ("final-concat", final),
        ("box-decode", sorted(set(decode) | set(final))),
        ("head-tail", tail),
        ("head-tail+last-convs", tail + final_convs),
        ("whole-head", [n.name for n in head]),
    ]
    seen, unique = set(), []
    for name, members in sets:
        key = tuple(sorted(members))
        if key not in seen:
            seen.add(key)
            unique.append((name, members))
    return unique


class FrameReader:
    """onnxruntime's CalibrationDataReader over real frames, letterboxed like the detector."""

    def __init__(self, detector: Detector, images: list[Path]) -> None:
        self._blobs: Iterator[np.ndarray] = (detector.preprocess(read_image(p))[0] for p in images)
        self._input = detector.info.input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        blob = next(self._blobs, None)
        return None if blob is None else {self._input: blob}


def copy_metadata(source: Path, target: Path) -> None:
    """Quantization drops the model's metadata; the detector needs Ultralytics' names and size."""
    import onnx

    src, dst = onnx.load(str(source)), onnx.load(str(target))
    del dst.metadata_props[:]
    for prop in src.metadata_props:
        dst.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(dst, str(target))


def candidates(model: Path, images: list[Path], workdir: Path, method: str,
               only: list[str] | None = None) -> Iterator[CandidateModel]:
    """One INT8 model per float set, made one at a time; `only` names some."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    detector = Detector(model)
    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
    for name, excluded in chosen_sets(head_node_sets(prepared), only):
        out = workdir / f"{name}.onnx"
        quantize_static(
            str(prepared), str(out), FrameReader(detector, images),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate, nodes_to_exclude=excluded,
            extra_options={"CalibMovingAverage": method == "minmax"},
        )
        copy_metadata(model, out)
        yield CandidateModel(name, out, excluded)
