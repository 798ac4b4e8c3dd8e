"""The label store's interface. Implementations: `local.LocalLabelStore` (on site) and
`feature_store.FeatureStoreLabelStore` (AWS); `open_label_store` picks one from the configuration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from cloud.label_table import LabelRecord
from cloud.labels.versions import LabelVersion

if TYPE_CHECKING:
    from cloud.settings import LabelStoreSettings


class LabelStoreError(RuntimeError):
    """The label store cannot do what was asked; the message says which call and why."""


class LabelStore(Protocol):
    def append(self, versions: Iterable[LabelVersion]) -> int:
        """Keep these versions (never overwriting one); returns how many were written."""
        ...

    def as_of(self, as_of: float) -> list[LabelRecord]:
        """The dataset as of `as_of` (seconds since the epoch): see `as_of.as_of_sql`."""
        ...

    def history(self, source_ref: str) -> list[LabelVersion]:
        """Every version of one image, oldest first."""
        ...


def open_label_store(settings: LabelStoreSettings, region: str | None = None) -> LabelStore:
    """The configured backend: on site, the local store; on AWS, Feature Store (its feature group
    created if missing)."""
    if settings.backend == "local":
        from cloud.labels.local import LocalLabelStore

        return LocalLabelStore(settings.local.path, settings.local.feature_group)
    import boto3

    from cloud.labels.feature_store import FeatureStoreLabelStore

    store = FeatureStoreLabelStore.from_session(settings.feature_store, boto3.Session(region_name=region))
    store.ensure_feature_group()
    return store
