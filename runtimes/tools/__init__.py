"""Tool stages (survey group "tool learning"): a model turns a modality into text for the LLM.

A tool is one module ``runtimes/tools/tool_<name>.py`` whose class is registered with
``@register_tool("<kind>")``; the bundle's component says which kind it is (``component.tool.kind``).
Tools run their graphs with the same encoder backends (onnxruntime / OpenVINO) as encoders do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from edgebridge.bundle import bundle_file
from edgebridge.errors import BackendUnavailableError, ManifestError
from edgebridge.formats import FORMATS
from edgebridge.manifest import Component
from edgebridge.registry import discover
from edgebridge.runtimes.registry import DeviceReport, EncoderSession, artifact_format, open_encoder


@dataclass
class ToolOutput:
    """What a tool made of one item: the text for the prompt and how it got there."""

    text: str
    details: dict[str, Any] = field(default_factory=dict)


class Tool(Protocol):
    report: DeviceReport

    def run(self, inputs: dict[str, Any], rows: list[slice]) -> list[ToolOutput]: ...

    def close(self) -> None:
        """Free the tool's engine sessions."""
        ...


_TOOLS: dict[str, Callable[..., Tool]] = {}


def register_tool(kind: str) -> Callable[[Callable[..., Tool]], Callable[..., Tool]]:
    def deco(factory: Callable[..., Tool]) -> Callable[..., Tool]:
        _TOOLS[kind] = factory
        return factory

    return deco


def open_tool(root: Path, component: Component, backend: str, **options: Any) -> Tool:
    """Load a bundle's tool component with the named backend (``device``, ``threads``, ``precision``)."""
    discover(__name__, __path__, lambda name: name.startswith("tool_"))
    spec = component.tool or {}
    kind = spec.get("kind")
    if kind not in _TOOLS:
        raise ManifestError(f"the bundle needs tool '{kind}', which this edgebridge does not have.",
                            hint=f"Known tools: {', '.join(sorted(_TOOLS))}. Upgrade edgebridge.")
    return _TOOLS[kind](root, component, backend, **options)


def open_graphs(root: Path, component: Component, backend: str, **options: Any) -> dict[str, EncoderSession]:
    """Open each of a tool's graphs (``tool.graphs``: role -> file stem) for the backend's format."""
    fmt = artifact_format(backend)
    art = component.artifacts.get(fmt)
    if art is None:
        raise BackendUnavailableError(f"the tool has no {fmt} artifact (it has: {', '.join(component.artifacts)}).")
    sessions = {}
    for role, stem in component.tool["graphs"].items():
        files = [bundle_file(root, name) for name in FORMATS[fmt].files(stem)]
        missing = [f.name for f in files if f.name not in art.files]
        if missing:
            raise ManifestError(f"tool graph '{role}' needs {missing}, which the artifact does not list.")
        sessions[role] = open_encoder(backend, files, artifact_precision=art.precision, **options)
    return sessions
