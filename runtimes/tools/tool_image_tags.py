"""Image tagging as a tool: a classifier's top-k class names become text for the LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.bundle import bundle_file
from edgebridge.manifest import Component
from edgebridge.runtimes.tools import ToolOutput, open_graphs, register_tool


@register_tool("image-tags")
class ImageTags:
    def __init__(self, root: Path, component: Component, backend: str, **options: Any) -> None:
        spec = component.tool
        self.graph = open_graphs(root, component, backend, **options)["classifier"]
        self.report = self.graph.report
        self.labels: list[str] = json.loads(bundle_file(root, spec["labels"]).read_text(encoding="utf-8"))
        self.top_k = int(spec.get("top_k", 3))
        self.separator = spec.get("separator", ", ")

    def close(self) -> None:
        self.graph.close()

    def run(self, inputs: dict[str, np.ndarray], rows: list[slice]) -> list[ToolOutput]:
        logits = self.graph.run({"pixel_values": inputs["pixel_values"]})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        outputs = []
        for r in rows:
            p = probs[r][0]
            top = np.argsort(-p, kind="stable")[: self.top_k]
            outputs.append(ToolOutput(
                text=self.separator.join(self.labels[i] for i in top),
                details={"classes": [int(i) for i in top], "probabilities": [round(float(p[i]), 4) for i in top]}))
        return outputs
