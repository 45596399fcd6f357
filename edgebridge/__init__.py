"""edgebridge: multimodal LLMs (encoder + bridge + LLM) exported, run and profiled on edge devices.

``from edgebridge import Pipeline`` is the embedded API; the engines load on first use.
"""

from __future__ import annotations

from typing import Any

from edgebridge.errors import EdgebridgeError

__version__ = "0.2.0"
__all__ = ["EdgebridgeError", "Pipeline", "GenerationResult", "GenerationStream", "__version__"]


def __getattr__(name: str) -> Any:
    # import the runtime on first use: `import edgebridge` stays cheap (no engines loaded)
    if name in ("Pipeline", "GenerationResult", "GenerationStream"):
        from edgebridge import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'edgebridge' has no attribute {name!r}")
