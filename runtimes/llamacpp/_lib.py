"""Loading llama-cpp-python's shared libraries once, quietly, with the CPU variants registered.

The set-up builds llama.cpp with ``GGML_BACKEND_DL=ON`` and ``GGML_CPU_ALL_VARIANTS=ON``: one
``libggml-cpu-<variant>.so`` per x86 level, picked at run time (``sapphirerapids`` on AMX
machines). llama-cpp-python 0.3.36 does not load those variants itself ("no backends are
loaded"), so we call ggml's ``ggml_backend_load_all_from_path`` on the package's ``lib`` folder
through ``libggml.so.0`` there (the copy llama.cpp links against) before the first model load.
A build without the DL backends (CPU code linked in) needs nothing and is detected.

llama.cpp logs to stderr by default; we route its log into a small ring buffer instead, so a
failed load can quote llama.cpp's own reason in our error message.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgebridge.errors import BackendUnavailableError

_lock = threading.Lock()
_state: dict[str, Any] = {}
LOG_TAIL: collections.deque[str] = collections.deque(maxlen=64)
_CAPTURES: list[list[str]] = []  # every line also goes to each active ``captured_log()``
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([0-9.]+) MiB")


def _log_callback_type(llama_cpp: Any):
    return llama_cpp.ggml_log_callback if hasattr(llama_cpp, "ggml_log_callback") else ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
    )


def _install_log_sink(llama_cpp: Any) -> None:
    @(_log_callback_type(llama_cpp))
    def sink(level, text, user_data):  # noqa: ARG001 - ctypes signature
        if text:
            line = text.decode("utf-8", errors="replace")
            LOG_TAIL.append(line)
            for capture in _CAPTURES:
                capture.append(line)

    _state["log_sink"] = sink  # keep the callback alive as long as the library
    llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))


def _load_cpu_variants(lib_dir: Path) -> list[str]:
    """Register ggml's best CPU variant (GPU backends wait for ``load_gpu_backends``); returns the
    registered backend names."""
    ggml_path = lib_dir / "libggml.so.0"
    if not ggml_path.exists():
        candidates = sorted(lib_dir.glob("libggml.so*"))
        if not candidates:
            return []
        ggml_path = candidates[0]
    ggml = ctypes.CDLL(str(ggml_path), mode=ctypes.RTLD_GLOBAL)
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    _state["ggml"] = ggml
    if ggml.ggml_backend_reg_count() == 0:
        best = _best_cpu_variant(lib_dir)
        if best is not None:
            ggml.ggml_backend_load(str(best).encode())
    return registered_backends()


def _best_cpu_variant(lib_dir: Path) -> Path | None:
    """The libggml-cpu-<variant>.so with the highest score on this CPU, as ggml's own loader picks it
    (each variant's ``ggml_backend_score`` reads cpuid only). ggml's ``load_all`` would also start every
    GPU backend: Vulkan's start-up alone loads the installed drivers (Mesa's pulls in LLVM, ~60 MB of
    resident memory measured) in every CPU-only run, so GPU backends load only when a GPU is asked for."""
    import _ctypes

    best, best_score = None, 0
    for path in sorted(lib_dir.glob("libggml-cpu-*.so")):
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        try:
            score_fn = lib.ggml_backend_score
            score_fn.restype = ctypes.c_int
            score = int(score_fn())
        except AttributeError:
            score = 0
        finally:
            _ctypes.dlclose(lib._handle)
        if score > best_score:
            best, best_score = path, score
    return best


GPU_BACKEND_LIBS = ("libggml-vulkan.so",)  # the GPU backends a set-up may build (Makefile: LLAMA_VULKAN)


def registered_backends() -> list[str]:
    ggml = _state["ggml"]
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    return [ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode()
            for i in range(ggml.ggml_backend_reg_count())]


def load_gpu_backends() -> list[str]:
    """Register the GPU backends this build has (once; a backend without a loader or device registers
    nothing, which ``devices.no_gpu_reason`` explains); returns the registered backend names."""
    llama()
    with _lock:
        if not _state.get("gpu_loaded") and _state.get("ggml") is not None and _state.get("lib_dir"):
            with captured_log() as lines:
                for name in GPU_BACKEND_LIBS:
                    if (_state["lib_dir"] / name).exists():
                        _state["ggml"].ggml_backend_load(str(_state["lib_dir"] / name).encode())
            _state["startup_log"] = _state["startup_log"] + tuple(lines)
            _state["backends"] = registered_backends()
        _state["gpu_loaded"] = True
    return list(_state["backends"])


def _cpu_variant(lib_dir: Path, startup: Sequence[str]) -> str:
    """Which CPU variant ggml picked: the best-scoring libggml-cpu-*.so that this CPU runs."""
    for line in startup:
        if "loaded CPU backend from" in line:
            return Path(line.strip().split()[-1]).stem.replace("libggml-cpu-", "")
    return "native" if not any(lib_dir.glob("libggml-cpu-*.so")) else "unknown"


def llama() -> Any:
    """The ``llama_cpp`` module, initialised once (backends loaded, logging captured)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        try:
            import llama_cpp
        except Exception as exc:  # ImportError, or OSError when the shared library cannot load
            raise BackendUnavailableError(
                f"llama-cpp-python is not usable ({exc}).",
                hint="Run `make setup` to build and install it (see README).",
            ) from None
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        _install_log_sink(llama_cpp)
        with captured_log() as startup:
            backends = _load_cpu_variants(lib_dir) if lib_dir.is_dir() else []
            llama_cpp.llama_backend_init()
        _state["startup_log"] = tuple(startup)  # the backends' own lines (devices found, CPU variant)
        if not backends:
            raise BackendUnavailableError(
                "llama.cpp has no compute backend registered.",
                hint="Reinstall llama-cpp-python with `make setup`.",
            )
        _state["backends"] = backends
        _state["lib_dir"] = lib_dir if lib_dir.is_dir() else None
        _state["cpu_variant"] = _cpu_variant(lib_dir, startup)
        _state["module"] = llama_cpp
        return llama_cpp


def backend_info() -> dict[str, Any]:
    llama()
    return {"backends": list(_state["backends"]), "cpu_variant": _state["cpu_variant"]}


def library_dir() -> Path | None:
    """The folder of llama.cpp's shared libraries (the dynamically loaded backends live there)."""
    llama()
    return _state["lib_dir"]


def startup_log() -> tuple[str, ...]:
    """What the backends logged while loading (ggml-vulkan's device lines among them)."""
    llama()
    return _state["startup_log"]


def ggml_library() -> Any | None:
    """``libggml`` (the backend registry) after ``llama()`` loaded the backends; None for a build with
    the CPU code linked in (no dynamically loaded backends, so no other device either)."""
    llama()
    return _state.get("ggml")


def last_log(n: int = 3) -> str:
    lines = [line.strip() for line in LOG_TAIL if line.strip()]
    return " | ".join(lines[-n:])


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect every llama.cpp log line emitted inside the block (the ring buffer keeps only the tail)."""
    lines: list[str] = []
    _CAPTURES.append(lines)
    try:
        yield lines
    finally:  # by identity: a nested capture can hold equal lines, and list.remove would take the first equal one
        del _CAPTURES[next(i for i, c in enumerate(_CAPTURES) if c is lines)]


def weight_buffers(lines: list[str]) -> dict[str, float]:
    """``{buffer type: MiB}`` from a model load's log: ``CPU_Mapped`` (plain weights), ``CPU_REPACK``
    (weights repacked for the CPU's SIMD kernels), ``AMX`` ... — which extra buffer types were used."""
    found: dict[str, float] = {}
    for line in lines:
        match = _BUFFER_LINE.search(line)
        if match:
            found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(2))
    return found
