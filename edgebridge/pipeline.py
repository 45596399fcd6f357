"""``Pipeline``: a bundle's engines chained, media in, text out, every stage timed.

    from edgebridge import Pipeline
    pipe = Pipeline.from_bundle("bundle/", encoder_backend="onnxruntime", device="CPU")
    result = pipe.generate("<image>\\nWhat is this?", images=["cat.jpg"], max_new_tokens=32)
    print(result.text, result.timings["ttft_ms"], result.devices)

One ``generate`` (``ARCHITECTURE.md`` walks it): ``render_prompt`` (placeholders, chat template)
-> each modality's stage prepares its items -> tool stages run (their text goes into the prompt)
-> ``build_plan`` -> the context is checked to hold the plan -> encoder stages run -> the LLM
session prefills the plan -> ``decode``. The result carries this call's timings, devices,
warnings and tool outputs; the pipeline keeps only what is meant to last across calls (the
engines, the embedding cache, the session's KV-cache prefix). Requested devices that are not
present fall back to CPU; ``result.devices`` and ``result.warnings`` say so. A pipeline may be shared
between threads: calls run one at a time (``edgebridge/guard.py``), and none after ``close()``.

Imports no torch and no transformers.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgebridge.bundle import Bundle
from edgebridge.call_args import check_call, media_lists
from edgebridge.device_spec import DevicePlacement, parse_placement
from edgebridge.caching import EmbeddingCache
from edgebridge.generation import GenerationResult, GenerationStream, argmax, decode
from edgebridge.guard import CallGuard
from edgebridge.manifest import Manifest
from edgebridge.plan import PromptPlan, build_plan, render_prompt
from edgebridge.preprocess import MediaOptions, Prepared
from edgebridge.runtimes.llamacpp import LlamaSettings
from edgebridge.runtimes.llamacpp.sampler import Sampler
from edgebridge.runtimes.llamacpp.session import LLMSession, PrefillResult, open_bundle_session
from edgebridge.sampling import GenerationConfig
from edgebridge.stages import ModalityStage, StageOptions, StageOutput, open_stage, preprocessing_notes, warm_up
from edgebridge.timing import GenerationTimings, StageTimes, now_ms

__all__ = ["GenerationResult", "GenerationStream", "Pipeline"]


@dataclass
class _Prompted:
    """One call's prompt, up to the prefill: what ``_steps`` reports."""

    plan: PromptPlan
    prefill: PrefillResult
    outputs: dict[str, StageOutput]
    notes: list[str]
    prepared: dict[str, Prepared]


def _llm_settings(given: LlamaSettings | None, placement: DevicePlacement, llm_device: str | None, device: str,
                  gpu_layers: int | str | None) -> LlamaSettings:
    """The LLM's settings: explicit device arguments win over ``llm_settings``' own."""
    settings = given or LlamaSettings()
    if given is None or llm_device is not None or "=" in str(device):
        settings = settings.with_(device=placement.llm)
    return settings if gpu_layers is None else settings.with_(gpu_layers=gpu_layers)


def return_freed_memory() -> None:
    """glibc keeps freed heap for the process to reuse; ``malloc_trim`` hands it back to the system
    (a no-op where the C library is not glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Pipeline:
    """A loaded bundle: one stage per modality and the LLM session."""

    def __init__(self, bundle: Bundle, stages: dict[str, ModalityStage], llm: LLMSession, load_ms: float,
                 warnings: list[str], embedding_cache: EmbeddingCache | None = None) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.stages = stages
        self.llm = llm
        self.embedding_cache = embedding_cache
        self.load_ms = load_ms
        self.load_warnings = warnings
        self._guard = CallGuard(self._release)

    @classmethod
    def from_bundle(cls, path: str | Path, *, encoder_backend: str = "auto", device: str = "CPU",
                    precision: str | None = "f32", threads: int | None = None, n_ctx: int | None = None,
                    llm_settings: LlamaSettings | None = None, verify: bool = True, cache_embeddings: bool = True,
                    reuse_prefix: bool = True, fast_prefill: bool = True, llm_device: str | None = None,
                    gpu_layers: int | str | None = None) -> "Pipeline":
        """Open a bundle and load its engines.

        ``encoder_backend`` (auto|onnxruntime|openvino): ``auto`` runs each encoder on the engine its
        export measured fastest on its machine (``engine_choice``), onnxruntime where none is recorded.
        ``device`` (CPU|GPU|NPU|AUTO) applies to the encoders, or is per component
        (``"encoder=GPU,llm=GPU"``); ``llm_device`` (CPU|GPU|AUTO) puts the LLM on a llama.cpp GPU
        backend (Vulkan) with ``gpu_layers`` of its layers (default all). An unavailable device falls
        back to CPU and is reported. ``precision`` is the OpenVINO execution precision (``f32`` strict,
        ``bf16``/``f16`` faster, ``auto`` the device default). ``verify`` checks every file's sha256.
        ``cache_embeddings`` reuses encoder outputs for inputs seen before (by content hash) and
        ``reuse_prefix`` keeps the KV cache of a prompt prefix shared with the previous call; both
        give the same results as recomputing. ``fast_prefill`` uses the bundle's prefill graph (if it
        has one) for a conversation's first prompt. Without ``llm_settings`` the LLM runs with the
        settings the export measured on its machine (flash attention on or off, when recorded).
        """
        start = now_ms()
        bundle = Bundle.open(path, verify=verify)
        cache = EmbeddingCache() if cache_embeddings else None
        placement = parse_placement(device, llm_device)
        options, sessions = StageOptions(encoder_backend, placement.encoder, threads, precision).check(), {}
        stages = {m: open_stage(bundle.root, m, spec, bundle.manifest.components[spec.component], options,
                                bundle.manifest.static_shape(spec.component), cache, sessions)
                  for m, spec in bundle.manifest.inputs.items()}
        reports = {s.component: s.report for s in stages.values()}
        warnings = [f"{name}: {r.fallback_reason}; ran on {r.executed}." for name, r in reports.items()
                    if r.fallback_reason]
        warnings += warm_up(stages)  # before the LLM loads: its peak does not stack on the LLM's memory
        llm = open_bundle_session(bundle, _llm_settings(llm_settings, placement, llm_device, device, gpu_layers),
                                  threads=threads, n_ctx=n_ctx, reuse_prefix=reuse_prefix, fast_prefill=fast_prefill,
                                  recorded_settings=llm_settings is None)
        return cls(bundle, stages, llm, now_ms() - start, warnings + llm.warnings, cache)

    def close(self) -> None:
        """Release the engines (after a call that is running ends); later calls raise ``PipelineClosedError``."""
        self._guard.close()

    def _release(self) -> None:
        """Free every engine now, not when the garbage collector finds the pipeline, and hand the freed
        heap back: on the bench LLaVA (prefill graph bundle) a closed pipeline held 259 MB resident until
        collected and 196 MB after; 43 MB after this. A process that opens one pipeline after another
        (a server swapping bundles, the benchmarks) otherwise holds both."""
        self.llm.close()
        for stage in self.stages.values():
            stage.close()
        if self.embedding_cache is not None:
            self.embedding_cache.clear()
        return_freed_memory()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- generation --------------------------------------------------------------------------

    def prepare(self, modality: str, items: Sequence[Any], text: str = "") -> Prepared:
        """Preprocess and check ``items``; ``text`` feeds encoders that also read the prompt (a Q-Former).
        With the embedding cache on, the same items (by content) may give back an earlier call's object:
        read it, do not change it."""
        return self.stages[modality].prepare(items, text)

    def generate(self, prompt: str, images: Sequence[Any] | None = None, audio: Sequence[Any] | None = None, *,
                 videos: Sequence[Any] | None = None, max_new_tokens: int = 64, stream: bool = False,
                 chat: bool = False, system: str | None = None, stop_at_eos: bool = True,
                 min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                 video_fps: float | None = None, max_frames: int | None = None, pan_and_scan: bool | None = None,
                 config: GenerationConfig | None = None) -> GenerationResult | GenerationStream:
        """Generate; ``stream=True`` returns a ``GenerationStream`` of text pieces. ``config`` chooses the
        tokens (temperature, top-k/p, min-p, penalties, seed, stop strings; default greedy) and, when
        given, its ``max_new_tokens`` / ``stop_at_eos`` are the ones used.
        ``min_image_tokens`` / ``max_image_tokens``: the positions one image (or video frame) may cost
        (native-resolution models; default from the model's processor config); ``video_fps`` /
        ``max_frames``: how videos are sampled; ``pan_and_scan``: Gemma 3's extra crops of elongated images.
        The result's ``media`` says what each item got."""
        config = (config or GenerationConfig(max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos)).check()
        check_call(prompt, config.max_new_tokens, system)
        options = MediaOptions(min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens,
                               video_fps=video_fps, max_frames=max_frames, pan_and_scan=pan_and_scan).check()
        steps = self._steps(prompt, media_lists(images, audio, videos), config, chat, system, options)
        if stream:
            return GenerationStream(steps)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def prefill_logits(self, prompt: str, images: Sequence[Any] | None = None, audio: Sequence[Any] | None = None,
                       *, chat: bool = False, system: str | None = None, pan_and_scan: bool | None = None) -> np.ndarray:
        """Next-token logits ``[V]`` after the prompt and media (first generation step)."""
        options = MediaOptions(pan_and_scan=pan_and_scan).check()
        with self._guard.call():
            return self._prompt(prompt, media_lists(images, audio), chat, system, StageTimes(), options).prefill.logits

    def _steps(self, prompt: str, media: dict[str, list[Any]], config: GenerationConfig, chat: bool,
               system: str | None, options: MediaOptions):
        with self._guard.call():
            start, times = now_ms(), StageTimes()
            prompted = self._prompt(prompt, media, chat, system, times, options)
            ttft = now_ms() - start
            stop_ids = set(self.manifest.prompt.stop_token_ids) if config.stop_at_eos else set()
            sampler = None if config.greedy else Sampler(config, self.llm.n_vocab)
            try:
                decoded = yield from decode(self.llm, prompted.prefill.logits, config, stop_ids,
                                            argmax if sampler is None else sampler.choose)
            finally:
                if sampler is not None:
                    sampler.close()
        timings = GenerationTimings(
            stages=dict(times.stages), ttft_ms=ttft, prompt_tokens=prompted.plan.n_positions,
            new_tokens=len(decoded.token_ids), decode_ms=decoded.decode_ms, per_token_ms=decoded.per_token_ms,
            total_ms=now_ms() - start, reused_prefix_positions=prompted.prefill.reused_positions,
            prefill_engine=prompted.prefill.engine,
            embedding_cache_hits=self.embedding_cache.hits if self.embedding_cache else 0)
        devices = {self.stages[m].component: self.stages[m].report.as_dict() for m in prompted.outputs}
        devices["llm"] = self.llm.report.as_dict()
        return GenerationResult(
            text=decoded.text, token_ids=decoded.token_ids, prompt_tokens=prompted.plan.n_positions,
            finish_reason=decoded.finish_reason, timings=timings, devices=devices,
            warnings=list(self.load_warnings) + prompted.notes, call_warnings=prompted.notes,
            tool_outputs={m: list(o.texts) for m, o in prompted.outputs.items() if o.texts is not None},
            media={m: [dict(i) for i in p.info] for m, p in prompted.prepared.items()})

    def _prompt(self, prompt: str, media: dict[str, list[Any]], chat: bool, system: str | None,
                times: StageTimes, options: MediaOptions) -> _Prompted:
        """Render, prepare, run tools, plan, encode and prefill."""
        with times.stage("prompt"):
            counts = {m: len(items) for m, items in media.items()}
            rendered = render_prompt(prompt, self.manifest.inputs, self.manifest.prompt, counts, chat=chat,
                                     system=system)
        prepared = {}
        for modality in (m for m, items in media.items() if items):  # render_prompt refused unknown ones
            with times.stage(f"preprocess_{modality}"):
                prepared[modality] = self.stages[modality].prepare(media[modality], rendered.instruction, options)
        outputs = {}
        for modality in (m for m in prepared if self.stages[m].produces == "text"):
            with times.stage(f"tool_{modality}"):
                outputs[modality] = self.stages[modality].run(prepared[modality])
        with times.stage("prompt"):
            items = {m: self.stages[m].media_items(p, outputs.get(m)) for m, p in prepared.items()}
            bos = self.llm.bos_id if self.manifest.prompt.add_bos else None
            plan = build_plan(rendered, self.manifest.inputs, items, self.llm.tokenize, bos)
        self.llm.check_fits(plan.n_positions)  # refuse before spending time on the encoders
        for modality in (m for m in prepared if self.stages[m].produces == "embeddings"):
            with times.stage(f"encode_{modality}"):
                outputs[modality] = self.stages[modality].run(prepared[modality])
        embeds = {(m, i): arr for m, out in outputs.items() for i, arr in enumerate(out.embeddings or [])}
        keys = {(m, i): key for m, out in outputs.items() for i, key in enumerate(out.keys or [])}
        with times.stage("prefill"):
            prefill = self.llm.prefill(plan, embeds, keys)
        return _Prompted(plan, prefill, outputs, preprocessing_notes(prepared), prepared)
