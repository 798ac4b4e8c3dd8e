"""The configured labeling loop: the backend chosen by `labeling.backend`, over the configured
bucket, label store and production model. The one place that knows every backend's name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud.ingest.frames import read_frame
from cloud.ingest.state import LabelingState
from cloud.labeling.loop import BatchRules, LabelingLoop
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.service import LabelingService
from cloud.labels.store import open_label_store
from cloud.storage import ObjectStore
from device.bundled import bundled_model_path

if TYPE_CHECKING:
    from cloud.settings import CloudConfig


def open_labeling_service(config: CloudConfig, store: ObjectStore) -> LabelingService:
    settings = config.labeling
    if settings.backend == "replay":
        from cloud.labeling.replay import ReplayLabeling

        return ReplayLabeling(settings.replay, read_frame=lambda bucket, key: read_frame(store, key))
    if settings.backend == "label_studio":
        from cloud.labeling.label_studio import LabelStudioLabeling

        ls = settings.label_studio
        return LabelStudioLabeling(ls, image_url=lambda bucket, key: store.presigned_url(key, ls.url_expiry_s))
    import boto3

    from cloud.labeling.ground_truth import GroundTruthLabeling

    return GroundTruthLabeling.from_session(settings.ground_truth, boto3.Session(region_name=config.region))


def open_labeling_loop(config: CloudConfig) -> LabelingLoop:
    settings = config.labeling
    store = ObjectStore.from_settings(config.storage)
    prelabeler = PreLabeler(settings.prelabels.model or bundled_model_path(), settings.prelabels.conf)
    return LabelingLoop(LabelingState(settings.state_path), store, prelabeler, open_labeling_service(config, store),
                        labels=open_label_store(config.label_store, config.region),
                        rules=BatchRules(settings.batch_size, settings.max_wait_minutes * 60))
