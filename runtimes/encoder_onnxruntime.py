"""onnxruntime encoder backend.

Devices map to execution providers, best first; a device with no provider installed falls back
to the CPU provider and says so in the ``DeviceReport``. Graph optimisation level ALL and a
pinned intra-op thread count (the default 0 was the slowest setting measured here).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebridge.errors import BackendError, BackendUnavailableError, CorruptArtifactError
from edgebridge.runtimes.registry import DEVICES, DeviceReport, default_threads, register_encoder

if TYPE_CHECKING:
    import onnxruntime

# device -> execution providers that serve it, in order of preference
PROVIDERS = {
    "GPU": ["CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"],
    "NPU": ["QNNExecutionProvider", "VitisAIExecutionProvider"],
    "CPU": ["CPUExecutionProvider"],
}
_PROVIDER_DEVICE = {p: dev for dev, ps in PROVIDERS.items() for p in ps}


def _choose_providers(device: str, available: list[str]) -> tuple[list[str], str | None]:
    wanted = ["GPU", "NPU", "CPU"] if device == "AUTO" else [device]
    for dev in wanted:
        hits = [p for p in PROVIDERS[dev] if p in available]
        if hits:
            return hits + (["CPUExecutionProvider"] if dev != "CPU" else []), None
    return ["CPUExecutionProvider"], f"no onnxruntime execution provider for {device} is installed"


def session_options(threads: int) -> "onnxruntime.SessionOptions":
    """The CPU session options every edgebridge onnxruntime session runs with (the benchmarks' too)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # The intra-op threads spin inside a run (which the encoder needs) but, by default, also for a
    # while after it returns, on the cores llama.cpp's prefill is about to use: stopping them at the
    # end of each run cut the prefill after the encoder from 354 to 320 ms on 2 cores (encoder unchanged).
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    # A memory pattern is planned from the first run and then allocated as one block beside the arena
    # that first run grew, so the activations are held twice: the bench Qwen2.5-VL tower (768 patches)
    # held 286 MB over its weights from the second run on with it, 144 MB without, in the same time
    # (147 vs 147-154 ms); the bench LLaVA tower 24 vs 14 MB, the Qwen prefill graph 148 vs 123 MB.
    opts.enable_mem_pattern = False
    return opts


class OnnxRuntimeEncoder:
    backend = "onnxruntime"
    warm_up_pays = False  # weights prepacked when the session opens; nothing mapped to hand back

    def __init__(self, files: list[Path], *, device: str = "CPU", threads: int | None = None,
                 artifact_precision: str = "f32", **_: object) -> None:
        # onnxruntime executes the graph at the precision it was saved in (no precision hint)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise BackendUnavailableError("onnxruntime is not installed.", hint="pip install onnxruntime") from exc
        device = device.upper()
        if device not in DEVICES:
            raise BackendUnavailableError(f"unknown device '{device}'.", hint=f"Choose one of {', '.join(DEVICES)}.")
        path = Path(files[0])
        providers, reason = _choose_providers(device, ort.get_available_providers())
        opts = session_options(threads or default_threads())
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise CorruptArtifactError(
                f"onnxruntime cannot load '{path.name}': {str(exc).splitlines()[0][:300]}",
                hint="The ONNX file is corrupt or truncated; re-export the bundle.",
            ) from None
        self._path, self._opts, self._providers = path, opts, providers
        ran = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = [[d if isinstance(d, int) else None for d in o.shape] for o in self.session.get_outputs()]
        self.report = DeviceReport(
            requested=device,
            executed=_PROVIDER_DEVICE.get(ran, ran),
            precision=artifact_precision,
            fallback_reason=reason,
            details={"provider": ran, "threads": opts.intra_op_num_threads},
        )

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(None, inputs)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed to run the encoder: {str(exc).splitlines()[0][:300]}") from None

    def close(self) -> None:
        self.session = None

    def release_file_pages(self) -> int:
        """Nothing to hand back: onnxruntime reads the weights into its own memory, it maps no file."""
        return 0

    def node_times(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, float]]:
        """(node name, microseconds) in execution order for one run, from onnxruntime's profiler.

        Uses a second, profiling-enabled session with the same options (profiling costs time,
        so the timed session stays as it is).
        """
        import json
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="edgebridge-ortprof-") as tmp:
            opts = session_options(self._opts.intra_op_num_threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(str(self._path), opts, providers=self._providers)
            session.run(None, inputs)  # warm-up
            session.run(None, inputs)
            events = json.loads(Path(session.end_profiling()).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        last = runs[-1]
        start, end = last["ts"], last["ts"] + last["dur"]
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                 and start <= e["ts"] <= end]
        return [(e["name"][: -len("_kernel_time")], float(e["dur"])) for e in sorted(nodes, key=lambda e: e["ts"])]


@register_encoder("onnxruntime", artifact_format="onnx")
def open_onnxruntime(files: list[Path], **options) -> OnnxRuntimeEncoder:
    return OnnxRuntimeEncoder(files, **options)
