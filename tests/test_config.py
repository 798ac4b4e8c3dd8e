"""Config validation: every bad key named, defaults sane, secrets never printed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from device.config import ConfigError, load_config, merge_config, parse_config

GOOD = {"thing_name": "line-1", "cameras": [{"id": "cam1", "source": "video.avi"}]}


def test_minimal_config_has_defaults():
    config = parse_config(GOOD)
    assert config.mqtt.host == "localhost" and config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "edge-inspect"
    assert config.cameras[0].resolved_kind() == "file"
    assert parse_config({"cameras": [{"id": "c", "source": 0}]}).cameras[0].resolved_kind() == "usb"
    assert parse_config({"cameras": [{"id": "c", "source": "rtsp://u:p@h/s"}]}).cameras[0].resolved_kind() == "stream"


@pytest.mark.parametrize("patch,key", [
    ({"mqtt": {"port": 70000}}, "mqtt.port"),
    ({"mqtt": {"hots": "x"}}, "mqtt.hots"),
    ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix"),
    ({"mqtt": {"tls": {"enabled": True, "ca_certs": "/nonexistent/ca.pem"}}}, "mqtt.tls"),
    ({"mqtt": {"tls": {"certfile": "/x.pem"}}}, "mqtt.tls"),
    ({"cameras": []}, "cameras"),
    ({"cameras": [{"id": "bad id!", "source": "x"}]}, "cameras.0.id"),
    ({"cameras": [{"id": "a"}]}, "cameras.0.source"),
    ({"cameras": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]}, "repeated: a"),
    ({"events": {"min_hits": 6, "window": 5}}, "events"),
    ({"events": {"classes": {"scratch": {"min_confidence": 1.5}}}}, "events.classes.scratch.min_confidence"),
    ({"thing_name": "a/b"}, "thing_name"),
])
def test_bad_keys_are_named(patch, key):
    with pytest.raises(ConfigError) as info:
        parse_config(merge_config(GOOD, patch))
    assert key in str(info.value)


def test_password_never_appears_in_errors_or_dumps():
    with pytest.raises(ConfigError) as info:
        parse_config(merge_config(GOOD, {"mqtt": {"password": "hunter2", "port": "nope"}}))
    assert "hunter2" not in str(info.value)
    config = parse_config(merge_config(GOOD, {"mqtt": {"password": "hunter2"}}))
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def test_merge_replaces_lists_and_merges_mappings():
    merged = merge_config(GOOD, {"cameras": [{"id": "b", "source": "y"}], "mqtt": {"port": 1}})
    assert merged["cameras"] == [{"id": "b", "source": "y"}] and merged["mqtt"] == {"port": 1}
    assert GOOD["cameras"][0]["id"] == "cam1"  # inputs untouched


@pytest.mark.parametrize("text,message", [
    ("cameras: [\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("thing_name: x\n", "cameras: Field required"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_check_config_command(tmp_path, bundled_model):
    good = tmp_path / "good.yaml"
    good.write_text(f"thing_name: line-1\nmodel: {{path: {bundled_model}}}\ncameras: [{{id: cam1, source: v.avi}}]\n")
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(good), "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "OK (1 camera(s), model metal-tags-yolov8n" in run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("thing_name: line-1\nmqtt: {port: 0}\ncameras: [{id: cam1, source: v.avi}]\n")
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(bad), "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "mqtt.port" in run.stderr and "Traceback" not in run.stderr
