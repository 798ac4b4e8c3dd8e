"""`edge-inspect export`: the same trained network, exported at the camera's letterboxed shape.

The shipped model takes 448x448; the cameras send 450x300 (3:2) frames, which letterbox to 448x299
and pad to 448x448: a third of every inference runs on grey padding. The detector letterboxes to
whatever (height, width) the model's metadata gives, so a model exported at 320x448 (Ultralytics
writes imgsz as [h, w]) pads only 21 rows, and needs 29% fewer FLOPs (2.83 against 3.96 GFLOPs).

The training checkpoint is lost, so the checkpoint is rebuilt from the ONNX (cloud/checkpoint.py);
Ultralytics exports it at the new size with the source's opset. The new card keeps the source
card's provenance, names the source (`derived_from`), carries held-out figures for both models
measured here through the device detector, and a self-test on the source card's reference frames.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cloud.checkpoint import RecoveredCheckpoint, checkpoint_from_onnx
from cloud.evaluation import EvalResult, evaluate
from cloud.heldout import HELDOUT, heldout_dataset
from cloud.quantize.gate import GateSettings
from device.detector import Detector, file_sha256
from device.model_card import ModelCard, card_path_for, package_versions, write_self_test

FRAME_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
# Extra sections of the source card that describe the training, not the file: carried over.
CARRIED_EXTRAS = ("recipe_notes",)


class ExportError(ValueError):
    """Bad input to an export (a size, a missing card); the message says what to change."""


@dataclass(frozen=True)
class ExportResult:
    model: Path
    card: Path
    imgsz: tuple[int, int]  # height, width
    source: Path
    source_imgsz: tuple[int, int]
    heldout: EvalResult
    heldout_source: EvalResult
    gflops: float | None  # None where the benchmarks package (its FLOP count) is not installed
    gflops_source: float | None

    def line(self) -> str:
        h, w = self.imgsz
        sh, sw = self.source_imgsz
        flops = (f"{self.gflops:.2f} GFLOPs vs {self.gflops_source:.2f} at {sw}x{sh}" if self.gflops is not None
                 else f"source {sw}x{sh}, FLOPs not counted (no benchmarks package)")
        return (f"wrote {self.model} and {self.card.name}: input {w}x{h} (w x h), {flops}; "
                f"held-out mAP50 {self.heldout.map50:.4f} vs "
                f"{self.heldout_source.map50:.4f}, mAP50-95 {self.heldout.map50_95:.4f} vs "
                f"{self.heldout_source.map50_95:.4f} ({self.heldout.images} photos, {self.heldout.instances} scratches)")


def parse_frame_size(text: str) -> tuple[int, int]:
    """'450x300' -> (450, 300): width, height in pixels."""
    match = FRAME_SIZE.match(text or "")
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ExportError(f"frame size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 450x300")
    return int(match[1]), int(match[2])


def check_imgsz(imgsz: tuple[int, int], stride: int) -> tuple[int, int]:
    height, width = imgsz
    if min(height, width) < stride or height % stride or width % stride:
        raise ExportError(f"input size {height}x{width} (h x w): both sides must be positive multiples of the "
                          f"model's stride {stride}")
    return height, width


def camera_imgsz(model_imgsz: tuple[int, int], frame_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(height, width) that holds a letterboxed frame with the least padding: the long side stays
    the model's current input size (same scale, so the same pixels per scratch as trained), the
    short side is the scaled frame's short side rounded up to the stride."""
    frame_w, frame_h = frame_size
    long_side = max(model_imgsz)
    ratio = long_side / max(frame_w, frame_h)
    short_px = max(round(min(frame_w, frame_h) * ratio), 1)  # as the letterbox rounds it
    short_side = math.ceil(short_px / stride) * stride
    return (short_side, long_side) if frame_w >= frame_h else (long_side, short_side)


def _ultralytics_export(checkpoint: RecoveredCheckpoint, imgsz: tuple[int, int]) -> Path:
    from ultralytics import YOLO

    exported = YOLO(str(checkpoint.path)).export(format="onnx", imgsz=list(imgsz), simplify=True,
                                                 opset=checkpoint.opset or None, dynamic=False, batch=1, verbose=False)
    return Path(exported)


def _frame_file_names(card: ModelCard) -> list[str]:
    """The file each of the card's self-test frames is written to. The new card names its frames
    after these files: a name without one, or two frames with the same one, would lose a frame
    (or write outside the folder), and the new self-test would not be the source's."""
    names = [Path(frame.name).name for frame in card.self_test.frames]
    bad = [frame.name for frame, name in zip(card.self_test.frames, names, strict=True) if name in ("", ".", "..")]
    if bad:
        raise ExportError(f"model card {card.name!r}: self-test frame name {bad[0]!r} is not a file name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExportError(f"model card {card.name!r}: self-test frames share a file name: {', '.join(repeated)}")
    return names


def _reference_frames(card: ModelCard, folder: Path) -> list[Path]:
    """The source card's self-test frames, as files, so the new model's self-test runs on exactly
    the frames the source's does: each frame's bytes are checked against its sha256."""
    if card.self_test is None:
        raise ExportError(f"model card {card.name!r} has no self-test: its reference frames are the new card's")
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for frame, name in zip(card.self_test.frames, _frame_file_names(card), strict=True):
        try:
            data = frame.jpeg()
        except ValueError as exc:  # the bytes do not match the sha256: a damaged card
            raise ExportError(f"model card {card.name!r}: {exc}") from None
        path = folder / name
        path.write_bytes(data)
        frames.append(path)
    return frames


def check_heldout(heldout: EvalResult, heldout_source: EvalResult, gate: GateSettings | None = None) -> None:
    """The export is the same network at another input size: it may not lose held-out accuracy
    beyond what the INT8 gate allows a quantized model (cloud.quantize.gate.GateSettings)."""
    gate = gate or GateSettings()
    limits = [("mAP50", heldout.map50, heldout_source.map50, gate.max_drop),
              ("mAP50-95", heldout.map50_95, heldout_source.map50_95, gate.max_drop_map50_95)]
    losses = [f"{name} {new:.4f} vs {old:.4f} (a drop of {old - new:.4f}, at most {limit} allowed)"
              for name, new, old, limit in limits if limit is not None and old - new > limit]
    if losses:
        raise ExportError(f"refused: the export loses held-out accuracy against its source ({'; '.join(losses)}, "
                          f"{heldout.images} photos): nothing written")


def _gflops(model: Path) -> float | None:
    try:  # the benchmark's own count, so the figures agree with it; only a report figure: optional
        from benchmarks.flops import count_flops  # not benchmarks.bench, which pulls in the demo
    except ImportError:
        return None
    return round(count_flops(model) / 1e9, 3)


def _source_card(source: Path) -> ModelCard:
    card_file = card_path_for(source)
    if not card_file.is_file():
        raise ExportError(f"{source} has no model card ({card_file.name}): its provenance and training photos "
                          "(which photos are held out) come from it")
    card = ModelCard.read(card_file)
    if card.model_sha256 != file_sha256(source):
        raise ExportError(f"{card_file.name} describes another file than {source.name} (sha256 differs)")
    return card


def _new_card(source: Path, source_card: ModelCard, model: Path, imgsz: tuple[int, int], opset: int,
              heldout: EvalResult, heldout_source: EvalResult, command: str) -> ModelCard:
    h, w = imgsz
    return ModelCard(
        name=model.stem,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_file=model.name,
        model_sha256=file_sha256(model),
        task=source_card.task,
        class_names=source_card.class_names,
        input_size=[h, w],
        precision="fp32",
        # Only figures measured on this file and its source here: the source's test/val figures
        # were measured at its own input size and stay in its card.
        metrics={"heldout": heldout.to_dict(), "heldout_source": heldout_source.to_dict()},
        data=source_card.data,
        training=source_card.training,
        drift_reference=source_card.drift_reference,  # the same training images
        packages=package_versions(),
        command=command,
        derived_from={
            "model_file": source.name,
            "model_sha256": source_card.model_sha256,
            "card_name": source_card.name,
            "how": f"the same weights, re-exported at {w}x{h} (w x h): checkpoint rebuilt from the ONNX "
                   f"(cloud/checkpoint.py), Ultralytics ONNX export with opset {opset}, simplified",
            "heldout": "metrics.heldout and metrics.heldout_source: every approved labelled photo outside "
                       "data.photos.train, through the device detector",
        },
        **{k: v for k, v in (source_card.model_extra or {}).items() if k in CARRIED_EXTRAS},
    )


def export_for_camera(source: str | Path, out: str | Path, labels: str | Path, *,
                      frame_size: tuple[int, int] | None = None, imgsz: tuple[int, int] | None = None,
                      images_root: str | Path | None = None, model_yaml: str | None = None,
                      command: str = "") -> ExportResult:
    """Export `source`'s network to `out`, with a model card beside it, at `imgsz` (height, width)
    or at the shape that fits `frame_size` (width, height) letterboxed (`camera_imgsz`)."""
    source, out = Path(source), Path(out)
    if (frame_size is None) == (imgsz is None):
        raise ExportError("give either a frame size (WIDTHxHEIGHT) or an input size (H W), not both or neither")
    if out.suffix != ".onnx":
        raise ExportError(f"output {out}: the exported model is ONNX, name it *.onnx")
    if out.resolve() == source.resolve():
        raise ExportError(f"output {out} is the source model: write the new model beside it")
    source_card = _source_card(source)
    model_yaml = model_yaml or (source_card.training or {}).get("model_yaml") or "yolov8n.yaml"
    with tempfile.TemporaryDirectory(prefix="edge-inspect-export-") as tmp:
        workdir = Path(tmp)
        frames = _reference_frames(source_card, workdir / "self-test")  # a damaged card fails before any work
        # The checkpoint is named after the output: Ultralytics writes its ONNX beside it, under its stem,
        # and the card written beside that ONNX must already carry the output's name.
        checkpoint = checkpoint_from_onnx(source, workdir / f"{out.stem}.pt", model_yaml)
        if frame_size is not None:
            imgsz = camera_imgsz(checkpoint.imgsz, frame_size, checkpoint.stride)
        imgsz = check_imgsz(imgsz, checkpoint.stride)
        exported = _ultralytics_export(checkpoint, imgsz)
        got = Detector(exported).info.input_size
        if got != imgsz:  # the device reads the size from the metadata: it must be the one asked for
            raise ExportError(f"Ultralytics exported input {got}, not {imgsz}")
        data_yaml = heldout_dataset(source_card, Path(labels), workdir / "heldout",
                                    Path(images_root) if images_root else None)
        heldout = evaluate(exported, data_yaml, split=HELDOUT)
        heldout_source = evaluate(source, data_yaml, split=HELDOUT)
        check_heldout(heldout, heldout_source)
        card = _new_card(source, source_card, exported, imgsz, checkpoint.opset, heldout, heldout_source, command)
        card.write(card_path_for(exported))
        write_self_test(exported, exported, frames)
        gflops, gflops_source = _gflops(exported), _gflops(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Card first, model last: whoever watches the folder never sees the model without its card.
        for made, target in ((card_path_for(exported), card_path_for(out)), (exported, out)):
            shutil.copyfile(made, target.with_name(target.name + ".tmp"))
            os.replace(target.with_name(target.name + ".tmp"), target)
    return ExportResult(model=out, card=card_path_for(out), imgsz=imgsz, source=source,
                        source_imgsz=checkpoint.imgsz, heldout=heldout, heldout_source=heldout_source,
                        gflops=gflops, gflops_source=gflops_source)
