"""A transformers decoder LLM written as GGUF with the ``gguf`` library.

Tensor names come from gguf-py's own alias table (``gguf.get_tensor_name_map``), hyper-parameters
from the HF config; what differs per architecture is in ``archs.py`` (``ARCHS``).
The writer refuses configurations it does not reproduce instead of writing a file that runs and
answers wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import gguf
import numpy as np
import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.gguf.archs import (ArchSpec, arch_spec, check_config, mrope_sections,
                                             rotary_dims)
from edgebridge.exporters.gguf.vocab import GgufVocab


DTYPES = ("f32", "f16")


@dataclass
class TextModel:
    """What a family hands the GGUF writer.

    ``state_dict`` uses the names of the family's ``*ForCausalLM`` (``model.embed_tokens.weight``,
    ``model.layers.N...``, ``model.norm.weight``, ``lm_head.weight``).
    """

    config: Any  # transformers PretrainedConfig of the text model
    state_dict: dict[str, torch.Tensor]
    vocab: GgufVocab
    name: str = "edgebridge-llm"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def head_dim(self) -> int:
        c = self.config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF [n_head * head_dim, ...] rows with split rotary halves -> llama.cpp's interleaved order."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """``permute_rotary`` undone: llama.cpp's interleaved rotary rows -> HF's split halves."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(text: TextModel, spec: ArchSpec, dtype: str) -> Iterable[tuple[str, np.ndarray]]:
    cfg = text.config
    names = gguf.get_tensor_name_map(spec.gguf_arch, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in text.state_dict.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedModelError(
                f"tensor '{hf_name}' has no GGUF name for architecture {spec.gguf_arch.name.lower()}.",
                hint="This model has parts the GGUF writer does not know; it would not run correctly.",
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if spec.permute_qk and ".self_attn.q_proj." in hf_name:
            data = permute_rotary(data, cfg.num_attention_heads)
        elif spec.permute_qk and ".self_attn.k_proj." in hf_name:
            data = permute_rotary(data, cfg.num_key_value_heads)
        if spec.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0  # gemma's RMSNorm multiplies by (1 + w); llama.cpp's by w
        # llama.cpp keeps norms and biases in f32 whatever the file type
        if dtype == "f16" and data.ndim >= 2:
            data = data.astype(np.float16)
        yield gguf_name, np.ascontiguousarray(data)


# llama.cpp sets token attributes by substrings of general.name (src/llama-vocab.cpp) and, for a "phi3"
# name, looks up Phi-3-mini's Llama-2 tokens: any other vocabulary then fails to load. The name is only
# a label (the folder's name), so such substrings are dropped from it.
_NAME_TRIGGERS = ("phi-3", "phi3", "modern-bert")


def gguf_name(name: str) -> str:
    """The folder's name as general.name, without the substrings llama.cpp's vocab loader acts on."""
    for trigger in _NAME_TRIGGERS:
        name = re.sub(re.escape(trigger), "", name, flags=re.IGNORECASE)
    return name.strip("-_ .") or "edgebridge-llm"


def _rope_factor_tensors(cfg: Any, head_dim: int) -> list[tuple[str, np.ndarray]]:
    """phi3's longrope / su factors (config lists in HF, tensors in GGUF), one per rotary pair."""
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) not in ("longrope", "su"):
        return []
    n_pairs = rotary_dims(cfg, head_dim) // 2
    out = []
    for key, tensor in (("long_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_LONG),
                        ("short_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT)):
        factors = np.asarray(scaling[key], dtype=np.float32)
        if factors.shape != (n_pairs,):
            raise UnsupportedModelError(f"rope_scaling.{key} has {factors.size} values; the heads rotate "
                                        f"{n_pairs} pairs.", hint="The config is inconsistent.")
        out.append((gguf.TENSOR_NAMES[tensor] + ".weight", factors))
    return out


def _write_hparams(writer: gguf.GGUFWriter, text: TextModel, spec: ArchSpec) -> None:
    """The model's hyper-parameters: the common ones, then the architecture's own (``spec.metadata``)."""
    cfg = text.config
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(cfg.num_key_value_heads))
    writer.add_rope_dimension_count(rotary_dims(cfg, text.head_dim))
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    if spec.mrope:
        writer.add_rope_dimension_sections(mrope_sections(cfg, text.head_dim))
    if text.extra.get("n_deepstack_layers"):
        writer.add_num_deepstack_layers(int(text.extra["n_deepstack_layers"]))
    for hook in spec.metadata:
        hook(writer, cfg, text.head_dim)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(int(cfg.vocab_size))
    if text.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(text.head_dim)
        writer.add_value_length(text.head_dim)


def write_gguf(text: TextModel, path: Path, dtype: str = "f16") -> dict[str, Any]:
    """Write ``text`` to ``path``; returns details for the manifest (architecture, sizes, types)."""
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"GGUF dtype '{dtype}' is not one of {DTYPES}.")
    cfg = text.config
    spec = arch_spec(text.model_type)
    check_config(cfg, spec)
    arch_name = gguf.MODEL_ARCH_NAMES[spec.gguf_arch]
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(gguf_name(text.name))
    _write_hparams(writer, text, spec)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    text.vocab.write(writer)
    types: dict[str, int] = {}
    n_params = 0
    for name, data in (*_tensors(text, spec, dtype), *_rope_factor_tensors(cfg, text.head_dim)):
        writer.add_tensor(name, data)
        key = "f16" if data.dtype == np.float16 else "f32"
        types[key] = types.get(key, 0) + 1
        n_params += data.size
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "architecture": arch_name,
        "n_embd": int(cfg.hidden_size),
        "n_layer": int(cfg.num_hidden_layers),
        "n_ctx_train": int(cfg.max_position_embeddings),
        "vocab_size": int(cfg.vocab_size),
        "n_params": int(n_params),
        "tokenizer_pre": text.vocab.pre,
        "tensor_types": types,
    }
