"""Qwen2.5-VL: Qwen2-VL's line with a windowed vision tower (RMS norms, gated MLPs) and the same M-RoPE LLM.

What differs from ``qwen2_vl`` (transformers 4.57 ``modeling_qwen2_5_vl.py``): most tower blocks attend
within windows of ``window_size`` pixels (``fullatt_block_indexes`` attend over the whole frame), so the
runtime feeds the patches in window order with a window attention bias and the index that gives the
merged tokens back their raster order (``edgebridge.preprocess.qwen_vl``); the tower's width is
``hidden_size`` (the LLM's is ``out_hidden_size``). The text model is written as llama.cpp's
``qwen2vl``, as for Qwen2-VL.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import Loaded
from edgebridge.exporters.families.qwen2_vl import QwenVisionGraph, Qwen2VLFamily


@register_family
class Qwen25VLFamily(Qwen2VLFamily):
    name = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    description = "windowed native-resolution ViT + 2x2 patch merger MLP, M-RoPE qwen2 LLM (Qwen2.5-VL)"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    processor_class = "Qwen2_5_VLProcessor"
    temporal_time = True  # video t positions: patch index x seconds per patch x tokens_per_second

    def preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        vision = loaded.config.vision_config
        window = vision.window_size // vision.spatial_merge_size // vision.patch_size  # in merged tokens
        return {**super().preprocessing(loaded), "window": int(window), "window_padded": True}

    def vision_graph(self, loaded: Loaded) -> tuple[torch.nn.Module, list[str]]:
        vision = loaded.config.vision_config
        windowed = tuple(i for i in range(vision.depth) if i not in set(vision.fullatt_block_indexes))
        window = self.preprocessing(loaded)["window"]
        graph = QwenVisionGraph(loaded.model.model.visual, window_blocks=windowed,
                                window_rows=window * window * vision.spatial_merge_size ** 2).eval()
        return graph, ["pixel_values", "rotary_pos_emb", "attention_bias", "reverse_index", "window_key_bias"]
