"""InstructBLIP: BLIP ViT, a Q-Former whose learned queries also read the instruction, a projection.

Survey group: perceiver (a fixed set of learned queries cross-attends to the image). The Q-Former
takes the prompt itself as text (BERT WordPiece), so the exported graph has three inputs:
``pixel_values``, ``qformer_input_ids`` and ``qformer_attention_mask``; the runtime tokenizes the
prompt with the bundle's WordPiece vocabulary (``qformer_vocab.txt``, pure Python). As
``InstructBlipProcessor`` does, the image's query embeddings go before everything else, BOS
included (layout ``prefix``); the prompt holds no placeholder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import (
    EncoderExport,
    HFFamily,
    Loaded,
    seeded_normal,
)
from edgebridge.exporters.image_spec import image_spec

VOCAB_ASSET = "qformer_vocab.txt"


class InstructBlipGraph(torch.nn.Module):
    """``pixel_values [B, C, H, W], qformer_input_ids [B, L], qformer_attention_mask [B, L] -> [B, Q, D]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.qformer = model.qformer  # named, so profiles can split the bridge's time
        self.language_projection = model.language_projection

    def forward(self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor,
                qformer_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values, qformer_input_ids=qformer_input_ids,
                                             qformer_attention_mask=qformer_attention_mask)


@register_family
class InstructBlipFamily(HFFamily):
    name = "instructblip"
    model_types = ("instructblip",)
    bridge_type = "Q-Former (learned queries + instruction)"
    survey_group = "perceiver"
    description = "BLIP ViT + instruction-aware Q-Former + linear projection (InstructBLIP)"
    model_class = "InstructBlipForConditionalGeneration"
    processor_use_fast = False
    text_prefix = "language_model.model."
    lm_head = "language_model.lm_head.weight"
    processor_template = False
    delegates_generate = True  # its generate() hands over to language_model.generate()


    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        model = loaded.model
        size = loaded.processor.image_processor.size
        qtok = loaded.processor.qformer_tokenizer
        vocab_file = Path(loaded.folder) / "qformer_tokenizer" / "vocab.txt"

        def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(seed + 7)
            length = 7 + seed % 5
            ids = torch.randint(5, len(qtok), (batch, length), generator=gen)
            ids[:, 0], ids[:, -1] = qtok.cls_token_id, qtok.sep_token_id
            return {"pixel_values": seeded_normal((batch, 3, size["height"], size["width"]), seed),
                    "qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return model.get_image_features(**inputs)

        pre = image_spec(loaded.processor.image_processor)
        pre["text_inputs"] = {"tokenizer": "wordpiece", "vocab": VOCAB_ASSET,
                              "lowercase": bool(getattr(qtok, "do_lower_case", True)),
                              "input_ids": "qformer_input_ids", "attention_mask": "qformer_attention_mask",
                              "max_length": int(min(qtok.model_max_length, 512)), "text": "the prompt"}
        return [EncoderExport(
            component="vision_encoder",
            modality="image",
            module=InstructBlipGraph(model).eval(),
            input_names=["pixel_values", "qformer_input_ids", "qformer_attention_mask"],
            output_name="image_embeds",
            dynamic_axes={"pixel_values": {0: "batch"}, "qformer_input_ids": {0: "batch", 1: "text_tokens"},
                          "qformer_attention_mask": {0: "batch", 1: "text_tokens"}, "image_embeds": {0: "batch"}},
            make_inputs=make_inputs,
            reference=reference,
            preprocessing=pre,
            placeholder=loaded.processor.image_token.content,
            tokens_per_item=int(loaded.config.num_query_tokens),
            bridge={**self.bridge_info(), "queries": int(loaded.config.num_query_tokens)},
            layout={"kind": "prefix"},
            description="BLIP vision tower + instruction-aware Q-Former + projection",
            bridge_scopes=("qformer", "language_projection"),
            assets={VOCAB_ASSET: vocab_file},
            pad_axes={"qformer_input_ids": [1], "qformer_attention_mask": [1]},
        )]

    def causal_lm(self, loaded: Loaded) -> torch.nn.Module:
        return loaded.model.language_model  # the full model's forward insists on an image

    def chat_content(self, loaded: Loaded) -> str:
        return "string"  # no chat template of its own: the prompt is the instruction text
