"""One labeling loop per state file: an exclusive lock on `{state}.lock`, held for the life of the
process that runs the loop (`cloud serve`, `cloud label`).

Two loops on one state file would each submit the same batch (a backend's idempotence holds for
one caller at a time) and fight over its frames. `flock` is released by the kernel when the
process ends, however it ends (`kill -9` included), so a stale lock never blocks a restart; the
file holds the holder's pid only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cloud.ingest.state import StateError


class StateInUse(StateError):
    """Another process holds the state file's lock; the message names its pid and the fix."""


def lock_path(state_path: Path) -> Path:
    """Beside the file the path leads to: a state reached by a symlink shares its lock."""
    state_path = Path(state_path).resolve()
    return state_path.with_name(state_path.name + ".lock")


class StateLock:
    """Held from `acquire` until the process ends (or `release`)."""

    def __init__(self, state_path: Path) -> None:
        self.state_path, self.path = Path(state_path), lock_path(state_path)
        self._fd: int | None = None

    def acquire(self, who: str = "cloud serve") -> StateLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the lock file {self.path} ({exc.strerror or exc}): the labeling state's "
                             "folder must be a folder (is `labeling.state_path` right?) the service can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateInUse(f"the labeling state {self.state_path} is in use by another labeling loop "
                             f"({holder or 'pid unknown'}; lock {self.path}): one `cloud serve` per state file; "
                             "stop that one first, or give this one its own `labeling.state_path`") from None
        try:  # the pid is only a courtesy for the refusal: a full disk must not stop the holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {who}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    """`pid N: what` from the lock file, or "" when the holder wrote nothing (a full disk)."""
    try:
        pid, _, what = os.pread(fd, 128, 0).decode("ascii", "replace").strip().partition(" ")
    except OSError:
        return ""
    return f"pid {pid}: {what}" if pid.isdigit() else ""
