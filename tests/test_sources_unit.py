"""Source building blocks: queues that keep the newest frames, backoff, redaction."""

from __future__ import annotations

import threading

import numpy as np

from device.sources import Backoff, Frame, FrameQueue, redact


def frame(seq: int) -> Frame:
    return Frame("cam", seq, np.zeros((2, 2, 3), np.uint8), 0.0, 0.0, 0.0)


def test_live_queue_keeps_the_newest_and_counts_drops():
    queue, stop = FrameQueue(2, drop_oldest=True), threading.Event()
    for seq in range(5):
        queue.put(frame(seq), stop)
    assert queue.dropped == 3
    assert [queue.get_nowait().seq, queue.get_nowait().seq] == [3, 4]
    assert queue.get_nowait() is None


def test_file_queue_blocks_instead_of_dropping():
    queue, stop = FrameQueue(1, drop_oldest=False), threading.Event()
    queue.put(frame(0), stop)
    writer = threading.Thread(target=queue.put, args=(frame(1), stop))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive(), "a file source waits for room: every frame is processed"
    assert queue.get_nowait().seq == 0
    writer.join(2)
    assert queue.get_nowait().seq == 1 and queue.dropped == 0


def test_backoff_doubles_to_a_ceiling_and_resets():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_stream_passwords_never_reach_logs_or_messages():
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/stream1") == "rtsp://admin:***@10.0.0.5:554/stream1"
    assert redact("rtsp://10.0.0.5/stream") == "rtsp://10.0.0.5/stream"
    assert redact(0) == "0"
