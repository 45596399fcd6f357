"""Spine benchmark: encoder + projector latency per engine, decode speed vs bare llama-cpp-python.

    .venv/bin/python benchmarks/spine.py [--runs 7] [--tokens 64]

On the benchmark LLaVA (CLIP ViT-B/16 @ 224 + 12x768 llama, random weights), in one process:
- encoder + projector, batch 1: PyTorch eager vs onnxruntime vs OpenVINO (f32 and the CPU's
  default precision), median ms and speed-up over eager;
- decode tokens/s through the edgebridge pipeline vs a bare ``llama_cpp.Llama`` on the same
  GGUF with the same settings, and the ratio.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from common import bare_llama_decode, bench_bundle, bench_model, machine, median_ms, print_table


def encoder_rows(model_dir, bundle, runs: int) -> list[list[object]]:
    import torch

    from edgebridge.exporters.families import family_for
    from edgebridge.manifest import read_manifest
    from edgebridge.runtimes.registry import open_encoder

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    enc = family.encoders(loaded)[0]
    pixels = enc.make_inputs(1, 7)
    with torch.no_grad():
        ref = enc.reference(pixels).numpy()
        eager = median_ms(lambda: enc.reference(pixels), runs=runs)
    manifest = read_manifest(bundle)
    arts = manifest.components["vision_encoder"].artifacts
    rows = [["PyTorch eager (fp32)", eager, 1.0, "-"]]
    configs = [("onnxruntime", "onnx", {}), ("openvino", "openvino", {"precision": "f32"}),
               ("openvino", "openvino", {"precision": "auto"})]
    inputs = {"pixel_values": pixels["pixel_values"].numpy()}
    for backend, fmt, opts in configs:
        session = open_encoder(backend, [bundle / f for f in arts[fmt].files], **opts)
        out = session.run(inputs)[0]
        cos = float((out * ref).sum() / (np.linalg.norm(out) * np.linalg.norm(ref)))
        ms = median_ms(lambda: session.run(inputs), runs=runs)
        label = f"{backend} ({session.report.precision})"
        rows.append([label, ms, eager / ms, f"{cos:.6f}"])
    del loaded
    return rows


def decode_rows(bundle, n_tokens: int, runs: int) -> list[list[object]]:
    from edgebridge import Pipeline

    gguf = bundle / "llm.gguf"
    prompt = "Describe the picture in detail. " * 4
    pipe = Pipeline.from_bundle(bundle, cache_embeddings=False, reuse_prefix=False)  # cold, like the bare one
    ours = []
    for _ in range(runs):
        r = pipe.generate(prompt, max_new_tokens=n_tokens, stop_at_eos=False)
        ours.append(r.timings["decode_tokens_per_s"])
    ttft = statistics.median(pipe.generate(prompt, max_new_tokens=2).timings["ttft_ms"] for _ in range(3))
    threads = pipe.llm.report.details["threads"]
    pipe.close()

    theirs = bare_llama_decode(gguf, prompt, n_tokens, runs, threads)
    ours_med, theirs_med = statistics.median(ours), statistics.median(theirs)
    return [
        ["bare llama-cpp-python Llama", theirs_med, 1.0, "-"],
        ["edgebridge Pipeline", ours_med, ours_med / theirs_med, f"TTFT (text prompt) {ttft:.1f} ms"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    model = bench_model("llava", vision="clip", text="llama")
    bundle = bench_bundle(model, "bundle-llava-bench-f16", llm_dtype="f16")
    print_table("encoder + projector, batch 1 (CLIP ViT-B/16 @ 224 -> 196 x 768)",
                ["engine", "median ms", "speed-up vs eager", "cosine vs eager"], encoder_rows(model, bundle, args.runs))
    print_table(f"decode, {args.tokens} tokens, f16 GGUF (12 x 768 llama)",
                ["system", "tokens/s (median)", "ratio vs bare", "note"], decode_rows(bundle, args.tokens, args.runs))


if __name__ == "__main__":
    main()
