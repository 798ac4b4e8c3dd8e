"""The durable outbox of sampled frames: a JPEG and a JSON sidecar per frame, named by the
JPEG's sha256 (`<sha>.jpg`, `<sha>.json`).

The directory is the truth. Each file is written to a temporary name, fsynced, and renamed into
place, the JPEG first and the sidecar last: a frame exists once its sidecar does. A write that
fails (disk full, read-only, I/O error) cleans up after itself: its temporary file is removed, and
a JPEG already renamed into place goes too when its sidecar cannot be written; each failed write is
counted (`write_failures`) and logged once per burst. At start,
temporary files and JPEGs without a sidecar (a crash mid-write) are removed, and the index is
rebuilt from the sidecars. A sidecar that does not parse, or whose JPEG is missing or does not
match its hash, is moved to `quarantine/` with a log line, and the rest goes on.

Bounded by bytes and by a minimum of free disk: the oldest frames are evicted first, and every
eviction is counted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
QUARANTINE = "quarantine"


class SpoolError(RuntimeError):
    pass


class SpoolWriteError(SpoolError):
    """A put failed while writing (the OSError is its __cause__); the spool has cleaned up,
    counted it in `write_failures` and logged it (once per burst)."""


@dataclass(frozen=True)
class SpoolItem:
    sha256: str
    jpeg: Path
    sidecar: Path
    size: int  # bytes of both files
    created: float  # the frame time (epoch seconds), for eviction order and S3 keys


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # nothing more to do here; start-up cleans what is left
        log.warning("spool: could not remove %s: %s", path.name, exc)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it into place, fsync the
    folder. If anything before the rename fails the temporary file is removed and the error
    raised: a failed write leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


class Spool:
    def __init__(self, root: Path, max_bytes: int, min_free_bytes: int = 0, jpeg_quality: int = 90) -> None:
        self.root = Path(root)
        self.max_bytes, self.min_free_bytes, self.jpeg_quality = max_bytes, min_free_bytes, jpeg_quality
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / QUARANTINE).mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._items: dict[str, SpoolItem] = {}
        self.evicted = 0
        self.quarantined = 0
        self.written = 0
        self.write_failures = 0  # puts that failed while writing (disk full, I/O error), each counted
        self._failure_burst = 0  # failures since the last successful write; logged once per burst
        self.recover()

    # --- start-up ---------------------------------------------------------------------------------

    def recover(self) -> None:
        """Clean what a crash left and rebuild the index from the directory."""
        with self._lock:
            self._items.clear()
            for path in self.root.iterdir():
                if path.name.endswith(TMP_SUFFIX):
                    path.unlink(missing_ok=True)
            for jpeg in self.root.glob("*.jpg"):
                if not jpeg.with_suffix(".json").exists():
                    log.info("spool: removing %s, written without its sidecar (interrupted)", jpeg.name)
                    jpeg.unlink(missing_ok=True)
            for sidecar in sorted(self.root.glob("*.json")):
                item = self._load(sidecar)
                if item is not None:
                    self._items[item.sha256] = item

    def _load(self, sidecar: Path) -> SpoolItem | None:
        jpeg = sidecar.with_suffix(".jpg")
        try:
            meta = json.loads(sidecar.read_text())
            created = float(meta["frame_time_epoch"])
            if not jpeg.is_file():
                raise SpoolError("its JPEG is missing")
            return SpoolItem(sidecar.stem, jpeg, sidecar, jpeg.stat().st_size + sidecar.stat().st_size, created)
        except (OSError, ValueError, KeyError, TypeError, SpoolError) as exc:
            self._quarantine(sidecar.stem, f"unreadable sidecar ({exc})")
            return None

    def _quarantine(self, sha: str, reason: str) -> None:
        log.warning("spool: setting %s aside in %s/: %s", sha, QUARANTINE, reason)
        self.quarantined += 1
        for suffix in (".jpg", ".json"):
            path = self.root / f"{sha}{suffix}"
            if path.exists():
                os.replace(path, self.root / QUARANTINE / path.name)

    # --- writing ----------------------------------------------------------------------------------

    def encode(self, image: np.ndarray) -> bytes:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise SpoolError("JPEG encoding failed")
        return buffer.tobytes()

    def put(self, image: np.ndarray, sidecar: dict[str, Any]) -> SpoolItem | None:
        """Store one frame; None if an identical frame is already spooled."""
        jpeg_bytes = self.encode(image)
        sha = hashlib.sha256(jpeg_bytes).hexdigest()
        meta = {**sidecar, "jpeg_sha256": sha, "jpeg_bytes": len(jpeg_bytes)}
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        with self._lock:
            if sha in self._items:
                return None
            self._make_room(len(jpeg_bytes) + len(meta_bytes))
            jpeg, side = self.root / f"{sha}.jpg", self.root / f"{sha}.json"
            try:
                self._write_frame(jpeg, side, jpeg_bytes, meta_bytes)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._items:
                    self._write_failed(sha, exc)
                    raise SpoolWriteError(f"could not write {sha[:12]}: {exc}") from exc
                # The byte count said there was room, the filesystem disagrees (whole blocks,
                # inodes, another writer): make room the hard way, oldest first, and try once more.
                self._evict_oldest("the disk is full")
                try:
                    self._write_frame(jpeg, side, jpeg_bytes, meta_bytes)
                except OSError as again:
                    self._write_failed(sha, again)
                    raise SpoolWriteError(f"could not write {sha[:12]}: {again}") from again
            if self._failure_burst:
                log.warning("spool: writing again after %d failed write(s)", self._failure_burst)
                self._failure_burst = 0
            item = SpoolItem(sha, jpeg, side, len(jpeg_bytes) + len(meta_bytes), float(sidecar["frame_time_epoch"]))
            self._items[sha] = item
            self.written += 1
            return item

    @staticmethod
    def _write_frame(jpeg: Path, side: Path, jpeg_bytes: bytes, meta_bytes: bytes) -> None:
        try:
            write_atomically(jpeg, jpeg_bytes)
            write_atomically(side, meta_bytes)  # the frame exists from here on
        except OSError:
            # A frame exists only once its sidecar does: a JPEG (or a sidecar whose folder
            # fsync failed) left from this attempt would be debris the index does not know.
            _unlink_quietly(side)
            _unlink_quietly(jpeg)
            raise

    def _write_failed(self, sha: str, exc: OSError) -> None:
        self.write_failures += 1
        self._failure_burst += 1
        if self._failure_burst == 1:  # the first of a burst; the rest are counted until a write succeeds
            log.error("spool: could not write %s (%s); nothing left behind. Further failures are counted "
                      "(write_failures), not logged, until a write succeeds", sha[:12], exc)

    def _make_room(self, incoming: int) -> None:
        def over() -> bool:
            free = shutil.disk_usage(self.root).free
            return self._bytes() + incoming > self.max_bytes or free - incoming < self.min_free_bytes

        while self._items and over():
            self._evict_oldest("to stay within limits")
        if over():
            raise SpoolError("no room in the spool even when empty (disk full?)")

    def _evict_oldest(self, why: str) -> None:
        oldest = min(self._items.values(), key=lambda i: (i.created, i.sha256))
        self._remove_locked(oldest)
        self.evicted += 1
        log.warning("spool: evicted %s (oldest) %s", oldest.sha256[:12], why)

    def _bytes(self) -> int:
        return sum(i.size for i in self._items.values())

    # --- reading and removing ---------------------------------------------------------------------

    def oldest(self, limit: int) -> list[SpoolItem]:
        with self._lock:
            return sorted(self._items.values(), key=lambda i: (i.created, i.sha256))[:limit]

    def read(self, item: SpoolItem) -> tuple[bytes, bytes]:
        """Both files, checked: a damaged item is quarantined and SpoolError raised."""
        try:
            jpeg, sidecar = item.jpeg.read_bytes(), item.sidecar.read_bytes()
            meta = json.loads(sidecar)
        except (OSError, ValueError) as exc:
            self.discard(item, f"unreadable ({exc})")
            raise SpoolError(f"{item.sha256}: unreadable") from None
        if hashlib.sha256(jpeg).hexdigest() != item.sha256 or meta.get("jpeg_sha256") != item.sha256:
            self.discard(item, "JPEG does not match its sha256 (truncated or altered)")
            raise SpoolError(f"{item.sha256}: damaged")
        if cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is None:
            self.discard(item, "JPEG does not decode")
            raise SpoolError(f"{item.sha256}: not a JPEG")
        return jpeg, sidecar

    def discard(self, item: SpoolItem, reason: str) -> None:
        with self._lock:
            self._items.pop(item.sha256, None)
            self._quarantine(item.sha256, reason)

    def remove(self, item: SpoolItem) -> None:
        """After the upload is confirmed: sidecar first, so a crash leaves only a JPEG without
        sidecar, which start-up cleans (it is in S3 already)."""
        with self._lock:
            self._remove_locked(item)

    def _remove_locked(self, item: SpoolItem) -> None:
        self._items.pop(item.sha256, None)
        item.sidecar.unlink(missing_ok=True)
        item.jpeg.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes()
