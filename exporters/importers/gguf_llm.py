"""A GGUF LLM users already have, as a transformers model for reference runs.

The GGUF is validated in Python first (``read_gguf_info``: magic, architecture, tensors, widths).
transformers then dequantizes it (``from_pretrained(..., gguf_file=...)``, its own GGUF reader),
and the result is rebuilt as a plain ``*ForCausalLM`` without the quantization config and saved
with its tokenizer (converted from the GGUF's) as safetensors: a folder any HF code loads. The
dequantized weights are exactly the GGUF's values, so this model is the PyTorch reference for the
GGUF's drift (what remains is llama.cpp's arithmetic on quantized blocks).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.runtimes.llamacpp.gguf_check import read_gguf_info

SUPPORTED = ("llama", "qwen2", "mistral")


def _special_tokens_from_gguf(tokenizer, model, gguf_path: Path) -> None:
    """The GGUF's own BOS/EOS/PAD ids and add-BOS flag (transformers' conversion may guess them wrong:
    SmolLM2 comes out adding a BOS and ending at BOS)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path), "r")

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    tokens = field("tokenizer.ggml.tokens")
    for role in ("bos", "eos", "pad"):
        key = "padding" if role == "pad" else role
        token_id = field(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and tokens is not None:
            setattr(tokenizer, f"{role}_token", tokens[int(token_id)])
            setattr(model.generation_config, f"{role}_token_id", int(token_id))
    add_bos = field("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    if hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write ``out_dir`` = the GGUF's model and tokenizer as a plain float32 HF folder."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    info = read_gguf_info(gguf_path)
    if info.architecture not in SUPPORTED:
        raise UnsupportedModelError(f"dequantizing a '{info.architecture}' GGUF is not supported.",
                                    hint=f"Supported: {', '.join(SUPPORTED)}.")
    with tempfile.TemporaryDirectory(prefix="edgebridge-gguf-") as tmp:
        link = Path(tmp) / gguf_path.name
        link.symlink_to(gguf_path.resolve())
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
        config = AutoConfig.from_pretrained(tmp, gguf_file=gguf_path.name)
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    plain_config = type(config).from_dict(config_dict)
    cls = getattr(transformers, type(loaded).__name__)
    model = cls(plain_config).eval()
    model.load_state_dict(loaded.state_dict())
    if getattr(plain_config, "tie_word_embeddings", False):
        model.tie_weights()
    _special_tokens_from_gguf(tokenizer, model, gguf_path)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
