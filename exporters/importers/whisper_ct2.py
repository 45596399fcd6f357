"""Whisper from CTranslate2 (faster-whisper's format) to a ``WhisperForConditionalGeneration`` folder.

Weights: CTranslate2 fuses the self-attention Q/K/V (``linear_0``, 3 x d rows) and the
cross-attention K/V (``linear_1``, 2 x d rows); they are split back, and the zero K biases that
the fusion needs are dropped (Whisper's K projections have none; a non-zero one is refused).
Everything is cast to float32. The output embedding is tied to the token embedding (CTranslate2
stores it as an alias).

Tokenizer: the multilingual packages ship ``tokenizer.json``; English-only models (``.en``) ship
none, so it is built from openai-whisper's ``gpt2.tiktoken`` (the byte-level BPE ranks) plus the
special tokens in openai-whisper's order: ``<|endoftext|>``, ``<|startoftranscript|>``, 99 language
tokens, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``,
``<|nospeech|>``, ``<|notimestamps|>``, 1501 timestamps.

Generation settings (suppressed tokens, alignment heads, language ids) come from the CTranslate2
``config.json``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgebridge.errors import ExportError, UnsupportedModelError
from edgebridge.exporters.importers.ctranslate2 import CT2Model, read_ct2
from edgebridge.runtimes.tools.tool_whisper_asr import bytes_to_unicode

# openai-whisper's language codes, in token order (whisper/tokenizer.py LANGUAGES)
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()


def _merge_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Re-run BPE on ``token`` with merges below ``max_rank``: the last step gives its merge pair."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best_rank is None or best_rank >= max_rank:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


TIKTOKEN_NAME = "gpt2.tiktoken"


def tiktoken_file() -> Path:
    """openai-whisper's ``gpt2.tiktoken``: ``$EDGEBRIDGE_ASSETS`` or ``~/.cache/edgebridge/assets``
    (where `make setup` puts it), else an installed openai-whisper package (read as data, never imported)."""
    candidates = [Path(os.environ.get("EDGEBRIDGE_ASSETS", Path.home() / ".cache" / "edgebridge" / "assets"))
                  / TIKTOKEN_NAME]
    spec = importlib.util.find_spec("whisper")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "assets" / TIKTOKEN_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise ExportError("English-only Whisper needs openai-whisper's gpt2.tiktoken for its tokenizer.",
                      hint="`make setup` fetches it into ~/.cache/edgebridge/assets/.")


def english_tokenizer_json(out: Path, vocab_size: int) -> None:
    """Write the ``.en`` Whisper tokenizer as a tokenizers ``tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    ranks = {}
    for line in tiktoken_file().read_text().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    to_str = bytes_to_unicode()
    enc = lambda b: "".join(to_str[x] for x in b)  # noqa: E731
    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _merge_parts(ranks, tok, rank)
            merges.append((enc(a), enc(b)))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # as many language tokens as the model's vocabulary has room for (99 before large-v3's "yue")
    n_languages = vocab_size - len(ranks) - (2 + 6 + 1501)
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{code}|>" for code in LANGUAGES[:n_languages]],
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>", *[f"<|{i * 0.02:.2f}|>" for i in range(1501)]]
    tokenizer.add_special_tokens(specials)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ExportError(f"built an English Whisper tokenizer of {tokenizer.get_vocab_size()} tokens; "
                          f"the model has {vocab_size}.")
    tokenizer.save(str(out))


def _split(w: np.ndarray, parts: int) -> list[torch.Tensor]:
    return [torch.from_numpy(x.astype(np.float32)) for x in np.split(w, parts, axis=0)]


def _state_dict(m: CT2Model, enc_layers: int, dec_layers: int) -> dict[str, torch.Tensor]:
    f32 = lambda name: torch.from_numpy(m.get(name).astype(np.float32))  # noqa: E731
    sd: dict[str, torch.Tensor] = {}

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = f32(f"{src}/gamma"), f32(f"{src}/beta")

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = f32(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = f32(f"{src}/bias")

    def fused(dsts: list[str], src: str) -> None:
        weights = _split(m.get(f"{src}/weight"), len(dsts))
        biases = _split(m.get(f"{src}/bias"), len(dsts))
        for dst, w, b in zip(dsts, weights, biases):
            sd[f"{dst}.weight"] = w
            if dst.endswith("k_proj"):
                if b.abs().max() > 0:
                    raise UnsupportedModelError(f"{src}: a non-zero key bias, which Whisper does not have.")
            else:
                sd[f"{dst}.bias"] = b

    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            fused([f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{src}/self_attention/linear_0")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused([f"{dst}.encoder_attn.{p}" for p in ("k_proj", "v_proj")], f"{src}/attention/linear_1")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        sd[f"model.{side}.embed_positions.weight"] = f32(f"{side}/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = f32("decoder/embeddings/weight")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    return sd


def _count_layers(m: CT2Model, side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return len({match.group(1) for k in m.variables if (match := pattern.match(k))})


def convert_whisper(model_bin: Path, ct2_config: dict[str, Any], out_dir: Path,
                    tokenizer_json: Path | None = None) -> Path:
    """Write a ``WhisperForConditionalGeneration`` folder (weights, tokenizer, feature extractor, generation config)."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperTokenizerFast)

    m = read_ct2(model_bin)
    if m.spec != "WhisperSpec":
        raise UnsupportedModelError(f"'{model_bin}' holds a CTranslate2 {m.spec}, not a Whisper model.")
    vocab, d_model = m.get("decoder/embeddings/weight").shape
    n_mels = m.get("encoder/conv1/weight").shape[1]
    enc_layers, dec_layers = _count_layers(m, "encoder"), _count_layers(m, "decoder")
    multilingual = vocab >= 51865
    eot, sot = (50257, 50258) if multilingual else (50256, 50257)
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, d_model=d_model, encoder_layers=enc_layers, decoder_layers=dec_layers,
        encoder_attention_heads=int(m.get("encoder/num_heads")), decoder_attention_heads=int(m.get("decoder/num_heads")),
        encoder_ffn_dim=m.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=m.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=m.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=m.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])), tie_word_embeddings=True)
    model = WhisperForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(_state_dict(m, enc_layers, dec_layers), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ExportError(f"Whisper conversion left weights unmapped: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    model.tie_weights()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    if tokenizer_json is not None:
        tok_path.write_bytes(Path(tokenizer_json).read_bytes())
    else:
        english_tokenizer_json(tok_path, vocab)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tok_path), unk_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                     predict_timestamps=False)
    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        begin_suppress_tokens=config.begin_suppress_tokens, suppress_tokens=config.suppress_tokens,
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        is_multilingual=multilingual, max_initial_timestamp_index=50, return_timestamps=False,
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])])
    if multilingual:
        gen.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
        gen.task_to_id = {"transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
                          "translate": tokenizer.convert_tokens_to_ids("<|translate|>")}
    model.generation_config = gen
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(out_dir)
    (out_dir / "edgebridge_source.json").write_text(json.dumps(
        {"format": "ctranslate2", "source": str(model_bin), "spec_revision": m.revision}, indent=1))
    return out_dir
