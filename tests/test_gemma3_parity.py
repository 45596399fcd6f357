"""Gemma 3 end to end: pooled SigLIP features, ``<start_of_image>`` prompts, bidirectional image attention.

A tiny seeded Gemma 3 (``make-tiny gemma3``: 64 px SigLIP, 16 pooled tokens per image, a 2-layer gemma3
text model with a 32-token sliding window), f32 GGUF, strict llama.cpp settings. Through both encoder
engines, the 16 greedy ids equal transformers' ``generate`` on the processor's prompt for one photo and
for two photos of different sizes; with the manifest's ``bidirectional`` switched off (causal image
attention) the answer changes, so the attention rule is what makes them equal.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge import Pipeline
from edgebridge.manifest import MANIFEST_NAME
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported
from tests.reference import hf_reference

COVERS_FAMILIES = ["gemma3"]
pytestmark = pytest.mark.slow

ONE = "<start_of_image>What is in this image?"
TWO = "Compare <start_of_image> and <start_of_image>. Which is brighter?"
CASES = {"cat": (ONE, ["chelsea"]), "cat+astronaut": (TWO, ["chelsea", "astronaut"])}


def photos(names: list[str]) -> list[np.ndarray]:
    out = [getattr(data, n)() for n in names]
    return [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in out]


def run(bundle, prompt: str, images: list[np.ndarray], backend: str = "onnxruntime"):
    with Pipeline.from_bundle(bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, images=images, max_new_tokens=16)
        logits = pipe.prefill_logits(prompt, images=images)
    return result, logits


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_transformers(workdir, case, backend):
    b = exported(workdir, "gemma3")
    prompt, names = CASES[case]
    images = photos(names)
    assert len({im.shape for im in images}) == len(images)  # different sizes when there are two
    ref = hf_reference(b.model_dir, prompt, {"image": [Image.fromarray(im) for im in images]})
    result, logits = run(b.bundle, prompt, images, backend)
    assert result.token_ids == ref.token_ids
    assert len(ref.token_ids) == 16 and len(set(ref.token_ids)) >= 3
    assert result.prompt_tokens == len(ref.prompt_ids)
    tolerance = b.manifest.components["llm"].artifacts["gguf"].parity.tolerance["max_abs"]
    assert np.abs(logits - ref.first_logits).max() <= tolerance


def test_causal_image_attention_changes_the_answer(workdir, tmp_path):
    b = exported(workdir, "gemma3")
    causal = shutil.copytree(b.bundle, tmp_path / "causal")
    manifest = json.loads((causal / MANIFEST_NAME).read_text())
    assert manifest["inputs"]["image"]["layout"]["bidirectional"] is True
    manifest["inputs"]["image"]["layout"]["bidirectional"] = False
    (causal / MANIFEST_NAME).write_text(json.dumps(manifest))
    images = photos(["chelsea"])
    ref = hf_reference(b.model_dir, ONE, {"image": [Image.fromarray(im) for im in images]})
    both_ways, logits = run(b.bundle, ONE, images)
    one_way, causal_logits = run(causal, ONE, images)
    assert both_ways.token_ids == ref.token_ids
    assert one_way.token_ids != ref.token_ids
    assert np.abs(causal_logits - logits).max() > 0.1


def test_an_image_larger_than_one_batch_is_refused(workdir):
    """Both-ways attention needs the image in one micro-batch: a smaller batch is a clear error."""
    from edgebridge.errors import InputError

    b = exported(workdir, "gemma3")
    settings = LlamaSettings.strict(n_batch=8, n_ubatch=8)
    with Pipeline.from_bundle(b.bundle, llm_settings=settings) as pipe:
        with pytest.raises(InputError, match="one batch"):
            pipe.generate(ONE, images=photos(["chelsea"]), max_new_tokens=2)
