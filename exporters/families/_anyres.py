"""What LLaVA-NeXT and LLaVA-OneVision share: tiles through LLaVA's graph, "anyres" packing on the host.

The encoder graph is LLaVA's (tower, feature layer, CLS dropped for ``default``, MLP projector), run on
every tile: ``[T, C, S, S] -> [T, N, D]``. What depends on the image's size -- which tiles, unpadding
to its aspect, OneVision's pooling of large grids, the ``image_newline`` after every row -- is numpy on
the device (``edgebridge/preprocess/anyres.py``, kind ``llava-anyres``), with the newline vector in the
component's bridge record. The families' parity tests hold the whole chain to transformers.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.families.base import EncoderExport, HFFamily, Loaded, image_features_export
from edgebridge.exporters.families.llava import LlavaImageGraph
from edgebridge.exporters.image_spec import pixel_steps


class AnyresFamily(HFFamily):
    """Subclasses say how the processor names the tile size and whether several images share a prompt
    as single square tiles (OneVision); ``loaded.extra["max_tiles"]``: OneVision's ``anyres_max_K``."""

    bridge_type = "MLP + anyres packing"
    survey_group = "converter"
    multi_image = "anyres"  # or "square"

    def tile_size(self, loaded: Loaded) -> int:
        raise NotImplementedError

    def _preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        cfg, ip = loaded.config, loaded.processor.image_processor
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        if self.tile_size(loaded) != cfg.vision_config.image_size:
            raise UnsupportedModelError(f"the processor's tiles ({self.tile_size(loaded)} px) differ from the "
                                        f"tower's input ({cfg.vision_config.image_size} px).")
        return {"kind": "llava-anyres", "processor": type(ip).__name__, "tile": self.tile_size(loaded),
                "pinpoints": [[int(h), int(w)] for h, w in cfg.image_grid_pinpoints], "features_per_side": side,
                "max_tiles": loaded.extra.get("max_tiles"), "multi_image": self.multi_image, **pixel_steps(ip)}

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        cfg, model = loaded.config, loaded.model
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            """HF's tower, layer pick and projector per tile (``get_image_features`` wants image sizes)."""
            hidden = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
            feats = hidden[cfg.vision_feature_layer]
            feats = feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats
            return model.model.multi_modal_projector(feats)

        newline = model.model.image_newline.detach().float().numpy()
        return [image_features_export(
            model, LlavaImageGraph(model), axis="tiles", reference=reference,
            preprocessing=self._preprocessing(loaded),
            placeholder=loaded.processor.image_token,
            tokens_per_item=side * side,  # per tile; an image's count comes from its grid
            bridge={**self.bridge_info(), "feature_layer": cfg.vision_feature_layer,
                    "select_strategy": cfg.vision_feature_select_strategy,
                    "image_newline": [float(x) for x in newline]},
            description=f"{cfg.vision_config.model_type} vision tower + MLP projector, per tile",
        )]
