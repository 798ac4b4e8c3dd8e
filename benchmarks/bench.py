"""`edge-inspect bench` (also `python benchmarks/bench.py`): what a user runs on candidate
hardware to learn which setup to deploy on it. The CLI parses the arguments and calls
`run_benchmark`; the pieces live beside this file:

- `machine.py`: CPU, instruction sets, versions, and the FP32 and INT8 peaks (ONNX Runtime GEMMs);
- `setups.py`: every model x runtime pair available here (default: all bundled models, on
  ONNX Runtime and, when installed, OpenVINO);
- `measure.py`: per setup, bare latency, detector stages, the daemon end to end on a video (fps,
  peak memory, first detection), the self-test and held-out accuracy, measured on this machine;
- `flops.py`: each model's INT8 and float arithmetic, for a roofline bound per setup;
- `peers.py`: Ultralytics' own OpenVINO INT8 export and torch path, on the same weights;
- `recommend.py`: the fastest setup that passes the self-test and the accuracy gate, and the
  targets; `report.py`: bench.json, bench.md, bench.png and recommended.yaml.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import measure, recommend
from benchmarks.flops import count_flops
from benchmarks.machine import cpu_info, peak_ops, versions
from benchmarks.report import markdown, progress, write_outputs
from benchmarks.setups import Setup, available_runtimes, bundled_models, setups_for
from device.bundled import MODELS_DIR
from device.images import read_image
from device.model_card import ModelCard, card_path_for
from edge_inspect.demo import demo_video
from edge_inspect.paths import REPO_ROOT, SAMPLES_DIR

__all__ = ["count_flops", "default_models", "markdown", "run_benchmark"]

DEFAULT_LABELS = REPO_ROOT / "data" / "metal-tags" / "labels.csv"


def default_models() -> list[Path]:
    return bundled_models(MODELS_DIR)


@dataclass(frozen=True)
class AccuracyPhotos:
    """Where accuracy is measured: a data.yaml and its split, and the photos in words."""

    data_yaml: Path
    split: str
    description: str


def accuracy_photos(models: list[Path], labels: Path | None, data: Path | None, split: str,
                    workdir: Path) -> AccuracyPhotos | str:
    """The photos the accuracy is measured on, or why it cannot be measured here (no labels, or no
    Ultralytics for the metrics)."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        return "not measured: needs the train extra (Ultralytics' metrics)"
    if data is not None:
        return AccuracyPhotos(data, split, f"split {split!r} of {data}")
    labels = labels or (DEFAULT_LABELS if DEFAULT_LABELS.is_file() else None)
    fp32 = [m for m in models if card_path_for(m).is_file() and ModelCard.read(card_path_for(m)).precision == "fp32"]
    if labels is None or not fp32:
        return "not measured: no labelled photos (--labels) or no FP32 model with a card"
    from cloud.evaluation import split_images
    from cloud.heldout import HELDOUT, heldout_dataset

    card = ModelCard.read(card_path_for(fp32[0]))
    data_yaml = heldout_dataset(card, labels, workdir / "heldout")
    count = len(split_images(data_yaml, HELDOUT))
    return AccuracyPhotos(data_yaml, HELDOUT,
                          f"{count} labelled photos of {labels.name} outside {card.name}'s training split")


def measure_setup(setup: Setup, frames: list, video: Path, workdir: Path, runs: int, threads: int | None,
                  peaks: dict[str, float], heldout: AccuracyPhotos | None) -> dict:
    progress(f"{setup.name}: bare inference x{runs}, detector stages, self-test, accuracy ...")
    detector = measure.detector_for(setup, threads)
    ops = setup.ops
    bound_ms = ops.bound_s(peaks["int8"], peaks["fp32"]) * 1000
    height, width = detector.info.input_size
    entry = {"name": setup.name, "model": str(setup.model), "runtime": setup.runtime, "precision": setup.precision,
             "input": f"{width}x{height}", "sha256": detector.info.sha256,
             "session": measure.bare(detector, runs, frames[0]),
             "stages": measure.stages(detector, frames, rounds=max(3, runs // 40)),
             "gops_int8": round(ops.int8 / 1e9, 3), "gops_float": round(ops.float / 1e9, 3),
             "roofline_ms": round(bound_ms, 3)}
    entry["roofline_ratio"] = round(entry["session"]["p50"] / bound_ms, 2)
    correct = measure.correctness(setup, detector, (heldout.data_yaml, heldout.split) if heldout else None)
    entry.update({"self_test": correct.self_test, "map50": correct.map50, "map50_95": correct.map50_95})
    del detector
    gc.collect()
    if not correct.self_test_passed:  # the daemon would refuse to start with it: nothing to measure
        progress(f"{setup.name}: self-test {correct.self_test}; not run end to end")
        entry.update({"daemon": None, "config": None})
        return entry
    if setup.runtime == "onnxruntime":
        progress(f"{setup.name}: session options sweep ...")
        entry["session_options"] = measure.sweep_session_options(setup, max(10, runs // 5), frames[0], os.cpu_count() or 1)
    spins = (True, False) if setup.runtime == "onnxruntime" else (True,)
    progress(f"{setup.name}: daemon end to end ...")
    runs_by_spin = {spin: measure.daemon_run(setup, video, workdir, threads, spin) for spin in spins}
    best = max(runs_by_spin.values(), key=lambda r: r.fps)
    entry["daemon"] = asdict(best)
    entry["daemon_fps_by_spinning"] = {str(k): v.fps for k, v in runs_by_spin.items()}
    entry["config"] = measure.model_config(setup, threads, best.spinning)
    return entry


def measure_peers(reference_model: Path, best: dict | None, video: Path, labels: Path | None,
                  heldout: AccuracyPhotos | None, workdir: Path) -> dict:
    """Ultralytics on the same weights, at the recommended setup's input shape, on the same video
    the daemon ran on (decoding included, as in the daemon's figure)."""
    from benchmarks import peers

    if best is None:
        return {}
    height, width = (int(v) for v in reversed(best["input"].split("x")))
    progress("peers: rebuilding the torch checkpoint from the ONNX model ...")
    checkpoint = peers.recovered_checkpoint(reference_model, workdir)
    out = {}
    torch_fps = peers.torch_predict_fps(checkpoint, video, (height, width))
    out["torch"] = {"label": "torch predict", "input": f"{width}x{height}", "fps": round(torch_fps.fps, 2)}
    if labels is not None:
        progress("peers: Ultralytics' OpenVINO INT8 export (NNCF; a few minutes) ...")
        exported = peers.openvino_int8(checkpoint, reference_model, labels, workdir / "peer-openvino", (height, width))
        ov_fps = peers.exported_predict_fps(exported.folder, video)
        entry = {"label": "OpenVINO INT8 export, predict", "input": f"{width}x{height}", "fps": round(ov_fps.fps, 2)}
        if heldout is not None:
            from cloud.evaluation import evaluate

            xml = next(exported.folder.glob("*.xml"))
            figures = evaluate(xml, heldout.data_yaml, heldout.split, runtime="openvino")
            entry.update({"map50": round(figures.map50, 4), "map50_95": round(figures.map50_95, 4)})
        out["openvino_int8"] = entry
    return out


def run_benchmark(models: list[Path], out_dir: Path, runs: int = 200, threads: int | None = None,
                  video_seconds: float = 30.0, labels: Path | None = None, data: Path | None = None,
                  split: str = "test", runtimes: list[str] | None = None, with_peers: bool = True,
                  memory_budget_mb: float = recommend.MEMORY_BUDGET_MB) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    photos = sorted(SAMPLES_DIR.glob("*.jpg"))
    frames = [read_image(p) for p in photos]
    progress("measuring peak FP32 and INT8 rates (ONNX Runtime GEMMs) ...")
    peaks = {"fp32": peak_ops("fp32", threads), "int8": peak_ops("int8", threads)}
    setups = setups_for(models, runtimes or available_runtimes())
    results = {"machine": cpu_info(), "versions": versions(), "threads": threads or "runtime default",
               "peak_gflops": round(peaks["fp32"] / 1e9, 1), "peak_int8_gops": round(peaks["int8"] / 1e9, 1)}
    with tempfile.TemporaryDirectory(prefix="edge-inspect-bench-") as tmp:
        workdir = Path(tmp)
        scored_on = accuracy_photos(models, labels, data, split, workdir)
        heldout = scored_on if isinstance(scored_on, AccuracyPhotos) else None
        results["accuracy_photos"] = heldout.description if heldout else scored_on
        hold = video_seconds / len(photos)
        video = demo_video(workdir / "line.avi", photos, hold_s=hold * 0.8, gap_s=hold * 0.2)
        results["setups"] = [measure_setup(s, frames, video, workdir, runs, threads, peaks, heldout) for s in setups]
        results["memory_budget_mb"] = memory_budget_mb
        results["recommended"] = recommend.recommend(results["setups"], memory_budget_mb)
        for entry in results["setups"]:
            entry["not_recommended_because"] = recommend.why_not(entry, recommend.reference(results["setups"]),
                                                                 memory_budget_mb)
        reference = recommend.reference(results["setups"])
        if with_peers and reference is not None:
            labels_csv = labels or (DEFAULT_LABELS if DEFAULT_LABELS.is_file() else None)
            results["peers"] = measure_peers(Path(reference["model"]), results["recommended"], video, labels_csv,
                                             heldout, workdir)
    results["targets"] = recommend.targets(results)
    write_outputs(results, out_dir)
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge_inspect.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
