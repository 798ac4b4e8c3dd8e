"""The template's parameters, and how `cloud infra` fills them from cloud.yaml.

Each field is one CloudFormation parameter (its name in CamelCase), with the field's pattern as
the parameter's AllowedPattern: a value that cloud.yaml refuses, the stack refuses too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.settings import CloudConfig

_BUCKET = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
# no segment starts with a dot: `..` or `.` would climb out of the folder the policies grant
_PREFIX = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$"
_NAME = r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$"


class InfraParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket_name: str = Field(pattern=_BUCKET, description="the product's bucket: frames, labeling, pipeline, "
                                                          "registry and component artifacts, each under its prefix")
    frames_prefix: str = Field("edge-inspect", pattern=_PREFIX, description="the devices' upload.prefix")
    raw_frames_days: int = Field(90, ge=1, le=3650, description="sampled frames expire after this many days")
    object_lock_days: int = Field(0, ge=0, le=3650, description="S3 Object Lock (governance): no object version is "
                                  "deleted for this many days; 0 is off; chosen when the bucket is created")
    topic_prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
                              description="the devices' mqtt.topic_prefix")
    model_group: str = Field("metal-tags", pattern=_NAME, description="the model package group")
    registry_prefix: str = Field("edge-inspect/models", pattern=_PREFIX)
    pipeline_name: str = Field("edge-inspect-retraining", pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,255}$")
    pipeline_prefix: str = Field("edge-inspect/pipeline", pattern=_PREFIX)
    config_prefix: str = Field("edge-inspect/config", pattern=_PREFIX, description="cloud.yaml for the jobs")
    photos_prefix: str = Field("edge-inspect/photos", pattern=_PREFIX, description="photos label rows name")
    labeling_prefix: str = Field("edge-inspect/labeling", pattern=_PREFIX, description="Ground Truth manifests")
    feature_group: str = Field("edge-inspect-labels", pattern=r"^[a-z0-9](-*[a-z0-9]){0,63}$",
                               description="the label store's feature group (lower case: IAM matches its ARN)")
    offline_store_prefix: str = Field("edge-inspect/label-store", pattern=_PREFIX)
    athena_prefix: str = Field("edge-inspect/athena", pattern=_PREFIX, description="Athena query results")
    job_name_prefix: str = Field("edge-inspect", pattern=r"^[a-z0-9](-?[a-z0-9]){0,19}$",
                                 description="Ground Truth job names start with it")
    workteam_name: str = Field("edge-inspect-labelers", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
                               description="the PRIVATE work team that labels (factory images stay in house)")
    component_name: str = Field("com.edgeinspect.Model", pattern=r"^[A-Za-z0-9._-]{1,128}$")
    component_prefix: str = Field("edge-inspect/components", pattern=_PREFIX)
    canary_thing_group: str = Field("edge-inspect-canary", pattern=r"^[A-Za-z0-9:_-]{1,128}$")
    fleet_thing_group: str = Field("edge-inspect-fleet", pattern=r"^[A-Za-z0-9:_-]{1,128}$")
    fleet_table: str = Field("edge-inspect-fleet", pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    fleet_days: int = Field(30, ge=1, le=3650, description="device messages are kept this long in the fleet table")
    image_repository: str = Field("edge-inspect", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$",
                                  description="the ECR repository of the edge-inspect image (handlers and jobs)")
    image_tag: str = Field("latest", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    log_days: int = Field(365, description="retention of the state machines' and handlers' logs")

    def cfn(self) -> dict[str, Any]:
        """The Parameters section, each default the value filled in."""
        out = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            spec: dict[str, Any] = {"Type": "Number" if isinstance(value, int) else "String",
                                    "Default": value if isinstance(value, int) else str(value)}
            if field.description:
                spec["Description"] = field.description
            for meta in field.metadata:
                if getattr(meta, "pattern", None):
                    spec["AllowedPattern"] = meta.pattern
                if getattr(meta, "ge", None) is not None:
                    spec["MinValue"] = meta.ge
                if getattr(meta, "le", None) is not None:
                    spec["MaxValue"] = meta.le
            if name == "topic_prefix":
                # the fleet rule's SQL counts the prefix's levels when the template is generated: another
                # prefix needs another template (`cloud infra` with the new mqtt prefix), not a new value
                spec["AllowedValues"] = [value]
            if name == "log_days":  # CloudWatch accepts only these
                spec["AllowedValues"] = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653]
            out[camel(name)] = spec
        return out


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _s3_prefix(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def _lower_case(feature_group: str) -> str:
    if feature_group != feature_group.lower():
        raise ValueError(f"feature group {feature_group!r}: the template needs a lower-case name (feature group "
                         "ARNs are lower case, and the IAM statements match them)")
    return feature_group


def from_config(config: CloudConfig) -> InfraParameters:
    """The parameters cloud.yaml implies; what it does not say keeps the default. Refuses a
    configuration that spreads the product over several buckets: the template makes one."""
    values: dict[str, Any] = {}
    buckets: dict[str, str] = {}
    if config.storage is not None:
        buckets["storage.bucket"] = config.storage.bucket
        values["frames_prefix"] = config.storage.prefix
    if config.broker is not None:
        values["topic_prefix"] = config.broker.topic_prefix
    store = config.label_store
    if store.feature_store is not None:
        values["feature_group"] = _lower_case(store.feature_store.feature_group_name)
        bucket, values["offline_store_prefix"] = _s3_prefix(store.feature_store.offline_store_s3_uri)
        buckets["label_store.feature_store.offline_store_s3_uri"] = bucket
        bucket, values["athena_prefix"] = _s3_prefix(store.feature_store.athena_output_s3_uri)
        buckets["label_store.feature_store.athena_output_s3_uri"] = bucket
    elif store.local is not None:
        values["feature_group"] = _lower_case(store.local.feature_group)
    gt = config.labeling.ground_truth if config.labeling else None
    if gt is not None:
        bucket, values["labeling_prefix"] = _s3_prefix(gt.manifest_s3_uri)
        buckets["labeling.ground_truth.manifest_s3_uri"] = bucket
        values["job_name_prefix"] = gt.job_name_prefix
        values["workteam_name"] = gt.workteam_arn.rsplit("/", 1)[-1]
    if config.pipeline is not None:
        values["model_group"] = config.pipeline.params.model_group
        registry = config.pipeline.registry.sagemaker
        if registry is not None:
            buckets["pipeline.registry.sagemaker.bucket"] = registry.bucket
            values["registry_prefix"] = registry.prefix
        sm = config.pipeline.sagemaker
        if sm is not None:
            buckets["pipeline.sagemaker.bucket"] = sm.bucket
            values["pipeline_name"], values["pipeline_prefix"] = sm.name, sm.prefix
            if sm.photos_s3_uri:
                bucket, values["photos_prefix"] = _s3_prefix(sm.photos_s3_uri)
                buckets["pipeline.sagemaker.photos_s3_uri"] = bucket
            bucket, values["config_prefix"] = _s3_prefix(sm.config_s3_prefix)
            buckets["pipeline.sagemaker.config_s3_prefix"] = bucket
            repository, _, tag = sm.image_uri.split("/", 1)[1].partition(":")
            values["image_repository"] = repository.split("@")[0]
            if tag:
                values["image_tag"] = tag
    gg = config.deploy.greengrass if config.deploy else None
    if gg is not None:
        buckets["deploy.greengrass.bucket"] = gg.bucket
        values.update(component_name=gg.component_name, component_prefix=gg.prefix, fleet_table=gg.fleet_table,
                      canary_thing_group=gg.canary_thing_group, fleet_thing_group=gg.fleet_thing_group)
    distinct = sorted(set(buckets.values()))
    if len(distinct) > 1:
        named = "; ".join(f"{where}: {bucket}" for where, bucket in sorted(buckets.items()))
        raise ValueError(f"the template makes one bucket, but the configuration names {len(distinct)} ({named})")
    if not distinct:
        raise ValueError("the configuration names no bucket (storage.bucket): the template needs its name")
    return InfraParameters(bucket_name=distinct[0], **values)
