"""YOLOv8 detection: letterbox, one inference run, decode, class-aware NMS.

Pre- and post-processing follow Ultralytics' own (`LetterBox`, `non_max_suppression`,
`scale_boxes`) step for step, so the boxes match `YOLO(model.onnx).predict` (a test holds us to
that). The inference itself is the runtime's (device/runtimes.py: ONNX Runtime, or OpenVINO);
the model checks and all the rest are here, the same for both. Only OpenCV and NumPy besides:
no torch on the device.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

# ModelNotFoundError, file_sha256 and session_options moved to device.runtimes; still importable from here.
from device.runtimes import (
    InferenceModel,
    ModelError,
    RuntimeName,
    RuntimeSettings,
    model_sha256,
    open_model,
)
from device.runtimes import ModelNotFoundError as ModelNotFoundError
from device.runtimes import file_sha256 as file_sha256
from device.runtimes import session_options as session_options

# Ultralytics offsets boxes by class * max_wh before NMS so classes never suppress each other;
# cv2.dnn.NMSBoxesBatched does the same by class id.
MAX_NMS_CANDIDATES = 30000
PAD_VALUE = 114


class NotADetectorError(ModelError):
    """A readable model that is not a YOLOv8 detection model."""


class FrameError(ValueError):
    """A frame that is not an image the detector can use."""


@dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: str
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original frame

    def to_dict(self) -> dict[str, object]:
        return {
            "class_id": self.class_id,
            "class": self.class_name,
            "confidence": round(self.confidence, 5),
            "box": [round(v, 2) for v in self.box],
        }


@dataclass(frozen=True)
class ModelInfo:
    """What the model says about itself (Ultralytics writes it into the model's metadata at export)."""

    path: Path
    sha256: str  # of all the model's files (an IR's .xml and .bin): see runtimes.model_sha256
    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # height, width
    stride: int
    input_name: str
    task: str
    version: str  # the Ultralytics version that exported it
    description: str
    runtime: RuntimeName = "onnxruntime"

    @property
    def name(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input, to map boxes back."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int


@dataclass(frozen=True)
class PreparedInput:
    """A frame's model input (letterbox and blob), made in the camera's thread for the model
    serving at that moment; if the model swapped since, the inference stage makes it again."""

    model_sha256: str
    blob: np.ndarray
    fit: Letterbox


def _parse_names(raw: str | None, path: Path) -> tuple[str, ...]:
    if not raw:
        raise NotADetectorError(
            f"{path} has no class names in its metadata: export it with Ultralytics "
            "(`yolo export format=onnx`) so the detector knows its classes and input size"
        )
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise NotADetectorError(f"{path}: metadata 'names' is not readable: {raw[:80]!r}") from None
    if isinstance(names, dict):
        return tuple(str(names[k]) for k in sorted(names))
    if isinstance(names, (list, tuple)):
        return tuple(str(n) for n in names)
    raise NotADetectorError(f"{path}: metadata 'names' is a {type(names).__name__}, not a mapping")


def _model_info(path: Path, model: InferenceModel) -> ModelInfo:
    meta = model.graph.metadata
    task = meta.get("task", "detect")
    if task != "detect":
        raise NotADetectorError(f"{path} is a YOLO '{task}' model; edge-inspect needs a 'detect' model")
    names = _parse_names(meta.get("names"), path)
    inputs, outputs = model.graph.inputs, model.graph.outputs
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise NotADetectorError(f"{path} must have one NCHW image input, has {[list(i.shape) for i in inputs]}")
    shape = inputs[0].shape
    if shape[1] not in (3, "3"):
        raise NotADetectorError(f"{path}: input has {shape[1]} channels, a YOLOv8 detector takes 3")
    out_shape = outputs[0].shape
    if len(outputs) != 1 or len(out_shape) != 3 or out_shape[1] != 4 + len(names):
        raise NotADetectorError(
            f"{path}: output {[list(o.shape) for o in outputs]} is not YOLOv8 detection's (1, 4+{len(names)}, N)"
        )
    try:
        imgsz = ast.literal_eval(meta["imgsz"]) if "imgsz" in meta else [shape[2], shape[3]]
        size = (int(imgsz[0]), int(imgsz[1]))
    except (ValueError, SyntaxError, TypeError, IndexError):
        raise NotADetectorError(f"{path}: input size is neither in metadata nor in the input shape") from None
    graph_size = tuple(shape[2:4])
    if all(isinstance(d, int) for d in graph_size) and graph_size != size:
        # a model whose metadata lies about its input would fail on the first frame, not at load
        raise NotADetectorError(f"{path}: metadata says input {size[0]}x{size[1]} but the graph takes "
                                f"{graph_size[0]}x{graph_size[1]}")
    return ModelInfo(
        path=path,
        sha256=model_sha256(path),
        class_names=names,
        input_size=size,
        stride=int(meta.get("stride", 32)),
        input_name=inputs[0].name,
        task=task,
        version=meta.get("version", ""),
        description=meta.get("description", ""),
        runtime=model.runtime,
    )


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Ultralytics' LetterBox(auto=False, scaleup=True, center=True): scale to fit, pad with 114."""
    height, width = frame.shape[:2]
    target_h, target_w = size
    ratio = min(target_h / height, target_w / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    dw, dh = (target_w - new_w) / 2, (target_h - new_h) / 2
    if (width, height) != (new_w, new_h):
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, Letterbox(gain_x=new_w / width, gain_y=new_h / height, pad_x=left, pad_y=top)


def to_blob(padded_bgr: np.ndarray) -> np.ndarray:
    """HWC BGR uint8 to NCHW RGB float32 in [0, 1] (what the exported graph expects)."""
    return cv2.dnn.blobFromImage(padded_bgr, scalefactor=1 / 255.0, swapRB=True)


def check_frame(frame: object) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise FrameError(f"a frame must be a uint8 numpy array, got {type(frame).__name__}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4) or min(frame.shape[:2]) < 1:
        raise FrameError(f"a frame must be HxWx3 BGR, got shape {frame.shape}")
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


class Detector:
    """One model, ready to run on BGR frames of any size.

    `conf` and `iou` are the defaults for `detect`; Ultralytics' predict defaults are 0.25/0.7.
    `runtime`: "onnxruntime" (an .onnx; `providers`, `session_options` apply) or "openvino" (an
    .onnx or an IR .xml; `threads` apply, and for onnxruntime too when no `session_options`).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        providers: Sequence[str] | None = None,
        session_options: ort.SessionOptions | None = None,
        runtime: RuntimeName = "onnxruntime",
        threads: int | None = None,
    ) -> None:
        path = Path(model_path)
        settings = RuntimeSettings(runtime, tuple(providers) if providers else None, session_options, threads)
        self.model = open_model(path, settings)
        self.info = _model_info(path, self.model)
        self.conf, self.iou, self.max_det = conf, iou, max_det

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        padded, fit = letterbox(check_frame(frame), self.info.input_size)
        return to_blob(padded), fit

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return self.model.run(blob)

    def postprocess(
        self, output: np.ndarray, fit: Letterbox, frame_shape: tuple[int, ...], conf: float, iou: float
    ) -> list[Detection]:
        predictions = output[0].T  # (N, 4 + nc): cx, cy, w, h, class scores
        scores_all = predictions[:, 4:]
        class_ids = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(len(class_ids)), class_ids]
        keep = scores > conf
        boxes, scores, class_ids = predictions[keep, :4], scores[keep], class_ids[keep]
        if len(scores) > MAX_NMS_CANDIDATES:
            top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
            boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
        if not len(scores):
            return []
        xywh = np.column_stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2:4]])
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.astype(np.float64).tolist(), scores.tolist(), class_ids.tolist(), conf, iou
        )
        order = np.asarray(kept, dtype=np.int64).reshape(-1)
        order = order[np.argsort(-scores[order], kind="stable")][: self.max_det]
        xyxy = np.column_stack([xywh[order, :2], xywh[order, :2] + xywh[order, 2:]]).astype(np.float64)
        xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - fit.pad_x) / fit.gain_x
        xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - fit.pad_y) / fit.gain_y
        height, width = frame_shape[:2]
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        names = self.info.class_names
        return [
            Detection(int(class_ids[i]), names[int(class_ids[i])], float(scores[i]), tuple(map(float, box)))
            for i, box in zip(order, xyxy, strict=True)
        ]

    def detect(self, frame: np.ndarray, conf: float | None = None, iou: float | None = None) -> list[Detection]:
        blob, fit = self.preprocess(frame)
        output = self.infer(blob)
        return self.postprocess(
            output, fit, frame.shape, self.conf if conf is None else conf, self.iou if iou is None else iou
        )
