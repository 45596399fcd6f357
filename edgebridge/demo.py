"""``make demo``: build a model, export it, run it on a real photo, print the answer and timings.

    python -m edgebridge.demo [--out demo-out] [--size tiny|bench]

The random-weight demo: a seeded LLaVA (CLIP tower + llama) is written as a Hugging Face folder,
exported to a bundle (ONNX + OpenVINO encoder, GGUF LLM, every parity gate checked), and run on
scikit-image's cat photo through the torch-free runtime. The weights are random, so the answer is
noise: this demo proves the plumbing and shows where time goes, not what the model knows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 120)
PROMPT = "USER: <image>\nWhat is in this image? ASSISTANT:"


def _timings_table(result, backend: str) -> Table:
    t = result.timings
    table = Table(title=f"timings ({backend} encoder, llama.cpp LLM)")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for label, key in (("preprocess (numpy/PIL)", "preprocess_ms"), ("encode + bridge", "encode_ms"),
                       ("prefill", "prefill_ms"), ("time to first token", "ttft_ms"),
                       ("per token p50", "per_token_p50_ms"), ("per token p95", "per_token_p95_ms"),
                       ("total", "total_ms")):
        table.add_row(label, f"{t[key]:.1f}" if t.get(key) is not None else "-")
    table.add_row("decode tokens/s", f"{t['decode_tokens_per_s'] or 0:.1f}")
    table.add_row("prompt positions (text + image)", str(t["prompt_tokens"]))
    return table


def run_random_demo(out: Path, size: str = "tiny") -> None:
    from skimage import data

    from edgebridge import Pipeline
    from edgebridge.cli import _print_components
    from edgebridge.exporters.api import export_bundle
    from edgebridge.testing import make_tiny

    console.rule("[bold]edgebridge demo: random weights[/bold]")
    console.print("[yellow]The weights are random (seeded): the answer below is noise. This demo shows the "
                  "export -> bundle -> run path and its parity gates; real weights come with the real-weight demo."
                  "[/yellow]")
    model = make_tiny("llava", out / "model", vision="clip", text="llama", size=size)
    console.print(f"model folder: {model}")
    start = time.perf_counter()
    with console.status("exporting") as status:
        manifest = export_bundle(model, out / "bundle", force=True, step=lambda s: status.update(s))
    console.print(f"exported in {time.perf_counter() - start:.1f} s -> {out / 'bundle'}")
    _print_components(manifest)
    photo = data.chelsea()
    for backend in ("onnxruntime", "openvino"):
        with Pipeline.from_bundle(out / "bundle", encoder_backend=backend) as pipe:
            console.print(f"\n[bold]prompt:[/bold] {PROMPT!r} + scikit-image's cat photo ({backend})")
            console.print("[bold]answer:[/bold] ", end="")
            stream = pipe.generate(PROMPT, images=[photo], max_new_tokens=24, stream=True)
            for piece in stream:
                console.print(piece, end="", markup=False, highlight=False)
            console.print()
            console.print(_timings_table(stream.result, backend))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgebridge.demo")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--size", choices=["tiny", "bench"], default="tiny")
    args = parser.parse_args(argv)
    run_random_demo(args.out, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
