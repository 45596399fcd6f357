"""PyTorch reference runs (transformers) for end-to-end parity tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Reference:
    token_ids: list[int]
    first_logits: np.ndarray
    prompt_ids: list[int]
    text: str = ""  # the answer as the HF tokenizer decodes it (special tokens skipped)


@lru_cache(maxsize=8)
def _loaded(model_dir: str):
    from edgebridge.exporters.families import family_for

    family = family_for(Path(model_dir))
    return family, family.load(Path(model_dir))


def hf_reference(model_dir: Path, prompt: str, media: dict[str, list[Any]], max_new_tokens: int = 16,
                 chat_parts: list[dict[str, Any]] | None = None, **processor_options: Any) -> Reference:
    """Greedy ``generate`` and first-step logits of the HF model on the processor's inputs.

    With ``chat_parts`` the prompt is the processor's chat template applied to one user turn
    holding those parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``). ``processor_options``
    go to the processor call (Gemma 3's ``do_pan_and_scan=True``).
    """
    family, loaded = _loaded(str(model_dir))
    if chat_parts is not None:
        prompt = loaded.processor.apply_chat_template([{"role": "user", "content": chat_parts}],
                                                      add_generation_prompt=True, tokenize=False)
    inputs = family.reference_inputs(loaded, prompt, media, **processor_options)
    model = loaded.model
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float().numpy()
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    n = inputs["input_ids"].shape[1]
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    return Reference(token_ids=out[0, n:].tolist(), first_logits=logits, prompt_ids=inputs["input_ids"][0].tolist(),
                     text=tokenizer.decode(out[0, n:], skip_special_tokens=True))


def strict_run(bundle: Path, prompt: str, images: list[Any], backend: str = "onnxruntime",
               max_new_tokens: int = 16, **options: Any) -> tuple[Any, np.ndarray]:
    """The bundle's greedy answer and first-step logits under strict llama.cpp settings (f32-exact), through
    ``backend``; ``options`` go to both calls (``pan_and_scan=True``)."""
    from edgebridge import Pipeline
    from edgebridge.runtimes.llamacpp import LlamaSettings

    with Pipeline.from_bundle(bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, images=images, max_new_tokens=max_new_tokens, **options)
        logits = pipe.prefill_logits(prompt, images=images, **options)
    return result, logits
