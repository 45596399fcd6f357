"""PaliGemma (2): SigLIP tower, one linear projection, a gemma2 text model, prefix-LM attention.

Survey group: converter. Read from transformers 4.57:
- the processor writes every image first, then ``<bos>``, the prompt and a newline (no placeholder in
  the prompt: layout ``prefix``, BOS after the media, ``prompt_suffix``);
- the image features are divided by sqrt(hidden) in ``get_image_features`` (the gemma2 model scales
  every input row back up): the division is part of the exported graph;
- outside training, the whole prompt (image and text) attends both ways during prefill and only the
  answer is causal (``_update_causal_mask``): ``prefix_lm`` in the manifest; the runtime feeds the
  prompt as one non-causal batch of embeddings, text rows from the GGUF's own table;
- the composite's ``lm_head`` applies no final soft-capping.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import EncoderExport, HFFamily, Loaded, image_features_export
from edgebridge.exporters.image_spec import image_spec
from edgebridge.manifest import PromptLayout


class PaliGemmaImageGraph(torch.nn.Module):
    """``pixel_values [B, C, S, S] -> [B, N, D]``: HF's ``get_image_features`` (scaled by 1/sqrt(D))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.scale = float(model.config.text_config.hidden_size) ** -0.5

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values=pixel_values).last_hidden_state) * self.scale


class CausalText(torch.nn.Module):
    """The text model alone with ordinary causal attention: the reference for the GGUF gate (the
    composite's forward would attend both ways over every sequence it is given)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, use_cache=False) -> SimpleNamespace:
        hidden = self.language_model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=use_cache)
        return SimpleNamespace(logits=self.lm_head(hidden.last_hidden_state))


@register_family
class PaliGemmaFamily(HFFamily):
    name = "paligemma"
    nest_images = True
    model_types = ("paligemma",)
    bridge_type = "linear"
    survey_group = "converter"
    description = "SigLIP + linear projection, gemma2 LLM; image and prompt attend both ways (PaliGemma 2)"
    model_class = "PaliGemmaForConditionalGeneration"
    # the fast tokenizer (the slow one needs sentencepiece); the image processor stays the saved (PIL) one


    def causal_lm(self, loaded: Loaded) -> torch.nn.Module:
        return CausalText(loaded.model).eval()

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        cfg, proc = loaded.config, loaded.processor
        return [image_features_export(
            loaded.model, PaliGemmaImageGraph(loaded.model),
            preprocessing=image_spec(proc.image_processor),
            placeholder=proc.image_token,
            tokens_per_item=int(proc.image_seq_length),
            bridge={**self.bridge_info(), "scale": "1/sqrt(hidden)"},
            layout={"kind": "prefix"},
            description=f"{cfg.vision_config.model_type} vision tower + linear projection",
        )]

    def prompt_layout(self, loaded: Loaded) -> PromptLayout:
        """The processor writes ``<bos>`` itself (after the images) and ends the prompt with a newline."""
        layout = super().prompt_layout(loaded)
        tok = loaded.processor.tokenizer
        return PromptLayout(add_bos=tok.bos_token_id is not None, stop_token_ids=layout.stop_token_ids,
                            chat_template=layout.chat_template, chat_content=layout.chat_content,
                            special_tokens=layout.special_tokens, prompt_suffix="\n", prefix_lm=True)
