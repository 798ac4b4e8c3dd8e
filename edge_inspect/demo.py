"""`edge-inspect demo`: the daemon on a demo line, alerts arriving at an MQTT subscriber.

It makes a video from the sample photos (each tag fades in, is held, then the line is empty for
a moment), starts a private mosquitto on a free loopback port, subscribes to the alerts, runs the
daemon on the video in real time, and prints each alert as it arrives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho

from device.daemon import Daemon
from device.images import read_image
from edge_inspect.loopback import free_port, wait_until_listening
from edge_inspect.paths import SAMPLES_DIR

FPS = 10
SIZE = (450, 300)


class DemoError(RuntimeError):
    pass


def demo_video(out: Path, images: list[Path], hold_s: float = 2.0, gap_s: float = 1.0, fps: int = FPS) -> Path:
    """MJPEG in AVI (OpenCV writes and reads it everywhere, FFmpeg included)."""
    blank = np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    if not writer.isOpened():
        raise DemoError(f"cannot write video {out}")
    hold, gap = max(1, round(hold_s * fps)), round(gap_s * fps)
    for path in images:
        image = cv2.resize(read_image(path), SIZE)
        for i in range(hold):
            alpha = min(1.0, 0.45 + 0.55 * i / (hold * 0.6))  # fade in: scores rise, `update`s follow
            writer.write(cv2.addWeighted(image, alpha, blank, 1 - alpha, 0))
        for _ in range(gap):
            writer.write(blank)
    writer.release()
    return out


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise DemoError("mosquitto is not installed (Debian/Ubuntu: sudo apt-get install mosquitto)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if wait_until_listening(port, 10):
        return proc, port
    proc.kill()
    raise DemoError("mosquitto did not start")


def _print_alert(topic: str, payload: bytes, counts: dict[str, int]) -> None:
    if topic.endswith("/events"):
        event = json.loads(payload)
        counts[event["type"]] = counts.get(event["type"], 0) + 1
        box = ", ".join(f"{v:.0f}" for v in event["box"])
        print(f"  {event['frame_time'][11:23]}  {event['type']:<6} {event['class']} score {event['score']:.2f} "
              f"box [{box}]  event {event['event_id'][:8]}", flush=True)
    elif topic.endswith("/status"):
        status = json.loads(payload)
        print(f"  camera {status['camera']}: {status['state']}", flush=True)


def run_demo(model: Path | None = None) -> int:
    images = sorted(SAMPLES_DIR.glob("*.jpg"))
    if not images:
        raise DemoError(f"no sample images in {SAMPLES_DIR}")
    with tempfile.TemporaryDirectory(prefix="edge-inspect-demo-") as tmp:
        workdir = Path(tmp)
        video = demo_video(workdir / "line.avi", images)
        broker, port = start_mosquitto(workdir)
        counts: dict[str, int] = {}
        subscriber = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="demo-subscriber")
        connected = threading.Event()
        subscriber.on_connect = lambda c, u, f, rc, p: (c.subscribe("edge-inspect/#", qos=1), connected.set())
        subscriber.on_message = lambda c, u, m: _print_alert(m.topic, m.payload, counts)
        try:
            subscriber.connect("127.0.0.1", port)
            subscriber.loop_start()
            connected.wait(5)
            print(f"mosquitto on 127.0.0.1:{port}; to watch yourself while it runs:\n"
                  f"  mosquitto_sub -h 127.0.0.1 -p {port} -t 'edge-inspect/#' -v\n"
                  f"daemon: {len(images)} tags pass camera 'line-demo' at {FPS} fps; alerts as they arrive:", flush=True)
            config = {
                "thing_name": "demo-line",
                "state_dir": str(workdir / "state"),
                "mqtt": {"host": "127.0.0.1", "port": port},
                "cameras": [{"id": "line-demo", "source": str(video), "realtime": True}],
                "events": {"min_hits": 3, "window": 5, "end_after_s": 0.5},
                "stats": {"interval_s": 5},
                "model": {"path": str(model)} if model else {},
                "log_level": "WARNING",
            }
            daemon = Daemon(config, "demo")
            daemon.run()
            time.sleep(0.5)  # the last messages reach the subscriber
        finally:
            subscriber.loop_stop()
            subscriber.disconnect()
            broker.terminate()
            broker.wait(5)
    print(f"demo done: {daemon.frames_processed} frames, {counts.get('new', 0)} defects raised "
          f"({counts.get('update', 0)} updates, {counts.get('end', 0)} ended) with model "
          f"{daemon.models.identity.name}")
    return 0
