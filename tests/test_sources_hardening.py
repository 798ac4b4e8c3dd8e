"""Camera sources under stress, against real files and, where the case is the daemon's, the real
daemon (a subprocess) and a real mosquitto:

- folder sources set aside what they cannot read (a directory or a dangling symlink named like an
  image, a 3 GiB file, a decompression bomb, garbage) and go on; reads are bounded before any
  byte is read or decoded;
- a camera whose loop raises is restarted (with backoff), never ended;
- folder sources remember across restarts what they inspected;
- SIGTERM with eight stream cameras stuck in FFmpeg's open exits 0, quickly, every time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, wait_until, write_config
from mosquitto import Subscriber

from device.config import CameraConfig
from device.folder_memory import FolderMemory, memory_path
from device.images import FileKey, ImageInputError, read_image
from device.sources import Camera

SAMPLES = sorted((REPO / "samples").glob("*.jpg"))
GiB = 1024**3


# --- files that break naive readers ------------------------------------------------------------

def bomb_png(path: Path, side: int = 20000) -> Path:
    """A ~390 KB PNG whose header declares side x side grey pixels (1.2 GB once decoded to BGR),
    with valid compressed zero rows. Built by streaming zlib, so the test itself stays small."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, idat = zlib.compressobj(9), b"\0" * (side + 1), bytearray()  # filter byte + pixels
    for _ in range(side):
        idat += packer.compress(row)
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


def sparse_file(path: Path, size: int = 3 * GiB) -> Path:
    """A file of `size` bytes that takes no disk space; reading it whole would take `size` of RAM."""
    path.touch()
    os.truncate(path, size)
    return path


def truncated_png(path: Path) -> Path:
    ok, encoded = cv2.imencode(".png", cv2.imread(str(SAMPLES[0])))
    path.write_bytes(encoded.tobytes()[: len(encoded) // 2])
    return path


def bad_entries(folder: Path) -> dict[str, str]:
    """Every kind of bad entry, by name, with a word its rejection reason must hold."""
    (folder / "x.jpg").mkdir()
    (folder / "y.jpg").symlink_to(folder / "nowhere.jpg")
    sparse_file(folder / "huge.jpg")
    bomb_png(folder / "bomb.png")
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated_png(folder / "truncated.png")
    return {"x.jpg": "a directory", "y.jpg": "dangling symlink", "huge.jpg": "too large",
            "bomb.png": "too many pixels", "garbage.jpg": "not a readable image",
            "truncated.png": "not a readable image"}


def copy_sample(index: int, target: Path) -> Path:
    shutil.copy(SAMPLES[index], target)
    return target


def bytes_read() -> int:
    """Bytes this process has read through read(2) and the like (/proc/self/io rchar)."""
    return int(re.search(r"rchar: (\d+)", Path("/proc/self/io").read_text()).group(1))


def peak_rss_mb(pid: int | str = "self") -> float:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


# --- running a Camera in-process ----------------------------------------------------------------

def camera_for(source, stop: threading.Event, statuses: list | None = None, prepare=None, state_dir=None,
               **settings) -> Camera:
    config = CameraConfig(id="cam", source=source, reconnect_min_s=0.05, reconnect_max_s=0.2, **settings)
    on_status = (lambda cam, state, reason: statuses.append((state, reason))) if statuses is not None else \
        (lambda *_: None)
    return Camera(config, on_status, stop, prepare, state_dir=state_dir)


class Inference:
    """Plays the daemon's inference stage: takes each frame and, unless told otherwise, reports it
    done (`Camera.frame_done`), as the daemon does once a frame is processed."""

    def __init__(self, camera: Camera, acknowledge: bool = True) -> None:
        self.camera, self.acknowledge = camera, acknowledge
        self.names: list[str] = []
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self.camera.queue.get_nowait()
            if frame is None:
                self._stop.wait(0.005)
                continue
            self.frames += 1
            self.names.append(frame.source_name)
            if self.acknowledge:
                self.camera.frame_done(frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def run_camera(camera: Camera, acknowledge: bool = True) -> Inference:
    inference = Inference(camera, acknowledge)
    camera.start()
    return inference


def stop_camera(camera: Camera, inference: Inference, stop: threading.Event) -> None:
    stop.set()
    assert camera.finished.wait(5), "the camera ends when the daemon stops"
    inference.close()


def next_scans(camera: Camera, count: int = 3) -> bool:
    """Wait until the folder was listed `count` more times (what would be repeated, has been)."""
    target = camera.scans + count
    return wait_until(lambda: camera.scans >= target, 10)


# --- 1. bad entries in a watched folder ----------------------------------------------------------

def test_bad_entries_are_set_aside_once_and_the_camera_goes_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="device.sources")
    folder = tmp_path / "drop"
    folder.mkdir()
    expected = bad_entries(folder)
    copy_sample(0, folder / "good-1.jpg")
    stop = threading.Event()
    camera = camera_for(str(folder), stop)
    inference = run_camera(camera)
    try:
        assert wait_until(lambda: camera.rejected_files == len(expected) and inference.names == ["good-1.jpg"], 30), \
            (camera.rejected_files, inference.names, caplog.text[-2000:])
        copy_sample(1, folder / "good-2.jpg")  # the camera goes on inspecting what lands next
        assert wait_until(lambda: inference.names == ["good-1.jpg", "good-2.jpg"], 30)
        assert next_scans(camera)
        for name, reason in expected.items():
            lines = [r.getMessage() for r in caplog.records if f" {name} is " in r.getMessage()]
            assert len(lines) == 1 and reason in lines[0] and "set aside" in lines[0], (name, lines)
        assert camera.rejected_files == len(expected), "each one counted once"
        assert camera.is_alive() and camera.restarts == 0 and camera.state == "online"
    finally:
        stop_camera(camera, inference, stop)


def test_a_set_aside_file_is_tried_again_once_replaced(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "late.jpg").write_bytes(b"garbage")
    stop = threading.Event()
    camera = camera_for(str(folder), stop)
    inference = run_camera(camera)
    try:
        assert wait_until(lambda: camera.rejected_files == 1, 30)
        copy_sample(2, folder / "late.jpg")
        assert wait_until(lambda: inference.names == ["late.jpg"], 30)
    finally:
        stop_camera(camera, inference, stop)


def test_reads_are_bounded_before_reading_or_decoding(tmp_path):
    """`read_image` (what `edge-inspect detect` and folder sources use): the size is checked
    before a byte is read, the header's pixel count before anything is decoded."""
    read_image(SAMPLES[0])  # warm up: Pillow's plugins, OpenCV's codecs
    huge, bomb = sparse_file(tmp_path / "huge.jpg"), bomb_png(tmp_path / "bomb.png")

    before = bytes_read()
    with pytest.raises(ImageInputError, match="too large: 3221225472 bytes"):
        read_image(huge)
    assert bytes_read() - before < 64 * 1024, "not one block of the 3 GiB file was read"

    reset_peak_rss()
    baseline = peak_rss_mb()
    with pytest.raises(ImageInputError, match="too many pixels"):
        read_image(bomb)
    with pytest.raises(ImageInputError, match="too many pixels: the header declares 4000x4000"):
        read_image(bomb_png(tmp_path / "smaller.png", 4000), max_pixels=10_000_000)
    assert peak_rss_mb() - baseline < 50, "nothing was decoded (20000x20000 BGR would be 1.2 GB)"

    with pytest.raises(ImageInputError, match="too large"):
        read_image(SAMPLES[0], max_file_bytes=1024)
    with pytest.raises(ImageInputError, match="a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageInputError, match="not a readable image"):
        read_image(truncated_png(tmp_path / "truncated.png"))
    assert read_image(SAMPLES[0]).ndim == 3


def test_daemon_memory_stays_bounded_with_a_bomb_and_a_3_gib_file(tmp_path, broker):
    folder = tmp_path / "drop"
    folder.mkdir()
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port, [{"id": "drop", "source": str(folder)}],
                                        state_dir=str(tmp_path / "state")))
    try:
        assert sub.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("/drop/status")), 60), \
            daemon.log_text()[-2000:]
        bomb_png(folder / "bomb.png")
        sparse_file(folder / "huge.jpg")
        assert wait_until(lambda: "bomb.png is too many pixels" in daemon.log_text()
                          and "huge.jpg is too large" in daemon.log_text(), 30), daemon.log_text()[-2000:]
        copy_sample(0, folder / "next.jpg")
        assert sub.wait_for(lambda s: any(p["cameras"]["drop"]["frames_processed"] == 1 for p in s.payloads("/stats")),
                            30), daemon.log_text()[-2000:]
        peak = peak_rss_mb(daemon.proc.pid)
        print(f"daemon peak RSS (VmHWM): {peak:.0f} MB")
        assert peak < 300, f"peak RSS {peak:.0f} MB"
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
        sub.close()


# --- 2. the supervisor ---------------------------------------------------------------------------

def failing_first(count: int, when=lambda image: True):
    """A `prepare` (runs in the camera's thread, on every frame) that raises `count` times."""
    calls = {"failed": 0}

    def prepare(image: np.ndarray):
        if when(image) and calls["failed"] < count:
            calls["failed"] += 1
            raise RuntimeError(f"injected failure {calls['failed']}")
        return None

    return prepare


def test_a_failing_loop_is_restarted_with_backoff_and_frames_flow_again(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    for i in range(3):
        copy_sample(i, folder / f"img-{i}.jpg")
    stop, statuses = threading.Event(), []
    camera = camera_for(str(folder), stop, statuses, prepare=failing_first(2))
    inference = run_camera(camera)
    try:
        assert wait_until(lambda: sorted(inference.names) == ["img-0.jpg", "img-1.jpg", "img-2.jpg"], 30), \
            (inference.names, statuses)
        assert camera.restarts == 2 and camera.rejected_files == 0, "two failures of the same image: not given up"
        offline = [reason for state, reason in statuses if state == "offline"]
        assert offline == ["RuntimeError: injected failure 1; restarting in 0.05 s",
                           "RuntimeError: injected failure 2; restarting in 0.1 s"], offline  # backoff doubles
        assert [s for s, _ in statuses] == ["online", "offline", "online", "offline", "online"]
        assert not camera.finished.is_set() and camera.is_alive() and camera.state == "online"
    finally:
        stop_camera(camera, inference, stop)
    assert camera.state == "stopped" and statuses[-1][0] == "stopped"


def test_a_file_that_keeps_failing_the_camera_is_set_aside(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    cv2.imwrite(str(folder / "poison.png"), np.full((23, 17, 3), 255, np.uint8))
    copy_sample(0, folder / "fine.jpg")
    stop = threading.Event()
    always_on_poison = failing_first(1000, when=lambda image: image.shape[:2] == (23, 17))
    camera = camera_for(str(folder), stop, prepare=always_on_poison)
    inference = run_camera(camera)
    try:
        assert wait_until(lambda: camera.rejected_files == 1 and "fine.jpg" in inference.names, 30)
        assert camera.restarts == 3 and "poison.png" not in inference.names
        assert next_scans(camera) and camera.restarts == 3, "set aside: not tried again"
    finally:
        stop_camera(camera, inference, stop)


def test_a_file_source_finishes_only_at_its_end(tmp_path):
    video = scratch_video(tmp_path / "line.avi", hold_frames=2, gap_frames=2)
    frames = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    stop, statuses = threading.Event(), []
    camera = camera_for(str(video), stop, statuses, prepare=failing_first(1))
    inference = run_camera(camera)
    try:
        assert camera.finished.wait(30), statuses
        assert camera.state == "finished" and camera.restarts == 1
        assert wait_until(lambda: inference.frames == frames, 10), (inference.frames, frames)  # played again, whole
        assert [s for s, _ in statuses] == ["online", "offline", "online", "finished"]
    finally:
        stop_camera(camera, inference, stop)


@pytest.mark.parametrize("password", ["s3cret-pw", "p@ss/w0rd@x", "pa ss:w/rd"])
def test_a_failure_never_shows_the_stream_password(tmp_path, caplog, password):
    url = f"rtsp://admin:{password}@127.0.0.1:9/stream"
    stop, statuses = threading.Event(), []
    camera = camera_for(url, stop, statuses)

    def failing_open():
        raise RuntimeError(f"could not open {url} (auth {password})")

    camera._open = failing_open
    inference = run_camera(camera)
    try:
        assert wait_until(lambda: camera.restarts >= 2, 10)
        assert "RuntimeError: could not open rtsp://admin:***@127.0.0.1:9/stream (auth ***)" in statuses[0][1]
        pieces = [p for p in password.replace("@", " ").replace("/", " ").replace(":", " ").split() if len(p) > 2]
        for piece in (password, *pieces):
            leaked = [t for t in (repr(statuses), caplog.text, camera.last_failure) if piece in t]
            assert not leaked, (piece, leaked)
        assert not camera.finished.is_set()
    finally:
        stop_camera(camera, inference, stop)


INJECT_EMIT_FAILURES = """
import sys
import device.sources as sources
original, calls = sources.Camera._emit, []
def failing_emit(self, *args, **kwargs):
    calls.append(1)
    if len(calls) <= 2:
        raise RuntimeError(f"injected failure {len(calls)}")
    return original(self, *args, **kwargs)
sources.Camera._emit = failing_emit
from edge_inspect.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


class DaemonWithFaults(DaemonProcess):
    """The real daemon, with its cameras' first two frames failing inside the camera thread."""

    def __init__(self, config: Path) -> None:
        self.log = config.parent / "daemon.log"
        self.proc = subprocess.Popen([sys.executable, "-c", INJECT_EMIT_FAILURES, str(config)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_daemon_restarts_a_failing_camera_instead_of_exiting(tmp_path, broker):
    folder = tmp_path / "drop"
    folder.mkdir()
    for i in range(3):
        copy_sample(i, folder / f"img-{i}.jpg")
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonWithFaults(write_config(tmp_path / "config.yaml", broker.port, [
        {"id": "drop", "source": str(folder), "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}],
        state_dir=str(tmp_path / "state")))
    try:
        assert sub.wait_for(lambda s: any(p["cameras"]["drop"]["frames_processed"] == 3 for p in s.payloads("/stats")),
                            60), daemon.log_text()[-3000:]
        reasons = [p["reason"] for p in sub.payloads("/drop/status") if p["state"] == "offline"]
        assert reasons[:2] == ["RuntimeError: injected failure 1; restarting in 0.1 s",
                               "RuntimeError: injected failure 2; restarting in 0.2 s"], reasons
        assert sub.payloads("/drop/status")[-1]["state"] == "online"
        assert daemon.proc.poll() is None, "the daemon goes on: a failing camera is not a finished one"
    finally:
        daemon.stop()
        sub.close()


# --- 3. memory across restarts -------------------------------------------------------------------

def test_folder_memory_is_durable_and_forgets_what_left(tmp_path):
    folder, db = tmp_path / "drop", memory_path(tmp_path / "state", "cam")
    memory = FolderMemory(folder, db)
    memory.remember("a.jpg", FileKey(10, 1))
    memory.remember("b.jpg", FileKey(20, 2))
    memory.close()

    memory = FolderMemory(folder, db)  # a restart
    assert memory.inspected("a.jpg", FileKey(10, 1)) and memory.inspected("b.jpg", FileKey(20, 2))
    assert not memory.inspected("a.jpg", FileKey(11, 1)) and not memory.inspected("a.jpg", FileKey(10, 3))
    assert memory.forget_missing({"b.jpg"}) == 1 and len(memory) == 1
    memory.close()
    assert len(FolderMemory(folder, db)) == 1, "forgetting is durable too"
    assert len(FolderMemory(tmp_path / "another-folder", db)) == 0, "records of another folder do not count"


def test_a_damaged_memory_is_moved_aside_and_the_camera_works(tmp_path, caplog):
    db = memory_path(tmp_path / "state", "cam")
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database" * 100)
    memory = FolderMemory(tmp_path, db)
    memory.remember("a.jpg", FileKey(1, 1))
    assert memory.db_path == db and len(list(db.parent.glob("cam.sqlite3.corrupt-*"))) == 1
    assert "moved aside" in caplog.text
    assert sqlite3.connect(db).execute("SELECT name FROM inspected").fetchall() == [("a.jpg",)]


def test_camera_remembers_inspected_images_across_restarts(tmp_path):
    folder, state = tmp_path / "drop", tmp_path / "state"
    folder.mkdir()
    for i in range(3):
        copy_sample(i, folder / f"img-{i}.jpg")

    def session(expected: list[str], acknowledge: bool = True) -> None:
        stop = threading.Event()
        camera = camera_for(str(folder), stop, state_dir=state)
        inference = run_camera(camera, acknowledge)
        try:
            assert wait_until(lambda: sorted(inference.names) == expected, 30), inference.names
            assert next_scans(camera) and sorted(inference.names) == expected, "nothing more"
        finally:
            stop_camera(camera, inference, stop)

    session(["img-0.jpg", "img-1.jpg", "img-2.jpg"])
    copy_sample(3, folder / "new.jpg")
    session(["new.jpg"])  # a restart: only what is new
    copy_sample(4, folder / "img-1.jpg")  # replaced under the same name
    session(["img-1.jpg"])
    copy_sample(5, folder / "unfinished.jpg")
    session(["unfinished.jpg"], acknowledge=False)  # captured, never processed (a crash) ...
    session(["unfinished.jpg"])  # ... so inspected again, not lost
    (folder / "img-0.jpg").unlink()
    session([])
    assert len(FolderMemory(folder, memory_path(state, "cam"))) == 4, "the deleted file was forgotten"


def frames_processed(sub: Subscriber, camera: str) -> list[int]:
    return [p["cameras"][camera]["frames_processed"] for p in sub.payloads("/stats")]


def remembered(state: Path, camera: str) -> dict[str, tuple[int, int]]:
    path = memory_path(state, camera)
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        try:
            rows = db.execute("SELECT name, size, mtime_ns FROM inspected").fetchall()
        except sqlite3.OperationalError:  # the daemon has created the file but not yet its table
            return {}
        return {name: (size, mtime) for name, size, mtime in rows}


def test_daemon_restart_does_not_inspect_the_folder_again(tmp_path, broker):
    """Needs device/daemon.py to pass `state_dir` to its cameras and call `camera.frame_done`."""
    folder, state = tmp_path / "drop", tmp_path / "state"
    folder.mkdir()
    for i in range(3):
        copy_sample(i, folder / f"img-{i}.jpg")
    config = write_config(tmp_path / "config.yaml", broker.port, [{"id": "drop", "source": str(folder)}],
                          state_dir=str(state))

    def run_until_remembered(names: dict[str, int]) -> int:
        """Run the daemon until each file is remembered at its current size; the frames it processed."""
        sub = Subscriber(broker.port, "edge-inspect/+/stats")
        daemon = DaemonProcess(config)
        try:
            assert wait_until(lambda: all(remembered(state, "drop").get(n, (0,))[0] == size
                                          for n, size in names.items()), 60), daemon.log_text()[-3000:]
            seen = len(sub.payloads("/stats"))  # every frame is through; one more snapshot to count them
            assert sub.wait_for(lambda s: len(s.payloads("/stats")) > seen + 1, 30)
            return frames_processed(sub, "drop")[-1]
        finally:
            daemon.stop()
            assert daemon.proc.returncode == 0
            sub.close()

    sizes = lambda *names: {n: (folder / n).stat().st_size for n in names}  # noqa: E731
    assert run_until_remembered(sizes("img-0.jpg", "img-1.jpg", "img-2.jpg")) == 3
    copy_sample(3, folder / "img-3.jpg")  # lands while the daemon is down; newest, so inspected last
    assert run_until_remembered(sizes("img-3.jpg")) == 1, "the three old images were not inspected again"
    copy_sample(4, folder / "img-0.jpg")  # replaced under the same name
    assert run_until_remembered(sizes("img-0.jpg")) == 1


# --- 4. SIGTERM with stream cameras stuck in FFmpeg's open ---------------------------------------

class SilentServer:
    """A loopback TCP server that accepts connections and never sends a byte: FFmpeg's open waits
    for its timeout. `hang_up()` closes every connection (and each later one at once), so every
    open in progress returns right then."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._open: list[socket.socket] = []
        self._hanging_up, self._closed = False, False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.accepted += 1
                if self._hanging_up:
                    conn.close()
                else:
                    self._open.append(conn)

    def hang_up(self) -> None:
        with self._lock:
            self._hanging_up = True
            for conn in self._open:
                conn.close()
            self._open.clear()

    def listen_silently(self) -> None:
        with self._lock:
            self._hanging_up = False

    def close(self) -> None:
        self.hang_up()
        self._closed = True
        self._thread.join(1)
        self.sock.close()


def sigterm_while_stuck(config: Path, server: SilentServer) -> float:
    """Start the daemon, SIGTERM it while FFmpeg is inside an open; its exit time (asserted 0)."""
    server.listen_silently()
    before = server.accepted
    daemon = DaemonProcess(config)
    try:
        # OpenCV lets one FFmpeg open run at a time: one camera is inside it, seven wait for it
        assert wait_until(lambda: server.accepted > before, 60), daemon.log_text()[-2000:]
        hang_up = threading.Thread(target=lambda: wait_until(
            lambda: "edge-inspect stopped" in daemon.log_text(), 10, interval=0.002) and server.hang_up())
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        hang_up.start()
        code = daemon.wait(10)
        elapsed = time.monotonic() - started
        hang_up.join(10)
        assert code == 0, f"exit status {code}\n{daemon.log_text()[-1500:]}"
        return elapsed
    finally:
        daemon.stop()


def test_sigterm_with_eight_stuck_stream_cameras_exits_0_every_time(tmp_path, broker):
    """The abort came from the interpreter finalizing while a camera thread was in FFmpeg: when
    the thread came back, CPython ended it and the C++ runtime called std::terminate (SIGABRT).
    To hit that moment every run, the server hangs up on every open as soon as the daemon has
    logged the end of its shutdown."""
    server = SilentServer()
    cameras = [{"id": f"cam{i}", "source": f"rtsp://127.0.0.1:{server.port}/x{i}", "reconnect_min_s": 0.2,
                "reconnect_max_s": 1} for i in range(8)]
    config = write_config(tmp_path / "config.yaml", broker.port, cameras, state_dir=str(tmp_path / "state"))
    try:
        exit_times = [sigterm_while_stuck(config, server) for _ in range(10)]
    finally:
        server.close()
    print("exit after SIGTERM (s):", " ".join(f"{t:.2f}" for t in exit_times))
    assert max(exit_times) < 5, exit_times


# --- 2b. a camera thread that ends: seen as ended, never a crash of the watcher ------------------
# Camera once kept its stop event as `self._stop`, which shadows the method threading.Thread's
# is_alive() and join() call once the thread has ended (Python 3.10-3.12): the daemon's camera
# watcher then died with "'Event' object is not callable" and never restarted or exited.

def test_a_file_camera_that_reached_its_end_is_not_alive_and_joins(tmp_path):
    video = scratch_video(tmp_path / "short.avi", hold_frames=2, gap_frames=1)
    stop = threading.Event()
    camera = camera_for(str(video), stop)
    inference = run_camera(camera)
    try:
        assert camera.finished.wait(20) and camera.state == "finished"
        assert wait_until(lambda: not camera.is_alive(), 10), "an ended thread is not alive"
        camera.join(5)  # raised TypeError once the thread had ended
    finally:
        stop_camera(camera, inference, stop)


INJECT_DEAD_CAMERA = """
import sys
import device.sources as sources
def failing_source(self):
    raise RuntimeError("injected: the source loop fails")
def supervisor_gives_up(self, exc):
    raise exc  # the supervisor itself fails: the camera thread ends
sources.Camera._run_source = failing_source
sources.Camera._after_failure = supervisor_gives_up
from edge_inspect.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_a_camera_thread_that_dies_makes_the_daemon_exit_1_and_say_why(tmp_path, broker):
    folder = tmp_path / "drop"
    folder.mkdir()
    copy_sample(0, folder / "img-0.jpg")
    sub = Subscriber(broker.port, "edge-inspect/#")
    config = write_config(tmp_path / "config.yaml", broker.port, [{"id": "drop", "source": str(folder)}],
                          state_dir=str(tmp_path / "state"))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-c", INJECT_DEAD_CAMERA, str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.wait(60) == 1, log.read_text()[-3000:]  # the README's promise: a supervisor restarts it
        assert "not callable" not in log.read_text()
        assert sub.wait_for(lambda s: any(p.get("type") == "camera_failed" and "drop" in p.get("message", "")
                                          for p in s.payloads("/errors")), 10), log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
