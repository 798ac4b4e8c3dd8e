"""`edge-inspect bench` (also `python benchmarks/bench.py`): what a user runs on candidate hardware.
The CLI only parses the arguments and calls `run_benchmark`; the logic lives here.

For each model (default: the bundled FP32 and INT8 models) it measures, on this machine:
bare `session.run` latency p50/p90/p99 and throughput; time per detector stage on real photos;
end-to-end daemon fps on a file source with its file sink on; the Ultralytics
`YOLO(model.onnx).predict` loop on the same model (when ultralytics is installed); the daemon's
peak memory; time from daemon start to first detection; and a roofline line: the model's FLOPs,
counted from the ONNX graph, over the measured peak FLOP/s of this CPU (an ONNX Runtime GEMM).
It writes JSON, a Markdown table and a PNG chart, and records the CPU, its instruction-set flags
and the library versions.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from device.bundled import BUNDLED_INT8_MODEL, BUNDLED_MODEL
from device.detector import Detector, session_options
from device.images import read_image
from device.model_card import ModelCard, card_path_for
from device.timing import time_inference
from edge_inspect.demo import demo_video
from edge_inspect.paths import MODELS_DIR, REPO_ROOT, SAMPLES_DIR

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp")


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "logical_cores": os.cpu_count(), "model": platform.processor() or ""}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    info.update({"model": fields.get("model name", info["model"]),
                 "physical_cores": int(fields.get("cpu cores", 0)) or None,
                 "isa": [f for f in ISA_FLAGS if f in flags]})
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("edge-inspect", "onnxruntime", "numpy", "opencv-python-headless", "opencv-python", "ultralytics",
                 "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def count_flops(model_path: Path) -> float:
    """FLOPs of one inference: 2 x multiply-accumulates of every Conv, MatMul and Gemm, from the
    graph's inferred shapes (the rest of YOLOv8 is negligible next to its convolutions)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    # QDQ graphs: a Conv's weight arrives through a DequantizeLinear; follow it back
    producers = {o: n for n in graph.node for o in n.output}

    def weight_shape(name: str):
        node = producers.get(name)
        if name in weights:
            return weights[name]
        if node is not None and node.op_type == "DequantizeLinear":
            return weight_shape(node.input[0])
        return shapes.get(name)

    flops = 0.0
    for node in graph.node:
        if node.op_type == "Conv":
            w, out = weight_shape(node.input[1]), shapes.get(node.output[0])
            if w and out and len(out) == 4:
                flops += 2.0 * np.prod(out) * np.prod(w[1:])  # (N*Cout*H*W) x (Cin/groups * kh * kw)
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                flops += 2.0 * np.prod(out) * a[-1]
    return float(flops)


def peak_flops(threads: int | None, size: int = 1024, seconds: float = 2.0) -> float:
    """Peak FP32 FLOP/s of this CPU as ONNX Runtime reaches it: a large square GEMM (MLAS)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    feeds = {"a": a, "b": a}
    session.run(None, feeds)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - started)
    del session
    gc.collect()
    return 2.0 * size**3 / best


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3), "mean": round(float(ms.mean()), 3)}


def bare_session(detector: Detector, runs: int) -> dict:
    times = time_inference(detector, runs, read_image(sorted(SAMPLES_DIR.glob("*.jpg"))[0]))
    stats = percentiles(times)
    stats["fps"] = round(1000 / stats["mean"], 2)
    return stats


def sweep_session_options(model: Path, runs: int) -> list[dict]:
    """p50 of session.run over the settings that matter: threads, graph optimization, execution mode.
    The daemon's defaults (device/detector.py session_options) come from this table."""
    cores = os.cpu_count() or 1
    settings = [{"threads": t, "graph_optimization": "all", "execution_mode": "sequential"}
                for t in sorted({1, max(1, cores // 2), cores})]
    settings += [{"threads": cores, "graph_optimization": g, "execution_mode": "sequential"}
                 for g in ("basic", "extended")]
    settings.append({"threads": cores, "graph_optimization": "all", "execution_mode": "parallel"})
    settings.append({"threads": cores, "graph_optimization": "all", "execution_mode": "sequential",
                     "spinning": False})
    rows = []
    for setting in settings:
        detector = Detector(model, session_options=session_options(**setting))
        rows.append({"spinning": True, **setting, "p50_ms": bare_session(detector, runs)["p50"]})
        del detector
        gc.collect()  # drop the session now: its idle spinning threads would skew the next one
    return rows


def detector_stages(detector: Detector, frames: list[np.ndarray], rounds: int) -> dict:
    stage_times: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(rounds):
        for frame in frames:
            t0 = time.perf_counter()
            blob, fit = detector.preprocess(frame)
            t1 = time.perf_counter()
            output = detector.infer(blob)
            t2 = time.perf_counter()
            detector.postprocess(output, fit, frame.shape, detector.conf, detector.iou)
            t3 = time.perf_counter()
            stage_times["preprocess"].append(t1 - t0)
            stage_times["inference"].append(t2 - t1)
            stage_times["postprocess"].append(t3 - t2)
    return {stage: percentiles(values) for stage, values in stage_times.items()}


def ultralytics_loop(model: Path, frames: list[np.ndarray], rounds: int) -> dict | None:
    """The reference sample's device path: Ultralytics' predict on the same ONNX model."""
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    yolo = YOLO(str(model), task="detect")
    size = list(Detector(model).info.input_size)
    yolo.predict(frames[0], imgsz=size, verbose=False, device="cpu")
    started, count = time.perf_counter(), 0
    for _ in range(rounds):
        for frame in frames:
            yolo.predict(frame, imgsz=size, verbose=False, device="cpu")
            count += 1
    return {"fps": round(count / (time.perf_counter() - started), 2)}


@dataclass
class DaemonRun:
    fps: float
    frames: int
    peak_rss_mb: float
    first_detection_s: float | None


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def daemon_run(model: Path, video: Path, workdir: Path, threads: int | None, spinning: bool = True) -> DaemonRun:
    """`edge-inspect run` in its own process on a file source, every frame processed, file sink on."""
    messages = workdir / f"{model.stem}.jsonl"
    messages.unlink(missing_ok=True)
    config = {"thing_name": "bench", "transport": "none", "state_dir": str(workdir / f"state-{model.stem}"),
              "model": {"path": str(model), "watch": False,
              "threads": threads, "spinning": spinning}, "cameras": [{"id": "bench", "source": str(video)}],
              "events": {"min_hits": 1, "window": 1, "end_after_s": 0.5}, "stats": {"interval_s": 60},
              "file_sink": {"path": str(messages)}, "log_level": "WARNING"}
    config_path = workdir / f"{model.stem}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "edge_inspect", "run", "--config", str(config_path)],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"the daemon failed on {model.name}: {proc.stderr.read()[-2000:]}")
    payloads = [json.loads(line) for line in messages.read_text().splitlines()]
    status = {p["payload"]["state"]: p["payload"]["since"] for p in payloads if p["topic"].endswith("/status")}
    stats = [p["payload"] for p in payloads if p["topic"].endswith("/stats")]
    frames = stats[-1]["cameras"]["bench"]["frames_processed"]
    from datetime import datetime

    def epoch(iso: str) -> float:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    span = epoch(status["finished"]) - epoch(status["online"])
    events = [p["payload"] for p in payloads if p["topic"].endswith("/events")]
    first = epoch(events[0]["sent_time"]) - started if events else None
    return DaemonRun(round(frames / span, 2), frames, round(peak, 1), round(first, 2) if first else None)


def default_models() -> list[Path]:
    return [p for p in (MODELS_DIR / BUNDLED_MODEL, MODELS_DIR / BUNDLED_INT8_MODEL)
            if p.is_file()]


def run_benchmark(models: list[Path], out_dir: Path, runs: int = 200, threads: int | None = None,
                  video_seconds: float = 30.0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [read_image(p) for p in sorted(SAMPLES_DIR.glob("*.jpg"))]
    progress("measuring peak FLOP/s (ONNX Runtime GEMM) ...")
    peak = peak_flops(threads)
    results = {"machine": cpu_info(), "versions": versions(), "threads": threads or "onnxruntime default",
               "peak_gflops": round(peak / 1e9, 1), "models": {}}
    with tempfile.TemporaryDirectory(prefix="edge-inspect-bench-") as tmp:
        workdir = Path(tmp)
        hold = video_seconds / len(frames)
        video = demo_video(workdir / "line.avi", sorted(SAMPLES_DIR.glob("*.jpg")), hold_s=hold * 0.8, gap_s=hold * 0.2)
        for model in models:
            progress(f"{model.name}: bare session.run x{runs} ...")
            detector = Detector(model, session_options=session_options(threads))
            entry: dict = {"input_size": list(detector.info.input_size), "sha256": detector.info.sha256}
            card = card_path_for(model)
            if card.is_file():
                metrics = ModelCard.read(card).metrics
                entry["precision"] = ModelCard.read(card).precision
                entry["test_map50"] = (metrics.get("test") or {}).get("map50")
            entry["session"] = bare_session(detector, runs)
            progress(f"{model.name}: detector stages on {len(frames)} photos ...")
            entry["stages"] = detector_stages(detector, frames, rounds=max(3, runs // 40))
            flops = count_flops(model)
            entry["gflops"] = round(flops / 1e9, 3)
            entry["roofline_ms"] = round(flops / peak * 1000, 3)
            entry["roofline_ratio"] = round(entry["session"]["p50"] / entry["roofline_ms"], 2)
            detector = None
            gc.collect()
            progress(f"{model.name}: session options sweep ...")
            entry["session_options"] = sweep_session_options(model, max(10, runs // 5))
            progress(f"{model.name}: daemon end to end on a {video_seconds:.0f} s video ...")
            runs_by_spinning = {spin: daemon_run(model, video, workdir, threads, spin) for spin in (True, False)}
            best = max(runs_by_spinning, key=lambda spin: runs_by_spinning[spin].fps)
            entry["daemon"] = {**runs_by_spinning[best].__dict__, "spinning": best}
            entry["daemon_fps_by_spinning"] = {str(k): v.fps for k, v in runs_by_spinning.items()}
            progress(f"{model.name}: Ultralytics predict loop ...")
            entry["ultralytics"] = ultralytics_loop(model, frames, rounds=max(2, runs // 60))
            results["models"][model.name] = entry
    results["targets"] = check_targets(results)
    write_outputs(results, out_dir)
    return results


def check_targets(results: dict) -> list[dict]:
    models = list(results["models"].values())
    fp32 = next((m for m in models if m.get("precision", "fp32") == "fp32"), None)
    int8 = next((m for m in models if m.get("precision") == "int8"), None)
    targets = []

    def add(name: str, value: float | None, limit: float, met: bool | None) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": met})

    if fp32 and int8:
        ratio = int8["session"]["p50"] / fp32["session"]["p50"]
        add("INT8 p50 / FP32 p50 <= 0.55", round(ratio, 3), 0.55, ratio <= 0.55)
        if fp32.get("test_map50") is not None and int8.get("test_map50") is not None:
            drop = fp32["test_map50"] - int8["test_map50"]
            add("INT8 mAP50 within 1 point of FP32", round(drop, 4), 0.01, drop <= 0.01)
    for m, name in ((fp32, "FP32"), (int8, "INT8")):
        if not m:
            continue
        e2e = m["daemon"]["fps"] / m["session"]["fps"]
        add(f"{name} daemon fps / session.run fps >= 0.9", round(e2e, 3), 0.9, e2e >= 0.9)
        if m.get("ultralytics"):
            speedup = m["daemon"]["fps"] / m["ultralytics"]["fps"]
            add(f"{name} daemon fps / Ultralytics predict fps >= 3", round(speedup, 2), 3.0, speedup >= 3)
        add(f"{name} daemon peak memory <= 200 MB", m["daemon"]["peak_rss_mb"], 200, m["daemon"]["peak_rss_mb"] <= 200)
    if fp32:
        add("FP32 p50 / roofline bound <= 1.2", fp32["roofline_ratio"], 1.2, fp32["roofline_ratio"] <= 1.2)
    return targets


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [f"Machine: {machine.get('model')} ({machine.get('physical_cores')} cores, {machine['logical_cores']} "
             f"threads; {' '.join(machine.get('isa', []))}); peak {results['peak_gflops']} GFLOP/s (ORT GEMM); "
             f"threads: {results['threads']}; " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             "| model | input | session p50 / p90 / p99 ms | session fps | pre / infer / post ms (p50) | daemon fps "
             "| Ultralytics fps | peak MB | first detection s | GFLOPs | roofline ms (x) | test mAP50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        s, st, d = m["session"], m["stages"], m["daemon"]
        ul = m["ultralytics"]["fps"] if m.get("ultralytics") else "n/a"
        lines.append(
            f"| {name} | {m['input_size'][1]}x{m['input_size'][0]} | {s['p50']} / {s['p90']} / {s['p99']} | {s['fps']} "
            f"| {st['preprocess']['p50']} / {st['inference']['p50']} / {st['postprocess']['p50']} | {d['fps']} | {ul} "
            f"| {d['peak_rss_mb']} | {d['first_detection_s']} | {m['gflops']} | {m['roofline_ms']} ({m['roofline_ratio']}) "
            f"| {m.get('test_map50', 'n/a')} |")
    lines += ["", "| model | threads | graph optimization | execution mode | spinning | session p50 ms |",
              "|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        lines += [f"| {name} | {r['threads']} | {r['graph_optimization']} | {r['execution_mode']} | {r['spinning']} | {r['p50_ms']} |"
                  for r in m.get("session_options", [])]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    p50 = [results["models"][n]["session"]["p50"] for n in names]
    roof = [results["models"][n]["roofline_ms"] for n in names]
    x = np.arange(len(names))
    left.bar(x - 0.2, p50, 0.4, label="session.run p50")
    left.bar(x + 0.2, roof, 0.4, label="roofline bound")
    left.set_xticks(x, names, rotation=10)
    left.set_ylabel("ms per frame")
    left.legend()
    kinds = ["session", "daemon", "ultralytics"]
    for i, kind in enumerate(kinds):
        values = [(results["models"][n].get(kind) or {}).get("fps", 0) for n in names]
        right.bar(x + (i - 1) * 0.27, values, 0.27, label={"session": "bare session.run", "daemon": "daemon end to end",
                                                            "ultralytics": "Ultralytics predict"}[kind])
    right.set_xticks(x, names, rotation=10)
    right.set_ylabel("frames per second")
    right.legend()
    fig.suptitle(f"edge-inspect on {results['machine'].get('model')} ({results['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    (out_dir / "bench.md").write_text(markdown(results))
    chart(results, out_dir / "bench.png")
    progress(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge_inspect.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
