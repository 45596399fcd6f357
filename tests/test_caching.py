"""The embedding cache and KV-prefix reuse give the results of recomputing, and do skip work."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from edgebridge import Pipeline
from edgebridge.caching import KVPrefix
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import PROMPT

pytestmark = pytest.mark.slow

REQUESTS = [
    (PROMPT, "chelsea"),
    (PROMPT, "chelsea"),  # the same again: everything reusable
    ("USER: <image>\nWhat is in this image? Answer in detail. ASSISTANT:", "chelsea"),  # a longer follow-up
    (PROMPT, "coffee"),  # another image: only the text before it is reusable
    ("USER: no image, just text ASSISTANT:", None),
]


def _run(pipe, prompt, photo):
    images = [getattr(data, photo)()] if photo else []
    return pipe.generate(prompt, images=images, max_new_tokens=12)


def test_cached_and_uncached_pipelines_agree(clip_llama_f32):
    settings = LlamaSettings.strict()
    with Pipeline.from_bundle(clip_llama_f32.bundle, llm_settings=settings) as cached, \
            Pipeline.from_bundle(clip_llama_f32.bundle, llm_settings=settings, cache_embeddings=False,
                                 reuse_prefix=False) as plain:
        for prompt, photo in REQUESTS:
            a, b = _run(cached, prompt, photo), _run(plain, prompt, photo)
            assert a.token_ids == b.token_ids, (prompt, photo)
            assert b.timings["reused_prefix_positions"] == 0
        np.testing.assert_allclose(cached.prefill_logits(PROMPT, images=[data.chelsea()]),
                                   plain.prefill_logits(PROMPT, images=[data.chelsea()]), atol=1e-4)


def test_reuse_skips_work(clip_llama_f32):
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        first = _run(pipe, *REQUESTS[0])
        again = _run(pipe, *REQUESTS[1])
        assert first.timings["reused_prefix_positions"] == 0
        assert again.timings["reused_prefix_positions"] == again.prompt_tokens - 1  # all but the last position
        assert again.timings["embedding_cache_hits"] == 1 and "encode_image_ms" in again.timings
        longer = _run(pipe, *REQUESTS[2])
        # the previous call's prompt and answer are in the cache; the follow-up shares the prompt up to its text
        assert longer.timings["reused_prefix_positions"] >= 1 + 6 + 64  # BOS, "USER: ", the image
        other = _run(pipe, *REQUESTS[3])
        assert other.timings["embedding_cache_hits"] == 2  # the cat again hit; the coffee did not
        assert 1 <= other.timings["reused_prefix_positions"] < 1 + 6 + 64


def test_kv_prefix_keeps_the_common_part():
    kv = KVPrefix()
    kv.set([1, 2, 3, 4])
    assert kv.keep_for([1, 2, 9]) == 2
    assert kv.keep_for([1, 2, 3, 4]) == 3  # the whole prompt: recompute the last position for its logits
    assert kv.keep_for([7]) == 0
