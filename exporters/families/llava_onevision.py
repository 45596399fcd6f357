"""LLaVA-OneVision: SigLIP on "anyres" tiles + MLP projector, unpadded, grids over 9 tiles pooled
(``anyres_max_9``), ``image_newline`` after every row (``_anyres.py``; kind ``llava-anyres``).

Survey group: converter. Several images in one prompt are each padded to a square in the mean colour
and read as one tile plus a newline, as ``LlavaOnevisionImageProcessor`` does for a multi-image sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families._anyres import AnyresFamily
from edgebridge.exporters.families.base import Loaded, load_float32


@register_family
class LlavaOnevisionFamily(AnyresFamily):
    name = "llava-onevision"
    model_types = ("llava_onevision",)
    multi_image = "square"
    nest_images = True
    description = "SigLIP on anyres tiles + MLP projector, unpadded grid pooled to 9 tiles + image_newline " \
                  "(LLaVA-OneVision)"

    def load(self, folder: Path) -> Loaded:
        from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor

        from edgebridge.testing.anyres import onevision_processor

        model = load_float32(LlavaOnevisionForConditionalGeneration, folder)
        ratio = model.config.vision_aspect_ratio
        if not (ratio.startswith("anyres_max_") and ratio[len("anyres_max_"):].isdigit()):
            raise UnsupportedModelError(f"vision_aspect_ratio '{ratio}' is not supported (anyres_max_K is).")
        cfg_path = Path(folder) / "processor_config.json"
        extra = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = LlavaOnevisionImageProcessor.from_pretrained(folder, local_files_only=True)
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        processor = onevision_processor(image_processor, tok, extra.get("num_image_tokens") or side * side,
                                        model.config.vision_feature_select_strategy, tok.chat_template)
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=processor,
                      extra={"max_tiles": int(ratio[len("anyres_max_"):])})

    def tile_size(self, loaded: Loaded) -> int:
        return int(loaded.processor.image_processor.size["height"])
