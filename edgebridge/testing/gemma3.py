"""A seeded tiny Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP tower, average pooling to a fixed
number of image tokens, RMS-normed soft embeddings and a linear projection, a gemma3 text model with
sliding-window layers; Gemma's SentencePiece tokenizer and ``Gemma3Processor`` (offline files)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.llava import SIZES, llm_config
from edgebridge.testing.spm_tokenizer import GEMMA_CHAT_TEMPLATE, hf_spm_tokenizer
from edgebridge.testing.weights import save_seeded

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
IMAGE_SIZE, PATCH = 64, 8  # 8 x 8 patches
TOKENS_PER_IMAGE = 16  # pooled 2 x 2 -> 4 x 4
# Gemma 3's template writes an image part as its start-of-image token
CHAT_TEMPLATE = GEMMA_CHAT_TEMPLATE.replace("'<image>'", f"'{BOI}'")


def build_gemma3(seed: int = 0):
    """``(model, processor)``, nothing written."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              SiglipVisionConfig)

    tokenizer = hf_spm_tokenizer([BOI, EOI, IMAGE], chat_template=CHAT_TEMPLATE,
                                 named={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE})
    vocab_size = len(tokenizer) + (-len(tokenizer)) % 16
    text = llm_config("gemma3", SIZES["tiny"], vocab_size, tokenizer)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="gelu_pytorch_tanh",
                                vision_use_head=False)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (BOI, EOI, IMAGE)}
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                          mm_tokens_per_image=TOKENS_PER_IMAGE, boi_token_index=ids[BOI], eoi_token_index=ids[EOI],
                          image_token_index=ids[IMAGE], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=TOKENS_PER_IMAGE, chat_template=CHAT_TEMPLATE)
    return model, processor, tokenizer


def make_gemma3(out_dir: Path, seed: int = 0) -> Path:
    model, processor, tokenizer = build_gemma3(seed)
    return save_seeded(model, processor, tokenizer, out_dir, seed, stop_token="<end_of_turn>")
