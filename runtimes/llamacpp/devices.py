"""Which ggml device the LLM runs on: the devices llama.cpp registered, and the choice for a request.

The wheel is built with ``GGML_BACKEND_DL``: every backend is a ``libggml-<name>.so``. The CPU variant
loads at start (``_lib.llama()``); the GPU backends when a GPU is first asked for or listed
(``_lib.load_gpu_backends``), so CPU runs never pay Vulkan's start-up. The Vulkan one registers one
device per Vulkan GPU; without a Vulkan loader or device it registers none (or fails to load), which is
a fact to report, not an error.
ggml-vulkan skips devices of type CPU - Mesa's software driver (lavapipe) among them - unless
``GGML_VK_VISIBLE_DEVICES`` lists them (set before the first load); the tests do that.

llama.cpp offloads to *every* GPU device when a model's ``devices`` list is NULL, and with
``op_offload`` (on by default) it also sends large batches' matrix products of CPU-resident weights
to a GPU. A CPU request therefore passes an empty device list: CPU means CPU.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field
from typing import Any

from edgebridge.errors import InputError
from edgebridge.runtimes.llamacpp._lib import ggml_library, load_gpu_backends, startup_log

LLM_DEVICES = ("CPU", "GPU", "AUTO")
_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}  # ggml-backend.h: enum ggml_backend_dev_type
_GPU_TYPES = ("GPU", "IGPU")


@dataclass(frozen=True)
class GgmlDevice:
    """One device as ggml reports it (``Vulkan0``, ``llvmpipe (LLVM 15.0.6, 256 bits)``, GPU)."""

    name: str
    description: str
    kind: str
    backend: str
    memory_total_mib: float
    handle: int  # the ggml_backend_dev_t, for llama_model_params.devices
    features: dict[str, str] = field(default_factory=dict)  # ggml-vulkan's start-up line: fp16, int dot ...

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "type": self.kind, "backend": self.backend,
                "memory_total_mib": round(self.memory_total_mib, 1), "features": dict(self.features)}


# ggml-vulkan logs one line per device at start: "ggml_vulkan: 0 = llvmpipe (...) (llvmpipe) | uma: 0 | fp16: 1 | ...".
# ``fp16: 1`` means its matrix products accumulate in float16 (GGML_VK_DISABLE_F16=1 at start turns that off).
_VULKAN_LINE = re.compile(r"ggml_vulkan: (\d+) = .*?((?:\| [^|:]+: [^|]+)+)$")


def _vulkan_features() -> dict[str, dict[str, str]]:
    """``{"Vulkan0": {"fp16": "1", ...}}`` from ggml-vulkan's start-up lines."""
    found = {}
    for line in startup_log():
        match = _VULKAN_LINE.search(line.strip())
        if match:
            pairs = (p.split(":", 1) for p in match.group(2).split("|") if ":" in p)
            found[f"Vulkan{match.group(1)}"] = {k.strip(): v.strip() for k, v in pairs}
    return found


def _bind(ggml: Any) -> Any:
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(ggml, fn).restype = ctypes.c_char_p
        getattr(ggml, fn).argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype = ctypes.c_int
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_size_t)]
    ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    return ggml


def list_devices() -> list[GgmlDevice]:
    """Every device the ggml backends expose (the CPU included); loads the GPU backends first."""
    load_gpu_backends()
    ggml = ggml_library()
    if ggml is None:  # a build with the CPU code linked in: one CPU device, nothing to choose
        return []
    ggml = _bind(ggml)
    features = _vulkan_features()
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(GgmlDevice(
            name=ggml.ggml_backend_dev_name(dev).decode(), description=ggml.ggml_backend_dev_description(dev).decode(),
            kind=_TYPES.get(ggml.ggml_backend_dev_type(dev), "?"),
            backend=ggml.ggml_backend_reg_name(ggml.ggml_backend_dev_backend_reg(dev)).decode(),
            memory_total_mib=total.value / 2**20, handle=dev,
            features=features.get(ggml.ggml_backend_dev_name(dev).decode(), {})))
    return found


def gpu_devices() -> list[GgmlDevice]:
    return [d for d in list_devices() if d.kind in _GPU_TYPES]


@dataclass(frozen=True)
class DeviceChoice:
    """The outcome of a request: the device list to hand llama.cpp, and what to report."""

    requested: str
    device: GgmlDevice | None  # None: the CPU
    gpu_layers: int  # layers asked to be offloaded (0 on the CPU; llama.cpp caps it at n_layer + 1)
    fallback_reason: str | None

    @property
    def executed(self) -> str:
        return "CPU" if self.device is None else f"{self.device.backend}:{self.device.name}"

    def devices_array(self) -> ctypes.Array:
        """The NULL-terminated ``ggml_backend_dev_t`` list for ``llama_model_params.devices``."""
        handles = [] if self.device is None else [self.device.handle]
        return (ctypes.c_void_p * (len(handles) + 1))(*handles, None)


def check_request(device: str, gpu_layers: int | str | None) -> tuple[str, int | None]:
    """Normalise ``device`` (CPU|GPU|AUTO) and ``gpu_layers`` (a count, ``"all"`` or None = all)."""
    requested = str(device).upper()
    if requested not in LLM_DEVICES:
        raise InputError(f"unknown LLM device '{device}'.", hint=f"Choose one of {', '.join(LLM_DEVICES)}.")
    if gpu_layers is None or (isinstance(gpu_layers, str) and gpu_layers.strip().lower() == "all"):
        return requested, None
    try:
        layers = int(gpu_layers)
        if isinstance(gpu_layers, bool) or layers != float(gpu_layers) or layers < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"gpu_layers must be a whole number of at least 0 or 'all', got {gpu_layers!r}.") from None
    return requested, layers


def choose_device(device: str, gpu_layers: int | str | None) -> DeviceChoice:
    """CPU: no GPU at all. GPU: the first GPU device, else the CPU with the reason. AUTO: a GPU when one
    is registered, silently the CPU otherwise (AUTO asked for nothing else)."""
    requested, layers = check_request(device, gpu_layers)
    if requested == "CPU":
        return DeviceChoice(requested, None, 0, None)
    gpus = gpu_devices()
    if not gpus:
        reason = None if requested == "AUTO" else no_gpu_reason()
        return DeviceChoice(requested, None, 0, reason)
    return DeviceChoice(requested, gpus[0], ALL_LAYERS if layers is None else layers, None)


ALL_LAYERS = 1 << 30  # llama.cpp offloads min(n_gpu_layers, n_layer + 1): every block and the output layer


def no_gpu_reason() -> str:
    """Why no GPU device is registered: no Vulkan backend in this build, no Vulkan loader, or no device."""
    from edgebridge.runtimes.llamacpp._lib import library_dir

    lib_dir = library_dir()
    if lib_dir is None or not (lib_dir / "libggml-vulkan.so").exists():
        return ("this llama.cpp build has no GPU backend (no libggml-vulkan.so; `make setup` builds it when glslc "
                "and the Vulkan headers are installed, see README 'GPU and NPU')")
    try:
        ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return "the Vulkan loader (libvulkan.so.1) is not installed, so llama.cpp's Vulkan backend cannot start"
    return ("llama.cpp's Vulkan backend found no GPU device (no Vulkan driver for a GPU, or it is hidden by "
            "VK_ICD_FILENAMES / GGML_VK_VISIBLE_DEVICES; software devices need GGML_VK_VISIBLE_DEVICES)")
