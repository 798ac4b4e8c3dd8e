"""OpenVINO as the device's second runtime: the same detections as ONNX Runtime on real photos
(the bundled ONNX read by OpenVINO, and an IR made from it), the self-test and the daemon's events
unchanged, an IR's identity covering its .bin, and one clear error for each wrong setting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import METAL_TAGS, REPO, make_onnx
from daemon_helpers import DaemonProcess, wait_until, write_config

from device.config import ConfigError, parse_config
from device.detector import Detection, Detector, ModelError, ModelNotFoundError
from device.events import box_iou
from device.images import list_images, read_image
from device.model_card import ModelCard, card_path_for
from device.model_manager import ModelManager, load_checked, self_test
from device.preflight import PreflightError, check_model, model_runtime
from device.runtimes import OPENVINO_MISSING, RuntimeSettings, RuntimeUnavailableError, model_sha256
from edge_inspect.cli import main

ov = pytest.importorskip("openvino")  # `make test` installs the openvino extra

CONF = 0.25
# Parity: every box one runtime finds at CONF has its counterpart on the other (same class, IoU
# >= 0.98, confidence within 2e-3). Measured on all 175 photos, FP32 on both: 710 boxes, largest
# confidence difference 1.2e-6, smallest IoU 0.999995; the tolerances leave room for other CPUs'
# kernels, and are far below what bf16 inference does here (differences up to 0.5, a box more).
MIN_IOU, MAX_CONF_DIFF = 0.98, 2e-3
PHOTOS = sorted(list_images([METAL_TAGS / "images"]))[::4]  # 44 photos spread over the set
MODELS = REPO / "device" / "models"
SHIPPED_IR = MODELS / "metal-tags-yolov8n-448x320-int8-openvino.xml"
CAMERA_FP32 = MODELS / "metal-tags-yolov8n-448x320.onnx"  # the FP32 model the shipped IR was quantized from


@dataclass
class Parity:
    boxes: int = 0
    max_conf_diff: float = 0.0
    min_iou: float = 1.0


def compare(ours: list[Detection], theirs: list[Detection], where: str, parity: Parity) -> None:
    """Both lists were detected at CONF - MAX_CONF_DIFF, so a box scoring just above CONF on one
    side and just below on the other is still seen on both; every box at CONF must match."""
    for mine, other in ((ours, theirs), (theirs, ours)):
        for det in (d for d in mine if d.confidence >= CONF):
            match = max((o for o in other if o.class_id == det.class_id), key=lambda o: box_iou(det.box, o.box),
                        default=None)
            assert match is not None, f"{where}: {det} has no counterpart"
            iou, diff = box_iou(det.box, match.box), abs(det.confidence - match.confidence)
            assert iou >= MIN_IOU and diff <= MAX_CONF_DIFF, f"{where}: {det} vs {match}: IoU {iou}, diff {diff}"
            parity.boxes += 1
            parity.max_conf_diff, parity.min_iou = max(parity.max_conf_diff, diff), min(parity.min_iou, iou)


def assert_parity(reference: Detector, candidate: Detector) -> Parity:
    parity = Parity()
    for path in PHOTOS:
        frame = read_image(path)
        compare(reference.detect(frame), candidate.detect(frame), path.name, parity)
    assert parity.boxes > 40, "the photos gave too few boxes for the comparison to mean anything"
    print(f"parity on {len(PHOTOS)} photos: {parity}")
    return parity


@pytest.fixture(scope="module")
def reference(bundled_model) -> Detector:
    return Detector(bundled_model, conf=CONF - MAX_CONF_DIFF)


def make_ir(onnx_model: Path, folder: Path, metadata: dict[str, object] | None) -> Path:
    """An IR of `onnx_model`, its rt_info written as Ultralytics' OpenVINO export writes it
    (`set_rt_info(value, ["model_info", key])`), plus `metadata` there. The ONNX metadata that
    conversion copies into rt_info["framework"] is removed, so only model_info is left to read."""
    folder.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_model))
    del model.get_rt_info()["framework"]
    for key, value in {"model_type": "YOLO", "reverse_input_channels": True, "pad_value": 114, "scale_values": [255.0],
                       "iou_threshold": 0.7, "labels": ["scratch"], "resize_type": "fit_to_window_letterbox",
                       **(metadata or {})}.items():
        model.set_rt_info(value, ["model_info", key])
    xml = folder / f"{onnx_model.stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


@pytest.fixture(scope="module")
def ir_model(bundled_model, tmp_path_factory) -> Path:
    metadata = {"names": "{0: 'scratch'}", "imgsz": [448, 448], "stride": 32, "task": "detect", "version": "8.4.190",
                "description": "converted in the test"}
    return make_ir(bundled_model, tmp_path_factory.mktemp("ir"), metadata)


def nudge_a_weight(xml: Path) -> None:
    """Change the lowest byte of the first float32 weight in the .bin: a valid, different model."""
    data = next(layer.find("data") for layer in ET.parse(xml).getroot().iter("layer")
                if layer.get("type") == "Const" and layer.find("data").get("element_type") == "f32")
    weights = xml.with_suffix(".bin")
    blob = bytearray(weights.read_bytes())
    blob[int(data.get("offset"))] ^= 0x01
    weights.write_bytes(bytes(blob))


# --- the bundled ONNX, read by OpenVINO --------------------------------------------------------

def test_openvino_reads_the_onnx_metadata_and_runs_in_f32(bundled_model, reference):
    import openvino.properties as props
    import openvino.properties.hint as hints

    detector = Detector(bundled_model, runtime="openvino", threads=1)
    ours, theirs = detector.info, reference.info
    assert ours.runtime == "openvino" and theirs.runtime == "onnxruntime"
    for field in ("sha256", "class_names", "input_size", "stride", "input_name", "task", "version", "description"):
        assert getattr(ours, field) == getattr(theirs, field), field
    compiled = detector.model.compiled
    assert compiled.get_property(hints.inference_precision) == ov.Type.f32, "bf16 would change the scores"
    assert compiled.get_property(hints.performance_mode) == "LATENCY"
    assert compiled.get_property(props.inference_num_threads) == 1


def test_openvino_on_the_onnx_finds_what_onnxruntime_finds(bundled_model, reference):
    parity = assert_parity(reference, Detector(bundled_model, conf=CONF - MAX_CONF_DIFF, runtime="openvino"))
    assert parity.max_conf_diff <= MAX_CONF_DIFF and parity.min_iou >= MIN_IOU


# --- an OpenVINO IR ----------------------------------------------------------------------------

def test_an_ir_reads_its_rt_info_and_finds_what_onnxruntime_finds(ir_model, reference):
    detector = Detector(ir_model, conf=CONF - MAX_CONF_DIFF, runtime="openvino")
    info = detector.info
    assert (info.class_names, info.input_size, info.stride, info.task) == (("scratch",), (448, 448), 32, "detect")
    assert (info.version, info.description) == ("8.4.190", "converted in the test")
    assert info.sha256 == model_sha256(ir_model) != reference.info.sha256
    assert_parity(reference, detector)


def test_an_ir_as_ultralytics_exports_it_needs_only_its_labels(bundled_model, tmp_path, reference):
    """Ultralytics' export puts only `labels` (and preprocessing hints) in rt_info: the class
    names come from there, the input size from the graph."""
    detector = Detector(make_ir(bundled_model, tmp_path, None), conf=CONF - MAX_CONF_DIFF, runtime="openvino")
    assert (detector.info.class_names, detector.info.input_size, detector.info.task) == (("scratch",), (448, 448),
                                                                                        "detect")
    frame = read_image(PHOTOS[0])
    compare(reference.detect(frame), detector.detect(frame), PHOTOS[0].name, Parity())


def test_an_ir_identity_covers_its_bin_and_a_hot_swap_sees_a_new_bin(ir_model, tmp_path):
    xml = tmp_path / "model.xml"
    shutil.copy(ir_model, xml)
    shutil.copy(ir_model.with_suffix(".bin"), xml.with_suffix(".bin"))
    before, xml_bytes = model_sha256(xml), xml.read_bytes()
    messages: list[tuple[str, str, str]] = []
    manager = ModelManager(xml, lambda path: RuntimeSettings("openvino"), lambda *m: messages.append(m))
    assert manager.identity.sha256 == before

    nudge_a_weight(xml)
    assert xml.read_bytes() == xml_bytes and model_sha256(xml) != before, "only the .bin changed"
    manager.poll()  # a change: wait one interval, the other file of the pair may be on its way
    assert not manager.take_pending()
    manager.poll()  # settled: load, check, offer
    assert manager.take_pending(), messages
    assert manager.identity.sha256 == model_sha256(xml) != before
    assert [m[0] for m in messages] == ["model_swapped"] and before[:12] in messages[0][1]


def copy_ir(xml: Path, folder: Path) -> Path:
    """An IR's .xml and .bin, and its card when it has one, copied into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in (xml, xml.with_suffix(".bin"), card_path_for(xml)):
        if source.is_file():
            shutil.copy(source, folder / source.name)
    return folder / xml.name


def test_overwriting_the_serving_bin_in_place_leaves_the_serving_model_unchanged(tmp_path):
    """OpenVINO memory-maps an IR's .bin unless told not to, and then computes with the mapped
    pages: a hot swap that rewrites the .bin in place (cp, rsync --inplace) would change the
    weights of the model still serving (here: output off by 500 before the fix)."""
    xml = copy_ir(SHIPPED_IR, tmp_path)
    detector = Detector(xml, runtime="openvino")
    blob, _ = detector.preprocess(read_image(PHOTOS[0]))
    before = detector.infer(blob)
    weights = xml.with_suffix(".bin")
    with weights.open("r+b") as handle:  # the same file (inode), as an in-place copy writes it
        handle.write(bytes(weights.stat().st_size))
    assert np.array_equal(detector.infer(blob), before)


def test_an_ir_without_its_bin_is_a_clear_error(ir_model, tmp_path):
    xml = tmp_path / "lonely.xml"
    shutil.copy(ir_model, xml)
    with pytest.raises(ModelNotFoundError, match=r"lonely\.xml is an OpenVINO IR whose weights lonely\.bin are missing"):
        Detector(xml, runtime="openvino")


# --- the self-test, the CLI and the daemon -----------------------------------------------------

def test_the_bundled_fp32_model_passes_its_self_test_under_openvino(bundled_model):
    result = self_test(load_checked(bundled_model, RuntimeSettings("openvino")))
    assert result is not None and result.passed and result.found == result.reference_boxes > 0
    assert result.worst_score_diff <= MAX_CONF_DIFF

    run = subprocess.run([sys.executable, "-m", "edge_inspect", "self-test", str(bundled_model), "--runtime", "openvino"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "self-test passed" in run.stdout and "with openvino" in run.stdout, run.stderr[-1500:]


def test_detect_command_runs_on_openvino(bundled_model, reference):
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "detect", str(REPO / "samples"), "--runtime", "openvino",
                          "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-1500:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 6 and sum(len(r["detections"]) for r in records) > 0
    for record in records:
        expected = [d for d in reference.detect(read_image(Path(record["image"]))) if d.confidence >= CONF]
        assert len(record["detections"]) == len(expected), record["image"]


def fp32_ir(onnx_model: Path, folder: Path) -> Path:
    """An FP32 IR of `onnx_model`, converted as is (its metadata carried into rt_info)."""
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{onnx_model.stem}.xml"
    ov.save_model(ov.convert_model(str(onnx_model)), str(xml), compress_to_fp16=False)
    return xml


def write_self_test_command(model: Path, reference: Path) -> list[str]:
    frames = [str(f) for f in sorted((REPO / "samples").glob("*.jpg"))]
    return ["self-test", str(model), "--write", "--reference", str(reference), "--frames", *frames]


@pytest.mark.parametrize("reference_format", ["onnx", "ir"])
def test_writing_the_self_test_of_an_ir_runs_each_model_on_its_own_runtime(tmp_path, reference_format):
    """The reference (an .onnx or an FP32 IR) on its own file's runtime, the IR on OpenVINO."""
    xml = copy_ir(SHIPPED_IR, tmp_path / "model")
    reference = CAMERA_FP32 if reference_format == "onnx" else fp32_ir(CAMERA_FP32, tmp_path / "reference")
    assert main(write_self_test_command(xml, reference)) == 0
    spec = ModelCard.read(card_path_for(xml)).self_test
    assert spec.reference_model_sha256 == model_sha256(reference)
    assert [f.name for f in spec.frames] == sorted(p.name for p in (REPO / "samples").glob("*.jpg"))
    assert sum(d.confidence >= spec.strong for f in spec.frames for d in f.detections) >= 5
    result = self_test(Detector(xml, runtime="openvino"))
    assert result is not None and result.passed


def test_a_self_test_its_model_fails_is_not_written(tmp_path, capsys):
    """A reference that sees nothing: the IR's scratches are boxes the reference does not have."""
    xml = copy_ir(SHIPPED_IR, tmp_path)
    card_before = card_path_for(xml).read_text()
    blind = make_onnx(tmp_path / "blind.onnx", scale=0.0, metadata={"names": "{0: 'scratch'}", "imgsz": "[64, 64]"})
    assert main(write_self_test_command(xml, blind)) == 2
    assert "fails the new self-test on openvino here" in capsys.readouterr().err
    assert card_path_for(xml).read_text() == card_before


def events_of(folder: Path, runtime: str, workdir: Path) -> list[dict]:
    """Run the daemon on `folder` until it has inspected every photo; its events, in order."""
    workdir.mkdir()
    config = write_config(workdir / "config.yaml", 1, [{"id": "station", "source": str(folder)}], transport="none",
                          model={"runtime": runtime},
                          # counted in frames, not timed: new at the first sighting, no `end` during the run
                          events={"min_hits": 1, "window": 1, "end_after_s": 3600})
    photos = len(list(folder.iterdir()))
    sink = workdir / "messages.jsonl"

    def messages() -> list[dict]:
        lines = sink.read_text().splitlines() if sink.is_file() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def done() -> bool:
        stats = [m["payload"] for m in messages() if m["topic"].endswith("/stats")]
        return bool(stats) and stats[-1]["cameras"]["station"]["frames_processed"] == photos

    daemon = DaemonProcess(config)
    try:
        assert wait_until(done, 120), daemon.log_text()[-3000:]
        assert f"on {runtime}" in daemon.log_text()
    finally:
        daemon.stop()
    events = [m["payload"] for m in messages() if m["topic"].endswith("/events")]
    return [e for e in events if not e.get("reason")]  # not the `end`s of the shutdown


def test_the_daemon_on_openvino_raises_the_same_events(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for photo in PHOTOS[:24]:
        shutil.copy(photo, folder / photo.name)
    on_ort = events_of(folder, "onnxruntime", tmp_path / "ort")
    on_ov = events_of(folder, "openvino", tmp_path / "ov")
    assert sum(e["type"] == "new" for e in on_ort) >= 5, "too few events for the comparison to mean anything"
    assert len(on_ov) == len(on_ort)
    for a, b in zip(on_ort, on_ov, strict=True):
        assert (a["type"], a["class"], a["frames_seen"], a["model"]) == (b["type"], b["class"], b["frames_seen"], b["model"])
        assert abs(a["score"] - b["score"]) <= MAX_CONF_DIFF and box_iou(tuple(a["box"]), tuple(b["box"])) >= MIN_IOU


# --- clear errors ------------------------------------------------------------------------------

def daemon_config(tmp_path: Path, **model) -> dict:
    return {"transport": "none", "state_dir": str(tmp_path / "state"), "cameras": [{"id": "c", "source": str(tmp_path)}],
            "model": model}


def test_openvino_not_installed_is_one_clear_error_and_onnxruntime_still_works(bundled_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(RuntimeUnavailableError) as raised:
        Detector(bundled_model, runtime="openvino")
    assert str(raised.value) == OPENVINO_MISSING == ("model.runtime is openvino but the openvino package is not "
                                                     "installed: pip install 'edge-inspect[openvino]'")
    config = parse_config(daemon_config(tmp_path, runtime="openvino"))
    with pytest.raises(PreflightError) as raised:
        check_model(config, bundled_model)
    assert str(raised.value) == OPENVINO_MISSING
    assert check_model(parse_config(daemon_config(tmp_path)), bundled_model).detector.info.runtime == "onnxruntime"


def test_the_device_does_not_import_openvino_unless_asked():
    code = ("import sys, device.daemon, device.detector, device.preflight, edge_inspect.cli; "
            "assert 'openvino' not in sys.modules, 'openvino imported eagerly'")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-1500:]


def test_an_ir_asked_of_onnxruntime_is_a_clear_error(ir_model, tmp_path):
    with pytest.raises(ModelError, match=r"is an OpenVINO IR \(\.xml\), which ONNX Runtime cannot read"):
        Detector(ir_model)
    with pytest.raises(ConfigError, match=r"model: .*yolov8n\.xml is an OpenVINO IR, which onnxruntime cannot read"):
        parse_config(daemon_config(tmp_path, path=str(ir_model), runtime="onnxruntime"))


def test_auto_picks_the_runtime_by_the_model_file(ir_model, bundled_model, tmp_path):
    config = parse_config(daemon_config(tmp_path, path=str(ir_model), fallback_path=str(bundled_model))).model
    assert config.runtime == "auto"
    assert model_runtime(config, ir_model).runtime == "openvino"
    assert model_runtime(config, bundled_model).runtime == "onnxruntime"
    assert check_model(parse_config(daemon_config(tmp_path, path=str(ir_model))), ir_model).detector.info.runtime \
        == "openvino"


@pytest.mark.parametrize("model,message", [
    ({"runtime": "tensorrt"}, "model.runtime: Input should be 'onnxruntime', 'openvino' or 'auto'"),
    ({"runtime": "openvino", "providers": ["CUDAExecutionProvider"], "spinning": False},
     "model: Value error, providers, spinning: onnxruntime-only settings, but "),
])
def test_bad_runtime_settings_are_refused_at_config_load(tmp_path, model, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_config(daemon_config(tmp_path, **model))


def test_onnxruntime_settings_given_to_openvino_are_refused(bundled_model):
    with pytest.raises(ValueError, match="providers and session_options are ONNX Runtime settings"):
        Detector(bundled_model, runtime="openvino", providers=["CPUExecutionProvider"])
