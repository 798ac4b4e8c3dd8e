"""Greengrass recipes: valid against the GDK CLI's schema (keys lower-cased first, as Greengrass
and the GDK do), default configuration valid for the daemon, least-privilege access control."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from conftest import REPO

from device.config import parse_config
from device.control import strip_greengrass_keys

RECIPES = sorted((REPO / "greengrass_recipes").glob("*/recipe.yaml"))
# The GDK CLI's recipe and gdk-config schemas (Apache-2.0) are not vendored: they sit beside the repo.
SPEC = REPO / "greengrass_recipes" / "spec"  # vendored from the GDK CLI (Apache-2.0, see its README)


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
    expected = {f"{root}/{s}" for s in ("events", "stats", "errors", "notices", "model", "available", "samples")}
    expected |= {f"{root}/{camera.id}/status" for camera in config.cameras}
    assert set(resources) == expected
    everything = json.dumps(defaults["accessControl"])
    assert not re.search(r"[*#+]", everything.replace("aws.greengrass#", "")), "no wildcards in access control"


def test_depends_on_token_exchange_and_the_model_component():
    deps = inference()["ComponentDependencies"]
    assert deps["aws.greengrass.TokenExchangeService"]["DependencyType"] == "HARD"
    assert deps["com.edgeinspect.Model"]["DependencyType"] == "SOFT"


DEVICE_REQUIREMENTS = REPO / "greengrass_recipes" / "com.edgeinspect.Inference" / "requirements-device.txt"


def device_requirements() -> dict[str, list[str]]:
    """`name==version` -> the options on its line (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DEVICE_REQUIREMENTS.read_text())
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            spec, *options = line.split(" #")[0].split()
            assert spec not in entries, f"{spec} twice"
            entries[spec] = options
    return entries


def test_install_builds_a_venv_from_pinned_device_dependencies_only():
    install = inference()["Manifests"][0]["Lifecycle"]["Install"]["Script"]
    assert "python3 -m venv" in install and "requirements-device.txt" in install and "--no-deps" in install
    lines = list(device_requirements())
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", line) for line in lines), lines
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert not names & {"torch", "torchvision", "ultralytics", "opencv-python"}
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in base:
        name = re.split(r"[<>=!~\[ ]", requirement)[0].lower().replace("_", "-")
        assert name in names, f"{name} is a device dependency but is not pinned for Greengrass"


def test_device_requirements_are_hashed_and_installed_with_require_hashes():
    entries = device_requirements()
    assert len(entries) >= 10
    for spec, options in entries.items():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+!-]*", spec), f"{spec}: not name==version"
        assert options, f"{spec}: no --hash"
        for option in options:
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option), f"{spec}: {option} is not a sha256 hash"
    commands = [c.strip() for c in inference()["Manifests"][0]["Lifecycle"]["Install"]["Script"].split("&&")]
    from_requirements = [c for c in commands if "-r {artifacts:path}/requirements-device.txt" in c]
    assert len(from_requirements) == 1 and "pip install" in from_requirements[0]
    assert "--require-hashes" in from_requirements[0].split(), "the pinned dependencies must be hash-checked"
    wheel = [c for c in commands if c.endswith(".whl")]
    assert len(wheel) == 1 and "--no-deps" in wheel[0].split(), "the wheel must not pull unhashed dependencies"
    pip_installs = [c for c in commands if "pip install" in c]
    assert pip_installs == from_requirements + wheel, "no other pip install in the Install step"


def test_model_component_installs_by_atomic_rename():
    model = load(REPO / "greengrass_recipes" / "com.edgeinspect.Model" / "recipe.yaml")
    script = model["Manifests"][0]["Lifecycle"]["Install"]["Script"]
    assert script.index("model.card.json") < script.index("/model.onnx")
    assert "mv -f {work:path}/.model.onnx.tmp {work:path}/model.onnx" in script


def test_per_thing_iam_scoping_uses_the_credentials_provider_variable():
    """The token exchange role's policy is an IAM policy: `${credentials-iot:ThingName}` resolves in
    it (credentials from the AWS IoT credentials provider, thing name sent), while
    `${iot:Connection.Thing.ThingName}` is an AWS IoT Core policy variable IAM does not resolve."""
    readme = (REPO / "README.md").read_text()
    assert "arn:aws:s3:::plant-frames/edge-inspect/raw/${credentials-iot:ThingName}/*" in readme
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    iot_variable = "${" + "iot:"
    wrong = []
    for name in listed:
        path = REPO / name
        if path.suffix not in {".md", ".json", ".yaml", ".yml", ".py", ".txt"} or path.name == Path(__file__).name:
            continue
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # an IoT variable in a resource path that is not an AWS IoT Core resource (arn:aws:iot:...)
        for span in re.findall(r"[`\"]([^`\"\n]*/\$\{iot:[^`\"\n]*)[`\"]", text):
            if "arn:aws:iot:" not in span:
                wrong.append(f"{name}: {span}")
    assert not wrong, wrong
    assert iot_variable + "Connection.Thing.ThingName}/" not in readme
