"""`edge-inspect quantize`: static INT8 quantization of a YOLOv8 ONNX model, with an accuracy gate.

What it does, and why:
- `quant_pre_process` first (shape inference and graph clean-up), as onnxruntime recommends.
- QDQ format, unsigned 8-bit activations with signed per-channel weights (U8S8): onnxruntime's
  x86 kernels fuse every Conv in that form; its default S8S8 leaves most Convs unfused and runs
  slower than FP32.
- Calibration on real frames: a folder of images (a dataset split, or the device spool), each
  letterboxed exactly as the detector does it.
- Parts of the detection head stay in float. YOLOv8's last Concat joins box coordinates (0..imgsz)
  and class scores (0..1): one shared INT8 scale there rounds every score to zero. Several
  candidate float sets, from the smallest to the whole head, are quantized and measured (mAP on
  the test split through the device detector, and latency); the fastest that stays within
  `--max-drop` of the FP32 mAP50 wins.
- OUT is written only when the gate passes, with a model card holding both models' figures.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.detector import Detector, file_sha256
from device.images import list_images, read_image
from device.model_card import ModelCard, card_path_for
from device.timing import time_inference

log = logging.getLogger(__name__)

HEAD = "/model.22/"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizationError(RuntimeError):
    pass


@dataclass
class Candidate:
    name: str
    excluded: list[str]
    path: Path | None = None
    map50: float = 0.0
    map50_95: float = 0.0
    latency_ms: float = 0.0
    metrics: dict | None = None


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


def calibration_images(calib: Path, limit: int) -> list[Path]:
    images = list_images([calib])
    if len(images) > limit:  # an even spread, not the first N of a sorted folder
        images = [images[i] for i in np.linspace(0, len(images) - 1, limit).round().astype(int)]
    return images


def quantize_once(prepared: Path, out: Path, detector: Detector, images: list[Path], method: str,
                  excluded: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    quantize_static(
        str(prepared), str(out), FrameReader(detector, images),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=calibrate, nodes_to_exclude=excluded,
        extra_options={"CalibMovingAverage": method == "minmax"},
    )
    return out


def copy_metadata(source: Path, target: Path) -> None:
    """Quantization drops the model's metadata; the detector needs Ultralytics' names and size."""
    import onnx

    src, dst = onnx.load(str(source)), onnx.load(str(target))
    del dst.metadata_props[:]
    for prop in src.metadata_props:
        dst.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(dst, str(target))


def session_latency_ms(path: Path, runs: int = 30) -> float:
    return float(np.median(time_inference(Detector(path), runs)) * 1000)


def quantize_model(model: Path, calib: Path, out: Path, data: Path | None, max_drop: float = 0.01,
                   method: str = "minmax", calib_limit: int = 200, split: str = "test",
                   max_drop_map50_95: float | None = None) -> dict:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cloud.evaluation import evaluate

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    detector = Detector(model)
    images = calibration_images(calib, calib_limit)
    fp32 = evaluate(model, data, split) if data else None
    fp32_latency = session_latency_ms(model)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
        candidates = []
        for name, excluded in head_node_sets(prepared):
            candidate = Candidate(name, excluded, Path(tmp) / f"{name}.onnx")
            quantize_once(prepared, candidate.path, detector, images, method, excluded)
            copy_metadata(model, candidate.path)
            candidate.latency_ms = session_latency_ms(candidate.path)
            if fp32:
                result = evaluate(candidate.path, data, split)
                candidate.map50, candidate.map50_95 = result.map50, result.map50_95
                candidate.metrics = result.to_dict()
            log.info("candidate %-22s float nodes %3d  latency %.1f ms  mAP50 %.4f", name, len(excluded),
                     candidate.latency_ms, candidate.map50)
            candidates.append(candidate)
        passing = [c for c in candidates if not fp32 or (
            fp32.map50 - c.map50 <= max_drop
            and (max_drop_map50_95 is None or fp32.map50_95 - c.map50_95 <= max_drop_map50_95))]
        report = {
            "fp32": {**(fp32.to_dict() if fp32 else {}), "latency_ms": round(fp32_latency, 2)},
            "candidates": [{"name": c.name, "float_nodes": len(c.excluded), "latency_ms": round(c.latency_ms, 2),
                            "map50": round(c.map50, 4), "map50_95": round(c.map50_95, 4)} for c in candidates],
            "max_drop": max_drop,
            "max_drop_map50_95": max_drop_map50_95,
            "calibration": {"method": method, "images": len(images), "source": str(calib)},
        }
        if not passing:
            best = max(candidates, key=lambda c: c.map50)
            raise QuantizationError(
                f"refused: every INT8 candidate loses more than {max_drop} mAP50 (FP32 {fp32.map50:.4f}, best INT8 "
                f"{best.map50:.4f} with {best.name}); {out} not written")
        chosen = min(passing, key=lambda c: c.latency_ms)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chosen.path, out)
    report["chosen"] = chosen.name
    report["int8"] = {**(chosen.metrics or {}), "latency_ms": round(chosen.latency_ms, 2)}
    report["float_nodes"] = chosen.excluded
    _write_card(model, out, report)
    return report


def _write_card(model: Path, out: Path, report: dict) -> None:
    """The INT8 card: the FP32 card's provenance, with `test` now the INT8 figures and
    `test_fp32` the FP32 ones beside them (both measured here, on the same split)."""
    source_card = card_path_for(model)
    if source_card.is_file():
        base = ModelCard.read(source_card).model_dump()
    else:
        info = Detector(model).info
        base = {"name": model.stem, "created": "", "class_names": list(info.class_names),
                "input_size": list(info.input_size)}
    fp32 = {k: v for k, v in report["fp32"].items() if k != "latency_ms"}
    int8 = {k: v for k, v in report["int8"].items() if k != "latency_ms"}
    # the FP32 card's other figures (val) are the FP32 model's: kept, under names that say so
    inherited = {f"{k}_fp32": v for k, v in (base.get("metrics") or {}).items() if k != "test"}
    metrics = {**inherited, "test": int8 or None, "test_fp32": fp32 or None,
               "latency_ms": {"fp32": report["fp32"]["latency_ms"], "int8": report["int8"]["latency_ms"]}}
    quantization = {k: v for k, v in report.items() if k not in ("fp32", "int8")}
    quantization.update({"fp32_model": model.name, "fp32_model_sha256": file_sha256(model),
                         "format": "QDQ, U8 activations, S8 per-channel weights, quant_pre_process first"})
    card = ModelCard(**{**base, "name": out.stem, "model_file": out.name, "model_sha256": file_sha256(out),
                        "precision": "int8", "metrics": metrics, "quantization": quantization})
    card.write(card_path_for(out))
