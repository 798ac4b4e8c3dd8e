"""`edge-inspect train`: label table -> split dataset -> Ultralytics training from the model YAML
(no pretrained weights: nothing can be downloaded) -> ONNX export -> test-split evaluation through
the device detector -> model card.

Resumable: the run lives in one output folder. Run the same command again after an interruption
and it continues from the last whole checkpoint (`resume.pt`, see `_keep_resume_point`); a
finished run is not retrained, only re-exported and re-scored if those steps did not finish.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.dataset import SplitFractions, split_by_photo, write_yolo_dataset
from cloud.evaluation import evaluate
from cloud.label_table import read_label_csv
from device.detector import file_sha256
from device.model_card import ModelCard, card_path_for, package_versions

log = logging.getLogger(__name__)

RUN_SUBDIR = "ultralytics"
STATE_FILE = "train_state.json"
RESUME_POINT = "resume.pt"  # an always-whole copy of Ultralytics' last.pt


class TrainingError(RuntimeError):
    pass


class TrainSettings(BaseModel):
    """Everything that decides the trained model; stored with the run so a resume can check that
    it continues the same training."""

    model_config = ConfigDict(extra="forbid")

    labels: Path
    images_root: Path | None = Field(None, description="folder source_ref is relative to; default: the table's")
    name: str = Field("metal-tags-yolov8n", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model_yaml: str = "yolov8n.yaml"
    class_names: list[str] = ["scratch"]
    imgsz: int = Field(448, ge=64, le=2048, multiple_of=32)
    epochs: int = Field(120, ge=1)
    batch: int = Field(16, ge=1)
    seed: int = 0
    split_seed: int = 0
    train_fraction: float = 0.70
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    workers: int = Field(2, ge=0)
    augment: dict[str, float] = Field(default_factory=dict, description="Ultralytics augmentation overrides")
    mlflow: bool = False

    def fractions(self) -> SplitFractions:
        return SplitFractions(self.train_fraction, self.val_fraction, self.test_fraction)

    def comparable(self) -> dict[str, Any]:
        """What must be equal for a resume; `workers` and `mlflow` may change between attempts."""
        return self.model_dump(mode="json", exclude={"workers", "mlflow"})


def _configure_ultralytics(mlflow: bool) -> None:
    """Ultralytics logs to MLflow whenever mlflow is importable, and reports to its hub; the
    first is opt-in here and the second is off (the machines have no internet)."""
    from ultralytics import settings

    settings.update({"mlflow": mlflow, "sync": False})


def _load_state(out: Path) -> dict[str, Any]:
    state_file = out / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def _save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / STATE_FILE)


def _keep_resume_point(trainer) -> None:
    """Ultralytics rewrites last.pt in place (`write_bytes`): a kill during that write leaves a
    truncated checkpoint. After each save, copy it to resume.pt by temp file, fsync and rename, so
    there is always one whole checkpoint to resume from."""
    last = Path(trainer.last)
    resume_point = last.with_name(RESUME_POINT)
    tmp = resume_point.with_name(RESUME_POINT + ".tmp")
    with last.open("rb") as source, tmp.open("wb") as target:
        shutil.copyfileobj(source, target)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, resume_point)


def _train(settings: TrainSettings, data_yaml: Path, out: Path, resume: bool) -> Path:
    from ultralytics import YOLO

    run_dir = out / RUN_SUBDIR
    resume_point = run_dir / "weights" / RESUME_POINT
    if resume and resume_point.is_file():
        log.info("resuming training from %s", resume_point)
        model = YOLO(str(resume_point))
        model.add_callback("on_model_save", _keep_resume_point)
        model.train(resume=True, workers=settings.workers)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        model = YOLO(settings.model_yaml)
        model.add_callback("on_model_save", _keep_resume_point)
        model.train(
            data=str(data_yaml),
            epochs=settings.epochs,
            imgsz=settings.imgsz,
            batch=settings.batch,
            seed=settings.seed,
            deterministic=True,
            pretrained=False,
            amp=False,
            device="cpu",
            workers=settings.workers,
            project=str(out),
            name=RUN_SUBDIR,
            exist_ok=True,
            plots=False,  # plotting fetches a font from the internet
            patience=settings.epochs,  # no early stop: the schedule is part of the recipe
            **settings.augment,
        )
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        raise TrainingError(f"training finished without {best}")
    return best


def _export(best: Path, settings: TrainSettings, out: Path) -> Path:
    from ultralytics import YOLO

    exported = Path(YOLO(str(best)).export(format="onnx", imgsz=settings.imgsz, simplify=True, dynamic=False))
    model_path = out / f"{settings.name}.onnx"
    shutil.copyfile(exported, model_path)
    return model_path


def read_curve(results_csv: Path) -> list[dict[str, float]]:
    """Per-epoch validation mAP from Ultralytics' results.csv, for the card and the note. An epoch
    that was interrupted after its row was written is trained again on resume and appears twice:
    the later row is the one that led to the model."""
    if not results_csv.is_file():
        return []
    with results_csv.open(newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    by_epoch = {
        int(float(r["epoch"])): {
            "epoch": int(float(r["epoch"])),
            "val_map50": round(float(r["metrics/mAP50(B)"]), 4),
            "val_map50_95": round(float(r["metrics/mAP50-95(B)"]), 4),
        }
        for r in rows
    }
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_training(settings: TrainSettings, out: str | Path, fresh: bool = False) -> ModelCard:
    out = Path(out).resolve()  # Ultralytics files a relative project under its own runs_dir
    out.mkdir(parents=True, exist_ok=True)
    state = {} if fresh else _load_state(out)
    if state and state.get("settings") != settings.comparable():
        raise TrainingError(
            f"{out} holds a run with other settings; use another --out, or --fresh to discard it"
        )
    _configure_ultralytics(settings.mlflow)

    records = read_label_csv(settings.labels)
    split = split_by_photo(records, seed=settings.split_seed, fractions=settings.fractions())
    images_root = settings.images_root or settings.labels.parent
    data_yaml = write_yolo_dataset(split, images_root, out / "dataset", settings.class_names)
    log.info("dataset: %s", json.dumps(split.summary()["images"]))

    if state.get("phase") not in ("trained", "exported"):
        state = {"settings": settings.comparable(), "phase": "training", "command": command_line()}
        _save_state(out, state)
        best = _train(settings, data_yaml, out, resume=not fresh and (out / RUN_SUBDIR).is_dir())
        state["phase"] = "trained"
        _save_state(out, state)
    best = out / RUN_SUBDIR / "weights" / "best.pt"

    model_path = _export(best, settings, out)
    state["phase"] = "exported"
    _save_state(out, state)

    has_test = bool(split.records["test"])
    test = evaluate(model_path, data_yaml, "test") if has_test else None
    val = evaluate(model_path, data_yaml, "val")
    card = ModelCard(
        name=settings.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_file=model_path.name,
        model_sha256=file_sha256(model_path),
        task="detect",
        class_names=settings.class_names,
        input_size=[settings.imgsz, settings.imgsz],
        precision="fp32",
        metrics={"test": test.to_dict() if test else None, "val": val.to_dict()},
        data=split.summary(),
        training={
            **settings.model_dump(mode="json", exclude={"labels", "images_root", "workers", "mlflow"}),
            "trained_on": "train split (val picks the best epoch; test never seen)",
            "curve": read_curve(out / RUN_SUBDIR / "results.csv"),
        },
        packages=package_versions(),
        command=state.get("command") or command_line(),
    )
    card.write(card_path_for(model_path))
    return card


def command_line() -> str:
    return shlex.join(["edge-inspect", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("edge-inspect") \
        else shlex.join([sys.executable, *sys.argv])
