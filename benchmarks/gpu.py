"""The LLM on llama.cpp's Vulkan backend against the CPU: what the GPU path costs or gains here.

    .venv/bin/python benchmarks/gpu.py [--rounds 3] [--runs 3] [--bundle DIR] [--software]

One process, two pipelines over the same bundle (the benchmark LLaVA's f16 export by default): the
LLM on the CPU, and every LLM layer on the first Vulkan device; the encoder stays on the CPU for
both. Rounds alternate the two; every call is cold (no embedding cache, no KV-prefix reuse). Prints
medians of time to first token, prefill and decode, and GPU / CPU ratios. ``--software`` makes
Mesa's software Vulkan device (lavapipe, a CPU device that ggml-vulkan otherwise hides) visible:
it shows the path's overhead on a machine without a GPU, not a GPU's speed. No target; asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="calls per system per round")
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded per call")
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle (default: the bench LLaVA, f16)")
    parser.add_argument("--software", action="store_true", help="use lavapipe (GGML_VK_VISIBLE_DEVICES=0)")
    return parser.parse_args()


def main() -> None:
    args = _args()
    if args.software:  # read by ggml-vulkan when llama.cpp loads, so before anything imports it
        os.environ["GGML_VK_VISIBLE_DEVICES"] = "0"
    from common import bench_bundle, bench_model, machine, print_table, sample_image

    from edgebridge.pipeline import Pipeline
    from edgebridge.runtimes.llamacpp.devices import gpu_devices

    gpus = gpu_devices()
    if not gpus:
        sys.exit("no Vulkan device is registered (on a machine without a GPU, pass --software)")
    bundle = args.bundle or bench_bundle(bench_model(), "bundle-llava-bench-f16")
    image, prompt = str(sample_image()), "USER: <image>\nWhat is in this image? ASSISTANT:"
    pipes = {d: Pipeline.from_bundle(bundle, llm_device=d, cache_embeddings=False, reuse_prefix=False, verify=False)
             for d in ("CPU", "GPU")}
    samples: dict[str, dict[str, list[float]]] = {d: {"ttft": [], "prefill": [], "decode": []} for d in pipes}
    for pipe in pipes.values():  # warm-up: first-use shader and weight uploads are not what a user waits for
        pipe.generate(prompt, images=[image], max_new_tokens=4, stop_at_eos=False)
    for _ in range(args.rounds):
        for device, pipe in pipes.items():
            for _ in range(args.runs):
                t = pipe.generate(prompt, images=[image], max_new_tokens=args.tokens, stop_at_eos=False).timings
                samples[device]["ttft"].append(t.ttft_ms)
                samples[device]["prefill"].append(t.stages["prefill"])
                samples[device]["decode"].append(t.to_dict()["decode_tokens_per_s"])
    llm = pipes["GPU"].llm.report.as_dict()
    for pipe in pipes.values():
        pipe.close()
    med = {d: {k: statistics.median(v) for k, v in s.items()} for d, s in samples.items()}
    print(machine())
    print(f"GPU: {llm.get('backend')} {llm.get('device')} = {llm.get('device_description')}, "
          f"layers {llm.get('gpu_layers')}, features {llm.get('device_features')}")
    rows = [[d, med[d]["ttft"], med[d]["prefill"], med[d]["decode"]] for d in med]
    rows.append(["GPU / CPU", med["GPU"]["ttft"] / med["CPU"]["ttft"], med["GPU"]["prefill"] / med["CPU"]["prefill"],
                 med["GPU"]["decode"] / med["CPU"]["decode"]])
    print_table(f"{Path(bundle).name}: LLM on CPU vs Vulkan (p50 of {args.rounds}x{args.runs}, cold calls)",
                ["LLM on", "TTFT ms", "prefill ms", "decode tok/s"], rows)


if __name__ == "__main__":
    main()
