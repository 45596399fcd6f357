"""A GGUF's own weights, dequantized, under the text model's names: what llama.cpp multiplies by.

The int8 prefill graph hands its KV cache to llama.cpp, which then decodes with the GGUF's quantized
weights, and the hand-over is gated against llama.cpp's own prefill with those weights. A graph written
from the float weights differs from that by two roundings (the GGUF type's and the graph's int8); written
from the GGUF's weights, by the graph's int8 alone. Measured on the bench Qwen2.5-VL (the 102-sample
hand-over gate, per-token activations): into q6_k top-1 0.882 (refused) -> 0.922, into q8_0 0.912 -> 0.931
(KL 2.8e-4 -> 2.3e-4). The graph then drifts further from transformers (recorded, as it always was for
int8: its ``checks.pytorch``), by the GGUF type's own drift, which the GGUF's gate has already held.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import torch

from edgebridge.errors import ExportError
from edgebridge.exporters.gguf.archs import arch_spec
from edgebridge.exporters.gguf.writer import TextModel, unpermute_rotary


def gguf_weights(text: TextModel, path: Path) -> tuple[TextModel, str]:
    """(``text`` with every matrix replaced by the GGUF's, dequantized and in transformers' layout, the
    GGUF's file type, e.g. ``q6_k``). Vectors (norms, biases) stay: llama.cpp keeps them in float32. A
    tied output head is the GGUF's token table, as llama.cpp reuses it."""
    spec, cfg = arch_spec(text.model_type), text.config
    names = gguf.get_tensor_name_map(spec.gguf_arch, cfg.num_hidden_layers)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    # llama.cpp's NORM rotary wants q / k rows interleaved (the writer's permutation, undone here)
    permuted = {".self_attn.q_proj.": cfg.num_attention_heads,
                ".self_attn.k_proj.": cfg.num_key_value_heads} if spec.permute_qk else {}
    state, types = {}, Counter()
    for hf_name, tensor in text.state_dict.items():
        if tensor.ndim < 2:
            state[hf_name] = tensor
            continue
        name = "token_embd.weight" if hf_name == "lm_head.weight" and "output.weight" not in tensors else \
            names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        stored = tensors.get(name)
        if stored is None:
            raise ExportError(f"the GGUF {path.name} has no tensor '{name}' for '{hf_name}'.",
                              hint="The GGUF was not written from this model; re-export.")
        data = gguf.quants.dequantize(stored.data, stored.tensor_type)
        if data.size != tensor.numel():
            raise ExportError(f"the GGUF {path.name}'s '{name}' holds {data.size} values, the model's '{hf_name}' "
                              f"{tensor.numel()}.", hint="The GGUF was not written from this model; re-export.")
        data = data.reshape(tuple(tensor.shape))
        for part, n_head in permuted.items():
            if part in hf_name:
                data = unpermute_rotary(data, n_head)
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        types[stored.tensor_type.name.lower()] += 1
    return replace(text, state_dict=state), _file_type(reader, types)


def _file_type(reader: gguf.GGUFReader, types: Counter) -> str:
    """The type the GGUF was written as (``q6_k``: llama.cpp stores rows that do not fit its blocks in
    another type); without the key, its matrices' most common type."""
    field = reader.fields.get("general.file_type")
    if field is None:
        return types.most_common(1)[0][0]
    name = gguf.LlamaFileType(int(field.contents())).name
    return "f32" if name == "ALL_F32" else name.removeprefix("MOSTLY_").lower()
