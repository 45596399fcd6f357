"""A latency target's llama.cpp runtime settings, measured at export on this machine.

Flash attention's effect on decode depends on the CPU and the model. On the AVX2-only machine the
bench LLaVA's 12 x 768 llama decoded slower with it once the context grew (112 vs 86 tok/s at 357
positions, which is why ``LlamaSettings`` keeps it off); on this AVX-512 machine the same GGUF decodes
7-13% faster with it at 200, 700 and 1500 positions, and the bench Qwen2.5-VL's qwen2 no differently.
So with a ``latency`` target the export times greedy decode with it off and on after prompts of
``CONTEXTS`` positions (``ROUNDS`` alternating rounds, medians) and records it on only when it is
faster by more than the tie margin at every one of them. The runtime applies the recorded setting
unless the caller passes its own llama settings (``Pipeline.from_bundle(llm_settings=...)``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.exporters.quantize import TIE
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

CONTEXTS = (256, 1024)  # an image prompt, and a conversation a few turns on
ROUNDS = 3
STEPS = 32


def choose_runtime(gguf: Path) -> dict[str, Any]:
    """The ``runtime`` record for the GGUF's details: ``flash_attn``, what was measured and why."""
    rates: dict[tuple[int, bool], list[float]] = {}
    for _ in range(ROUNDS):
        for positions in CONTEXTS:
            for flash in (False, True):
                rates.setdefault((positions, flash), []).append(decode_rate(gguf, positions, flash))
    measured = {str(n): {"off": round(statistics.median(rates[(n, False)]), 1),
                         "on": round(statistics.median(rates[(n, True)]), 1)} for n in CONTEXTS}
    faster = all(m["on"] > m["off"] * (1 + TIE) for m in measured.values())
    figures = ", ".join(f"{n} positions {m['on']:g} vs {m['off']:g}" for n, m in measured.items())
    reason = (f"flash attention {'on' if faster else 'off'}: decode tok/s with it vs without after {figures}"
              + ("" if faster else f" (on only when faster by more than {TIE:.0%} at every context)"))
    return {"flash_attn": faster, "decode_tokens_per_s": measured, "reason": reason}


def decode_rate(gguf: Path, positions: int, flash: bool) -> float:
    """Greedy decode tokens/s over ``STEPS`` steps after a ``positions``-token prompt."""
    with LlamaCppLLM(gguf, LlamaSettings(n_ctx=positions + STEPS + 8, first_cells=None, flash_attn=flash)) as llm:
        ids = (np.arange(positions) * 7 + 3) % (llm.n_vocab - 1) + 1
        token = int(np.argmax(llm.eval_tokens(ids.tolist())))
        start = time.perf_counter()
        for _ in range(STEPS):
            token = int(np.argmax(llm.step(token)))
        return STEPS / (time.perf_counter() - start)
