"""``Pipeline``: a bundle's engines chained, media in, text out, every stage timed.

    from edgebridge import Pipeline
    pipe = Pipeline.from_bundle("bundle/", encoder_backend="onnxruntime", device="CPU")
    result = pipe.generate("<image>\\nWhat is this?", images=["cat.jpg"], max_new_tokens=32)
    print(result.text, result.timings["ttft_ms"], result.devices)

Flow of one ``generate``: validate the prompt against the media given and the context size,
preprocess the media (numpy/PIL), run each modality's encoder + bridge graph (onnxruntime or
OpenVINO), then prefill llama.cpp with text tokens and the embeddings in prompt order (handed
over in memory), and decode greedily. A bundle exported with ``--prefill`` carries the LLM's
prefill graph: a conversation's first prompt then runs through onnxruntime and its KV cache is
handed to llama.cpp (``runtimes/llamacpp/kv_handoff.py``), checked against this context's cache
layout at load; where it does not fit, llama.cpp prefills and ``result.warnings`` says why.
Requested devices that are not present fall back to CPU;
``result.devices`` and ``result.warnings`` say so.

Imports no torch and no transformers.
"""

from __future__ import annotations

import codecs
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterator, Sequence

import numpy as np

from edgebridge.bundle import Bundle
from edgebridge.caching import EmbeddingCache, KVPrefix, digest
from edgebridge.errors import BackendUnavailableError, InputError, NonFiniteError, StaticShapeError
from edgebridge.manifest import Artifact, Component, Manifest
from edgebridge.preprocess import Prepared, get_preprocessor
from edgebridge.preprocess.wordpiece import WordPiece
from edgebridge.prompt import (
    Segment,
    apply_layouts,
    expand_grids,
    insert_tool_text,
    is_prefix,
    place_media,
    prefix_media,
    render_chat,
    split_segments,
)
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from edgebridge.runtimes.llamacpp.kv_handoff import HandoffUnavailable, KVHandoff, PrefillGraph
from edgebridge.runtimes.registry import EncoderSession, artifact_format, open_encoder
from edgebridge.runtimes.static_shapes import conform, run_static
from edgebridge.runtimes.tools import Tool, ToolOutput, open_tool
from edgebridge.timing import StageTimes, now_ms, percentile


@dataclass
class GenerationResult:
    """What one ``generate`` call produced, how long each stage took, and where it ran."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (a stop token), "length" (max_new_tokens), "context" (n_ctx full)
    timings: dict[str, Any]
    devices: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    tool_outputs: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"audio": [transcript]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerationStream:
    """Iterate to receive text pieces as they are decoded; ``result`` is set at the end."""

    def __init__(self, steps: Generator[str, None, GenerationResult]) -> None:
        self._steps = steps
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._steps


@dataclass
class _Encoder:
    modality: str
    component: Component
    session: EncoderSession


class Pipeline:
    """A loaded bundle: encoder sessions per modality and the llama.cpp LLM."""

    def __init__(self, bundle: Bundle, encoders: dict[str, _Encoder], llm: LlamaCppLLM, load_ms: float,
                 warnings: list[str], tools: dict[str, Tool] | None = None, *, cache_embeddings: bool = True,
                 reuse_prefix: bool = True, handoff: KVHandoff | None = None) -> None:
        self.bundle = bundle
        self.embedding_cache = EmbeddingCache() if cache_embeddings else None
        self.kv = KVPrefix() if reuse_prefix else None
        self.manifest: Manifest = bundle.manifest
        self.encoders = encoders
        self.tools = tools or {}
        self.llm = llm
        self.handoff = handoff
        self.last_prefill_engine = "llama.cpp"
        self.load_ms = load_ms
        self.load_warnings = warnings
        self._bos = self._bos_token()
        self._tokenizers: dict[str, WordPiece] = {}
        self.last_tool_outputs: dict[str, list[str]] = {}
        self.reused_positions = 0

    # --- construction --------------------------------------------------------------------

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        *,
        encoder_backend: str = "onnxruntime",
        device: str = "CPU",
        precision: str | None = "f32",
        threads: int | None = None,
        n_ctx: int | None = None,
        llm_settings: LlamaSettings | None = None,
        verify: bool = True,
        cache_embeddings: bool = True,
        reuse_prefix: bool = True,
        fast_prefill: bool = True,
    ) -> "Pipeline":
        """Open a bundle and load its engines.

        ``device`` (CPU|GPU|NPU|AUTO) applies to the encoders; an unavailable device falls back to
        CPU and is reported. ``precision`` is the OpenVINO execution precision (``f32`` strict,
        ``bf16``/``f16`` faster, ``auto`` the device default). ``verify`` checks every file's sha256.
        ``cache_embeddings`` reuses encoder outputs for inputs seen before (by content hash) and
        ``reuse_prefix`` keeps the KV cache of a prompt prefix shared with the previous call; both
        give the same results as recomputing. ``fast_prefill`` uses the bundle's prefill graph (if it
        has one) for a conversation's first prompt.
        """
        start = now_ms()
        bundle = Bundle.open(path, verify=verify)
        manifest = bundle.manifest
        fmt = artifact_format(encoder_backend)
        warnings: list[str] = []
        encoders: dict[str, _Encoder] = {}
        tools: dict[str, Tool] = {}
        for modality, spec in manifest.inputs.items():
            comp = manifest.components[spec.component]
            if comp.role == "tool":
                tools[modality] = open_tool(bundle.root, comp, encoder_backend, device=device, threads=threads,
                                            precision=precision)
                if tools[modality].report.fallback_reason:
                    warnings.append(f"{spec.component}: {tools[modality].report.fallback_reason}; "
                                    f"ran on {tools[modality].report.executed}.")
                continue
            art = comp.artifacts.get(fmt)
            if art is None:
                raise BackendUnavailableError(
                    f"the bundle has no {fmt} artifact for {spec.component} (it has: {', '.join(comp.artifacts)}).",
                    hint=f"Choose another --backend, or re-export with --encoder-format {fmt}.",
                )
            session = open_encoder(encoder_backend, [bundle.path(f) for f in art.files], device=device,
                                   threads=threads, precision=precision, artifact_precision=art.precision)
            if session.report.fallback_reason:
                warnings.append(f"{spec.component}: {session.report.fallback_reason}; ran on {session.report.executed}.")
            encoders[modality] = _Encoder(modality, comp, session)
        llm_comp = manifest.llm
        gguf = llm_comp.artifacts["gguf"]
        settings = llm_settings or LlamaSettings()
        ctx_train = int(gguf.details.get("n_ctx_train") or settings.n_ctx)
        settings = settings.with_(n_ctx=n_ctx or min(settings.n_ctx, ctx_train), threads=threads or settings.threads)
        llm = LlamaCppLLM(bundle.path(gguf.files[0]), settings,
                          expect_architecture=gguf.details.get("architecture"),
                          expect_n_embd=int(llm_comp.inputs[0].shape[-1]))
        if llm.report.fallback_reason:
            warnings.append(f"llm: {llm.report.fallback_reason}; ran on {llm.report.executed}.")
        handoff = None
        if fast_prefill and "prefill" in llm_comp.artifacts:
            handoff = cls._attach_prefill(bundle, llm_comp.artifacts["prefill"], llm, threads, warnings)
        llm.report.details["prefill"] = handoff.describe() if handoff else {"engine": "llama.cpp"}
        return cls(bundle, encoders, llm, now_ms() - start, warnings, tools, cache_embeddings=cache_embeddings,
                   reuse_prefix=reuse_prefix, handoff=handoff)

    @staticmethod
    def _attach_prefill(bundle: Bundle, art: Artifact, llm: LlamaCppLLM, threads: int | None,
                        warnings: list[str]) -> KVHandoff | None:
        """The bundle's prefill graph bound to ``llm``, or None with the reason in ``warnings``."""
        graph = PrefillGraph(bundle.path(art.files[0]), threads=threads, precision=art.precision)
        try:
            return KVHandoff.attach(llm, graph)
        except HandoffUnavailable as exc:
            warnings.append(f"llm prefill: {exc}; llama.cpp prefills instead.")
            return None

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pieces usable on their own ----------------------------------------------------------

    def prepare(self, modality: str, items: Sequence[Any], text: str = "") -> Prepared:
        """Preprocess ``items``; ``text`` feeds encoders that also read the prompt (a Q-Former)."""
        spec = self.manifest.inputs[modality]
        prepared = get_preprocessor(spec.preprocessing["kind"])(list(items), spec.preprocessing)
        if spec.preprocessing.get("text_inputs"):
            prepared.inputs.update(self._text_inputs(spec.preprocessing["text_inputs"], text,
                                                     next(iter(prepared.inputs.values())).shape[0]))
        comp = self.manifest.components[spec.component]
        for inputs in prepared.runs or [prepared.inputs]:
            self._check_inputs(comp, inputs)
        return prepared

    def _text_inputs(self, spec: dict[str, Any], text: str, rows: int) -> dict[str, np.ndarray]:
        """The prompt as the encoder's text input (WordPiece ids and mask), one copy per batch row."""
        if spec.get("tokenizer") != "wordpiece":
            raise BackendUnavailableError(f"text input tokenizer '{spec.get('tokenizer')}' is not supported.")
        if spec["vocab"] not in self._tokenizers:
            self._tokenizers[spec["vocab"]] = WordPiece.from_file(self.bundle.path(spec["vocab"]),
                                                                  lowercase=spec.get("lowercase", True))
        ids = np.asarray(self._tokenizers[spec["vocab"]].encode(text, spec.get("max_length")), dtype=np.int64)
        batch = np.repeat(ids[None], rows, axis=0)
        return {spec["input_ids"]: batch, spec["attention_mask"]: np.ones_like(batch)}

    def encode(self, modality: str, prepared: Prepared) -> list[np.ndarray]:
        """Encoder + bridge on prepared inputs -> one ``[n_i, D]`` float32 array per item (cached by content)."""
        key = None
        if self.embedding_cache is not None:
            runs = prepared.runs or [prepared.inputs]
            key = digest({f"{i}:{k}": v for i, run in enumerate(runs) for k, v in run.items()},
                         salt=self.manifest.inputs[modality].component)
            hit = self.embedding_cache.get(key)
            if hit is not None:
                return hit
        out = self._encode(modality, prepared)
        if key is not None:
            self.embedding_cache.put(key, out)
        return out

    def _encode(self, modality: str, prepared: Prepared) -> list[np.ndarray]:
        enc = self.encoders[modality]
        static = (self.manifest.static_shapes or {}).get(self.manifest.inputs[modality].component)
        if static:  # fixed-shape graph: chunk/pad rows, pad token axes
            out = run_static(enc.session.run, prepared.inputs, static)
        elif prepared.runs:  # one run per item (sizes differ), stacked as if batched
            out = np.concatenate([enc.session.run(inputs)[0] for inputs in prepared.runs])
        else:
            out = enc.session.run(prepared.inputs)[0]
        if not np.isfinite(out).all():
            raise NonFiniteError(
                f"the {enc.component.description or modality} encoder produced NaN/Inf embeddings.",
                hint="The input or the encoder artifact is bad; check the bundle with `edgebridge inspect`.",
            )
        return prepared.item_embeddings(out, self.manifest.inputs[modality].tokens_per_item)

    def _check_inputs(self, comp: Component, inputs: dict[str, np.ndarray]) -> None:
        name = next((n for n, c in self.manifest.components.items() if c is comp), "")
        static = (self.manifest.static_shapes or {}).get(name)
        if static:
            conform(inputs, static)  # raises StaticShapeError naming the input and the shapes the bundle takes
        for spec in comp.inputs:
            if static:
                arr = inputs.get(spec.name)
                if arr is not None and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    raise NonFiniteError(f"input '{spec.name}' holds NaN or Inf values.")
                continue
            arr = inputs.get(spec.name)
            if arr is None:
                raise InputError(f"the encoder needs input '{spec.name}', the preprocessing did not produce it.")
            if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != a for d, a in zip(spec.shape, arr.shape)
            ):
                err = StaticShapeError if self.manifest.static_shapes else InputError
                raise err(
                    f"input '{spec.name}' has shape {tuple(arr.shape)}, the encoder takes {spec.shape}.",
                    hint="Re-export without --static for other shapes." if self.manifest.static_shapes else None,
                )
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise NonFiniteError(f"input '{spec.name}' holds NaN or Inf values.",
                                     hint="Pass real images/audio; check any arrays you built yourself.")

    def _bos_token(self) -> int | None:
        if not self.manifest.prompt.add_bos:
            return None
        bos = self.llm.lib.llama_vocab_bos(self.llm._vocab)
        return int(bos) if bos >= 0 else None

    # --- generation --------------------------------------------------------------------------

    def build_prompt(self, prompt: str, counts: dict[str, int], chat: bool = False,
                     system: str | None = None) -> tuple[str, str]:
        """(full text with placeholders, the rendered prompt alone: what text-reading encoders see)."""
        text = place_media(prompt, self.manifest.inputs, counts)
        text = render_chat(text, self.manifest.prompt, self.manifest.inputs, system) if chat else text
        return apply_layouts(prefix_media(text, self.manifest.inputs, counts), self.manifest.inputs), text

    def tokenize_segments(self, segments: list[Segment]) -> list[Segment | list[int]]:
        """Text segments -> token id lists; media kept. BOS (when the model adds one) goes first, after
        any ``prefix`` media (InstructBLIP's queries precede BOS, as its processor writes them)."""
        out: list[Segment | list[int]] = []
        lead = 0
        while lead < len(segments) and segments[lead].kind == "media" and \
                is_prefix(self.manifest.inputs[segments[lead].modality]):
            out.append(segments[lead])
            lead += 1
        if self._bos is not None:
            out.append([self._bos])
        for seg in segments[lead:]:
            if seg.kind == "text":
                ids = self.llm.tokenize(seg.text, add_bos=False)
                if ids:
                    out.append(ids)
            else:
                out.append(seg)
        return out

    def generate(
        self,
        prompt: str,
        images: Sequence[Any] | None = None,
        audio: Sequence[Any] | None = None,
        *,
        max_new_tokens: int = 64,
        stream: bool = False,
        chat: bool = False,
        system: str | None = None,
        stop_at_eos: bool = True,
    ) -> GenerationResult | GenerationStream:
        """Greedy generation. ``stream=True`` returns a ``GenerationStream`` of text pieces."""
        steps = self._steps(prompt, {"image": list(images or []), "audio": list(audio or [])},
                            max_new_tokens, chat, system, stop_at_eos)
        if stream:
            return GenerationStream(steps)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def _steps(self, prompt: str, media: dict[str, list[Any]], max_new_tokens: int, chat: bool,
               system: str | None, stop_at_eos: bool) -> Generator[str, None, GenerationResult]:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        start = now_ms()
        times = StageTimes()
        logits, n_prompt, encoded, notes = self._prefill_prompt(prompt, media, chat, system, times)
        token = int(np.argmax(logits))
        ttft = now_ms() - start
        stop_ids = set(self.manifest.prompt.stop_token_ids) if stop_at_eos else set()
        tokens: list[int] = []
        per_token: list[float] = []
        raw = bytearray()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = "length"
        decode_start = now_ms()
        while True:
            if token in stop_ids:
                finish = "stop"
                break
            tokens.append(token)
            piece = self.llm.token_bytes(token)
            raw += piece
            text_piece = decoder.decode(piece)
            if text_piece:
                yield text_piece
            if len(tokens) >= max_new_tokens:
                break
            if self.llm.n_past >= self.llm.n_ctx:
                finish = "context"
                break
            t0 = now_ms()
            logits = self.llm.step(token)
            if self.kv is not None:
                self.kv.append(("t", token))
            token = int(np.argmax(logits))
            per_token.append(now_ms() - t0)
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        decode_ms = now_ms() - decode_start
        timings = self._timings(times, ttft, per_token, decode_ms, now_ms() - start, n_prompt, len(tokens))
        timings["reused_prefix_positions"] = self.reused_positions
        timings["prefill_engine"] = self.last_prefill_engine
        timings["embedding_cache_hits"] = self.embedding_cache.hits if self.embedding_cache else 0
        devices = {self.manifest.inputs[m].component: (self.encoders[m].session.report if m in self.encoders
                                                        else self.tools[m].report).as_dict() for m in encoded}
        devices["llm"] = self.llm.report.as_dict()
        return GenerationResult(
            text=bytes(raw).decode("utf-8", errors="replace"),
            token_ids=tokens,
            prompt_tokens=n_prompt,
            finish_reason=finish,
            timings=timings,
            devices=devices,
            warnings=list(self.load_warnings) + notes,
            tool_outputs=dict(self.last_tool_outputs),
        )

    def prefill_logits(self, prompt: str, images: Sequence[Any] | None = None, audio: Sequence[Any] | None = None,
                       *, chat: bool = False, system: str | None = None) -> np.ndarray:
        """Next-token logits ``[V]`` after the prompt and media (first generation step)."""
        media = {"image": list(images or []), "audio": list(audio or [])}
        return self._prefill_prompt(prompt, media, chat, system, StageTimes())[0]

    def _prefill_prompt(self, prompt: str, media: dict[str, list[Any]], chat: bool, system: str | None,
                        times: StageTimes) -> tuple[np.ndarray, int, list[str], list[str]]:
        """Validate, preprocess, encode and prefill.

        Returns (last logits, prompt positions, modalities encoded, warnings about the inputs).
        """
        counts = {m: len(items) for m, items in media.items() if items}
        with times.stage("prompt"):
            text, instruction = self.build_prompt(prompt, counts, chat, system)
        prepared: dict[str, Prepared] = {}
        for modality, items in media.items():
            if items:
                with times.stage(f"preprocess_{modality}"):
                    prepared[modality] = self.prepare(modality, items, text=instruction)
        tool_outputs: dict[str, list[ToolOutput]] = {}
        for modality in [m for m in prepared if m in self.tools]:
            with times.stage(f"tool_{modality}"):
                prep = prepared.pop(modality)
                rows = prep.item_rows or [slice(i, i + 1) for i in range(len(prep.info))]
                tool_outputs[modality] = self.tools[modality].run(prep.inputs, rows)
        self.last_tool_outputs = {m: [o.text for o in outs] for m, outs in tool_outputs.items()}
        with times.stage("prompt"):
            text = insert_tool_text(text, self.manifest.inputs, self.last_tool_outputs)
            text = expand_grids(text, self.manifest.inputs, {m: p.info for m, p in prepared.items()})
            pieces = self.tokenize_segments(split_segments(text, self.manifest.inputs))
        n_prompt = self._count_positions(pieces, prepared)
        self.llm.check_fits(n_prompt)  # refuse before spending time on the encoders
        embeds: dict[str, list[np.ndarray]] = {}
        for modality, prep in prepared.items():
            with times.stage(f"encode_{modality}"):
                embeds[modality] = self.encode(modality, prep)
        with times.stage("prefill"):
            logits = self._prefill(pieces, embeds)
        notes = [f"{m} input {i}: {info['seconds']:.1f} s clip truncated to {info['truncated_to_seconds']:.0f} s, "
                 "the model's window (as its processor does)"
                 for m, prep in prepared.items() for i, info in enumerate(prep.info) if "truncated_to_seconds" in info]
        return logits, n_prompt, list(embeds) + list(tool_outputs), notes

    def _count_positions(self, pieces: list[Segment | list[int]], prepared: dict[str, Prepared]) -> int:
        n = 0
        for piece in pieces:
            if isinstance(piece, Segment):
                counts = prepared[piece.modality].tokens_per_item
                n += counts[piece.index] if counts else self.manifest.inputs[piece.modality].tokens_per_item
            else:
                n += len(piece)
        return n

    def _prefill(self, pieces: list[Segment | list[int]], embeds: dict[str, list[np.ndarray]]) -> np.ndarray:
        """Feed the prompt to the LLM; last logits. A prefix shared with the previous call stays in the
        KV cache; on an empty cache the prefill graph (when the bundle has one) runs the whole prompt."""
        if not pieces:
            raise InputError("the prompt is empty.", hint="Give a prompt or at least one image/audio input.")
        runs: list[tuple[str, Any]] = []  # ("tokens", ids) | ("embeds", array), in prompt order
        signature: list[Any] = []
        for piece in pieces:
            if isinstance(piece, Segment):
                arr = embeds[piece.modality][piece.index]
                tag = digest(arr) if self.kv is not None else ""
                runs.append(("embeds", arr))
                signature.extend(("e", tag, r) for r in range(arr.shape[0]))
            else:
                runs.append(("tokens", list(piece)))
                signature.extend(("t", t) for t in piece)
        keep = self.kv.keep_for(signature) if self.kv is not None else 0
        self.llm.reset(keep)
        self.reused_positions = self.llm.n_past
        if self.kv is not None:
            self.kv.clear()  # until the prefill completes, the cache holds nothing we can vouch for
        if self.handoff is not None and self.llm.n_past == 0 and self.handoff.takes(len(signature)):
            logits = self._prefill_handoff(runs)
            self.last_prefill_engine = "onnxruntime+handoff"
        else:
            logits = self._prefill_llamacpp(runs)
            self.last_prefill_engine = "llama.cpp"
        if self.kv is not None:
            self.kv.set(signature)
        return logits

    def _prefill_handoff(self, runs: list[tuple[str, Any]]) -> np.ndarray:
        """The whole prompt through the prefill graph; its KV cache becomes llama.cpp's."""
        n = sum(len(data) for _, data in runs)
        ids = np.zeros(n, np.int64)
        media = np.zeros((n, self.llm.n_embd), np.float32)
        mask = np.zeros(n, bool)
        at = 0
        for kind, data in runs:
            if kind == "embeds":
                media[at:at + len(data)] = self.llm.validate_embeddings(data)
                mask[at:at + len(data)] = True
            else:
                ids[at:at + len(data)] = self.llm.validate_tokens(data)
            at += len(data)
        return self.handoff.prefill(ids, media, mask)

    def _prefill_llamacpp(self, runs: list[tuple[str, Any]]) -> np.ndarray:
        """The prompt's runs after the reused prefix, through llama.cpp."""
        skip = self.llm.n_past
        logits = None
        for i, (kind, data) in enumerate(runs):
            n = len(data)
            if skip >= n:
                skip -= n
                continue
            part, skip = data[skip:], 0
            want = "last" if i == len(runs) - 1 else "none"
            logits = self.llm.eval_embeddings(part, want) if kind == "embeds" else self.llm.eval_tokens(part, want)
        return logits

    @staticmethod
    def _timings(times: StageTimes, ttft: float, per_token: list[float], decode_ms: float, total: float,
                 n_prompt: int, n_new: int) -> dict[str, Any]:
        st = times.stages
        prefill = st.get("prefill", 0.0)
        out: dict[str, Any] = {k + "_ms": round(v, 3) for k, v in st.items()}
        out["preprocess_ms"] = round(sum(v for k, v in st.items() if k.startswith("preprocess_")), 3)
        out["encode_ms"] = round(sum(v for k, v in st.items() if k.startswith("encode_")), 3)
        out.update(
            ttft_ms=round(ttft, 3),
            prompt_tokens=n_prompt,
            prefill_tokens_per_s=round(n_prompt / (prefill / 1000.0), 1) if prefill > 0 else None,
            new_tokens=n_new,
            decode_ms=round(decode_ms, 3),
            per_token_ms=[round(x, 3) for x in per_token],
            per_token_p50_ms=round(percentile(per_token, 50), 3) if per_token else None,
            per_token_p95_ms=round(percentile(per_token, 95), 3) if per_token else None,
            decode_tokens_per_s=round(len(per_token) / (sum(per_token) / 1000.0), 1) if per_token else None,
            total_ms=round(total, 3),
        )
        return out
