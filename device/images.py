"""Reading images from disk for the CLI and for folder sources, with errors a user can act on.

Every read is bounded before it costs memory: a hostile or broken file must not take the memory of
a 1-2 GB edge box. Two limits, checked in this order:

1. the file size, from `fstat` of the opened file, before a single byte is read (a 3 GiB file,
   sparse or not, is set aside unread);
2. the pixel count the image header declares, before anything is decoded (a 389 KB PNG can
   declare 20000x20000 pixels: 1.2 GB once decoded to BGR);
3. for a JPEG, the declared size against the bytes that are there: a Huffman-coded JPEG spends at
   least one bit on every 8x8 block (its DC coefficient), so a header declaring 6000x6000 over a
   few hundred bytes of data is a lie or a truncation, refused before OpenCV decodes it (it would
   fill the missing 36 M pixels with grey and hand them on as an image).

The header is read by Pillow, which parses headers only on `Image.open` and never decodes there.
The bytes Pillow checks are the very bytes OpenCV then decodes (one read into memory), so a file
swapped between the check and the decode cannot slip through.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from device.config import CameraConfig

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# The Pillow formats that match IMAGE_SUFFIXES: no other parser ever sees a file we read.
HEADER_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

DEFAULT_MAX_FILE_BYTES: int = CameraConfig.model_fields["max_file_bytes"].default
DEFAULT_MAX_PIXELS: int = CameraConfig.model_fields["max_pixels"].default

# We enforce our own pixel limit (max_pixels) from the header; Pillow's warning for large images
# would only repeat it, on stderr. Pillow still raises DecompressionBombError above
# 2 * Image.MAX_IMAGE_PIXELS (about 179 M pixels), which we report as too many pixels.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageInputError(ValueError):
    """A path given as input that holds no usable image."""


class ImageRejected(ImageInputError):
    """An image file set aside unread or undecoded; `reason` reads after "is" or after ": "."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass(frozen=True)
class FileKey:
    """What identifies one version of a file: a file replaced under the same name changes it."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileKey:
        return cls(st.st_size, st.st_mtime_ns)


def load_image(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, FileKey]:
    """A BGR uint8 image and the key of the file version it came from; ImageRejected (with the
    reason) for anything that is not a readable image within the limits."""
    path = Path(path)
    data, key = _read_bounded(path, max_file_bytes)
    return decode_image(data, path, max_pixels), key


def decode_image(data: bytes, source: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = HEADER_FORMATS) -> np.ndarray:
    """Bytes already read (a file, an object from a bucket) as a BGR uint8 image: the header's
    pixel count checked before anything is decoded; ImageRejected naming `source` otherwise."""
    _check_pixels(source, data, max_pixels, formats)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own checks (e.g. OPENCV_IO_MAX_IMAGE_PIXELS)
        raise ImageRejected(source, f"not a readable image ({str(exc).strip().splitlines()[-1]})") from None
    if image is None:
        raise ImageRejected(source, "not a readable image (empty, truncated or not an image format)")
    return image


def read_image(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A BGR uint8 image; a missing, empty, truncated, oversized or non-image file raises
    ImageInputError (the limits default to a camera's: see CameraConfig)."""
    return load_image(path, max_file_bytes, max_pixels)[0]


def _read_bounded(path: Path, max_file_bytes: int) -> tuple[bytes, FileKey]:
    """The whole file, read only if its size is within the limit."""
    try:
        # O_NONBLOCK: a FIFO named like an image must not block the reader forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageRejected(path, _open_failure(path, exc)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageRejected(path, "a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageRejected(path, "not a regular file (a FIFO, socket or device)")
        if st.st_size > max_file_bytes:
            raise ImageRejected(path, f"too large: {st.st_size} bytes, the limit (max_file_bytes) is {max_file_bytes}")
        if st.st_size == 0:
            raise ImageRejected(path, "not a readable image (empty file)")
        # One byte more than fstat said, to notice a file still being written.
        data = _read_up_to(fd, st.st_size + 1)
    except OSError as exc:  # an I/O error on a bad disk or a network mount gone away
        raise ImageRejected(path, f"not readable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise ImageRejected(path, "not a readable image yet (it grew while being read)")
    return data, FileKey.of(st)


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(limit - total, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _open_failure(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "a dangling symlink" if path.is_symlink() else "no such file"
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return f"not readable ({exc.strerror or exc})"


def _check_pixels(path: str | Path, data: bytes, max_pixels: int, formats: tuple[str, ...] = HEADER_FORMATS) -> None:
    """Refuse an image whose header declares more than `max_pixels`; nothing is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=formats) as probe:
            (width, height), kind = probe.size, probe.format
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above any sane max_pixels
        raise ImageRejected(path, f"too many pixels ({exc}); the limit (max_pixels) is {max_pixels}") from None
    except UnidentifiedImageError:
        kinds = "JPEG, PNG, BMP, TIFF or WebP" if formats == HEADER_FORMATS else " or ".join(formats)
        raise ImageRejected(path, f"not a readable image (not a {kinds} file)") from None
    except Exception as exc:  # Pillow raises many types for a header it cannot parse
        raise ImageRejected(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if width * height > max_pixels:
        raise ImageRejected(path, f"too many pixels: the header declares {width}x{height} "
                                  f"({width * height}), the limit (max_pixels) is {max_pixels}")
    if kind in ("JPEG", "MPO"):  # MPO: a JPEG with an MPF segment
        coded = jpeg_scan_bytes(data)
        if coded < jpeg_min_bytes(width, height):
            raise ImageRejected(path, f"not a readable image: the header declares {width}x{height}, more than "
                                      f"{coded} bytes of coded image data can hold (at least "
                                      f"{jpeg_min_bytes(width, height)}): a lying or truncated header")


def jpeg_min_bytes(width: int, height: int) -> int:
    """The fewest bytes a Huffman-coded JPEG of this size can take: one bit per 8x8 block of one
    component (each block's DC code is at least one bit long), headers not counted."""
    return (-(-width // 8) * -(-height // 8)) // 8


def jpeg_scan_bytes(data: bytes) -> int:
    """How many bytes of a JPEG are coded image data (what follows each SOS header up to the next
    marker): comment or APPn segments padded on to a small image must not make room for a lying
    header. A stream that ends early counts what is there."""
    pos, total, size = 2, 0, len(data)  # after SOI
    while pos + 1 < size:
        if data[pos] != 0xFF:
            pos += 1  # garbage between segments: the decoder decides about it
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if pos + 3 >= size:
            break
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != 0xDA:  # SOS
            pos = end
            continue
        pos = end
        while True:  # entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart marker
            found = data.find(b"\xff", pos)
            if found < 0 or found + 1 >= size:
                total += max(0, size - end)
                return total
            following = data[found + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos = found + 2
                continue
            total += found - end
            pos = found
            break
    return total


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus the images (by suffix, sorted) inside folders given.

    A folder with no image in it, or a path that does not exist, is an error: a user who points
    the tool at the wrong place should hear so rather than get an empty result.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ImageInputError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageInputError(f"{path}: no such file or folder")
    return found
