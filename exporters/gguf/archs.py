"""Text architectures the GGUF writer knows: HF ``model_type`` -> llama.cpp architecture, and the hooks
for what differs (facts from transformers 4.57's modeling files and llama.cpp's ``src/models/*.cpp``).

- llama / mistral: Q and K rows permuted to llama.cpp's NORM rotary layout (HF keeps the two rotary
  halves apart, GGML interleaves them);
- qwen2: NEOX rotary (no permutation), Q/K/V biases; qwen3: NEOX, per-head q/k RMS norms, explicit
  head_dim;
- qwen2_vl_text / qwen2_5_vl_text (llama.cpp ``qwen2vl``) and qwen3_vl_text (``qwen3vl``): M-RoPE
  sections (``rope.dimension_sections``), deepstack layers for Qwen3-VL;
- phi3: fused ``qkv_proj`` and ``gate_up_proj`` (gate half first, as llama.cpp's fused SwiGLU reads
  it), NEOX rotary over ``partial_rotary_factor`` of each head, ``longrope``/``su`` scaling as the
  long/short factor tensors (llama.cpp picks the long ones when the context exceeds the original
  one, HF when the sequence does: equal for prompts within the original context);
- gemma2 / gemma3_text: RMS norms computed as ``x * (1 + w)`` (written as ``w + 1``), GELU (tanh),
  token embeddings scaled by sqrt(hidden) (gemma2: every input row, also injected ones; gemma3: token
  rows only -- llama.cpp and transformers agree on both), pre/post norms around attention and MLP,
  sliding-window layers as an explicit per-layer pattern, gemma2's attention and final logit
  soft-capping, gemma3's q/k norms and its local rotary base. llama.cpp scales queries by
  1/sqrt(head_dim) (1/sqrt(hidden/heads) for its 27B sizes); a config whose ``query_pre_attn_scalar``
  says otherwise is refused.

A configuration llama.cpp would run differently (other activations, rope scaling it has no hook for)
is refused instead of written: a file that loads and answers wrong is worse than an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import gguf

from edgebridge.errors import UnsupportedModelError

MetadataHook = Callable[[gguf.GGUFWriter, Any, int], None]  # (writer, text config, head_dim)


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool  # llama.cpp's NORM rope wants interleaved rotary halves
    mrope: bool = False  # multimodal rotary sections (rope.dimension_sections)
    activation: tuple[str, ...] = ("silu",)  # the HF activations llama.cpp's graph computes
    norm_plus_one: bool = False  # gemma: HF norms multiply by (1 + w)
    prefill_graph: bool = False  # our ONNX prefill graph reproduces this architecture (exporters/prefill.py)
    rope_scalings: tuple[str, ...] = ("default",)
    metadata: tuple[MetadataHook, ...] = field(default_factory=tuple)
    # the f32 GGUF's logit gate vs transformers (strict llama.cpp settings), and why when it is not 1e-3
    strict_max_abs: float = 1e-3
    strict_reason: str = ""


def _swa_layers(writer: gguf.GGUFWriter, cfg: Any, head_dim: int) -> None:
    """Sliding-window layers as the config lists them (llama.cpp's per-layer pattern array)."""
    types = list(getattr(cfg, "layer_types", None) or [])
    window = getattr(cfg, "sliding_window", None)
    if window and "sliding_attention" in types:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])


def _gemma_attention(writer: gguf.GGUFWriter, cfg: Any, head_dim: int) -> None:
    n_layer = int(cfg.num_hidden_layers)
    big = (cfg.model_type, n_layer) in (("gemma2", 46), ("gemma3_text", 62))  # llama.cpp's 27B rule
    llama_cpp_scalar = cfg.hidden_size / cfg.num_attention_heads if big else head_dim
    if not math.isclose(float(cfg.query_pre_attn_scalar), float(llama_cpp_scalar)):
        raise UnsupportedModelError(
            f"query_pre_attn_scalar {cfg.query_pre_attn_scalar} differs from the {llama_cpp_scalar:g} llama.cpp "
            f"uses for a {n_layer}-layer {cfg.model_type}; the GGUF would attend with another scale.",
            hint="Pass an existing GGUF with --llm-gguf.")
    for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                     ("final_logit_softcapping", writer.add_final_logit_softcapping)):
        cap = getattr(cfg, key, None)
        if cap:
            add(float(cap))
        elif cfg.model_type == "gemma2":
            add(NO_SOFTCAP)  # llama.cpp's gemma2 always caps (50 / 30 when the key is absent)


# tanh(x / c) * c == x to float32 rounding for |x| < 1e4: how a gemma2 GGUF says "no soft-capping" (HF
# composites -- LLaVA, PaliGemma -- apply their own lm_head without the final cap; llama.cpp cannot skip it).
NO_SOFTCAP = 1e9


def _gemma3_rope(writer: gguf.GGUFWriter, cfg: Any, head_dim: int) -> None:
    writer.add_rope_freq_base_swa(float(cfg.rope_local_base_freq))
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":  # global layers only, in both
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def _phi3_rope(writer: gguf.GGUFWriter, cfg: Any, head_dim: int) -> None:
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) not in ("longrope", "su"):
        return
    original = int(cfg.original_max_position_embeddings)
    scale = cfg.max_position_embeddings / original
    factor = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))
    writer.add_rope_scaling_attn_factors(float(scaling.get("attention_factor") or factor))  # as transformers
    writer.add_rope_scaling_orig_ctx_len(original)


def _qwen3_window(writer: gguf.GGUFWriter, cfg: Any, head_dim: int) -> None:
    if getattr(cfg, "use_sliding_window", False):
        raise UnsupportedModelError("qwen3 with use_sliding_window=True is not written: llama.cpp's qwen3 has no "
                                    "sliding window.", hint="Pass an existing GGUF with --llm-gguf.")


_GELU = ("gelu_pytorch_tanh",)
# Measured on the tiny gemma2 / gemma3 models: 1.2e-3 to 4.8e-3 max-abs, and <= 1e-4 (gemma3) once the
# reference rounds GELU's input and output to float16 as ggml does (tests/test_text_archs.py shows it).
_GELU_GATE = dict(strict_max_abs=1e-2, strict_reason="ggml's CPU GELU reads a float16 table (input and output "
                  "rounded to 11 significant bits), also in f32 GGUFs")

# HF text model_type -> GGUF architecture (llama.cpp src/llama-arch.cpp names)
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True, prefill_graph=True),
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True, prefill_graph=True),  # as convert_hf_to_gguf
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False, prefill_graph=True),
    "qwen2_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN2VL, permute_qk=False, mrope=True, prefill_graph=True),
    # llama.cpp: also qwen2vl
    "qwen2_5_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN2VL, permute_qk=False, mrope=True, prefill_graph=True),
    "qwen3_vl_text": ArchSpec(gguf.MODEL_ARCH.QWEN3VL, permute_qk=False, mrope=True),
    "qwen3": ArchSpec(gguf.MODEL_ARCH.QWEN3, permute_qk=False, metadata=(_qwen3_window,)),
    "phi3": ArchSpec(gguf.MODEL_ARCH.PHI3, permute_qk=False, rope_scalings=("default", "longrope", "su"),
                     metadata=(_phi3_rope,)),
    "gemma2": ArchSpec(gguf.MODEL_ARCH.GEMMA2, permute_qk=False, activation=_GELU, norm_plus_one=True,
                       metadata=(_gemma_attention, _swa_layers), **_GELU_GATE),
    "gemma3_text": ArchSpec(gguf.MODEL_ARCH.GEMMA3, permute_qk=False, activation=_GELU, norm_plus_one=True,
                            rope_scalings=("default", "linear"),
                            metadata=(_gemma_attention, _swa_layers, _gemma3_rope), **_GELU_GATE),
}


def arch_spec(model_type: str) -> ArchSpec:
    if model_type not in ARCHS:
        raise UnsupportedModelError(
            f"text model type '{model_type}' has no GGUF mapping in edgebridge.",
            hint=f"Supported text models: {', '.join(sorted(ARCHS))}. Pass an existing GGUF with --llm-gguf.",
        )
    return ARCHS[model_type]


def activation_of(cfg: Any) -> str:
    """The MLP activation as the HF config names it (gemma configs call it ``hidden_activation``)."""
    return getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None) or "silu"


def check_config(cfg: Any, spec: ArchSpec) -> None:
    """Refuse what llama.cpp would compute differently from transformers for this architecture."""
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in spec.rope_scalings:
        raise UnsupportedModelError(
            f"rope scaling {scaling} is not supported by the GGUF writer for {cfg.model_type}.",
            hint="Pass an existing GGUF of this model with --llm-gguf.")
    act = activation_of(cfg)
    if act not in spec.activation:
        raise UnsupportedModelError(
            f"activation '{act}' is not supported for {cfg.model_type} GGUF export (llama.cpp computes "
            f"{', '.join(spec.activation)}).", hint="Pass an existing GGUF with --llm-gguf.")


def rotary_dims(cfg: Any, head_dim: int) -> int:
    """How many of a head's dimensions are rotated (phi3's partial_rotary_factor, else all)."""
    return int(head_dim * float(getattr(cfg, "partial_rotary_factor", None) or 1.0))


def mrope_sections(cfg: Any, head_dim: int) -> list[int]:
    """The (t, h, w) rotary sections, padded to llama.cpp's four; they must cover the head's rotary pairs."""
    sections = [int(s) for s in ((getattr(cfg, "rope_scaling", None) or {}).get("mrope_section") or [])]
    if len(sections) != 3 or sum(sections) != head_dim // 2:
        raise UnsupportedModelError(
            f"M-RoPE sections {sections} do not split the {head_dim // 2} rotary pairs of a head into (t, h, w).",
            hint="The config's rope_scaling.mrope_section is missing or inconsistent with head_dim.")
    return sections + [0]
