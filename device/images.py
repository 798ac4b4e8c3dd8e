"""Reading images from disk for the CLI and for folder sources, with errors a user can act on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageInputError(ValueError):
    """A path given as input that holds no usable image."""


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image; a missing, empty, truncated or non-image file raises ImageInputError."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such file")
    # imdecode from bytes rather than imread so a non-ASCII path or a file that grows while we
    # read it gives a clean failure instead of a partial frame.
    data = np.fromfile(path, dtype=np.uint8)
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if frame is None:
        raise ImageInputError(f"{path}: not a readable image (empty, truncated or not an image format)")
    return frame


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
