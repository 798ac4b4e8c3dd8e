"""A frame's perceptual fingerprint (dHash), to tell a new picture from the same one again: the
sampler suppresses near-duplicate samples with it, the drift monitor counts distinct frames."""

from __future__ import annotations

import cv2
import numpy as np


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: a 9x8 grey thumbnail, one bit per horizontal gradient sign."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
