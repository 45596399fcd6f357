"""A latency target's choice of prefill engine: the int8 prefill graph with the KV hand-over, or llama.cpp.

When ``--prefill`` is not given and the profile target is ``latency``, the export writes the int8 graph
(held to the same gates as ``--prefill int8``: transformers, then the hand-over into the bundle's GGUF
against llama.cpp's own prefill, within the LLM drift budget). Either way the GGUF's
``details.prefill_choice`` says what was measured and why. A text model the graph does not reproduce (the
gemma decoders, Qwen3-VL ...) keeps llama.cpp, with the reason; so does a graph beyond the drift budget.

- The GGUF type searched too (``JointChoice``): type and engine are one choice. Picking the type first
  and gating the graph against it alone can miss the best pair: a type a little slower with llama.cpp's
  prefill may take the graph's hand-over when the fastest type refuses it, and the pair then answers
  sooner (the bench Qwen2.5-VL's int8 graph, on the gate's old 18-sample set, was refused into q6_k and
  passed into q8_0, 213 vs 272 ms by the ranking; on the 102-sample set it is refused into both). So every
  type within the budgets that could still win is gated, each pair ranked by the answer time
  (``targets.py``) with the graph's measured saving per prompt position, and the best kept (ties within
  the margin: the fewest bytes, so llama.cpp alone).
- Two int8 graphs (``prefill_int8.py``): per-tensor activations (faster) are gated first; when that graph
  passes into no type and drifted beyond the budget in some, the per-token one (~10% slower, closer to
  the float graph) is written in its place and gated into those. Only one graph is on disk at a time, so
  a per-tensor pass in one type ends the ladder: a per-token pair that might have ranked better elsewhere
  is not tried (the bench Qwen2.5-VL refuses per-tensor in every type; the bench LLaVA passes it).
- The GGUF type fixed (``choose_prefill``): the graph is kept only when it measured faster than
  llama.cpp's prefill of the same positions (by more than the tie margin) and fits the memory budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgebridge.errors import ExportError, ParityError, UnsupportedModelError
from edgebridge.exporters.onnx_files import data_file
from edgebridge.exporters.gguf.export import GGUFCandidate
from edgebridge.exporters.prefill import PrefillDraft, check_supported, draft_prefill, export_prefill, gate_prefill
from edgebridge.exporters.quantize import TIE, QuantPlan, over_memory, smallest_of_best
from edgebridge.exporters.quantize.targets import ANSWER_TOKENS, PROMPT_POSITIONS
from edgebridge.manifest import Artifact

GRAPH = "int8 prefill graph"


def choose_prefill(text: Any, reference_lm: Callable[[], Any], gguf_path: Path, dst: Path, plan: QuantPlan,
                   used_bytes: int, step: Callable[[str], None]) -> tuple[Artifact | None, dict[str, Any]]:
    """(the prefill artifact if kept, the decision record). ``used_bytes``: weights already kept (encoders
    and the GGUF), counted against the memory budget."""
    try:
        check_supported(text.model_type)
    except UnsupportedModelError as exc:
        return None, {"kept": False, "engine": "llama.cpp", "reason": f"no prefill graph: {exc.message}"}
    try:
        art = export_prefill(text, reference_lm(), gguf_path, dst, "int8", plan.budget["llm"], step=step)
    except ExportError as exc:  # beyond the drift budget, or a hand-over llama.cpp's state layout refuses
        _remove(dst)
        return None, {"kept": False, "engine": "llama.cpp", "reason": f"the int8 prefill graph was refused: "
                                                                      f"{exc.message}"}
    speed, size = art.quantization["speed"], art.quantization["bytes"]
    graph_ms, llama_ms, n = speed["prefill_ms"], speed["llamacpp_prefill_ms"], speed["positions"]
    measured = (f"{n} positions: the int8 graph ({art.quantization['activations']} activations) + hand-over "
                f"{graph_ms:g} ms, llama.cpp {llama_ms:g} ms on this machine")
    over = over_memory(size, plan.memory_left(used_bytes))
    if graph_ms * (1 + TIE) >= llama_ms:
        kept, reason = False, f"llama.cpp prefills as fast or faster ({measured})"
    elif over:
        kept, reason = False, f"faster ({measured}), but its {over}"
    else:
        kept, reason = True, f"faster ({measured}); {size / 2**20:.1f} MB of int8 weights beside the GGUF"
    record = {"kept": kept, "engine": "onnxruntime+handoff" if kept else "llama.cpp", "graph_ms": graph_ms,
              "llamacpp_ms": llama_ms, "positions": n, "graph_bytes": size,
              "activations": art.quantization["activations"], "reason": reason}
    if not kept:
        _remove(dst)
        return None, record
    art.quantization["selection"] = record
    return art, record


def _remove(graph: Path) -> None:
    graph.unlink(missing_ok=True)
    data_file(graph).unlink(missing_ok=True)


class JointChoice:
    """The GGUF type and the prefill engine chosen together (a ``gguf.export.Pairing``); one per export.

    After the call, ``graph`` is the prefill artifact if a pair with it won, and ``record`` the decision
    (None when the search had nothing to choose, so the export falls back to ``choose_prefill``)."""

    def __init__(self, text: Any, reference_lm: Callable[[], Any], dst: Path, plan: QuantPlan, used_bytes: int,
                 step: Callable[[str], None]) -> None:
        self.text, self.reference_lm, self.dst, self.plan, self.used_bytes = text, reference_lm, dst, plan, used_bytes
        self.step = step
        self.graph: Artifact | None = None
        self.record: dict[str, Any] | None = None

    def __call__(self, searched: GGUFCandidate, passing: list[GGUFCandidate], selection: dict[str, Any]
                 ) -> tuple[GGUFCandidate, dict[str, Any]]:
        by_type = {c.trial.precision: c for c in passing}
        alone = selection["within_budget"]  # answer ms of each type with llama.cpp's prefill
        options = {(p, "llama.cpp"): (ms, by_type[p].trial.bytes) for p, ms in alone.items()}
        kept_alone = searched.trial.precision
        try:
            check_supported(self.text.model_type)
            draft = draft_prefill(self.text, self.reference_lm(), self.dst, "int8", step=self.step)
        except ExportError as exc:  # a text model the graph does not reproduce, or one too large for it
            _remove(self.dst)
            self.record = {"kept": False, "engine": "llama.cpp", "reason": f"no prefill graph: {exc.message}"}
            return searched, selection
        draft, (with_graph, verdicts, gates) = self._gate_ladder(draft, passing, alone)
        options |= {(p, GRAPH): (ms, by_type[p].trial.bytes + draft.bytes) for p, ms in with_graph.items()}
        precision, engine = best = _best(options)
        self.record = self._record(best, options, verdicts, gates, draft, kept_alone)
        joint = {**selection, "with_prefill_graph": with_graph}
        if engine == GRAPH:
            self.graph = gates[precision]
            self.graph.quantization["selection"] = self.record
            joint["reason"] = f"{self.record['reason']} (with llama.cpp's prefill alone: {selection['reason']})"
        else:
            draft.discard()
        return by_type[precision], joint

    def _gate_ladder(self, draft: PrefillDraft, passing: list[GGUFCandidate], alone: dict[str, float]):
        """Gate the per-tensor graph; when it passed into no type and drifted beyond the budget in some,
        write the per-token graph (``prefill_int8.py``) in its place and gate it into those. Returns the
        draft gated last and its (answer ms with the graph, verdicts (the per-tensor ones kept in front),
        gated artifacts)."""
        with_graph, verdicts, gates, drifted = self._gate_all(draft, passing, alone)
        if with_graph or not drifted:
            return draft, (with_graph, verdicts, gates)
        draft.discard()
        draft = draft_prefill(self.text, self.reference_lm(), self.dst, "int8", activations="per-token",
                              step=self.step)
        with_graph, second, gates, _ = self._gate_all(draft, drifted, alone)
        return draft, (with_graph, verdicts | {p: f"{verdicts[p]}; per-token: {v}" for p, v in second.items()}, gates)

    def _gate_all(self, draft: PrefillDraft, passing: list[GGUFCandidate], alone: dict[str, float]):
        """Gate the graph against every type that could beat the best answer with it: (answer ms with the
        graph per type that passed, verdict per type, the gated artifact per type that passed, the types
        whose hand-over drifted beyond the budget)."""
        best_alone = min(alone.values())
        left = self.plan.memory_left(self.used_bytes)
        with_graph: dict[str, float] = {}
        verdicts: dict[str, str] = {}
        gates: dict[str, Artifact] = {}
        drifted: list[GGUFCandidate] = []
        for cand in sorted(passing, key=lambda c: alone[c.trial.precision]):
            precision, speed = cand.trial.precision, cand.trial.speed
            decode_ms = 1000.0 * ANSWER_TOKENS / speed["decode_tokens_per_s"]
            over = over_memory(cand.trial.bytes + draft.bytes, left)
            if decode_ms >= best_alone:
                verdicts[precision] = f"not tried: its {ANSWER_TOKENS}-token decode alone takes {decode_ms:.1f} ms"
            elif over:
                verdicts[precision] = f"with the graph, {over}"
            else:
                try:
                    gates[precision] = gate_prefill(draft, cand.path, self.plan.budget["llm"], step=self.step)
                except ExportError as exc:
                    verdicts[precision] = f"hand-over refused: {exc.message}"
                    if isinstance(exc, ParityError):
                        drifted.append(cand)
                    continue
                g = gates[precision].quantization["speed"]
                saved = PROMPT_POSITIONS * (g["llamacpp_prefill_ms"] - g["prefill_ms"]) / g["positions"]
                with_graph[precision] = round(alone[precision] - saved, 3)
                verdicts[precision] = (f"hand-over within budget ({draft.activations} activations); {g['positions']} "
                                       f"positions: graph + hand-over {g['prefill_ms']:g} ms, llama.cpp "
                                       f"{g['llamacpp_prefill_ms']:g} ms")
        return with_graph, verdicts, gates, drifted

    def _record(self, best: tuple[str, str], options: dict[tuple[str, str], tuple[float, int]],
                verdicts: dict[str, str], gates: dict[str, Artifact], draft: PrefillDraft, kept_alone: str
                ) -> dict[str, Any]:
        precision, engine = best
        answer = options[best][0]
        measured = f"{len(options)} pairs of GGUF type and prefill engine within the budgets"
        if engine == GRAPH:
            reason = (f"{precision} with the {GRAPH} ({draft.activations} activations): {answer:g} ms for a "
                      f"{PROMPT_POSITIONS}-position prompt + "
                      f"{ANSWER_TOKENS} tokens, the best of {measured}; {kept_alone} with llama.cpp's prefill "
                      f"{options[(kept_alone, 'llama.cpp')][0]:g} ms")
        elif gates:
            fastest = min((p for p, e in options if e == GRAPH), key=lambda p: options[(p, GRAPH)][0])
            reason = (f"llama.cpp: {precision} answers in {answer:g} ms, the best of {measured} (within {TIE:.0%} "
                      f"of the best the fewest bytes); the fastest pair with the graph, {fastest}, "
                      f"{options[(fastest, GRAPH)][0]:g} ms")
        else:
            reason = f"llama.cpp: the {GRAPH} won no pair (" + "; ".join(f"{p}: {v}" for p, v in verdicts.items()) + ")"
        record: dict[str, Any] = {"kept": engine == GRAPH, "engine": "onnxruntime+handoff" if engine == GRAPH
                                  else "llama.cpp", "gguf": precision, "graph_bytes": draft.bytes,
                                  "activations": draft.activations,
                                  "answer_ms": {f"{p}+{e}": ms for (p, e), (ms, _b) in options.items()},
                                  "graph_verdicts": verdicts, "reason": reason,
                                  "gated": {p: a.quantization["speed"] for p, a in gates.items()}}
        gated = gates.get(precision)
        if gated is not None:
            g = gated.quantization["speed"]
            record |= {"graph_ms": g["prefill_ms"], "llamacpp_ms": g["llamacpp_prefill_ms"], "positions": g["positions"]}
        return record


def _best(options: dict[tuple[str, str], tuple[float, int]]) -> tuple[str, str]:
    """The pair with the best answer time; within the tie margin of it, the one with the fewest bytes."""
    return smallest_of_best({k: ms for k, (ms, _b) in options.items()}, {k: b for k, (_ms, b) in options.items()})
