"""Qwen2-Audio: a Whisper encoder with a key-padding mask, average pooling, a linear projector.

Survey group: converter. One clip is padded (or truncated, as the processor does) to one 30 s
window; the feature attention mask marks its real frames. Inside the graph the mask becomes the
encoder's additive key mask exactly as ``Qwen2AudioForConditionalGeneration.forward`` builds it
(a wrong mask is a known cause of runaway repetition). A clip of F real frames gives
``((F - 1) // 2 + 1 - 2) // 2 + 1`` embeddings; the graph returns all 750 rows and the runtime
keeps those.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.audio_spec import audio_spec
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._audio import AudioFamily
from edgebridge.exporters.families.base import EncoderExport, Loaded

RULE = {"kind": "conv-pool", "formula": "((frames - 1) // 2 + 1 - 2) // 2 + 1"}


def embeddings_for(frames: torch.Tensor) -> torch.Tensor:
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


class Qwen2AudioGraph(torch.nn.Module):
    """``input_features [B, M, T], feature_attention_mask [B, T] -> audio embeddings [B, T // 4, D]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.audio_tower = model.audio_tower
        self.projector = model.multi_modal_projector

    def forward(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor) -> torch.Tensor:
        conv_lengths = (feature_attention_mask.sum(-1) - 1) // 2 + 1
        positions = input_features.shape[-1] // 2
        padded = torch.arange(positions, device=input_features.device)[None, :] >= conv_lengths[:, None]
        mask = torch.zeros(padded.shape[0], 1, positions, positions, dtype=input_features.dtype)
        mask = mask.masked_fill(padded[:, None, None, :], float("-inf"))
        hidden = self.audio_tower(input_features, attention_mask=mask).last_hidden_state
        return self.projector(hidden)


@register_family
class Qwen2AudioFamily(AudioFamily):
    name = "qwen2-audio"
    model_types = ("qwen2_audio",)
    bridge_type = "avgpool + linear"
    survey_group = "converter"
    description = "Whisper encoder (masked) + average pooling + linear projector (Qwen2-Audio)"
    model_class = "Qwen2AudioForConditionalGeneration"
    placeholder = "<|AUDIO|>"

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        fe = loaded.processor.feature_extractor
        frames = int(fe.nb_max_frames)
        audio_id = loaded.config.audio_token_index

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(seed + 99)
            lengths = torch.randint(100, frames + 1, (batch,), generator=gen)
            lengths[0] = frames  # one full window in every batch
            mask = (torch.arange(frames)[None, :] < lengths[:, None]).long()
            return {"input_features": self.seeded_features(batch, seed, fe.feature_size, frames),
                    "feature_attention_mask": mask}

        def valid_lengths(inputs: dict[str, torch.Tensor]) -> list[int]:
            return embeddings_for(inputs["feature_attention_mask"].sum(-1)).tolist()

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            """The embeddings HF's forward puts at the audio positions (captured at the LLM's input)."""
            lengths = valid_lengths(inputs)
            ids = torch.full((1, sum(lengths)), audio_id, dtype=torch.long)
            seen: dict[str, Any] = {}
            hook = model.language_model.register_forward_pre_hook(
                lambda _m, _a, kwargs: seen.update(kwargs), with_kwargs=True)
            try:
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **inputs)
            finally:
                hook.remove()
            flat = seen["inputs_embeds"][0]
            out = torch.zeros(len(lengths), frames // 4, flat.shape[-1])
            start = 0
            for i, n in enumerate(lengths):
                out[i, :n] = flat[start:start + n]
                start += n
            return out

        return [EncoderExport(
            component="audio_encoder",
            modality="audio",
            module=Qwen2AudioGraph(model).eval(),
            input_names=["input_features", "feature_attention_mask"],
            output_name="audio_embeds",
            dynamic_axes={"input_features": {0: "batch"}, "feature_attention_mask": {0: "batch"},
                          "audio_embeds": {0: "batch"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=audio_spec(fe, padding="max_length", embeddings_per_clip=RULE,
                                     attention_mask_input="feature_attention_mask"),
            placeholder=loaded.processor.audio_token,
            tokens_per_item=frames // 4,
            bridge=self.bridge_info(),
            layout={"kind": "repeat", "wrap_if_missing": {"before": loaded.processor.audio_bos_token,
                                                          "after": loaded.processor.audio_eos_token}},
            description="Whisper-style audio encoder + average pooling + linear projector",
            bridge_scopes=("projector",),
            valid_lengths=valid_lengths,
        )]

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        audio = self.waveforms(loaded, media.get("audio") or [])
        rate = loaded.processor.feature_extractor.sampling_rate
        return dict(loaded.processor(text=prompt, audio=audio or None, sampling_rate=rate, return_tensors="pt"))
