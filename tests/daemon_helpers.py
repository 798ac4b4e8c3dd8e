"""Running the real daemon (`python -m edge_inspect run`) as a subprocess against real peers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import METAL_TAGS, REPO

from edge_inspect.demo import demo_video

SCRATCHED = [REPO / "samples" / f"image-2020-04-22-{n}.jpg" for n in (
    "10-55-39-46-cropped-left-top", "11-01-09-04-cropped-right-top",
    "11-05-09-64-cropped-left-bottom", "11-07-42-18-cropped-left-bottom")]
CLEAN = [METAL_TAGS / "images" / f"image-2020-04-22-{n}.jpg" for n in (  # the five with no label
    "10-15-16-00-cropped-left-top", "10-15-03-04-cropped-left-bottom", "10-15-03-04-cropped-left-top",
    "10-15-03-04-cropped-right-top", "10-15-16-00-cropped-right-bottom")]


def scratch_video(path: Path, fps: int = 10, hold_frames: int = 20, gap_frames: int = 30) -> Path:
    """Each scratched tag fades in (scores rise: `update` events), is held, then an empty gap
    follows (the defect `end`s)."""
    return demo_video(path, SCRATCHED, hold_s=hold_frames / fps, gap_s=gap_frames / fps, fps=fps)


def clean_video(path: Path, fps: int = 10, hold_frames: int = 20) -> Path:
    return demo_video(path, CLEAN, hold_s=hold_frames / fps, gap_s=0, fps=fps)


def write_config(path: Path, port: int, cameras: list[dict], **extra) -> Path:
    config = {
        "thing_name": "line-1",
        "state_dir": str(path.parent / "state"),
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 1, "reconnect_max_s": 2},
        "cameras": cameras,
        "events": {"min_hits": 3, "window": 5, "end_after_s": 1.0, "update_min_delta": 0.05},
        "stats": {"interval_s": 1},
        "file_sink": {"path": str(path.parent / "messages.jsonl")},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


class DaemonProcess:
    def __init__(self, config: Path) -> None:
        self.log = config.parent / "daemon.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_inspect", "run", "--config", str(config)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_text(self) -> str:
        return self.log.read_text()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
