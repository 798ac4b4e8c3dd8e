"""A real Label Studio server for the tests: installed by `scripts/label-studio.sh` into its own
virtualenv, started on a free loopback port with a temporary data directory, one admin user and a
known API token; stopped at the end of the session.

`tests/conftest.py` can share it with every module:

    from label_studio_server import label_studio  # noqa: F401  (a session fixture)
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_inspect.loopback import free_port

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "label-studio.sh"
INSTALL_TIMEOUT_S = 900.0  # a first install takes ~100 s here; leave room for a slow registry
START_TIMEOUT_S = 240.0  # migrations on a fresh SQLite file then Django: ~30 s here, slower on a busy machine
STOP_TIMEOUT_S = 20.0
ADMIN_EMAIL = "admin@edge-inspect.test"


@dataclass(frozen=True)
class LabelStudioPeer:
    """What a test needs to talk to the server (the token is the admin's legacy API token)."""

    url: str
    token: str
    email: str
    log: Path


def label_studio_executable() -> Path:
    """Install Label Studio if it is not there yet and return its `label-studio` executable."""
    done = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _server_env(data_dir: Path) -> dict[str, str]:
    # Label Studio reads LABEL_STUDIO_X, HEARTEX_X and plain X for each setting (USERNAME, PASSWORD,
    # PORT...): drop whatever the caller's environment has of those so only our arguments count.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and k not in ("USERNAME", "PASSWORD", "PORT", "HOST")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LATEST_VERSION_CHECK": "false",  # else `start` hangs on PyPI's version API (no internet here)
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # 1.23 refuses `Token ...` auth by default
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",  # the default DSN reports errors to Label Studio's Sentry
        "FRONTEND_SENTRY_DSN": "",
    })
    return env


class LabelStudioServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)  # the shape of Label Studio's own legacy tokens
        self.log = workdir / "label-studio.log"
        self.proc: subprocess.Popen | None = None

    def start(self, executable: Path) -> LabelStudioPeer:
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        # the admin user, through the environment rather than `--username/--password/--user-token`:
        # the same settings, but not readable by every user of the machine in `ps`
        env = _server_env(data_dir) | {"LABEL_STUDIO_USERNAME": ADMIN_EMAIL,
                                       "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
                                       "LABEL_STUDIO_USER_TOKEN": self.token}
        # its own session: `stop` signals the server's whole process group, nothing else
        self.proc = subprocess.Popen(command, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_up()
        return LabelStudioPeer(self.url, self.token, ADMIN_EMAIL, self.log)

    def _wait_until_up(self) -> None:
        """Until /health says UP; a server that exits or takes too long fails with its log."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                self._fail(f"exited with {self.proc.returncode} before it was up")
            if self._health() == "UP":
                return
            time.sleep(0.5)
        self.stop()
        self._fail(f"did not answer /health with UP within {START_TIMEOUT_S:.0f} s")

    def _health(self) -> str | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return json.loads(reply.read()).get("status")
        except (OSError, ValueError, AttributeError):  # not listening yet, a half-started server, not JSON
            return None

    def _fail(self, what: str) -> None:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        raise RuntimeError(f"Label Studio on {self.url} {what}; its log ({self.log}), last lines:\n{text[-6000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group is this server's alone (start_new_session)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioPeer]:
    """A real Label Studio (installed on first use), shared by the session: url, token, admin email."""
    executable = label_studio_executable()
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server.start(executable)
    finally:
        server.stop()
