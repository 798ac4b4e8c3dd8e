"""`edge-inspect quantize`: INT8 for either device runtime, behind one accuracy gate.

- `onnxruntime.py`: static QDQ quantization with onnxruntime.quantization (an `.onnx` INT8 model).
- `openvino.py`: NNCF post-training quantization (an OpenVINO IR INT8 model).
- `gate.py`: what every candidate must pass, shared by both: mAP on every labelled photo the FP32
  model never trained on, measured through the device's own detector and runtime on this machine,
  and fidelity to the FP32 model's alerts on the same photos.
- `inputs.py`: which photos calibrate (training photos only) and which gate (the held-out ones).
- `pipeline.py`: candidates -> gate -> the fastest that passes -> model + card with a self-test.
"""

from cloud.quantize.gate import GateSettings, QuantizationError
from cloud.quantize.pipeline import quantize_model

__all__ = ["GateSettings", "QuantizationError", "quantize_model"]
