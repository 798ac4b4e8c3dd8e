"""The peers the benchmark compares our detector against, all built from the checkpoint rebuilt
from the shipped ONNX (cloud/checkpoint.py), so every peer runs the very weights we ship:

- `openvino_int8`: Ultralytics' own OpenVINO INT8 export (NNCF, MIXED preset, detection head in
  float), calibrated on the model's TRAINING photos only;
- `torch_predict_fps`: Ultralytics' predict loop on the torch model. Note: for a .pt model
  Ultralytics letterboxes to the smallest stride multiple that holds the frame (`rect`), so on
  450x300 frames at imgsz 448 it already runs 320x448, like our camera-shaped export;
- `exported_predict_fps`: Ultralytics' predict loop on an exported model (the OpenVINO folder).

Each returns a small dataclass. Needs the `train` extra (Ultralytics) and the `bench` extra (OpenVINO, NNCF).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from cloud.checkpoint import checkpoint_from_onnx
from cloud.dataset import DatasetSplit, write_yolo_dataset
from cloud.label_table import approved, read_label_csv, table_fingerprint
from device.model_card import ModelCard, card_path_for

CALIBRATION = "train"


class PeerError(RuntimeError):
    pass


@dataclass(frozen=True)
class OpenVinoInt8:
    folder: Path  # Ultralytics' IR folder: model .xml/.bin and metadata.yaml
    imgsz: tuple[int, int]  # height, width
    calibration_images: int
    calibration_data: Path  # data.yaml whose `val` split (the one Ultralytics calibrates on) is the training photos


@dataclass(frozen=True)
class PredictFps:
    model: str
    imgsz: tuple[int, int]  # height, width asked of Ultralytics (a .pt model may letterbox smaller: see above)
    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return round(self.frames / self.seconds, 2) if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PeerAccuracy:
    model: str
    split: str
    map50: float
    map50_95: float
    images: int
    how: str  # which pipeline scored it


def recovered_checkpoint(onnx_model: Path, workdir: Path, model_yaml: str = "yolov8n.yaml") -> Path:
    """The shipped ONNX's torch checkpoint, `workdir/<stem>.pt`, for the peers to start from."""
    return checkpoint_from_onnx(onnx_model, Path(workdir) / f"{Path(onnx_model).stem}.pt", model_yaml).path


def calibration_dataset(card: ModelCard, labels_csv: Path, out_dir: Path, images_root: Path | None = None) -> Path:
    """A YOLO dataset of the card's TRAINING photos only, returned as data.yaml with both `train` and
    `val` pointing at them: Ultralytics calibrates INT8 on `split` (default `val`,
    Exporter.get_int8_calibration_dataloader), and a calibration fitted to held-out photos would flatter
    the INT8 model on the very photos that then score it."""
    trained = set(((card.data or {}).get("photos") or {}).get("train") or [])
    if not trained:
        raise PeerError(f"model card {card.name!r} lists no training photos (data.photos.train)")
    records = approved(read_label_csv(labels_csv))
    kept = [r for r in records if r.photo_id in trained]
    if not kept:
        raise PeerError(f"none of {card.name!r}'s training photos is in {labels_csv}")
    split = DatasetSplit(records={CALIBRATION: kept}, table_sha256=table_fingerprint(records))
    data_yaml = write_yolo_dataset(split, images_root or labels_csv.parent, out_dir, card.class_names)
    spec = yaml.safe_load(data_yaml.read_text())
    spec = {k: v for k, v in spec.items() if k not in ("val", "test")}
    spec["val"] = spec["train"] = f"images/{CALIBRATION}"
    data_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data_yaml


def openvino_int8(checkpoint: Path, onnx_model: Path, labels_csv: Path, out_dir: Path,
                  imgsz: tuple[int, int] | None = None, images_root: Path | None = None) -> OpenVinoInt8:
    """`YOLO(checkpoint).export(format="openvino", int8=True, ...)`, calibrated on the training photos
    of `onnx_model`'s card; the IR folder is moved to `out_dir`. Takes a few minutes on 2 cores."""
    from ultralytics import YOLO

    from device.detector import Detector

    card = ModelCard.read(card_path_for(onnx_model))
    size = imgsz or Detector(onnx_model).info.input_size
    data_yaml = calibration_dataset(card, labels_csv, Path(out_dir) / "calibration", images_root)
    calibration_images = len(list((data_yaml.parent / "images" / CALIBRATION).iterdir()))
    # int8=True, not quantize=8: the form every Ultralytics the `train` extra allows (>=8.3) reads
    exported = YOLO(str(checkpoint)).export(format="openvino", int8=True, data=str(data_yaml), imgsz=list(size),
                                            batch=1, dynamic=False, verbose=False)
    folder = Path(out_dir) / Path(exported).name
    if folder.resolve() != Path(exported).resolve():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.move(str(exported), folder)
    return OpenVinoInt8(folder=folder, imgsz=tuple(size), calibration_images=calibration_images,
                        calibration_data=data_yaml)


def _predict_fps(model: str, frames: Sequence[np.ndarray], imgsz: tuple[int, int], rounds: int) -> PredictFps:
    from ultralytics import YOLO

    if not frames:
        raise PeerError("no frames to predict on")
    yolo = YOLO(model, task="detect")
    yolo.predict(frames[0], imgsz=list(imgsz), verbose=False, device="cpu")  # warm-up: model load, first run
    count, started = 0, time.perf_counter()
    for _ in range(rounds):
        for frame in frames:
            yolo.predict(frame, imgsz=list(imgsz), verbose=False, device="cpu")
            count += 1
    return PredictFps(model=Path(model).name, imgsz=tuple(imgsz), frames=count, seconds=time.perf_counter() - started)


def torch_predict_fps(checkpoint: Path, frames: Sequence[np.ndarray], imgsz: tuple[int, int] = (448, 448),
                      rounds: int = 3) -> PredictFps:
    """Ultralytics' predict loop on the torch model, one frame per call (as a camera delivers them)."""
    return _predict_fps(str(checkpoint), frames, imgsz, rounds)


def exported_predict_fps(model: Path, frames: Sequence[np.ndarray], rounds: int = 3) -> PredictFps:
    """Ultralytics' predict loop on an exported model (an OpenVINO IR folder, or an ONNX file), at
    the input size its metadata gives (an exported model takes one shape only)."""
    return _predict_fps(str(model), frames, _exported_imgsz(Path(model)), rounds)


def _exported_imgsz(model: Path) -> tuple[int, int]:
    if model.is_dir():
        meta = yaml.safe_load((model / "metadata.yaml").read_text())
        return int(meta["imgsz"][0]), int(meta["imgsz"][1])
    from device.detector import Detector

    return Detector(model).info.input_size


def ir_xml(folder: Path) -> Path:
    """The model .xml of an Ultralytics OpenVINO folder (its one .xml)."""
    xmls = sorted(Path(folder).glob("*.xml"))
    if len(xmls) != 1:
        raise PeerError(f"{folder}: expected one OpenVINO .xml, found {len(xmls)}")
    return xmls[0]


def detector_heldout(model: Path, data_yaml: Path, split: str = "heldout") -> PeerAccuracy:
    """mAP through our own detector (cloud.evaluation.evaluate, as every model card's figures): an
    OpenVINO folder runs on the detector's OpenVINO runtime, an ONNX file on ONNX Runtime."""
    from cloud.evaluation import evaluate

    model = Path(model)
    path, runtime = (ir_xml(model), "openvino") if model.is_dir() else (model, "onnxruntime")
    result = evaluate(path, data_yaml, split=split, runtime=runtime)
    return PeerAccuracy(model=model.name, split=split, map50=round(result.map50, 4), map50_95=round(result.map50_95, 4),
                        images=result.images, how=f"device detector ({runtime}), cloud.evaluation.evaluate")


def _ultralytics_data(data_yaml: Path, split: str) -> Path:
    """Ultralytics refuses a data.yaml without `train` and `val` (cloud/heldout's has only `heldout`),
    and resolves only its own split names against `path`: a copy beside it whose `train` and `val` are
    `split`, scored as `val`."""
    spec = yaml.safe_load(Path(data_yaml).read_text())
    spec.setdefault("path", str(Path(data_yaml).parent.resolve()))
    spec["train"] = spec["val"] = spec[split]
    copy = Path(data_yaml).with_name(f"{Path(data_yaml).stem}.ultralytics.yaml")
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    return copy


def ultralytics_heldout(model: Path, data_yaml: Path, split: str = "heldout") -> PeerAccuracy:
    """mAP of an exported model by Ultralytics' own val (its own pre/post-processing), to check
    `detector_heldout` against, or for models our detector cannot run. Ultralytics' val takes one square size (it keeps the larger side), so
    this scores square models only."""
    from ultralytics import YOLO

    from cloud.evaluation import split_images

    height, width = _exported_imgsz(Path(model))
    if height != width:
        raise PeerError(f"{model} takes {height}x{width}: Ultralytics' val letterboxes to a square only")
    metrics = YOLO(str(model), task="detect").val(data=str(_ultralytics_data(data_yaml, split)), split="val",
                                                   imgsz=height, batch=1, device="cpu", plots=False, verbose=False,
                                                   # its run folder beside the data, not under ./runs
                                                   project=str(Path(data_yaml).parent.resolve()), name="ultralytics-val",
                                                   exist_ok=True)
    results = metrics.results_dict
    return PeerAccuracy(model=Path(model).name, split=split, map50=round(float(results["metrics/mAP50(B)"]), 4),
                        map50_95=round(float(results["metrics/mAP50-95(B)"]), 4),
                        images=len(split_images(data_yaml, split)), how="Ultralytics YOLO(model).val")
