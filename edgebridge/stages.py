"""Modality stages: one modality's items in, what the prompt plan needs out.

A stage is made by ``open_stage`` from the component's role:

- ``EncoderStage`` (role ``encoder``): preprocessing, then the encoder + bridge graph on
  onnxruntime or OpenVINO -> one ``[n_i, D]`` embedding array per run (an item, or a tile);
- ``ToolStage`` (role ``tool``): preprocessing, then a tool model -> one text per item, which the
  plan puts where the placeholder stood (survey group "tool learning").

Both follow ``ModalityStage``: ``prepare(items, instruction)`` checks and preprocesses (shapes,
static shapes, NaN/Inf: refused here, before any engine runs), ``media_items`` tells the plan how
many positions each run takes, and ``run(prepared)`` runs the engine. Each stage carries the
device report of its engine. Stages hold no per-call state; the embedding cache they share is
keyed by content (exact: a hit returns what recomputing would). ``warm_up`` runs each OpenVINO
encoder once at load on a neutral item and then hands back the weight-file pages it no longer reads.

Imports no torch and no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from edgebridge.bundle import bundle_file
from edgebridge.caching import EmbeddingCache, digest, source_digest
from edgebridge.errors import BackendUnavailableError, EdgebridgeError, InputError, ManifestError, NonFiniteError
from edgebridge.manifest import Component, ModalityInput, Role, StaticShape, TextInputs
from edgebridge.plan import MediaItems
from edgebridge.preprocess import MediaOptions, Prepared, preprocess
from edgebridge.preprocess.wordpiece import WordPiece
from edgebridge.runtimes.registry import (
    DEVICES,
    DeviceReport,
    EncoderSession,
    artifact_format,
    encoder_backends,
    open_encoder,
)
from edgebridge.runtimes.static_shapes import conform, run_static
from edgebridge.runtimes.tools import Tool, open_tool
from edgebridge.timing import now_ms

PRECISIONS = ("f32", "bf16", "f16", "auto")  # OpenVINO execution precisions
AUTO_BACKEND = "auto"  # each component on the engine its export measured fastest (``component_backend``)
DEFAULT_BACKEND = "onnxruntime"  # without such a record


@dataclass(frozen=True)
class StageOutput:
    """What a stage made of one call's items: embeddings per run, or a text per item."""

    embeddings: list[np.ndarray] | None = None
    texts: list[str] | None = None
    # one content key per embedding array (the embedding cache's key and the item), when cached: the LLM
    # session's KV-prefix signature takes it instead of digesting the array again
    keys: list[str] | None = None


class ModalityStage(Protocol):
    modality: str
    component: str
    report: DeviceReport
    produces: str  # "embeddings" (runs after the plan is built) | "text" (before: the plan needs it)

    def prepare(self, items: Sequence[Any], instruction: str = "", options: MediaOptions | None = None) -> Prepared: ...

    def media_items(self, prepared: Prepared, output: StageOutput | None = None) -> MediaItems: ...

    def run(self, prepared: Prepared) -> StageOutput: ...

    def close(self) -> None:
        """Free the stage's engine session (shared sessions: closing twice is harmless)."""
        ...


@dataclass(frozen=True)
class StageOptions:
    """Engine options shared by every stage of a pipeline."""

    backend: str = AUTO_BACKEND
    device: str = "CPU"
    threads: int | None = None
    precision: str | None = "f32"

    def check(self) -> "StageOptions":
        """Refuse what no engine would take (onnxruntime ignores a precision; a bogus one is still a mistake)."""
        if self.backend != AUTO_BACKEND and self.backend not in encoder_backends():
            raise BackendUnavailableError(f"unknown encoder backend '{self.backend}'.",
                                          hint=f"Choose one of: {AUTO_BACKEND}, "
                                               f"{', '.join(sorted(encoder_backends()))}.")
        if str(self.device).upper() not in DEVICES:
            raise InputError(f"unknown device '{self.device}'.", hint=f"Choose one of {', '.join(DEVICES)}.")
        if self.precision is not None and str(self.precision).lower() not in PRECISIONS:
            raise InputError(f"unknown execution precision '{self.precision}'.",
                             hint=f"Choose one of {', '.join(PRECISIONS)}.")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise InputError(f"threads must be a whole number of at least 1, got {self.threads!r}.")
        return self


def open_stage(root: Path, modality: str, spec: ModalityInput, component: Component, options: StageOptions,
               static: StaticShape | None = None, cache: EmbeddingCache | None = None,
               sessions: dict[str, EncoderSession] | None = None) -> ModalityStage:
    """The stage for ``modality``, by its component's role. ``sessions`` shares one engine session per
    component between the modalities it serves (images and videos through one tower)."""
    backend = component_backend(component, options.backend)
    if component.role is Role.TOOL:
        tool = open_tool(root, component, backend, device=options.device, threads=options.threads,
                         precision=options.precision)
        return ToolStage(modality, spec, tool)
    fmt = artifact_format(backend)
    art = component.artifacts.get(fmt)
    if art is None:
        raise BackendUnavailableError(
            f"the bundle has no {fmt} artifact for {spec.component} (it has: {', '.join(component.artifacts)}).",
            hint=f"Choose another --backend, or re-export with --encoder-format {fmt}.")
    sessions = {} if sessions is None else sessions
    if spec.component not in sessions:
        sessions[spec.component] = open_encoder(backend, [bundle_file(root, f) for f in art.files], device=options.device,
                                                threads=options.threads, precision=options.precision,
                                                artifact_precision=art.precision)
    session = sessions[spec.component]
    text = spec.preprocessing.text_inputs
    return EncoderStage(modality, spec, component, session, static=static, cache=cache,
                        text_tokenizer=_wordpiece(root, text) if text else None)


def component_backend(component: Component, asked: str) -> str:
    """The engine that runs ``component``: the one asked for, or with ``auto`` the one its export measured
    fastest (``engine_choice``, when this runtime has it and the bundle its format), else onnxruntime
    where the bundle has an ONNX artifact, else the engine of its first artifact."""
    if asked != AUTO_BACKEND:
        return asked
    formats = encoder_backends()
    recorded = component.recorded_backend
    if recorded in formats and formats[recorded] in component.artifacts:
        return recorded
    runnable = [b for b, fmt in formats.items() if fmt in component.artifacts]
    return DEFAULT_BACKEND if DEFAULT_BACKEND in runnable else (runnable or [DEFAULT_BACKEND])[0]


def _check_claims(spec: ModalityInput, component: Component, session: EncoderSession) -> None:
    """The manifest's output shape and token count against the graph's own: a graph that gives other
    shapes than the manifest says would be cut or padded silently."""
    graph = session.output_shapes[0] if session.output_shapes else None
    said = component.outputs[0].shape
    if graph is not None and (len(graph) != len(said) or any(
            isinstance(s, int) and g is not None and g != s for g, s in zip(graph, said))):
        raise ManifestError(f"the {spec.component} graph's output has shape {graph}; the manifest says {said}.",
                            hint="The bundle was edited or mixed with another's files; re-export it.")
    tokens = graph[-2] if graph is not None and len(graph) >= 2 else None
    if tokens is not None and spec.tokens_per_item > tokens:
        raise ManifestError(f"the manifest gives each {spec.component} item {spec.tokens_per_item} embeddings; its "
                            f"graph gives {tokens}.", hint="The bundle was edited; re-export it.")


def _wordpiece(root: Path, spec: TextInputs) -> WordPiece:
    if spec.tokenizer != "wordpiece":
        raise BackendUnavailableError(f"text input tokenizer '{spec.tokenizer}' is not supported.",
                                      hint="Upgrade edgebridge.")
    return WordPiece.from_file(bundle_file(root, spec.vocab), lowercase=spec.lowercase)


def _preprocess(spec: ModalityInput, items: Sequence[Any], options: MediaOptions | None) -> Prepared:
    return preprocess(spec.preprocessing.kind, list(items), spec.preprocessing.to_dict(), options)


def _run_lengths(prepared: Prepared, fixed: int) -> tuple[int, ...]:
    """Positions of each embedding run: the preprocessor's counts, or the manifest's fixed count."""
    if prepared.tokens_per_item is not None:
        return tuple(int(n) for n in prepared.tokens_per_item)
    rows = len(prepared.item_rows) if prepared.item_rows else next(iter(prepared.inputs.values())).shape[0]
    return (fixed,) * rows


# Neutral items for the load-time warm-up (a mid-grey image, a second of silence), by modality.
WARM_UP_ITEMS = {"image": lambda: np.full((224, 224, 3), 128, np.uint8),
                 "audio": lambda: np.zeros(16000, np.float32)}


def warm_up(stages: dict[str, ModalityStage]) -> list[str]:
    """``EncoderStage.warm_up`` once per engine session (an image and a video stage share the tower);
    a warm-up that fails is a load warning, not an error: the real calls say what is wrong."""
    warned, done = [], set()
    for stage in stages.values():
        if not isinstance(stage, EncoderStage) or id(stage.session) in done:
            continue
        try:
            if stage.warm_up() is not None:
                done.add(id(stage.session))
        except EdgebridgeError as exc:
            warned.append(f"{stage.component}: the load-time warm-up on a neutral {stage.modality} failed ({exc}).")
    return warned


class EncoderStage:
    """An encoder + bridge graph for one modality."""

    produces = "embeddings"

    def __init__(self, modality: str, spec: ModalityInput, component: Component, session: EncoderSession, *,
                 static: StaticShape | None = None, cache: EmbeddingCache | None = None,
                 text_tokenizer: WordPiece | None = None) -> None:
        self.modality, self.spec, self.graph, self.session = modality, spec, component, session
        self.component = spec.component
        _check_claims(spec, component, session)
        self.static, self.cache, self.text_tokenizer = static, cache, text_tokenizer
        self.report = session.report

    def prepare(self, items: Sequence[Any], instruction: str = "", options: MediaOptions | None = None) -> Prepared:
        """Preprocess ``items``; ``instruction`` feeds encoders that also read the prompt (a Q-Former). With
        a cache, the same items (by content) with the same options give back an earlier call's result."""
        if self.cache is None:
            return self._prepare_fresh(items, instruction, options)
        reads_text = self.spec.preprocessing.text_inputs is not None
        source = source_digest(items, f"{self.component}|{options!r}|{instruction if reads_text else ''}")
        prepared = self.cache.prepared_for(source)
        if prepared is None:
            prepared = self._prepare_fresh(items, instruction, options)
            if source is not None:  # the items as given fix the encoder's inputs: no digest of the arrays
                prepared.cache_key = f"source:{source}"
            self.cache.keep_prepared(source, prepared)
        return prepared

    def _prepare_fresh(self, items: Sequence[Any], instruction: str, options: MediaOptions | None) -> Prepared:
        prepared = _preprocess(self.spec, items, options)
        text = self.spec.preprocessing.text_inputs
        if text is not None and self.text_tokenizer is not None:
            rows = next(iter(prepared.inputs.values())).shape[0]
            ids = np.asarray(self.text_tokenizer.encode(instruction, text.max_length), dtype=np.int64)
            batch = np.repeat(ids[None], rows, axis=0)
            prepared.inputs.update({text.input_ids: batch, text.attention_mask: np.ones_like(batch)})
        for inputs in prepared.runs or [prepared.inputs]:
            self.check_inputs(inputs)
        return prepared

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse inputs the graph cannot take: missing, wrong shape (static shapes: what cannot be
        padded or chunked), NaN/Inf."""
        if self.static is not None:
            conform(inputs, self.static)  # raises StaticShapeError naming the input and the shapes it takes
        for tensor in self.graph.inputs:
            arr = inputs.get(tensor.name)
            if arr is None:
                if self.static is not None:
                    continue
                raise InputError(f"the encoder needs input '{tensor.name}', the preprocessing did not produce it.")
            if self.static is None and (arr.ndim != len(tensor.shape) or any(
                    isinstance(d, int) and d != a for d, a in zip(tensor.shape, arr.shape))):
                raise InputError(f"input '{tensor.name}' has shape {tuple(arr.shape)}, the encoder takes "
                                 f"{tensor.shape}.")
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise NonFiniteError(f"input '{tensor.name}' holds NaN or Inf values.",
                                     hint="Pass real images/audio; check any arrays you built yourself.")

    def media_items(self, prepared: Prepared, output: StageOutput | None = None) -> MediaItems:
        # M-RoPE grids per embedding run: one per item, or the item's own split (Qwen3-VL video frames)
        grids = tuple(tuple(g) for i in prepared.info if "llm_grid" in i for g in i.get("run_grids", [i["llm_grid"]]))
        t_index = tuple(tuple(x) for i in prepared.info if "t_index" in i
                        for x in i.get("run_t_index", [i["t_index"]]))
        return MediaItems(run_lengths=_run_lengths(prepared, self.spec.tokens_per_item), infos=tuple(prepared.info),
                          grids=grids, t_index=t_index if len(t_index) == len(grids) else ())

    def bridge_time(self, prepared: Prepared) -> tuple[float, float, int] | None:
        """(bridge us, whole graph us, nodes) from one per-node engine profile; the bridge is the tail of
        the graph from its first node (names recorded at export). None when the bundle did not record them."""
        nodes = set((self.graph.bridge or {}).get("graph_nodes") or [])
        if not nodes:
            return None
        times = self.session.node_times(prepared.inputs)
        total = sum(us for _, us in times)
        first = next((i for i, (name, _) in enumerate(times) if name in nodes), None)
        if first is None or total <= 0:
            return None
        return sum(us for _, us in times[first:]), total, len(times)

    def close(self) -> None:
        self.session.close()

    def warm_up(self) -> dict[str, float] | None:
        """One inference on a neutral item, then the engine's mapped weight pages handed back; recorded
        in the device report (``warm_up_ms``, ``released_file_mb``). Only sessions whose ``warm_up_pays``:
        OpenVINO's CPU plugin compiles kernels and copies the weights into its own layouts at the first
        inference, not at load (the bench Qwen2.5-VL tower's first call took 230 ms, later ones 116; after a 94 ms
        warm-up the first 768-patch call took 139), and the ``.bin`` pages it read stay resident
        though it does not read them again (``mapped_pages``). None where nothing was done."""
        make = WARM_UP_ITEMS.get(self.modality)
        if make is None or not self.session.warm_up_pays:
            return None
        start = now_ms()
        self._encode(self._prepare_fresh([make()], "", None))  # not kept: no user will ask about it
        record = {"warm_up_ms": round(now_ms() - start, 1),
                  "released_file_mb": round(self.session.release_file_pages() / 2**20, 1)}
        self.report.details.update(record)
        return record

    def run(self, prepared: Prepared) -> StageOutput:
        """Encoder + bridge -> one ``[n_i, D]`` float32 array per run (from the cache when seen before)."""
        key = None
        if self.cache is not None:
            if prepared.cache_key is None:  # a reused Prepared keeps its key: no second digest of its arrays
                runs = prepared.runs or [prepared.inputs]
                # host-side packing also reads each item's info (its original size): part of the key then
                salt = self.component + (repr(prepared.info) if prepared.pack is not None else "")
                prepared.cache_key = digest({f"{i}:{k}": v for i, run in enumerate(runs) for k, v in run.items()},
                                            salt=salt)
            key = prepared.cache_key
            hit = self.cache.get(key)
            if hit is not None:
                return StageOutput(embeddings=hit, keys=_item_keys(key, hit))
        out = self._encode(prepared)
        if key is None:
            return StageOutput(embeddings=out)
        self.cache.put(key, out)
        return StageOutput(embeddings=out, keys=_item_keys(key, out))

    def _encode(self, prepared: Prepared) -> list[np.ndarray]:
        if self.static is not None:  # fixed-shape graph: chunk/pad rows, pad token axes
            out = run_static(self.session.run, prepared.inputs, self.static)
        elif prepared.runs:  # one run per item (sizes differ)
            outs = [self.session.run(inputs)[0] for inputs in prepared.runs]
            if prepared.run_items or len({o.shape for o in outs}) > 1:  # token counts differ: item by item
                return self._split_runs(outs, prepared)
            out = np.concatenate(outs)  # stacked as if batched
        else:
            out = self.session.run(prepared.inputs)[0]
        return prepared.item_embeddings(self._finite(out), self.spec.tokens_per_item, self.graph.bridge)

    def _split_runs(self, outs: list[np.ndarray], prepared: Prepared) -> list[np.ndarray]:
        """Each run's output rows cut into its items (``run_items`` each, default one), in order."""
        counts = iter(_run_lengths(prepared, self.spec.tokens_per_item))
        items = []
        for out, n_items in zip(outs, prepared.run_items or [1] * len(outs)):
            flat, at = self._finite(out).reshape(-1, out.shape[-1]), 0
            for _ in range(n_items):
                n = next(counts)
                items.append(flat[at:at + n])
                at += n
        return items

    def _finite(self, out: np.ndarray) -> np.ndarray:
        if not np.isfinite(out).all():
            raise NonFiniteError(
                f"the {self.graph.description or self.modality} encoder produced NaN/Inf embeddings.",
                hint="The input or the encoder artifact is bad; check the bundle with `edgebridge inspect`.")
        return out


class ToolStage:
    """A tool model that turns one modality into text for the prompt."""

    produces = "text"

    def __init__(self, modality: str, spec: ModalityInput, tool: Tool) -> None:
        self.modality, self.spec, self.tool = modality, spec, tool
        self.component = spec.component
        self.report = tool.report

    def prepare(self, items: Sequence[Any], instruction: str = "", options: MediaOptions | None = None) -> Prepared:
        return _preprocess(self.spec, items, options)

    def media_items(self, prepared: Prepared, output: StageOutput | None = None) -> MediaItems:
        texts = tuple(output.texts) if output is not None and output.texts is not None else None
        return MediaItems(infos=tuple(prepared.info), texts=texts)

    def close(self) -> None:
        self.tool.close()

    def run(self, prepared: Prepared) -> StageOutput:
        rows = prepared.item_rows or [slice(i, i + 1) for i in range(len(prepared.info))]
        return StageOutput(texts=[o.text for o in self.tool.run(prepared.inputs, rows)])


def preprocessing_notes(prepared: dict[str, Prepared]) -> list[str]:
    """What preprocessing did to this call's items that the user should hear about (cut clips, dropped frames)."""
    notes = [f"{m} input {i}: {info['seconds']:.1f} s clip truncated to {info['truncated_to_seconds']:.0f} s, "
             "the model's window (as its processor does)"
             for m, prep in prepared.items() for i, info in enumerate(prep.info) if "truncated_to_seconds" in info]
    notes += [f"{m} input {i}: {info['converted']}" for m, prep in prepared.items()
              for i, info in enumerate(prep.info) if info.get("converted")]
    return notes + [f"{m} input {i}: {info['dropped_frames']} of {info['frames'] + info['dropped_frames']} sampled "
                    "frames dropped to fit max_frames" for m, prep in prepared.items()
                    for i, info in enumerate(prep.info) if info.get("dropped_frames")]


def _item_keys(key: str, embeddings: list[np.ndarray]) -> list[str]:
    """Each item's content key: the embedding cache's key of the call's inputs and the item's index."""
    return [f"{key}#{i}" for i in range(len(embeddings))]
