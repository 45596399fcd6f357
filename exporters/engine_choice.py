"""A latency target's encoder engine for run time, measured at export on this machine.

An export writes every encoder in each ``--encoder-format``; which engine runs it was the caller's
``--backend`` (onnxruntime by default). Which is faster depends on the model and the CPU: on the bench
Qwen2.5-VL the OpenVINO int8-static tower took 113 ms per photo against onnxruntime's int8 137-145 ms;
on the bench LLaVA the CLIP towers took 28-29 ms (onnxruntime) and 30-32 ms (OpenVINO), and the process
with OpenVINO's held ~170 MB more. So with a
``latency`` target the export times each format's kept artifact in ``ROUNDS`` alternating rounds
(medians) and records the faster engine when it is faster by more than the tie margin, else
onnxruntime (``DEFAULT_BACKEND``: the same speed, the smaller process on the bench LLaVA). The runtime
runs the recorded engine when asked for ``--backend auto`` (the default; ``edgebridge.stages``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np

from edgebridge.exporters.quantize import TIE, TIMING_ROUNDS as ROUNDS
from edgebridge.formats import FORMATS
from edgebridge.manifest import StaticShape
from edgebridge.runtimes.registry import open_encoder
from edgebridge.runtimes.static_shapes import run_static
from edgebridge.stages import DEFAULT_BACKEND
from edgebridge.timing import alternating_medians, median_ms

RUNS = 5
K = TypeVar("K")


def choose_engine(files: dict[str, list[Path]], inputs: dict[str, np.ndarray], static: StaticShape | None
                  ) -> dict[str, Any]:
    """The ``engine_choice`` record of a component whose kept artifacts per format are ``files`` (onnx among
    them): ``backend``, the measured ``latency_ms`` per backend, and the reason."""
    latency = side_by_side_ms({FORMATS[fmt].backend: (fmt, paths) for fmt, paths in files.items()}, inputs, static)
    fastest = min(latency, key=latency.__getitem__)
    clear = all(ms > latency[fastest] * (1 + TIE) for b, ms in latency.items() if b != fastest)
    backend = fastest if clear else DEFAULT_BACKEND  # both formats are written: onnxruntime is among them
    why = f"faster by more than {TIE:.0%}" if clear else f"within {TIE:.0%} of the fastest, the runtime's default"
    figures = ", ".join(f"{b} {ms:g} ms" for b, ms in latency.items())
    return {"backend": backend, "latency_ms": latency,
            "reason": f"{backend}: {why} ({figures} per item on this machine, medians of {ROUNDS} alternating rounds)"}


def side_by_side_ms(artifacts: Mapping[K, tuple[str, list[Path]]], inputs: dict[str, np.ndarray],
                    static: StaticShape | None) -> dict[K, float]:
    """ms per item of each ``(format, files)`` artifact: every session open for the whole comparison, medians
    of ``ROUNDS`` rounds that alternate them (``RUNS`` runs each); the sessions closed on any exit."""
    sessions: dict[K, Any] = {}
    try:
        for key, (fmt, files) in artifacts.items():
            sessions[key] = open_encoder(FORMATS[fmt].backend, files, **timing_options(fmt))
        times = alternating_medians(list(sessions), lambda k: {"ms": median_ms(
            lambda: run_item(sessions[k], inputs, static), runs=RUNS)}, ROUNDS)
    finally:
        for session in sessions.values():
            session.close()
    return {k: round(t["ms"], 3) for k, t in times.items()}


def timing_options(fmt: str) -> dict[str, Any]:
    """How the export opens a ``fmt`` artifact to time it: OpenVINO at f32 execution precision, the
    runtime's default for it."""
    return {"precision": "f32"} if fmt == "openvino" else {}


def run_item(session: Any, inputs: dict[str, np.ndarray], static: StaticShape | None) -> Any:
    """One run of an encoder session on ``inputs`` (fitted to the static shape when the export has one)."""
    return run_static(session.run, inputs, static) if static else session.run(inputs)
