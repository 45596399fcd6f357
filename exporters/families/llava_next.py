"""LLaVA-NeXT (LLaVA-1.6): LLaVA's tower and MLP projector on "anyres" tiles, unpadded, with a learned
``image_newline`` after every row of features (``_anyres.py``; preprocessing kind ``llava-anyres``).

Survey group: converter. Prompt: every ``<image>`` becomes that image's embeddings (their count
depends on its size and grid), in place.
"""

from __future__ import annotations

from pathlib import Path

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._anyres import AnyresFamily
from edgebridge.exporters.families.base import Loaded, load_float32


@register_family
class LlavaNextFamily(AnyresFamily):
    name = "llava-next"
    model_types = ("llava_next",)
    description = "CLIP/SigLIP on anyres tiles + MLP projector, unpadded grid + image_newline (LLaVA-NeXT)"

    def load(self, folder: Path) -> Loaded:
        from transformers import AutoProcessor, LlavaNextForConditionalGeneration

        model = load_float32(LlavaNextForConditionalGeneration, folder)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, use_fast=False)
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor)

    def tile_size(self, loaded: Loaded) -> int:
        return int(loaded.processor.image_processor.crop_size["height"])
