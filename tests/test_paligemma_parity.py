"""PaliGemma end to end: the image before ``<bos>``, a newline after the prompt, prefix-LM attention.

A tiny seeded PaliGemma 2 (``make-tiny paligemma``: 64 px SigLIP, 64 image tokens, a 2-layer gemma2 text
model with soft-capped attention, PaliGemma's 1152 ``<loc>``/``<seg>`` tokens), f32 GGUF, strict llama.cpp
settings. Through both encoder engines the 16 greedy ids equal transformers' ``generate`` for the
processor's prompt (no placeholder: the processor puts the image first). The whole prompt attends both
ways (one non-causal llama.cpp batch of embeddings, text rows from the GGUF's table); with the manifest's
``prefix_lm`` switched off the answer changes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge import Pipeline
from edgebridge.errors import PromptError
from edgebridge.manifest import MANIFEST_NAME
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported
from tests.reference import hf_reference, strict_run

COVERS_FAMILIES = ["paligemma"]
pytestmark = pytest.mark.slow

PROMPTS = ["caption en", "What is in this image?"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_transformers(workdir, photo, prompt, backend):
    b = exported(workdir, "paligemma")
    ref = hf_reference(b.model_dir, prompt, {"image": [Image.fromarray(photo)]})
    result, logits = strict_run(b.bundle, prompt, [photo], backend)
    assert result.token_ids == ref.token_ids
    assert len(ref.token_ids) == 16 and len(set(ref.token_ids)) >= 3
    assert result.prompt_tokens == len(ref.prompt_ids)
    tolerance = b.manifest.components["llm"].artifacts["gguf"].parity.tolerance["max_abs"]
    assert np.abs(logits - ref.first_logits).max() <= tolerance


def test_causal_prompt_attention_changes_the_answer(workdir, photo, tmp_path):
    b = exported(workdir, "paligemma")
    causal = shutil.copytree(b.bundle, tmp_path / "causal")
    manifest = json.loads((causal / MANIFEST_NAME).read_text())
    assert manifest["prompt"]["prefix_lm"] is True
    manifest["prompt"]["prefix_lm"] = False
    (causal / MANIFEST_NAME).write_text(json.dumps(manifest))
    both_ways, logits = strict_run(b.bundle, PROMPTS[0], [photo])
    one_way, causal_logits = strict_run(causal, PROMPTS[0], [photo])
    assert both_ways.token_ids != one_way.token_ids
    assert np.abs(causal_logits - logits).max() > 0.1


def test_a_second_call_equals_a_fresh_pipeline(workdir, photo):
    """No KV-prefix reuse for prefix-LM prompts (every prompt row sees the whole prompt): a follow-up with
    the same image answers as a fresh pipeline does."""
    b = exported(workdir, "paligemma")
    with Pipeline.from_bundle(b.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        pipe.generate(PROMPTS[0], images=[photo], max_new_tokens=4)
        second = pipe.generate(PROMPTS[1], images=[photo], max_new_tokens=16)
    fresh, _ = strict_run(b.bundle, PROMPTS[1], [photo])
    assert second.token_ids == fresh.token_ids


def test_a_placeholder_in_the_prompt_is_refused(workdir, photo):
    b = exported(workdir, "paligemma")
    with Pipeline.from_bundle(b.bundle) as pipe:
        with pytest.raises(PromptError, match="before the whole prompt"):
            pipe.generate("<image>caption en", images=[photo], max_new_tokens=2)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_two_photos_of_different_sizes_match_transformers(workdir, photo, backend):
    """Both images before ``<bos>``, in order, the whole prompt attending both ways."""
    b = exported(workdir, "paligemma")
    images = [photo, data.astronaut()[::2, ::3]]
    ref = hf_reference(b.model_dir, PROMPTS[0], {"image": [Image.fromarray(im) for im in images]})
    with Pipeline.from_bundle(b.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(PROMPTS[0], images=images, max_new_tokens=16)
    assert result.prompt_tokens == len(ref.prompt_ids) == 2 * 64 + 9
    assert result.token_ids == ref.token_ids and len(set(ref.token_ids)) >= 3


def test_token_rows_read_quantized_tables(workdir, tmp_path):
    """The prefix-LM path reads text rows from the GGUF itself: f32 rows exactly, q8_0 rows dequantized
    (within q8_0's step of the f32 ones)."""
    from edgebridge.exporters.quantize.gguf_quant import quantize_gguf
    from edgebridge.runtimes.llamacpp.token_rows import TokenRows

    b = exported(workdir, "paligemma")
    f32 = b.bundle / b.manifest.llm.artifacts["gguf"].files[0]
    quantize_gguf(f32, tmp_path / "q8.gguf", "q8_0")
    ids = [0, 2, 5, 100, 1500]
    exact, q8 = TokenRows(f32).rows(ids), TokenRows(tmp_path / "q8.gguf").rows(ids)
    assert exact.dtype == q8.dtype == np.float32 and exact.shape == q8.shape == (5, 64)
    step = np.abs(exact).max(axis=1, keepdims=True) / 127  # q8_0: 32-value blocks, one scale each
    assert (np.abs(q8 - exact) <= step).all() and not np.array_equal(q8, exact)


def test_the_batch_holds_two_images_of_a_two_way_prompt(workdir):
    """Rows that attend both ways share one micro-batch: the session makes room for two images' tokens
    (and text) within the context, whatever smaller batch was asked."""
    from edgebridge.bundle import Bundle
    from edgebridge.runtimes.llamacpp.session import _batch_for_two_way_attention

    bundle = Bundle.open(exported(workdir, "paligemma").bundle)
    small = LlamaSettings(n_ctx=1024, n_batch=64, n_ubatch=32)
    sized = _batch_for_two_way_attention(bundle, small)
    assert (sized.n_batch, sized.n_ubatch) == (128, 128)  # 2 x 64 image tokens
    assert _batch_for_two_way_attention(bundle, LlamaSettings()) == LlamaSettings()  # 512 already holds them
    with Pipeline.from_bundle(exported(workdir, "paligemma").bundle, llm_settings=small) as pipe:
        assert pipe.generate(PROMPTS[0], images=[data.chelsea()], max_new_tokens=2).prompt_tokens == 73
