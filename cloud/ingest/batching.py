"""When pending frames become a batch: per line (thing), as soon as `batch_size` frames wait, or
when the oldest has waited `max_wait_s` (then with whatever is there). Pure: no clock, no I/O."""

from __future__ import annotations

from collections import defaultdict

from cloud.ingest.state import PendingFrame


def due_batches(pending: list[PendingFrame], now: float, batch_size: int, max_wait_s: float,
                force: bool = False) -> list[list[PendingFrame]]:
    """Groups of frames to batch now, oldest first; `force` (a batch by hand) ignores the wait."""
    by_line: dict[str, list[PendingFrame]] = defaultdict(list)
    for frame in sorted(pending, key=lambda f: (f.seen, f.sha256)):
        by_line[frame.thing].append(frame)
    due = []
    for frames in by_line.values():
        while len(frames) >= batch_size:
            due.append(frames[:batch_size])
            frames = frames[batch_size:]
        if frames and (force or now - frames[0].seen >= max_wait_s):
            due.append(frames)
    return due
