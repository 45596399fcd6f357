"""OpenVINO encoder backend.

- Devices: ``CPU``, ``GPU``, ``NPU`` or ``AUTO``. A device OpenVINO does not see falls back to CPU
  (reported); ``AUTO`` is built from the devices present, because an explicit ``AUTO:NPU,GPU,CPU``
  list that names a missing device raises instead of falling back.
- Precision: OpenVINO runs f32 IR in bf16 on CPUs that have it unless told otherwise. The
  ``precision`` option sets ``INFERENCE_PRECISION_HINT`` (``f32`` for strict parity, ``bf16`` /
  ``f16`` for speed, ``auto`` for the device default); the report says what ran.
- The IR is checked before OpenVINO reads it: the XML parses and every constant's byte range
  lies inside the .bin file (a truncated .bin is otherwise read past its end).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from edgebridge.errors import BackendError, BackendUnavailableError, CorruptArtifactError
from edgebridge.runtimes.mapped_pages import release_file_pages
from edgebridge.runtimes.registry import DEVICES, DeviceReport, default_threads, register_encoder

PRECISIONS = ("f32", "bf16", "f16", "auto")


def validate_ir(xml_path: Path, bin_path: Path) -> None:
    """Raise ``CorruptArtifactError`` unless the IR's XML parses and its constants fit the .bin."""
    for p in (xml_path, bin_path):
        if not p.is_file():
            raise CorruptArtifactError(f"OpenVINO IR file '{p.name}' is missing.", hint="Re-export the bundle.")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise CorruptArtifactError(
            f"OpenVINO IR '{xml_path.name}' is not valid XML ({exc}).", hint="Re-export the bundle."
        ) from None
    if root.tag != "net":
        raise CorruptArtifactError(f"'{xml_path.name}' is not an OpenVINO IR (root <{root.tag}>).")
    bin_size = bin_path.stat().st_size
    for data in root.iter("data"):
        if "offset" in data.attrib and "size" in data.attrib:
            try:
                end = int(data.attrib["offset"]) + int(data.attrib["size"])
            except ValueError:
                raise CorruptArtifactError(f"OpenVINO IR '{xml_path.name}' has a non-numeric constant range.") from None
            if end > bin_size:
                raise CorruptArtifactError(
                    f"OpenVINO weights '{bin_path.name}' are truncated: a constant ends at byte {end}, "
                    f"the file has {bin_size}.",
                    hint="Re-export the bundle or copy the .bin file again.",
                )


def _pick_device(requested: str, available: list[str]) -> tuple[str, str | None]:
    present = {d.split(".")[0] for d in available}
    if requested == "AUTO":
        order = [d for d in ("GPU", "NPU", "CPU") if d in present]
        return ("AUTO:" + ",".join(order)) if len(order) > 1 else order[0], None
    if requested in present:
        return requested, None
    return "CPU", f"OpenVINO sees no {requested} device (available: {', '.join(available) or 'none'})"


class OpenVinoEncoder:
    backend = "openvino"
    warm_up_pays = True  # kernels compiled and weights copied at the first inference (``release_file_pages``)

    def __init__(self, files: list[Path], *, device: str = "CPU", threads: int | None = None,
                 precision: str | None = "f32", artifact_precision: str = "f32", **_: object) -> None:
        try:
            import openvino as ov
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise BackendUnavailableError("openvino is not installed.", hint="pip install openvino") from exc
        device = device.upper()
        if device not in DEVICES:
            raise BackendUnavailableError(f"unknown device '{device}'.", hint=f"Choose one of {', '.join(DEVICES)}.")
        precision = (precision or "auto").lower()
        if precision not in PRECISIONS:
            raise BackendUnavailableError(
                f"unknown OpenVINO precision '{precision}'.", hint=f"Choose one of {', '.join(PRECISIONS)}."
            )
        xml_path = next(Path(f) for f in files if str(f).endswith(".xml"))
        bin_path = xml_path.with_suffix(".bin")
        validate_ir(xml_path, bin_path)
        core = ov.Core()
        target, reason = _pick_device(device, core.available_devices)
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        if target == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads or default_threads()
        try:
            model = core.read_model(str(xml_path), str(bin_path))
            self.compiled = core.compile_model(model, target, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with C++ messages
            raise CorruptArtifactError(
                f"OpenVINO cannot load '{xml_path.name}' on {target}: {str(exc).splitlines()[0][:300]}",
                hint="The IR is corrupt or the device rejected it; re-export the bundle or try --device CPU.",
            ) from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.output_shapes = [[d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                              for o in self.compiled.outputs]
        self._core, self._model, self._target, self._config = core, model, target, config
        self._bin_path = bin_path
        executed = ",".join(self.compiled.get_property("EXECUTION_DEVICES"))
        try:
            ran_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # devices without the property (AUTO) report it per sub-device
            ran_precision = precision
        self.report = DeviceReport(
            requested=device,
            executed=executed,
            precision=_precision_name(ran_precision),
            fallback_reason=reason,
            details={"artifact_precision": artifact_precision, "threads": config.get("INFERENCE_NUM_THREADS")},
        )

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            result = self.request.infer(inputs, share_inputs=True)
        except Exception as exc:
            raise BackendError(f"OpenVINO failed to run the encoder: {str(exc).splitlines()[0][:300]}") from None
        return [np.array(result[out]) for out in self.compiled.outputs]

    def close(self) -> None:
        self.request = self.compiled = self._model = None

    def release_file_pages(self) -> int:
        """After a first inference: the resident pages of the mapped ``.bin`` handed back (bytes); the
        CPU plugin has copied the weights into its own layouts by then (``mapped_pages``)."""
        return release_file_pages(self._bin_path)

    def node_times(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, float]]:
        """(node name, microseconds) in execution order for one run, from OpenVINO's perf counters.

        Compiles a second model with ``PERF_COUNT`` on (counting costs time; the timed one stays as is).
        """
        compiled = self._core.compile_model(self._model, self._target, {**self._config, "PERF_COUNT": "YES"})
        request = compiled.create_infer_request()
        request.infer(inputs)  # warm-up
        request.infer(inputs)
        return [(i.node_name, float(i.real_time.total_seconds() * 1e6)) for i in request.get_profiling_info()
                if i.status.name == "EXECUTED"]


def _precision_name(ov_type: str) -> str:
    """OpenVINO prints element types as '<Type: 'float32'>' or 'f32'; keep the short name."""
    text = ov_type.lower()
    for short, long in (("f32", "float32"), ("bf16", "bfloat16"), ("f16", "float16")):
        if long in text or text == short:
            return short
    return text


@register_encoder("openvino", artifact_format="openvino")
def open_openvino(files: list[Path], **options) -> OpenVinoEncoder:
    return OpenVinoEncoder(files, **options)
