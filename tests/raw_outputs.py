"""Run as a script (also under qemu-user): the raw model outputs on some photos, saved as .npy.

    python tests/raw_outputs.py MODEL OUT.npy IMAGE...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from device.detector import Detector
from device.images import read_image

if __name__ == "__main__":
    model, out, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    detector = Detector(model, runtime="openvino" if model.endswith(".xml") else "onnxruntime")
    np.save(out, np.stack([detector.infer(detector.preprocess(read_image(Path(p)))[0]) for p in images]))
