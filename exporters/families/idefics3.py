"""Idefics3 / SmolVLM: SigLIP-style tower, pixel shuffle + linear connector, llama text, image tiling.

Survey group: converter (pixel shuffle folds 2 x 2 patches into one token, a linear layer maps it
to the LLM width). The image is tiled on the host (``idefics3-tiles``, numpy, matching
``Idefics3ImageProcessor``); every tile, and the global image, runs through the graph as one batch
row, and the prompt wraps each tile in ``<fake_token_around_image><row_r_col_c>`` as the processor
does (``idefics3-grid`` layout). Tiles are always full (the processor's pixel mask is all ones for
them), so the graph needs no mask and the patch position ids are the plain 0..N-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    load_float32,
    read_config,
    seeded_normal,
)
from edgebridge.exporters.image_spec import pixel_steps


def full_tile_position_ids(vision: torch.nn.Module, tile: int) -> torch.Tensor:
    """The position ids HF's vision embeddings give a full tile, captured from HF's own code.

    They are not simply 0..N-1 (the bucketised fractional coordinates shift some buckets), and HF
    computes them in a Python loop over the batch, which an exported graph cannot keep; for full
    tiles they are the same for every tile, so the graph holds them as a constant.
    """
    seen: list[torch.Tensor] = []
    hook = vision.embeddings.position_embedding.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            vision(pixel_values=torch.zeros(1, 3, tile, tile))
    finally:
        hook.remove()
    return seen[0][0].clone()


class Idefics3TileGraph(torch.nn.Module):
    """``pixel_values [T, C, S, S]`` (full tiles) -> ``[T, (S / P)^2 / scale^2, D]``."""

    def __init__(self, model: torch.nn.Module, tile: int) -> None:
        super().__init__()
        vision = model.model.vision_model
        self.patch_embedding = vision.embeddings.patch_embedding
        self.position_embedding = vision.embeddings.position_embedding
        self.encoder = vision.encoder
        self.post_layernorm = vision.post_layernorm
        self.connector = model.model.connector
        self.register_buffer("position_ids", full_tile_position_ids(vision, tile), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        hidden = patches + self.position_embedding(self.position_ids)[None]
        hidden = self.encoder(inputs_embeds=hidden).last_hidden_state
        return self.connector(self.post_layernorm(hidden))


@register_family
class Idefics3Family(HFFamily):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    bridge_type = "pixel-shuffle + linear"
    survey_group = "converter"
    description = "SigLIP ViT on image tiles + pixel shuffle + linear connector (Idefics3 / SmolVLM)"
    text_prefix = "model.text_model."

    def load(self, folder: Path) -> Loaded:
        import json

        import transformers
        from transformers import AutoTokenizer, Idefics3ImageProcessor, Idefics3Processor

        model_type = read_config(folder)["model_type"]
        cls = transformers.SmolVLMForConditionalGeneration if model_type == "smolvlm" else \
            transformers.Idefics3ForConditionalGeneration
        model = load_float32(cls, folder)
        if model.config.text_config.model_type not in ("llama", "mistral", "qwen2"):
            raise UnsupportedModelError(f"{model_type} with a '{model.config.text_config.model_type}' LLM is not supported.")
        # SmolVLM's processor wants a torchvision video processor; Idefics3's image path is the same
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = Idefics3ImageProcessor.from_pretrained(folder, local_files_only=True)
        cfg = json.loads((Path(folder) / "processor_config.json").read_text()) \
            if (Path(folder) / "processor_config.json").is_file() else {}
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                      image_seq_len=cfg.get("image_seq_len", 169), chat_template=tok.chat_template)
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor)

    def _preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        ip = loaded.processor.image_processor
        return {
            "kind": "idefics3-tiles",
            "processor": type(ip).__name__,
            "tile_size": int(ip.max_image_size["longest_edge"]),
            "resize_longest_edge": int(ip.size["longest_edge"]) if ip.do_resize else None,
            "do_image_splitting": bool(ip.do_image_splitting),
            **pixel_steps(ip),
        }

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        tile = loaded.processor.image_processor.max_image_size["longest_edge"]

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": seeded_normal((batch, 3, tile, tile), seed)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.model.get_image_features(pixel_values=inputs["pixel_values"][None])

        proc = loaded.processor
        return [EncoderExport(
            component="vision_encoder",
            modality="image",
            module=Idefics3TileGraph(model, tile).eval(),
            input_names=["pixel_values"],
            output_name="image_embeds",
            dynamic_axes={"pixel_values": {0: "tiles"}, "image_embeds": {0: "tiles"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=self._preprocessing(loaded),
            placeholder=proc.image_token,
            tokens_per_item=int(proc.image_seq_len),
            bridge={**self.bridge_info(), "scale_factor": model.config.scale_factor},
            layout={"kind": "idefics3-grid", "fake_token": proc.fake_image_token, "global_token": proc.global_image_tag,
                    "row_col_token": "<row_{row}_col_{col}>"},
            description="SigLIP-style vision tower on tiles + pixel shuffle + linear connector",
            bridge_scopes=("connector",),
        )]

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        images = media.get("image") or None
        return dict(loaded.processor(images=[images] if images else None, text=[prompt], return_tensors="pt"))
