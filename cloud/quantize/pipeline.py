"""Candidates from the runtime's quantizer -> the gate -> the fastest that passes -> OUT + card.

OUT (and its card) is written only when a candidate passes. The card carries both models'
figures on the gate photos, the gate's settings, and a self-test: the FP32 card's reference frames
with the FP32 model's detections, so every device re-checks the INT8 model on its own CPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from cloud.evaluation import evaluate
from cloud.quantize import onnxruntime as ort_backend
from cloud.quantize.candidate import CandidateModel
from cloud.quantize.gate import GateSettings, Measured, QuantizationError, failures, fidelity, reference_detections
from cloud.quantize.inputs import calibration_images, gate_data
from cloud.training import command_line
from device import cpu
from device.detector import Detector, file_sha256
from device.model_card import TRACKED_PACKAGES, ModelCard, card_path_for, package_versions
from device.self_test import make_self_test, run_self_test
from device.timing import time_inference

log = logging.getLogger(__name__)

Runtime = Literal["onnxruntime", "openvino"]
QUANTIZER_PACKAGES = ("openvino", "nncf")
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}


@dataclass
class Candidate:
    """A quantizer's model and what the gate measured of it."""

    made: CandidateModel
    measured: Measured


def _detector(path: Path, runtime: Runtime, **kwargs) -> Detector:
    return Detector(path, **kwargs) if runtime == "onnxruntime" else Detector(path, runtime=runtime, **kwargs)


def latency_ms(path: Path, runtime: Runtime, runs: int = 30) -> float:
    return float(np.median(time_inference(_detector(path, runtime), runs)) * 1000)


def interleaved_latency_ms(paths: list[Path], runtime: Runtime, rounds: int = 6, runs: int = 10) -> list[float]:
    """p50 per model, measured in turns: a burst of other load on the machine then slows every
    candidate alike instead of deciding which one looks fastest."""
    detectors = [_detector(path, runtime) for path in paths]
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for detector, times in zip(detectors, samples, strict=True):
            times.extend(time_inference(detector, runs))
    return [float(np.median(times) * 1000) for times in samples]


def _candidates(runtime: Runtime, model: Path, images: list[Path], workdir: Path, method: str,
                only: list[str] | None):
    if runtime == "onnxruntime":
        return ort_backend.candidates(model, images, workdir, method, only)
    from cloud.quantize import openvino as ov_backend

    return ov_backend.candidates(model, images, workdir, method, only)


def _replace(source: Path, target: Path) -> None:
    """Copy, then rename into place: a daemon watching `target` never sees half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _install(source: Path, out: Path, card: ModelCard) -> None:
    """Card first, then the weights, then the file the daemon watches (as the model component
    installs them): a hot swap that sees the new model finds its card and whole weights."""
    out.parent.mkdir(parents=True, exist_ok=True)
    card.write(card_path_for(out))
    if source.suffix == ".xml":  # an OpenVINO IR is two files; the .xml names the model
        _replace(source.with_suffix(".bin"), out.with_suffix(".bin"))
    _replace(source, out)


def quantize_model(model: Path, out: Path, *, runtime: Runtime = "onnxruntime", labels: Path | None = None,
                   images_root: Path | None = None, calib: Path | None = None, data: Path | None = None,
                   split: str = "test", settings: GateSettings | None = None, method: str = "minmax",
                   calib_limit: int = 200, only: list[str] | None = None,
                   recent_frames: list[Path] | None = None) -> dict:
    """Quantize `model`, gate every candidate, install the fastest that passes at `out` with its
    card; raises QuantizationError (nothing written) when none passes. `recent_frames`: more
    images, e.g. the line's own spool, on which INT8 must raise FP32's alerts too."""
    settings = settings or GateSettings()
    if runtime not in SUFFIX:
        raise QuantizationError(f"runtime {runtime!r} is not one of {', '.join(SUFFIX)}")
    if out.suffix != SUFFIX[runtime]:
        raise QuantizationError(f"an INT8 model for {runtime} is a {SUFFIX[runtime]} file, not {out.name}")
    card_file = card_path_for(model)
    card = ModelCard.read(card_file) if card_file.is_file() else None
    if card is None or card.self_test is None:
        # every device re-checks an INT8 model on its own CPU against these frames: without them a
        # model that is wrong there would serve unchecked
        raise QuantizationError(f"{model.name} has no model card with a self_test section to give the INT8 model: "
                                f"write one first with `edge-inspect self-test {model} --write --frames IMG...`")
    images = calibration_images(card, labels, images_root, calib, calib_limit)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        workdir = Path(tmp)
        gate = gate_data(card, labels, images_root, data, split, workdir, recent_frames)
        # FP32 timed on the candidate's runtime: the card compares like with like
        fp32 = Measured(evaluate(model, gate.data_yaml, gate.split), latency_ms=latency_ms(model, runtime))
        reference = reference_detections(Detector(model), gate.alert_images)
        log.info("FP32: mAP50 %.4f  mAP50-95 %.4f  latency %.1f ms on %s", fp32.accuracy.map50,
                 fp32.accuracy.map50_95, fp32.latency_ms, gate.source)
        tried = []
        for made in _candidates(runtime, model, images, workdir, method, only):
            measured = Measured(evaluate(made.path, gate.data_yaml, gate.split, runtime=runtime),
                                fidelity(_detector(made.path, runtime), reference, settings),
                                latency_ms(made.path, runtime))
            measured.failures = failures(fp32.accuracy, measured, settings)
            tried.append(Candidate(made, measured))
            log.info("candidate %-22s float nodes %3d  latency %.1f ms  mAP50 %.4f  alerts %d/%d  %s", made.name,
                     len(made.float_nodes), measured.latency_ms, measured.accuracy.map50, measured.fidelity.found,
                     measured.fidelity.fp32_alerts, "passes" if measured.passed else "; ".join(measured.failures))
        passing = [c for c in tried if c.measured.passed]
        if not passing:
            best = max(tried, key=lambda c: c.measured.accuracy.map50)
            raise QuantizationError(f"refused: no INT8 candidate passes the gate on {gate.source}; the most accurate "
                                    f"({best.made.name}): {'; '.join(best.measured.failures)}. {out} not written")
        for candidate, ms in zip(passing, interleaved_latency_ms([c.made.path for c in passing], runtime), strict=True):
            candidate.measured.latency_ms = ms
        chosen = min(passing, key=lambda c: c.measured.latency_ms)
        report = _report(runtime, chosen, fp32, tried, settings, gate.source, method, len(images), calib)
        card = _card(model, card, chosen.made.path, out.name, report)  # refuses a model that fails its self-test
        _install(chosen.made.path, out, card)
    return report


def _report(runtime: Runtime, chosen: Candidate, fp32: Measured, tried: list[Candidate], settings: GateSettings,
            photos: str, method: str, calib_images: int, calib: Path | None) -> dict:
    return {
        "runtime": runtime, "chosen": chosen.made.name, "float_nodes": chosen.made.float_nodes,
        "fp32": fp32.to_dict(), "int8": chosen.measured.to_dict(),
        "candidates": [{"name": c.made.name, "float_nodes": len(c.made.float_nodes), **c.measured.to_dict()}
                       for c in tried],
        "gate": {**settings.model_dump(), "photos": photos},
        "calibration": {"method": method, "images": calib_images, "source": str(calib) if calib else
                        "the FP32 model's training photos"},
    }


def _card(model: Path, fp32_card: ModelCard, int8: Path, out_name: str, report: dict) -> ModelCard:
    """The INT8 card: the FP32 card's provenance, `heldout` the INT8 figures and `heldout_fp32`
    the FP32 ones beside them (both measured here, through the gate), and a self-test."""
    # the FP32 card's data and training provenance; when, how and with what this model was made
    base = fp32_card.model_dump(exclude={"self_test", "created", "command", "packages"})
    strip = ("latency_ms", "fidelity", "failures")
    metrics = {f"{k}_fp32": v for k, v in (base.get("metrics") or {}).items()}  # the FP32 model's, named so
    metrics.update({"heldout": {k: v for k, v in report["int8"].items() if k not in strip},
                    "heldout_fp32": {k: v for k, v in report["fp32"].items() if k not in strip},
                    "fidelity": report["int8"]["fidelity"],
                    "latency_ms": {"fp32": report["fp32"]["latency_ms"], "int8": report["int8"]["latency_ms"]}})
    quantization = {k: v for k, v in report.items() if k not in ("fp32", "int8")}
    quantization.update({"fp32_model": model.name, "fp32_model_sha256": file_sha256(model),
                         "format": ort_backend.FORMAT if report["runtime"] == "onnxruntime" else
                         "OpenVINO IR, NNCF post-training quantization",
                         # INT8 figures move a little between CPUs (see onnxruntime.py): say where these were taken
                         "measured_on": {"instruction_sets": cpu.describe(), "vnni": cpu.has_vnni()}})
    detector = _detector(int8, report["runtime"])
    card = ModelCard(**{**base, "name": Path(out_name).stem, "model_file": out_name, "model_sha256": detector.info.sha256,
                        "precision": "int8", "metrics": metrics, "quantization": quantization,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "command": command_line(), "packages": package_versions(TRACKED_PACKAGES + QUANTIZER_PACKAGES)})
    frames = [(f.name, f.jpeg()) for f in fp32_card.self_test.frames]  # bytes checked against their sha256
    card.self_test = make_self_test(Detector(model), frames)
    result = run_self_test(detector, card.self_test)
    if not result.passed:  # the gate passed on the held-out photos; the reference frames must agree
        raise QuantizationError(f"refused: {out_name} fails its own self-test here: {result.summary()}")
    return card
