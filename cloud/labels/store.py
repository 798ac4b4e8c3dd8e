"""The label store's interface. Implementations: `local.LocalLabelStore` (on site) and
`feature_store.FeatureStoreLabelStore` (AWS); `open_label_store` picks one from the configuration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from cloud.label_table import LabelRecord
from cloud.labels.versions import LabelVersion

if TYPE_CHECKING:
    from cloud.labels.rules import SetAside
    from cloud.settings import LabelStoreSettings


class LabelStoreError(RuntimeError):
    """The label store cannot do what was asked; the message says which call and why."""


class LabelStore(Protocol):
    set_aside: list[SetAside]
    """The stored rows the last `as_of` or `history` left out, each with its reason (rules.py)."""

    def append(self, versions: Iterable[LabelVersion]) -> int:
        """Keep these versions (never overwriting one); returns how many were written. Every
        version is checked first (rules.check_versions): one that fails writes nothing and raises
        `rules.InvalidLabelRow`."""
        ...

    def as_of(self, as_of: float) -> list[LabelRecord]:
        """The dataset as of `as_of` (seconds since the epoch): see `as_of.as_of_sql`. When the
        version chosen for an image is a stored row that fails the rules, that image is left out
        and the row is in `set_aside`."""
        ...

    def history(self, source_ref: str) -> list[LabelVersion]:
        """Every version of one image, oldest first (bad stored rows in `set_aside`)."""
        ...

    def known(self, prefix: str) -> list[LabelVersion]:
        """Per image whose source_ref starts with `prefix`: its latest APPROVED version, else its
        latest version of any status; one query over the whole store (known.known_sql)."""
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
