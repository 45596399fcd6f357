"""Voxtral: a Whisper encoder, frames stacked by 4, a two-layer MLP adapter, a llama-family LLM.

Survey group: converter (frame-stacking adapter). A clip is padded to whole 30 s windows and cut
into window-sized chunks (``VoxtralProcessor``: ``pad_to_multiple_of=480000``, no truncation); each
chunk runs through the encoder on its own (no mask) and gives 1500 / 4 = 375 embeddings, all of
which go into the prompt at the clip's ``[AUDIO]`` placeholder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgebridge.exporters.audio_spec import audio_spec
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._audio import AudioFamily, AudioProcessor
from edgebridge.exporters.families.base import EncoderExport, Loaded


class VoxtralGraph(torch.nn.Module):
    """``input_features [C, M, T] -> [C, T / 2 / stack, D]`` for C window-sized chunks."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.audio_tower = model.audio_tower
        self.projector = model.multi_modal_projector
        self.stacked_width = model.config.audio_config.intermediate_size

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = self.audio_tower(input_features).last_hidden_state
        stacked = hidden.reshape(hidden.shape[0], -1, self.stacked_width)
        return self.projector(stacked)


@register_family
class VoxtralFamily(AudioFamily):
    name = "voxtral"
    model_types = ("voxtral",)
    bridge_type = "frame-stacking MLP"
    survey_group = "converter"
    description = "Whisper encoder + 4-frame stacking + 2-layer MLP adapter (Voxtral)"
    model_class = "VoxtralForConditionalGeneration"
    placeholder = "[AUDIO]"

    def load_processor(self, folder: Path) -> Any:
        from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        fe = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
        return AudioProcessor(fe, tokenizer, tokenizer.convert_ids_to_tokens(self._audio_id(folder)))

    @staticmethod
    def _audio_id(folder: Path) -> int:
        from edgebridge.exporters.families.base import read_config

        return int(read_config(folder)["audio_token_id"])

    def _per_chunk(self, loaded: Loaded) -> int:
        cfg = loaded.config.audio_config
        positions = loaded.processor.feature_extractor.nb_max_frames // 2
        return positions // (cfg.intermediate_size // cfg.hidden_size)

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        fe = loaded.processor.feature_extractor
        per_chunk = self._per_chunk(loaded)

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            return {"input_features": self.seeded_features(batch, seed, fe.feature_size, fe.nb_max_frames)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            feats = inputs["input_features"]
            return model.get_audio_features(feats).reshape(feats.shape[0], per_chunk, -1)

        rule = {"kind": "per-chunk", "per_chunk": per_chunk, "formula": f"ceil(seconds / {fe.chunk_length}) * {per_chunk}"}
        return [EncoderExport(
            component="audio_encoder",
            modality="audio",
            module=VoxtralGraph(model).eval(),
            input_names=["input_features"],
            output_name="audio_embeds",
            dynamic_axes={"input_features": {0: "batch"}, "audio_embeds": {0: "batch"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=audio_spec(fe, padding="multiple", embeddings_per_clip=rule, attention_mask_input=None),
            placeholder=loaded.processor.audio_token,
            tokens_per_item=per_chunk,
            bridge=self.bridge_info(),
            description="Whisper-style audio encoder + frame stacking + MLP adapter",
            bridge_scopes=("projector",),
        )]

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        """``VoxtralProcessor``'s inputs: chunked features, ``[AUDIO]`` repeated per embedding."""
        proc = loaded.processor
        fe = proc.feature_extractor
        feats, counts = [], []
        for wave in self.waveforms(loaded, media.get("audio") or []):
            x = fe(wave, sampling_rate=fe.sampling_rate, padding=True, truncation=False,
                   pad_to_multiple_of=fe.n_samples, return_tensors="pt")["input_features"]
            chunks = x.reshape(fe.feature_size, -1, fe.nb_max_frames).transpose(0, 1)
            feats.append(chunks)
            counts.append(chunks.shape[0] * self._per_chunk(loaded))
        parts = prompt.split(proc.audio_token)
        if len(parts) - 1 != len(counts):
            raise ValueError(f"{len(parts) - 1} placeholders for {len(counts)} clips")
        text = parts[0] + "".join(proc.audio_token * n + rest for n, rest in zip(counts, parts[1:]))
        out = dict(proc.tokenizer(text, return_tensors="pt"))
        if feats:
            out["input_features"] = torch.cat(feats)
        return out
