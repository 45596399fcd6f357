"""Seeded LLaVA-style models: a CLIP or SigLIP tower, the MLP projector, and one of the text models the
GGUF writer knows (llama, qwen2, qwen3, phi3, gemma2, gemma3), each with the tokenizer kind its real
checkpoints use (Llama 3 / Qwen2 byte-level BPE; Gemma's SentencePiece BPE).

Two sizes:

- ``tiny``: a 64 px image in 8 px patches (64 image tokens), 64-wide 2-layer LLM; exports and
  runs in seconds, weights with std 0.15 so every tensor shows up in parity figures;
- ``bench``: a CLIP ViT-B/16 tower at 224 px (196 image tokens) and a 12-layer, 768-wide llama
  (~85M parameters), default init; for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgebridge.testing.tokenizer import hf_tokenizer
from edgebridge.testing.weights import reinit_

IMAGE_TOKEN = "<image>"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class LlavaSize:
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    init_std: float | None  # None: transformers' default init


SIZES = {
    "tiny": LlavaSize(64, 8, 64, 3, 4, 64, 2, 4, 2, 128, 0.15),
    "bench": LlavaSize(224, 16, 768, 12, 12, 768, 12, 12, 12, 2048, None),
}


def tower_config(kind: str, s: LlavaSize):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    common = dict(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
    )
    if kind == "clip":
        return CLIPVisionConfig(**common, projection_dim=s.vision_hidden, hidden_act="quick_gelu")
    if kind == "siglip":
        return SiglipVisionConfig(**common, hidden_act="gelu_pytorch_tanh")
    raise ValueError(f"unknown vision tower {kind!r} (clip or siglip)")


TEXT_MODELS = ("llama", "llama2", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")  # llama2: Llama 2's SPM tokenizer
# LLaVA-1.5's conversation form, for the Llama 2 (Vicuna) tokenizer
VICUNA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TIED = ("qwen2", "qwen3", "gemma2", "gemma3")  # as the real small checkpoints


def llm_config(kind: str, s: LlavaSize, vocab_size: int, tokenizer):
    """The text config of ``kind``; the tiny size sets the features that set the architectures apart (an
    explicit head_dim unlike hidden/heads, partial rotary, sliding windows shorter than the test prompts,
    soft-capping that bites) so the parity checks exercise them."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Phi3Config, Qwen2Config, Qwen3Config

    tiny = s.init_std is not None
    common = dict(
        vocab_size=vocab_size, hidden_size=s.text_hidden, intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=kind in TIED,
    )
    head_dim = s.text_hidden // s.text_heads
    layer_types = ["sliding_attention", "full_attention"] * (s.text_layers // 2) + ["sliding_attention"] * (s.text_layers % 2)
    gemma = dict(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=32 if tiny else 4096,
                 layer_types=layer_types)
    if kind in ("llama", "llama2"):
        return LlamaConfig(**common)
    if kind == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if kind == "qwen3":
        return Qwen3Config(**common, head_dim=2 * head_dim, use_sliding_window=False)
    if kind == "phi3":
        return Phi3Config(**common, partial_rotary_factor=0.75, sliding_window=None, original_max_position_embeddings=2048)
    if kind == "gemma2":  # LLaVA's own lm_head applies no final soft-capping, so the tiny model has none either
        return Gemma2Config(**common, **gemma, attn_logit_softcapping=3.0 if tiny else 50.0,
                            final_logit_softcapping=None)
    if kind == "gemma3":
        # the global rotary base differs from the local one, so mixing them up shows
        return Gemma3TextConfig(**{**common, "rope_theta": 100000.0 if tiny else 1e6}, **gemma,
                                rope_local_base_freq=10000.0)
    raise ValueError(f"unknown text model {kind!r} ({', '.join(TEXT_MODELS)})")


def text_tokenizer(kind: str, extra_special: list[str]):
    """(HF tokenizer, the chat's end-of-turn token) of the kind the real checkpoints of ``kind`` use."""
    if kind in ("gemma2", "gemma3"):
        from edgebridge.testing.spm_tokenizer import hf_spm_tokenizer

        return hf_spm_tokenizer(extra_special), "<end_of_turn>"
    if kind == "llama2":
        from edgebridge.testing.spm_tokenizer import hf_llama_spm_tokenizer

        return hf_llama_spm_tokenizer(extra_special, chat_template=VICUNA_TEMPLATE), "</s>"
    flavour = "llama-bpe" if kind in ("llama", "phi3") else "qwen2"
    return hf_tokenizer(flavour, extra_special=extra_special), "<|end_of_text|>"


def _image_processor(kind: str, s: LlavaSize):
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if kind == "clip":
        return CLIPImageProcessor(
            size={"shortest_edge": s.image_size},
            crop_size={"height": s.image_size, "width": s.image_size},
            resample=3,  # PIL bicubic, as CLIP's own processor
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
    return SiglipImageProcessor(
        size={"height": s.image_size, "width": s.image_size},
        resample=2,  # PIL bilinear, as SigLIP's own processor
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_llava(vision: str = "clip", text: str = "llama", size: str = "tiny", seed: int = 0):
    """Return ``(model, processor)`` of a seeded LLaVA; nothing touches the disk or a hub."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    s = SIZES[size]
    tokenizer, end_of_turn = text_tokenizer(text, [IMAGE_TOKEN])
    vocab_size = len(tokenizer) + (-len(tokenizer)) % 16  # padded like real checkpoints
    # CLIP keeps its CLS token and LLaVA drops it ("default"); SigLIP has none ("full")
    strategy, layer, additional = ("default", -2, 1) if vision == "clip" else ("full", -1, 0)
    n_image_tokens = (s.image_size // s.patch_size) ** 2
    config = LlavaConfig(
        vision_config=tower_config(vision, s).to_dict(),
        text_config=llm_config(text, s, vocab_size, tokenizer).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        image_seq_length=n_image_tokens,
        tie_word_embeddings=text in TIED,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if s.init_std is not None:
        reinit_(model, std=s.init_std, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = LlavaProcessor(
        image_processor=_image_processor(vision, s),
        tokenizer=tokenizer,
        patch_size=s.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=additional,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
    )
    return model, processor


def make_llava(out_dir: Path, vision: str = "clip", text: str = "llama", size: str = "tiny", seed: int = 0) -> Path:
    """Write a seeded LLaVA folder (safetensors weights, tokenizer, processor) to ``out_dir``."""
    model, processor = build_llava(vision, text, size, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
