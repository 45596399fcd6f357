"""Seeded tiny Idefics2: SigLIP-style tower at variable resolution, MLP + perceiver resampler
(16 learned latents, 2 layers), a mistral LLM. Images keep their aspect ratio (shorter side at
least 64, longer side at most 128); ``split=True`` also cuts them into 4 quadrants + the whole."""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.tokenizer import SPECIAL_TOKENS, hf_tokenizer
from edgebridge.testing.weights import reinit_

N_LATENTS = 16


def make_idefics2(out_dir: Path, seed: int = 0, split: bool = False, **_: object) -> Path:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessor, Idefics2Processor
    from transformers import MistralConfig

    tokenizer = hf_tokenizer("llama-bpe", extra_special=["<image>", "<fake_token_around_image>", "<end_of_utterance>"])
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    text = MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         sliding_window=None, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    config = Idefics2Config(
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 128, "patch_size": 8},
        perceiver_config={"hidden_size": 64, "resampler_n_latents": N_LATENTS, "resampler_depth": 2,
                          "resampler_n_heads": 4, "resampler_head_dim": 16, "num_key_value_heads": 2},
        text_config=text.to_dict(), image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config).eval()
    reinit_(model, std=0.15, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eos"])]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Idefics2ImageProcessor(size={"shortest_edge": 64, "longest_edge": 128},
                                             do_image_splitting=split)
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=N_LATENTS,
                                  chat_template=tokenizer.chat_template)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
