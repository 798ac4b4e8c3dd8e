"""Camera sources: USB index, RTSP/HTTP stream, video file, image folder.

Each camera runs in its own thread and hands frames to the inference stage through a bounded
`FrameQueue`. Live sources keep only the newest frames (the oldest is dropped and counted), so
latency never piles up; file and folder sources block instead, so every frame is processed.

A watchdog reopens a camera that has given no frame for `watchdog_s`, with exponential backoff,
and reports each change of state (`starting`, `online`, `offline`, `finished`, `stopped`). A
supervisor (`Camera.run`) restarts the camera's loop after any unexpected exception, so a camera
ends only at the end of a file or when the daemon stops.

Folder sources never stop on one bad entry (a directory or a dangling symlink named like an image,
a file too large, a header declaring too many pixels, garbage): it is logged once, set aside and
counted. They remember what they inspected across restarts (`device.folder_memory`).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.config import CameraConfig
from device.detector import PreparedInput
from device.folder_memory import FolderMemory, memory_path
from device.images import IMAGE_SUFFIXES, FileKey, ImageRejected, load_image
from device.redact import redact, remember_secrets, secrets_in
from device.rehearsal import apply_drift

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
    prepared: PreparedInput | None = None  # the model input, made in the camera thread (see Camera.prepare)
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


class Backoff:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high, self.current = low, high, low

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low


StatusCallback = Callable[[str, str, str], None]  # camera id, state, reason

FOLDER_POLL_S = 0.2  # how often a folder is listed; a file must keep its size and mtime this long
MAX_FILE_ATTEMPTS = 3  # a folder image that made the camera fail this often is set aside
UNREADABLE = FileKey(-1, 0)  # the key of an entry that is no file (a directory, a dangling symlink)


@dataclass(frozen=True)
class FolderEntry:
    """One image-named entry of a watched folder."""

    name: str
    key: FileKey
    problem: str = ""  # why it can never be read as an image ("a directory, not an image file")


def scan_folder(folder: Path) -> list[FolderEntry]:
    """The entries with an image suffix. OSError when the folder itself cannot be listed; one bad
    entry never raises."""
    entries = []
    with os.scandir(folder) as listing:
        for item in listing:
            if os.path.splitext(item.name)[1].lower() in IMAGE_SUFFIXES:
                entry = _describe(item)
                if entry is not None:
                    entries.append(entry)
    return entries


def _describe(item: os.DirEntry) -> FolderEntry | None:
    try:
        st = item.stat()  # follows a symlink to what it points at
    except FileNotFoundError:
        if not item.is_symlink():
            return None  # deleted since the listing
        return FolderEntry(item.name, UNREADABLE, "a dangling symlink")
    except OSError as exc:  # a symlink loop, a permission problem, an I/O error
        return FolderEntry(item.name, UNREADABLE, f"not readable ({exc.strerror or exc})")
    if stat.S_ISDIR(st.st_mode):
        return FolderEntry(item.name, UNREADABLE, "a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        return FolderEntry(item.name, UNREADABLE, "not a regular file (a FIFO, socket or device)")
    return FolderEntry(item.name, FileKey.of(st))


class Camera(threading.Thread):
    """Reads one source into its FrameQueue until stopped.

    `run` is a supervisor: an unexpected exception in the source's loop never ends the camera. It
    is logged and reported (`offline`, with the exception), counted in `restarts`, and the loop
    starts again after a backoff (reconnect_min_s doubling to reconnect_max_s, back to the minimum
    once frames flow). `finished` is set only when the camera is really done: `state` is then
    `finished` (a file source without `loop` reached its end) or `stopped` (the daemon is stopping).

    Folder sources set aside what they cannot read (counted in `rejected_files`, logged once) and
    remember what they inspected (see `device.folder_memory`; durable when `state_dir` is given).
    The inference stage calls `frame_done(frame)` once it has processed a frame: only then is a
    folder image remembered as inspected.
    """

    def __init__(self, config: CameraConfig, on_status: StatusCallback, stop: threading.Event,
                 prepare: Callable[[np.ndarray], PreparedInput | None] | None = None, *, state_dir: Path | None = None) -> None:
        super().__init__(name=f"camera-{config.id}", daemon=True)
        self.config = config
        remember_secrets(secrets_in({"source": config.source}))  # a library may repeat it anywhere
        self.kind = config.resolved_kind()
        self.live = self.kind in ("usb", "stream")
        self.queue = FrameQueue(config.queue_size, drop_oldest=self.live)
        # not `self._stop`: threading.Thread has a method of that name, which is_alive() and join()
        # call once the thread has ended (Python 3.10-3.12); shadowing it breaks both
        self._on_status, self._stop_event = on_status, stop
        # Preprocessing (letterbox, blob) runs here, in the camera's thread, so it overlaps with
        # inference on the previous frame instead of adding to it.
        self._prepare = prepare
        self.state = "starting"
        self.captured = 0
        self.restarts = 0
        self.last_failure = ""
        self.rejected_files = 0
        self.finished = threading.Event()
        self._seq = 0
        self._file_clock = 0.0  # seconds of file played before the current opening
        self._restart_backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        # folder sources
        self._state_dir = state_dir
        self.memory: FolderMemory | None = None
        self.scans = 0  # folder listings done; tests wait on it
        self._pending: dict[str, FileKey] = {}  # emitted, not yet processed by the inference stage
        self._pending_lock = threading.Lock()
        self._set_aside: dict[str, FileKey] = {}  # rejected, until the file changes
        self._last_seen: dict[str, FileKey] = {}  # the previous listing: a file must hold still
        self._attempts: dict[str, int] = {}  # failures while a given file was being handled
        self._current_file = ""

    def _set_state(self, state: str, reason: str) -> None:
        if self._stop_event.is_set() and state not in ("stopped", "finished"):
            return  # e.g. a stream open that timed out after SIGTERM: `stopped` is the last word
        if state != self.state:
            self.state = state
            log.info("camera %s %s: %s", self.config.id, state, reason)
            try:
                self._on_status(self.config.id, state, reason)
            except Exception:  # a status that cannot be published must not fail the camera
                log.exception("camera %s: status %s not published", self.config.id, state)

    def _emit(self, image: np.ndarray, stream_time: float, source_name: str = "") -> None:
        self._seq += 1
        self.captured += 1
        captured_mono, frame_time = time.monotonic(), time.time()
        image = apply_drift(self.config.drift, image)  # a rehearsal's drift: before anything sees the frame
        prepared = self._prepare(image) if self._prepare else None
        frame = Frame(self.config.id, self._seq, image, frame_time, stream_time, captured_mono, source_name,
                      prepared, (time.monotonic() - captured_mono) * 1000)
        self.queue.put(frame, self._stop_event)
        self._restart_backoff.reset()  # frames flow: the next failure restarts quickly again

    # --- the supervisor -------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                try:
                    self._run_source()
                    if self._stop_event.is_set() or self.state == "finished":
                        break
                    raise RuntimeError("the source loop ended by itself")
                except Exception as exc:
                    self._after_failure(exc)
        finally:
            if self._stop_event.is_set() and self.state != "finished":
                self._set_state("stopped", "daemon stopping")
            if self.state in ("finished", "stopped"):
                self.finished.set()

    def _run_source(self) -> None:
        if self.kind == "folder":
            self._run_folder()
        else:
            self._run_capture()

    def _after_failure(self, exc: Exception) -> None:
        """Report and count the failure, then wait before the loop starts again."""
        self.restarts += 1
        delay = self._restart_backoff.next()
        self.last_failure = self._describe_failure(exc)
        log.error("camera %s failed (%s); restart %d in %.2g s\n%s", self.config.id, self.last_failure,
                  self.restarts, delay, redact(traceback.format_exc()))
        self._set_state("offline", f"{self.last_failure}; restarting in {delay:.2g} s")
        if self._current_file:
            self._count_file_failure(self._current_file)
        self._stop_event.wait(delay)

    def _describe_failure(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return redact(text)[:500]

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
        while not self._stop_event.is_set():
            cap = self._open()
            if cap is None:
                self._set_state("offline", f"cannot open {redact(cfg.source)}")
                self._stop_event.wait(backoff.next())
                continue
            try:
                ended = self._read_until_failure(cap, backoff)
            finally:
                cap.release()  # also when the loop failed: the supervisor opens it again
            if ended and not cfg.loop:
                self._set_state("finished", "end of file")
                return
            if not ended and not self._stop_event.is_set():
                self._set_state("offline", f"no frame for {cfg.watchdog_s:g} s from {redact(cfg.source)}")
                self._stop_event.wait(backoff.next())

    def _read_until_failure(self, cap: cv2.VideoCapture, backoff: Backoff) -> bool:
        """Read frames until the source fails (False) or a file reaches its end (True)."""
        cfg = self.config
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        frame_period = 1.0 / fps if self.kind == "file" and 0 < fps < 1000 else 0.0
        last_frame = started = time.monotonic()
        index = 0
        while not self._stop_event.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                if self.kind == "file":
                    self._file_clock += index * frame_period
                    return Path(str(cfg.source)).is_file()  # the end, unless the file vanished
                if time.monotonic() - last_frame >= cfg.watchdog_s:
                    return False
                self._stop_event.wait(0.05)
                continue
            last_frame = time.monotonic()
            if self.state != "online":
                self._set_state("online", f"reading {redact(cfg.source)}")
                backoff.reset()
            if frame_period:
                # files run on their own clock, so debouncing means the same at any speed
                stream_time = self._file_clock + index * frame_period
                if cfg.realtime:
                    self._stop_event.wait(max(0.0, started + index * frame_period - time.monotonic()))
            else:
                stream_time = last_frame
            self._emit(image, stream_time)
            index += 1
        return False

    # --- folder source: new image files as they land -------------------------------------------

    def frame_done(self, frame: Frame) -> None:
        """The inference stage has processed `frame` (or skipped it as bad): a folder image is
        now remembered as inspected, durably when the camera has a state_dir. Never raises."""
        if not frame.source_name:
            return
        with self._pending_lock:
            key = self._pending.pop(frame.source_name, None)
        if key is not None and self.memory is not None:
            self.memory.remember(frame.source_name, key)

    def _run_folder(self) -> None:
        folder = Path(str(self.config.source))
        if self.memory is None:  # kept across restarts of the loop; never closed here, because the
            # inference stage may report the last frames after this thread has ended (WAL keeps
            # every commit when the process exits)
            path = memory_path(self._state_dir, self.config.id) if self._state_dir else None
            self.memory = FolderMemory(folder, path)
        while not self._stop_event.is_set():
            try:
                entries = scan_folder(folder)
            except (FileNotFoundError, NotADirectoryError):
                self._set_state("offline", f"folder {folder} is missing")
                self._stop_event.wait(self.config.reconnect_min_s)
                continue
            except OSError as exc:
                self._set_state("offline", f"folder {folder} cannot be listed ({exc.strerror or exc})")
                self._stop_event.wait(self.config.reconnect_min_s)
                continue
            self.scans += 1
            self._set_state("online", f"watching {folder}")
            for entry in self._due(entries):
                if self._stop_event.is_set():
                    break
                self._inspect(folder, entry)
            self._stop_event.wait(FOLDER_POLL_S)

    def _due(self, entries: list[FolderEntry]) -> list[FolderEntry]:
        """The entries to handle now, oldest first: not inspected yet in this version, not set
        aside in this version, not waiting for the inference stage, and holding still since the
        previous listing (a writer may still be copying). Forgets what left the folder."""
        present = {entry.name for entry in entries}
        self.memory.forget_missing(present)
        with self._pending_lock:
            for table in (self._set_aside, self._attempts, self._pending):
                for name in [n for n in table if n not in present]:
                    del table[name]
            pending = set(self._pending)
        previous, self._last_seen = self._last_seen, {entry.name: entry.key for entry in entries}
        due = [entry for entry in entries
               if entry.name not in pending
               and self._set_aside.get(entry.name) != entry.key
               and (entry.problem or (entry.key.size > 0 and previous.get(entry.name) == entry.key))
               and not self.memory.inspected(entry.name, entry.key)]
        return sorted(due, key=lambda entry: (entry.key.mtime_ns, entry.name))

    def _inspect(self, folder: Path, entry: FolderEntry) -> None:
        if entry.problem:
            self._reject(entry.name, entry.key, entry.problem)
            return
        self._current_file = entry.name
        try:
            image, key = load_image(folder / entry.name, self.config.max_file_bytes, self.config.max_pixels)
        except ImageRejected as exc:
            self._reject(entry.name, entry.key, exc.reason)
            return
        with self._pending_lock:
            self._pending[entry.name] = key  # before the put: the inference stage may be quick
        try:
            self._emit(image, time.monotonic(), entry.name)
        except BaseException:
            with self._pending_lock:
                self._pending.pop(entry.name, None)
            raise
        self._current_file = ""

    def _reject(self, name: str, key: FileKey, reason: str) -> None:
        """Set a file aside until it changes; logged once, counted."""
        self._set_aside[name] = key
        self.rejected_files += 1
        self._current_file = ""
        log.warning("camera %s: %s is %s; set aside", self.config.id, name, reason)

    def _count_file_failure(self, name: str) -> None:
        """A file that keeps failing the camera is set aside, so the camera gets past it."""
        self._attempts[name] = self._attempts.get(name, 0) + 1
        if self._attempts[name] >= MAX_FILE_ATTEMPTS:
            key = self._last_seen.get(name, UNREADABLE)
            self._reject(name, key, f"failing the camera ({self._attempts[name]} times, last: {self.last_failure})")
        self._current_file = ""
