"""Sources that fail and come back: the camera status goes offline, then online, no restart."""

from __future__ import annotations

import shutil
import subprocess

from conftest import REPO
from daemon_helpers import DaemonProcess, scratch_video, write_config
from mosquitto import Subscriber

from device.messages import validate
from edge_inspect.loopback import free_port

DEBIAN_PYTHON = "/usr/bin/python3"


def states(sub: Subscriber, camera: str) -> list[str]:
    payloads = sub.payloads(f"/{camera}/status")
    for p in payloads:
        validate("status", p)
    return [p["state"] for p in payloads]


def saw_after(sequence: list[str], *wanted: str) -> bool:
    """`wanted` appear in this order (not necessarily adjacent)."""
    position = 0
    for state in sequence:
        if position < len(wanted) and state == wanted[position]:
            position += 1
    return position == len(wanted)


def test_video_file_that_disappears_and_comes_back(tmp_path, broker):
    video = scratch_video(tmp_path / "line.avi", hold_frames=5, gap_frames=5)
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port, [
        {"id": "cam", "source": str(video), "loop": True, "realtime": True, "watchdog_s": 1,
         "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}]))
    try:
        assert sub.wait_for(lambda s: "online" in states(s, "cam"), 60), daemon.log_text()[-2000:]
        hidden = tmp_path / "elsewhere.avi"
        video.rename(hidden)
        assert sub.wait_for(lambda s: saw_after(states(s, "cam"), "online", "offline"), 30), daemon.log_text()[-2000:]
        hidden.rename(video)
        assert sub.wait_for(lambda s: saw_after(states(s, "cam"), "online", "offline", "online"), 30)
        assert daemon.proc.poll() is None, "the daemon kept running"
    finally:
        daemon.stop()
        sub.close()


def test_rtsp_stream_that_stops_and_starts_again(tmp_path, broker):
    port = free_port()
    server_cmd = [DEBIAN_PYTHON, str(REPO / "tests" / "rtsp_server.py"), str(port)]

    def start_server() -> subprocess.Popen:
        proc = subprocess.Popen(server_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    server = start_server()
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port, [
        {"id": "rtsp", "source": f"rtsp://127.0.0.1:{port}/cam", "watchdog_s": 2,
         "reconnect_min_s": 0.5, "reconnect_max_s": 1}]))
    try:
        assert sub.wait_for(lambda s: "online" in states(s, "rtsp"), 60), daemon.log_text()[-2000:]
        assert sub.wait_for(lambda s: any(p["cameras"]["rtsp"]["frames_processed"] > 5 for p in s.payloads("/stats")), 30)
        server.terminate()
        server.wait(5)
        assert sub.wait_for(lambda s: saw_after(states(s, "rtsp"), "online", "offline"), 40), daemon.log_text()[-2000:]
        server = start_server()
        assert sub.wait_for(lambda s: saw_after(states(s, "rtsp"), "online", "offline", "online"), 60), \
            daemon.log_text()[-2000:]
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
        server.terminate()
        sub.close()


def test_folder_source_picks_up_new_images(tmp_path, broker):
    folder = tmp_path / "drop"
    folder.mkdir()
    sub = Subscriber(broker.port, "edge-inspect/#")
    daemon = DaemonProcess(write_config(tmp_path / "config.yaml", broker.port, [{"id": "drop", "source": str(folder)}]))
    try:
        assert sub.wait_for(lambda s: "online" in states(s, "drop"), 60)
        for image in sorted((REPO / "samples").glob("*.jpg"))[:3]:
            shutil.copy(image, folder / image.name)
        (folder / "broken.jpg").write_bytes(b"not an image")
        assert sub.wait_for(lambda s: any(p["cameras"]["drop"]["frames_processed"] == 3 for p in s.payloads("/stats")), 30)
        assert "broken.jpg is not a readable image" in daemon.log_text()
    finally:
        daemon.stop()
        sub.close()
