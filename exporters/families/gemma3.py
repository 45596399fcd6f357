"""Gemma 3: SigLIP tower, average pooling to a fixed token count, RMS-normed soft embeddings, one linear
projection (``Gemma3MultiModalProjector``), a gemma3 text model.

Survey group: converter. What differs from LLaVA, all read from transformers 4.57:
- the prompt names an image with ``<start_of_image>``, a real token the model reads; the processor
  writes ``\\n\\n<start_of_image>`` + the image's soft tokens + ``<end_of_image>\\n\\n`` in its place
  (layout ``keep_placeholder`` + ``wrap``);
- during prefill an image's rows attend to each other both ways (``token_type_ids`` -> an ``or`` mask
  per image); llama.cpp does it by switching causal attention off for the image's batch, as its mtmd
  tool does (layout ``bidirectional``; the runtime then decodes the whole image in one batch);
- the text model scales token embeddings by sqrt(hidden) but not injected ones (llama.cpp's gemma3
  graph scales token batches only).
Pan-and-scan crops are refused for now (``do_pan_and_scan``): the processor's default is off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import EncoderExport, HFFamily, Loaded, image_features_export, load_float32
from edgebridge.exporters.image_spec import image_spec


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

    def load(self, folder: Path) -> Loaded:
        from transformers import AutoProcessor, Gemma3ForConditionalGeneration

        model = load_float32(Gemma3ForConditionalGeneration, folder)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, use_fast=False)
        if getattr(processor.image_processor, "do_pan_and_scan", False):
            raise UnsupportedModelError(
                "Gemma 3 with do_pan_and_scan=True (extra crops per image) is not supported yet.",
                hint="Set do_pan_and_scan to false in preprocessor_config.json (the processor's default).")
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor)

    def placeholder_token(self, loaded: Loaded) -> str:
        return loaded.processor.boi_token

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        cfg, proc = loaded.config, loaded.processor
        return [image_features_export(
            loaded.model, Gemma3ImageGraph(loaded.model),
            preprocessing=image_spec(proc.image_processor),
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
        return {"kind": "repeat", "keep_placeholder": True, "bidirectional": True,
                "wrap": {"before": before, "after": after}}
