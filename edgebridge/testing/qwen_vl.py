"""Seeded tiny Qwen-VL models (Qwen2-VL's architecture): native resolution, 2x2 patch merging, M-RoPE.

The vision tower works on 14 px patches (2 frames per temporal patch) of an image resized to
multiples of 28 within ``min_pixels..max_pixels``; ``max_pixels`` is small (112 x 112 -> at most
16 LLM tokens per image) so tests stay fast. The text model is qwen2-style with a real
``rope_scaling.mrope_section`` (t, h, w sections of the 8 rotary pairs of a 16-wide head).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.tokenizer import SPECIAL_TOKENS, chatml_template, hf_tokenizer
from edgebridge.testing.weights import reinit_

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
MROPE_SECTION = [2, 3, 3]


def qwen2vl_processor(image_processor, tokenizer, chat_template: str | None):
    """``Qwen2VLProcessor`` for images only.

    Its constructor insists on a video processor, which needs torchvision (not installable beside
    torch 2.13 here); this subclass drops that attribute and keeps every image code path of the HF
    processor (``__call__``'s expansion of ``<|image_pad|>`` by the grid) as the reference.
    """
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        attributes = ["image_processor", "tokenizer"]
        # real folders load a Qwen2TokenizerFast; tiny ones a PreTrainedTokenizerFast of the same tokenizer.json
        tokenizer_class = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast")

        def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
            # the attribute set-up of Qwen2VLProcessor.__init__ (transformers 4.57), minus the video processor
            self.image_token = IMAGE_PAD
            self.video_token = VIDEO_PAD
            self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
            self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template)


def make_qwen2_vl(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tokenizer = hf_tokenizer("qwen2", extra_special=[VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD],
                             chat_template=chatml_template(image=VISION_START + IMAGE_PAD + VISION_END))
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD), ("vision_start_token_id", VISION_START),
            ("vision_end_token_id", VISION_END))}
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
                tie_word_embeddings=False, use_sliding_window=False,
                rope_scaling={"type": "mrope", "mrope_section": MROPE_SECTION},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                                            size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    processor = qwen2vl_processor(image_processor, tokenizer, tokenizer.chat_template)
    reinit_(model, std=0.15, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["im_end"])]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
