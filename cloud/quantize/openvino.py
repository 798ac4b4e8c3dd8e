"""INT8 for OpenVINO: NNCF post-training quantization of the FP32 ONNX model, saved as IR.

NNCF's MIXED preset (symmetric weights, asymmetric activations: what OpenVINO's CPU kernels run
fastest) with the detection head's tail in float, as Ultralytics' own OpenVINO INT8 export does:
the head's box decoding joins pixel coordinates and 0..1 scores, which one INT8 scale cannot hold.

`overflow_fix=ENABLE`: weights in 7 bits in every layer, not only the first (NNCF's default). x86
CPUs without VNNI sum u8 x s8 products in pairs into saturating 16-bit lanes; with 8-bit weights
those sums clip. Measured on an emulated AVX2-only EPYC, NNCF's default model lost 2 points of
held-out mAP50 that it keeps on a VNNI machine; ONNX Runtime's `reduce_range` is the same fix.
The IR carries the ONNX model's Ultralytics metadata in its rt_info (["model_info", key]), so the
device detector reads names and input size from it exactly as from the ONNX file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cloud.quantize.candidate import CandidateModel, chosen_sets
from cloud.quantize.gate import QuantizationError
from cloud.quantize.onnxruntime import HEAD
from device.detector import Detector
from device.images import read_image

BRANCHES = ("/cv2.", "/cv3.")


def _float_sets(ov_model) -> list[tuple[str, list[str]]]:
    ops = [(op.get_friendly_name(), op.get_type_name()) for op in ov_model.get_ordered_ops()]
    head = [name for name, _ in ops if name.startswith(HEAD)]
    if not head:
        raise QuantizationError(f"the model has no {HEAD} operations: not a YOLOv8 detection graph")
    tail = [name for name in head if not any(b in name for b in BRANCHES)]
    # every Sigmoid in float, the SiLU activations' too, as Ultralytics' OpenVINO INT8 export does
    # (its accuracy and speed are the benchmark's peer): the convolutions, where the arithmetic is,
    # stay INT8, and the activations are not rounded around zero, where SiLU bends
    sigmoids = [name for name, kind in ops if kind == "Sigmoid"]
    return [("head-tail", sorted(set(tail) | set(sigmoids))), ("whole-head", sorted(set(head) | set(sigmoids)))]


def onnx_metadata(model: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}


def candidates(model: Path, images: list[Path], workdir: Path, method: str,
               only: list[str] | None = None) -> Iterator[CandidateModel]:
    """One INT8 IR (.xml + .bin) per float set."""
    try:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    except ImportError as exc:
        raise QuantizationError(f"INT8 for OpenVINO needs openvino and nncf: pip install 'edge-inspect[bench]' "
                                f"({exc})") from None

    if method != "minmax":
        raise QuantizationError("NNCF calibrates with its own statistics: --calib-method applies to onnxruntime only")
    detector = Detector(model)
    metadata = onnx_metadata(model)
    blobs = [detector.preprocess(read_image(p))[0] for p in images]
    for name, in_float in chosen_sets(_float_sets(ov.Core().read_model(str(model))), only):
        quantized = nncf.quantize(
            ov.Core().read_model(str(model)), nncf.Dataset(blobs), preset=nncf.QuantizationPreset.MIXED,
            # validate=False: the names come from this very graph, but NNCF checks them against its own
            # copy after its transformations, where some (fused constants) no longer exist by name
            subset_size=len(blobs), ignored_scope=nncf.IgnoredScope(names=in_float, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
        for key, value in metadata.items():
            quantized.set_rt_info(value, ["model_info", key])
        out = workdir / f"openvino-{name}" / f"{model.stem}.xml"
        out.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        yield CandidateModel(name, out, in_float)
