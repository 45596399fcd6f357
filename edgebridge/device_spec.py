"""Where each component runs: ``--device GPU`` (the encoders, as always), ``--llm-device GPU`` (the LLM),
or the per-component form ``--device encoder=GPU,llm=GPU``.

The encoders' devices are OpenVINO's / onnxruntime's names (CPU, GPU, NPU, AUTO); the LLM's are llama.cpp's
classes (CPU, GPU, AUTO: see ``runtimes/llamacpp/devices.py``). Parsing only: availability and fallback are
the engines' business, and reported per component in ``result.devices``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebridge.errors import InputError

COMPONENT_KEYS = ("encoder", "llm")


@dataclass(frozen=True)
class DevicePlacement:
    encoder: str = "CPU"
    llm: str = "CPU"


def parse_placement(device: str | None, llm_device: str | None = None) -> DevicePlacement:
    """``device`` is one device name (the encoders') or ``key=DEVICE`` pairs joined by commas; an explicit
    ``llm_device`` wins over an ``llm=`` pair only if they agree (two answers to one question are refused)."""
    text = (device or "CPU").strip()
    if "=" not in text:
        return DevicePlacement(encoder=text.upper() or "CPU", llm=(llm_device or "CPU").upper())
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = (x.strip() for x in part.partition("="))
        key = key.lower()
        if not sep or not value or key not in COMPONENT_KEYS:
            raise InputError(f"cannot read the device part '{part}' of '{text}'.",
                             hint="Write one device (CPU, GPU, NPU, AUTO) or pairs such as encoder=GPU,llm=GPU.")
        if key in pairs:
            raise InputError(f"'{key}' is given twice in the device '{text}'.")
        pairs[key] = value.upper()
    if llm_device is not None and "llm" in pairs and pairs["llm"] != llm_device.upper():
        raise InputError(f"the LLM's device is given twice and differently ('{text}' and llm_device={llm_device!r}).",
                         hint="Give it once, in --device llm=... or in --llm-device.")
    return DevicePlacement(encoder=pairs.get("encoder", "CPU"), llm=pairs.get("llm", (llm_device or "CPU").upper()))
