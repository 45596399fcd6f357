"""runtimes/llamacpp/patches/0003: a decoded token's matrix-vector products are split into one contiguous run
of rows per thread. Every row is still computed once by the same dot product, so decoding with two threads
gives one thread's logits bit for bit; a row skipped or computed twice by the split would not."""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings


def _greedy_steps(path, threads: int, steps: int = 8) -> list[np.ndarray]:
    with LlamaCppLLM(path, LlamaSettings(n_ctx=128, threads=threads)) as llm:
        logits = [np.array(llm.eval_tokens(list(range(1, 40))))]
        for _ in range(steps):
            logits.append(np.array(llm.eval_tokens([int(np.argmax(logits[-1]))])))
    return logits


@pytest.mark.parametrize("precision", ["q8_0", "q6_k"])
def test_two_threads_decode_one_threads_logits_bit_for_bit(wide_llama_gguf, precision):
    from edgebridge.exporters.quantize.gguf_quant import quantize_gguf

    f32 = wide_llama_gguf
    path = f32.parent / f"llm-{precision}.gguf"
    if not path.exists():
        quantize_gguf(f32, path, precision)
    one, two = _greedy_steps(path, threads=1), _greedy_steps(path, threads=2)
    assert all(np.isfinite(step).all() for step in two)
    for i, (a, b) in enumerate(zip(one[1:], two[1:]), start=1):  # the decode steps (the prompt is a batch)
        assert np.array_equal(a, b), f"{precision} step {i}: max diff {np.abs(a - b).max()}"
