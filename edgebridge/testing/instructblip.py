"""Seeded tiny InstructBLIP: BLIP ViT, a Q-Former with 8 learned queries that also reads the
instruction (BERT WordPiece), a linear projection, and a llama LLM."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from edgebridge.testing.llava import CLIP_MEAN, CLIP_STD
from edgebridge.testing.tokenizer import CORPUS, SPECIAL_TOKENS, hf_tokenizer
from edgebridge.testing.weights import reinit_

N_QUERIES = 8


def qformer_tokenizer():
    """A lowercase BERT WordPiece tokenizer over the test corpus: the special tokens, every character
    (alone and as a ``##`` continuation) and every word, sorted. Built rather than trained: the
    WordPiece trainer breaks frequency ties differently from one process to the next, and a tiny
    model whose vocabulary changes between runs is not a seeded model."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    words = {w for line in CORPUS.lower().splitlines() for w, _ in BertPreTokenizer().pre_tokenize_str(line)}
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             *sorted(w for w in words if len(w) > 1)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        return BertTokenizerFast(vocab_file=str(Path(tmp) / "vocab.txt"))


def make_instructblip(out_dir: Path, seed: int = 0, **_: object) -> Path:
    from transformers import (BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor, LlamaConfig)

    tokenizer = hf_tokenizer("llama-bpe", extra_special=["<image>"])
    vocab = len(tokenizer) + (-len(tokenizer)) % 16
    qtok = qformer_tokenizer()
    text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    config = InstructBlipConfig(
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 64, "patch_size": 8},
        qformer_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "vocab_size": len(qtok), "encoder_hidden_size": 64, "cross_attention_frequency": 1,
                        "max_position_embeddings": 128, "pad_token_id": qtok.pad_token_id},
        text_config=text.to_dict(), num_query_tokens=N_QUERIES,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config).eval()
    reinit_(model, std=0.15, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["eos"])]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 64, "width": 64}, resample=3, image_mean=CLIP_MEAN,
                                           image_std=CLIP_STD),
        tokenizer=tokenizer, qformer_tokenizer=qtok, num_query_tokens=N_QUERIES)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
