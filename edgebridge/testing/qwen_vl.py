"""Seeded tiny Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): native resolution, 2x2 patch merging, M-RoPE.

The vision tower works on 14 px patches (2 frames per temporal patch) of an image resized to
multiples of 28 within ``min_pixels..max_pixels``; ``max_pixels`` is small (112 x 112 -> at most
16 LLM tokens per image) so tests stay fast. The text model is qwen2-style with a real
``rope_scaling.mrope_section`` (t, h, w sections of the 8 rotary pairs of a 16-wide head).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.tokenizer import SPECIAL_TOKENS, chatml_template, hf_tokenizer
from edgebridge.testing.weights import save_seeded

VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
MROPE_SECTION = [2, 3, 3]


def image_only_processor(processor_class: str, image_processor, tokenizer, chat_template: str | None):
    """``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` for images only.

    Their constructors insist on a video processor, which needs torchvision (not installable beside
    torch 2.13 here); this subclass drops that attribute and keeps every image code path of the HF
    processor (``__call__``'s expansion of ``<|image_pad|>`` by the grid) as the reference.
    """
    import transformers
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(getattr(transformers, processor_class)):
        attributes = ["image_processor", "tokenizer"]
        # real folders load a Qwen2TokenizerFast; tiny ones a PreTrainedTokenizerFast of the same tokenizer.json
        tokenizer_class = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "PreTrainedTokenizerFast")
        image_processor_class = "AutoImageProcessor"

        def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
            # the attribute set-up of the processors' __init__ (transformers 4.57), minus the video processor
            self.image_token, self.video_token = IMAGE_PAD, VIDEO_PAD
            self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
            self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyProcessor(image_processor, tokenizer, chat_template)


def _tokenizer():
    tokenizer = hf_tokenizer("qwen2", extra_special=[VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD],
                             chat_template=chatml_template(image=VISION_START + IMAGE_PAD + VISION_END))
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD), ("vision_start_token_id", VISION_START),
            ("vision_end_token_id", VISION_END))}
    return tokenizer, ids


def _text(tokenizer) -> dict:
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
                tie_word_embeddings=False, use_sliding_window=False,
                rope_scaling={"type": "mrope", "mrope_section": MROPE_SECTION},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def _save(model, processor_class: str, tokenizer, out_dir: Path, seed: int, image_processor=None,
          std: float | None = 0.15) -> Path:
    from transformers import Qwen2VLImageProcessor

    image_processor = image_processor or Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    processor = image_only_processor(processor_class, image_processor, tokenizer, tokenizer.chat_template)
    return save_seeded(model, processor, tokenizer, out_dir, seed, SPECIAL_TOKENS["im_end"], std)


def make_qwen2_vl(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer, ids = _tokenizer()
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu")
    config = Qwen2VLConfig(text_config=_text(tokenizer), vision_config=vision, **ids)
    torch.manual_seed(seed)
    return _save(Qwen2VLForConditionalGeneration(config), "Qwen2VLProcessor", tokenizer, out_dir, seed)


def make_qwen2_5_vl(out_dir: Path, seed: int = 0, size: str = "tiny", **_: object) -> Path:
    """Qwen2.5-VL: RMS norms and gated MLPs in the tower, window attention (windows of 2x2 merged tokens
    here, so a 112 px image has four) in block 0 and full attention in block 1.

    ``size="bench"`` (benchmarks): a ViT-B-sized windowed tower (12 x 768, 112 px windows, full attention
    in blocks 3, 7, 11; the real 3B's is 32 x 1280) and a 12 x 768 LLM, images up to 448 x 448 px
    (256 LLM tokens), transformers' default init: the scale of the LLaVA benchmark model."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    tokenizer, ids = _tokenizer()
    text = _text(tokenizer)
    vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="silu", window_size=56,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    image_processor = None
    if size == "bench":
        text.update(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                    num_key_value_heads=4, rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]})
        vision.update(depth=12, hidden_size=768, out_hidden_size=768, intermediate_size=2048, num_heads=12,
                      window_size=112, fullatt_block_indexes=[3, 7, 11])
        image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=448 * 448,
                                                size={"shortest_edge": MIN_PIXELS, "longest_edge": 448 * 448})
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    return _save(Qwen2_5_VLForConditionalGeneration(config), "Qwen2_5_VLProcessor", tokenizer, out_dir, seed,
                 image_processor, std=None if size == "bench" else 0.15)


def make_qwen3_vl(out_dir: Path, seed: int = 0, **_: object) -> Path:
    """Qwen3-VL: 16 px patches, a learned 8 x 8 position table interpolated to each grid, deepstack
    features from block 0 added to the first LLM layer, a qwen3 LLM (q/k norms) with interleaved M-RoPE."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer, ids = _tokenizer()
    # interleaved sections [3, 3, 2]: llama.cpp's imrope gives each rotary pair t/h/w by pair index mod 3 up to
    # 3x its section and the unused fourth position past that, where transformers keeps t; with these
    # sections no pair falls past (real Qwen3-VL's [24, 20, 20] leaves the two lowest-frequency pairs there)
    text = {**_text(tokenizer), "head_dim": 16, "attention_bias": False,
            "rope_scaling": {"rope_type": "default", "mrope_section": [3, 3, 2], "mrope_interleaved": True}}
    text.pop("use_sliding_window")
    vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu_pytorch_tanh",
                  num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=64 * 64, max_pixels=128 * 128,
                                            size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return _save(model, "Qwen3VLProcessor", tokenizer, out_dir, seed, image_processor)
