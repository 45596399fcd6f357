"""GGUF LLM quantization through llama.cpp's own quantizer (``llama_model_quantize``).

The input is the f32 GGUF the exporter wrote and checked. Tensors whose shape a type cannot take
(K-quants need rows in multiples of 256) fall back to what llama.cpp decides; we read the
output back and record the type every tensor really got.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgebridge.errors import ExportError
from edgebridge.runtimes.llamacpp._lib import last_log, llama
from edgebridge.runtimes.registry import default_threads

# precision -> llama_ftype name in llama.h (LLAMA_FTYPE_*)
LLM_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}


def tensor_types(path: Path) -> dict[str, str]:
    """{tensor name: GGML type} as stored in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r")
    return {t.name: t.tensor_type.name.lower() for t in reader.tensors}


def quantize_gguf(src: Path, dst: Path, precision: str, threads: int | None = None) -> dict[str, Any]:
    """Quantize the f32 GGUF ``src`` into ``dst``; returns method and per-tensor types."""
    if precision not in LLM_FTYPES:
        raise ExportError(f"GGUF quantization takes {', '.join(LLM_FTYPES)}, not '{precision}'.")
    lib = llama()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, LLM_FTYPES[precision])
    params.nthread = threads or default_threads()
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(f"llama.cpp could not quantize the LLM to {precision} (code {rc}; {last_log()}).")
    types = tensor_types(dst)
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"method": "llama_model_quantize", "ftype": LLM_FTYPES[precision], "tensor_type_counts": counts,
            "tensor_types": types}
