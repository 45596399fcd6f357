"""A latency target's llama.cpp runtime settings, measured at export on this machine.

Flash attention's effect on decode depends on the CPU and the model. On the AVX2-only machine the
bench LLaVA's 12 x 768 llama decoded slower with it once the context grew (112 vs 86 tok/s at 357
positions, which is why ``LlamaSettings`` keeps it off); on this AVX-512 machine the bench LLaVA and
Qwen2.5-VL GGUFs decode 5-7% faster with it at 256 and 1024 positions (medians of 9 paired rounds;
single pairs ranged 0.87-1.19x). So with a ``latency`` target the export times greedy decode with it
off and on after prompts of ``CONTEXTS`` positions (each setting loaded and prompted once per context:
the GGUF is held twice while they are timed), the two back to back in each of ``ROUNDS`` rounds (their
order alternating), and records it on when the median of the paired ratios is above 1 at every context.
Pairs, not separate medians: this machine's slow spells last tens of seconds, and with 3 rounds of
separate medians the same GGUF was recorded off (on/off 0.90x at 256 positions) at one export and 1.03x
at the next. The runtime applies the recorded setting unless the caller passes its own llama settings
(``Pipeline.from_bundle(llm_settings=...)``). The prefill graph's values are then put in the layout
that setting keeps (``match_values_layout``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

CONTEXTS = (256, 1024)  # an image prompt, and a conversation a few turns on
ROUNDS = 7
STEPS = 32


def choose_runtime(gguf: Path) -> dict[str, Any]:
    """The ``runtime`` record for the GGUF's details: ``flash_attn``, what was measured and why."""
    rates: dict[tuple[int, bool], list[float]] = {}
    ratios: dict[int, list[float]] = {n: [] for n in CONTEXTS}
    for positions in CONTEXTS:
        with _Prompted(gguf, positions, False) as off, _Prompted(gguf, positions, True) as on:
            for r in range(ROUNDS):
                pair = {}
                for flash, llm in (((False, off), (True, on)) if r % 2 == 0 else ((True, on), (False, off))):
                    pair[flash] = llm.decode_rate()
                    rates.setdefault((positions, flash), []).append(pair[flash])
                ratios[positions].append(pair[True] / pair[False])
    measured = {str(n): {"off": round(statistics.median(rates[(n, False)]), 1),
                         "on": round(statistics.median(rates[(n, True)]), 1),
                         "on_vs_off": round(statistics.median(ratios[n]), 3)} for n in CONTEXTS}
    faster = all(m["on_vs_off"] > 1 for m in measured.values())
    figures = ", ".join(f"{n} positions {m['on_vs_off']:g}x ({m['on']:g} vs {m['off']:g} tok/s)"
                        for n, m in measured.items())
    reason = (f"flash attention {'on' if faster else 'off'}: decode with it vs without, medians of {ROUNDS} "
              f"paired rounds, after {figures}" + ("" if faster else " (on only when faster at every context)"))
    return {"flash_attn": faster, "decode_tokens_per_s": measured, "reason": reason}


class _Prompted:
    """The GGUF loaded with flash attention on or off and a ``positions``-token prompt decoded once;
    each ``decode_rate`` drops the previous round's answer and decodes from the same cached prompt.
    Loading and prefilling once per setting and context, not per round: SmolLM2-135M's choice took
    262 s with 28 loads and prompts, 51 s with 4 (AVX2-only 2-core VM; the same decision)."""

    def __init__(self, gguf: Path, positions: int, flash: bool) -> None:
        self.gguf, self.positions, self.flash = gguf, positions, flash

    def __enter__(self) -> "_Prompted":
        settings = LlamaSettings(n_ctx=self.positions + STEPS + 8, first_cells=None, flash_attn=self.flash)
        self.llm = LlamaCppLLM(self.gguf, settings)
        try:
            ids = (np.arange(self.positions) * 7 + 3) % (self.llm.n_vocab - 1) + 1
            self.first = int(np.argmax(self.llm.eval_tokens(ids.tolist())))
        except BaseException:
            self.llm.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.llm.close()

    def decode_rate(self) -> float:
        """Greedy decode tokens/s over ``STEPS`` steps after the prompt."""
        self.llm.reset(self.positions)
        token, start = self.first, time.perf_counter()
        for _ in range(STEPS):
            token = int(np.argmax(self.llm.step(token)))
        return STEPS / (time.perf_counter() - start)


def match_values_layout(graph: Path, flash_attn: bool) -> str:
    """Give the prefill graph's values in the layout llama.cpp keeps them with ``flash_attn``, so the
    hand-over copies them straight: one row per position (as ``prefill.py`` writes them) with it on, per
    channel (a Transpose appended to the ``v`` output, ``[L, n, C] -> [L, C, n]``) with it off. The
    runtime reads either layout (``PrefillGraph.v_per_position``) and gives the same state; this is
    speed only. Bench LLaVA, flash attention off, graph run + state build, 15 interleaved rounds:
    33.1 ms per position, 32.0 ms per channel (onnxruntime's Transpose inside the graph costs less than
    numpy's transposed copy of 12 x [219, 768] f16). Returns the layout for the manifest."""
    if flash_attn:
        return "per position"
    import onnx
    from onnx import helper

    model = onnx.load(str(graph), load_external_data=False)  # the weights stay in their data file
    out = next(o for o in model.graph.output if o.name == "v")
    for node in model.graph.node:
        node.output[:] = ["v_rows" if name == "v" else name for name in node.output]
    model.graph.node.append(helper.make_node("Transpose", ["v_rows"], ["v"], perm=[0, 2, 1], name="values_per_channel"))
    dims = out.type.tensor_type.shape.dim
    positions, channels = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
    positions.CopyFrom(dims[1])
    channels.CopyFrom(dims[2])
    dims[1].CopyFrom(channels)
    dims[2].CopyFrom(positions)
    onnx.save(model, str(graph))
    return "per channel"
