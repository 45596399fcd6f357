"""Experiment (not wired into the pipeline): prefill with onnxruntime's int8 GEMM, decode with llama.cpp.

On AVX2 without VNNI, llama.cpp prefills at ~100 GFLOP/s whatever the GGUF type (q8_0 is its slowest)
while onnxruntime's int8 GEMM (MLAS) runs the same matmuls at ~2.5x that. This measures the hybrid
that would use both: the LLM's prefill graph (float32 torch -> ONNX, weights dynamically quantized
to int8) returns the last position's logits and the KV cache already in llama.cpp's layout and
type; the cache goes into a llama.cpp context through ``llama_state_seq_set_data``; decoding goes
on in llama.cpp from there.

The sequence-state blob follows llama.cpp 0.3.36's (vendored ``llama-context.cpp`` /
``llama-kv-cache.cpp``): magic, seq id, stream count, cell count, per cell (pos, n_seq, seq), then
``v_trans``, layer count, per layer K rows (one row per cell), per layer V (transposed when flash
attention is off: one row per channel). ``check_layout`` compares every byte that is not K/V data
with the blob llama.cpp writes itself for the same length, so a layout change is caught, not guessed.

Shapes: L layers, n positions, H KV heads, d head dim, C = H * d.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.errors import BackendError
from edgebridge.runtimes.llamacpp._lib import last_log

STATE_MAGIC = 0xAF143CD8  # llama-context.cpp: io_magic
GGML_F16 = 1  # ggml.h: GGML_TYPE_F16


def rotary_order(head_dim: int) -> list[int]:
    """HF channel for each llama.cpp channel within a head: the GGUF writer interleaves the two
    rotary halves of Q and K (row ``2i + j`` <- HF row ``j * d/2 + i``), so the cached K is too."""
    half = head_dim // 2
    return [j * half + i for i in range(half) for j in range(2)]


def export_prefill_graph(model_dir: Path, onnx_fp32: Path, onnx_int8: Path, sample_len: int) -> None:
    """The bench LLaVA's language model as ``inputs_embeds [1, n, D] -> logits [1, V], k [L, n, C] f16,
    v [L, C, n] f16`` (llama.cpp's K rows and transposed V), then with int8 weights."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager",
                                                          dtype=torch.float32, local_files_only=True).eval()
    cfg = model.config.text_config
    permute = cfg.model_type in ("llama", "mistral")  # qwen2 keeps HF's rotary order in GGUF
    order = torch.tensor(rotary_order(cfg.hidden_size // cfg.num_attention_heads))

    class PrefillGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm, self.head = model.model.language_model, model.lm_head

        def forward(self, inputs_embeds: torch.Tensor):
            out = self.lm(inputs_embeds=inputs_embeds, use_cache=True)
            ks, vs = [], []
            for layer in out.past_key_values.layers:  # [1, H, n, d] each
                k = layer.keys[0].index_select(-1, order) if permute else layer.keys[0]
                ks.append(k.permute(1, 0, 2).flatten(1))  # [n, C]
                vs.append(layer.values[0].permute(0, 2, 1).flatten(0, 1))  # [C, n]
            return self.head(out.last_hidden_state[:, -1]), torch.stack(ks).half(), torch.stack(vs).half()

    sample = torch.zeros(1, sample_len, cfg.hidden_size)
    with torch.no_grad():
        torch.onnx.export(PrefillGraph().eval(), (sample,), str(onnx_fp32), input_names=["inputs_embeds"],
                          output_names=["logits", "k", "v"], opset_version=17, dynamo=False,
                          dynamic_axes={"inputs_embeds": {1: "n"}, "k": {1: "n"}, "v": {2: "n"}})
    quantize_dynamic(onnx_fp32, onnx_int8, weight_type=QuantType.QInt8)


def state_blob(k: np.ndarray, v: np.ndarray) -> bytes:
    """llama.cpp's sequence state (seq 0, one stream, positions 0..n-1) from ``k [L, n, C]`` and
    ``v [L, C, n]``, both float16."""
    layers, n, channels = k.shape
    meta = np.zeros((n, 3), np.int32)
    meta[:, 0] = np.arange(n)  # pos
    meta[:, 1] = 1  # n_seq_id; meta[:, 2] = seq id 0
    parts = [struct.pack("<IiII", STATE_MAGIC, 0, 1, n), meta.tobytes(), struct.pack("<II", 1, layers)]
    for layer in range(layers):
        parts += [struct.pack("<iQ", GGML_F16, channels * 2), np.ascontiguousarray(k[layer]).tobytes()]
    for layer in range(layers):
        parts += [struct.pack("<iII", GGML_F16, 2, channels), np.ascontiguousarray(v[layer]).tobytes()]
    return b"".join(parts)


def data_spans(n: int, layers: int, channels: int) -> list[tuple[int, int]]:
    """Byte ranges of K/V data in a ``state_blob`` (everything else is layout)."""
    spans, offset, size = [], 16 + 12 * n + 8, n * channels * 2
    for _ in range(layers):
        spans.append((offset + 12, offset + 12 + size))
        offset += 12 + size
    for _ in range(layers):
        spans.append((offset + 12, offset + 12 + size))
        offset += 12 + size
    return spans


def read_state(llm: Any) -> bytes:
    """Sequence 0's state as llama.cpp writes it."""
    lib, ctx = llm.lib, llm._ctx
    size = lib.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    written = lib.llama_state_seq_get_data(ctx, buf, size, 0)
    return bytes(buf)[:written]


def write_state(llm: Any, blob: bytes, n: int) -> None:
    """Replace the context's KV cache with ``blob``; the next decode goes on at position ``n``."""
    llm.reset()
    src = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
    if llm.lib.llama_state_seq_set_data(llm._ctx, src, len(blob), 0) != len(blob):
        raise BackendError(f"llama.cpp refused the sequence state ({last_log()}).")
    llm.n_past = n


def check_layout(ours: bytes, theirs: bytes, n: int, layers: int, channels: int) -> str | None:
    """None when our blob has llama.cpp's size and every non-data byte; else what differs."""
    if len(ours) != len(theirs):
        return f"size {len(ours)} vs llama.cpp's {len(theirs)}"
    start = 0
    for lo, hi in data_spans(n, layers, channels) + [(len(ours), len(ours))]:
        if ours[start:lo] != theirs[start:lo]:
            return f"layout bytes {start}..{lo} differ"
        start = hi
    return None
