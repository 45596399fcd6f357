"""Seeded LLaVA-style models: a CLIP or SigLIP tower, the MLP projector, a llama or qwen2 LLM.

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


def _vision_config(kind: str, s: LlavaSize):
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


def _text_config(kind: str, s: LlavaSize, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "llama":
        return LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)
    raise ValueError(f"unknown text model {kind!r} (llama or qwen2)")


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
    flavour = "llama-bpe" if text == "llama" else "qwen2"
    tokenizer = hf_tokenizer(flavour, extra_special=[IMAGE_TOKEN])
    vocab_size = len(tokenizer) + (-len(tokenizer)) % 16  # padded like real checkpoints
    # CLIP keeps its CLS token and LLaVA drops it ("default"); SigLIP has none ("full")
    strategy, layer, additional = ("default", -2, 1) if vision == "clip" else ("full", -1, 0)
    n_image_tokens = (s.image_size // s.patch_size) ** 2
    config = LlavaConfig(
        vision_config=_vision_config(vision, s).to_dict(),
        text_config=_text_config(text, s, vocab_size, tokenizer).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=layer,
        image_seq_length=n_image_tokens,
        tie_word_embeddings=text == "qwen2",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if s.init_std is not None:
        reinit_(model, std=s.init_std, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")]
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
