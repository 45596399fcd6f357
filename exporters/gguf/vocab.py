"""A Hugging Face ``tokenizer.json`` as GGUF tokenizer metadata: byte-level BPE (``gpt2`` in llama.cpp)
or SentencePiece BPE with byte fallback (Gemma's form, and the legacy Llama / Mistral / Phi-3 form;
``llama`` = SPM in llama.cpp).

llama.cpp re-implements each family's pre-tokenizer and picks it by the ``tokenizer.ggml.pre``
name, so the exporter must name it right: a wrong name tokenizes differently without any error.
We recognise the pre-tokenizer from its definition in ``tokenizer.json`` (alias table below) and
the export then checks llama.cpp's tokenization against the HF tokenizer on a fixed text set.

SentencePiece tokenizers reach HF as BPE with merges (transformers' converter lists, for every piece,
each split into two pieces of the vocabulary, ordered by the piece's SentencePiece score); llama.cpp's
SPM tokenizer merges by piece score instead. A piece's score is therefore recovered as minus the rank
of its first merge, which orders merges as the converter did. Byte pieces ``<0xNN>`` are BYTE tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from edgebridge.errors import UnsupportedModelError

# Split regexes -> llama.cpp pre-tokenizer names. The regexes are spelled as in the families'
# tokenizer.json files; the names are the strings llama.cpp's src/llama-vocab.cpp accepts for
# `tokenizer.ggml.pre` (and convert_hf_to_gguf.py writes).
SPLIT_REGEX_TO_PRE = {
    # Llama 3 / 3.1 / 3.2 (LLAMA_VOCAB_PRE_TYPE_LLAMA3)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    # Qwen2 / Qwen2.5 (LLAMA_VOCAB_PRE_TYPE_QWEN2): digits one at a time
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

# Token types as llama.cpp reads them (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE, UNKNOWN = (
    gguf.TokenType.NORMAL,
    gguf.TokenType.CONTROL,
    gguf.TokenType.USER_DEFINED,
    gguf.TokenType.UNUSED,
    gguf.TokenType.BYTE,
    gguf.TokenType.UNKNOWN,
)
SPM_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class GgufVocab:
    """Everything the GGUF tokenizer section needs."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    special_ids: dict[str, int] = field(default_factory=dict)
    scores: list[float] | None = None  # SPM only: merge priority per token
    unk_id: int | None = None
    add_space_prefix: bool = False  # SPM only: U+2581 before each text piece (the legacy Llama form)

    @property
    def model(self) -> str:
        return "llama" if self.scores is not None else "gpt2"

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
            writer.add_add_space_prefix(self.add_space_prefix)
            if self.unk_id is not None:
                writer.add_unk_token_id(self.unk_id)
        else:
            writer.add_token_merges(self.merges)
        if self.bos_id is not None:
            writer.add_bos_token_id(self.bos_id)
        if self.eos_id is not None:
            writer.add_eos_token_id(self.eos_id)
        if self.pad_id is not None:
            writer.add_pad_token_id(self.pad_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _detect_pre(pre_tokenizer: dict | None) -> str:
    """Name llama.cpp's pre-tokenizer for a tokenizer.json ``pre_tokenizer`` definition."""
    if pre_tokenizer is None:
        raise UnsupportedModelError("the tokenizer has no pre-tokenizer; only byte-level BPE tokenizers are supported.")
    parts = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer["type"] == "Sequence" else [pre_tokenizer]
    kinds = [p["type"] for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex inside the ByteLevel step (LLAMA_VOCAB_PRE_TYPE_GPT2)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # SmolLM / SmolLM2: single digits, then GPT-2 (LLAMA_VOCAB_PRE_TYPE_SMOLLM)
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = parts[0].get("pattern", {}).get("Regex")
        if regex in SPLIT_REGEX_TO_PRE:
            return SPLIT_REGEX_TO_PRE[regex]
    raise UnsupportedModelError(
        f"the tokenizer's pre-tokenizer ({' + '.join(kinds)}) is not one llama.cpp is known to reproduce.",
        hint="Supported: GPT-2, Llama 3, Qwen2 and SmolLM byte-level BPE tokenizers. Pass an existing GGUF "
        "with --llm-gguf if you have one for this model.",
    )


def _adds_bos(tok_json: dict, tok_config: dict, bos_id: int | None) -> bool:
    if "add_bos_token" in tok_config:
        return bool(tok_config["add_bos_token"]) and bos_id is not None
    post = tok_json.get("post_processor") or {}
    posts = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for p in posts:
        if p.get("type") == "TemplateProcessing":
            first = p["single"][0]
            if "SpecialToken" in first:
                return True
    return False


def vocab_from_folder(folder: Path, vocab_size: int, eos_id: int | None) -> GgufVocab:
    """Read ``tokenizer.json`` and ``tokenizer_config.json`` of a HF folder into a ``GgufVocab``."""
    folder = Path(folder)
    tok_json, tok_config = _read_tokenizer_files(folder)
    model = tok_json["model"]
    spm = is_spm_bpe(tok_json)
    tokens, token_types, special_ids = _token_table(tok_json, vocab_size, spm)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def tok_id(key: str) -> int | None:
        value = tok_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return special_ids.get(value) if value is not None else None

    bos_id = tok_id("bos_token")
    template = tok_config.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return GgufVocab(
        tokens=tokens,
        token_types=token_types,
        merges=merges,
        pre="default" if spm else _detect_pre(tok_json.get("pre_tokenizer")),
        bos_id=bos_id,
        eos_id=eos_id if eos_id is not None else tok_id("eos_token"),
        pad_id=tok_id("pad_token"),
        add_bos=_adds_bos(tok_json, tok_config, bos_id),
        chat_template=template if isinstance(template, str) else None,
        special_ids=special_ids,
        scores=spm_scores(tokens, merges) if spm else None,
        unk_id=model["vocab"].get(model.get("unk_token")) if spm and model.get("unk_token") else None,
        add_space_prefix=spm_form(tok_json) == "llama",
    )


def spm_form(tok_json: dict[str, Any]) -> str | None:
    """How transformers converted a SentencePiece BPE model, or None for another tokenizer: ``"gemma"``
    (spaces replaced by U+2581, nothing prepended) or ``"llama"`` (the legacy Llama / Mistral / Phi-3
    form: U+2581 prepended to every piece of text between special tokens, as llama.cpp's
    ``add_space_prefix`` does)."""
    model, norm, pre = tok_json["model"], tok_json.get("normalizer") or {}, tok_json.get("pre_tokenizer")
    # Gemma's converter adds a split at spaces, which its normalizer has already replaced: a no-op
    if pre is not None and (pre.get("type"), pre.get("pattern")) != ("Split", {"String": " "}):
        return None
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE}
    if steps == [replace]:
        return "gemma"
    if steps == [{"type": "Prepend", "prepend": SPM_SPACE}, replace]:
        return "llama"
    return None


def is_spm_bpe(tok_json: dict[str, Any]) -> bool:
    return spm_form(tok_json) is not None


def spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Per token: minus the rank of the first merge that makes it (SentencePiece's score order); tokens no
    merge makes (characters, bytes, specials) rank below every merged piece."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        rank.setdefault(left + right, i)
    floor = len(merges)
    return [-float(rank.get(t, floor + i)) for i, t in enumerate(tokens)]


def _read_tokenizer_files(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json or {}); refuses what the GGUF writer cannot convert."""
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise UnsupportedModelError(
            f"{folder} has no tokenizer.json; edgebridge converts fast (byte-level BPE) tokenizers only.",
            hint="Save the tokenizer with a recent transformers (`tokenizer.save_pretrained`) to get tokenizer.json.",
        )
    tok_json = json.loads(tok_path.read_text(encoding="utf-8"))
    cfg_path = folder / "tokenizer_config.json"
    tok_config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    model = tok_json["model"]
    if model.get("type") != "BPE" or (model.get("byte_fallback") and not is_spm_bpe(tok_json)):
        raise UnsupportedModelError(
            f"tokenizer model type {model.get('type')} (byte_fallback={model.get('byte_fallback')}) is not supported; "
            "edgebridge converts byte-level BPE and SentencePiece BPE tokenizers (Gemma's, and Llama's legacy form).",
            hint="Pass an existing GGUF of this model with --llm-gguf.",
        )
    return tok_json, tok_config


def _token_table(tok_json: dict[str, Any], vocab_size: int,
                 spm: bool = False) -> tuple[list[str], list[int], dict[str, int]]:
    """(token text per id, token type per id, special token text -> id) over the model's ``vocab_size`` rows."""
    id_to_token: dict[int, str] = {i: t for t, i in tok_json["model"]["vocab"].items()}
    types: dict[int, int] = {i: NORMAL for i in id_to_token}
    special_ids: dict[str, int] = {}
    for added in tok_json.get("added_tokens", []):
        id_to_token[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
        special_ids[added["content"]] = added["id"]
    if spm:
        unk = tok_json["model"].get("unk_token")
        for i, t in id_to_token.items():
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
            elif t == unk:
                types[i] = UNKNOWN
    if max(id_to_token) >= vocab_size:
        raise UnsupportedModelError(
            f"the tokenizer has token id {max(id_to_token)} but the model's vocab_size is {vocab_size}."
        )
    tokens, token_types = [], []
    for i in range(vocab_size):
        if i in id_to_token:
            tokens.append(id_to_token[i])
            token_types.append(int(types[i]))
        else:  # rows the model has but the tokenizer never emits (vocab padded to a multiple)
            tokens.append(f"[PAD{i}]")
            token_types.append(int(UNUSED))
    return tokens, token_types, special_ids
