"""Tool components (survey group "tool learning"): graphs exported like encoders, checked end to end.

A family hands ``ToolExport``s: the tool's kind and settings (what ``runtimes/tools`` reads), how
to write each graph as ONNX, the assets the runtime needs (a vocabulary, labels), and a check that
runs the finished tool through edgebridge's own runtime and compares its output with the PyTorch
reference. The OpenVINO IR of every graph is converted from its ONNX file.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgebridge.exporters.quantize.openvino_quant import quantize_openvino
from edgebridge.formats import FORMATS
from edgebridge.manifest import Artifact, Component, Parity, TensorSpec
from edgebridge.parity import enforce, violations


@dataclass
class ToolExport:
    component: str
    modality: str
    kind: str
    settings: dict[str, Any]  # tool settings for the runtime (besides "kind" and "graphs")
    write_onnx: Callable[[Path], dict[str, Path]]  # scratch folder -> {graph role: ONNX file}
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, Any]
    placeholder: str
    layout: dict[str, Any]
    # (bundle folder, component, backend) -> (metrics, tolerance): the runtime tool against PyTorch
    check: Callable[[Path, Component, str], tuple[dict[str, float], dict[str, float]]]
    assets: dict[str, Path] = field(default_factory=dict)
    description: str = ""
    bridge: dict[str, Any] = field(default_factory=dict)


def export_tool(tool: ToolExport, root: Path, scratch: Path, formats: tuple[str, ...],
                step: Callable[[str], None]) -> Component:
    """Write the tool's graphs and assets into the bundle folder ``root`` and check every format."""
    step(f"{tool.component}: exporting the tool's graphs to ONNX")
    onnx_files = tool.write_onnx(scratch / tool.component)
    stems = {role: f"{tool.component}_{role}" for role in onnx_files}
    for name, source in tool.assets.items():
        shutil.copyfile(source, root / name)
    artifacts: dict[str, Artifact] = {}
    for fmt in formats:
        files = []
        for role, src in onnx_files.items():
            names = FORMATS[fmt].files(stems[role])
            if fmt == "onnx":
                shutil.copyfile(src, root / names[0])
            else:
                step(f"{tool.component}: converting {role} to OpenVINO IR")
                quantize_openvino(src, root / names[0], "f32")
            files += names
        artifacts[fmt] = Artifact(format=fmt, files=files, precision="f32")
    component = Component(role="tool", modality=tool.modality, inputs=tool.inputs, outputs=tool.outputs,
                          artifacts=artifacts, bridge={"type": tool.kind, "survey_group": "tool", **tool.bridge},
                          description=tool.description,
                          tool={"kind": tool.kind, "graphs": stems, **tool.settings})
    for fmt, art in artifacts.items():
        backend = FORMATS[fmt].backend
        step(f"{tool.component}: checking the {fmt} tool against PyTorch")
        metrics, tolerance = tool.check(root, component, backend)
        art.parity = Parity(reference="pytorch", metrics=metrics, tolerance=tolerance,
                            passed=not violations(metrics, tolerance), settings={"backend": backend, "precision": "f32"})
        enforce(f"{tool.component} ({fmt})", metrics, tolerance)
    return component
