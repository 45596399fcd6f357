"""Seeded audio-LLMs with the real transformers architectures: Qwen2-Audio and Voxtral.

Both keep the real Whisper-style geometry (128 mel bins, 30 s windows of 3000 frames, 1500
encoder positions) with narrow widths, so the front end, padding and masks are the real ones:

- ``qwen2-audio``: Whisper encoder (2 x 64) with the key-padding mask, average pooling (stride 2),
  a linear projector; a qwen2 LLM. One clip is at most one window (750 embeddings);
- ``voxtral``: Whisper encoder (2 x 64), frames stacked by 4, a two-layer MLP adapter; a llama LLM.
  Clips are padded to whole windows, 375 embeddings per window.

Voxtral's own processor needs mistral-common's tokenizer; the tiny Voxtral uses a fast BPE
tokenizer, and its folder holds a WhisperFeatureExtractor and that tokenizer (the family builds the
processor's inputs the way ``VoxtralProcessor`` does: pad to 30 s multiples, chunk, 375 tokens per chunk).
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.testing.tokenizer import SPECIAL_TOKENS, hf_tokenizer
from edgebridge.testing.weights import reinit_

QWEN2_AUDIO_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
VOXTRAL_TOKENS = ["[AUDIO]", "[BEGIN_AUDIO]", "[INST]", "[/INST]"]
VOXTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '[BEGIN_AUDIO][AUDIO]' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '[/INST]' }}"
    "{% else %}{{ message['content'] }}{{ '<|end_of_text|>' }}{% endif %}"
    "{% endfor %}"
)
D_AUDIO, LAYERS, HEADS = 64, 2, 4


def _text_config(kind: str, tokenizer, vocab_size: int):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  rope_theta=10000.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False, use_sliding_window=False)
    return LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)


def _feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30,
                                   n_fft=400, padding_value=0.0, return_attention_mask=True)


def _finish(model, tokenizer, seed: int, std: float = 0.15):
    reinit_(model, std=std, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eos"])]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def make_qwen2_audio(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    tokenizer = hf_tokenizer("qwen2", extra_special=QWEN2_AUDIO_TOKENS)
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": LAYERS,
                      "encoder_attention_heads": HEADS, "encoder_ffn_dim": 4 * D_AUDIO, "d_model": D_AUDIO,
                      "max_source_positions": 1500},
        text_config=_text_config("qwen2", tokenizer, vocab).to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = _finish(Qwen2AudioForConditionalGeneration(config), tokenizer, seed)
    processor = Qwen2AudioProcessor(feature_extractor=_feature_extractor(), tokenizer=tokenizer,
                                    chat_template=tokenizer.chat_template)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def make_voxtral(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    tokenizer = hf_tokenizer("llama-bpe", extra_special=VOXTRAL_TOKENS, chat_template=VOXTRAL_TEMPLATE)
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    config = VoxtralConfig(
        audio_config={"model_type": "voxtral_encoder", "hidden_size": D_AUDIO, "intermediate_size": 4 * D_AUDIO,
                      "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_mel_bins": 128,
                      "max_source_positions": 1500, "vocab_size": vocab},
        text_config=_text_config("llama", tokenizer, vocab).to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"),
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = _finish(VoxtralForConditionalGeneration(config), tokenizer, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _feature_extractor().save_pretrained(out_dir)
    return out_dir
