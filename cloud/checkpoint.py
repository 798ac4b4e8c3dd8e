"""An Ultralytics checkpoint rebuilt from an exported ONNX model, for when the training checkpoint
is lost (the shipped metal-tags model's is).

Ultralytics' ONNX export fuses every Conv+BatchNorm and keeps the fused state-dict names on the
graph's initializers (`model.0.conv.weight`, `model.0.conv.bias`, ...), and writes the class names,
input size and stride into the metadata. So building the same YAML, fusing it the way export does
and loading each fused tensor by name gives back the exact network: exporting the result again
reproduces the original graph's outputs bit for bit (tests/test_export.py).

The checkpoint is fused (BatchNorm folded away): it exports and predicts, but it cannot resume
training; fine-tuning needs the original (unfused) checkpoint.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# The DFL conv is not learned: its weight is arange(reg_max), set at build time. Some exports
# fold it into a constant of another name, so it may be absent; when present it must be that.
DFL_WEIGHT_SUFFIX = ".dfl.conv.weight"
# Recovered network and ONNX graph are run on the same input; beyond this relative difference
# (|a - b| / (1 + |b|): boxes are pixels, scores 0..1) the rebuild is wrong (another activation,
# another head), even if every tensor name and shape matched: those differ by O(1); float noise
# between torch and onnxruntime kernels is ~1e-5 on the shipped model.
PARITY_TOLERANCE = 1e-3


class CheckpointError(ValueError):
    """The ONNX model cannot be turned back into a checkpoint of the given YAML; says why."""


@dataclass(frozen=True)
class OnnxYolo:
    """What an Ultralytics-exported YOLO detection ONNX says about itself."""

    path: Path
    names: dict[int, str]
    imgsz: tuple[int, int]  # height, width
    stride: int
    opset: int
    version: str  # the Ultralytics version that exported it
    initializers: dict[str, np.ndarray]


@dataclass(frozen=True)
class RecoveredCheckpoint:
    path: Path
    source: Path
    names: dict[int, str]
    imgsz: tuple[int, int]  # height, width, as the source ONNX was exported
    stride: int
    opset: int  # the source's ONNX opset: re-export with the same
    tensors: int  # fused state-dict tensors loaded from the ONNX
    max_rel_diff: float  # recovered torch model vs the ONNX graph on one input (see PARITY_TOLERANCE)


def _metadata_literal(meta: dict[str, str], key: str, path: Path) -> object:
    if key not in meta:
        raise CheckpointError(f"{path} is not an Ultralytics YOLO export: its metadata has no {key!r} "
                              "(export it with `yolo export format=onnx`)")
    try:
        return ast.literal_eval(meta[key])
    except (ValueError, SyntaxError):
        raise CheckpointError(f"{path}: metadata {key!r} is not readable: {meta[key][:80]!r}") from None


def read_onnx_yolo(path: str | Path) -> OnnxYolo:
    """Metadata and initializers of an Ultralytics YOLO detection ONNX, or a CheckpointError."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends from protobuf
        raise CheckpointError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    task = meta.get("task", "")
    if task != "detect":
        raise CheckpointError(f"{path} is not a YOLO detection export (metadata task {task or 'missing'!r})")
    names = _metadata_literal(meta, "names", path)
    imgsz = _metadata_literal(meta, "imgsz", path)
    stride = _metadata_literal(meta, "stride", path)
    if not isinstance(names, dict) or not names:
        raise CheckpointError(f"{path}: metadata 'names' is not a class mapping")
    if not (isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz)):
        raise CheckpointError(f"{path}: metadata 'imgsz' is not [height, width]: {imgsz!r}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxYolo(
        path=path,
        names={int(k): str(v) for k, v in names.items()},
        imgsz=(int(imgsz[0]), int(imgsz[1])),
        stride=int(stride),
        opset=int(opset),
        version=meta.get("version", ""),
        initializers={t.name: numpy_helper.to_array(t) for t in model.graph.initializer},
    )


def _fused_model(model_yaml: str, nc: int):
    """Ultralytics' DetectionModel from the YAML, fused as its exporter fuses it."""
    from ultralytics.nn.tasks import DetectionModel

    try:
        model = DetectionModel(model_yaml, nc=nc, verbose=False)
    except FileNotFoundError:
        raise CheckpointError(f"model YAML {model_yaml!r} not found (Ultralytics' own, e.g. yolov8n.yaml, or a path)") \
            from None
    return model.eval().fuse(verbose=False)


def _load_initializers(model, source: OnnxYolo, model_yaml: str) -> int:
    """Every fused tensor from the ONNX, by name and shape; anything missing or extra is an error:
    a partial load would give a model that runs and is silently wrong."""
    import torch

    state = model.state_dict()
    onnx_params = {k for k in source.initializers if k.startswith("model.")}
    missing, wrong, loaded = [], [], {}
    for name, tensor in state.items():
        array = source.initializers.get(name)
        if array is None:
            if not name.endswith(DFL_WEIGHT_SUFFIX):
                missing.append(name)
            continue
        if tuple(array.shape) != tuple(tensor.shape):
            wrong.append(f"{name} {list(array.shape)} (the YAML builds {list(tensor.shape)})")
            continue
        if name.endswith(DFL_WEIGHT_SUFFIX) and not np.allclose(array, tensor.numpy()):
            wrong.append(f"{name}: not DFL's fixed arange({tensor.numel()})")
            continue
        loaded[name] = torch.from_numpy(np.array(array, dtype=np.float32))
    extra = sorted(onnx_params - set(state))
    if missing or wrong or extra:
        details = "; ".join(filter(None, [
            f"{len(missing)} missing (first: {', '.join(missing[:3])})" if missing else "",
            f"{len(wrong)} of another shape ({'; '.join(wrong[:3])})" if wrong else "",
            f"{len(extra)} the YAML has no place for (first: {', '.join(extra[:3])})" if extra else "",
        ]))
        raise CheckpointError(f"{source.path}'s initializers do not match fused {model_yaml} with "
                              f"{len(source.names)} class(es): {details}")
    model.load_state_dict({**state, **loaded}, strict=True)
    return len(loaded)


def _parity(model, source: OnnxYolo) -> float:
    """Largest |torch - onnxruntime| / (1 + |onnxruntime|) on one seeded input at the source's size."""
    import onnxruntime as ort
    import torch

    height, width = source.imgsz
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    session = ort.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x))
    got = (got[0] if isinstance(got, (list, tuple)) else got).numpy()
    if got.shape != expected.shape:
        raise CheckpointError(f"{source.path}: the rebuilt model outputs {got.shape}, the ONNX {expected.shape}")
    return float((np.abs(got - expected) / (1 + np.abs(expected))).max())


def checkpoint_from_onnx(onnx_path: str | Path, out_pt: str | Path, model_yaml: str = "yolov8n.yaml") -> RecoveredCheckpoint:
    """Rebuild the exact torch model of an Ultralytics YOLO detection ONNX and save it as a
    checkpoint that `ultralytics.YOLO(out_pt)` loads, exports and predicts with."""
    import torch
    from ultralytics import __version__

    source = read_onnx_yolo(onnx_path)
    model = _fused_model(model_yaml, nc=len(source.names))
    if int(max(model.stride)) != source.stride:
        raise CheckpointError(f"{source.path} has stride {source.stride}; {model_yaml} builds {int(max(model.stride))}")
    tensors = _load_initializers(model, source, model_yaml)
    diff = _parity(model, source)
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise CheckpointError(f"{source.path}: the rebuilt {model_yaml} differs from the ONNX graph by up to {diff:.3g} "
                              "although every tensor matched: the YAML is not the architecture it was exported from")

    height, width = source.imgsz
    model.names = dict(source.names)
    # What YOLO(pt) keeps of these (`Model._reset_ckpt_args`): imgsz (export's default size),
    # task, data, single_cls. No data: the training dataset is not on this machine.
    model.args = {"task": "detect", "imgsz": height if height == width else [height, width], "model": model_yaml,
                  "data": None, "single_cls": False}
    for parameter in model.parameters():
        parameter.requires_grad = False
    out_pt = Path(out_pt)
    out_pt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "model": model,  # FP32, unlike Ultralytics' FP16 checkpoints: the ONNX weights are FP32
        "ema": None,
        "train_args": model.args,
        "recovered_from": {"onnx": source.path.name, "exported_by_ultralytics": source.version},
    }, out_pt)
    return RecoveredCheckpoint(path=out_pt, source=source.path, names=dict(source.names), imgsz=source.imgsz,
                               stride=source.stride, opset=source.opset, tensors=tensors, max_rel_diff=diff)
