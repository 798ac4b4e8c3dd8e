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
from dataclasses import dataclass
from pathlib import Path

import yaml

from cloud.checkpoint import checkpoint_from_onnx
from cloud.dataset import DatasetSplit, write_yolo_dataset
from cloud.heldout import split_by_training
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


def recovered_checkpoint(onnx_model: Path, workdir: Path, model_yaml: str = "yolov8n.yaml") -> Path:
    """The shipped ONNX's torch checkpoint, `workdir/<stem>.pt`, for the peers to start from."""
    return checkpoint_from_onnx(onnx_model, Path(workdir) / f"{Path(onnx_model).stem}.pt", model_yaml).path


def calibration_dataset(card: ModelCard, labels_csv: Path, out_dir: Path, images_root: Path | None = None) -> Path:
    """A YOLO dataset of the card's TRAINING photos only, returned as data.yaml with both `train` and
    `val` pointing at them: Ultralytics calibrates INT8 on `split` (default `val`,
    Exporter.get_int8_calibration_dataloader), and a calibration fitted to held-out photos would flatter
    the INT8 model on the very photos that then score it."""
    photos = split_by_training(card, labels_csv)
    if not photos.trained:
        raise PeerError(f"none of {card.name!r}'s training photos is in {labels_csv}")
    split = DatasetSplit(records={CALIBRATION: photos.trained}, table_sha256=photos.table_sha256)
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


def _predict_fps(model: str, video: Path, imgsz: tuple[int, int]) -> PredictFps:
    """Ultralytics' predict on every frame of `video`, read with OpenCV one frame at a time as a
    camera delivers them: decode and predict, the work the daemon's end-to-end figure also holds
    (the daemon besides tracks defects and writes every message)."""
    import cv2
    from ultralytics import YOLO

    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    if not ok:
        raise PeerError(f"{video}: no frame to predict on")
    yolo = YOLO(model, task="detect")
    yolo.predict(frame, imgsz=list(imgsz), verbose=False, device="cpu")  # warm-up: model load, first run
    count, started = 0, time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        yolo.predict(frame, imgsz=list(imgsz), verbose=False, device="cpu")
        count += 1
    capture.release()
    return PredictFps(model=Path(model).name, imgsz=tuple(imgsz), frames=count, seconds=time.perf_counter() - started)


def torch_predict_fps(checkpoint: Path, video: Path, imgsz: tuple[int, int] = (448, 448)) -> PredictFps:
    """Ultralytics' predict loop on the torch model: the reference sample's device path."""
    return _predict_fps(str(checkpoint), video, imgsz)


def exported_predict_fps(model: Path, video: Path) -> PredictFps:
    """Ultralytics' predict loop on an exported model (an OpenVINO IR folder, or an ONNX file), at
    the input size its metadata gives (an exported model takes one shape only)."""
    return _predict_fps(str(model), video, _exported_imgsz(Path(model)))


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
