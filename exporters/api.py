"""``export_bundle``: a Hugging Face model folder -> a checked edgebridge bundle.

Every artifact is held to its parity gate before the bundle is committed; a failed gate raises
and leaves no bundle behind (the writer's temporary folder is removed, an existing bundle at the
target stays as it was).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from edgebridge import __version__
from edgebridge.bundle import BundleWriter
from edgebridge.errors import EdgebridgeError, ExportError, ParityError
from edgebridge.exporters.encoder import (
    ENCODER_TOLERANCE,
    OPSET,
    Case,
    export_onnx,
    measure_encoder,
    reference_case,
    reference_outputs,
    static_example,
    tensor_specs,
)
from edgebridge.exporters.families import family_for
from edgebridge.exporters.families.base import EncoderExport, Family, Loaded, read_config
from edgebridge.exporters.gguf.export import export_llm, import_gguf, validate_existing_gguf
from edgebridge.exporters.prefill import FILE_NAME as PREFILL_FILE, PREFILL_PRECISIONS, export_prefill
from edgebridge.exporters.quantize import QuantPlan, Trial, first_within_budget, parse_budget, parse_quantize, verdict
from edgebridge.exporters.quantize.calibration import CalibrationSet, calibration_for
from edgebridge.exporters.quantize.onnx_quant import quantize_onnx
from edgebridge.exporters.quantize.openvino_quant import quantize_openvino
from edgebridge.exporters.tools import export_tool
from edgebridge.manifest import Artifact, Component, Manifest, ModalityInput, Parity, TensorSpec
from edgebridge.parity import violations
from edgebridge.runtimes.registry import open_encoder
from edgebridge.runtimes.static_shapes import conform, run_static
from edgebridge.timing import median_ms

ENCODER_FORMATS = ("onnx", "openvino")
FORMAT_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino"}  # the runtime backend that runs each format
LLM_DTYPES = ("f32", "f16")

Step = Callable[[str], None]


def _load(family: Family, model_dir: Path) -> Loaded:
    try:
        return family.load(model_dir)
    except EdgebridgeError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(
            f"could not load the {family.name} model from '{model_dir}': {str(exc).splitlines()[0][:300]}",
            hint="The folder needs config.json, safetensors weights and the tokenizer/processor files.",
        ) from exc


@dataclass
class _EncoderCandidate:
    trial: Trial
    files: list[Path]
    parity: Parity
    method: dict[str, Any]


def _produce(fmt: str, precision: str, onnx_fp32: Path, out_dir: Path, component: str,
             calib: CalibrationSet | None, options: dict[str, Any]) -> tuple[list[Path], dict[str, Any]]:
    """Write the ``fmt`` artifact at ``precision`` into ``out_dir``; returns (files, method)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        dst = out_dir / f"{component}.onnx"
        return [dst], quantize_onnx(onnx_fp32, dst, precision, calib, **options)
    xml = out_dir / f"{component}.xml"
    method = quantize_openvino(onnx_fp32, xml, precision, calib, **options)
    return [xml, xml.with_suffix(".bin")], method


def _latency_ms(backend: str, files: list[Path], inputs: dict[str, np.ndarray], static: dict[str, Any] | None,
                **options: Any) -> float:
    session = open_encoder(backend, files, **options)

    def run() -> Any:
        return run_static(session.run, inputs, static) if static else session.run(inputs)

    return round(median_ms(run, runs=5), 3)


def _static_spec(enc: EncoderExport, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"batch": int(next(iter(example.values())).shape[0]),
            "inputs": {name: [int(d) for d in example[name].shape] for name in enc.input_names},
            "pad_axes": {k: list(v) for k, v in enc.pad_axes.items()}}


def _static_calibration(calib: CalibrationSet, static: dict[str, Any]) -> CalibrationSet:
    """Calibration items in the static graph's shapes (rows and token axes zero-padded)."""
    def fit(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        item = conform(item, static)
        rows = next(iter(item.values())).shape[0]
        return {k: np.concatenate([v, np.zeros((static["batch"] - rows, *v.shape[1:]), v.dtype)])
                if rows < static["batch"] else v[:static["batch"]] for k, v in item.items()}

    return CalibrationSet(calibrate=[fit(i) for i in calib.calibrate], evaluate=calib.evaluate,
                          description=calib.description)


def _export_encoder(enc: EncoderExport, writer: BundleWriter, scratch: Path, plan: QuantPlan,
                    tolerance: dict[str, float], step: Step, static: dict[str, int] | None = None,
                    ) -> tuple[Component, dict[str, Any] | None]:
    example = static_example(enc, static["batch"], static["tokens"]) if static else None
    static_spec = _static_spec(enc, example) if example else None
    inputs, outputs = tensor_specs(enc, example)
    step(f"{enc.component}: PyTorch reference outputs")
    cases = reference_outputs(enc)
    onnx_fp32 = scratch / enc.component / "fp32.onnx"
    onnx_fp32.parent.mkdir(parents=True, exist_ok=True)
    step(f"{enc.component}: exporting ONNX (torch.onnx, dynamo, opset 20{', static shapes' if static else ''})")
    bridge_nodes = export_onnx(enc, onnx_fp32, static_inputs=example)
    calib: CalibrationSet | None = None
    quant_calib: CalibrationSet | None = None
    eval_cases: list[Case] = []
    if plan.quantizes_encoders:
        step(f"{enc.component}: calibration set and PyTorch references on held-out inputs")
        calib = calibration_for(enc.modality, enc.preprocessing, plan.calibration)
        quant_calib = _static_calibration(calib, static_spec) if static_spec else calib
        eval_cases = [reference_case(enc, {k: torch.from_numpy(v) for k, v in item.items()})
                      for item in calib.evaluate]
    budget = plan.budget["encoder"]
    timing_input = {k: v[:1] for k, v in cases[0].inputs.items()}
    artifacts: dict[str, Artifact] = {}
    for name, source in enc.assets.items():  # files the runtime's preprocessing reads (hashed like the rest)
        shutil.copyfile(source, writer.path(name))
    for fmt in plan.encoder:
        backend = FORMAT_BACKEND[fmt]
        engine_opts = {"precision": "f32"} if fmt == "openvino" else {}
        tried: dict[str, _EncoderCandidate] = {}

        def evaluate(precision: str, fmt: str = fmt, backend: str = backend, engine_opts=engine_opts) -> Trial:
            step(f"{enc.component}: {fmt} {precision} (write, parity, latency)")
            files, method = _produce(fmt, precision, onnx_fp32, scratch / enc.component / fmt / precision,
                                     enc.component, quant_calib, plan.options)
            opts = {**engine_opts, "artifact_precision": precision, "static": static_spec}
            if precision == "fp32":  # the strict gate, on seeded inputs at two batch sizes
                parity = measure_encoder(backend, files, cases, enc.tokens_per_item, tolerance, **opts)
            else:  # drift against PyTorch on held-out real inputs, held to the budget
                parity = measure_encoder(backend, files, eval_cases, enc.tokens_per_item, budget, **opts)
            passed, why = verdict(parity.metrics, parity.tolerance)
            size = sum(f.stat().st_size for f in files)
            latency = _latency_ms(backend, files, timing_input, static_spec, **engine_opts)
            trial = Trial(precision, size, {"latency_ms": latency}, parity.metrics, parity.tolerance, passed, why)
            tried[precision] = _EncoderCandidate(trial, files, parity, method)
            return trial

        candidates = plan.candidates(fmt)
        kept, trials = first_within_budget(candidates, evaluate)
        if kept is None:
            last = trials[-1]
            key, value, limit = violations(last.metrics, last.tolerance)[0]
            raise ParityError(
                f"{enc.component} ({fmt} {last.precision})", key, value, limit,
                hint="Raise the budget (--max-drift encoder.cosine_min=...) or choose a larger precision "
                     "(--quantize encoder=fp16)." if last.precision != "fp32" else None,
            )
        chosen = tried[kept.precision]
        rel_files = []
        for f in chosen.files:
            rel = f"{enc.component}{f.suffix}"
            shutil.copyfile(f, writer.path(rel))
            rel_files.append(rel)
        quantization = None
        if kept.precision != "fp32" or len(candidates) > 1:
            quantization = {"precision": kept.precision, **chosen.method, "speed": kept.speed, "bytes": kept.bytes}
            if calib is not None:
                quantization["calibration"] = calib.description
            if len(candidates) > 1:
                quantization["trials"] = [t.as_dict() for t in trials]
        artifacts[fmt] = Artifact(format=fmt, files=rel_files, precision=kept.precision, parity=chosen.parity,
                                  quantization=quantization, details={"opset": OPSET} if fmt == "onnx" else {})
    return Component(
        role="encoder",
        modality=enc.modality,
        inputs=inputs,
        outputs=outputs,
        artifacts=artifacts,
        bridge={**enc.bridge, "graph_nodes": bridge_nodes},
        description=enc.description,
    ), static_spec


def export_bundle(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    encoder_formats: Iterable[str] = ENCODER_FORMATS,
    llm_dtype: str = "f16",
    quantize: str | None = None,
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

    ``quantize`` is the ``--quantize`` text (``auto``, or ``encoder=int8,llm=q4_k_m`` ...);
    ``max_drift`` the ``--max-drift`` items (or a ready budget dict); ``llm_gguf`` an existing
    GGUF to use as the LLM. ``static`` fixes every encoder shape (``static_batch`` rows, token axes
    of ``static_tokens``) for accelerators that compile fixed shapes. ``prefill`` (``fp32`` or ``int8``)
    adds the LLM's prefill graph, whose KV cache the runtime hands to llama.cpp (faster prompts on
    CPUs where onnxruntime's int8 GEMM outruns llama.cpp). ``step`` receives a short message as
    each stage starts.
    """
    step = step or (lambda _msg: None)
    model_dir = Path(model_dir)
    formats = tuple(dict.fromkeys(encoder_formats))
    unknown = set(formats) - set(ENCODER_FORMATS)
    if unknown or not formats:
        raise ExportError(f"unknown encoder format(s) {sorted(unknown) or formats}.",
                          hint=f"Choose from: {', '.join(ENCODER_FORMATS)}.")
    if llm_dtype not in LLM_DTYPES:
        raise ExportError(f"unknown LLM dtype '{llm_dtype}'.", hint=f"Choose from: {', '.join(LLM_DTYPES)}.")
    parsed = parse_quantize(quantize, formats, llm_dtype)
    if llm_gguf is not None and quantize and "llm" in quantize and parsed["llm"] != llm_dtype:
        raise ExportError("--llm-gguf uses the GGUF as it is; it cannot be combined with --quantize llm=...")
    if prefill not in (None, "none", *PREFILL_PRECISIONS):
        raise ExportError(f"unknown prefill precision '{prefill}'.",
                          hint=f"Choose from: none, {', '.join(PREFILL_PRECISIONS)}.")
    budget = max_drift if isinstance(max_drift, dict) else parse_budget(max_drift)
    plan = QuantPlan(encoder=parsed["encoder"], llm=parsed["llm"], budget=budget,
                     calibration=Path(calibration) if calibration else None,
                     options={"int4_mode": int4_mode, "int4_group_size": int4_group_size})
    family = family_for(model_dir)
    tolerance = dict(encoder_tolerance or ENCODER_TOLERANCE)
    started = time.perf_counter()
    with BundleWriter(out_dir, force=force) as writer, tempfile.TemporaryDirectory(prefix="edgebridge-") as scratch:
        step(f"loading {family.name} model from {model_dir}")
        loaded = _load(family, model_dir)
        layout = family.prompt_layout(loaded)
        encoders = family.encoders(loaded)
        n_embd = _llm_width(family, loaded)
        llm_gguf = llm_gguf if llm_gguf is not None else family.existing_gguf(loaded)
        if llm_gguf is not None:  # refuse a wrong GGUF before the long encoder work (and before any C call)
            validate_existing_gguf(Path(llm_gguf), n_embd)
        components: dict[str, Component] = {}
        inputs: dict[str, ModalityInput] = {}
        static_shapes: dict[str, Any] = {}
        fixed = {"batch": static_batch, "tokens": static_tokens} if static else None
        for enc in encoders:
            components[enc.component], spec = _export_encoder(enc, writer, Path(scratch), plan, tolerance, step, fixed)
            if spec:
                static_shapes[enc.component] = spec
            inputs[enc.modality] = ModalityInput(
                component=enc.component,
                preprocessing=enc.preprocessing,
                placeholder=enc.placeholder,
                tokens_per_item=enc.tokens_per_item,
                layout=enc.layout,
            )
        for tool in family.tools(loaded):
            components[tool.component] = export_tool(tool, writer.tmp, Path(scratch), formats, step)
            inputs[tool.modality] = ModalityInput(component=tool.component, preprocessing=tool.preprocessing,
                                                  placeholder=tool.placeholder, tokens_per_item=0, layout=tool.layout)
        if llm_gguf is not None:
            llm_art = import_gguf(Path(llm_gguf), family, loaded, layout, writer.path("llm.gguf"), plan, n_embd,
                                  step=step)
            text_type, n_vocab = llm_art.details["architecture"], int(llm_art.details["vocab_size"])
            description = f"existing GGUF {Path(llm_gguf).name} ({text_type})"
        else:
            llm_art, text = export_llm(family, loaded, layout, writer.path("llm.gguf"), plan, step=step)
            text_type, n_vocab = text.model_type, int(text.config.vocab_size)
            description = f"{text.model_type} decoder, {llm_art.details['n_params'] / 1e6:.1f}M parameters"
        llm_artifacts = {"gguf": llm_art}
        if prefill not in (None, "none"):
            text_model = text if llm_gguf is None else family.text_model(loaded)
            llm_artifacts["prefill"] = export_prefill(text_model, family.causal_lm(loaded), writer.path("llm.gguf"),
                                                      writer.path(PREFILL_FILE), prefill, plan.budget["llm"],
                                                      step=step)
        components["llm"] = Component(
            role="llm",
            modality="text",
            inputs=[TensorSpec(name="inputs_embeds", dtype="float32", shape=["tokens", n_embd])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["tokens", n_vocab])],
            artifacts=llm_artifacts,
            description=description,
        )
        config = read_config(model_dir)
        manifest = Manifest(
            family=family.name,
            source={
                "model_type": config.get("model_type"),
                "architectures": config.get("architectures", []),
                "folder": model_dir.name,
                "text_model_type": text_type,
                "export_seconds": round(time.perf_counter() - started, 1),
            },
            components=components,
            inputs=inputs,
            prompt=layout,
            edgebridge_version=__version__,
            static_shapes=static_shapes or None,
        )
        _check_widths(manifest, n_embd)
        step("writing manifest and moving the bundle into place")
        writer.commit(manifest)
    return manifest


def _llm_width(family: Family, loaded: Loaded) -> int:
    """The LLM's input embedding width (what every encoder + bridge must produce)."""
    return int(family.causal_lm(loaded).get_input_embeddings().weight.shape[1])


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
