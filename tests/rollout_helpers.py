"""Rollout tests' plant: real models derived from the bundled detector by editing its ONNX graph
(a twin: the same weights, other bytes, a version that alerts exactly like its predecessor; a blind
one: every class score multiplied by 0, a valid detector that never detects anything), the lines'
watched model paths, their real daemons, and the on-site cloud.yaml that deploys to them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from cloud_helpers import write_cloud_config
from daemon_helpers import DaemonProcess, write_config

from device.model_card import card_path_for


def line_models(tmp_path: Path, things: tuple[str, ...], model: Path) -> dict[str, Path]:
    """Each line's watched model path (`tmp_path/<thing>/model.onnx`), holding `model` and its card."""
    paths = {}
    for thing in things:
        paths[thing] = tmp_path / thing / "model.onnx"
        paths[thing].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, paths[thing])
        shutil.copyfile(card_path_for(model), card_path_for(paths[thing]))
    return paths


def start_lines(port: int, video: Path, paths: dict[str, Path]) -> dict[str, DaemonProcess]:
    """A real daemon per line, looping `video` in real time and watching its model path."""
    return {thing: DaemonProcess(write_config(
        path.parent / "daemon.yaml", port, [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
        thing_name=thing, model={"path": str(path), "watch_interval_s": 0.2},
        events={"min_hits": 2, "window": 4, "end_after_s": 0.6})) for thing, path in paths.items()}


def onsite_config(tmp_path: Path, port: int, paths: dict[str, Path], deploy: dict, pipeline: dict | None = None) -> Path:
    """cloud.yaml for an on-site plant: local label store, the test broker, the MLflow registry in
    tmp_path/registry, and `deploy` (with `backend`, `state_path`, `work_dir`, `canary` and the
    lines filled in unless given)."""
    return write_cloud_config(
        tmp_path / "cloud.yaml",
        label_store={"backend": "local", "local": {"path": str(tmp_path / "labels")}},
        broker={"host": "127.0.0.1", "port": port, "client_id": "cloud-under-test"},
        pipeline={"state_path": str(tmp_path / "runs.sqlite"), "work_dir": str(tmp_path / "runs"),
                  "registry": {"backend": "mlflow", "mlflow": {"path": str(tmp_path / "registry")}},
                  "seed_bundled": False, **(pipeline or {})},
        deploy={"backend": "local", "state_path": str(tmp_path / "deploy.sqlite"), "work_dir": str(tmp_path / "ship"),
                "canary": ["line-1"], "local": {"lines": [{"thing": t, "model_path": str(p)} for t, p in paths.items()]},
                **deploy})


def twin_model(source: Path, out: Path, note: str = "a retrained twin") -> Path:
    import onnx

    model = onnx.load(str(source))
    model.doc_string = note  # other bytes, other sha256; the same graph and weights
    onnx.save(model, str(out))
    return out


def blind_model(source: Path, out: Path) -> Path:
    """YOLOv8's output0 is (1, 4 + classes, anchors): boxes kept, class scores times 0."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    name = graph.output[0].name
    channels = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    for node in graph.node:
        node.output[:] = [f"{name}_seen" if o == name else o for o in node.output]
    mask = np.ones((1, channels, 1), np.float32)
    mask[0, 4:, 0] = 0.0
    graph.initializer.append(numpy_helper.from_array(mask, "blind_mask"))
    graph.node.append(helper.make_node("Mul", [f"{name}_seen", "blind_mask"], [name], name="blind"))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out
