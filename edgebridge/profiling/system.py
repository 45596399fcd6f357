"""The machine under the profile: environment, memory bandwidth, peak resident memory.

Peak RSS per configuration: Linux keeps the process's high-water mark (``VmHWM``) and resets it
when ``5`` is written to ``/proc/self/clear_refs``; configurations run one after another in one
process, each after a reset. Where that is not possible the report says so.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

LIBRARIES = ("edgebridge", "numpy", "pillow", "onnxruntime", "openvino", "llama-cpp-python", "gguf", "torch",
             "transformers", "optimum-intel", "nncf")
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                present = set(value.split())
                flags = [f for f in CPU_FLAGS if f in present]
    except OSError:
        pass
    return model, flags


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment(threads: int | None = None) -> dict[str, Any]:
    model, flags = _cpuinfo()
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "cores_logical": os.cpu_count(),
        "cores_available": available_cores(),
        "threads": threads or available_cores(),
        "memory_bytes": memory,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libraries": versions,
        "devices": compute_devices(),
    }


def compute_devices() -> dict[str, Any]:
    """The devices each engine can reach here, by the engine's own names (llama.cpp's ggml devices,
    onnxruntime's execution providers, OpenVINO's devices); an engine that fails to load says why."""
    found: dict[str, Any] = {}
    try:
        from edgebridge.runtimes.llamacpp.devices import list_devices

        found["llama.cpp"] = [d.as_dict() for d in list_devices()]
    except Exception as exc:  # noqa: BLE001 - reported, the profile goes on
        found["llama.cpp"] = f"unavailable: {exc}"
    try:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        found["onnxruntime"] = f"unavailable: {exc}"
    try:
        import openvino

        core = openvino.Core()
        found["openvino"] = {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}
    except Exception as exc:  # noqa: BLE001
        found["openvino"] = f"unavailable: {exc}"
    return found


def memory_bandwidth(mib: int = 256, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Streaming-copy bandwidth: bytes read + written per second, copying ``mib`` MiB in parallel chunks."""
    threads = threads or available_cores()
    src = np.ones(mib * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    chunks = np.array_split(np.arange(src.size), threads)
    bounds = [(int(c[0]), int(c[-1]) + 1) for c in chunks if c.size]

    def copy(bound: tuple[int, int]) -> None:
        lo, hi = bound
        np.copyto(dst[lo:hi], src[lo:hi])  # numpy releases the GIL for the copy

    samples = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, bounds))  # warm-up: fault the pages in
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(copy, bounds))
            samples.append(2 * src.nbytes / (time.perf_counter() - start))
    return {
        "method": f"numpy streaming copy of {mib} MiB in {threads} threads; bytes read + written per second",
        "bytes_per_s": statistics.median(samples),
        "best_bytes_per_s": max(samples),
        "samples": samples,
    }


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs``); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:  # pragma: no cover - not POSIX
        return None
