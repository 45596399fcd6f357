"""Seeded tiny tiling VLMs: Idefics3 (SmolVLM's architecture) and InternVL.

Both tile an image into 64 px tiles (8 px patches, 64 patches per tile) and pixel-shuffle 2x2
patches into one token (16 tokens per tile) before the connector:

- ``idefics3``: SigLIP-style tower, pixel shuffle + linear connector, llama text; images resized
  to a longest edge of 256 and split into up to 4 x 4 tiles plus a global image, with
  ``<row_r_col_c>`` tokens;
- ``internvl``: InternViT-style tower (CLS token dropped), pixel shuffle + LayerNorm/MLP projector,
  qwen2 text; GOT-OCR2 tiling into up to 4 tiles plus a thumbnail, ``<img>...</img>`` around them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.tokenizer import SPECIAL_TOKENS, chatml_template, hf_tokenizer
from edgebridge.testing.weights import save_seeded

TILE, PATCH, LONGEST = 64, 8, 256
ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def _text(kind: str, tokenizer, vocab: int):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False, use_sliding_window=False)
    return LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)


def _vision(extra: dict | None = None) -> dict:
    return {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": TILE, "patch_size": PATCH, **(extra or {})}


def _save(model, processor, tokenizer, out_dir: Path, seed: int) -> Path:
    return save_seeded(model, processor, tokenizer, out_dir, seed, SPECIAL_TOKENS["eos"])


def make_idefics3(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *ROW_COL]
    tokenizer = hf_tokenizer("llama-bpe", extra_special=specials)
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    config = Idefics3Config(vision_config=_vision(), text_config=_text("llama", tokenizer, vocab).to_dict(),
                            scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": LONGEST}, max_image_size={"longest_edge": TILE})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(TILE // PATCH) ** 2 // 4, chat_template=tokenizer.chat_template)
    return _save(model, processor, tokenizer, out_dir, seed)


def internvl_processor(image_processor, tokenizer, image_seq_length: int, chat_template: str | None):
    """``InternVLProcessor`` for images only.

    Its constructor insists on a video processor, which needs torchvision (not installable beside
    torch 2.13 here); this subclass drops that attribute and keeps every image code path of the HF
    processor (``__call__``, ``_insert_media_placeholders``) as the reference.
    """
    from transformers import InternVLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor, tokenizer, image_seq_length=256, chat_template=None):
            # the attribute set-up of InternVLProcessor.__init__ (transformers 4.57), minus the video processor
            self.image_seq_length = image_seq_length
            self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
            self.start_image_token_id = tokenizer.start_image_token_id
            self.end_image_token_id = tokenizer.end_image_token_id
            self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
            self.image_token_id = tokenizer.context_image_token_id
            self.image_ids = [self.image_token_id, self.start_image_token_id, self.end_image_token_id]
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyInternVLProcessor(image_processor, tokenizer, image_seq_length, chat_template)


def make_internvl(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration

    specials = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = hf_tokenizer("qwen2", extra_special=specials, chat_template=chatml_template(image="<IMG_CONTEXT>"))
    tokenizer.extra_special_tokens = {"start_image_token": "<img>", "end_image_token": "</img>",
                                      "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tokenizer = _reload_with_extras(tokenizer)
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    config = InternVLConfig(
        vision_config=_vision({"image_size": [TILE, TILE], "patch_size": [PATCH, PATCH], "use_mask_token": False}),
        text_config=_text("qwen2", tokenizer, vocab).to_dict(), image_token_id=tokenizer.context_image_token_id,
        image_seq_length=(TILE // PATCH) ** 2 // 4, downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessor(size={"height": TILE, "width": TILE}, crop_to_patches=True,
                                            min_patches=1, max_patches=4)
    processor = internvl_processor(image_processor, tokenizer, config.image_seq_length, tokenizer.chat_template)
    return _save(model, processor, tokenizer, out_dir, seed)


def _reload_with_extras(tokenizer):
    """Round-trip through save/load so ``extra_special_tokens`` become the attributes InternVL reads."""
    import tempfile

    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        import json

        cfg_path = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["extra_special_tokens"] = tokenizer.extra_special_tokens
        cfg_path.write_text(json.dumps(cfg))
        return PreTrainedTokenizerFast.from_pretrained(tmp)
