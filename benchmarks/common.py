"""Helpers shared by the benchmark scripts: the benchmark model, timing, tables.

Benchmarks print ratios against baselines measured in the same run (machines here are noisy);
they never assert. The benchmark model is a seeded random LLaVA: a CLIP ViT-B/16 tower at
224 px (196 image tokens) and a 12-layer, 768-wide llama (~85M parameters).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(os.environ.get("EDGEBRIDGE_BENCH_DIR", ROOT / "bench-out"))


def bench_model(kind: str = "llava", **options) -> Path:
    """The seeded benchmark-size model folder, built once and reused."""
    from edgebridge.testing import make_tiny

    name = "-".join([kind, *(f"{v}" for v in options.values()), "bench"])
    folder = BENCH_DIR / name
    if not (folder / "config.json").is_file():
        make_tiny(kind, folder, size="bench", **options)
    return folder


def bench_bundle(model: Path, name: str, **export_options) -> Path:
    """Export ``model`` once into ``BENCH_DIR/name`` (reused when present)."""
    from edgebridge.exporters.api import export_bundle

    target = BENCH_DIR / name
    if not (target / "edgebridge.json").is_file():
        start = time.perf_counter()
        export_bundle(model, target, force=True, step=lambda s: print(f"  [{time.perf_counter() - start:6.1f}s] {s}",
                                                                         flush=True), **export_options)
    return target


def optimum_export(model: Path) -> Path:
    """``model`` exported by optimum-intel (fp16 weights) into ``BENCH_DIR``, once."""
    target = BENCH_DIR / ("optimum-ov-fp16" if model.name.startswith("llava") else f"optimum-ov-fp16-{model.name}")
    if not (target / "openvino_language_model.xml").is_file():
        from edgebridge.exporters.baselines import export_optimum

        export_optimum(model, target)
    return target


def genai_export(model: Path, weights: str) -> Path:
    """``model`` as OpenVINO GenAI reads it, once: ``optimum-cli export openvino --task image-text-to-text
    --weight-format fp16|int8`` plus the tokenizer and detokenizer IRs from ``convert_tokenizer``."""
    import subprocess

    target = BENCH_DIR / f"genai-ov-{weights}-{model.name}"
    if not (target / "openvino_detokenizer.xml").is_file():
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "optimum-cli"), "export", "openvino", "-m", str(model), "--task",
                        "image-text-to-text", "--weight-format", weights, str(target)], check=True,
                       capture_output=True)
        subprocess.run([str(bin_dir / "convert_tokenizer"), str(model), "--with-detokenizer", "-o", str(target)],
                       check=True, capture_output=True)
    return target


def sample_image() -> Path:
    """The photo every benchmark asks about (scikit-image's ``chelsea``, a real photo shipped on PyPI)."""
    path = BENCH_DIR / "chelsea.png"
    if not path.is_file():
        from PIL import Image
        from skimage import data

        Image.fromarray(data.chelsea()).save(path)
    return path


def bench_ggufs(model: Path, work: Path) -> dict[str, Path]:
    """The benchmark LLM as GGUF, one file per type (f32, f16 and every LLM quantization edgebridge
    offers), written into ``work`` once and reused."""
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.gguf.writer import write_gguf
    from edgebridge.exporters.quantize.gguf_quant import LLM_FTYPES, quantize_gguf

    work.mkdir(parents=True, exist_ok=True)
    paths = {"f32": work / "llm-f32.gguf", "f16": work / "llm-f16.gguf"}
    missing = [dtype for dtype, path in paths.items() if not path.exists()]
    if missing:
        family = family_for(model)
        text = family.text_model(family.load(model))
        for dtype in missing:
            write_gguf(text, paths[dtype], dtype)
    for precision in LLM_FTYPES:
        paths[precision] = work / f"llm-{precision}.gguf"
        if not paths[precision].exists():
            quantize_gguf(paths["f32"], paths[precision], precision)
    return paths


def median_ms(fn: Callable[[], object], runs: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in text)
    except OSError:
        pass
    return f"{cpu} ({flags}), {len(os.sched_getaffinity(0))} threads, Python {platform.python_version()}"


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row])
    Console(width=160).print(table)


class BareLlama:
    """A bare ``llama_cpp.Llama`` on ``gguf`` (loaded once), for decode timings against the pipeline."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        from edgebridge.runtimes.llamacpp._lib import llama

        # The set-up's portable build keeps its CPU kernels in per-variant libraries that llama-cpp-python
        # 0.3.36 does not load itself ("no backends are loaded"); this registers them, nothing more.
        llama()
        self.llm = Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads,
                         n_threads_batch=threads, verbose=False)

    def decode_tokens_per_s(self, prompt: str, n_tokens: int) -> float:
        """Greedy decode after a text prompt: ``n_tokens - 1`` single-token steps, as the pipeline's
        decode figure times them."""
        import numpy as np

        bare = self.llm
        bare.reset()
        bare.eval(bare.tokenize(prompt.encode()))
        start = time.perf_counter()
        for _ in range(n_tokens - 1):
            bare.eval([int(np.argmax(bare.scores[bare.n_tokens - 1]))])
        return (n_tokens - 1) / (time.perf_counter() - start)

    def close(self) -> None:
        self.llm.close()


def bare_llama_decode(gguf: Path, prompt: str, n_tokens: int, runs: int, threads: int) -> list[float]:
    """Decode tokens/s of a bare ``llama_cpp.Llama`` on ``gguf``, one sample per run."""
    bare = BareLlama(gguf, threads)
    try:
        return [bare.decode_tokens_per_s(prompt, n_tokens) for _ in range(runs)]
    finally:
        bare.close()
