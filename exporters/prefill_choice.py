"""A latency target's choice of prefill engine: the int8 prefill graph with the KV hand-over, or llama.cpp.

When ``--prefill`` is not given and the profile target is ``latency``, the export writes the int8 graph
(held to the same gates as ``--prefill int8``: transformers, then the hand-over into the bundle's GGUF
against llama.cpp's own prefill, within the LLM drift budget) and keeps it only when it measured faster
on this machine than llama.cpp's prefill of the same positions (by more than the tie margin) and fits
the memory budget. Either way the GGUF's ``details.prefill_choice`` says what was measured and why.
A text model the graph does not reproduce (the gemma decoders, Qwen3-VL ...) keeps llama.cpp, with the
reason; so does a graph beyond the drift budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgebridge.errors import ExportError, UnsupportedModelError
from edgebridge.exporters.onnx_files import data_file
from edgebridge.exporters.prefill import check_supported, export_prefill
from edgebridge.exporters.quantize import TIE, QuantPlan, over_memory
from edgebridge.manifest import Artifact


def choose_prefill(text: Any, reference_lm: Callable[[], Any], gguf_path: Path, dst: Path, plan: QuantPlan,
                   used_bytes: int, step: Callable[[str], None]) -> tuple[Artifact | None, dict[str, Any]]:
    """(the prefill artifact if kept, the decision record). ``used_bytes``: weights already kept (encoders
    and the GGUF), counted against the memory budget."""
    try:
        check_supported(text.model_type)
    except UnsupportedModelError as exc:
        return None, {"kept": False, "engine": "llama.cpp", "reason": f"no prefill graph: {exc.message}"}
    try:
        art = export_prefill(text, reference_lm(), gguf_path, dst, "int8", plan.budget["llm"], step=step)
    except ExportError as exc:  # beyond the drift budget, or a hand-over llama.cpp's state layout refuses
        _remove(dst)
        return None, {"kept": False, "engine": "llama.cpp", "reason": f"the int8 prefill graph was refused: "
                                                                      f"{exc.message}"}
    speed, size = art.quantization["speed"], art.quantization["bytes"]
    graph_ms, llama_ms, n = speed["prefill_ms"], speed["llamacpp_prefill_ms"], speed["positions"]
    measured = (f"{n} positions: the int8 graph + hand-over {graph_ms:g} ms, llama.cpp {llama_ms:g} ms on this "
                "machine")
    over = over_memory(size, plan.memory_left(used_bytes))
    if graph_ms * (1 + TIE) >= llama_ms:
        kept, reason = False, f"llama.cpp prefills as fast or faster ({measured})"
    elif over:
        kept, reason = False, f"faster ({measured}), but its {over}"
    else:
        kept, reason = True, f"faster ({measured}); {size / 2**20:.1f} MB of int8 weights beside the GGUF"
    record = {"kept": kept, "engine": "onnxruntime+handoff" if kept else "llama.cpp", "graph_ms": graph_ms,
              "llamacpp_ms": llama_ms, "positions": n, "graph_bytes": size, "reason": reason}
    if not kept:
        _remove(dst)
        return None, record
    art.quantization["selection"] = record
    return art, record


def _remove(graph: Path) -> None:
    graph.unlink(missing_ok=True)
    data_file(graph).unlink(missing_ok=True)
