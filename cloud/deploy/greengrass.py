"""AWS: a `com.edgeinspect.Model` component version per registry version, deployed to the canary
thing group, then the fleet group.

- Artifacts (the model and its card, which carries the signature when the cloud signs) go to S3
  under content-addressed keys (`{prefix}/{component}/{sha256}/{file}`): a file is uploaded once,
  whichever version ships it. A key is not trusted by its name: an object already there is reused
  only when its stored SHA-256 (else its bytes, read back) is the file's; S3 checks each upload
  against the digest sent with it.
- The recipe is the repository's `greengrass_recipes/com.edgeinspect.Model/recipe.yaml` with the
  version and each artifact's URI and SHA-256 digest (which the nucleus checks on download) filled
  in, in every manifest (an edited base recipe cannot keep an artifact of its own), checked against
  the recipe schema, and created inline (`create_component_version`).
- A thing group has one deployment: a new one replaces it whole. So the new deployment is the
  group's current one with the model component's version changed (the inference component and
  anything else stay), and rollback redeploys the current one as it was.
- Each artifact is read once (`Artifact`): the model's bytes are checked against the shipment's
  sha256 and the card's `model_sha256`, and those same bytes are hashed, named and uploaded.
- Deployment policies: ROLLBACK on failure, NOTIFY_COMPONENTS (the daemon swaps at a frame
  boundary), and an IoT job rollout rate and abort rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloud.aws import AwsError, aws_call
from cloud.settings import CloudConfig
from device.signing import SignatureError, parse_card

from .deployer import DeployError, StageDeployment
from .fleet_store import DynamoFleetStore
from .settings import GreengrassDeploySettings, Stage
from .shipping import Shipment

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
BASE_RECIPE = REPO / "greengrass_recipes" / "com.edgeinspect.Model" / "recipe.yaml"
RECIPE_SCHEMA = REPO / "greengrass_recipes" / "spec" / "greengrass-recipe.schema.json"
MODEL, CARD = "model.onnx", "model.card.json"


def component_version(registry_version: str) -> str:
    """Registry versions are 1, 2, 3...; a component version is semantic: 1.0.N."""
    if not registry_version.isdigit():
        raise DeployError(f"registry version {registry_version!r} is not a number")
    return f"1.0.{int(registry_version)}"


def _lower_keys(value: Any) -> Any:
    # Greengrass reads recipe keys case-insensitively; the GDK's schema is written in lower case
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return [_lower_keys(v) for v in value] if isinstance(value, list) else value


def check_recipe(recipe: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(RECIPE_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(_lower_keys(recipe)), key=str)
    if errors:
        raise DeployError(f"the generated recipe fails the Greengrass recipe schema: {errors[0].message}")


@dataclass(frozen=True)
class Artifact:
    """One file of a component, read once: what is hashed is what is uploaded."""

    name: str
    data: bytes
    sha256: str  # hex

    @classmethod
    def read(cls, path: Path) -> Artifact:
        data = Path(path).read_bytes()
        return cls(Path(path).name, data, hashlib.sha256(data).hexdigest())

    @property
    def digest(self) -> str:
        """base64 of the SHA-256, as recipes and S3 checksums take it."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def shipment_artifacts(shipment: Shipment) -> list[Artifact]:
    """The card and the model, card first (the install script copies it first), each read once;
    refused unless the model's bytes are the shipment's sha256 and the card's model_sha256."""
    card, model = Artifact.read(shipment.card_file), Artifact.read(shipment.model_file)
    if model.sha256 != shipment.sha256:
        raise DeployError(f"{shipment.model_file} has sha256 {model.sha256[:12]}, but v{shipment.version} shipped "
                          f"{shipment.sha256[:12]}: the file changed after it was prepared; prepare the shipment again")
    try:
        named = parse_card(card.data).get("model_sha256")
    except SignatureError as exc:
        raise DeployError(f"{shipment.card_file}: {exc}") from None
    if named != model.sha256:
        raise DeployError(f"{shipment.card_file} names model sha256 {str(named)[:12]}, not {model.sha256[:12]} of "
                          f"{shipment.model_file.name}: the card and the model are not from one shipment")
    return [card, model]


def _hex(b64: str) -> str:
    try:
        return base64.b64decode(b64).hex()
    except ValueError:
        return "?"


def artifact_key(settings: GreengrassDeploySettings, artifact: Artifact) -> str:
    return f"{settings.prefix}/{settings.component_name}/{artifact.sha256}/{artifact.name}"


def make_recipe(settings: GreengrassDeploySettings, version: str, files: list[Artifact]) -> dict[str, Any]:
    recipe = yaml.safe_load(BASE_RECIPE.read_text())
    recipe["ComponentName"] = settings.component_name
    recipe["ComponentVersion"] = component_version(version)
    recipe["ComponentConfiguration"]["DefaultConfiguration"] = {"modelFile": MODEL, "cardFile": CARD}
    artifacts = [{"URI": f"s3://{settings.bucket}/{artifact_key(settings, f)}", "Digest": f.digest,
                  "Algorithm": "SHA-256", "Permission": {"Read": "OWNER"}} for f in files]
    manifests = recipe.get("Manifests") or []
    if not manifests:
        raise DeployError(f"{BASE_RECIPE.name} has no Manifests: nothing to put the model artifacts in")
    for manifest in manifests:  # every platform's manifest gets exactly these artifacts, nothing of its own
        manifest["Artifacts"] = [dict(a) for a in artifacts]
    check_recipe(recipe)
    _only_our_artifacts(settings, recipe)
    return recipe


def _only_our_artifacts(settings: GreengrassDeploySettings, recipe: dict[str, Any]) -> None:
    """Whatever the base recipe says (keys in any case), every artifact is one of ours, with a digest."""
    root = f"s3://{settings.bucket}/{settings.prefix}/{settings.component_name}/"
    for manifest in _lower_keys(recipe).get("manifests", []):
        for artifact in manifest.get("artifacts", []):
            uri = str(artifact.get("uri", ""))
            if not uri.startswith(root) or "/../" in uri or not artifact.get("digest"):
                raise DeployError(f"the generated recipe names artifact {uri!r} outside {root} (or without a "
                                  "digest): refused")


class DeployAwsError(AwsError, DeployError):
    pass


def _call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    return aws_call(client, operation, DeployAwsError, **params)


class GreengrassDeployer:
    def __init__(self, settings: GreengrassDeploySettings, greengrass: Any, iot: Any, s3: Any, sts: Any) -> None:
        self.settings, self.greengrass, self.iot, self.s3, self.sts = settings, greengrass, iot, s3, sts

    def _group(self, stage: Stage) -> str:
        return self.settings.canary_thing_group if stage == "canary" else self.settings.fleet_thing_group

    def things(self, stage: Stage) -> list[str]:
        things, token = [], None
        while True:
            page = _call(self.iot, "list_things_in_thing_group", thingGroupName=self._group(stage),
                         **({"nextToken": token} if token else {}))
            things += page.get("things", [])
            token = page.get("nextToken")
            if not token:
                break
        if stage == "fleet":  # a canary thing in both groups is judged once, with the canary
            canary = set(self.things("canary"))
            things = [t for t in things if t not in canary]
        return things

    def _upload(self, artifact: Artifact) -> None:
        key, digest = artifact_key(self.settings, artifact), artifact.digest
        # a listing of the key itself, not head_object: without ListBucket on the key a missing
        # object reads as 403, not 404
        found = _call(self.s3, "list_objects_v2", Bucket=self.settings.bucket, Prefix=key, MaxKeys=1)
        if any(o["Key"] == key for o in found.get("Contents", [])):
            self._check_existing(key, digest)
            return
        # no SSE header: the bucket's default encryption applies its own KMS key (the header alone
        # would pick the account's aws/s3 key instead). The digest makes S3 refuse other bytes.
        _call(self.s3, "put_object", Bucket=self.settings.bucket, Key=key, Body=artifact.data,
              ChecksumSHA256=digest)

    def _check_existing(self, key: str, digest: str) -> None:
        """An object already at a content address is reused only if it holds those bytes: its
        stored SHA-256 checksum, or (stored without one) its bytes read back."""
        bucket = self.settings.bucket
        stored = _call(self.s3, "head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED").get("ChecksumSHA256")
        if not stored or "-" in stored:  # none, or a multipart upload's checksum of checksums
            body = _call(self.s3, "get_object", Bucket=bucket, Key=key)["Body"]
            hasher = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                hasher.update(chunk)
            stored = base64.b64encode(hasher.digest()).decode()
        if stored != digest:
            raise DeployError(f"s3://{bucket}/{key} already holds other bytes (sha256 {_hex(stored)[:12]}) than its "
                              f"content address names ({_hex(digest)[:12]}): refused; find out who wrote it, delete "
                              "it, and deploy again")
        log.info("artifact s3://%s/%s already there with the same sha256", bucket, key)

    def create_component(self, shipment: Shipment) -> str:
        """Upload the artifacts and create the component version; returns its ARN."""
        files = shipment_artifacts(shipment)  # read once, checked against the shipment, uploaded as read
        recipe = make_recipe(self.settings, shipment.version, files)
        for f in files:
            self._upload(f)
        try:
            made = _call(self.greengrass, "create_component_version", inlineRecipe=json.dumps(recipe).encode(),
                         tags={"edge-inspect:model-sha256": shipment.sha256,
                               "edge-inspect:precision": shipment.precision})
        except DeployAwsError as exc:
            if exc.code != "ConflictException":
                raise
            return self._existing(recipe)
        log.info("component %s %s created (%s)", self.settings.component_name, recipe["ComponentVersion"], made["arn"])
        return made["arn"]

    def _existing(self, recipe: dict[str, Any]) -> str:
        """The version already exists: an approval delivered twice, or a flow retried after the
        create. The same model bytes mean the same shipment (done; its card may differ only in when
        it was stamped); another model is refused, since devices would report a sha256 the flow
        does not expect."""
        account = _call(self.sts, "get_caller_identity")["Account"]
        meta = self.greengrass.meta
        arn = (f"arn:{meta.partition}:greengrass:{meta.region_name}:{account}:components:"
               f"{recipe['ComponentName']}:versions:{recipe['ComponentVersion']}")
        got = _call(self.greengrass, "get_component", arn=arn, recipeOutputFormat="JSON")

        def model_digests(r: dict[str, Any]) -> list[str]:
            return sorted(a["digest"] for m in _lower_keys(r)["manifests"] for a in m.get("artifacts", [])
                          if str(a.get("uri", "")).endswith("/" + MODEL))

        if model_digests(json.loads(got["recipe"])) != model_digests(recipe):
            raise DeployError(f"{recipe['ComponentName']} {recipe['ComponentVersion']} already exists with another "
                              "model; the registry version cannot ship as two different models")
        log.info("component %s %s already made with these artifacts", recipe["ComponentName"],
                 recipe["ComponentVersion"])
        return arn

    def _current(self, target_arn: str) -> dict[str, Any]:
        """The group's deployment now: its components (empty when it has none)."""
        found = _call(self.greengrass, "list_deployments", targetArn=target_arn, historyFilter="LATEST_ONLY")
        deployments = found.get("deployments", [])
        if not deployments:
            return {}
        got = _call(self.greengrass, "get_deployment", deploymentId=deployments[0]["deploymentId"])
        return got.get("components", {})

    def _deploy(self, target_arn: str, name: str, components: dict[str, Any]) -> str:
        s = self.settings
        made = _call(self.greengrass, "create_deployment", targetArn=target_arn, deploymentName=name,
                     components=components,
                     iotJobConfiguration={
                         "jobExecutionsRolloutConfig": {"maximumPerMinute": s.max_concurrent_per_minute},
                         "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                                           "thresholdPercentage": s.abort_failure_percent,
                                                           "minNumberOfExecutedThings": 1}]},
                         "timeoutConfig": {"inProgressTimeoutInMinutes": 60}},
                     deploymentPolicies={
                         "failureHandlingPolicy": "ROLLBACK",
                         "componentUpdatePolicy": {"timeoutInSeconds": 60, "action": "NOTIFY_COMPONENTS"},
                         "configurationValidationPolicy": {"timeoutInSeconds": 60}})
        return made["deploymentId"]

    def _target_arn(self, stage: Stage) -> str:
        return _call(self.iot, "describe_thing_group", thingGroupName=self._group(stage))["thingGroupArn"]

    def deploy(self, shipment: Shipment, stage: Stage) -> StageDeployment:
        target = self._target_arn(stage)
        current = self._current(target)
        components = {**current, self.settings.component_name: {"componentVersion": component_version(shipment.version)}}
        deployment_id = self._deploy(target, f"edge-inspect model v{shipment.version} ({stage})", components)
        return StageDeployment(version=shipment.version, stage=stage, things=self.things(stage), sha256=shipment.sha256,
                               deployed_at=time.time(), deployment_id=deployment_id,
                               previous={target: json.dumps(current, sort_keys=True)})

    def rollback(self, deployment: StageDeployment) -> None:
        for target, components in deployment.previous.items():
            previous = json.loads(components)
            if self.settings.component_name not in previous:
                raise DeployError(f"{target} had no {self.settings.component_name} before v{deployment.version}: "
                                  "nothing to roll back to; deploy an earlier version instead")
            self._deploy(target, f"edge-inspect rollback of v{deployment.version} ({deployment.stage})", previous)
            log.info("rolled back %s to %s", target, previous[self.settings.component_name]["componentVersion"])


def open_greengrass(config: CloudConfig) -> tuple[GreengrassDeployer, DynamoFleetStore]:
    import boto3

    settings = config.deploy.greengrass if config.deploy else None
    if settings is None:
        raise DeployError("deploy.greengrass is missing from the cloud configuration")
    session = boto3.Session(region_name=config.region)
    deployer = GreengrassDeployer(settings, session.client("greengrassv2"), session.client("iot"), session.client("s3"),
                                  session.client("sts"))
    prefix = config.broker.topic_prefix if config.broker else "edge-inspect"
    return deployer, DynamoFleetStore(settings.fleet_table, session.client("dynamodb"), prefix)
