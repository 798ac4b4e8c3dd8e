"""The only place that knows the registry backends' names."""

from __future__ import annotations

from cloud.registry.registry import ModelRegistry
from cloud.settings import RegistrySettings


def open_registry(settings: RegistrySettings, group: str, region: str | None = None) -> ModelRegistry:
    if settings.backend == "mlflow":
        from cloud.registry.mlflow_registry import MlflowRegistry

        return MlflowRegistry(settings.mlflow.path, group)
    from cloud.registry.sagemaker_registry import SageMakerRegistry

    return SageMakerRegistry.from_settings(settings.sagemaker, group, region)
