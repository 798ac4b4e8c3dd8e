"""Private copies of the models a daemon serves, so that the bytes it checks are the bytes it loads.

A watched model folder can be written by others (a deployer, an operator, an attacker). Were the
daemon to hash the file there, then let the runtime open it again, then hash it a third time, a
writer flipping the file A -> B -> A between those opens would get B served while A's sha256 is
reported. So every load first copies the model's files and its card into a folder only this
process writes (mode 0700), and custody, the runtime and every later read of the card use that
copy, which nothing else changes.

Where: `<state_dir>/models/<random>/` for the daemon (on its disk, not in RAM: /tmp is often a
tmpfs), else a private temporary folder. A copy lives as long as the Detector loaded from it (it
is removed when that Detector is dropped, so after a swap the previous one goes; at exit too).
A copy left by a killed process is removed by the next one: each live copy holds a lock on its
folder, and a folder nobody holds is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from device.model_card import card_path_for
from device.runtimes import ModelError, ModelNotFoundError, model_files

ROOT_LOCK = ".lock"
CHUNK = 1 << 20


@dataclass
class Snapshot:
    """A private copy of one model (its files, and its card if it had one)."""

    folder: Path
    model: Path  # the copy of the model file, named as the original
    source: Path  # the configured path it was copied from: what messages name
    _fd: int | None = field(default=None, repr=False)  # the lock that marks the copy as in use

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def shown(self, text: str) -> str:
        """`text` (an error message) naming the configured files, not the private copies."""
        return text.replace(str(self.model), str(self.source)).replace(str(self.folder), str(self.source.parent))


def _copy(source: Path, target: Path, limit: int | None = None) -> None:
    """Copy one regular file, opened once. A FIFO or a device is refused without blocking on it;
    `limit`: copy at most that many bytes plus one (enough for the reader to see it is too big)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ModelNotFoundError(f"model file {source} does not exist") from None
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelNotFoundError(f"model file {source} is not a regular file")
        os.set_blocking(fd, True)
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as dst:
            if limit is None:
                shutil.copyfileobj(src, dst, CHUNK)
            else:
                dst.write(src.read(limit + 1))


def _remove_stale(root: Path) -> None:
    """Remove the copies no live process holds (left by a kill -9 or a power cut)."""
    for folder in root.iterdir():
        if folder.name == ROOT_LOCK or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # in use by a live process
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


def _new_folder(root: Path | None) -> tuple[Path, int | None]:
    if root is None:
        return Path(tempfile.mkdtemp(prefix="edge-inspect-model-")), None  # 0700, ours alone
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    lock = os.open(root / ROOT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # no other process cleans while this copy is being made
        _remove_stale(root)
        folder = root / uuid.uuid4().hex
        folder.mkdir(mode=0o700)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return folder, fd
    finally:
        os.close(lock)


def take_snapshot(path: Path, root: Path | None = None, card_limit: int | None = None) -> Snapshot:
    """Copy the model at `path` (an IR: its .xml and .bin) and its card into a new private folder
    under `root` (None: a private temporary folder). Raises ModelError, removing what it made."""
    path = Path(path)
    try:
        folder, fd = _new_folder(root)
    except OSError as exc:
        raise ModelError(f"cannot make a private copy of {path.name} in {root} ({exc.strerror or exc})") from None
    snapshot = Snapshot(folder, folder / path.name, path, fd)
    try:
        for file in model_files(path):
            _copy(file, folder / file.name)
        card = card_path_for(path)
        with contextlib.suppress(ModelNotFoundError):  # no card: custody decides whether that is allowed
            _copy(card, folder / card.name, card_limit)
    except OSError as exc:
        snapshot.remove()
        raise ModelError(f"cannot copy {path.name} to {folder} to check it ({exc.strerror or exc})") from None
    except BaseException:
        snapshot.remove()
        raise
    return snapshot
