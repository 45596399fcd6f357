"""MobileVLM's Lightweight Downsample Projectors, written from the papers, and a MobileVLM model.

transformers has no MobileVLM; this module is the PyTorch reference the exported graphs are
checked against. Shapes follow the papers (Chu et al., "MobileVLM", arXiv 2312.16886, and
"MobileVLM V2", arXiv 2402.03766): a CLIP tower's ``[B, N, C]`` patch features (N = G x G, CLS
dropped, second-to-last layer) become ``[B, (G / 2)^2, D]`` LLM embeddings.

- **LDP** (v1): ``Linear(C, D) -> GELU -> Linear(D, D)``, then on the ``D x G x G`` grid two MobileNetV3
  inverted-residual blocks (depthwise 3x3, Hardswish, squeeze-excite with a hard-sigmoid gate,
  LayerNorm over channels): the first at stride 1 with a residual, the second at stride 2, which
  halves the grid.
- **LDPv2**: ``Linear -> GELU -> Linear``, average pooling of the grid to ``pool x pool`` (a fixed
  size, so it exports as a static pooling), then a PEG (a depthwise 3x3 conv added back to its input).

Shape legend: ``B`` batch, ``N`` patches, ``G`` grid side, ``C`` vision width, ``D`` LLM width.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class HardSigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.hardsigmoid(x)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite: channel gates from the global average, hard-sigmoid activated."""

    def __init__(self, channels: int, reduction: float = 0.25) -> None:
        super().__init__()
        reduced = max(8, int(channels * reduction))
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = HardSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(s))))


class InvertedResidual(nn.Module):
    """Pointwise expand, depthwise k x k (stride), squeeze-excite, pointwise project (+ residual at stride 1)."""

    def __init__(self, channels: int, stride: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm1 = LayerNorm2d(channels)
        self.conv_dw = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)
        self.norm2 = LayerNorm2d(channels)
        self.act = nn.Hardswish()
        self.se = SqueezeExcite(channels)
        self.conv_pwl = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm3 = LayerNorm2d(channels)
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv_pw(x)))
        y = self.act(self.norm2(self.conv_dw(y)))
        y = self.norm3(self.conv_pwl(self.se(y)))
        return x + y if self.residual else y


def _mlp(vision_width: int, llm_width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))


def _to_grid(x: torch.Tensor) -> torch.Tensor:
    """``[B, N, D] -> [B, D, G, G]``."""
    b, n, d = x.shape
    side = int(math.isqrt(n))
    return x.transpose(1, 2).reshape(b, d, side, side)


class LDP(nn.Module):
    """LDP v1: ``[B, G*G, C] -> [B, (G/2)^2, D]``."""

    def __init__(self, vision_width: int, llm_width: int) -> None:
        super().__init__()
        self.mlp = _mlp(vision_width, llm_width)
        self.blocks = nn.Sequential(InvertedResidual(llm_width, 1), InvertedResidual(llm_width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(_to_grid(self.mlp(x))).flatten(2).transpose(1, 2)


class LDPv2(nn.Module):
    """LDPv2: ``[B, G*G, C] -> [B, pool^2, D]`` (average pooling to a fixed grid, then PEG)."""

    def __init__(self, vision_width: int, llm_width: int, pool: int) -> None:
        super().__init__()
        self.mlp = _mlp(vision_width, llm_width)
        self.pool_size = pool
        self.peg = nn.Conv2d(llm_width, llm_width, 3, 1, 1, groups=llm_width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = _to_grid(self.mlp(x))
        side = grid.shape[-1]
        if side % self.pool_size:
            raise ValueError(f"a {side}x{side} grid does not pool evenly to {self.pool_size}x{self.pool_size}")
        k = side // self.pool_size  # static kernel = stride: the adaptive pool of the paper, exportable
        pooled = torch.nn.functional.avg_pool2d(grid, kernel_size=k, stride=k)
        return (pooled + self.peg(pooled)).flatten(2).transpose(1, 2)


PROJECTORS = ("ldp", "ldpv2")


class MobileVLMConfig(PretrainedConfig):
    model_type = "mobilevlm"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": LlamaConfig}

    def __init__(self, vision_config: Any = None, text_config: Any = None, mm_projector_type: str = "ldpv2",
                 mm_vision_select_layer: int = -2, ldp_pool_size: int | None = None, image_token_index: int = 0,
                 **kwargs: Any) -> None:
        self.vision_config = CLIPVisionConfig(**vision_config) if isinstance(vision_config, dict) else (
            vision_config or CLIPVisionConfig())
        self.text_config = LlamaConfig(**text_config) if isinstance(text_config, dict) else (text_config or LlamaConfig())
        if mm_projector_type not in PROJECTORS:
            raise ValueError(f"mm_projector_type must be one of {PROJECTORS}")
        self.mm_projector_type = mm_projector_type
        self.mm_vision_select_layer = mm_vision_select_layer
        grid = self.vision_config.image_size // self.vision_config.patch_size
        self.ldp_pool_size = ldp_pool_size or grid // 2
        self.image_token_index = image_token_index
        super().__init__(**kwargs)

    @property
    def image_tokens(self) -> int:
        grid = self.vision_config.image_size // self.vision_config.patch_size
        return (grid // 2) ** 2 if self.mm_projector_type == "ldp" else self.ldp_pool_size ** 2


class MobileVLMForCausalLM(PreTrainedModel):
    """CLIP tower (layer ``mm_vision_select_layer``, CLS dropped) -> LDP -> llama; images replace
    the ``image_token_index`` positions of the prompt, one embedding per position."""

    config_class = MobileVLMConfig
    base_model_prefix = "mobilevlm"
    _supports_sdpa = True

    def __init__(self, config: MobileVLMConfig) -> None:
        super().__init__(config)
        self.vision_tower = CLIPVisionModel(config.vision_config)
        width, llm = config.vision_config.hidden_size, config.text_config.hidden_size
        self.mm_projector = LDP(width, llm) if config.mm_projector_type == "ldp" else LDPv2(width, llm,
                                                                                            config.ldp_pool_size)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        return self.mm_projector(hidden[self.config.mm_vision_select_layer][:, 1:])

    def _merge(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        feats = self.get_image_features(pixel_values).reshape(-1, embeds.shape[-1])
        mask = (input_ids == self.config.image_token_index)[..., None].expand_as(embeds)
        if int(mask[..., 0].sum()) != feats.shape[0]:
            raise ValueError("image tokens and image features do not match")
        return embeds.masked_scatter(mask, feats.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self._merge(input_ids, pixel_values)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The llama's own ``generate`` on the merged embeddings; returns prompt + new ids like HF models."""
        embeds = self._merge(input_ids, pixel_values)
        new = self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new], dim=1)
