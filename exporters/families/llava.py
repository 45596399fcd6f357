"""LLaVA: a CLIP/SigLIP tower, feature-layer selection, an MLP projector, a llama/qwen2 LLM.

Survey group: converter (a two-layer MLP maps each patch feature to one LLM embedding).
Prompt: every ``<image>`` in the prompt becomes the image's N embeddings, in place.
"""

from __future__ import annotations


import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    seeded_normal,
)
from edgebridge.exporters.image_spec import image_spec


class LlavaImageGraph(torch.nn.Module):
    """``pixel_values [B, C, H, W] -> image embeddings [B, N, D]``: tower, layer pick, projector."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        cfg = model.config
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layers = cfg.vision_feature_layer
        self.drop_cls = cfg.vision_feature_select_strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        picks = [self.layers] if isinstance(self.layers, int) else list(self.layers)
        feats = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in picks]
        return self.projector(torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0])


TEXT_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")


@register_family
class LlavaFamily(HFFamily):
    name = "llava"
    model_types = ("llava",)
    bridge_type = "mlp"
    survey_group = "converter"
    description = "CLIP/SigLIP ViT + 2-layer MLP projector (LLaVA-1.5 style)"
    model_class = "LlavaForConditionalGeneration"
    text_types = TEXT_TYPES
    processor_use_fast = False


    def _image_tokens(self, loaded: Loaded, height: int, width: int) -> int:
        proc = loaded.processor
        n = (height // proc.patch_size) * (width // proc.patch_size) + proc.num_additional_image_tokens
        return n - 1 if loaded.config.vision_feature_select_strategy == "default" else n

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        cfg = loaded.config
        model = loaded.model
        spec = image_spec(loaded.processor.image_processor)
        size = cfg.vision_config.image_size
        graph = LlavaImageGraph(model).eval()

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": seeded_normal((batch, 3, size, size), seed)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            feats = model.get_image_features(pixel_values=inputs["pixel_values"])
            return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

        return [
            EncoderExport(
                component="vision_encoder",
                modality="image",
                module=graph,
                input_names=["pixel_values"],
                output_name="image_embeds",
                dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                make_inputs=make_inputs,
                reference=reference,
                preprocessing=spec,
                placeholder=loaded.processor.image_token,
                tokens_per_item=self._image_tokens(loaded, size, size),
                bridge={**self.bridge_info(), "feature_layer": cfg.vision_feature_layer,
                        "select_strategy": cfg.vision_feature_select_strategy},
                description=f"{cfg.vision_config.model_type} vision tower + MLP projector",
                bridge_scopes=("projector",),
            )
        ]
