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
- One graph per type, from that type's own weights (``gguf/weights.py``: the bench Qwen2.5-VL's per-token
  hand-over into q6_k went from top-1 0.882, refused, to 0.922), in the schemes of ``prefill_int8.py``
  fastest first: per-tensor activations, per-token ones (~10% slower, closer to the float graph) where
  those drift beyond the budget, then per-token with 8-bit unsigned weights (slower again, closer again).
  Every graph that passes stays on disk beside the bundle's prefill path until the pair is chosen (the
  kept pair need not be the fastest: within the tie margin, the fewest bytes); the winner is moved there
  and the others removed.
- The GGUF type fixed (``choose_prefill``): the graph is kept only when it measured faster than
  llama.cpp's prefill of the same positions (by more than the tie margin) and fits the memory budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgebridge.errors import ExportError, ParityError, UnsupportedModelError
from edgebridge.exporters.onnx_files import data_file, save_external
from edgebridge.exporters.gguf.export import GGUFCandidate
from edgebridge.exporters.gguf.weights import gguf_weights
from edgebridge.exporters.prefill import PrefillDraft, check_supported, draft_prefill, export_prefill, gate_prefill
from edgebridge.exporters.prefill_int8 import SCHEMES
from edgebridge.exporters.quantize import TIE, QuantPlan, over_memory, smallest_of_best
from edgebridge.exporters.quantize.targets import ANSWER_TOKENS, PROMPT_POSITIONS
from edgebridge.manifest import Artifact

GRAPH = "int8 prefill graph"


def declined(exc: UnsupportedModelError) -> dict[str, Any]:
    """The decision record where no prefill graph can be made for the LLM: llama.cpp prefills."""
    return {"kept": False, "engine": "llama.cpp", "reason": f"no prefill graph: {exc.message}"}


def choose_prefill(text: Any, reference_lm: Callable[[], Any], gguf_path: Path, dst: Path, plan: QuantPlan,
                   used_bytes: int, step: Callable[[str], None]) -> tuple[Artifact | None, dict[str, Any]]:
    """(the prefill artifact if kept, the decision record). ``used_bytes``: weights already kept (encoders
    and the GGUF), counted against the memory budget."""
    try:
        check_supported(text.model_type)
    except UnsupportedModelError as exc:
        return None, declined(exc)
    try:
        art = export_prefill(text, reference_lm(), gguf_path, dst, "int8", plan.budget["llm"], step=step)
    except ExportError as exc:  # beyond the drift budget, or a hand-over llama.cpp's state layout refuses
        _remove(dst)
        return None, {"kept": False, "engine": "llama.cpp", "reason": f"the int8 prefill graph was refused: "
                                                                      f"{exc.message}"}
    speed, size = art.quantization["speed"], art.quantization["bytes"]
    graph_ms, llama_ms, n = speed["prefill_ms"], speed["llamacpp_prefill_ms"], speed["positions"]
    measured = (f"{n} positions: the int8 graph ({art.quantization['scheme']} scheme) + hand-over "
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
              "activations": art.quantization["activations"], "scheme": art.quantization["scheme"],
              "reason": reason}
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
        graphs = None
        try:
            check_supported(self.text.model_type)
            graphs = _Graphs(self, self.reference_lm(), alone)
            for cand in sorted(passing, key=lambda c: alone[c.trial.precision]):
                graphs.try_type(cand)
        except ExportError as exc:  # a text model the graph does not reproduce, or one too large for it
            if graphs is not None:
                graphs.discard()
            self.record = {"kept": False, "engine": "llama.cpp", "reason": f"no prefill graph: {exc.message}"}
            return searched, selection
        options |= {(p, GRAPH): (ms, by_type[p].trial.bytes + graphs.gated[p]["bytes"])
                    for p, ms in graphs.with_graph.items()}
        precision, engine = best = _best(options)
        self.record = self._record(best, options, graphs, searched.trial.precision)
        joint = {**selection, "with_prefill_graph": graphs.with_graph}
        if engine == GRAPH:
            self.graph = graphs.settle(precision, self.dst)
            self.graph.quantization["selection"] = self.record
            joint["reason"] = f"{self.record['reason']} (with llama.cpp's prefill alone: {selection['reason']})"
        else:
            graphs.discard()
        return by_type[precision], joint

    def _record(self, best: tuple[str, str], options: dict[tuple[str, str], tuple[float, int]],
                graphs: "_Graphs", kept_alone: str) -> dict[str, Any]:
        precision, engine = best
        answer = options[best][0]
        measured = f"{len(options)} pairs of GGUF type and prefill engine within the budgets"
        if engine == GRAPH:
            kept = graphs.gated[precision]
            reason = (f"{precision} with the {GRAPH} ({kept['scheme']} scheme, {kept['weights']} "
                      f"weights): {answer:g} ms for a {PROMPT_POSITIONS}-position prompt + "
                      f"{ANSWER_TOKENS} tokens, the best of {measured}; {kept_alone} with llama.cpp's prefill "
                      f"{options[(kept_alone, 'llama.cpp')][0]:g} ms")
        elif graphs.gated:
            fastest = min(graphs.with_graph, key=graphs.with_graph.get)
            reason = (f"llama.cpp: {precision} answers in {answer:g} ms, the best of {measured} (within {TIE:.0%} "
                      f"of the best the fewest bytes); the fastest pair with the graph, {fastest}, "
                      f"{options[(fastest, GRAPH)][0]:g} ms")
        else:
            reason = (f"llama.cpp: the {GRAPH} won no pair ("
                      + "; ".join(f"{p}: {v}" for p, v in graphs.verdicts.items()) + ")")
        record: dict[str, Any] = {"kept": engine == GRAPH, "engine": "onnxruntime+handoff" if engine == GRAPH
                                  else "llama.cpp", "gguf": precision,
                                  "answer_ms": {f"{p}+{e}": ms for (p, e), (ms, _b) in options.items()},
                                  "graph_verdicts": graphs.verdicts, "reason": reason, "gated": graphs.gated}
        if engine == GRAPH:
            g = graphs.gated[precision]
            record |= {"graph_ms": g["prefill_ms"], "llamacpp_ms": g["llamacpp_prefill_ms"], "positions": g["positions"],
                       "graph_bytes": g["bytes"], "activations": g["activations"], "scheme": g["scheme"],
                       "weights": g["weights"]}
        return record


class _Graphs:
    """One ``JointChoice``'s int8 graphs: one per GGUF type that could still win, written from that type's own
    weights (``gguf/weights.py``) and gated into it, in ``prefill_int8.SCHEMES`` order until one passes.
    Each graph that passed stays on disk until the choice is made (as the GGUF candidates do): the pair
    kept may not be the fastest one (within the tie margin, the fewest bytes), so it cannot be settled
    earlier."""

    def __init__(self, choice: JointChoice, reference: Any, alone: dict[str, float]) -> None:
        self.choice, self.reference, self.alone = choice, reference, alone
        self.left = choice.plan.memory_left(choice.used_bytes)
        self.with_graph: dict[str, float] = {}  # answer ms with the graph, per type it passed into
        self.verdicts: dict[str, str] = {}
        self.gated: dict[str, dict[str, Any]] = {}  # per type it passed into: speed, bytes, scheme, weights
        self.passed: dict[str, tuple[PrefillDraft, Artifact]] = {}

    def try_type(self, cand: GGUFCandidate) -> None:
        precision = cand.trial.precision
        decode_ms = 1000.0 * ANSWER_TOKENS / cand.trial.speed["decode_tokens_per_s"]
        if decode_ms >= min(self.alone.values()):
            self.verdicts[precision] = f"not tried: its {ANSWER_TOKENS}-token decode alone takes {decode_ms:.1f} ms"
            return
        refused = ""
        # the graph's weights named by the candidate: a mix's file type says only its base type
        text, _ = gguf_weights(self.choice.text, cand.path)
        for scheme in SCHEMES:
            draft = draft_prefill(text, self.reference, _draft_path(self.choice.dst, precision), "int8",
                                  scheme=scheme, weights=precision, step=self.choice.step)
            over = over_memory(cand.trial.bytes + draft.bytes, self.left)
            if over:
                draft.discard()
                self.verdicts[precision] = refused + f"with the graph, {over}"
                return
            try:
                art = gate_prefill(draft, cand.path, self.choice.plan.budget["llm"], step=self.choice.step)
            except ExportError as exc:
                draft.discard()
                self.verdicts[precision] = refused + f"hand-over refused ({draft.label}): {exc.message}"
                if not isinstance(exc, ParityError):
                    return
                refused = self.verdicts[precision] + "; "
                continue
            self._passed(precision, draft, art, refused, decode_ms)
            return

    def _passed(self, precision: str, draft: PrefillDraft, art: Artifact, refused: str, decode_ms: float) -> None:
        """Record the pair's answer time and keep its graph. The time saved per position is measured in the
        gate, the prompt's time in the type search: two measurements, and on a tiny model in CI the saving
        came out larger than the whole prompt (a negative answer time), so an answer takes at least its decode."""
        g = art.quantization["speed"]
        saved = PROMPT_POSITIONS * (g["llamacpp_prefill_ms"] - g["prefill_ms"]) / g["positions"]
        self.with_graph[precision] = round(max(self.alone[precision] - saved, decode_ms), 3)
        self.gated[precision] = {**g, "bytes": draft.bytes, "activations": draft.activations,
                                 "scheme": draft.scheme, "weights": draft.method["weights"]}
        self.verdicts[precision] = refused + (f"hand-over within budget ({draft.label}); {g['positions']} positions: "
                                              f"graph + hand-over {g['prefill_ms']:g} ms, llama.cpp "
                                              f"{g['llamacpp_prefill_ms']:g} ms")
        draft.graph.close()  # its session holds the int8 weights in memory; the choice needs only the files
        self.passed[precision] = (draft, art)

    def settle(self, precision: str, dst: Path) -> Artifact:
        """The graph for ``precision`` moved to the bundle's prefill path (its artifact names those files);
        the others deleted."""
        draft, art = self.passed.pop(precision)
        self.discard()
        save_external(draft.path, dst)
        draft.discard()
        art.files = [dst.name, data_file(dst).name]
        return art

    def discard(self) -> None:
        for draft, _art in self.passed.values():
            draft.discard()
        self.passed.clear()


def _draft_path(dst: Path, precision: str) -> Path:
    """Where the graph for one GGUF type is written while the choice runs (beside the bundle's path)."""
    return dst.with_name(f"{dst.stem}.{precision}{dst.suffix}")


def _best(options: dict[tuple[str, str], tuple[float, int]]) -> tuple[str, str]:
    """The pair with the best answer time; within the tie margin of it, the one with the fewest bytes."""
    return smallest_of_best({k: ms for k, (ms, _b) in options.items()}, {k: b for k, (_ms, b) in options.items()})
