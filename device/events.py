"""Detections per frame -> debounced defect events with stable ids.

A defect is tracked across frames by IoU with its last box (same class). It becomes `new` once
seen in `min_hits` of the last `window` frames, earns an `update` only when its score rises by
`update_min_delta` over the last score published, and `end`s once unseen for `end_after_s`
seconds of stream time. One flickering box never raises an alert; one steady scratch raises one.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from device import messages
from device.config import EventsConfig
from device.contracts import DefectEvent, ModelIdentity, StageLatency
from device.detector import Detection
from device.messages import Outbound, utc_iso


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: what crosses from the inference stage to the event stage."""

    camera: str
    seq: int
    frame_time: float  # wall clock (epoch seconds, UTC) when the frame was captured
    stream_time: float  # seconds on the stream's own clock: debounce timing uses this
    width: int
    height: int
    detections: tuple[Detection, ...]
    latency_ms: StageLatency
    model: ModelIdentity


@dataclass
class Track:
    event_id: str
    class_id: int
    class_name: str
    box: tuple[float, float, float, float]
    score: float
    top_score: float
    last_seen: float
    hits: deque[bool]
    frames_seen: int = 1
    active: bool = False
    published_score: float = 0.0
    last_result: FrameResult | None = field(default=None, repr=False)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class DefectTracker:
    """Debounces one camera's detections. Not thread-safe: one event stage owns it."""

    def __init__(self, thing: str, camera: str, config: EventsConfig) -> None:
        self.thing, self.camera, self.config = thing, camera, config
        self.tracks: list[Track] = []

    def _qualifies(self, det: Detection) -> bool:
        rule = self.config.rule(det.class_name)
        x1, y1, x2, y2 = det.box
        return det.confidence >= rule.min_confidence and (x2 - x1) * (y2 - y1) >= rule.min_area_px

    def _match(self, detections: list[Detection]) -> tuple[dict[int, Detection], list[Detection]]:
        pairs = sorted(
            ((box_iou(t.box, d.box), ti, di) for ti, t in enumerate(self.tracks)
             for di, d in enumerate(detections) if t.class_id == d.class_id),
            reverse=True,
        )
        matched: dict[int, Detection] = {}
        used: set[int] = set()
        for iou, ti, di in pairs:
            if iou < self.config.match_iou:
                break
            if ti not in matched and di not in used:
                matched[ti] = detections[di]
                used.add(di)
        return matched, [d for i, d in enumerate(detections) if i not in used]

    def update(self, result: FrameResult) -> list[Outbound]:
        cfg = self.config
        matched, unmatched = self._match([d for d in result.detections if self._qualifies(d)])
        out: list[Outbound] = []
        for index, track in enumerate(self.tracks):
            det = matched.get(index)
            track.hits.append(det is not None)
            if det is not None:
                track.box, track.score, track.last_seen = det.box, det.confidence, result.stream_time
                track.top_score = max(track.top_score, det.confidence)
                track.frames_seen += 1
                track.last_result = result
        for det in unmatched:
            self.tracks.append(Track(
                event_id=str(uuid.uuid4()), class_id=det.class_id, class_name=det.class_name, box=det.box,
                score=det.confidence, top_score=det.confidence, last_seen=result.stream_time,
                hits=deque([True], maxlen=cfg.window), last_result=result,
            ))
        kept: list[Track] = []
        for track in self.tracks:
            gone_for = result.stream_time - track.last_seen
            if not track.active:
                if sum(track.hits) >= cfg.min_hits:
                    track.active, track.published_score = True, track.score
                    out.append(self._event(track, "new"))
                elif gone_for >= cfg.end_after_s or (len(track.hits) == cfg.window and not any(track.hits)):
                    continue  # a flicker that never qualified: dropped without a word
            elif gone_for >= cfg.end_after_s:
                out.append(self._event(track, "end"))
                continue
            elif track.hits[-1] and track.score >= track.published_score + cfg.update_min_delta:
                track.published_score = track.score
                out.append(self._event(track, "update"))
            kept.append(track)
        self.tracks = kept
        return out

    def finish(self, reason: str | None = None) -> list[Outbound]:
        """The stream ended (file done, daemon stopping): every open defect ends now."""
        out = [self._event(t, "end", reason) for t in self.tracks if t.active]
        self.tracks = []
        return out

    def _event(self, track: Track, kind: str, reason: str | None = None) -> Outbound:
        result = track.last_result
        assert result is not None
        x1, y1, x2, y2 = track.box
        w, h = max(result.width, 1), max(result.height, 1)
        return messages.event(DefectEvent(
            message_id=messages.new_message_id(),
            thing=self.thing,
            camera=self.camera,
            event_id=track.event_id,
            type=kind,
            class_name=track.class_name,
            class_id=track.class_id,
            score=round(track.score, 4),
            top_score=round(track.top_score, 4),
            box=[round(max(v, 0.0), 1) for v in track.box],
            box_norm=[round(min(max(v, 0.0), 1.0), 5) for v in (x1 / w, y1 / h, x2 / w, y2 / h)],
            frame_time=utc_iso(result.frame_time),
            sent_time=utc_iso(time.time()),
            frames_seen=track.frames_seen,
            model=result.model,
            latency_ms=result.latency_ms,
            reason=reason,
        ))


def ended_after_restart(last: DefectEvent, reason: str) -> Outbound:
    """The `end` of a defect left open when the daemon stopped without ending it (a crash, a
    power cut): built from its last published event, so a subscriber waiting for the end gets it."""
    return messages.event(last.model_copy(update={
        "message_id": messages.new_message_id(), "type": "end", "sent_time": utc_iso(time.time()), "reason": reason,
    }))
