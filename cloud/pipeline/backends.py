"""Wiring the on-site pipeline from cloud.yaml: registry, label store, image sources, runs."""

from __future__ import annotations

from typing import Any

from cloud.labels.store import open_label_store
from cloud.pipeline.images import TrainingImages
from cloud.pipeline.onsite import OnSite
from cloud.pipeline.params import PipelineParams
from cloud.pipeline.runs import RunStore
from cloud.registry.backends import open_registry
from cloud.registry.bundled import seed_bundled
from cloud.settings import CloudConfig, PipelineSettings
from cloud.storage import ObjectStore


class PipelineConfigError(ValueError):
    pass


def pipeline_settings(config: CloudConfig) -> PipelineSettings:
    if config.pipeline is None:
        raise PipelineConfigError("the cloud configuration has no `pipeline` section: nothing to train with")
    return config.pipeline


def open_onsite(config: CloudConfig) -> OnSite:
    settings = pipeline_settings(config)
    registry = open_registry(settings.registry, settings.params.model_group, config.region)
    if settings.seed_bundled:
        seed_bundled(registry)
    bucket = ObjectStore.from_settings(config.storage) if config.storage else None
    return OnSite(registry=registry, store=open_label_store(config.label_store, config.region),
                  images=TrainingImages(settings.photos, bucket), runs=RunStore(settings.state_path),
                  work_dir=settings.work_dir)


def with_overrides(params: PipelineParams, overrides: list[str]) -> PipelineParams:
    """`train.epochs=5`, `gate.tolerance=0.02`, `train.hyperparameters={"lr0": 0.02}`: values are
    JSON (bare words are strings); the result is validated like the file, errors name the key."""
    import json

    data: dict[str, Any] = params.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PipelineConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise PipelineConfigError(f"--param {key}: {part!r} is not a section of the pipeline parameters")
            node = node[part]
        if leaf not in node:
            raise PipelineConfigError(f"--param {key}: no such parameter")
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = raw  # a text field keeps the text as given (a salt of "7" stays "7")
        node[leaf] = value
    return PipelineParams.model_validate(data)
