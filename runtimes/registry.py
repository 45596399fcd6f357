"""Encoder backends, found by name.

A backend is one module ``runtimes/encoder_<name>.py`` that decorates its class with
``@register_encoder("<name>")``; modules are discovered on first lookup, so adding a backend is
one new file (plus its test). Engines are imported inside the backend, never at discovery, so
listing backends stays cheap and works when an engine is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edgebridge.errors import BackendUnavailableError
from edgebridge.registry import discover

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


@dataclass
class DeviceReport:
    """What ran where: the device asked for, the one that ran, and why they differ."""

    requested: str
    executed: str
    precision: str
    fallback_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"requested": self.requested, "executed": self.executed, "precision": self.precision}
        if self.fallback_reason:
            out["fallback_reason"] = self.fallback_reason
        out.update(self.details)
        return out


class EncoderSession(Protocol):
    """A loaded graph (encoder + bridge, or a tool's graph): outputs in ``output_names`` order."""

    backend: str
    report: DeviceReport
    input_names: list[str]
    output_names: list[str]
    output_shapes: list[list[int | None]]  # the graph's own output shapes (None: a dynamic axis)
    warm_up_pays: bool  # a first run at load saves the first call work and frees memory (``stages.warm_up``)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def node_times(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, float]]:
        """(node name, microseconds) of one profiled run, in execution order."""
        ...

    def close(self) -> None:
        """Free the engine's session (weights, arenas) now; the session is not run again."""
        ...

    def release_file_pages(self) -> int:
        """Hand back the resident pages of weight files the session mapped and, after its first run, no
        longer reads; the bytes handed back (0 where it maps none)."""
        ...


def run_named(session: EncoderSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session and key its outputs by name (graphs with many outputs: decoders with KV caches)."""
    return dict(zip(session.output_names, session.run(inputs)))


EncoderFactory = Callable[..., EncoderSession]
_REGISTRY: dict[str, EncoderFactory] = {}
_FORMATS: dict[str, str] = {}  # backend name -> the artifact format it runs


def register_encoder(name: str, artifact_format: str) -> Callable[[EncoderFactory], EncoderFactory]:
    def deco(factory: EncoderFactory) -> EncoderFactory:
        _REGISTRY[name] = factory
        _FORMATS[name] = artifact_format
        return factory

    return deco


def _discover() -> None:
    discover("edgebridge.runtimes", [str(Path(__file__).parent)], lambda name: name.startswith("encoder_"))


def encoder_backends() -> dict[str, str]:
    """{backend name: artifact format} of every registered encoder backend."""
    _discover()
    return dict(_FORMATS)


def artifact_format(backend: str) -> str:
    return encoder_backends().get(backend) or _unknown(backend)


def open_encoder(backend: str, files: list[Path], **options: Any) -> EncoderSession:
    """Load an encoder artifact with the named backend (``device``, ``threads``, ``precision``...)."""
    _discover()
    if backend not in _REGISTRY:
        _unknown(backend)
    session = _REGISTRY[backend](files, **options)
    session.report.details.setdefault("engine", backend)  # which one ran, in every result's ``devices``
    return session


def _unknown(backend: str):
    raise BackendUnavailableError(
        f"unknown encoder backend '{backend}'.", hint=f"Choose one of: {', '.join(sorted(_REGISTRY)) or 'none'}."
    )


def default_threads() -> int:
    """Threads for compute-bound engines: the CPUs this process may run on."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
