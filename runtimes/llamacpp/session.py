"""``LLMSession``: the LLM as the pipeline sees it: tokens, a prompt plan in, logits out.

The session owns one llama.cpp context (``LlamaCppLLM``) and decides, once at load, how prompts
are prefilled:

- ``llama.cpp``: the plan's runs are fed in order, token ids and media embeddings alike;
- ``onnxruntime+handoff``: a bundle exported with ``--prefill`` carries the LLM's prefill graph; a
  conversation's first prompt (empty cache, at most ``MAX_POSITIONS``) runs through it and its KV
  cache is handed to llama.cpp (``kv_handoff``). Where the graph does not fit this context, the
  session prefills with llama.cpp and ``warnings`` says why.

It also keeps the KV-cache prefix across calls (``reuse_prefix``): what each cached position holds
(a token id, or row r of an embedding run with a given digest); a new prompt keeps the longest
common prefix and prefills only the rest. Results are the same as prefilling everything (tested).
A kept prefix means llama.cpp prefills the rest (the graph starts at position 0), so where the graph
would take the whole prompt, the prefix is kept only when llama.cpp's prefill of the rest is faster
than the graph's of everything, by the rates the export measured (``PrefillSpeed``). Measured on the
bench Qwen2.5-VL: a new image after the same chat header kept 3 positions and prefilled the other
~300 with llama.cpp, 92-100 ms against 44 ms through the graph (a whole first token 230 vs 178 ms).

Nothing outside this package touches ctypes, llama.cpp's private handles or the hand-over.
Imports no torch and no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Mapping

import numpy as np

from edgebridge.bundle import Bundle
from edgebridge.caching import KVPrefix, digest
from edgebridge.errors import BackendUnavailableError, EmbeddingShapeError, InputError, NonFiniteError
from edgebridge.plan import MediaRun, PromptPlan, TextRun
from edgebridge.runtimes.llamacpp.kv_handoff import HandoffUnavailable, KVHandoff, PendingState, PrefillGraph
from edgebridge.runtimes.llamacpp.llm import LlamaCppLLM, LlamaSettings
from edgebridge.runtimes.llamacpp.token_rows import TokenRows
from edgebridge.runtimes.registry import DeviceReport

LLAMACPP = "llama.cpp"
HANDOFF = "onnxruntime+handoff"
MediaEmbeddings = Mapping[tuple[str, int], np.ndarray]  # (modality, run index) -> [n, D]


@dataclass(frozen=True)
class PrefillSpeed:
    """The export's timing of one text prompt of ``positions`` positions: through the graph and the
    hand-over, and through llama.cpp's own prefill (same GGUF, same machine)."""

    positions: int
    graph_ms: float
    llamacpp_ms: float

    @classmethod
    def from_record(cls, speed: Mapping[str, object] | None) -> "PrefillSpeed | None":
        """From the prefill artifact's ``quantization.speed``; None when it is missing or not positive."""
        try:
            made = cls(int(speed["positions"]), float(speed["prefill_ms"]), float(speed["llamacpp_prefill_ms"]))
        except (TypeError, KeyError, ValueError):
            return None
        return made if min(made.positions, made.graph_ms, made.llamacpp_ms) > 0 else None

    def graph_beats_reuse(self, n_positions: int, kept: int) -> bool:
        """Whether the graph's prefill of all ``n_positions`` is faster than llama.cpp's of the ones after
        ``kept`` (both taken as linear in positions: at prompt lengths attention is a small share)."""
        return n_positions * self.graph_ms < (n_positions - kept) * self.llamacpp_ms

    def describe(self) -> str:
        return (f"a kept prefix yields to the graph when its prefill of the whole prompt is faster: "
                f"{self.graph_ms:g} ms vs llama.cpp {self.llamacpp_ms:g} ms for {self.positions} positions at export")


@dataclass(frozen=True)
class PrefillGraphSpec:
    """Where a bundle's prefill graph is, the precision of its weights and its measured speed."""

    path: Path
    precision: str
    speed: PrefillSpeed | None = None


@dataclass(frozen=True)
class PrefillResult:
    """What one prefill did: the last position's logits ``[V]``, the engine that ran, and how many
    positions were kept from the previous call's KV cache."""

    logits: np.ndarray
    engine: str
    reused_positions: int


class LLMSession:
    """One llama.cpp context, the prefill strategy chosen at load, and the KV-prefix record."""

    def __init__(self, llm: LlamaCppLLM, handoff: KVHandoff | None, *, reuse_prefix: bool = True,
                 warnings: list[str] | None = None, token_rows: TokenRows | None = None,
                 prefill_speed: PrefillSpeed | None = None) -> None:
        self.engine = llm
        self.handoff = handoff
        # None: no measured rates, a shared prefix is always kept (bundles exported before they were recorded)
        self.prefill_speed = prefill_speed if handoff is not None else None
        # prefix-LM bundles (PaliGemma): the whole prompt is one non-causal batch of embeddings
        self.token_rows = token_rows
        self.warnings = list(warnings or [])
        self._kv = KVPrefix() if reuse_prefix else None
        # a call produced NaN / Inf logits since the cache's tensors were last zeroed: its cells may hold
        # non-finite values, which the next fresh prompt must not attend to even masked (``LlamaCppLLM.reset``)
        self._buffers_suspect = False
        # the last prompt's cache from the prefill graph, not yet written into the context: the first token
        # comes from the graph's logits, the cache goes in when the context is next used (``_install``)
        self._pending: PendingState | None = None
        llm.report.details["prefill"] = handoff.describe() if handoff else {"engine": LLAMACPP}
        if self.prefill_speed is not None and reuse_prefix:
            llm.report.details["prefill"]["prefix_rule"] = self.prefill_speed.describe()

    @classmethod
    def open(cls, gguf: Path, settings: LlamaSettings, *, expect_architecture: str | None = None,
             expect_n_embd: int | None = None, prefill_graph: PrefillGraphSpec | None = None,
             reuse_prefix: bool = True, prefix_lm: bool = False) -> "LLMSession":
        """Load the GGUF (validated first) and, when given, bind the prefill graph to its context.
        ``prefix_lm``: the prompt attends both ways (PaliGemma); no prefill graph, no KV-prefix reuse (a
        changed prompt changes every prompt row)."""
        llm = LlamaCppLLM(gguf, settings, expect_architecture=expect_architecture, expect_n_embd=expect_n_embd)
        warnings = []
        if llm.report.fallback_reason:
            warnings.append(f"llm: {llm.report.fallback_reason}; ran on {llm.report.executed}.")
        if prefix_lm:
            return cls(llm, None, reuse_prefix=False, warnings=warnings, token_rows=TokenRows(gguf))
        handoff = None
        if prefill_graph is not None:
            graph = PrefillGraph(prefill_graph.path, threads=settings.threads, precision=prefill_graph.precision)
            try:
                handoff = KVHandoff.attach(llm, graph)
            except HandoffUnavailable as exc:
                warnings.append(f"llm prefill: {exc}; llama.cpp prefills instead.")
        return cls(llm, handoff, reuse_prefix=reuse_prefix, warnings=warnings,
                   prefill_speed=prefill_graph.speed if prefill_graph is not None else None)

    # --- what the plan and the decode loop need -------------------------------------------------

    @property
    def report(self) -> DeviceReport:
        return self.engine.report

    @property
    def bos_id(self) -> int | None:
        """The vocabulary's BOS token, or None when it has none."""
        return self.engine.bos_id

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    @property
    def n_past(self) -> int:
        return self._pending.n if self._pending is not None else self.engine.n_past

    @property
    def n_vocab(self) -> int:
        return self.engine.n_vocab

    def tokenize(self, text: str) -> list[int]:
        """Text -> ids with the GGUF's tokenizer, special tokens recognised, no BOS (the plan adds it)."""
        return self.engine.tokenize(text, add_bos=False)

    def token_bytes(self, token: int, *, first: bool = False) -> bytes:
        """A generated token's text; the answer's ``first`` piece loses the space a SentencePiece vocabulary
        prefixes (transformers' Llama decoder strips it too)."""
        return self.engine.token_bytes(token, lstrip=int(first and self.engine.info.space_prefix))

    def check_fits(self, n_positions: int) -> None:
        self.engine.check_fits(n_positions)

    def bytes_read_per_token(self, n_past: int) -> float:
        return self.engine.bytes_read_per_token(n_past)

    # --- prefill and decode ---------------------------------------------------------------------

    def prefill(self, plan: PromptPlan, embeds: MediaEmbeddings,
                keys: Mapping[tuple[str, int], str] | None = None) -> PrefillResult:
        """Feed the plan (a prefix shared with the previous call stays cached); the last logits. ``keys``:
        a content key per embedding array where the caller has one (the embedding cache's); the others
        are digested here to tell which cached positions a new prompt shares."""
        if not plan.runs:
            raise InputError("the prompt is empty.", hint="Give a prompt or at least one image/audio input.")
        self._check(plan, embeds)
        signature = self._signature(plan, embeds, keys or {})
        keep, from_pos = _cut(plan, self._prefix_to_keep(plan, signature))
        if self._buffers_suspect:
            keep = 0  # a kept prefix could hold them too
        if keep:
            self._install()  # the kept prefix may still be waiting to go in
        self._pending = None
        self.engine.reset(keep, from_pos, clear_buffers=self._buffers_suspect)
        self._buffers_suspect = False
        reused = self.engine.n_past
        if self._kv is not None:
            self._kv.clear()  # until the prefill completes, the cache holds nothing we can vouch for
        if self.token_rows is not None:
            logits, engine = self._prefill_prefix_lm(plan, embeds), LLAMACPP
        elif self.handoff is not None and reused == 0 and self._handoff_takes(plan):
            (logits, self._pending), engine = self._prefill_handoff(plan, embeds), HANDOFF
        else:
            logits, engine = self._prefill_llamacpp(plan, embeds, reused), LLAMACPP
        if self._kv is not None:
            self._kv.set(signature)
        return PrefillResult(self._checked(logits), engine, reused)

    def step(self, token: int) -> np.ndarray:
        """Decode one token at the next position; a view of its logits ``[V]`` (valid until the next call)."""
        self._install()
        logits = self.engine.step(token)
        if self._kv is not None:
            self._kv.append(("t", token))
        return self._checked(logits)

    def _install(self) -> None:
        """Write the prefill graph's pending cache into the context (the bench LLaVA: 1.3-2.9 ms, off the
        first token's latency; a next prompt that keeps nothing of it never pays it)."""
        state, self._pending = self._pending, None
        if state is None:
            return
        try:
            self.handoff.install(state)
        except BaseException:
            if self._kv is not None:
                self._kv.clear()  # the context holds none of the prompt
            raise

    def _checked(self, logits: np.ndarray) -> np.ndarray:
        """``_finite``, remembering a failure: the cache may then hold non-finite values (a pending one is
        dropped; the context's tensors are zeroed before the next prompt)."""
        try:
            return _finite(logits)
        except NonFiniteError:
            self._buffers_suspect, self._pending = True, None
            raise

    def _check(self, plan: PromptPlan, embeds: MediaEmbeddings) -> None:
        if plan.multi_axis and not self.engine.mrope:
            raise BackendUnavailableError(
                "the prompt has (t, h, w) M-RoPE positions, but this GGUF's architecture numbers tokens in order.",
                hint="The bundle's LLM does not belong to its encoder; re-export the bundle.")
        for run in plan.runs:
            if isinstance(run, MediaRun):
                arr = embeds.get((run.modality, run.index))
                if arr is None or getattr(arr, "ndim", 0) != 2 or arr.shape[0] != run.n_positions:
                    got = "nothing" if arr is None else f"shape {getattr(arr, 'shape', '?')}"
                    raise EmbeddingShapeError(
                        f"{run.modality} item {run.index} should give {run.n_positions} embeddings, the encoder "
                        f"gave {got}.", hint="The bundle's manifest and its encoder graph disagree; re-export it.")

    def _signature(self, plan: PromptPlan, embeds: MediaEmbeddings,
                   known: Mapping[tuple[str, int], str]) -> list[Hashable]:
        if self._kv is None:
            return plan.signature({})
        return plan.signature({key: known.get(key) or digest(arr) for key, arr in embeds.items()})

    def _prefill_handoff(self, plan: PromptPlan, embeds: MediaEmbeddings) -> tuple[np.ndarray, PendingState]:
        """The whole prompt through the prefill graph: its last logits, and its KV cache to become
        llama.cpp's (``_install``)."""
        n = plan.n_positions
        ids, media, mask = np.zeros(n, np.int64), np.zeros((n, self.engine.n_embd), np.float32), np.zeros(n, bool)
        positions = np.zeros((3, n), np.int64) if self.handoff.graph.mrope else None
        row = 0
        for run in plan.runs:
            at = slice(row, row + run.n_positions)
            row += run.n_positions
            if positions is not None:  # (t, h, w) per row; a text run's three are one
                positions[:, at] = run.positions.ids()
            if isinstance(run, TextRun):
                ids[at] = self.engine.validate_tokens(run.token_ids)
            else:
                media[at] = self.engine.validate_embeddings(embeds[(run.modality, run.index)])
                mask[at] = True
        return self.handoff.run_prompt(ids, media, mask, positions)

    def _prefill_llamacpp(self, plan: PromptPlan, embeds: MediaEmbeddings, skip: int) -> np.ndarray:
        """The plan's runs after the ``skip`` cached positions, through llama.cpp."""
        todo = plan.after(skip)
        logits = None
        for i, (run, offset) in enumerate(todo):
            want = "last" if i == len(todo) - 1 else "none"
            if isinstance(run, TextRun):
                logits = self.engine.eval_tokens(list(run.token_ids[offset:]), want)
            else:
                axes = run.positions.axes[:, offset:] if run.positions.axes is not None else None
                logits = self.engine.eval_embeddings(embeds[(run.modality, run.index)][offset:], want, axes,
                                                     causal=not run.bidirectional)
        return logits

    def _prefix_to_keep(self, plan: PromptPlan, signature: list[Hashable]) -> int:
        """Positions of the cached prefix to keep: all shared ones, or none where the graph prefilling the
        whole prompt is faster than llama.cpp prefilling the rest."""
        shared = self._kv.keep_for(signature) if self._kv is not None else 0
        if shared and self.prefill_speed is not None and self._handoff_takes(plan) \
                and self.prefill_speed.graph_beats_reuse(plan.n_positions, shared):
            return 0
        return shared

    def _handoff_takes(self, plan: PromptPlan) -> bool:
        """The prefill graph attends causally in row order: not for bidirectional media runs; (t, h, w)
        positions only through a graph that takes them."""
        plain = (self.handoff.graph.mrope or not plan.multi_axis) and \
            not any(getattr(r, "bidirectional", False) for r in plan.runs)
        return plain and self.handoff.takes(plan.n_positions)

    def _prefill_prefix_lm(self, plan: PromptPlan, embeds: MediaEmbeddings) -> np.ndarray:
        """The whole prompt as one batch of embeddings (text rows from the GGUF's own table), attending
        both ways, as transformers' PaliGemma prefills it."""
        if plan.multi_axis:
            raise InputError("a prefix-LM prompt numbers its positions in order; this plan has M-RoPE positions.")
        rows = [self.token_rows.rows(run.token_ids) if isinstance(run, TextRun) else embeds[(run.modality, run.index)]
                for run in plan.runs]
        return self.engine.eval_embeddings(np.concatenate(rows).astype(np.float32), "last", causal=False)

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        self._pending = None
        self.engine.close()
        if self.handoff is not None:
            self.handoff.graph.close()


def _finite(logits: np.ndarray) -> np.ndarray:
    """The LLM's logits, refused when any is NaN or Inf (a broken GGUF would otherwise answer token 0 forever)."""
    if not np.isfinite(logits).all():
        raise NonFiniteError("the LLM produced NaN or Inf logits.",
                             hint="The GGUF's weights are broken (check it with `edgebridge inspect`), or the "
                                  "prompt's embeddings overflow.")
    return logits


def _cut(plan: PromptPlan, keep: int) -> tuple[int, int]:
    """(cells to keep, the position of the first cell dropped) for keeping ``keep`` of ``plan``'s positions.

    llama.cpp drops cached cells by position. With one position per token they are the same number;
    an M-RoPE media run's cells share positions, so a cut inside one keeps none of it; nor inside a
    bidirectional run (its rows saw each other, a re-fed tail could not be seen by the kept head).
    """
    at = 0
    for run in plan.runs:
        if keep < at + run.n_positions:
            offset = keep - at
            if getattr(run, "bidirectional", False):
                return at, run.positions.start
            if run.positions.axes is None:
                return keep, run.positions.start + offset
            return at, int(run.positions.axes[0].min())
        at += run.n_positions
    return keep, plan.next_position


def _batch_for_two_way_attention(bundle: Bundle, settings: LlamaSettings) -> LlamaSettings:
    """Rows that attend to each other both ways must share one micro-batch: room for a bidirectional run
    (a Gemma 3 image), or for a prefix-LM prompt of two images' tokens and text (PaliGemma 448 px: 1024
    per image), within the context. Larger prompts are refused with a hint, not split."""
    runs = [spec.tokens_per_item for spec in bundle.manifest.inputs.values()
            if spec.layout.bidirectional or bundle.manifest.prompt.prefix_lm]
    need = min(settings.n_ctx, 2 * max(runs, default=0))
    if need <= min(settings.n_batch, settings.n_ubatch):
        return settings
    return settings.with_(n_batch=max(settings.n_batch, need), n_ubatch=max(settings.n_ubatch, need))


def open_bundle_session(bundle: Bundle, settings: LlamaSettings, *, threads: int | None = None,
                        n_ctx: int | None = None, reuse_prefix: bool = True, fast_prefill: bool = True,
                        recorded_settings: bool = False) -> LLMSession:
    """The LLM session: context size within the GGUF's trained context, the prefill graph if wanted;
    ``recorded_settings``: the runtime settings the export measured on its machine (flash attention,
    ``exporters/runtime_choice.py``) replace the defaults in ``settings``."""
    llm = bundle.manifest.llm
    gguf = llm.artifacts["gguf"]
    recorded = gguf.details.get("runtime") or {}
    if recorded_settings and isinstance(recorded.get("flash_attn"), bool):
        settings = settings.with_(flash_attn=recorded["flash_attn"])
    ctx_train = int(gguf.details.get("n_ctx_train") or settings.n_ctx)
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 8):
        raise InputError(f"n_ctx must be a whole number of at least 8, got {n_ctx!r}.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a whole number of at least 1, got {threads!r}.")
    settings = settings.with_(n_ctx=n_ctx or min(settings.n_ctx, ctx_train), threads=threads or settings.threads)
    settings = _batch_for_two_way_attention(bundle, settings)
    graph = llm.artifacts.get("prefill") if fast_prefill else None
    graph_spec = PrefillGraphSpec(bundle.path(graph.files[0]), graph.precision,
                                  PrefillSpeed.from_record((graph.quantization or {}).get("speed"))) if graph else None
    session = LLMSession.open(bundle.path(gguf.files[0]), settings, expect_architecture=gguf.details.get("architecture"),
                           expect_n_embd=int(llm.inputs[0].shape[-1]), reuse_prefix=reuse_prefix,
                           prefix_lm=bundle.manifest.prompt.prefix_lm, prefill_graph=graph_spec)
    if settings.n_ctx > ctx_train:
        session.warnings.append(f"llm: n_ctx {settings.n_ctx} is beyond the {ctx_train} positions the model was "
                                "trained on; answers past them degrade.")
    return session
