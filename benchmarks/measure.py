"""Measurements of one setup: bare inference latency, time per detector stage, the daemon end to
end on a video (fps, peak memory, time to first detection), and whether it is right here
(self-test, accuracy on held-out photos)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from benchmarks.setups import Setup
from device.detector import Detector, session_options
from device.model_card import ModelCard, card_path_for
from device.self_test import run_self_test
from device.timing import time_inference
from edge_inspect.paths import REPO_ROOT


def detector_for(setup: Setup, threads: int | None, **options) -> Detector:
    """The detector the daemon would build for this setup (device.preflight does the same)."""
    if setup.runtime == "onnxruntime":
        return Detector(setup.model, session_options=session_options(threads, **options))
    return Detector(setup.model, runtime="openvino", threads=threads)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "mean": round(float(ms.mean()), 3)}


def bare(detector: Detector, runs: int, frame: np.ndarray) -> dict:
    stats = percentiles(time_inference(detector, runs, frame))
    stats["fps"] = round(1000 / stats["mean"], 2)
    return stats


def stages(detector: Detector, frames: list[np.ndarray], rounds: int) -> dict:
    times: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(rounds):
        for frame in frames:
            t0 = time.perf_counter()
            blob, fit = detector.preprocess(frame)
            t1 = time.perf_counter()
            output = detector.infer(blob)
            t2 = time.perf_counter()
            detector.postprocess(output, fit, frame.shape, detector.conf, detector.iou)
            t3 = time.perf_counter()
            times["preprocess"].append(t1 - t0)
            times["inference"].append(t2 - t1)
            times["postprocess"].append(t3 - t2)
    return {stage: percentiles(values) for stage, values in times.items()}


def sweep_session_options(setup: Setup, runs: int, frame: np.ndarray, cores: int) -> list[dict]:
    """ONNX Runtime only: p50 over the settings that matter. The daemon's defaults come from it."""
    settings = [{"threads": t, "graph_optimization": "all", "execution_mode": "sequential"}
                for t in sorted({1, max(1, cores // 2), cores})]
    settings += [{"threads": cores, "graph_optimization": g, "execution_mode": "sequential"} for g in ("basic", "extended")]
    settings.append({"threads": cores, "graph_optimization": "all", "execution_mode": "parallel"})
    settings.append({"threads": cores, "graph_optimization": "all", "execution_mode": "sequential", "spinning": False})
    rows = []
    for setting in settings:
        detector = Detector(setup.model, session_options=session_options(**setting))
        rows.append({"spinning": True, **setting, "p50_ms": bare(detector, runs, frame)["p50"]})
        del detector
        gc.collect()  # drop the session now: its idle spinning threads would skew the next one
    return rows


@dataclass
class Correctness:
    self_test: str  # passed | failed: <figures> | none (the card has no reference frames)
    map50: float | None = None
    map50_95: float | None = None
    images: int = 0

    @property
    def self_test_passed(self) -> bool:
        return self.self_test in ("passed", "none")


def correctness(setup: Setup, detector: Detector, heldout: tuple[Path, str] | None) -> Correctness:
    from cloud.evaluation import evaluate

    card_file = card_path_for(setup.model)
    spec = ModelCard.read(card_file).self_test if card_file.is_file() else None
    verdict = "none"
    if spec is not None:
        result = run_self_test(detector, spec)
        verdict = "passed" if result.passed else f"failed: {result.summary()}"
    out = Correctness(verdict)
    if heldout is not None:
        figures = evaluate(setup.model, heldout[0], heldout[1], runtime=setup.runtime)
        out.map50, out.map50_95, out.images = round(figures.map50, 4), round(figures.map50_95, 4), figures.images
    return out


@dataclass
class DaemonRun:
    fps: float
    frames: int
    peak_rss_mb: float
    first_detection_s: float | None
    spinning: bool


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def model_config(setup: Setup, threads: int | None, spinning: bool) -> dict:
    """The `model:` section of the daemon's configuration for this setup."""
    config = {"path": str(setup.model), "runtime": setup.runtime, "threads": threads}
    if setup.runtime == "onnxruntime":
        config["spinning"] = spinning
    return config


def daemon_run(setup: Setup, video: Path, workdir: Path, threads: int | None, spinning: bool) -> DaemonRun:
    """`edge-inspect run` in its own process on a file source, every frame processed, file sink on."""
    tag = f"{setup.model.stem}-{setup.runtime}-{int(spinning)}"
    messages = workdir / f"{tag}.jsonl"
    messages.unlink(missing_ok=True)
    config = {"thing_name": "bench", "transport": "none", "state_dir": str(workdir / f"state-{tag}"),
              "model": {**model_config(setup, threads, spinning), "watch": False},
              "cameras": [{"id": "bench", "source": str(video)}],
              "events": {"min_hits": 1, "window": 1, "end_after_s": 0.5}, "stats": {"interval_s": 60},
              "file_sink": {"path": str(messages)}, "log_level": "WARNING"}
    config_path = workdir / f"{tag}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "edge_inspect", "run", "--config", str(config_path)],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"the daemon failed on {setup.name}: {proc.stderr.read()[-2000:]}")
    payloads = [json.loads(line) for line in messages.read_text().splitlines()]
    status = {p["payload"]["state"]: p["payload"]["since"] for p in payloads if p["topic"].endswith("/status")}
    frames = [p["payload"] for p in payloads if p["topic"].endswith("/stats")][-1]["cameras"]["bench"]["frames_processed"]

    def epoch(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    span = epoch(status["finished"]) - epoch(status["online"])
    events = [p["payload"] for p in payloads if p["topic"].endswith("/events")]
    first = epoch(events[0]["sent_time"]) - started if events else None
    return DaemonRun(round(frames / span, 2), frames, round(peak, 1), round(first, 2) if first else None, spinning)
