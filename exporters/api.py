"""``export_bundle``: a Hugging Face model folder -> a checked edgebridge bundle.

Every artifact is held to its parity gate before the bundle is committed; a failed gate raises
and leaves no bundle behind (the writer's temporary folder is removed, an existing bundle at the
target stays as it was).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from edgebridge import __version__
from edgebridge.bundle import BundleWriter
from edgebridge.errors import EdgebridgeError, ExportError, UnsupportedModelError
from edgebridge.exporters.encoder import ENCODER_TOLERANCE
from edgebridge.exporters.encoder_artifacts import export_encoder
from edgebridge.exporters.families import family_for
from edgebridge.exporters.families.base import Family, Loaded, read_config
from edgebridge.exporters.gguf.export import export_llm, import_gguf, validate_existing_gguf
from edgebridge.exporters.prefill import FILE_NAME as PREFILL_FILE, PREFILL_PRECISIONS, export_prefill
from edgebridge.exporters.prefill import check_supported as check_prefill_supported
from edgebridge.exporters.prefill_choice import JointChoice, choose_prefill, declined
from edgebridge.exporters.runtime_choice import choose_runtime, match_values_layout
from edgebridge.exporters.quantize import QuantPlan, parse_budget, parse_quantize, target_defaults
from edgebridge.exporters.quantize.targets import PROFILE_TARGETS
from edgebridge.exporters.tools import export_tool
from edgebridge.formats import ENCODER_FORMATS
from edgebridge.manifest import (
    Artifact,
    Component,
    Manifest,
    ModalityInput,
    PromptLayout,
    StaticShape,
    TensorSpec,
    canonical_precision,
)

LLM_DTYPES = ("f32", "f16")

Step = Callable[[str], None]


@dataclass
class ExportOptions:
    """``export_bundle``'s arguments, checked before any work starts."""

    formats: tuple[str, ...]
    plan: QuantPlan
    llm_gguf: Path | None
    static: dict[str, int] | None
    prefill: str | None
    tolerance: dict[str, float]
    prefill_open: bool = False  # not given: a latency target measures the int8 prefill graph and decides


@dataclass
class _Parts:
    """What the export has produced so far (the manifest's components and inputs)."""

    components: dict[str, Component] = field(default_factory=dict)
    inputs: dict[str, ModalityInput] = field(default_factory=dict)
    static_shapes: dict[str, StaticShape] = field(default_factory=dict)


def _load(family: Family, model_dir: Path) -> Loaded:
    try:
        return family.load(model_dir)
    except EdgebridgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers, safetensors and tokenizers raise their own types
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(
            f"could not load the {family.name} model from '{model_dir}': {type(exc).__name__}: {first}",
            hint="The folder needs config.json, intact safetensors weights and the tokenizer/processor files.",
        ) from None


def export_bundle(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    encoder_formats: Iterable[str] = ENCODER_FORMATS,
    llm_dtype: str | None = None,
    quantize: str | None = None,
    profile_target: str | None = None,
    max_memory_mb: float | None = None,
    max_drift: list[str] | dict[str, dict[str, float]] | None = None,
    calibration: str | Path | None = None,
    llm_gguf: str | Path | None = None,
    int4_mode: str = "sym",
    int4_group_size: int = 128,
    static: bool = False,
    static_batch: int = 1,
    static_tokens: int = 32,
    prefill: str | None = None,
    force: bool = False,
    encoder_tolerance: dict[str, float] | None = None,
    step: Step | None = None,
) -> Manifest:
    """Export ``model_dir`` (a local HF folder) into the bundle folder ``out_dir``.

    ``llm_dtype`` is the GGUF type without ``quantize`` (default f16). ``profile_target`` (``latency`` or
    ``size``; ``edgebridge export`` defaults to ``latency``) makes every precision not given explicitly
    ``auto``, measures each candidate on this machine and keeps the best within the drift budget and
    ``max_memory_mb`` of weights, recording why (``exporters/quantize/targets.py``).
    ``quantize`` is the ``--quantize`` text (``auto``, or ``encoder=int8,llm=q4_k_m`` ...);
    ``max_drift`` the ``--max-drift`` items (or a ready budget dict); ``llm_gguf`` an existing
    GGUF to use as the LLM. ``static`` fixes every encoder shape (``static_batch`` rows, token axes
    of ``static_tokens``) for accelerators that compile fixed shapes. ``prefill`` (``f32`` or ``int8``)
    adds the LLM's prefill graph, whose KV cache the runtime hands to llama.cpp (faster prompts on
    CPUs where onnxruntime's int8 GEMM outruns llama.cpp). ``step`` receives a short message as
    each stage starts.
    """
    step = step or (lambda _msg: None)
    model_dir = Path(model_dir)
    options = export_options(encoder_formats, llm_dtype, quantize, max_drift, calibration, llm_gguf,
                             {"int4_mode": int4_mode, "int4_group_size": int4_group_size},
                             {"batch": static_batch, "tokens": static_tokens} if static else None, prefill,
                             encoder_tolerance, profile_target, max_memory_mb)
    protect = [model_dir, options.llm_gguf, options.plan.calibration]
    with BundleWriter(out_dir, force=force, protect=protect) as writer:
        manifest = _export_into(writer, model_dir, options, step)
        step("writing manifest and moving the bundle into place")
        writer.commit(manifest)
    return manifest


def _export_into(writer: BundleWriter, model_dir: Path, options: ExportOptions, step: Step) -> Manifest:
    """Every artifact of the bundle written into ``writer``; the manifest that describes them."""
    family = family_for(model_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgebridge-") as scratch:
        step(f"loading {family.name} model from {model_dir}")
        loaded = _load(family, model_dir)
        n_embd = _llm_width(family, loaded)
        gguf = options.llm_gguf if options.llm_gguf is not None else family.existing_gguf(loaded)
        if gguf is not None:  # refuse a wrong GGUF before the long encoder work (and before any C call)
            validate_existing_gguf(Path(gguf), n_embd)
        if options.prefill:  # and a text model the prefill graph does not reproduce
            check_prefill_supported(family.text_model(loaded).model_type)
        layout = family.prompt_layout(loaded)
        parts = _export_media(family, loaded, writer, Path(scratch), options, step)
        parts.components["llm"], text_type = _export_llm(family, loaded, layout, writer, gguf, options, n_embd, step,
                                                         _run_weights(writer, parts))
    manifest = _manifest(family, model_dir, layout, parts, text_type, time.perf_counter() - started)
    _check_widths(manifest, n_embd)
    return manifest


def export_options(encoder_formats: Iterable[str], llm_dtype: str | None, quantize: str | None,
                   max_drift: list[str] | dict[str, dict[str, float]] | None, calibration: str | Path | None,
                   llm_gguf: str | Path | None, quant_options: dict[str, Any], static: dict[str, int] | None,
                   prefill: str | None, encoder_tolerance: dict[str, float] | None,
                   profile_target: str | None = None, max_memory_mb: float | None = None) -> ExportOptions:
    """The arguments checked and parsed; a bad one raises ``ExportError`` before any work."""
    formats = tuple(dict.fromkeys(encoder_formats))
    unknown = set(formats) - set(ENCODER_FORMATS)
    if unknown or not formats:
        raise ExportError(f"unknown encoder format(s) {sorted(unknown) or formats}.",
                          hint=f"Choose from: {', '.join(ENCODER_FORMATS)}.")
    target = _check_target(profile_target, max_memory_mb)
    given_dtype = llm_dtype is not None
    llm_dtype = canonical_precision(llm_dtype or "f16")
    if llm_dtype not in LLM_DTYPES:
        raise ExportError(f"unknown LLM dtype '{llm_dtype}'.", hint=f"Choose from: {', '.join(LLM_DTYPES)}.")
    parsed = parse_quantize(quantize, formats, llm_dtype)
    if target is not None:  # what the user did not fix is the target's to choose
        parsed = target_defaults(parsed, quantize, formats, given_dtype)
    if llm_gguf is not None and quantize and "llm" in quantize and parsed["llm"] != llm_dtype:
        raise ExportError("--llm-gguf uses the GGUF as it is; it cannot be combined with --quantize llm=...")
    prefill_open = prefill is None and target == "latency"
    prefill = None if prefill in (None, "none") else canonical_precision(prefill)
    if prefill is not None and prefill not in PREFILL_PRECISIONS:
        raise ExportError(f"unknown prefill precision '{prefill}'.",
                          hint=f"Choose from: none, {', '.join(PREFILL_PRECISIONS)}.")
    budget = max_drift if isinstance(max_drift, dict) else parse_budget(max_drift)
    if any(not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf"))
           for bounds in budget.values() for v in bounds.values()):
        raise ExportError(f"the drift budget holds a value that is not a finite number: {budget}.",
                          hint="Give every bound as a finite number, e.g. --max-drift encoder.cosine_min=0.99.")
    plan = QuantPlan(encoder=parsed["encoder"], llm=parsed["llm"], budget=budget,
                     calibration=Path(calibration) if calibration else None, options=quant_options,
                     target=target, max_memory_mb=max_memory_mb)
    return ExportOptions(formats, plan, Path(llm_gguf) if llm_gguf is not None else None, static, prefill,
                         dict(encoder_tolerance or ENCODER_TOLERANCE), prefill_open)


def _check_target(profile_target: str | None, max_memory_mb: float | None) -> str | None:
    target = None if profile_target in (None, "none") else str(profile_target).lower()
    if target is not None and target not in PROFILE_TARGETS:
        raise ExportError(f"unknown profile target '{profile_target}'.",
                          hint=f"Choose from: {', '.join(PROFILE_TARGETS)}, none.")
    if max_memory_mb is not None and (isinstance(max_memory_mb, bool) or not isinstance(max_memory_mb, (int, float))
                                      or not math.isfinite(max_memory_mb) or max_memory_mb <= 0):
        raise ExportError(f"--max-memory must be a positive number of MB, got {max_memory_mb!r}.")
    return target


def _export_media(family: Family, loaded: Loaded, writer: BundleWriter, scratch: Path, options: ExportOptions,
                  step: Step) -> _Parts:
    """Every encoder + bridge graph and every tool, with the prompt placement of their modality."""
    parts = _Parts()
    for enc in family.encoders(loaded):
        parts.components[enc.component], shape = export_encoder(enc, writer, scratch, options.plan,
                                                                options.tolerance, step, options.static)
        if shape is not None:
            parts.static_shapes[enc.component] = shape
        for item in [enc, *enc.shared]:
            parts.inputs[item.modality] = ModalityInput(component=enc.component, preprocessing=item.preprocessing,
                                                        placeholder=item.placeholder,
                                                        tokens_per_item=item.tokens_per_item, layout=item.layout)
    for tool in family.tools(loaded):
        parts.components[tool.component] = export_tool(tool, writer.tmp, scratch, options.formats, step)
        parts.inputs[tool.modality] = ModalityInput(component=tool.component, preprocessing=tool.preprocessing,
                                                    placeholder=tool.placeholder, tokens_per_item=0, layout=tool.layout)
    return parts


def _run_weights(writer: BundleWriter, parts: _Parts) -> int:
    """Bytes of the media components one run loads: per component, its largest format (a run loads one)."""
    return sum(max((sum(writer.path(f).stat().st_size for f in art.files) for art in comp.artifacts.values()),
                   default=0) for comp in parts.components.values())


def _export_llm(family: Family, loaded: Loaded, layout: PromptLayout, writer: BundleWriter, gguf: Path | None,
                options: ExportOptions, n_embd: int, step: Step, used_bytes: int = 0) -> tuple[Component, str]:
    """The LLM component (a converted or an existing GGUF, and the prefill graph if asked); its text type."""
    if gguf is not None:
        art = import_gguf(Path(gguf), family, loaded, layout, writer.path("llm.gguf"), options.plan, n_embd, step=step)
        text_type, n_vocab = art.details["architecture"], int(art.details["vocab_size"])
        description = f"existing GGUF {Path(gguf).name} ({text_type})"
        text = _source_text_model(family, loaded, art, options)
        joint = None
    else:
        text = family.text_model(loaded)
        joint = (JointChoice(text, lambda: family.causal_lm(loaded), writer.path(PREFILL_FILE), options.plan,
                             used_bytes, step) if options.prefill_open else None)
        art = export_llm(family, loaded, layout, writer.path("llm.gguf"), options.plan, step=step,
                         used_bytes=used_bytes, pairing=joint, text=text)
        text_type, n_vocab = text.model_type, int(text.config.vocab_size)
        description = f"{text.model_type} decoder, {art.details['n_params'] / 1e6:.1f}M parameters"
    artifacts: dict[str, Artifact] = {"gguf": art}
    graph = _prefill_graph(family, loaded, text, art, writer, options, joint, used_bytes, step)
    if graph is not None:
        artifacts["prefill"] = graph
    if options.plan.target == "latency":
        step("LLM: timing decode with flash attention off and on")
        art.details["runtime"] = choose_runtime(writer.path("llm.gguf"))
        if graph is not None:  # V as llama.cpp will keep it with the setting just chosen
            layout = match_values_layout(writer.path(PREFILL_FILE), art.details["runtime"]["flash_attn"])
            graph.quantization = {**(graph.quantization or {}), "values": layout}
    component = Component(role="llm", modality="text", artifacts=artifacts, description=description,
                          inputs=[TensorSpec(name="inputs_embeds", dtype="float32", shape=["tokens", n_embd])],
                          outputs=[TensorSpec(name="logits", dtype="float32", shape=["tokens", n_vocab])])
    return component, text_type


def _source_text_model(family: Family, loaded: Loaded, gguf: Artifact, options: ExportOptions) -> Any:
    """The HF text model beside an existing GGUF, when a prefill graph is asked for or to be chosen. A family
    whose LLM exists only as the GGUF (the assistant) has none: ``--prefill`` is refused, and a latency
    target records that llama.cpp prefills (it used to fail the whole default CLI export)."""
    if not (options.prefill or options.prefill_open):
        return None
    try:
        return family.text_model(loaded)
    except UnsupportedModelError as exc:
        if options.prefill:
            raise
        gguf.details["prefill_choice"] = declined(exc)
        return None


def _prefill_graph(family: Family, loaded: Loaded, text: Any, gguf: Artifact, writer: BundleWriter,
                   options: ExportOptions, joint: JointChoice | None, used_bytes: int, step: Step) -> Artifact | None:
    """The prefill artifact: as ``--prefill`` asked, as chosen with the GGUF type (``JointChoice``), or
    chosen for the GGUF as it is (``choose_prefill``); the choice is recorded on the GGUF's details."""
    gguf_path, graph_path = writer.path("llm.gguf"), writer.path(PREFILL_FILE)
    if options.prefill:
        return export_prefill(text, family.causal_lm(loaded), gguf_path, graph_path, options.prefill,
                              options.plan.budget["llm"], step=step)
    if joint is not None and joint.record is not None:
        gguf.details["prefill_choice"] = joint.record
        return joint.graph
    if not options.prefill_open or text is None:
        return None
    graph, gguf.details["prefill_choice"] = choose_prefill(
        text, lambda: family.causal_lm(loaded), gguf_path, graph_path, options.plan,
        used_bytes + gguf_path.stat().st_size, step)
    return graph


def _manifest(family: Family, model_dir: Path, layout: PromptLayout, parts: _Parts, text_type: str,
              seconds: float) -> Manifest:
    config = read_config(model_dir)
    return Manifest(
        family=family.name,
        source={"model_type": config.get("model_type"), "architectures": config.get("architectures", []),
                "folder": model_dir.name, "text_model_type": text_type, "export_seconds": round(seconds, 1)},
        components=parts.components,
        inputs=parts.inputs,
        prompt=layout,
        edgebridge_version=__version__,
        static_shapes=parts.static_shapes or None,
    )


def _llm_width(family: Family, loaded: Loaded) -> int:
    """The LLM's input embedding width (what every encoder + bridge must produce)."""
    return family.llm_input_width(loaded)


def _check_widths(manifest: Manifest, n_embd: int) -> None:
    for name, comp in manifest.components.items():
        if comp.role == "encoder" and comp.outputs[0].shape[-1] != n_embd:
            raise ExportError(
                f"{name} produces embeddings of width {comp.outputs[0].shape[-1]}, the LLM takes {n_embd}."
            )


def describe_families() -> list[dict[str, Any]]:
    from edgebridge.exporters.families import families

    return [
        {"family": f.name, "model_types": list(f.model_types), "bridge": f.bridge_type,
         "survey_group": f.survey_group, "description": f.description}
        for f in families().values()
    ]
