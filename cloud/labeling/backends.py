"""The configured labeling loop: the backend chosen by `labeling.backend`, over the configured
bucket, label store and production model. The one place that knows every backend's name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud.ingest.frames import read_frame
from cloud.ingest.state import LabelingState, state_exists
from cloud.ingest.state_lock import StateLock
from cloud.labeling.loop import BatchRules, LabelingLoop
from cloud.labeling.prelabels import PreLabeler
from cloud.labeling.rebuild import refuse_lost_state
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


def open_labeling_loop(config: CloudConfig, rebuild: bool = False, who: str = "cloud serve") -> LabelingLoop:
    """The loop over the configured parts, holding the state file's lock for the life of the
    process (one loop per state file: a second is refused with the holder's pid). Where no state
    file exists, the label store is asked first whether this bucket's frames have rows already (a
    lost file is refused: cloud.labeling.rebuild). The state is probed for a write: a loop that
    cannot write is refused now. `rebuild`: a state file that cannot be used is kept aside and
    rebuilt (`LabelingLoop.rebuild_from_labels`, which the caller runs). Raises StateFull while the
    state's disk is full (the caller waits and tries again: cloud.labeling.serve.open_waiting)."""
    settings = config.labeling
    lock = StateLock(settings.state_path).acquire(who)
    try:  # a start that fails leaves no lock behind (a retry in this process would meet its own)
        store = ObjectStore.from_settings(config.storage)
        labels = open_label_store(config.label_store, config.region)
        if not rebuild and not state_exists(settings.state_path):
            refuse_lost_state(settings.state_path, labels, config.storage)
        state = LabelingState(settings.state_path, rebuild=rebuild)
        try:
            state.probe_write()
        except BaseException:
            state.close()
            raise
    except BaseException:
        lock.release()
        raise
    state.lock = lock
    prelabeler = PreLabeler(settings.prelabels.model or bundled_model_path(), settings.prelabels.conf)
    return LabelingLoop(state, store, prelabeler, open_labeling_service(config, store), labels=labels,
                        rules=BatchRules(settings.batch_size, settings.max_wait_minutes * 60))
