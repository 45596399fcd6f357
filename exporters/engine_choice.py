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
from typing import Any

import numpy as np

from edgebridge.exporters.quantize import TIE, TIMING_ROUNDS as ROUNDS
from edgebridge.formats import FORMATS
from edgebridge.manifest import StaticShape
from edgebridge.runtimes.registry import open_encoder
from edgebridge.runtimes.static_shapes import run_static
from edgebridge.stages import DEFAULT_BACKEND
from edgebridge.timing import alternating_medians, median_ms

RUNS = 5


def choose_engine(files: dict[str, list[Path]], inputs: dict[str, np.ndarray], static: StaticShape | None
                  ) -> dict[str, Any]:
    """The ``engine_choice`` record of a component whose kept artifacts per format are ``files`` (onnx among
    them): ``backend``, the measured ``latency_ms`` per backend, and the reason."""
    sessions = {FORMATS[fmt].backend: open_encoder(FORMATS[fmt].backend, paths,
                                                   **({"precision": "f32"} if fmt == "openvino" else {}))
                for fmt, paths in files.items()}
    try:
        times = alternating_medians(list(sessions), lambda b: {"ms": median_ms(
            lambda: run_item(sessions[b], inputs, static), runs=RUNS)}, ROUNDS)
    finally:
        for session in sessions.values():
            session.close()
    latency = {b: round(t["ms"], 3) for b, t in times.items()}
    fastest = min(latency, key=latency.__getitem__)
    clear = all(ms > latency[fastest] * (1 + TIE) for b, ms in latency.items() if b != fastest)
    backend = fastest if clear else DEFAULT_BACKEND  # both formats are written: onnxruntime is among them
    why = f"faster by more than {TIE:.0%}" if clear else f"within {TIE:.0%} of the fastest, the runtime's default"
    figures = ", ".join(f"{b} {ms:g} ms" for b, ms in latency.items())
    return {"backend": backend, "latency_ms": latency,
            "reason": f"{backend}: {why} ({figures} per item on this machine, medians of {ROUNDS} alternating rounds)"}


def run_item(session: Any, inputs: dict[str, np.ndarray], static: StaticShape | None) -> Any:
    """One run of an encoder session on ``inputs`` (fitted to the static shape when the export has one)."""
    return run_static(session.run, inputs, static) if static else session.run(inputs)
