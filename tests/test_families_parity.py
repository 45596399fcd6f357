"""The survey's bridge families end to end, their host-side preprocessing, and static-shape exports.

Converters: Idefics3/SmolVLM (tiles + pixel shuffle + linear), InternVL (tiles + pixel shuffle +
MLP), MobileVLM (LDP v1 / v2, the project's reference module). Perceivers: Idefics2 (perceiver
resampler), InstructBLIP (Q-Former reading the instruction). For each, through both encoder
engines: 16 greedy tokens equal transformers' (or the reference module's) ``generate``, and the
first-step logits agree to <= 1e-3 (f32 GGUF, strict llama.cpp settings).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge import Pipeline
from edgebridge.errors import StaticShapeError, UnsupportedModelError
from edgebridge.exporters.api import export_bundle
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported, run_cli, tiny_model
from tests.reference import hf_reference

COVERS_FAMILIES = ["idefics3", "internvl", "mobilevlm", "instructblip", "idefics2"]
pytestmark = pytest.mark.slow

PROMPTS = {
    "idefics3": "User:<image>What is in this image?<end_of_utterance>\nAssistant:",
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
    "mobilevlm": "USER: <image>\nWhat is in this image? ASSISTANT:",
    "instructblip": "What is in this image? Answer briefly.",
    "idefics2": "User:<image>What is in this image?<end_of_utterance>\nAssistant:",
}
PHOTOS = {"chelsea": data.chelsea, "page": data.page}  # a wide photo and a wide grey page: other tile grids


def _image(name: str) -> Image.Image:
    return Image.fromarray(PHOTOS[name]()).convert("RGB")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_greedy_tokens_and_first_logits_match_the_reference(workdir, kind, backend):
    bundle = exported(workdir, kind)
    prompt = PROMPTS[kind]
    for photo in PHOTOS:
        img = _image(photo)
        ref = hf_reference(bundle.model_dir, prompt, {"image": [img]})
        with Pipeline.from_bundle(bundle.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
            result = pipe.generate(prompt, images=[img], max_new_tokens=16)
            logits = pipe.prefill_logits(prompt, images=[img])
        assert result.prompt_tokens == len(ref.prompt_ids), (kind, photo)
        assert result.token_ids == ref.token_ids and len(ref.token_ids) == 16, (kind, photo)
        assert np.abs(logits - ref.first_logits).max() <= 1e-3


def test_mobilevlm_ldp_v1_too(workdir, tmp_path):
    from edgebridge.testing import make_tiny

    model = make_tiny("mobilevlm", tmp_path / "ldp", projector="ldp")
    manifest = export_bundle(model, tmp_path / "b", encoder_formats=["onnx"], llm_dtype="f32")
    assert manifest.components["vision_encoder"].bridge["projector"] == "ldp"
    img = _image("chelsea")
    ref = hf_reference(model, PROMPTS["mobilevlm"], {"image": [img]})
    with Pipeline.from_bundle(tmp_path / "b", llm_settings=LlamaSettings.strict()) as pipe:
        assert pipe.generate(PROMPTS["mobilevlm"], images=[img], max_new_tokens=16).token_ids == ref.token_ids


def test_idefics2_with_image_splitting(workdir, tmp_path):
    from edgebridge.testing import make_tiny

    model = make_tiny("idefics2", tmp_path / "split", split=True)
    export_bundle(model, tmp_path / "b", encoder_formats=["openvino"], llm_dtype="f32")
    for photo in PHOTOS:
        img = _image(photo)
        ref = hf_reference(model, PROMPTS["idefics2"], {"image": [img]})
        with Pipeline.from_bundle(tmp_path / "b", encoder_backend="openvino",
                                  llm_settings=LlamaSettings.strict()) as pipe:
            result = pipe.generate(PROMPTS["idefics2"], images=[img], max_new_tokens=8)
        assert result.prompt_tokens == len(ref.prompt_ids) and result.token_ids == ref.token_ids[:8]


def test_two_images_share_fake_tokens_in_idefics2(workdir):
    bundle = exported(workdir, "idefics2")
    prompt = "User:<image><image>Compare.<end_of_utterance>\nAssistant:"
    images = [_image("chelsea"), _image("page")]
    ref = hf_reference(bundle.model_dir, prompt, {"image": images}, max_new_tokens=8)
    with Pipeline.from_bundle(bundle.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, images=images, max_new_tokens=8)
    assert result.prompt_tokens == len(ref.prompt_ids) and result.token_ids == ref.token_ids


def test_instructblip_refuses_a_placeholder_in_the_prompt(workdir):
    bundle = exported(workdir, "instructblip")
    proc = run_cli("run", str(bundle.bundle), "--image", "/dev/null", "-p", "<image> what?")
    assert proc.returncode == 2 and "before the whole prompt" in proc.stderr


def test_families_command_lists_every_family_with_its_group():
    proc = run_cli("families")
    assert proc.returncode == 0
    for family, group in [("llava", "converter"), ("idefics3", "converter"), ("internvl", "converter"),
                          ("mobilevlm", "converter"), ("idefics2", "perceiver"), ("instructblip", "perceiver"),
                          ("qwen2-audio", "converter"), ("voxtral", "converter")]:
        line = next(line for line in proc.stdout.splitlines() if f" {family} " in line)
        assert group in line, line


# --- static shapes ---------------------------------------------------------------------------------


def test_static_export_chunks_tiles_and_matches(workdir, tmp_path):
    model = tiny_model(workdir, "idefics3")
    manifest = export_bundle(model, tmp_path / "s", llm_dtype="f32", static=True, static_batch=4)
    spec = manifest.static_shapes["vision_encoder"]
    assert spec == {"batch": 4, "inputs": {"pixel_values": [4, 3, 64, 64]}, "pad_axes": {}}
    assert manifest.components["vision_encoder"].inputs[0].shape == [4, 3, 64, 64]
    import onnx

    dims = [d.dim_value for d in onnx.load(str(tmp_path / "s" / "vision_encoder.onnx")).graph.input[0]
            .type.tensor_type.shape.dim]
    assert dims == [4, 3, 64, 64]  # no symbolic axis left
    img = _image("chelsea")  # 12 tiles + global = 13 rows: chunks of 4, the last padded
    ref = hf_reference(model, PROMPTS["idefics3"], {"image": [img]})
    for backend in ("onnxruntime", "openvino"):
        with Pipeline.from_bundle(tmp_path / "s", encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
            assert pipe.generate(PROMPTS["idefics3"], images=[img], max_new_tokens=16).token_ids == ref.token_ids


def test_static_token_axis_is_padded_and_longer_text_refused(workdir, tmp_path):
    model = tiny_model(workdir, "instructblip")
    export_bundle(model, tmp_path / "s", encoder_formats=["onnx"], llm_dtype="f32", static=True, static_tokens=24)
    img = _image("chelsea")
    ref = hf_reference(model, PROMPTS["instructblip"], {"image": [img]})
    with Pipeline.from_bundle(tmp_path / "s", llm_settings=LlamaSettings.strict()) as pipe:
        assert pipe.generate(PROMPTS["instructblip"], images=[img], max_new_tokens=16).token_ids == ref.token_ids
        with pytest.raises(StaticShapeError, match="at most 24"):
            pipe.generate("describe every detail of the picture " * 5, images=[img])
    manifest = json.loads((tmp_path / "s" / "edgebridge.json").read_text())
    assert manifest["static_shapes"]["vision_encoder"]["inputs"]["qformer_input_ids"] == [1, 24]


def test_static_export_of_native_resolution_family_is_refused(workdir, tmp_path):
    with pytest.raises(UnsupportedModelError, match="static"):
        export_bundle(tiny_model(workdir, "idefics2"), tmp_path / "s", static=True)
    assert not (tmp_path / "s").exists()
