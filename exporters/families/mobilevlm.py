"""MobileVLM: CLIP tower, LDP / LDPv2 (depthwise-conv / pooling downsample projector), llama text.

Survey group: converter. transformers has no MobileVLM, so the reference is the project's own
module written from the papers (``edgebridge.exporters.reference.mobilevlm``); the exported graph is
its ``get_image_features``, and the LDPv2 pooling is a fixed-size average pool (static sizes).
Each ``<image>`` in the prompt becomes the image's (G / 2)^2 embeddings in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._audio import AudioProcessor
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    load_float32,
    seeded_normal,
)
from edgebridge.exporters.image_spec import image_spec

PLACEHOLDER = "<image>"


class MobileVLMImageGraph(torch.nn.Module):
    """``pixel_values [B, C, H, W] -> [B, (G / 2)^2, D]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.projector = model.mm_projector  # named, so profiles can split the bridge's time

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        return self.projector(hidden[self.model.config.mm_vision_select_layer][:, 1:])


class ImageTextProcessor(AudioProcessor):
    """An image processor + tokenizer pair (MobileVLM ships no processor class)."""

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        super().__init__(None, tokenizer, PLACEHOLDER)
        self.image_processor = image_processor
        self.image_token = PLACEHOLDER


@register_family
class MobileVLMFamily(HFFamily):
    name = "mobilevlm"
    model_types = ("mobilevlm",)
    bridge_type = "LDP (depthwise conv / pooling downsample)"
    survey_group = "converter"
    description = "CLIP ViT + Lightweight Downsample Projector v1/v2 (MobileVLM), project reference module"
    text_prefix = "language_model.model."
    lm_head = "language_model.lm_head.weight"
    processor_template = False
    delegates_generate = True

    def load(self, folder: Path) -> Loaded:
        from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

        from edgebridge.exporters.reference.mobilevlm import MobileVLMForCausalLM

        model = load_float32(MobileVLMForCausalLM, folder)
        processor = ImageTextProcessor(CLIPImageProcessor.from_pretrained(folder, local_files_only=True),
                                       PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True))
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor)

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        size = loaded.config.vision_config.image_size

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": seeded_normal((batch, 3, size, size), seed)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.get_image_features(inputs["pixel_values"])

        return [EncoderExport(
            component="vision_encoder",
            modality="image",
            module=MobileVLMImageGraph(model).eval(),
            input_names=["pixel_values"],
            output_name="image_embeds",
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=image_spec(loaded.processor.image_processor),
            placeholder=PLACEHOLDER,
            tokens_per_item=loaded.config.image_tokens,
            bridge={**self.bridge_info(), "projector": loaded.config.mm_projector_type,
                    "pool_size": loaded.config.ldp_pool_size},
            description=f"CLIP vision tower + {loaded.config.mm_projector_type.upper()} projector",
            bridge_scopes=("projector",),
        )]

    def placeholder_token(self, loaded: Loaded) -> str:
        return PLACEHOLDER

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        images = media.get("image") or []
        text = prompt.replace(PLACEHOLDER, PLACEHOLDER * loaded.config.image_tokens)
        out = dict(loaded.processor.tokenizer(text, return_tensors="pt"))
        if images:
            out["pixel_values"] = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return out
