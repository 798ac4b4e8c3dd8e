"""The daemon serves no model whose sha256 is not the one its card names, and, with
`model.public_key`, no model whose card is not signed by a trusted key: at start (one line, exit
2) and at every hot swap (`model_rejected` on MQTT, the old model keeps serving). Real daemons
(`python -m edge_inspect run`), a real mosquitto, the real bundled model and Ed25519 keys."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Subscriber

from cloud.deploy.signing import generate_keys, load_signing_key, sign_card
from device.detector import file_sha256
from device.messages import validate
from device.model_card import card_path_for

FP32 = REPO / "device" / "models" / "metal-tags-yolov8n.onnx"


def variant(folder: Path, tag: str, card: bool = True) -> Path:
    """The bundled network with one more metadata entry (a valid model with other bytes), and a
    card that names it (the bundled card, its model_sha256 set to this file's)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(FP32))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_inspect_variant", tag
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    if card:
        data = json.loads(card_path_for(FP32).read_text())
        data["model_sha256"] = file_sha256(path)
        card_path_for(path).write_text(json.dumps(data))
    return path


def push(source: Path, target: Path) -> None:
    """As the deployers do: the card, then the model, each by rename."""
    for src, dst in ((card_path_for(source), card_path_for(target)), (source, target)):
        if src.is_file():
            tmp = dst.with_name(f".{dst.name}.incoming")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)


def rejections(sub: Subscriber) -> list[dict]:
    found = [p for p in sub.payloads("/errors") if p["type"] == "model_rejected"]
    for payload in found:
        validate("error", payload)
    return found


def start(tmp_path: Path, broker, model: Path, **model_settings) -> tuple[DaemonProcess, Subscriber]:
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True, "loop": True}],
                                        model={"path": str(model), "watch_interval_s": 0.3, **model_settings}))
    assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
    return daemon, sub


def serving(sub: Subscriber) -> str:
    return sub.payloads("/stats")[-1]["model"]["sha256"]


def test_a_model_whose_card_names_another_sha256_is_refused_at_start(tmp_path):
    model = variant(tmp_path / "m", "1")
    shutil.copyfile(card_path_for(FP32), card_path_for(model))  # the card of another model
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", 1, [{"id": "cam", "source": str(FP32.parent)}],
                                        model={"path": str(model)}))
    assert daemon.wait(60) == 2
    errors = [line for line in daemon.log_text().splitlines() if "error" in line]
    assert len(errors) == 1, daemon.log_text()
    assert (f"model.path: model.onnx has sha256 {file_sha256(model)[:12]}, but its card model.card.json names "
            f"{file_sha256(FP32)[:12]}") in errors[0]


def test_a_hot_swap_to_a_model_whose_card_names_another_sha256_is_refused(tmp_path, broker):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copyfile(FP32, live / "model.onnx")
    shutil.copyfile(card_path_for(FP32), card_path_for(live / "model.onnx"))
    daemon, sub = start(tmp_path, broker, live / "model.onnx")
    try:
        other = variant(tmp_path / "incoming", "2")
        shutil.copyfile(card_path_for(FP32), card_path_for(other))  # a card from another shipment
        push(other, live / "model.onnx")
        assert sub.wait_for(lambda s: rejections(s), 30), daemon.log_text()[-2000:]
        [rejected] = rejections(sub)
        assert f"has sha256 {file_sha256(other)[:12]}, but its card model.card.json names" in rejected["message"]
        assert rejected["model"]["sha256"] == file_sha256(FP32), "reported by the model that keeps serving"
        assert wait_until(lambda: serving(sub) == file_sha256(FP32), 10)
        assert not [p for p in sub.payloads("/notices") if p["type"] == "model_swapped"]
        # the card that names it arrives late: the model is checked again, and taken
        good_card = card_path_for(variant(tmp_path / "good", "2"))
        tmp = live / ".card.incoming"
        shutil.copyfile(good_card, tmp)
        os.replace(tmp, card_path_for(live / "model.onnx"))
        assert sub.wait_for(lambda s: serving(s) == file_sha256(other), 30), daemon.log_text()[-2000:]
        [swapped] = [p for p in sub.payloads("/notices") if p["type"] == "model_swapped"]
        assert swapped["candidate"] == str(live / "model.onnx"), "named by its configured path, not the private copy"
        copies = tmp_path / "state" / "models"  # one private copy: the one serving, the previous one removed
        assert wait_until(lambda: len([p for p in copies.iterdir() if p.is_dir()]) == 1, 10), list(copies.iterdir())
    finally:
        daemon.stop()
        sub.close()


def test_with_a_public_key_only_a_model_signed_by_a_trusted_key_is_served(tmp_path, broker):
    keys, stranger = generate_keys(tmp_path / "keys"), generate_keys(tmp_path / "stranger")
    key, other_key = load_signing_key(keys.private), load_signing_key(stranger.private)
    live = variant(tmp_path / "live", "start")
    sign_card(card_path_for(live), key)
    daemon, sub = start(tmp_path, broker, live, public_key=str(keys.trusted))
    try:
        assert serving(sub) == file_sha256(live), "a correctly signed model starts"
        started = file_sha256(live)
        unsigned = variant(tmp_path / "unsigned", "u")
        by_stranger = variant(tmp_path / "stranger-signed", "s")
        sign_card(card_path_for(by_stranger), other_key)
        edited = variant(tmp_path / "edited", "e")
        sign_card(card_path_for(edited), key)
        card = json.loads(card_path_for(edited).read_text())
        card["class_names"] = ["nothing"]  # after signing
        card_path_for(edited).write_text(json.dumps(card))
        expected = [(unsigned, "the card is not signed, and model.public_key requires signed models"),
                    (by_stranger, f"signed by key {stranger.key_id}, which is not among the trusted keys"),
                    (edited, f"signature by key {keys.key_id} does not verify: the card was changed after it was signed")]
        for n, (model, reason) in enumerate(expected, start=1):
            push(model, live)
            assert sub.wait_for(lambda s, n=n: len(rejections(s)) == n, 30), daemon.log_text()[-2000:]
            assert reason in rejections(sub)[-1]["message"], rejections(sub)[-1]
            assert serving(sub) == started
        good = variant(tmp_path / "good", "g")
        sign_card(card_path_for(good), key)
        push(good, live)
        assert sub.wait_for(lambda s: serving(s) == file_sha256(good), 30), daemon.log_text()[-2000:]
        assert len(rejections(sub)) == 3
    finally:
        daemon.stop()
        sub.close()


def test_with_a_public_key_an_unsigned_model_is_refused_at_start(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    model = variant(tmp_path / "m", "1")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", 1, [{"id": "cam", "source": str(FP32.parent)}],
                                        model={"path": str(model), "public_key": str(keys.trusted)}))
    assert daemon.wait(60) == 2
    assert "model.path: model.onnx: the card is not signed, and model.public_key requires signed models" \
        in daemon.log_text()


def test_check_config_names_a_private_key_given_as_the_public_key_without_quoting_it(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    config = write_config(tmp_path / "config.yaml", 1, [{"id": "cam", "source": str(FP32.parent)}],
                          model={"path": str(FP32), "public_key": str(keys.private)})
    done = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(config), "--check-config"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"model.public_key: {keys.private} holds a private key" in done.stderr
    body = "".join(keys.private.read_text().splitlines()[1:-1])
    assert body not in done.stdout + done.stderr


# --- the file checked is the file loaded (in process: the attacker acts exactly between two reads) -----

def snapshots_in(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_a_model_flipped_between_the_check_and_the_load_is_never_served(tmp_path, monkeypatch):
    """A writer puts B in place right after custody checked A, and A back before the Detector
    hashes the file: the daemon would serve B while reporting A's sha256. The check and the load
    read one private copy instead, which the writer cannot reach."""
    import device.detector as detector_module
    import device.model_manager as mm
    from device.signing import TrustedKeys

    keys = generate_keys(tmp_path / "keys")
    live = tmp_path / "live" / "model.onnx"
    live.parent.mkdir()
    shutil.copyfile(FP32, live)
    shutil.copyfile(card_path_for(FP32), card_path_for(live))
    sign_card(card_path_for(live), load_signing_key(keys.private))
    evil = variant(tmp_path / "evil", "EVIL", card=False)

    def put(source: Path) -> None:
        tmp = live.with_name(".flip")
        shutil.copyfile(source, tmp)
        os.replace(tmp, live)

    real_custody, real_hash = mm.check_custody, detector_module.model_sha256

    def custody_then_flip(path, trusted=None):
        checked = real_custody(path, trusted)
        put(evil)  # B in place for the runtime's read
        return checked

    def flip_back_then_hash(path):
        put(FP32)  # A back for the Detector's own hash
        return real_hash(path)

    monkeypatch.setattr(mm, "check_custody", custody_then_flip)
    monkeypatch.setattr(detector_module, "model_sha256", flip_back_then_hash)
    root = tmp_path / "state" / "models"
    detector = mm.load_checked(live, trusted=TrustedKeys.load([keys.trusted]), snapshots=root)
    monkeypatch.undo()
    loaded = onnx.load(str(detector.info.path))
    assert not [p for p in loaded.metadata_props if p.key == "edge_inspect_variant"], "B was loaded"
    assert detector.info.sha256 == file_sha256(FP32) == file_sha256(detector.info.path)
    [snapshot] = snapshots_in(root)
    assert detector.info.path.parent == snapshot and (snapshot.stat().st_mode & 0o777) == 0o700
    assert mm.shown_path(detector) == live, "messages name the configured path"
    del detector, loaded
    gc.collect()
    assert snapshots_in(root) == [], "the private copy goes with its Detector"


def test_the_card_is_read_once_and_what_was_verified_is_what_is_used(tmp_path, monkeypatch):
    """The signed card is swapped for an unsigned one (no self-test, another version, no drift
    reference) right after custody verified it: version, self-test and drift reference still come
    from the verified card."""
    import device.model_manager as mm
    from device.signing import TrustedKeys

    keys = generate_keys(tmp_path / "keys")
    live = tmp_path / "live" / "model.onnx"
    live.parent.mkdir()
    shutil.copyfile(FP32, live)
    card_file = card_path_for(live)
    shutil.copyfile(card_path_for(FP32), card_file)
    sign_card(card_file, load_signing_key(keys.private))
    signed = json.loads(card_file.read_text())
    assert signed["self_test"] and signed["drift_reference"]
    evil = {k: v for k, v in signed.items() if k != "signature"} | {"self_test": None, "version": "EVIL",
                                                                     "drift_reference": None}
    real_custody, real_self_test = mm.check_custody, mm.run_self_test
    ran = []

    def custody_then_swap_card(path, trusted=None):
        checked = real_custody(path, trusted)
        for target in (card_file, card_path_for(path)):  # the watched card, and any copy of it
            target.write_text(json.dumps(evil))
        return checked

    monkeypatch.setattr(mm, "check_custody", custody_then_swap_card)
    monkeypatch.setattr(mm, "run_self_test", lambda d, spec: ran.append(spec) or real_self_test(d, spec))
    detector = mm.load_checked(live, trusted=TrustedKeys.load([keys.trusted]), snapshots=tmp_path / "snapshots")
    assert ran, "the self-test of the verified card ran"
    assert mm.model_identity(detector).version == signed["created"] != "EVIL"
    assert mm.drift_reference_of(detector) is not None


def test_a_swap_removes_the_previous_copy_and_stale_copies_of_a_killed_process_are_removed(tmp_path):
    import fcntl

    from device.model_manager import ModelManager
    from device.runtimes import RuntimeSettings

    root = tmp_path / "state" / "models"
    root.mkdir(parents=True)
    stale = root / "left-by-kill-9"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"old")
    held = root / "held-by-a-live-process"
    held.mkdir()
    holder = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    live = tmp_path / "live" / "model.onnx"
    live.parent.mkdir()
    shutil.copyfile(FP32, live)
    shutil.copyfile(card_path_for(FP32), card_path_for(live))
    messages: list[tuple] = []
    try:
        manager = ModelManager(live, lambda path: RuntimeSettings(), lambda *m: messages.append(m), snapshots=root)
        assert not stale.exists() and held.is_dir(), "only the copy nobody holds is removed"
        first = manager.detector.info.path.parent
        push(variant(tmp_path / "incoming", "2"), live)
        assert manager.offer(live) and manager.take_pending()
        gc.collect()
        assert [p for p in snapshots_in(root) if p != held] == [manager.detector.info.path.parent] != [first]
        [(kind, _, candidate)] = messages
        assert kind == "model_swapped" and candidate == str(live), "the message names the configured path"
        bad = tmp_path / "bad" / "model.onnx"
        bad.parent.mkdir()
        bad.write_bytes(b"not a model")
        assert not manager.offer(bad)
        assert "model.onnx" in messages[-1][1] and str(root) not in messages[-1][1], messages[-1]
        gc.collect()
        assert len([p for p in snapshots_in(root) if p != held]) == 1, "a refused copy is removed"
    finally:
        os.close(holder)
