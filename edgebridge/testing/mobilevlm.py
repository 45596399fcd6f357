"""Seeded tiny MobileVLM (CLIP tower + LDP / LDPv2 projector + llama), from the project's reference module."""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.llava import CLIP_MEAN, CLIP_STD
from edgebridge.testing.tokenizer import SPECIAL_TOKENS, hf_tokenizer
from edgebridge.testing.weights import reinit_


def make_mobilevlm(out_dir: Path, projector: str = "ldpv2", seed: int = 0, **_: object) -> Path:
    from transformers import CLIPImageProcessor, LlamaConfig

    from edgebridge.exporters.reference.mobilevlm import MobileVLMConfig, MobileVLMForCausalLM

    tokenizer = hf_tokenizer("llama-bpe", extra_special=["<image>"])
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    vision = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
              "image_size": 64, "patch_size": 8, "hidden_act": "quick_gelu"}
    config = MobileVLMConfig(vision_config=vision, text_config=text.to_dict(), mm_projector_type=projector,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = MobileVLMForCausalLM(config).eval()
    reinit_(model, std=0.15, seed=seed)
    gen = model.language_model.generation_config
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eos"])]
    gen.pad_token_id, gen.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    gen.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, resample=3,
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir)
    return out_dir
