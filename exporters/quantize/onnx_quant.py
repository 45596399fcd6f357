"""ONNX encoder + bridge quantization with onnxruntime's own tools.

| precision   | method                                                                          |
|-------------|---------------------------------------------------------------------------------|
| f32         | the exported graph as is                                                        |
| f16         | ``onnxruntime.transformers.float16`` (weights and compute fp16, fp32 inputs/outputs) |
| int8        | ``quantize_dynamic``: int8 (7-bit, ``WEIGHTS_7BIT``) weights of MatMul/Gemm, activations quantized at run time |
| int8-static | ``quantize_static``, QDQ format: int8 (7-bit) weights per channel, uint8 activations calibrated (MinMax) on the calibration set; the first and last weight layers stay float (``boundary_layers``) |

Why the boundary layers stay float: the first layer (patch embedding / audio conv) reads raw
normalized inputs and the last one writes the LLM's input embeddings; quantizing either costs the
most accuracy for the least time. On the benchmark LLaVA (CLIP ViT-B/16 + MLP projector) the worst
image-token cosine went from 0.9873 (everything quantized) to 0.9991, at ~1.5x fp32 speed either way.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgebridge.errors import ExportError
from edgebridge.exporters.quantize.calibration import CalibrationSet

PRECISIONS = ("f32", "f16", "int8", "int8-static")
NEEDS_CALIBRATION = {"int8-static"}
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
# Weights within +-63 (onnxruntime's ``reduce_range``): on x86 CPUs without VNNI (AVX2 only) MLAS's
# uint8 x int8 GEMM sums pairs of products in int16 (vpmaddubsw), and 255 * 127 * 2 saturates it;
# 255 * 63 * 2 does not. Measured 2026-12-01 on an AVX2-only EPYC: a K=256 MatMulIntegerToFloat with
# +-127 weights was off by up to 70876 (of 307726), with +-63 exact. A bundle runs wherever it is copied,
# so the weights are written for the CPU without VNNI whatever CPU exports them.
WEIGHTS_7BIT = "int8 within +-63 (7 bits: exact on CPUs without VNNI)"


def boundary_layers(model: Any) -> list[str]:
    """Names of the first and last weight-bearing nodes (Conv/MatMul/Gemm with a constant operand), in graph order."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    weighted = [n.name for n in model.graph.node
                if n.op_type in QUANTIZED_OPS and any(i in constants for i in n.input)]
    return list(dict.fromkeys(weighted[:1] + weighted[-1:]))


def _preprocessed(src: Path, work: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph clean-up) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "pre.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
        return out
    except Exception:  # symbolic shape inference does not know every op; quantize the graph as exported
        return src


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._items = iter(items)

    def get_next(self):
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def quantize_onnx(src: Path, dst: Path, precision: str, calib: CalibrationSet | None = None,
                  **_: Any) -> dict[str, Any]:
    """Write ``src`` at ``precision`` to ``dst``; returns the method description for the manifest."""
    if precision not in PRECISIONS:
        raise ExportError(f"ONNX encoders take precisions {', '.join(PRECISIONS)}, not '{precision}'.")
    if precision == "f32":
        shutil.copyfile(src, dst)
        return {"method": "none"}
    try:
        if precision == "f16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
            return {"method": "onnxruntime.transformers.float16", "io_types": "float32"}
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

        with tempfile.TemporaryDirectory(prefix="edgebridge-ortq-") as work:
            pre = _preprocessed(src, Path(work))
            if precision == "int8":
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, reduce_range=True,
                                 op_types_to_quantize=["MatMul", "Gemm"])
                return {"method": "onnxruntime.quantization.quantize_dynamic", "weights": WEIGHTS_7BIT,
                        "ops": ["MatMul", "Gemm"]}
            if calib is None or not calib.calibrate:
                raise ExportError("int8-static quantization needs a calibration set.")
            import onnx

            kept_float = boundary_layers(onnx.load(str(pre), load_external_data=False))
            quantize_static(
                str(pre), str(dst), _Reader(calib.calibrate),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, reduce_range=True, calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=kept_float,
            )
            return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                    "weights": WEIGHTS_7BIT + ", per channel",
                    "activations": "uint8", "calibration": "MinMax", "ops": QUANTIZED_OPS,
                    "kept_float": kept_float, "calibration_items": len(calib.calibrate)}
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime could not quantize the encoder to {precision}: {str(exc)[:300]}") from exc
