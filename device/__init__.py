"""The edge device: cameras -> YOLOv8 (ONNX Runtime) -> defect events -> sinks. No torch, no cloud."""

import os

# OpenCV's own cap on decoded pixels, read once when cv2 is first imported (which happens after
# this package is imported). Image files are already checked before decoding
# (`device.images.load_image`); this is the backstop for every other imdecode, at the largest
# `max_pixels` the configuration allows.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(200_000_000))
