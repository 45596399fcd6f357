"""ONNX artifacts as a bundle holds them: the graph, and its weights in one file beside it.

onnxruntime maps weights kept in a separate file instead of copying them out of the model's bytes.
Measured on the bench LLaVA (2 threads, same speed either way): the int8 encoder's resident memory after
five runs 162 MB instead of 229 MB, the int8 prefill graph's after a 281-position prefill 218 MB instead
of 271 MB. Bundles written before keep working: a single-file graph loads as before.
"""

from __future__ import annotations

from pathlib import Path

EXTERNAL_THRESHOLD = 1024  # bytes: smaller tensors (shapes, scales) stay inside the graph


def data_file(graph: Path) -> Path:
    """Where a graph's weights go (``vision_encoder.onnx.data`` beside ``vision_encoder.onnx``)."""
    return graph.with_name(graph.name + ".data")


def save_external(src: Path, dst: Path) -> list[Path]:
    """Write the ONNX graph ``src`` as ``dst`` + ``dst.data``; returns both paths."""
    import onnx

    model = onnx.load(str(src))
    data_file(dst).unlink(missing_ok=True)  # onnx appends to an existing weights file
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file(dst).name, size_threshold=EXTERNAL_THRESHOLD)
    return [dst, data_file(dst)]
