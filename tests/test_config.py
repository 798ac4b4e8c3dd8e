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
    good.write_text(f"thing_name: line-1\nstate_dir: {tmp_path / 'state'}\nmodel: {{path: {bundled_model}}}\n"
                    "cameras: [{id: cam1, source: v.avi}]\n")
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(good), "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "OK (1 camera(s), model metal-tags-yolov8n" in run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("thing_name: line-1\nmqtt: {port: 0}\ncameras: [{id: cam1, source: v.avi}]\n")
    run = subprocess.run([sys.executable, "-m", "edge_inspect", "run", "--config", str(bad), "--check-config"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "mqtt.port" in run.stderr and "Traceback" not in run.stderr


def _numeric_fields():
    """Every int/float setting of every configuration model, with its bounds."""
    import typing

    import annotated_types

    from device import config as config_module

    models = [m for m in vars(config_module).values()
              if isinstance(m, type) and issubclass(m, config_module.Strict) and m is not config_module.Strict]
    for model in models:
        for name, field in model.model_fields.items():
            args = set(typing.get_args(field.annotation)) or {field.annotation}
            if args & {int, float} and not args & {str, bool}:
                lower = any(isinstance(m, (annotated_types.Ge, annotated_types.Gt)) for m in field.metadata)
                upper = any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in field.metadata)
                yield f"{model.__name__}.{name}", lower, upper


def test_every_numeric_setting_has_a_sane_range():
    """1e10 seconds killed the stats thread, 1e-6 spun the CPU: no number is unbounded."""
    fields = list(_numeric_fields())
    assert len(fields) > 40, "the walk found too few settings: it is broken"
    unbounded = [name for name, lower, upper in fields if not (lower and upper)]
    assert unbounded == [], f"settings without a lower and an upper bound: {unbounded}"


# --- ONNX Runtime-only model settings, on a file that runs on OpenVINO -------------------------

@pytest.mark.parametrize("model,refused,why", [
    ({"path": "line/model.xml", "spinning": False}, "spinning", "runtime auto runs an .xml IR on openvino"),
    ({"path": "line/model.XML", "graph_optimization": "basic", "execution_mode": "parallel"},
     "execution_mode, graph_optimization", "runtime auto runs an .xml IR on openvino"),
    ({"path": "line/int8.onnx", "fallback_path": "line/fp32.xml", "providers": ["CPUExecutionProvider"]},
     "providers", "runtime auto runs an .xml IR on openvino"),
    ({"runtime": "openvino", "path": "line/model.onnx", "spinning": True}, "spinning", "runtime is openvino"),
])
def test_onnxruntime_settings_are_refused_for_a_file_that_runs_on_openvino(model, refused, why):
    """OpenVINO would ignore them without a word: `auto` on an IR is no exception."""
    with pytest.raises(ConfigError) as info:
        parse_config(merge_config(GOOD, {"model": model}))
    message = str(info.value)
    assert f"model: Value error, {refused}: onnxruntime-only settings, but line/" in message
    assert f"runs on openvino ({why}), which would ignore them" in message


@pytest.mark.parametrize("model", [
    {"path": "line/model.onnx", "spinning": False, "providers": ["CPUExecutionProvider"]},  # auto: onnxruntime
    {"path": "line/model.xml", "threads": 2},  # threads apply to both runtimes
    {"path": "line/model.xml", "fallback_path": "line/fp32.onnx"},
    {"spinning": False},  # the bundled .onnx, on onnxruntime
])
def test_settings_that_apply_are_accepted(model):
    assert parse_config(merge_config(GOOD, {"model": model})).model.model_fields_set == set(model)


def test_an_ir_named_by_edge_inspect_model_counts_as_the_served_file(monkeypatch):
    monkeypatch.setenv("EDGE_INSPECT_MODEL", "line/model.xml")
    with pytest.raises(ConfigError, match="spinning: onnxruntime-only settings, but line/model.xml runs on openvino"):
        parse_config(merge_config(GOOD, {"model": {"spinning": False}}))


def test_one_rule_decides_the_runtime():
    """The config and the runtimes agree on what an IR is: one function, not two copies."""
    from device import config, runtimes

    assert config.resolve_runtime is runtimes.resolve_runtime
    assert runtimes.resolve_runtime("auto", "m.XML") == "openvino" == runtimes.resolve_runtime("openvino", "m.onnx")
    assert runtimes.resolve_runtime("auto", "m.onnx") == "onnxruntime"
