"""InternVL: InternViT-style tower (CLS dropped), pixel shuffle + LayerNorm/MLP projector, qwen2 text.

Survey group: converter. The image is tiled on the host (``gotocr2-tiles``, numpy, matching
``GotOcr2ImageProcessor``: the grid with the closest aspect ratio, plus a thumbnail); all tiles of
an image form one run of embeddings between ``<img>`` and ``</img>``, as ``InternVLProcessor`` writes
it. The graph is ``get_image_features`` itself (no data-dependent control flow).
"""

from __future__ import annotations

import json
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
    seeded_normal,
)
from edgebridge.exporters.image_spec import pixel_steps


class InternVLImageGraph(torch.nn.Module):
    """``pixel_values [T, C, S, S] -> [T, image_seq_length, D]``: HF's ``get_image_features``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values)


@register_family
class InternVLFamily(HFFamily):
    name = "internvl"
    model_types = ("internvl",)
    bridge_type = "pixel-shuffle + MLP"
    survey_group = "converter"
    description = "InternViT on image tiles + pixel shuffle + LayerNorm/MLP projector (InternVL)"

    def load(self, folder: Path) -> Loaded:
        from transformers import AutoTokenizer, GotOcr2ImageProcessor, InternVLForConditionalGeneration

        from edgebridge.testing.tiled import internvl_processor

        model = load_float32(InternVLForConditionalGeneration, folder)
        if model.config.vision_feature_layer != -1:
            raise UnsupportedModelError("InternVL with vision_feature_layer != -1 is not supported (transformers 4.57 "
                                        "itself fails on that path).")
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = GotOcr2ImageProcessor.from_pretrained(folder, local_files_only=True)
        cfg_path = Path(folder) / "processor_config.json"
        seq = json.loads(cfg_path.read_text()).get("image_seq_length") if cfg_path.is_file() else None
        processor = internvl_processor(image_processor, tok, seq or model.config.image_seq_length, tok.chat_template)
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor)

    def _preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        ip = loaded.processor.image_processor
        return {
            "kind": "gotocr2-tiles",
            "processor": type(ip).__name__,
            "tile": {"height": int(ip.size["height"]), "width": int(ip.size["width"])},
            "crop_to_patches": bool(ip.crop_to_patches),
            "min_patches": int(ip.min_patches),
            "max_patches": int(ip.max_patches),
            "use_thumbnail": True,
            **pixel_steps(ip),
            "tokens_per_tile": int(loaded.processor.image_seq_length),
        }

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        size = loaded.processor.image_processor.size

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": seeded_normal((batch, 3, size["height"], size["width"]), seed)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.model.get_image_features(pixel_values=inputs["pixel_values"])

        proc = loaded.processor
        return [EncoderExport(
            component="vision_encoder",
            modality="image",
            module=InternVLImageGraph(model).eval(),
            input_names=["pixel_values"],
            output_name="image_embeds",
            dynamic_axes={"pixel_values": {0: "tiles"}, "image_embeds": {0: "tiles"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=self._preprocessing(loaded),
            placeholder=proc.image_token,
            tokens_per_item=int(proc.image_seq_length),
            bridge={**self.bridge_info(), "downsample_ratio": model.config.downsample_ratio},
            layout={"kind": "repeat", "wrap": {"before": proc.start_image_token, "after": proc.end_image_token}},
            description="InternViT-style vision tower on tiles + pixel shuffle + MLP projector",
            bridge_scopes=("model.multi_modal_projector",),
        )]

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        out = super().reference_inputs(loaded, prompt, media)
        out.pop("num_patches", None)
        return out
