"""Gemma 3: SigLIP tower, average pooling to a fixed token count, RMS-normed soft embeddings, one linear
projection (``Gemma3MultiModalProjector``), a gemma3 text model.

Survey group: converter. What differs from LLaVA, all read from transformers 4.57:
- the prompt names an image with ``<start_of_image>``, a real token the model reads; the processor
  writes ``\\n\\n<start_of_image>`` + the image's soft tokens + ``<end_of_image>\\n\\n`` in its place
  (layout ``pan-and-scan`` with that ``wrap``); asked for pan-and-scan (a per-call option, off by default
  as in the processor), an elongated image also gives crops, each its own run, in the processor's
  sentence ("Here is the original image ... and here are some crops ...");
- during prefill an image's rows attend to each other both ways (``token_type_ids`` -> an ``or`` mask
  per image); llama.cpp does it by switching causal attention off for the image's batch, as its mtmd
  tool does (layout ``bidirectional``; the runtime then decodes the whole image in one batch);
- the text model scales token embeddings by sqrt(hidden) but not injected ones (llama.cpp's gemma3
  graph scales token batches only).
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import EncoderExport, HFFamily, Loaded, image_features_export
from edgebridge.exporters.image_spec import pixel_steps


class Gemma3ImageGraph(torch.nn.Module):
    """``pixel_values [B, C, S, S] -> [B, mm_tokens_per_image, D]``: HF's ``get_image_features``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values=pixel_values).last_hidden_state)


@register_family
class Gemma3Family(HFFamily):
    name = "gemma3"
    model_types = ("gemma3",)
    bridge_type = "avg-pool + RMSNorm + linear"
    survey_group = "converter"
    description = "SigLIP + average pooling to a fixed token count + RMS-normed linear projection, gemma3 LLM with " \
                  "bidirectional attention inside each image (Gemma 3)"
    model_class = "Gemma3ForConditionalGeneration"
    processor_use_fast = False

    def placeholder_token(self, loaded: Loaded) -> str:
        return loaded.processor.boi_token

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        cfg, proc = loaded.config, loaded.processor
        return [image_features_export(
            loaded.model, Gemma3ImageGraph(loaded.model),
            preprocessing=self._preprocessing(proc.image_processor),
            placeholder=proc.boi_token,
            tokens_per_item=int(cfg.mm_tokens_per_image),
            bridge={**self.bridge_info(), "tokens_per_image": int(cfg.mm_tokens_per_image)},
            layout=self._layout(proc.full_image_sequence, proc.boi_token, proc.tokenizer.image_token),
            description=f"{cfg.vision_config.model_type} vision tower + pooled RMSNorm/linear projection",
        )]

    @staticmethod
    def _layout(full_sequence: str, boi: str, image_token: str) -> dict[str, Any]:
        """The processor's own replacement text, split around the soft tokens it repeats."""
        before, _, rest = full_sequence.partition(boi)
        after = rest.replace(image_token, "")
        return {"kind": "pan-and-scan", "bidirectional": True, "wrap": {"before": before, "after": after}}

    @staticmethod
    def _preprocessing(ip: Any) -> dict[str, Any]:
        """The image steps, and the pan-and-scan settings a ``Gemma3Processor`` call uses: its own call
        defaults (``Gemma3ProcessorKwargs``), which win over the image processor's config."""
        from transformers.models.gemma3.processing_gemma3 import Gemma3ProcessorKwargs

        if not getattr(ip, "do_resize", True) or set(ip.size) != {"height", "width"}:
            raise UnsupportedModelError(f"Gemma 3 image processor size {ip.size} is not supported (height/width is).")
        call = {k: v for k, v in Gemma3ProcessorKwargs._defaults["images_kwargs"].items() if k.startswith("pan_")}
        pas = {key: call.get(f"pan_and_scan_{key}", getattr(ip, f"pan_and_scan_{key}"))
               for key in ("min_crop_size", "max_num_crops", "min_ratio_to_activate")}
        return {"kind": "gemma3-images", "processor": type(ip).__name__,
                "resize": {"height": int(ip.size["height"]), "width": int(ip.size["width"])}, **pixel_steps(ip),
                "pan_and_scan": {"min_crop_size": int(pas["min_crop_size"]), "max_num_crops": int(pas["max_num_crops"]),
                                 "min_ratio_to_activate": float(pas["min_ratio_to_activate"])}}
