"""A transformers decoder LLM written as GGUF with the ``gguf`` library.

Tensor names come from gguf-py's own alias table (``gguf.get_tensor_name_map``), hyper-parameters
from the HF config. Per architecture (table ``ARCHS``):

- llama / mistral: Q and K rows are permuted to llama.cpp's rotary layout (HF stores the two
  rotary halves apart, GGML interleaves them);
- qwen2: no permutation (llama.cpp uses NEOX rotary for it), Q/K/V biases;
- qwen2_vl_text, qwen2_5_vl_text (Qwen2-VL's and Qwen2.5-VL's decoders): qwen2's tensors as llama.cpp's ``qwen2vl``, whose M-RoPE
  splits each head's rotary pairs into (t, h, w) sections: ``rope_scaling.mrope_section`` padded
  to four as ``rope.dimension_sections`` (llama.cpp's fourth section is unused by these models);
- qwen3_vl_text (Qwen3-VL's decoder): qwen3 (q/k RMS norms, explicit head_dim) as llama.cpp's
  ``qwen3vl`` (interleaved M-RoPE sections), with ``n_deepstack_layers``: the LLM's input rows then
  carry the main embedding and one more per deepstack layer side by side, which llama.cpp adds to
  the first layers' outputs (``TextModel.extra["n_deepstack_layers"]``, from the vision config).

The writer refuses configurations it does not reproduce (rope scaling, other activations)
instead of writing a file that runs and answers wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import gguf
import numpy as np
import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.gguf.vocab import GgufVocab


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool  # llama.cpp's NORM rope wants interleaved rotary halves
    mrope: bool = False  # multimodal rotary sections (rope.dimension_sections)


# HF text model_type -> GGUF architecture (llama.cpp src/llama-arch.cpp names)
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # convert_hf_to_gguf writes mistral as llama
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "qwen2_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN2VL, permute_qk=False, mrope=True),
    "qwen2_5_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN2VL, permute_qk=False, mrope=True),  # llama.cpp: also qwen2vl
    "qwen3_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN3VL, permute_qk=False, mrope=True),
}

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


def arch_spec(model_type: str) -> ArchSpec:
    if model_type not in ARCHS:
        raise UnsupportedModelError(
            f"text model type '{model_type}' has no GGUF mapping in edgebridge.",
            hint=f"Supported text models: {', '.join(sorted(ARCHS))}. Pass an existing GGUF with --llm-gguf.",
        )
    return ARCHS[model_type]


def mrope_sections(cfg: Any, head_dim: int) -> list[int]:
    """The (t, h, w) rotary sections, padded to llama.cpp's four; they must cover the head's rotary pairs."""
    sections = [int(s) for s in ((getattr(cfg, "rope_scaling", None) or {}).get("mrope_section") or [])]
    if len(sections) != 3 or sum(sections) != head_dim // 2:
        raise UnsupportedModelError(
            f"M-RoPE sections {sections} do not split the {head_dim // 2} rotary pairs of a head into (t, h, w).",
            hint="The config's rope_scaling.mrope_section is missing or inconsistent with head_dim.")
    return sections + [0]


def _check_config(cfg: Any) -> None:
    scaling = getattr(cfg, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise UnsupportedModelError(
            f"rope scaling {scaling} is not supported by the GGUF writer yet.",
            hint="Pass an existing GGUF of this model with --llm-gguf.",
        )
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"activation '{act}' is not supported for {cfg.model_type} GGUF export.")


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF [n_head * head_dim, ...] rows with split rotary halves -> llama.cpp's interleaved order."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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
            data = _permute_rotary(data, cfg.num_attention_heads)
        elif spec.permute_qk and ".self_attn.k_proj." in hf_name:
            data = _permute_rotary(data, cfg.num_key_value_heads)
        # llama.cpp keeps norms and biases in f32 whatever the file type
        if dtype == "f16" and data.ndim >= 2:
            data = data.astype(np.float16)
        yield gguf_name, np.ascontiguousarray(data)


def write_gguf(text: TextModel, path: Path, dtype: str = "f16") -> dict[str, Any]:
    """Write ``text`` to ``path``; returns details for the manifest (architecture, sizes, types)."""
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"GGUF dtype '{dtype}' is not one of {DTYPES}.")
    cfg = text.config
    spec = arch_spec(text.model_type)
    _check_config(cfg)
    arch_name = gguf.MODEL_ARCH_NAMES[spec.gguf_arch]
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(text.name)
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(int(cfg.num_hidden_layers))
    writer.add_feed_forward_length(int(cfg.intermediate_size))
    writer.add_head_count(int(cfg.num_attention_heads))
    writer.add_head_count_kv(int(cfg.num_key_value_heads))
    writer.add_rope_dimension_count(text.head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    if spec.mrope:
        writer.add_rope_dimension_sections(mrope_sections(cfg, text.head_dim))
    if text.extra.get("n_deepstack_layers"):
        writer.add_num_deepstack_layers(int(text.extra["n_deepstack_layers"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(int(cfg.vocab_size))
    if text.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(text.head_dim)
        writer.add_value_length(text.head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    text.vocab.write(writer)
    types: dict[str, int] = {}
    n_params = 0
    for name, data in _tensors(text, spec, dtype):
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
