"""Camera sources: USB index, RTSP/HTTP stream, video file, image folder.

Each camera runs in its own thread and hands frames to the inference stage through a bounded
`FrameQueue`. Live sources keep only the newest frames (the oldest is dropped and counted), so
latency never piles up; file and folder sources block instead, so every frame is processed.

A watchdog reopens a camera that has given no frame for `watchdog_s`, with exponential backoff,
and reports each change of state (`starting`, `online`, `offline`, `finished`, `stopped`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import cv2
import numpy as np

from device.config import CameraConfig
from device.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# FFmpeg must give up on a dead stream by itself, or a blocked read() would hold the camera
# thread forever; the watchdog then reopens it.
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Frame:
    camera: str
    seq: int
    image: np.ndarray
    frame_time: float  # epoch seconds when captured
    stream_time: float  # the stream's own clock (file position for files; monotonic otherwise)
    captured_mono: float  # time.monotonic() at capture, for the queue latency
    source_name: str = ""  # the file name for folder sources
    prepared: Any = None  # the model input, made in the camera thread (see Camera.prepare)
    prepare_ms: float = 0.0


class FrameQueue:
    """Bounded hand-off from one camera to the inference stage."""

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        self._items: deque[Frame] = deque()
        self._maxsize, self._drop_oldest = maxsize, drop_oldest
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> None:
        with self._cond:
            while len(self._items) >= self._maxsize:
                if self._drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                    break
                if stop.is_set():
                    return
                self._cond.wait(0.1)
            self._items.append(frame)
            self._cond.notify_all()

    def get_nowait(self) -> Frame | None:
        with self._cond:
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def __len__(self) -> int:
        return len(self._items)


def redact(source: str | int) -> str:
    """A stream URL for logs and messages, without its password."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(source))


class Backoff:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.current = low, high, low

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low


StatusCallback = Callable[[str, str, str], None]  # camera id, state, reason


class Camera(threading.Thread):
    """Reads one source into its FrameQueue until stopped."""

    def __init__(self, config: CameraConfig, on_status: StatusCallback, stop: threading.Event,
                 prepare: Callable[[np.ndarray], Any] | None = None) -> None:
        super().__init__(name=f"camera-{config.id}", daemon=True)
        self.config = config
        self.kind = config.resolved_kind()
        self.live = self.kind in ("usb", "stream")
        self.queue = FrameQueue(config.queue_size, drop_oldest=self.live)
        self._on_status, self._stop = on_status, stop
        # Preprocessing (letterbox, blob) runs here, in the camera's thread, so it overlaps with
        # inference on the previous frame instead of adding to it.
        self._prepare = prepare
        self.state = "starting"
        self.captured = 0
        self.finished = threading.Event()
        self._seq = 0
        self._file_clock = 0.0  # seconds of file played before the current opening

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            self.state = state
            log.info("camera %s %s: %s", self.config.id, state, reason)
            self._on_status(self.config.id, state, reason)

    def _emit(self, image: np.ndarray, stream_time: float, source_name: str = "") -> None:
        self._seq += 1
        self.captured += 1
        captured_mono, frame_time = time.monotonic(), time.time()
        prepared = self._prepare(image) if self._prepare else None
        frame = Frame(self.config.id, self._seq, image, frame_time, stream_time, captured_mono, source_name,
                      prepared, (time.monotonic() - captured_mono) * 1000)
        self.queue.put(frame, self._stop)

    def run(self) -> None:
        try:
            if self.kind == "folder":
                self._run_folder()
            else:
                self._run_capture()
        except Exception:  # a camera thread must never die silently
            log.exception("camera %s failed", self.config.id)
            self._set_state("offline", "internal error (see log)")
        finally:
            if self._stop.is_set():
                self._set_state("stopped", "daemon stopping")
            self.finished.set()

    # --- cv2.VideoCapture sources: usb, stream, file -------------------------------------------

    def _open(self) -> cv2.VideoCapture | None:
        source = self.config.source
        if self.kind == "usb":
            cap = cv2.VideoCapture(int(source))
        elif self.kind == "file" and not Path(str(source)).is_file():
            return None
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
            cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run_capture(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                self._set_state("offline", f"cannot open {redact(cfg.source)}")
                self._stop.wait(backoff.next())
                continue
            ended = self._read_until_failure(cap, backoff)
            cap.release()
            if ended and not cfg.loop:
                self._set_state("finished", "end of file")
                return
            if not ended:
                self._set_state("offline", f"no frame for {cfg.watchdog_s:g} s from {redact(cfg.source)}")
                self._stop.wait(backoff.next())

    def _read_until_failure(self, cap: cv2.VideoCapture, backoff: Backoff) -> bool:
        """Read frames until the source fails (False) or a file reaches its end (True)."""
        cfg = self.config
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        frame_period = 1.0 / fps if self.kind == "file" and 0 < fps < 1000 else 0.0
        last_frame = started = time.monotonic()
        index = 0
        while not self._stop.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                if self.kind == "file":
                    self._file_clock += index * frame_period
                    return Path(str(cfg.source)).is_file()  # the end, unless the file vanished
                if time.monotonic() - last_frame >= cfg.watchdog_s:
                    return False
                self._stop.wait(0.05)
                continue
            last_frame = time.monotonic()
            if self.state != "online":
                self._set_state("online", f"reading {redact(cfg.source)}")
                backoff.reset()
            if frame_period:
                # files run on their own clock, so debouncing means the same at any speed
                stream_time = self._file_clock + index * frame_period
                if cfg.realtime:
                    self._stop.wait(max(0.0, started + index * frame_period - time.monotonic()))
            else:
                stream_time = last_frame
            self._emit(image, stream_time)
            index += 1
        return False

    # --- folder source: new image files as they land -------------------------------------------

    def _run_folder(self) -> None:
        folder = Path(str(self.config.source))
        seen: set[str] = set()
        sizes: dict[str, int] = {}
        while not self._stop.is_set():
            if not folder.is_dir():
                self._set_state("offline", f"folder {folder} is missing")
                self._stop.wait(self.config.reconnect_min_s)
                continue
            self._set_state("online", f"watching {folder}")
            for path in self._ready_files(folder, seen, sizes):
                data = np.fromfile(path, dtype=np.uint8)
                image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
                seen.add(path.name)
                if image is None:
                    log.warning("camera %s: %s is not a readable image; skipped", self.config.id, path.name)
                    continue
                self._emit(image, time.monotonic(), path.name)
            self._stop.wait(0.2)

    @staticmethod
    def _ready_files(folder: Path, seen: set[str], sizes: dict[str, int]) -> Iterator[Path]:
        """New image files whose size has stopped changing (a writer may still be copying)."""
        entries = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in seen),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
        for path in entries:
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if sizes.get(path.name) == size and size > 0:
                sizes.pop(path.name, None)
                yield path
            else:
                sizes[path.name] = size
