"""A labeling state filled from the label store, so that no frame with a label row goes to
labelers again; and the check that keeps a lost state file from passing for a first start.

Both ask the store one question for the whole bucket (`LabelStore.known`, one query: on AWS one
Athena run, not one per frame):
- `refuse_lost_state`: no state file, but the store holds rows for this bucket's frames (a volume
  not mounted at boot, a changed `labeling.state_path`, a container without its folder): starting
  afresh would send every one of them to labelers again, so the start is refused with the fix;
- `rebuild`: a frame with an APPROVED row is `labelled`; one with only other rows (PENDING: its
  batch was lost with the old state) is set aside with that reason; frames with no row are left
  to the next listing. On a sound state (an older backup restored) the same pass marks labelled
  the frames it still had pending or batched that the store holds as approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.ingest.state import LabelingState, PendingFrame, StateMissing
from cloud.label_table import APPROVED
from cloud.labels.store import LabelStore
from cloud.labels.versions import LabelVersion
from cloud.storage import RAW_KEY, StorageSettings

UNAPPROVED = ("rebuilt from the label store: it has label rows but none APPROVED, and its batch was lost with the "
              "old state file; label it again by hand if it is needed")


@dataclass(frozen=True)
class Rebuilt:
    labelled: int = 0  # frames with an APPROVED label row: known, never batched again
    set_aside: int = 0  # frames with label rows but none APPROVED (their batch was lost with the state)
    marked: int = 0  # frames the state still had pending or batched, now labelled (a sound state reconciled)


def _frame(version: LabelVersion, prefix: str, seen: float) -> PendingFrame | None:
    """The frame a row's source_ref names, if it is a frame key of this bucket's layout (rows
    imported from a label table name photos instead)."""
    match = RAW_KEY.match(version.record.source_ref)
    if not match or match["prefix"] != prefix:
        return None
    r = version.record
    return PendingFrame(match["sha256"], r.source_ref, match["thing"], match["camera"], r.image_width, r.image_height,
                        seen)


def _frames(labels: LabelStore, storage: StorageSettings, seen: float) -> list[tuple[PendingFrame, bool]]:
    """(frame, has an APPROVED row) for every frame of this bucket the store holds rows for."""
    found = []
    for version in labels.known(storage.raw_prefix):
        frame = _frame(version, storage.prefix, seen)
        if frame is not None:
            found.append((frame, version.record.status == APPROVED and not version.deleted))
    return found


def refuse_lost_state(path: Path, labels: LabelStore, storage: StorageSettings) -> None:
    """Called where no state file exists: a first start passes; a lost state raises StateMissing."""
    frames = _frames(labels, storage, 0.0)
    if frames:
        raise StateMissing(
            f"no labeling state at {path}, but the label store already holds label rows for {len(frames)} frames of "
            f"bucket {storage.bucket}: this is no first start, and starting afresh would send them to labelers "
            "again; fix `labeling.state_path` (is its volume mounted?), or run `edge-inspect cloud serve "
            "--rebuild-state` once to rebuild the state from the label store")


def rebuild(state: LabelingState, labels: LabelStore, storage: StorageSettings, now: float) -> Rebuilt:
    """Fill `state` from the store; a state marked `rebuilding` is marked done. Safe to run again."""
    found: dict[str, tuple[PendingFrame, str, str | None]] = {}
    for frame, approved in _frames(labels, storage, now):
        if found.get(frame.sha256, (None, ""))[1] != "labelled":  # one JPEG under two keys: approved wins
            found[frame.sha256] = (frame, "labelled", None) if approved else (frame, "set_aside", UNAPPROVED)
    _, marked = state.add_known(list(found.values()))
    if state.rebuilding:
        state.rebuild_done()
    labelled = sum(1 for _, s, _ in found.values() if s == "labelled")
    return Rebuilt(labelled=labelled, set_aside=len(found) - labelled, marked=marked)
