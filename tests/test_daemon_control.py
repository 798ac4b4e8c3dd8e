"""Live control of a running daemon: model hot swap, configuration updates (file + SIGHUP, and
Greengrass IPC), each refused cleanly when bad while the daemon keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading

import cv2
import onnx
import pytest
import yaml
from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Subscriber

from device.daemon import Daemon
from device.detector import file_sha256
from device.messages import validate


def variant_of(model_path, out, version: str):
    """The same network with other metadata: a valid model with a different sha256."""
    model = onnx.load(str(model_path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edge_inspect_variant", version
    onnx.save(model, str(out))
    return out


def replace_atomically(target, data: bytes) -> None:
    tmp = target.with_name(".incoming")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def operational(sub: Subscriber) -> list[dict]:
    """Errors (refusals) and notices (changes that took effect), in the order they arrived."""
    payloads = []
    for topic, body, _ in list(sub.messages):
        kind = {"errors": "error", "notices": "notice"}.get(topic.rsplit("/", 1)[1])
        if kind:
            payloads.append(json.loads(body))
            validate(kind, payloads[-1])
    return payloads


def test_model_hot_swap_loses_no_frame_and_refuses_a_corrupt_model(tmp_path, broker, bundled_model):
    model = tmp_path / "model.onnx"
    shutil.copy(bundled_model, model)
    old_sha = file_sha256(model)
    video = scratch_video(tmp_path / "v.avi", hold_frames=15, gap_frames=15)
    total = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port,
                                        [{"id": "cam", "source": str(video), "realtime": True}],
                                        model={"path": str(model), "watch_interval_s": 0.3}))
    assert sub.wait_for(lambda s: s.payloads("/stats"), 60), daemon.log_text()[-2000:]
    new = variant_of(bundled_model, tmp_path / "new.onnx", "2")
    new_sha = file_sha256(new)
    replace_atomically(model, new.read_bytes())
    assert sub.wait_for(lambda s: any(p["type"] == "model_swapped" for p in operational(s)), 20), daemon.log_text()[-2000:]
    replace_atomically(model, new.read_bytes()[:20000])  # a broken push
    assert sub.wait_for(lambda s: any(p["type"] == "model_rejected" for p in operational(s)), 20), daemon.log_text()[-2000:]
    rejected = next(p for p in operational(sub) if p["type"] == "model_rejected")
    assert rejected["model"]["sha256"] == new_sha and "refused" in rejected["message"]
    assert daemon.wait(120) == 0, daemon.log_text()[-2000:]
    stats = sub.payloads("/stats")
    assert stats[-1]["cameras"]["cam"]["frames_processed"] == total, "a frame was lost"
    assert stats[-1]["model"]["sha256"] == new_sha, "the refused model must not replace the good one"
    assert {p["model"]["sha256"] for p in stats} == {old_sha, new_sha}
    sub.close()


def test_config_updates_by_sighup_refuse_bad_ones_and_apply_good_ones(tmp_path, broker):
    video = scratch_video(tmp_path / "v.avi", hold_frames=5, gap_frames=5)
    config_path = write_config(tmp_path / "config.yaml", broker.port,
                               [{"id": "cam", "source": str(video), "realtime": True, "loop": True}])
    good = yaml.safe_load(config_path.read_text())
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(config_path)
    try:
        assert sub.wait_for(lambda s: s.payloads("/stats"), 60)
        config_path.write_text("cameras: [\n")
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: [p["type"] for p in operational(s)] == ["config_rejected"], 20)
        assert "not valid YAML" in operational(sub)[0]["message"]
        config_path.write_text(yaml.safe_dump({**good, "events": {**good["events"], "min_hits": 0}}))
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: len(operational(s)) == 2, 20)
        assert "events.min_hits" in operational(sub)[1]["message"]
        processed = sub.payloads("/stats")[-1]["cameras"]["cam"]["frames_processed"]
        assert sub.wait_for(lambda s: s.payloads("/stats")[-1]["cameras"]["cam"]["frames_processed"] > processed, 10), \
            "still processing on the last good config"
        config_path.write_text(yaml.safe_dump({**good, "events": {**good["events"], "min_hits": 1, "window": 1}}))
        daemon.signal(signal.SIGHUP)
        assert sub.wait_for(lambda s: len(operational(s)) == 3, 20)
        applied = operational(sub)[2]
        assert applied["type"] == "config_applied" and applied["applied"] == ["events"], applied
        assert applied["pending_restart"] == []
        assert sub.payloads("/notices") == [applied], "a change that took effect is a notice, not an error"
        assert daemon.proc.poll() is None
        assert "configuration update refused" in daemon.log_text()
    finally:
        daemon.stop()
        sub.close()


class FakeIpc:
    """Stands in for GreengrassCoreIPCClientV2 (no nucleus here). It answers with awsiotsdk's own
    model types and checks every call by building awsiotsdk's request model from its arguments."""

    def __init__(self, configuration: dict) -> None:
        from awsiot.greengrasscoreipc import model

        self.model = model
        self.configuration = configuration
        self.published: list = []
        self.on_update = None

    def get_configuration(self, *, component_name=None, key_path=None):
        self.model.GetConfigurationRequest(component_name=component_name, key_path=key_path)
        return self.model.GetConfigurationResponse(component_name="com.edgeinspect.Inference",
                                                   value=dict(self.configuration))

    def subscribe_to_configuration_update(self, *, key_path=None, on_stream_event=None, on_stream_error=None, **_):
        self.model.SubscribeToConfigurationUpdateRequest(key_path=key_path)
        self.on_update = on_stream_event

    def publish_to_iot_core(self, **kwargs):
        request = self.model.PublishToIoTCoreRequest(**kwargs)
        assert request.qos in (self.model.QOS.AT_LEAST_ONCE, self.model.QOS.AT_MOST_ONCE)
        self.published.append(request)
        return self.model.PublishToIoTCoreResponse()

    def push(self, configuration: dict) -> None:
        self.configuration = configuration
        self.on_update(self.model.ConfigurationUpdateEvents(
            configuration_update_event=self.model.ConfigurationUpdateEvent(component_name="x", key_path=[])))


def test_greengrass_configuration_updates_and_publishing(tmp_path, bundled_model, monkeypatch):
    from device.greengrass import GreengrassConfigSource

    monkeypatch.setenv("AWS_IOT_THING_NAME", "gg-thing")
    video = scratch_video(tmp_path / "v.avi", hold_frames=3, gap_frames=3)
    component = {"cameras": [{"id": "cam1", "source": str(video)}], "model": {"path": str(bundled_model)},
                 "state_dir": str(tmp_path / "state"),
                 "accessControl": {"aws.greengrass.ipc.mqttproxy": {}}}
    ipc = FakeIpc(component)
    source = GreengrassConfigSource(ipc)
    daemon = Daemon({}, "test", ipc_client=ipc, component_config=source.read())
    source.subscribe(lambda cfg: daemon.apply_update(cfg, "greengrass configuration update"))
    assert daemon.thing == "gg-thing" and [s.name for s in daemon.dispatcher.sinks] == ["greengrass"]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    ipc.push({**component, "events": {"min_hits": 9, "window": 2}})  # invalid: refused
    assert daemon.config.events.min_hits == 3
    ipc.push({**component, "events": {"min_hits": 1, "window": 2}})  # valid: applied live
    assert daemon.config.events.min_hits == 1
    assert all(t.config.min_hits == 1 for t in daemon.inference.trackers.values())
    thread.join(60)
    assert not thread.is_alive()
    topics = [r.topic_name for r in ipc.published]
    available = [r.payload for r in ipc.published if r.topic_name.endswith("/available")]
    assert available == [b"online", b"offline"] and all(
        r.retain for r in ipc.published if r.topic_name.endswith("/available"))
    assert "edge-inspect/gg-thing/cam1/status" in topics and "edge-inspect/gg-thing/stats" in topics
    kinds = [json.loads(r.payload)["type"] for r in ipc.published if r.topic_name.endswith(("/errors", "/notices"))]
    assert kinds == ["config_rejected", "config_applied"]


def test_thing_name_from_the_environment_is_checked(monkeypatch, tmp_path):
    from device.config import ConfigError

    monkeypatch.setenv("AWS_IOT_THING_NAME", "../../etc")
    with pytest.raises(ConfigError, match="must match"):
        Daemon({"cameras": [{"id": "c", "source": str(tmp_path)}], "transport": "none",
                "state_dir": str(tmp_path / "state")}, "test")
