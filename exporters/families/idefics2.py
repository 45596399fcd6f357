"""Idefics2: SigLIP-style tower at native aspect ratio, MLP + perceiver resampler, mistral/llama text.

Survey group: perceiver (learned latents cross-attend to the patch features). Images keep their
aspect ratio, so the graph takes any height and width (dynamic axes). HF computes the patch
position ids in a Python loop over the batch from the pixel mask; the exported graph computes the
same ids from the image's own shape with tensor operations (``bucketize`` written as a count of
boundaries), which is exact for unpadded images. Every image (or crop) therefore runs on its own,
unpadded, which gives HF's padded-batch result for its real patches.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    seeded_normal,
)
from edgebridge.exporters.image_spec import pixel_steps


class Idefics2ImageGraph(torch.nn.Module):
    """``pixel_values [B, C, H, W]`` (same size, unpadded) -> ``[B, latents, D]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        vision = model.model.vision_model
        self.patch_size = vision.embeddings.patch_size
        self.n_side = vision.embeddings.num_patches_per_side
        self.patch_embedding = vision.embeddings.patch_embedding
        self.position_embedding = vision.embeddings.position_embedding
        self.encoder = vision.encoder
        self.post_layernorm = vision.post_layernorm
        self.connector = model.model.connector
        # HF's ``* (1 - 1e-6)`` as a 1-element tensor: onnxscript's optimizer rewrites a multiplication by
        # a scalar within 1e-5 of one (its ``mul_by_1`` rule) into nothing, which moves patches that sit
        # exactly on a bucket boundary; its matcher leaves 1-D constants alone
        self.register_buffer("shrink", torch.tensor([1 - 1e-6]), persistent=False)

    def _buckets(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """HF: ``bucketize(arange(n) / n * (1 - 1e-6), arange(1/S, 1, 1/S), right=True)``."""
        boundaries = torch.arange(1 / self.n_side, 1.0, 1 / self.n_side)
        coords = torch.arange(n, dtype=dtype) / n * self.shrink
        return (boundaries[None, :] <= coords[:, None]).sum(-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embedding(pixel_values)
        h, w = grid.shape[2], grid.shape[3]
        patches = grid.flatten(2).transpose(1, 2)
        ids = (self._buckets(h, pixel_values.dtype)[:, None] * self.n_side
               + self._buckets(w, pixel_values.dtype)[None, :]).flatten()
        hidden = patches + self.position_embedding(ids)[None]
        hidden = self.post_layernorm(self.encoder(inputs_embeds=hidden).last_hidden_state)
        mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        return self.connector(hidden, attention_mask=mask)


@register_family
class Idefics2Family(HFFamily):
    name = "idefics2"
    model_types = ("idefics2",)
    bridge_type = "MLP + perceiver resampler"
    survey_group = "perceiver"
    description = "SigLIP ViT at native aspect ratio + perceiver resampler with learned latents (Idefics2)"
    model_class = "Idefics2ForConditionalGeneration"
    text_prefix = "model.text_model."


    def _preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        ip = loaded.processor.image_processor
        return {
            "kind": "idefics2-resize",
            "processor": type(ip).__name__,
            "shortest_edge": int(ip.size["shortest_edge"]),
            "longest_edge": int(ip.size["longest_edge"]),
            "do_image_splitting": bool(ip.do_image_splitting),
            **pixel_steps(ip),
        }

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        ip = loaded.processor.image_processor

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            sizes = [(ip.size["shortest_edge"] + 8 * 3, ip.size["longest_edge"] - 5), (ip.size["longest_edge"], 77)]
            h, w = sizes[seed % 2]
            return {"pixel_values": seeded_normal((batch, 3, h, w), seed)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            pixels = inputs["pixel_values"]
            mask = torch.ones(pixels.shape[0], pixels.shape[2], pixels.shape[3], dtype=torch.long)
            feats = model.model.get_image_features(pixel_values=pixels[None], pixel_attention_mask=mask[None])
            return feats.reshape(pixels.shape[0], -1, feats.shape[-1])  # HF returns [B * latents, D]

        proc = loaded.processor
        fake = proc.fake_image_token
        return [EncoderExport(
            component="vision_encoder",
            modality="image",
            module=Idefics2ImageGraph(model).eval(),
            input_names=["pixel_values"],
            output_name="image_embeds",
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "image_embeds": {0: "batch"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=self._preprocessing(loaded),
            placeholder=proc.image_token,
            tokens_per_item=int(proc.image_seq_len),
            bridge={**self.bridge_info(), "latents": int(loaded.config.perceiver_config.resampler_n_latents)},
            layout={"kind": "idefics2-crops", "fake_token": fake, "collapse": [[fake + fake, fake]]},
            description="SigLIP-style vision tower (native aspect ratio) + perceiver resampler",
            bridge_scopes=("connector",),
        )]
