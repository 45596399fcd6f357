"""One encoder + bridge component: the ONNX graph once (for onnxruntime, its attention as onnxruntime's kernel:
``encoder_attention.py``), then every format at its precision, gated.

Per format the precisions of the plan are tried in order (``choose_within_budget``): the strict
gate for ``f32`` (seeded inputs, two batch sizes, ``ENCODER_TOLERANCE``), the drift budget on
held-out real inputs for everything smaller; size and latency are recorded for each trial.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgebridge.bundle import BundleWriter
from edgebridge.exporters.engine_choice import choose_engine, run_item, side_by_side_ms, timing_options
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
from edgebridge.exporters.encoder_attention import KERNEL, agrees, fuse_attention
from edgebridge.exporters.families.base import EncoderExport
from edgebridge.exporters.onnx_files import save_external
from edgebridge.exporters.quantize import TIMING_ROUNDS, QuantPlan, Trial, choose, verdict
from edgebridge.exporters.quantize.calibration import CalibrationSet, calibration_for
from edgebridge.exporters.quantize.onnx_quant import quantize_onnx
from edgebridge.exporters.quantize.openvino_quant import quantize_openvino
from edgebridge.formats import FORMATS
from edgebridge.manifest import Artifact, Component, Parity, StaticShape
from edgebridge.runtimes.registry import open_encoder
from edgebridge.runtimes.static_shapes import conform
from edgebridge.timing import median_ms

Step = Callable[[str], None]


@dataclass
class _Candidate:
    trial: Trial
    files: list[Path]
    parity: Parity
    method: dict[str, Any]


@dataclass
class _Prepared:
    """What every format's trials share: the f32 ONNX graph, the reference cases, the calibration."""

    enc: EncoderExport
    onnx_f32: Path
    onnxruntime_f32: Path  # what the onnxruntime artifact starts from (its attention as onnxruntime's kernel)
    attention: dict[str, Any]  # what was done to it, for the manifest
    cases: list[Case]
    eval_cases: list[Case]
    calib: CalibrationSet | None
    quant_calib: CalibrationSet | None
    static: StaticShape | None
    bridge_nodes: list[str]


def export_encoder(enc: EncoderExport, writer: BundleWriter, scratch: Path, plan: QuantPlan,
                   tolerance: dict[str, float], step: Step, static: dict[str, int] | None = None,
                   ) -> tuple[Component, StaticShape | None]:
    """Write ``enc``'s artifacts into the bundle; its component and (``static``) its fixed shapes."""
    example = static_example(enc, static["batch"], static["tokens"]) if static else None
    inputs, outputs = tensor_specs(enc, example)
    prep = _prepare(enc, scratch, plan, step, example)
    for name, source in enc.assets.items():  # files the runtime's preprocessing reads (hashed like the rest)
        shutil.copyfile(source, writer.path(name))
    artifacts = {fmt: _export_format(prep, fmt, writer, scratch, plan, tolerance, step) for fmt in plan.encoder}
    engine = None
    if plan.target == "latency" and len(artifacts) > 1 and "onnx" in artifacts:
        step(f"{enc.component}: timing the kept artifacts' engines side by side")
        engine = choose_engine({fmt: [writer.path(f) for f in art.files] for fmt, art in artifacts.items()},
                               _timing_input(prep), prep.static)
    component = Component(role="encoder", modality=enc.modality, inputs=inputs, outputs=outputs, artifacts=artifacts,
                          bridge={**enc.bridge, "graph_nodes": prep.bridge_nodes}, description=enc.description,
                          engine_choice=engine)
    return component, prep.static


def _prepare(enc: EncoderExport, scratch: Path, plan: QuantPlan, step: Step,
             example: dict[str, torch.Tensor] | None) -> _Prepared:
    static = _static_shape(enc, example) if example else None
    step(f"{enc.component}: PyTorch reference outputs")
    cases = reference_outputs(enc)
    onnx_f32 = scratch / enc.component / "f32.onnx"
    onnx_f32.parent.mkdir(parents=True, exist_ok=True)
    step(f"{enc.component}: exporting ONNX (torch.onnx, dynamo, opset 20{', static shapes' if static else ''})")
    bridge_nodes = export_onnx(enc, onnx_f32, static_inputs=example)
    onnxruntime_f32, attention = onnx_f32, {}
    if "onnx" in plan.encoder:
        onnxruntime_f32, attention = _onnxruntime_graph(onnx_f32, cases, static, enc.component, step)
    calib = quant_calib = None
    eval_cases: list[Case] = []
    if plan.quantizes_encoders:
        step(f"{enc.component}: calibration set and PyTorch references on held-out inputs")
        calib = calibration_for(enc.modality, enc.preprocessing, plan.calibration)
        quant_calib = _static_calibration(calib, static) if static else calib
        eval_cases = [reference_case(enc, {k: torch.from_numpy(v) for k, v in item.items()})
                      for item in calib.evaluate]
    return _Prepared(enc, onnx_f32, onnxruntime_f32, attention, cases, eval_cases, calib, quant_calib, static,
                     bridge_nodes)


def _onnxruntime_graph(onnx_f32: Path, cases: list[Case], static: StaticShape | None, component: str,
                       step: Step) -> tuple[Path, dict[str, Any]]:
    """The f32 graph the onnxruntime artifact is made from: the attention as onnxruntime's kernel where the
    rewrite matches and gives the exported graph's outputs (``encoder_attention.py``), else the exported
    graph; and what was done, for the manifest (``details.attention``)."""
    fused = onnx_f32.with_name("f32-onnxruntime.onnx")
    layers = fuse_attention(onnx_f32, fused)
    if not layers:
        return onnx_f32, {"kernel": "none", "reason": "no attention the rewrite matches"}
    step(f"{component}: attention as onnxruntime's kernel ({layers} layers), checked against the exported graph")
    why = agrees(onnx_f32, fused, [c.inputs for c in cases], ENCODER_TOLERANCE["max_abs"], static)
    if why:
        return onnx_f32, {"kernel": "none", "reason": why}
    return fused, {"kernel": KERNEL, "layers": layers}


def _export_format(prep: _Prepared, fmt: str, writer: BundleWriter, scratch: Path,
                   plan: QuantPlan, tolerance: dict[str, float], step: Step) -> Artifact:
    """Try the plan's precisions for ``fmt``, keep the first within budget, copy it into the bundle."""
    enc, tried = prep.enc, {}

    def evaluate(precision: str) -> Trial:
        tried[precision] = _trial(prep, fmt, precision, scratch, plan, tolerance, step)
        return tried[precision].trial

    def retime(passing: list[Trial]) -> str:
        times = side_by_side_ms({t.precision: (fmt, tried[t.precision].files) for t in passing},
                                _timing_input(prep), prep.static)
        for t in passing:
            t.speed = {"latency_ms": times[t.precision]}
        return (f"the {len(passing)} precisions within budget timed again side by side: medians of "
                f"{TIMING_ROUNDS} alternating rounds")

    candidates = plan.candidates(fmt)
    hint = None if candidates[-1] == "f32" else ("Raise the budget (--max-drift encoder.cosine_min=...) or choose a "
                                                 "larger precision (--quantize encoder=f16).")
    kept, trials, selection = choose(f"{enc.component} ({fmt} {{precision}})", candidates, evaluate, hint, plan,
                                     "encoder", retime=retime)
    chosen = tried[kept.precision]
    if fmt == "onnx":  # the weights beside the graph, where onnxruntime maps them (onnx_files.py)
        rel_files = [p.name for p in save_external(chosen.files[0], writer.path(f"{enc.component}.onnx"))]
    else:
        rel_files = []
        for f in chosen.files:
            rel = f"{enc.component}{f.suffix}"
            shutil.copyfile(f, writer.path(rel))
            rel_files.append(rel)
    quantization = None
    if kept.precision != "f32" or len(candidates) > 1:  # bytes: as the bundle holds it (graph + weights file)
        quantization = {"precision": kept.precision, **chosen.method, "speed": kept.speed,
                        "bytes": sum(writer.path(f).stat().st_size for f in rel_files)}
        if prep.calib is not None:
            quantization["calibration"] = prep.calib.description
        if len(candidates) > 1:
            quantization["trials"] = [t.as_dict() for t in trials]
        if selection is not None:
            quantization["selection"] = selection
    details = {"opset": OPSET, "attention": prep.attention} if fmt == "onnx" else {}
    return Artifact(format=fmt, files=rel_files, precision=kept.precision, parity=chosen.parity,
                    quantization=quantization, details=details)


def _trial(prep: _Prepared, fmt: str, precision: str, scratch: Path, plan: QuantPlan,
           tolerance: dict[str, float], step: Step) -> _Candidate:
    """Write ``fmt`` at ``precision``, measure its parity (strict gate or drift budget) and latency."""
    enc = prep.enc
    step(f"{enc.component}: {fmt} {precision} (write, parity, latency)")
    source = prep.onnxruntime_f32 if fmt == "onnx" else prep.onnx_f32
    files, method = _produce(fmt, precision, source, scratch / enc.component / fmt / precision,
                             enc.component, prep.quant_calib, plan.options)
    backend = FORMATS[fmt].backend
    engine_opts = timing_options(fmt)
    opts = {**engine_opts, "artifact_precision": precision, "static": prep.static}
    if precision == "f32":  # the strict gate, on seeded inputs at two batch sizes
        parity = measure_encoder(backend, files, prep.cases, enc.tokens_per_item, tolerance, **opts)
    else:  # drift against PyTorch on held-out real inputs, held to the budget
        parity = measure_encoder(backend, files, prep.eval_cases, enc.tokens_per_item, plan.budget["encoder"], **opts)
    passed, why = verdict(parity.metrics, parity.tolerance)
    latency = _latency_ms(backend, files, _timing_input(prep), prep.static, **engine_opts)
    size = sum(f.stat().st_size for f in files)
    trial = Trial(precision, size, {"latency_ms": latency}, parity.metrics, parity.tolerance, passed, why)
    return _Candidate(trial, files, parity, method)


def _timing_input(prep: _Prepared) -> dict[str, np.ndarray]:
    """What candidates are timed on: the first held-out real input when there is one (a photo as users
    send it), else the first seeded case's item. The seeded case of a native-resolution tower is a few
    patches: on it the bench Qwen2.5-VL's OpenVINO int8 (weights only) took 14.9 ms against int8-static's
    18.0 and was kept, and on a 768-patch photo it took 187 ms against 121."""
    case = prep.eval_cases[0] if prep.eval_cases else prep.cases[0]
    return _one_item(prep.enc, case.inputs)


def _one_item(enc: EncoderExport, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One item of a parity case, to time: row 0 where axis 0 holds independent rows (images, tiles);
    a case whose axis 0 is one image's patches (native resolution: one image per run) as it is."""
    return {k: v[:1] if enc.dynamic_axes.get(k, {}).get(0) in ("batch", "tiles") else v for k, v in inputs.items()}


def _produce(fmt: str, precision: str, onnx_f32: Path, out_dir: Path, component: str,
             calib: CalibrationSet | None, options: dict[str, Any]) -> tuple[list[Path], dict[str, Any]]:
    """Write the ``fmt`` artifact at ``precision`` into ``out_dir``; returns (files, method)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / name for name in FORMATS[fmt].files(component)]
    quantize = quantize_onnx if fmt == "onnx" else quantize_openvino
    return files, quantize(onnx_f32, files[0], precision, calib, **options)


def _latency_ms(backend: str, files: list[Path], inputs: dict[str, np.ndarray], static: StaticShape | None,
                **options: Any) -> float:
    session = open_encoder(backend, files, **options)
    try:
        return round(median_ms(lambda: run_item(session, inputs, static), runs=5), 3)
    finally:
        session.close()


def _static_shape(enc: EncoderExport, example: dict[str, torch.Tensor]) -> StaticShape:
    return StaticShape(batch=int(next(iter(example.values())).shape[0]),
                       inputs={name: [int(d) for d in example[name].shape] for name in enc.input_names},
                       pad_axes={k: list(v) for k, v in enc.pad_axes.items()})


def _static_calibration(calib: CalibrationSet, static: StaticShape) -> CalibrationSet:
    """Calibration items in the static graph's shapes (rows and token axes zero-padded)."""
    def fit(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        item = conform(item, static)
        rows = next(iter(item.values())).shape[0]
        return {k: np.concatenate([v, np.zeros((static.batch - rows, *v.shape[1:]), v.dtype)])
                if rows < static.batch else v[:static.batch] for k, v in item.items()}

    return CalibrationSet(calibrate=[fit(i) for i in calib.calibrate], evaluate=calib.evaluate,
                          description=calib.description)
