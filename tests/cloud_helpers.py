"""Running `edge-inspect cloud ...` as a subprocess, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO


def write_cloud_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def cloud(config: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def cloud_json(config: Path, *args: str, env: dict | None = None) -> dict:
    done = cloud(config, *args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class CloudServe:
    """`edge-inspect cloud serve [args]`, logging to a file beside its config."""

    def __init__(self, config: Path, *args: str, env: dict | None = None, log_name: str = "serve.log") -> None:
        self.log = config.parent / log_name
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_inspect", "cloud", "--config", str(config), "serve",
                                      *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("a"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
