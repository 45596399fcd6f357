"""Seeded model folders for tests, demos and benchmarks (host side: imports torch/transformers).

Every builder writes a real Hugging Face folder (safetensors weights, tokenizer.json, processor
files) that loads with ``from_pretrained`` and never touches a hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def _llava(out_dir: Path, vision: str = "clip", text: str = "llama", size: str = "tiny", seed: int = 0,
           **_: Any) -> Path:
    from edgebridge.testing.llava import make_llava

    return make_llava(out_dir, vision=vision, text=text, size=size, seed=seed)


def _qwen2_audio(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.audio import make_qwen2_audio

    return make_qwen2_audio(out_dir, seed=seed)


def _voxtral(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.audio import make_voxtral

    return make_voxtral(out_dir, seed=seed)


def _idefics3(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.tiled import make_idefics3

    return make_idefics3(out_dir, seed=seed)


def _internvl(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.tiled import make_internvl

    return make_internvl(out_dir, seed=seed)


def _mobilevlm(out_dir: Path, seed: int = 0, projector: str = "ldpv2", **_: Any) -> Path:
    from edgebridge.testing.mobilevlm import make_mobilevlm

    return make_mobilevlm(out_dir, projector=projector, seed=seed)


def _instructblip(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.instructblip import make_instructblip

    return make_instructblip(out_dir, seed=seed)


def _idefics2(out_dir: Path, seed: int = 0, split: bool = False, **_: Any) -> Path:
    from edgebridge.testing.idefics2 import make_idefics2

    return make_idefics2(out_dir, seed=seed, split=split)


def _qwen2_vl(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.qwen_vl import make_qwen2_vl

    return make_qwen2_vl(out_dir, seed=seed)


def _qwen3_vl(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.qwen_vl import make_qwen3_vl

    return make_qwen3_vl(out_dir, seed=seed)


def _qwen2_5_vl(out_dir: Path, seed: int = 0, size: str = "tiny", **_: Any) -> Path:
    from edgebridge.testing.qwen_vl import make_qwen2_5_vl

    return make_qwen2_5_vl(out_dir, seed=seed, size=size)


def _gemma3(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.gemma3 import make_gemma3

    return make_gemma3(out_dir, seed=seed)


def _paligemma(out_dir: Path, seed: int = 4, **_: Any) -> Path:  # seed 4: 16 greedy ids that vary
    from edgebridge.testing.paligemma import make_paligemma

    return make_paligemma(out_dir, seed=seed)


def _llava_next(out_dir: Path, seed: int = 7, **_: Any) -> Path:  # seed 7: 16 greedy ids that vary
    from edgebridge.testing.anyres import make_llava_next

    return make_llava_next(out_dir, seed=seed)


def _llava_onevision(out_dir: Path, seed: int = 0, **_: Any) -> Path:
    from edgebridge.testing.anyres import make_llava_onevision

    return make_llava_onevision(out_dir, seed=seed)


# kind -> builder(out_dir, **options); options a builder does not take are ignored
BUILDERS: dict[str, Callable[..., Path]] = {"llava": _llava, "qwen2-audio": _qwen2_audio, "voxtral": _voxtral,
                                           "idefics3": _idefics3, "internvl": _internvl, "mobilevlm": _mobilevlm,
                                           "instructblip": _instructblip, "idefics2": _idefics2,
                                           "qwen2-vl": _qwen2_vl, "qwen2.5-vl": _qwen2_5_vl,
                                           "qwen3-vl": _qwen3_vl, "gemma3": _gemma3,
                                           "paligemma": _paligemma, "llava-next": _llava_next,
                                           "llava-onevision": _llava_onevision}


def make_tiny(kind: str, out_dir: str | Path, **options: Any) -> Path:
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[kind](Path(out_dir), **options)
