"""Qwen3-VL: a native-resolution ViT with a learned, interpolated position table, deepstack, a qwen3 LLM.

What differs from ``qwen2_vl`` (transformers 4.57 ``modeling_qwen3_vl.py``):
- the tower adds a learned ``grid_per_side``² position table, bilinearly interpolated to each image's
  patch grid: the runtime computes each patch's four rows and weights, the graph does the lookup;
- deepstack: after chosen tower blocks, their own patch mergers give extra features that are added
  to the first LLM layers' outputs at the image's positions. The graph's output row is the main
  embedding and the deepstack ones side by side (``[N, D * (1 + k)]``), which is how llama.cpp's
  ``qwen3vl`` takes them (``n_deepstack_layers``; text tokens carry zeros there);
- the text model is qwen3 (q/k RMS norms) with interleaved M-RoPE sections;
- a video's temporal patches are written into the prompt one by one, each behind its time
  (``<1.0 seconds><|vision_start|>...<|vision_end|>``, layout ``timestamped-frames``), and each takes
  positions as an image of one frame would (transformers' processor and ``get_rope_index``).
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import Loaded, SharedInput
from edgebridge.exporters.families.qwen2_vl import QwenVisionGraph, Qwen2VLFamily
from edgebridge.exporters.gguf.writer import TextModel


class Qwen3VisionGraph(QwenVisionGraph):
    """Qwen2-VL's graph plus the interpolated position table and the deepstack mergers:
    ``(..., pos_index [4, N], pos_weight [4, N]) -> [1, N / 4, D * (1 + len(deepstack))]``."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__(visual)
        self.pos_embed = visual.pos_embed
        self.deepstack = dict(zip(visual.deepstack_visual_indexes, visual.deepstack_merger_list))

    def forward(self, pixel_values: torch.Tensor, rotary_pos_emb: torch.Tensor, attention_bias: torch.Tensor,
                pos_index: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
        x = self._embed_patches(pixel_values) + (self.pos_embed(pos_index) * pos_weight[..., None]).sum(0)
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        cos, sin = emb.cos()[None], emb.sin()[None]  # as ``_attention`` holds q and k: [1, N, hd]
        extra = []
        for i, blk in enumerate(self.blocks):
            x = x + self._attention(blk.attn, blk.norm1(x), cos, sin, attention_bias)
            x = x + blk.mlp(blk.norm2(x))
            if i in self.deepstack:
                extra.append(self.deepstack[i](x))
        return torch.cat([self.merger(x), *extra], dim=-1).unsqueeze(0)


@register_family
class Qwen3VLFamily(Qwen2VLFamily):
    name = "qwen3-vl"
    model_types = ("qwen3_vl",)
    bridge_type = "patch-merger+deepstack"
    description = "native-resolution ViT + 2x2 patch merger and deepstack mergers, M-RoPE qwen3 LLM (Qwen3-VL)"
    model_class = "Qwen3VLForConditionalGeneration"
    processor_class = "Qwen3VLProcessor"

    def n_deepstack(self, loaded: Loaded) -> int:
        return len(loaded.config.vision_config.deepstack_visual_indexes)

    def llm_input_width(self, loaded: Loaded) -> int:
        return int(loaded.config.text_config.hidden_size) * (1 + self.n_deepstack(loaded))

    def text_model(self, loaded: Loaded) -> TextModel:
        text = super().text_model(loaded)
        text.extra["n_deepstack_layers"] = self.n_deepstack(loaded)
        return text

    def preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        side = int(loaded.config.vision_config.num_position_embeddings ** 0.5)
        return {**super().preprocessing(loaded), "pos_embed": {"grid_per_side": side}}

    def tower_output(self, out: Any) -> torch.Tensor:
        merged, deepstack = out  # the main merger's tokens and one [N / 4, D] per deepstack layer
        return torch.cat([merged, *deepstack], dim=-1)

    def vision_graph(self, loaded: Loaded) -> tuple[torch.nn.Module, list[str]]:
        return (Qwen3VisionGraph(loaded.model.model.visual).eval(),
                ["pixel_values", "rotary_pos_emb", "attention_bias", "pos_index", "pos_weight"])

    def video_input(self, loaded: Loaded, image: dict[str, Any]) -> SharedInput | None:
        shared = super().video_input(loaded, image)
        shared.preprocessing["timestamps"] = True
        shared.layout["kind"] = "timestamped-frames"
        return shared
