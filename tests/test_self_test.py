"""The self-test at model load: a model whose card carries reference frames is refused where it
does not see what its FP32 reference saw, by `detect`, by the daemon at start (or replaced by
`model.fallback_path`), and by a hot swap. On a real non-VNNI CPU (emulated: qemu-user with an
AVX2-only CPU model) an INT8 model quantized with full-range weights is refused, while the shipped
INT8 model (7-bit weights: `reduce_range`) and the FP32 one pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Subscriber

from device import cpu
from device.detector import Detector, ModelError, file_sha256
from device.messages import validate
from device.model_card import ModelCard, card_path_for
from device.model_manager import SelfTestFailed, load_checked, self_test

MODELS = REPO / "device" / "models"
FP32, INT8 = MODELS / "metal-tags-yolov8n.onnx", MODELS / "metal-tags-yolov8n-int8.onnx"
VNNI = bool({"AVX512VNNI", "AVXVNNI"} & set(cpu.instruction_sets()))


def copy_model(model: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or model.name)
    shutil.copy(model, target)
    shutil.copy(card_path_for(model), card_path_for(target))
    return target


def tamper(model: Path) -> Path:
    """The reference forgets the strongest box of the first frame: the model now 'invents' it."""
    card_file = card_path_for(model)
    card = json.loads(card_file.read_text())
    frame = next(f for f in card["self_test"]["frames"] if f["detections"])
    frame["detections"].remove(max(frame["detections"], key=lambda d: d["confidence"]))
    card_file.write_text(json.dumps(card))
    return model


def test_the_bundled_fp32_model_passes_here():
    result = self_test(Detector(FP32))
    assert result is not None and result.passed and result.found == result.reference_boxes > 0


def test_the_bundled_int8_model_passes_here():
    result = self_test(Detector(INT8))
    assert result is not None and result.passed and result.found == result.reference_boxes > 0


def test_a_tampered_reference_is_a_disagreement_with_the_figures(tmp_path):
    model = tamper(copy_model(FP32, tmp_path))
    with pytest.raises(SelfTestFailed, match=r"found \d+ of \d+ reference boxes, 1 box\(es\) the reference does not "
                                             r"have, largest score difference") as raised:
        load_checked(model)
    assert cpu.describe() in str(raised.value), "the CPU's instruction sets are named"


def test_a_damaged_reference_frame_is_a_clear_error(tmp_path):
    model = copy_model(FP32, tmp_path)
    card = ModelCard.read(card_path_for(model))
    frame = card.self_test.frames[0]
    card.self_test.frames[0] = frame.model_copy(update={"sha256": "0" * 64})
    card.write(card_path_for(model))
    with pytest.raises(ModelError, match="self-test cannot run: .* do not match its sha256"):
        load_checked(model)


def test_detect_refuses_a_model_that_fails_its_self_test(tmp_path):
    model = tamper(copy_model(FP32, tmp_path))
    result = subprocess.run([sys.executable, "-m", "edge_inspect", "detect", str(REPO / "samples"), "--model", str(model)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "failed its self-test on this CPU" in result.stderr, result.stderr[-1000:]


def test_daemon_start_refuses_or_falls_back_and_says_so(tmp_path, broker):
    bad = tamper(copy_model(FP32, tmp_path / "models", "candidate.onnx"))
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    cameras = [{"id": "cam", "source": str(video), "realtime": True, "loop": True}]
    refused = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config",
                              str(write_config(tmp_path / "a.yaml", broker.port, cameras, model={"path": str(bad)}))],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "edge-inspect: error: model.path: candidate.onnx failed its self-test" \
        in refused.stderr, refused.stderr[-1500:]

    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "b.yaml", broker.port, cameras,
                                        model={"path": str(bad), "fallback_path": str(FP32)}))
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats") and s.payloads("/errors"), 60), daemon.log_text()[-2000:]
        error = sub.payloads("/errors")[0]
        validate("error", error)
        assert error["type"] == "model_rejected" and "failed its self-test" in error["message"]
        assert "reference boxes" in error["message"] and error["candidate"].endswith("candidate.onnx")
        assert sub.payloads("/stats")[-1]["model"]["sha256"] == file_sha256(FP32), "the fallback serves"
    finally:
        daemon.stop()
        sub.close()


def test_hot_swap_keeps_the_old_model_when_the_new_one_fails_its_self_test(tmp_path, broker):
    serving = copy_model(FP32, tmp_path / "live", "model.onnx")
    incoming = tamper(copy_model(FP32, tmp_path / "incoming", "model.onnx"))
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        model={"path": str(serving), "watch_interval_s": 0.3}))
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
        # the card first, then the model by rename, as the model component installs them; the
        # new model must differ from the old one, so append a harmless metadata entry
        import onnx

        model = onnx.load(str(incoming))
        entry = model.metadata_props.add()
        entry.key, entry.value = "edge_inspect_variant", "2"
        onnx.save(model, str(incoming))
        card = json.loads(card_path_for(incoming).read_text())  # the card names the model it comes with
        card["model_sha256"] = file_sha256(incoming)
        card_path_for(incoming).write_text(json.dumps(card))
        os.replace(card_path_for(incoming), card_path_for(serving))
        os.replace(incoming, serving)
        assert sub.wait_for(lambda s: any(p["type"] == "model_rejected" for p in s.payloads("/errors")), 30), \
            daemon.log_text()[-2000:]
        rejected = next(p for p in sub.payloads("/errors") if p["type"] == "model_rejected")
        assert "failed its self-test" in rejected["message"]
        assert wait_until(lambda: sub.payloads("/stats")[-1]["model"]["sha256"] == file_sha256(FP32), 10)
        assert not sub.payloads("/notices"), "nothing was swapped in"
    finally:
        daemon.stop()
        sub.close()


QEMU = shutil.which("qemu-x86_64")
AVX2_ONLY_CPU = "EPYC-Milan"  # Zen 3: AVX2 and FMA, no AVX-512, no VNNI (as qemu's TCG can run it)


def full_range_int8(folder: Path) -> Path:
    """The shipped INT8 model's recipe with 8-bit weights instead of 7: what edge-inspect shipped
    before it knew better. Its integer maths hold with VNNI and saturate without it."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cloud.quantize.onnxruntime import FrameReader, copy_metadata, head_node_sets

    card = ModelCard.read(card_path_for(INT8))
    folder.mkdir(parents=True, exist_ok=True)
    prepared, out = folder / "prepared.onnx", folder / "full-range-int8.onnx"
    quant_pre_process(str(FP32), str(prepared), skip_symbolic_shape=False)
    float_nodes = dict(head_node_sets(prepared))[card.quantization["chosen"]]
    frames = sorted((REPO / "data" / "metal-tags" / "images").glob("*.jpg"))[:40]
    quantize_static(str(prepared), str(out), FrameReader(Detector(FP32), frames), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=float_nodes)
    copy_metadata(FP32, out)
    shutil.copy(card_path_for(INT8), card_path_for(out))  # the same reference frames and FP32 detections
    return out


def test_on_an_emulated_avx2_only_cpu_full_range_int8_is_refused_and_the_shipped_models_pass(tmp_path):
    """qemu-user runs the real onnxruntime on an emulated CPU without VNNI and without AVX-512:
    its integer kernels take the AVX2 path, where full-range u8s8 maths saturate."""
    assert QEMU, "qemu-user is missing: `make test` installs it (scripts/system-packages.sh test)"

    def run(model: Path) -> subprocess.CompletedProcess:
        return subprocess.run([QEMU, "-cpu", AVX2_ONLY_CPU, sys.executable, "-m", "edge_inspect", "self-test", str(model)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)

    full_range = full_range_int8(tmp_path)
    if VNNI:
        assert self_test(Detector(full_range)).passed, "with VNNI the full-range model is right"
    refused, int8, fp32 = run(full_range), run(INT8), run(FP32)
    assert "(sse42 avx avx2 fma3 f16c)" in refused.stderr + refused.stdout, "the emulated CPU has no AVX-512 / VNNI"
    assert refused.returncode == 2 and "failed its self-test on this CPU" in refused.stderr, refused.stderr[-1500:]
    assert int8.returncode == 0 and "self-test passed" in int8.stdout, int8.stderr[-1500:]
    assert fp32.returncode == 0 and "self-test passed" in fp32.stdout, fp32.stderr[-1500:]


@pytest.mark.parametrize("model", ["metal-tags-yolov8n-int8.onnx", "metal-tags-yolov8n-448x320-int8.onnx",
                                   "metal-tags-yolov8n-448x320-int8-openvino.xml"])
def test_shipped_int8_models_compute_the_same_numbers_without_vnni(tmp_path, model):
    """7-bit weights (onnxruntime's reduce_range, NNCF's overflow_fix) keep every u8 x s8 pair sum
    inside AVX2's 16-bit lanes: the raw outputs on an emulated AVX2-only CPU are bit-identical to
    this machine's on these photos (a real AVX2-only EPYC differs slightly on the held-out set;
    test_quantize_bench checks the gate holds there)."""
    assert QEMU, "qemu-user is missing: `make test` installs it (scripts/system-packages.sh test)"
    images = [str(p) for p in sorted((REPO / "data" / "metal-tags" / "images").glob("*.jpg"))[::40]]
    script, path = REPO / "tests" / "raw_outputs.py", str(MODELS / model)
    native = subprocess.run([sys.executable, str(script), path, str(tmp_path / "native.npy"), *images],
                            capture_output=True, text=True, timeout=300)
    emulated = subprocess.run([QEMU, "-cpu", AVX2_ONLY_CPU, sys.executable, str(script), path,
                               str(tmp_path / "emulated.npy"), *images], capture_output=True, text=True, timeout=600)
    assert native.returncode == 0 and emulated.returncode == 0, (native.stderr + emulated.stderr)[-2000:]
    import numpy as np

    here, there = np.load(tmp_path / "native.npy"), np.load(tmp_path / "emulated.npy")
    assert here.shape == there.shape and here.shape[0] == len(images) == 5
    assert np.array_equal(here, there), f"max difference {np.abs(here - there).max()}"
