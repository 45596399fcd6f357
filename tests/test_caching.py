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


def test_items_given_are_keyed_by_their_source_not_hashed_again(clip_llama_f32, monkeypatch):
    """An image the caller gave (an array here) is keyed by its ``source_digest``: neither the encoder's
    input arrays (the embedding cache) nor the embeddings (the KV prefix) are hashed again, 0.37 ms each
    on a 224x224 image's cold call; the follow-up still reuses both."""
    import edgebridge.runtimes.llamacpp.session as session
    import edgebridge.stages as stages

    hashed = []
    for module in (stages, session):
        monkeypatch.setattr(module, "digest", lambda *a, **k: hashed.append(a) or "digest")
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        _run(pipe, *REQUESTS[0])
        again = _run(pipe, *REQUESTS[1])
    assert not hashed
    assert again.timings["embedding_cache_hits"] == 1
    assert again.timings["reused_prefix_positions"] == again.prompt_tokens - 1


def test_kv_prefix_keeps_the_common_part():
    kv = KVPrefix()
    kv.set([1, 2, 3, 4])
    assert kv.keep_for([1, 2, 9]) == 2
    assert kv.keep_for([1, 2, 3, 4]) == 3  # the whole prompt: recompute the last position for its logits
    assert kv.keep_for([7]) == 0


def test_the_same_items_are_not_preprocessed_again(clip_llama_f32, tmp_path, monkeypatch):
    """A follow-up about the same image (a path whose bytes did not change, the same array) takes the
    earlier call's preprocessed item; a file rewritten under the same path is preprocessed again; the
    answers are those of a pipeline without caches."""
    import edgebridge.stages as stages
    from PIL import Image

    calls = []
    real = stages._preprocess
    monkeypatch.setattr(stages, "_preprocess", lambda *a: calls.append(1) or real(*a))
    path = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()).save(path)
    follow_up = "USER: <image>\nWhat is in this image? Answer in detail. ASSISTANT:"
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe, \
            Pipeline.from_bundle(clip_llama_f32.bundle, cache_embeddings=False, reuse_prefix=False) as plain:
        for prompt in (PROMPT, follow_up):
            a = pipe.generate(prompt, images=[str(path)], max_new_tokens=8)
            assert a.token_ids == plain.generate(prompt, images=[str(path)], max_new_tokens=8).token_ids
        assert len(calls) == 3  # the cached pipeline once, the plain one twice
        Image.fromarray(np.ascontiguousarray(data.chelsea()[:, ::-1])).save(path)  # new bytes, same path
        b = pipe.generate(PROMPT, images=[str(path)], max_new_tokens=8)
        assert len(calls) == 4 and b.token_ids == plain.generate(PROMPT, images=[str(path)], max_new_tokens=8).token_ids
        photo = data.coffee()
        pipe.generate(PROMPT, images=[photo], max_new_tokens=4)
        pipe.generate(follow_up, images=[photo.copy()], max_new_tokens=4)
        assert len(calls) == 6  # the array once (its copy is the same content); the plain pipeline's call before


def test_source_digest_names_content_and_declines_what_it_cannot_read(tmp_path):
    from edgebridge.caching import source_digest

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"123"), b.write_bytes(b"123")
    assert source_digest([a]) == source_digest([str(b)]) != source_digest([a], salt="options")
    assert source_digest([a]) != source_digest([a, a]) and source_digest([b"123"]) == source_digest([a])
    arr = np.zeros((2, 3), np.uint8)
    assert source_digest([arr]) == source_digest([arr.copy()]) != source_digest([arr.astype(np.int16)])
    assert source_digest([tmp_path / "missing.png"]) is None and source_digest([tmp_path]) is None
    assert source_digest([[arr, arr]]) is None  # a list of frames: preprocessing runs
    assert source_digest(["a\0b"]) is None  # a name the OS refuses: preprocessing says so
