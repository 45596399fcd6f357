"""Seeded re-initialisation for tiny test models.

transformers' default init (std 0.02) makes a tiny model so flat that a missing rotary
permutation or a dropped layer changes logits by less than the parity tolerance. Weights drawn
with std 0.15, norm gains near 1 and non-zero biases make every tensor matter.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reinit_(model: torch.nn.Module, *, std: float = 0.15, seed: int = 0) -> None:
    """Redraw every parameter of ``model`` in place, deterministically for ``seed``.

    Matrices (ndim >= 2): N(0, std). Norm gains: 1 + N(0, 0.1). Other vectors (biases,
    embeddings of one row, learned scalars): N(0, 0.05).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if param.ndim >= 2:
            values = torch.randn(param.shape, generator=gen) * std
        elif name.endswith(".weight") and "norm" in name.lower():
            values = 1.0 + torch.randn(param.shape, generator=gen) * 0.1
        else:
            values = torch.randn(param.shape, generator=gen) * 0.05
        param.copy_(values.to(param.dtype))


def save_seeded(model: torch.nn.Module, processor, tokenizer, out_dir, seed: int, stop_token: str,
                std: float | None = 0.15):
    """Re-initialise ``model`` for ``seed`` (``std`` None: keep transformers' init, as benchmark models do),
    stop generation at EOS and ``stop_token``, save model and processor into ``out_dir`` (a Hugging Face
    folder); returns the folder."""
    from pathlib import Path

    if std is not None:
        reinit_(model, std=std, seed=seed)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(stop_token)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
