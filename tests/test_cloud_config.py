"""The cloud configuration's labeling sections: a mistake is one line that names the key."""

from __future__ import annotations

import pytest

from cloud.settings import parse_cloud_config
from device.config import ConfigError

STORE = {"backend": "local", "local": {"path": "/tmp/labels"}}
STORAGE = {"bucket": "plant-frames", "prefix": "edge-inspect"}


def labeling(**extra):
    return {"backend": "replay", "state_path": "/tmp/state.sqlite",
            "replay": {"table": "labels.csv", "images": "."}, **extra}


def test_a_complete_on_site_configuration_parses():
    config = parse_cloud_config({"storage": STORAGE, "labeling": labeling(batch_size=10), "label_store": STORE})
    assert config.labeling.batch_size == 10 and config.storage.raw_prefix == "edge-inspect/raw/"


@pytest.mark.parametrize(("data", "expected"), [
    ({"labeling": labeling(), "label_store": STORE}, "needs the `storage` section"),
    ({"storage": STORAGE, "labeling": {**labeling(), "replay": None}, "label_store": STORE},
     "backend is replay but the `replay` section is missing"),
    ({"storage": STORAGE, "labeling": labeling(backend="mechanical_turk"), "label_store": STORE}, "labeling.backend"),
    ({"storage": STORAGE, "labeling": labeling(batch_size=0), "label_store": STORE}, "labeling.batch_size"),
    ({"storage": {**STORAGE, "bucket": "Bad_Bucket"}, "labeling": labeling(), "label_store": STORE}, "storage.bucket"),
    ({"storage": {**STORAGE, "prefix": "a/../b"}, "labeling": labeling(), "label_store": STORE}, "storage.prefix"),
    ({"storage": STORAGE, "labeling": labeling(batch_sise=5), "label_store": STORE}, "labeling.batch_sise"),
    ({"storage": STORAGE, "broker": {"port": 0}, "label_store": STORE}, "broker.port"),
])
def test_mistakes_name_the_key(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_cloud_config(data)
    assert expected in str(error.value)


def test_the_broker_password_never_appears_in_an_error():
    with pytest.raises(ConfigError) as error:
        parse_cloud_config({"storage": STORAGE, "label_store": STORE,
                            "broker": {"username": "u", "password": "hunter2-secret", "port": "x"}})
    assert "hunter2-secret" not in str(error.value) and "broker.port" in str(error.value)


PIPELINE = {"state_path": "/tmp/runs.sqlite", "work_dir": "/tmp/runs",
            "registry": {"backend": "mlflow", "mlflow": {"path": "/tmp/registry"}}}
LINES = {"lines": [{"thing": "line-1", "model_path": "/opt/l1/model.onnx"},
                   {"thing": "line-2", "model_path": "/opt/l2/model.onnx"}]}


def deploy(**extra):
    return {"backend": "local", "state_path": "/tmp/d.sqlite", "work_dir": "/tmp/ship", "canary": ["line-1"],
            "gate_labels": "labels.csv", "local": LINES, **extra}


def test_an_on_site_deployment_parses():
    config = parse_cloud_config({"label_store": STORE, "pipeline": PIPELINE, "broker": {}, "deploy": deploy()})
    assert config.deploy.gate.match_iou == 0.9 and config.deploy.gate.max_mean_score_diff == 0.05


@pytest.mark.parametrize(("data", "expected"), [
    ({"pipeline": PIPELINE, "deploy": deploy()}, "deploy on site needs the `broker` section"),
    ({"broker": {}, "deploy": deploy()}, "deploy needs the `pipeline` section"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(canary=["line-9"])}, "not in deploy.local.lines: line-9"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(canary=["line-1", "line-2"])}, "every line is a canary"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(gate_labels=None)}, "quantize is on but gate_labels"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(backend="greengrass")},
     "backend is greengrass but the `greengrass` section is missing"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(local={"lines": [{"thing": "../x", "model_path": "m"}]})},
     "deploy.local.lines.0.thing"),
    ({"pipeline": PIPELINE, "broker": {}, "deploy": deploy(promotion={"min_ratio": 2})}, "deploy.promotion.min_ratio"),
])
def test_deployment_mistakes_name_the_key(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_cloud_config({"label_store": STORE, **data})
    assert expected in str(error.value)
