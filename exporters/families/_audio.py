"""What the audio-LLM families share: a Whisper-style encoder, a text LLM, a Whisper front end.

Subclasses give the model class, the graph (features -> LLM-width embeddings), the reference, the
padding rule and the prompt placeholder.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
)
from edgebridge.preprocess.audio import load_audio

N_MELS_DEFAULT = 128


class AudioProcessor:
    """A feature extractor + tokenizer pair with the processor methods the exporter uses.

    For families whose HF processor needs a tokenizer edgebridge does not use (Voxtral's
    mistral-common), this builds the same inputs from the parts.
    """

    def __init__(self, feature_extractor: Any, tokenizer: Any, placeholder: str) -> None:
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_token = placeholder
        self.chat_template = tokenizer.chat_template

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)


class AudioFamily(HFFamily):
    """Base of Qwen2-Audio / Voxtral-style families."""

    model_class: str = ""
    text_types = ("llama", "qwen2", "mistral")
    placeholder = ""
    text_prefix = "language_model.model."
    lm_head = "language_model.lm_head.weight"
    modality = "audio"

    def placeholder_token(self, loaded: Loaded) -> str:
        return self.placeholder

    @staticmethod
    def waveforms(loaded: Loaded, items: list[Any]) -> list[Any]:
        rate = loaded.processor.feature_extractor.sampling_rate
        return [load_audio(item, rate).samples for item in items]

    @staticmethod
    def seeded_features(batch: int, seed: int, n_mels: int, frames: int) -> torch.Tensor:
        """Log-mel-like values: Whisper features live in about [-1, 1.5]."""
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((batch, n_mels, frames), generator=gen) * 2.5 - 1.0

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:  # pragma: no cover - abstract in practice
        raise NotImplementedError
