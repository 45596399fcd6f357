"""Seeded tiny LLaVA-NeXT and LLaVA-OneVision: "anyres" tiling on a grid of pinpoints, unpadding,
``image_newline`` after every row; OneVision's ``anyres_max_9`` shrinks a grid of more than 9 tiles.

64 px tiles of 8 px patches (64 features per tile). NeXT: CLIP (CLS dropped, second-to-last layer),
pinpoints up to 2 x 2 tiles, llama text. OneVision: SigLIP (all features, last layer), pinpoints up to
4 x 4 tiles (so a wide photo exceeds 9 tiles and is pooled), qwen2 text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.llava import CLIP_MEAN, CLIP_STD, SIZES, llm_config, tower_config
from edgebridge.testing.tokenizer import hf_tokenizer
from edgebridge.testing.weights import save_seeded

TILE = 64
NEXT_PINPOINTS = [[64, 128], [128, 64], [128, 128], [64, 192], [192, 64]]
ONEVISION_PINPOINTS = [[TILE * r, TILE * c] for r in range(1, 5) for c in range(1, 5)]


def onevision_processor(image_processor, tokenizer, num_image_tokens: int, select: str, chat_template: str | None):
    """``LlavaOnevisionProcessor`` for images only.

    Its constructor insists on a video processor, which needs torchvision (not installable beside torch
    2.13 here); this subclass drops that attribute and keeps every image code path of the HF processor
    (``__call__``, ``_expand_image_tokens``, ``_get_number_of_features``) as the reference.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor, tokenizer, num_image_tokens=None, vision_feature_select_strategy=None,
                     chat_template=None, vision_aspect_ratio="anyres_max_9"):
            # the attribute set-up of LlavaOnevisionProcessor.__init__ (transformers 4.57), minus the videos
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token, self.video_token = "<image>", "<video>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.vision_aspect_ratio = vision_aspect_ratio
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyOnevisionProcessor(image_processor, tokenizer, num_image_tokens, select, chat_template)


def _model(kind: str, vision: str, text: str, pinpoints, seed: int):
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaOnevisionConfig,
                              LlavaOnevisionForConditionalGeneration)

    s = SIZES["tiny"]
    tokenizer = hf_tokenizer("llama-bpe" if text == "llama" else "qwen2", extra_special=["<image>", "<video>"])
    vocab_size = len(tokenizer) + (-len(tokenizer)) % 16
    select, layer = ("default", -2) if vision == "clip" else ("full", -1)
    common = dict(vision_config=tower_config(vision, s).to_dict(),
                  text_config=llm_config(text, s, vocab_size, tokenizer).to_dict(),
                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                  vision_feature_select_strategy=select, vision_feature_layer=layer, tie_word_embeddings=text == "qwen2")
    if kind == "next":
        config, cls = LlavaNextConfig(**common), LlavaNextForConditionalGeneration
    else:
        config, cls = LlavaOnevisionConfig(**common, video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                           vision_aspect_ratio="anyres_max_9"), LlavaOnevisionForConditionalGeneration
    torch.manual_seed(seed)
    return cls(config).eval(), tokenizer, select


def make_llava_next(out_dir: Path, seed: int = 0) -> Path:
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    model, tokenizer, select = _model("next", "clip", "llama", NEXT_PINPOINTS, seed)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                              image_grid_pinpoints=NEXT_PINPOINTS, resample=3,
                                              image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy=select, num_additional_image_tokens=1,
                                   chat_template=tokenizer.chat_template)
    return save_seeded(model, processor, tokenizer, out_dir, seed, stop_token="<|end_of_text|>")


def make_llava_onevision(out_dir: Path, seed: int = 0) -> Path:
    from transformers import LlavaOnevisionImageProcessor

    model, tokenizer, select = _model("onevision", "siglip", "qwen2", ONEVISION_PINPOINTS, seed)
    image_processor = LlavaOnevisionImageProcessor(size={"height": TILE, "width": TILE},
                                                   image_grid_pinpoints=ONEVISION_PINPOINTS, resample=3,
                                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = onevision_processor(image_processor, tokenizer, (TILE // 8) ** 2, select, tokenizer.chat_template)
    return save_seeded(model, processor, tokenizer, out_dir, seed, stop_token="<|end_of_text|>")
