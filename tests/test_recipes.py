"""Greengrass recipes: valid against the GDK CLI's schema (keys lower-cased first, as Greengrass
and the GDK do), default configuration valid for the daemon, least-privilege access control."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO, SHARED
from device.config import parse_config
from device.daemon import strip_greengrass_keys

RECIPES = sorted((REPO / "greengrass_recipes").glob("*/recipe.yaml"))
SPEC = SHARED / "spec"


def lower_keys(value):
    if isinstance(value, dict):
        return {str(k).lower(): lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_are_two_components():
    assert [p.parent.name for p in RECIPES] == ["com.edgeinspect.Inference", "com.edgeinspect.Model"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_matches_the_greengrass_schema(recipe):
    schema = json.loads((SPEC / "greengrass-recipe.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(lower_keys(load(recipe)))
    assert load(recipe)["ComponentName"] == recipe.parent.name


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_gdk_config_matches_its_schema(recipe):
    schema = json.loads((SPEC / "gdk-config.schema.json").read_text())
    gdk = json.loads((recipe.parent / "gdk-config.json").read_text())
    jsonschema.Draft7Validator(schema).validate(gdk)
    assert list(gdk["component"]) == [recipe.parent.name]


def inference() -> dict:
    return load(REPO / "greengrass_recipes" / "com.edgeinspect.Inference" / "recipe.yaml")


def test_default_configuration_passes_the_daemons_validation():
    defaults = inference()["ComponentConfiguration"]["DefaultConfiguration"]
    config = parse_config(strip_greengrass_keys(defaults), "recipe")
    assert config.transport == "greengrass"
    assert config.model.path == Path("/greengrass/v2/work/com.edgeinspect.Model/model.onnx")
    enabled = parse_config({**strip_greengrass_keys(defaults), "active_learning": {
        **defaults["active_learning"], "enabled": True, "upload": {"bucket": "plant-frames"}}}, "recipe")
    assert [s.name for s in enabled.active_learning.strategies] == ["near-threshold", "low-score", "random"]


def test_access_control_is_exactly_the_topics_the_daemon_publishes():
    defaults = inference()["ComponentConfiguration"]["DefaultConfiguration"]
    config = parse_config(strip_greengrass_keys(defaults), "recipe")
    policies = defaults["accessControl"]["aws.greengrass.ipc.mqttproxy"]
    resources = [r for policy in policies.values() for r in policy["resources"]]
    operations = {op for policy in policies.values() for op in policy["operations"]}
    assert operations == {"aws.greengrass#PublishToIoTCore"}
    root = f"{config.mqtt.topic_prefix}/{{iot:thingName}}"
    expected = {f"{root}/{s}" for s in ("events", "stats", "errors", "available", "samples")}
    expected |= {f"{root}/{camera.id}/status" for camera in config.cameras}
    assert set(resources) == expected
    everything = json.dumps(defaults["accessControl"])
    assert not re.search(r"[*#+]", everything.replace("aws.greengrass#", "")), "no wildcards in access control"


def test_depends_on_token_exchange_and_the_model_component():
    deps = inference()["ComponentDependencies"]
    assert deps["aws.greengrass.TokenExchangeService"]["DependencyType"] == "HARD"
    assert deps["com.edgeinspect.Model"]["DependencyType"] == "SOFT"


def test_install_builds_a_venv_from_pinned_device_dependencies_only():
    install = inference()["Manifests"][0]["Lifecycle"]["Install"]["Script"]
    assert "python3 -m venv" in install and "requirements-device.txt" in install and "--no-deps" in install
    lines = [line.strip() for line in (REPO / "greengrass_recipes" / "com.edgeinspect.Inference" /
             "requirements-device.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", line) for line in lines), lines
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert not names & {"torch", "torchvision", "ultralytics", "opencv-python"}
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in base:
        name = re.split(r"[<>=!~\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in names, f"{name} is a device dependency but is not pinned for Greengrass"


def test_model_component_installs_by_atomic_rename():
    model = load(REPO / "greengrass_recipes" / "com.edgeinspect.Model" / "recipe.yaml")
    script = model["Manifests"][0]["Lifecycle"]["Install"]["Script"]
    assert script.index("model.card.json") < script.index("/model.onnx")
    assert "mv -f {work:path}/.model.onnx.tmp {work:path}/model.onnx" in script
