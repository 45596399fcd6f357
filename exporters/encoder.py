"""Encoder + bridge graphs to ONNX and OpenVINO IR, each checked against PyTorch.

- ONNX: ``torch.onnx.export(dynamo=True)`` at opset 20 (half the nodes of the legacy exporter
  and ~1.5x faster in onnxruntime here). A batch-1 example with a dynamic batch Dim silently
  fixes the batch at 1, so the example batch is 2. The file must pass ``onnx.checker``.
- OpenVINO: converted from the ONNX file (the fastest path) by ``quantize.openvino_quant``, saved
  *without* the default fp16 weight compression unless fp16 is asked for.
- Parity: the artifact runs through edgebridge's own runtime backend (what users run), strict
  precision, on seeded inputs at two batch sizes, against the family's reference function.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgebridge.errors import ExportError, ShapeMismatchError
from edgebridge.exporters.families.base import EncoderExport
from edgebridge.manifest import Parity, StaticShape, TensorSpec
from edgebridge.parity import embedding_metrics, violations
from edgebridge.runtimes.registry import open_encoder

OPSET = 20
EXPORT_BATCH = 2
PARITY_BATCHES = (2, 3)  # 3 also proves the batch axis really is dynamic
PARITY_SEED = 1234

# Default gates (recorded in the manifest with the figures they held).
ENCODER_TOLERANCE = {"max_abs": 1e-4, "cosine_min": 0.99999}


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress and warnings to stdout/stderr; keep the CLI output ours."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def tensor_specs(enc: EncoderExport, static_inputs: dict[str, torch.Tensor] | None = None,
                 ) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs with dynamic axes named (every axis fixed for a static export)."""
    example = static_inputs or enc.make_inputs(1, 0)
    with torch.no_grad():
        out = enc.module(**example)

    def spec(name: str, t: torch.Tensor) -> TensorSpec:
        axes = {} if static_inputs else enc.dynamic_axes.get(name, {})
        shape: list[int | str] = [axes.get(i, int(d)) for i, d in enumerate(t.shape)]
        return TensorSpec(name=name, dtype=str(t.dtype).replace("torch.", ""), shape=shape)

    return [spec(n, example[n]) for n in enc.input_names], [spec(enc.output_name, out)]


def static_example(enc: EncoderExport, batch: int, tokens: int) -> dict[str, torch.Tensor]:
    """The fixed-shape example a static export traces: ``batch`` rows, padable axes padded to ``tokens``."""
    from edgebridge.errors import UnsupportedModelError

    inputs = enc.make_inputs(batch, 0)
    for name, axes in enc.dynamic_axes.items():
        extra = [a for a in axes if a != 0 and a not in enc.pad_axes.get(name, [])]
        if name in enc.input_names and extra:
            raise UnsupportedModelError(
                f"{enc.component} takes inputs whose size varies on axes {extra} of '{name}' (e.g. native image "
                "sizes); a static-shape export of it is not supported.", hint="Export without --static.")
    for name, axes in enc.pad_axes.items():
        for axis in axes:
            t = inputs[name]
            if t.shape[axis] > tokens:
                raise ValueError(f"example {name} longer than the static size {tokens}")
            widths = [0, 0] * (t.ndim - axis - 1) + [0, tokens - t.shape[axis]]
            inputs[name] = torch.nn.functional.pad(t, widths)
    return inputs


def export_onnx(enc: EncoderExport, path: Path, *, static_inputs: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Write ``enc.module`` as ONNX (every axis fixed when ``static_inputs`` is given); returns the
    bridge's node names. Raises ``ExportError``."""
    import onnx

    inputs = static_inputs or enc.make_inputs(EXPORT_BATCH, 0)
    # in the graph's input order: torch.onnx names the graph inputs by position
    inputs = {name: inputs[name] for name in enc.input_names}
    dynamic = None
    if not static_inputs:
        # one Dim per label: axes that share a name are one size (a patch axis of several inputs)
        dims = {label: torch.export.Dim(label, min=1, max=16384 if label == "patches" else 1024)
                for axes in enc.dynamic_axes.values() for label in axes.values()}
        dynamic = {name: {axis: dims[label] for axis, label in enc.dynamic_axes.get(name, {}).items()}
                   for name in enc.input_names}
    n_bytes = sum(p.numel() * p.element_size() for p in enc.module.parameters())
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                enc.module,
                args=(),
                kwargs=inputs,
                f=str(path),
                input_names=enc.input_names,
                output_names=[enc.output_name],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=n_bytes > 1_800_000_000,  # protobuf's 2 GiB limit
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx could not export {enc.component}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    bridge_nodes = _strip_metadata(path, enc.bridge_scopes, enc.output_name)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported {enc.component} ONNX fails onnx.checker: {exc}") from exc
    return bridge_nodes


def _strip_metadata(path: Path, bridge_scopes: tuple[str, ...], output_name: str) -> list[str]:
    """Drop torch's per-node debug metadata (stack traces hold local paths); return the bridge's nodes.

    A node belongs to the bridge when its torch module scope starts with one of ``bridge_scopes``.
    Profiles use these names to split encoder time from bridge time (engines keep node names, and
    OpenVINO names the last node after the graph output, so that name is listed too).
    """
    import onnx

    model = onnx.load(str(path))
    bridge: list[str] = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if any(f"'{scope}'" in scopes or f"'{scope}." in scopes for scope in bridge_scopes):
            bridge.append(node.name)
        del node.metadata_props[:]
    if bridge and any(output_name in n.output for n in model.graph.node if n.name == bridge[-1]):
        bridge.append(output_name)
    onnx.save(model, str(path))
    return bridge


def reference_outputs(enc: EncoderExport, batches: tuple[int, ...] = PARITY_BATCHES, seed: int = PARITY_SEED):
    """[(numpy inputs, reference output)] for each parity batch size, from the family's HF code path."""
    return [reference_case(enc, enc.make_inputs(b, seed + i)) for i, b in enumerate(batches)]


@dataclass
class Case:
    """Encoder inputs, the reference output ``[B, N, D]``, and the rows of each item that count."""

    inputs: dict[str, np.ndarray]
    reference: np.ndarray
    lengths: list[int] | None = None  # None: all N rows of every item

    def rows(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(output rows, reference rows) to compare, padding rows left out."""
        if self.lengths is None:
            return out.reshape(-1, out.shape[-1]), self.reference.reshape(-1, self.reference.shape[-1])
        pick = [(i, slice(0, n)) for i, n in enumerate(self.lengths)]
        return (np.concatenate([out[i, s] for i, s in pick]), np.concatenate([self.reference[i, s] for i, s in pick]))


def reference_case(enc: EncoderExport, inputs: dict[str, torch.Tensor]) -> Case:
    """The family's HF code path on ``inputs``."""
    with torch.no_grad():
        ref = enc.reference(inputs).float().numpy()
    lengths = enc.valid_lengths(inputs) if enc.valid_lengths is not None else None
    return Case({k: v.numpy() for k, v in inputs.items()}, ref, lengths)


def measure_encoder(
    backend: str,
    files: list[Path],
    cases: list[Case],
    tokens_per_item: int,
    tolerance: dict[str, float],
    static: StaticShape | None = None,
    **options: Any,
) -> Parity:
    """Run an artifact through the runtime backend on the reference cases; return its ``Parity``.

    ``static``: the graph has fixed shapes; inputs are chunked and padded as the runtime does.
    """
    from edgebridge.runtimes.static_shapes import run_static

    session = open_encoder(backend, files, **options)
    outs, refs = [], []
    for case in cases:
        out = run_static(session.run, case.inputs, static) if static else session.run(case.inputs)[0]
        ref = case.reference
        if out.shape != ref.shape:
            raise ShapeMismatchError(
                f"{backend} output shape {out.shape} differs from PyTorch's {ref.shape} (batch {ref.shape[0]}).",
                hint="The exported graph lost its dynamic batch axis or dropped tokens.",
            )
        if case.lengths is None and ref.shape[1] != tokens_per_item:
            raise ShapeMismatchError(
                f"the encoder yields {ref.shape[1]} embeddings per item, the prompt layout expects {tokens_per_item}."
            )
        got, want = case.rows(out)
        outs.append(got)
        refs.append(want)
    metrics = embedding_metrics(np.concatenate(outs), np.concatenate(refs))
    return Parity(
        reference="pytorch",
        metrics=metrics,
        tolerance=dict(tolerance),
        passed=not violations(metrics, tolerance),
        settings={"backend": backend, **session.report.as_dict()},
        samples=int(sum(r.shape[0] for r in refs)),  # embedding vectors compared
    )
