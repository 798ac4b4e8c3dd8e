"""Pre-labels: the production model's boxes on a frame, through the device's own detector (the
same pre- and post-processing the line runs), as the labelers' starting point. People adjust and
verify instead of drawing every box."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.labeling.service import Box
from device.detector import Detector

DEFAULT_CONF = 0.25  # Ultralytics' predict default: a faint box is cheaper to delete than to draw


class PreLabeler:
    def __init__(self, model_path: Path, conf: float = DEFAULT_CONF) -> None:
        self.detector = Detector(model_path, conf=conf)
        self.model_path = Path(model_path)

    @property
    def classes(self) -> list[str]:
        return list(self.detector.class_names)

    def boxes(self, image_bgr: np.ndarray) -> list[Box]:
        return [Box(class_name=d.class_name, left=d.box[0], top=d.box[1], width=d.box[2] - d.box[0],
                    height=d.box[3] - d.box[1], score=round(d.confidence, 5))
                for d in self.detector.detect(image_bgr)
                if d.box[2] > d.box[0] and d.box[3] > d.box[1]]
