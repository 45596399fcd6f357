"""Shared, session-scoped fixtures: tiny model folders, their bundles and HF reference outputs.

Exports are the expensive part (~15 s each), so every bundle is built once per session and
shared by all tests that read it. Tests that need to break a bundle copy it first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots and reports kept after a run (git-ignored)

LLAVA_COMBOS = [("clip", "llama"), ("clip", "qwen2"), ("siglip", "llama"), ("siglip", "qwen2")]
# The text architectures the GGUF writer gained with issue 16, each behind a tiny LLaVA. Seeds picked so
# that transformers' 16 greedy ids are not one token repeated and hit no stop token (seed 0 gives
# 113 x13 for qwen3, 361 x14 for gemma2, and a stop after 8 ids for gemma3).
# llama2: a llama with Llama 2's legacy SentencePiece tokenizer (LLaVA-1.5 / Vicuna style).
TEXT_ARCH_COMBOS = [("siglip", "qwen3"), ("clip", "phi3"), ("clip", "gemma2"), ("siglip", "gemma3"), ("clip", "llama2")]
TEXT_ARCH_SEEDS = {"qwen3": 1, "phi3": 5, "gemma2": 11, "gemma3": 3, "llama2": 2}
PROMPT = "USER: <image>\nWhat is in this image? ASSISTANT:"


def combo_id(combo: tuple[str, str]) -> str:
    return f"{combo[0]}-{combo[1]}"


@dataclass
class Exported:
    """A tiny model folder and the bundle exported from it."""

    model_dir: Path
    bundle: Path
    manifest: Any


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edgebridge")


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # a real photo (a cat), shipped inside scikit-image


SPEECH = ["Hello world, what is the capital of France?", "Please describe the weather today in two words.",
          "The quick brown fox jumps over the lazy dog."]
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


@pytest.fixture(scope="session")
def speech(workdir) -> list[Path]:
    """Sentences synthesized by Debian's espeak-ng (installed by `make setup`), as 22.05 kHz WAV files."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is missing; `make setup` installs it (Debian package espeak-ng)")
    paths = []
    for i, text in enumerate(SPEECH):
        path = workdir / f"speech-{i}.wav"
        if not path.exists():
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def recordings() -> list[Path]:
    """Real voice recordings from Debian's alsa-utils (48 kHz)."""
    paths = sorted(ALSA_SOUNDS.glob("Front_*.wav"))
    if not paths:
        pytest.skip("alsa-utils recordings are missing; `make setup` installs them (Debian package alsa-utils)")
    return paths


def tiny_model(workdir: Path, kind: str) -> Path:
    """A seeded tiny model folder of ``kind`` (any edgebridge.testing builder), built once per session."""
    key = (kind, "")
    if key not in _model_dirs:
        from edgebridge.testing import make_tiny

        _model_dirs[key] = make_tiny(kind, workdir / f"model-{kind}")
    return _model_dirs[key]


def exported(workdir: Path, kind: str, llm_dtype: str = "f32") -> Exported:
    """A bundle of the tiny ``kind`` model, exported once per session."""
    key = (kind, "", llm_dtype)
    if key not in _bundles:
        from edgebridge.exporters.api import export_bundle

        model_dir = tiny_model(workdir, kind)
        bundle = workdir / f"bundle-{kind}-{llm_dtype}"
        _bundles[key] = Exported(model_dir, bundle, export_bundle(model_dir, bundle, llm_dtype=llm_dtype))
    return _bundles[key]


_model_dirs: dict[tuple[str, str], Path] = {}
_bundles: dict[tuple[str, ...], Exported] = {}


def tiny_llava(workdir: Path, combo: tuple[str, str]) -> Path:
    if combo not in _model_dirs:
        from edgebridge.testing import make_tiny

        _model_dirs[combo] = make_tiny("llava", workdir / f"model-{combo_id(combo)}", vision=combo[0], text=combo[1],
                                       seed=TEXT_ARCH_SEEDS.get(combo[1], 0))
    return _model_dirs[combo]


def exported_llava(workdir: Path, combo: tuple[str, str], llm_dtype: str = "f32", prefill: str | None = None) -> Exported:
    """A bundle of a tiny LLaVA; ``prefill`` adds the LLM prefill graph (and exports the ONNX encoder only)."""
    key = (*combo, llm_dtype) if prefill is None else (*combo, llm_dtype, prefill)
    if key not in _bundles:
        from edgebridge.exporters.api import export_bundle

        model_dir = tiny_llava(workdir, combo)
        bundle = workdir / f"bundle-{combo_id(combo)}-{llm_dtype}{'-prefill-' + prefill if prefill else ''}"
        formats = ("onnx",) if prefill else ("onnx", "openvino")
        manifest = export_bundle(model_dir, bundle, llm_dtype=llm_dtype, encoder_formats=formats, prefill=prefill)
        _bundles[key] = Exported(model_dir, bundle, manifest)
    return _bundles[key]


@pytest.fixture(scope="session")
def clip_llama_f32(workdir) -> Exported:
    return exported_llava(workdir, ("clip", "llama"), "f32")


@pytest.fixture(scope="session")
def clip_llama_f16(workdir) -> Exported:
    return exported_llava(workdir, ("clip", "llama"), "f16")


@pytest.fixture(scope="session")
def wide_llama_gguf(workdir) -> Path:
    """An f32 llama GGUF whose FFN has 1024 rows (16 chunks of 64 rows: what the llama.cpp patches on
    decode's work split change on 2 threads) and whose weights fill several MiB."""
    from tests.test_text_archs import _causal_lm, _gguf

    folder = workdir / "wide-llama"
    model, _ = _causal_lm("llama", folder, hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=64)
    return _gguf("llama", folder, model)


def ggml_base_library():
    """ctypes handle on ``libggml-base.so.0``, the copy libllama links against (the wheel also ships
    unversioned copies, separate files); skips where llama.cpp's ggml is linked in."""
    import ctypes

    from edgebridge.runtimes.llamacpp._lib import library_dir

    lib = library_dir()
    if lib is None or not (lib / "libggml-base.so.0").exists():
        pytest.skip("llama.cpp built without its dynamically loaded ggml libraries")
    return ctypes.CDLL(str(lib / "libggml-base.so.0"))


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_isolated(code: str, *args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter (a crash there cannot take the test run down)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def run_cli(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed ``edgebridge`` command, in a subprocess."""
    exe = Path(sys.executable).parent / "edgebridge"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=full_env)
