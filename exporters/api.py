"""``export_bundle``: a Hugging Face model folder -> a checked edgebridge bundle.

Every artifact is held to its parity gate before the bundle is committed; a failed gate raises
and leaves no bundle behind (the writer's temporary folder is removed, an existing bundle at the
target stays as it was).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from edgebridge import __version__
from edgebridge.bundle import BundleWriter
from edgebridge.errors import EdgebridgeError, ExportError
from edgebridge.exporters.encoder import (
    ENCODER_TOLERANCE,
    convert_openvino,
    export_onnx,
    measure_encoder,
    reference_outputs,
    tensor_specs,
)
from edgebridge.exporters.families import family_for
from edgebridge.exporters.families.base import EncoderExport, Family, Loaded, read_config
from edgebridge.exporters.gguf.export import export_llm
from edgebridge.manifest import Artifact, Component, Manifest, ModalityInput, TensorSpec
from edgebridge.parity import enforce

ENCODER_FORMATS = ("onnx", "openvino")
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


def _export_encoder(enc: EncoderExport, writer: BundleWriter, scratch: Path, formats: Iterable[str],
                    tolerance: dict[str, float], step: Step) -> Component:
    formats = tuple(formats)
    inputs, outputs = tensor_specs(enc)
    step(f"{enc.component}: PyTorch reference outputs")
    cases = reference_outputs(enc)
    onnx_rel = f"{enc.component}.onnx"
    onnx_path = writer.path(onnx_rel) if "onnx" in formats else scratch / onnx_rel
    step(f"{enc.component}: exporting ONNX (torch.onnx, dynamo, opset 20)")
    export_onnx(enc, onnx_path)
    artifacts: dict[str, Artifact] = {}
    if "onnx" in formats:
        step(f"{enc.component}: ONNX parity (onnxruntime)")
        parity = measure_encoder("onnxruntime", [onnx_path], cases, enc.tokens_per_item, tolerance)
        enforce(f"{enc.component} (ONNX, onnxruntime)", parity.metrics, tolerance)
        artifacts["onnx"] = Artifact(format="onnx", files=[onnx_rel], precision="fp32", parity=parity,
                                     details={"opset": 20})
    if "openvino" in formats:
        step(f"{enc.component}: converting to OpenVINO IR")
        xml_rel, bin_rel = f"{enc.component}.xml", f"{enc.component}.bin"
        convert_openvino(onnx_path, writer.path(xml_rel))
        step(f"{enc.component}: OpenVINO parity (f32 precision hint)")
        files = [writer.path(xml_rel), writer.path(bin_rel)]
        parity = measure_encoder("openvino", files, cases, enc.tokens_per_item, tolerance, precision="f32")
        enforce(f"{enc.component} (OpenVINO IR, f32)", parity.metrics, tolerance)
        artifacts["openvino"] = Artifact(format="openvino", files=[xml_rel, bin_rel], precision="fp32", parity=parity)
    return Component(
        role="encoder",
        modality=enc.modality,
        inputs=inputs,
        outputs=outputs,
        artifacts=artifacts,
        bridge=enc.bridge,
        description=enc.description,
    )


def export_bundle(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    encoder_formats: Iterable[str] = ENCODER_FORMATS,
    llm_dtype: str = "f16",
    force: bool = False,
    encoder_tolerance: dict[str, float] | None = None,
    llm_drift_tolerance: dict[str, float] | None = None,
    step: Step | None = None,
) -> Manifest:
    """Export ``model_dir`` (a local HF folder) into the bundle folder ``out_dir``.

    ``step`` receives a short message as each stage starts (the CLI shows them as progress).
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
    family = family_for(model_dir)
    tolerance = dict(encoder_tolerance or ENCODER_TOLERANCE)
    started = time.perf_counter()
    with BundleWriter(out_dir, force=force) as writer, tempfile.TemporaryDirectory(prefix="edgebridge-") as scratch:
        step(f"loading {family.name} model from {model_dir}")
        loaded = _load(family, model_dir)
        layout = family.prompt_layout(loaded)
        components: dict[str, Component] = {}
        inputs: dict[str, ModalityInput] = {}
        for enc in family.encoders(loaded):
            components[enc.component] = _export_encoder(enc, writer, Path(scratch), formats, tolerance, step)
            inputs[enc.modality] = ModalityInput(
                component=enc.component,
                preprocessing=enc.preprocessing,
                placeholder=enc.placeholder,
                tokens_per_item=enc.tokens_per_item,
                layout=enc.layout,
            )
        llm_art, text = export_llm(family, loaded, layout, writer.path("llm.gguf"), llm_dtype,
                                   drift_tolerance=llm_drift_tolerance, step=step)
        n_embd = int(text.config.hidden_size)
        components["llm"] = Component(
            role="llm",
            modality="text",
            inputs=[TensorSpec(name="inputs_embeds", dtype="float32", shape=["tokens", n_embd])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["tokens", int(text.config.vocab_size)])],
            artifacts={"gguf": llm_art},
            description=f"{text.model_type} decoder, {llm_art.details['n_params'] / 1e6:.1f}M parameters",
        )
        config = read_config(model_dir)
        manifest = Manifest(
            family=family.name,
            source={
                "model_type": config.get("model_type"),
                "architectures": config.get("architectures", []),
                "folder": model_dir.name,
                "text_model_type": text.model_type,
                "export_seconds": round(time.perf_counter() - started, 1),
            },
            components=components,
            inputs=inputs,
            prompt=layout,
            edgebridge_version=__version__,
        )
        _check_widths(manifest, n_embd)
        step("writing manifest and moving the bundle into place")
        writer.commit(manifest)
    return manifest


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
