"""Artifact formats: which engine runs each, and the files one artifact is made of.

The one table the exporters (where to write, which backend checks parity) and the runtime (which
files to open) read. An encoder backend registers the format it runs (``runtimes/registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebridge.errors import BackendUnavailableError


@dataclass(frozen=True)
class ArtifactFormat:
    name: str
    backend: str  # the runtime backend that runs it
    suffixes: tuple[str, ...]  # one file per suffix, same stem (the files an export writes and reads back;
    # a bundle's encoder / prefill ONNX also carries its weights in ``<stem>.onnx.data``: exporters/onnx_files.py)

    def files(self, stem: str) -> list[str]:
        return [stem + suffix for suffix in self.suffixes]


FORMATS = {
    "onnx": ArtifactFormat("onnx", "onnxruntime", (".onnx",)),
    "openvino": ArtifactFormat("openvino", "openvino", (".xml", ".bin")),
    "gguf": ArtifactFormat("gguf", "llama.cpp", (".gguf",)),
}
ENCODER_FORMATS = ("onnx", "openvino")


def artifact_format(name: str) -> ArtifactFormat:
    if name not in FORMATS:
        raise BackendUnavailableError(f"unknown artifact format '{name}'.", hint=f"Formats: {', '.join(FORMATS)}.")
    return FORMATS[name]
