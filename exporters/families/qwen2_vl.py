"""Qwen2-VL: a native-resolution ViT with 2-D rotary positions, a 2x2 patch merger, an M-RoPE qwen2 LLM.

Survey group: converter (the merger's MLP maps each 2x2 block of patch features to one LLM token).

- Preprocessing (``qwen-vl-patches``, numpy): the image is resized to multiples of 28 within the
  processor's ``min_pixels..max_pixels`` and cut into 14 px patches, two frames per temporal patch.
- The vision graph takes the patches, each patch's rotary angles and a frame attention bias
  (computed by the runtime from the grid, as transformers computes them inside the model), so it
  has no data-dependent shapes; it runs once per image (sizes differ).
- Prompt: ``<|vision_start|><|image_pad|><|vision_end|>`` as the processor writes it; the one
  ``<|image_pad|>`` stands for the image's ``t * h * w / 4`` tokens. Positions are M-RoPE: the
  image's tokens take (t, h, w) grid positions from the next position on, the text after it goes
  on from the largest + 1 (``edgebridge.plan``); the GGUF is written as llama.cpp's ``qwen2vl``
  with the ``mrope_section`` as ``rope.dimension_sections``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    SharedInput,
    load_float32,
    seeded_normal,
)
from edgebridge.exporters.image_spec import pixel_steps
from edgebridge.preprocess.qwen_vl import vision_inputs

IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
VIDEO_FPS, MAX_FRAMES = 2.0, 64  # Qwen2-VL's default sampling; the frame cap is ours (memory on a device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionGraph(torch.nn.Module):
    """``pixel_values [N, C*T*P*P], rotary_pos_emb [N, d], attention_bias [N, N] -> [1, N / 4, D]``.

    The tower's own modules (patch embedding, blocks' norms, qkv/proj and MLPs, the merger); the
    attention is written out with an additive bias, which equals transformers' per-segment split.
    With ``window_blocks`` (Qwen2.5-VL) the patches arrive in window order, those blocks attend within
    their window and ``reverse_index`` restores raster order. ``window_rows`` (patches per window): the
    windows arrive whole (empty slots masked by ``window_key_bias``) and are attended one by one; the
    bench tower spent 46 of its 180 ms in products over every pair of its 704 patches, ~11x the
    window's work. Without it (older bundles) ``window_bias [N, N]`` masks across windows.
    """

    def __init__(self, visual: torch.nn.Module, window_blocks: tuple[int, ...] = (), window_rows: int = 0) -> None:
        super().__init__()
        self.patch_embed, self.blocks, self.merger = visual.patch_embed, visual.blocks, visual.merger
        self.window_blocks = set(window_blocks)
        self.window_rows = window_rows

    def forward(self, pixel_values: torch.Tensor, rotary_pos_emb: torch.Tensor, attention_bias: torch.Tensor,
                window_bias: torch.Tensor | None = None, reverse_index: torch.Tensor | None = None,
                window_key_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self._embed_patches(pixel_values)
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        # the rotation laid out as the attention holds q and k: [1, N, hd], per window [W, 1, rows, hd]
        cos, sin = emb.cos()[None], emb.sin()[None]
        rows = self.window_rows if window_key_bias is not None else 0
        if rows:
            window_cos, window_sin = (t.reshape(-1, 1, rows, t.shape[-1]) for t in (cos, sin))
            keys = window_key_bias.reshape(-1, 1, 1, rows)
        for i, blk in enumerate(self.blocks):
            h = blk.norm1(x)
            if i not in self.window_blocks:
                x = x + self._attention(blk.attn, h, cos, sin, attention_bias)
            elif not rows:
                x = x + self._attention(blk.attn, h, cos, sin, window_bias)
            else:
                x = x + self._attention(blk.attn, h, window_cos, window_sin, keys, rows=rows)
            x = x + blk.mlp(blk.norm2(x))
        merged = self.merger(x)
        return (merged if reverse_index is None else merged[reverse_index]).unsqueeze(0)

    def _embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The patch embedding's Conv3d, whose kernel is the whole flattened patch, as the matrix product it
        is: onnxruntime ran the Conv for 704 patches in 15.6 of the bench tower's 199 ms, and a MatMul gets
        the graph's int8 weights."""
        proj = self.patch_embed.proj
        out = torch.nn.functional.linear(pixel_values, proj.weight.reshape(proj.weight.shape[0], -1), proj.bias)
        return out.reshape(-1, proj.weight.shape[0])

    @staticmethod
    def _attention(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   bias: torch.Tensor, rows: int = 0) -> torch.Tensor:
        """Self-attention over all ``N`` rows (``bias [N, N]``), or, with ``rows``, within each run of
        ``rows`` rows (``bias [N / rows, 1, 1, rows]``). q, k and v come out of one transpose and the
        output goes back in one (a transpose each cost the bench tower 12 of 166 ms)."""
        n, heads = x.shape[0], attn.num_heads
        dim = attn.qkv.out_features // (3 * heads)
        if rows:  # [3, windows, heads, rows, hd]
            qkv = attn.qkv(x).reshape(-1, rows, 3, heads, dim).permute(2, 0, 3, 1, 4)
        else:  # [3, heads, N, hd]
            qkv = attn.qkv(x).reshape(n, 3, heads, dim).permute(1, 2, 0, 3)
        q, k, v = qkv.unbind(0)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [.., heads, N or rows, hd]
        return attn.proj(out.transpose(-2, -3).reshape(n, -1))


class TextOnly(torch.nn.Module):
    """The composite as a text model: ids or embeddings at in-order positions (t = h = w, as text takes
    them), what the GGUF gates compare llama.cpp with. (The composite itself derives M-RoPE positions
    from ``input_ids`` and refuses embeddings alone.)"""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """``position_ids`` ``[3, 1, n]`` (t, h, w) when given (the prefill graph's gate), else in order."""
        n = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        positions = torch.arange(n).view(1, 1, n).expand(3, 1, n) if position_ids is None else position_ids
        return self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, position_ids=positions, **kwargs)


@register_family
class Qwen2VLFamily(HFFamily):
    name = "qwen2-vl"
    model_types = ("qwen2_vl",)
    bridge_type = "patch-merger"
    survey_group = "converter"
    description = "native-resolution ViT (2-D RoPE) + 2x2 patch merger MLP, M-RoPE qwen2 LLM (Qwen2-VL)"
    model_class = "Qwen2VLForConditionalGeneration"
    processor_class = "Qwen2VLProcessor"
    temporal_time = False  # Qwen2.5-VL numbers a video's temporal patches in time (tokens_per_second)

    def load(self, folder: Path) -> Loaded:
        import transformers

        model = load_float32(getattr(transformers, self.model_class), folder)
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=self.load_processor(folder))

    def load_processor(self, folder: Path) -> Any:
        """The HF processor alone (images; see ``image_only_processor``), without the model's weights."""
        from transformers import AutoTokenizer, Qwen2VLImageProcessor

        from edgebridge.testing.qwen_vl import image_only_processor

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = Qwen2VLImageProcessor.from_pretrained(folder, local_files_only=True)
        return image_only_processor(self.processor_class, image_processor, tokenizer,
                                    getattr(tokenizer, "chat_template", None))

    def placeholder_token(self, loaded: Loaded) -> str:
        return IMAGE_PAD

    def causal_lm(self, loaded: Loaded) -> torch.nn.Module:
        return TextOnly(loaded.model)

    def preprocessing(self, loaded: Loaded) -> dict[str, Any]:
        ip, vision = loaded.processor.image_processor, loaded.config.vision_config
        heads = vision.num_heads
        width = getattr(vision, "embed_dim", None) or vision.hidden_size  # Qwen2.5-VL calls the tower's width hidden_size
        return {"kind": "qwen-vl-patches", "processor": type(ip).__name__, "patch_size": int(ip.patch_size),
                "temporal_patch_size": int(ip.temporal_patch_size), "merge_size": int(ip.merge_size),
                "min_pixels": int(ip.min_pixels), "max_pixels": int(ip.max_pixels), **pixel_steps(ip),
                "rotary": {"dim": width // heads // 2, "theta": 10000.0}}

    def video_input(self, loaded: Loaded, image: dict[str, Any]) -> SharedInput | None:
        """Videos through the same tower: frames sampled at ``fps``, two per temporal patch."""
        tps = getattr(loaded.config.vision_config, "tokens_per_second", None)
        spec = {**image, "kind": "qwen-vl-video", "fps": VIDEO_FPS, "max_frames": MAX_FRAMES,
                **({"tokens_per_second": int(tps)} if tps and self.temporal_time else {})}
        return SharedInput(modality="video", preprocessing=spec, placeholder=VIDEO_PAD,
                           tokens_per_item=image["max_pixels"] // (image["patch_size"] * image["merge_size"]) ** 2,
                           layout={"kind": "repeat", "positions": "mrope",
                                   "wrap_if_missing": {"before": VISION_START, "after": VISION_END}})

    def tower_output(self, out: Any) -> torch.Tensor:
        """transformers' tower output as the graph gives it (``[N / 4, width]``)."""
        return out

    def vision_graph(self, loaded: Loaded) -> tuple[torch.nn.Module, list[str]]:
        """The graph module and its input names."""
        return QwenVisionGraph(loaded.model.model.visual).eval(), ["pixel_values", "rotary_pos_emb", "attention_bias"]

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        visual = loaded.model.model.visual
        spec = self.preprocessing(loaded)
        module, names = self.vision_graph(loaded)

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            """One image whose grid grows with ``batch`` (the graph's patch axis is the dynamic one)."""
            h, w = 2 * batch, 2 * batch + 2
            frames = seeded_normal((1, 3, h * spec["patch_size"], w * spec["patch_size"]), seed).numpy()
            return {k: torch.from_numpy(v) for k, v in vision_inputs(frames, spec)[0].items()}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            """transformers' tower on the image in raster order (window order undone first)."""
            grid = torch.tensor([grid_of(inputs, spec["merge_size"])])
            return self.tower_output(visual(raster_patches(inputs, spec), grid_thw=grid)).unsqueeze(0)

        merge = spec["merge_size"]
        axes = {"pixel_values": {0: "patches"}, "rotary_pos_emb": {0: "patches"}, "image_embeds": {1: "tokens"},
                "attention_bias": {0: "patches", 1: "patches"}, "window_bias": {0: "patches", 1: "patches"},
                "window_key_bias": {0: "patches"},
                "reverse_index": {0: "tokens"}, "pos_index": {1: "patches"}, "pos_weight": {1: "patches"}}
        return [EncoderExport(
            component="vision_encoder", modality="image", module=module, input_names=names,
            output_name="image_embeds", dynamic_axes={k: v for k, v in axes.items() if k in names or k == "image_embeds"},
            make_inputs=make_inputs, reference=reference, preprocessing=spec,
            placeholder=IMAGE_PAD, tokens_per_item=spec["max_pixels"] // (spec["patch_size"] * merge) ** 2,
            bridge={**self.bridge_info(), "merge_size": merge},
            layout={"kind": "repeat", "positions": "mrope",
                    "wrap_if_missing": {"before": VISION_START, "after": VISION_END}},
            description=f"{self.model_class.split('For')[0]} vision tower (2-D rotary, native resolution) + 2x2 "
                        "patch merger",
            bridge_scopes=("merger",),
            valid_lengths=lambda inputs: [n_patches(inputs, merge) // merge ** 2],
            shared=[v for v in [self.video_input(loaded, spec)] if v is not None],
        )]


def grid_of(inputs: dict[str, torch.Tensor], merge: int) -> tuple[int, int, int]:
    """An image's (t, h, w) patch grid, read back from its rotary angles: the first row and the first
    column frequency are 1, so those angles are the patch's row and column indices."""
    angles = inputs["rotary_pos_emb"]
    half = angles.shape[1] // 2
    h, w = int(angles[:, 0].max().round()) + 1, int(angles[:, half].max().round()) + 1
    return n_patches(inputs, merge) // (h * w), h, w


def n_patches(inputs: dict[str, torch.Tensor], merge: int) -> int:
    """The image's patches (padded window layouts: without the empty slots)."""
    if "reverse_index" in inputs:
        return int(inputs["reverse_index"].shape[0]) * merge * merge
    return int(inputs["pixel_values"].shape[0])


def raster_patches(inputs: dict[str, torch.Tensor], spec: dict[str, Any]) -> torch.Tensor:
    """The patches in raster order (the order transformers' tower takes), undoing a window order."""
    patches = inputs["pixel_values"]
    if "reverse_index" not in inputs:
        return patches
    unit = spec["merge_size"] ** 2  # reverse_index: each merged token's slot (padded windows: empty ones skipped)
    return patches.reshape(-1, unit, patches.shape[-1])[inputs["reverse_index"]].reshape(-1, patches.shape[-1])
