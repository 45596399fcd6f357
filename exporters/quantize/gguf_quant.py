"""GGUF LLM quantization through llama.cpp's own quantizer (``llama_model_quantize``).

The input is the f32 GGUF the exporter wrote and checked. Tensors whose shape a type cannot take
(K-quants need rows in multiples of 256) fall back to what llama.cpp decides; we read the
output back and record the type every tensor really got.

A mix (``LLM_MIXES``) is one type with some tensors at another, through the quantizer's per-tensor
overrides (a regex on the GGUF tensor name -> a ggml type).
"""

from __future__ import annotations

import ctypes
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
# name -> (base precision, {GGUF tensor-name regex: type}). Measured on the bench LLaVA (12 x 768 llama,
# random weights; benchmarks/decode_levers.py, 9 rounds): q8_0 with the FFN matrices at q6_k reads 86 MB
# per token instead of 99.7 and decodes 9% faster (331 vs 304 tok/s), top-1 0.929 against the f32 GGUF,
# where q6_k throughout is over the default budget (0.876). The FFN up/gate only: 90.6 MB, 0.914, +6%.
LLM_MIXES = {"q8_0-ffn-q6_k": ("q8_0", {"ffn_(up|gate|down)": "q6_k"})}
GGML_TYPES = {"q8_0": 8, "q6_k": 14}  # ggml.h's GGML_TYPE_* numbers of the types a mix overrides to


def tensor_types(path: Path) -> dict[str, str]:
    """{tensor name: GGML type} as stored in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r")
    return {t.name: t.tensor_type.name.lower() for t in reader.tensors}


def quantize_gguf(src: Path, dst: Path, precision: str, threads: int | None = None) -> dict[str, Any]:
    """Quantize the f32 GGUF ``src`` into ``dst`` at a type or a named mix; returns method and per-tensor types."""
    if precision not in LLM_FTYPES and precision not in LLM_MIXES:
        raise ExportError(f"GGUF quantization takes {', '.join((*LLM_FTYPES, *LLM_MIXES))}, not '{precision}'.")
    base, overrides = LLM_MIXES.get(precision, (precision, {}))
    return quantize_with_overrides(src, dst, base, overrides, threads, label=precision)


def quantize_with_overrides(src: Path, dst: Path, base: str, overrides: dict[str, str], threads: int | None = None,
                            label: str | None = None) -> dict[str, Any]:
    """``src`` quantized to the type ``base``, the tensors whose names match a regex of ``overrides`` to its
    type (``GGML_TYPES``); returns method and per-tensor types."""
    lib = llama()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, LLM_FTYPES[base])
    params.nthread = threads or default_threads()
    # llama.cpp reads the overrides up to a null pattern; ctypes keeps each pattern's bytes alive on the table
    table = (lib.llama_model_tensor_override * (len(overrides) + 1))()
    for row, (pattern, kind) in zip(table, overrides.items()):
        row.pattern, row.type = pattern.encode(), GGML_TYPES[kind]
    if overrides:
        params.tt_overrides = ctypes.cast(table, type(params.tt_overrides))
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(f"llama.cpp could not quantize the LLM to {label or base} (code {rc}; {last_log()}).")
    types = tensor_types(dst)
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"method": "llama_model_quantize", "ftype": LLM_FTYPES[base],
            **({"overrides": dict(overrides)} if overrides else {}), "tensor_type_counts": counts,
            "tensor_types": types}
