"""LLaVA-NeXT (LLaVA-1.6): LLaVA's tower and MLP projector on "anyres" tiles, unpadded, with a learned
``image_newline`` after every row of features (``_anyres.py``; preprocessing kind ``llava-anyres``).

Survey group: converter. Prompt: every ``<image>`` becomes that image's embeddings (their count
depends on its size and grid), in place.
"""

from __future__ import annotations


from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._anyres import AnyresFamily
from edgebridge.exporters.families.base import Loaded


@register_family
class LlavaNextFamily(AnyresFamily):
    name = "llava-next"
    model_types = ("llava_next",)
    description = "CLIP/SigLIP on anyres tiles + MLP projector, unpadded grid + image_newline (LLaVA-NeXT)"
    model_class = "LlavaNextForConditionalGeneration"
    processor_use_fast = False


    def tile_size(self, loaded: Loaded) -> int:
        return int(loaded.processor.image_processor.crop_size["height"])
