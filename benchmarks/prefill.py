"""Prefill benchmark: what bounds cold time to first token on this machine.

    .venv/bin/python benchmarks/prefill.py [--rounds 8] [--threads 2]

Cold TTFT is preprocess + encode + bridge + the LLM's prefill of the image prompt, and the prefill
is the largest stage. On the benchmark LLaVA (CLIP ViT-B/16 @ 224 + 12x768 llama, random weights)
this measures, in one process, rounds interleaved (one sample of every system per round, a pause
between samples so no engine's threads still spin when the next starts):

- the prefill of the image prompt (its real length, random embeddings) by optimum-intel's own
  OpenVINO language model (the IR its pipeline runs, compiled with the baseline's config) and by
  llama.cpp per GGUF type;
- the same weight matmuls through numpy's BLAS (OpenBLAS), a dense-sgemm reference for the f32
  work, and through onnxruntime with int8 weights (dynamic quantization: MLAS's int8 GEMM), what an
  int8-GEMM prefill could reach on this CPU;
- the pipeline's prefill graph (a bundle exported with ``--prefill int8``): the LLM's prefill
  through onnxruntime with int8 weights, its KV cache handed to llama.cpp (q8_0 GGUF), which decodes
  on (``runtimes/llamacpp/kv_handoff.py``); its decode is checked against llama.cpp's own prefill;
- the image encoder + bridge: edgebridge's int8-static ONNX (the q8_0 bundle's) and fp32 ONNX on
  onnxruntime, and optimum-intel's OpenVINO vision model (fp16 weights).

It then prints the cold-TTFT floor: each edgebridge encoder + prefill pairing against
optimum-intel's encoder + prefill (preprocessing, ~10 ms for both, left out), and the prefill
the 0.7x target would need with the fastest encoder. Prints; asserts nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")  # before numpy loads OpenBLAS; --threads re-sets it

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from common import (BENCH_DIR, bench_bundle, bench_ggufs, bench_model, machine, optimum_export, print_table,
                    sample_image)

PROMPT = "USER: <image>\nDescribe the picture. ASSISTANT:"  # peers.py's cold prompt
LLM_TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
OPTIMUM_LM, OPTIMUM_VISION = "optimum-intel OpenVINO LM (fp16 IR)", "optimum-intel OpenVINO vision (fp16 IR)"
SGEMM = "numpy sgemm, same matmuls (OpenBLAS)"
INT8_GEMM = "onnxruntime int8 GEMM, same matmuls (MLAS)"
HYBRID = "prefill graph: onnxruntime int8 + KV hand-over to llama.cpp q8_0"


def text_config(model: Path) -> dict:
    config = json.loads((model / "config.json").read_text())
    return config.get("text_config", config)


def matmul_shapes(cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of every weight matmul a prefill position goes through (the LM head runs on the
    last position only, so it is left out)."""
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    kv = d * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    layer = [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (d, ff), (ff, d)]
    return layer * cfg["num_hidden_layers"]


def prompt_positions(bundle: Path, image: Path, threads: int) -> int:
    """How many positions the bench prompt with one photo fills (image embeddings + text tokens)."""
    from edgebridge import Pipeline

    with Pipeline.from_bundle(bundle, threads=threads, verify=False, cache_embeddings=False,
                              reuse_prefix=False) as pipe:
        return pipe.generate(PROMPT, images=[str(image)], max_new_tokens=1).prompt_tokens


def optimum_request(optimum_dir: Path, part: str, threads: int):
    """An infer request on one of optimum-intel's exported IRs, compiled as its pipeline compiles it."""
    import openvino as ov

    from edgebridge.exporters.baselines import optimum_ov_config

    compiled = ov.Core().compile_model(str(optimum_dir / f"openvino_{part}_model.xml"), "CPU",
                                       optimum_ov_config(threads))
    return compiled.create_infer_request()


def optimum_prefill(optimum_dir: Path, embeds: np.ndarray, threads: int) -> Callable[[], None]:
    request = optimum_request(optimum_dir, "language", threads)
    n = embeds.shape[0]
    feeds = {"inputs_embeds": embeds[None], "attention_mask": np.ones((1, n), np.int64),
             "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)}

    def run() -> None:
        request.reset_state()  # stateful IR: a fresh KV cache, as for a new conversation
        request.infer(feeds)

    return run


def llama_prefill(gguf: Path, embeds: np.ndarray, threads: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    llm = LlamaCppLLM(gguf, LlamaSettings(n_ctx=1024, threads=threads))

    def run() -> None:
        llm.reset()
        llm.eval_embeddings(embeds)

    return run, llm.close


def sgemm_prefill(shapes: list[tuple[int, int]], n: int) -> Callable[[], None]:
    rng = np.random.default_rng(0)
    weights = {shape: rng.standard_normal(shape, dtype=np.float32) * 0.02 for shape in set(shapes)}
    acts = {d_in: rng.standard_normal((n, d_in), dtype=np.float32) for d_in, _ in shapes}

    def run() -> None:
        for shape in shapes:
            np.matmul(acts[shape[0]], weights[shape])

    return run


def int8_gemm_prefill(shapes: list[tuple[int, int]], n: int, work: Path, threads: int) -> Callable[[], None]:
    """The weight matmuls as one ONNX graph of MatMuls, dynamically quantized to int8 weights (onnxruntime
    turns each into DynamicQuantizeLinear + MatMulInteger, MLAS's u8s8 GEMM)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgebridge.runtimes.encoder_onnxruntime import session_options

    rng = np.random.default_rng(0)
    widths = sorted({d_in for d_in, _ in shapes})
    inputs = [helper.make_tensor_value_info(f"x{w}", TensorProto.FLOAT, [n, w]) for w in widths]
    nodes, weights, outputs = [], [], []
    for i, (d_in, d_out) in enumerate(shapes):
        weights.append(numpy_helper.from_array(rng.standard_normal((d_in, d_out), dtype=np.float32) * 0.02, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{d_in}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [n, d_out]))
    graph = helper.make_graph(nodes, "prefill_matmuls", inputs, outputs, weights)
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / "prefill-matmuls-fp32.onnx", work / "prefill-matmuls-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(str(int8), session_options(threads), providers=["CPUExecutionProvider"])
    feeds = {f"x{w}": rng.standard_normal((n, w), dtype=np.float32) for w in widths}
    return lambda: session.run(None, feeds)


def hybrid_prefill(bundle: Path, embeds: np.ndarray,
                   threads: int) -> tuple[Callable[[], None] | None, str, Callable[[], None]]:
    """The bundle's int8 prefill graph + KV hand-over (the pipeline's path, ``kv_handoff.py``) on
    ``embeds``: (timed run or None, what its check found, close)."""
    from edgebridge.manifest import read_manifest
    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
    from edgebridge.runtimes.llamacpp.kv_handoff import HandoffUnavailable, KVHandoff, PrefillGraph

    art = read_manifest(bundle).llm.artifacts["prefill"]
    ours = LlamaCppLLM(bundle / "llm.gguf", LlamaSettings(n_ctx=1024, threads=threads))
    theirs = LlamaCppLLM(bundle / "llm.gguf", LlamaSettings(n_ctx=1024, threads=threads))

    def close() -> None:
        ours.close()
        theirs.close()

    try:
        handoff = KVHandoff.attach(ours, PrefillGraph(bundle / art.files[0], threads=threads, precision=art.precision))
    except HandoffUnavailable as exc:
        return None, f"no hand-over ({exc}): skipped", close
    n = embeds.shape[0]
    ids, mask = np.zeros(n, np.int64), np.ones(n, bool)
    # teacher-forced: both contexts are fed llama.cpp's own greedy tokens; compare every step's logits
    mine, ref = handoff.prefill(ids, embeds, mask), theirs.eval_embeddings(embeds).copy()
    agree, worst = 0, 0.0
    for _ in range(16):
        agree += int(np.argmax(mine) == np.argmax(ref))
        worst = max(worst, float(np.abs(mine - ref).max()))
        token = int(np.argmax(ref))
        mine, ref = ours.step(token).copy(), theirs.step(token).copy()
    check = (f"vs llama.cpp's own prefill of the same GGUF, 16 teacher-forced steps: top-1 {agree}/16, logits "
             f"max-abs {worst:.3g}; state layout checked at attach (probe cosine {handoff.probe_cosine:.4f})")
    return lambda: handoff.prefill(ids, embeds, mask), check, close


def onnx_encoder(path: Path, threads: int) -> Callable[[], None]:
    from edgebridge.runtimes.registry import open_encoder

    session = open_encoder("onnxruntime", [path], threads=threads)
    pixels = {"pixel_values": np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)}
    return lambda: session.run(pixels)


def optimum_encoder(optimum_dir: Path, threads: int) -> Callable[[], None]:
    request = optimum_request(optimum_dir, "vision_embeddings", threads)
    pixels = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    return lambda: request.infer({"pixel_values": pixels})


def interleaved(systems: dict[str, Callable[[], None]], rounds: int, pause_s: float = 0.1) -> dict[str, list[float]]:
    """ms samples per system: one warm-up call each, then ``rounds`` rounds of one call each."""
    for run in systems.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, run in systems.items():
            time.sleep(pause_s)
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    print(f"machine: {machine()}")
    model = bench_model("llava", vision="clip", text="llama")
    print("exports (reused when present):", flush=True)
    int8_bundle = bench_bundle(model, "bundle-llava-bench-q8_0-int8s", quantize="encoder=int8-static,llm=q8_0")
    fp32_bundle = bench_bundle(model, "bundle-llava-bench-f16", llm_dtype="f16")
    prefill_bundle = bench_bundle(model, "bundle-llava-bench-q8_0-prefill-int8s",  # peers.py's q8_0-prefill bundle
                                  quantize="encoder=int8-static,llm=q8_0", encoder_formats=("onnx",), prefill="int8")
    optimum_dir = optimum_export(model)
    ggufs = bench_ggufs(model, BENCH_DIR / "quantization")
    cfg = text_config(model)
    n = prompt_positions(int8_bundle, sample_image(), args.threads)
    shapes = matmul_shapes(cfg)
    gflop = 2 * n * sum(i * o for i, o in shapes) / 1e9
    embeds = np.random.default_rng(0).standard_normal((n, cfg["hidden_size"]), dtype=np.float32) * 0.02

    closers = []
    prefill = {OPTIMUM_LM: optimum_prefill(optimum_dir, embeds, args.threads)}
    for precision in LLM_TYPES:
        prefill[f"llama.cpp {precision}"], close = llama_prefill(ggufs[precision], embeds, args.threads)
        closers.append(close)
    prefill[SGEMM] = sgemm_prefill(shapes, n)
    prefill[INT8_GEMM] = int8_gemm_prefill(shapes, n, BENCH_DIR / "prefill", args.threads)
    hybrid, hybrid_check, close = hybrid_prefill(prefill_bundle, embeds, args.threads)
    closers.append(close)
    print(f"{HYBRID}: {hybrid_check}", flush=True)
    if hybrid:
        prefill[HYBRID] = hybrid
    encoders = {
        "edgebridge int8-static ONNX (onnxruntime)": onnx_encoder(int8_bundle / "vision_encoder.onnx", args.threads),
        "edgebridge fp32 ONNX (onnxruntime)": onnx_encoder(fp32_bundle / "vision_encoder.onnx", args.threads),
        OPTIMUM_VISION: optimum_encoder(optimum_dir, args.threads),
    }
    print(f"measuring: {len(prefill) + len(encoders)} systems x {args.rounds} rounds, interleaved", flush=True)
    samples = interleaved({**prefill, **encoders}, args.rounds)
    for close in closers:
        close()
    p50 = {name: statistics.median(s) for name, s in samples.items()}

    opt_prefill = p50[OPTIMUM_LM]
    print_table(f"prefill of the image prompt: {n} positions, identical embeddings ({gflop:.1f} GFLOP of weight "
                f"matmuls), {args.threads} threads, p50 of {args.rounds} interleaved rounds",
                ["system", "ms p50", "ms min", "positions/s", "matmul GFLOP/s", "vs optimum's LM"],
                [[name, p50[name], min(samples[name]), n / p50[name] * 1e3, gflop / p50[name] * 1e3,
                  opt_prefill / p50[name]] for name in prefill])
    print_table("image encoder + bridge, batch 1 (p50 ms)", ["system", "ms p50", "ms min", "vs optimum's"],
                [[name, p50[name], min(samples[name]), p50[OPTIMUM_VISION] / p50[name]] for name in encoders])

    optimum_total = p50[OPTIMUM_VISION] + opt_prefill
    fastest_encoder = min((name for name in encoders if name != OPTIMUM_VISION), key=p50.get)
    rows = [[OPTIMUM_VISION + " + LM", p50[OPTIMUM_VISION], opt_prefill, optimum_total, 1.0]]
    for name in [f"llama.cpp {precision}" for precision in LLM_TYPES] + ([HYBRID] if HYBRID in p50 else []):
        total = p50[fastest_encoder] + p50[name]
        rows.append([f"{fastest_encoder} + {name}", p50[fastest_encoder], p50[name], total, total / optimum_total])
    print_table("cold-TTFT floor: encoder + prefill (preprocessing left out), against optimum-intel's",
                ["pairing", "encode ms", "prefill ms", "sum ms", "vs optimum"], rows)
    needed = 0.7 * optimum_total - p50[fastest_encoder]
    int8_total = p50[fastest_encoder] + p50[INT8_GEMM]
    print(f"an int8-GEMM prefill at onnxruntime's matmul rate ({gflop / p50[INT8_GEMM] * 1e3:.0f} GOP/s; attention "
          f"and norms not counted) would give {int8_total:.0f} ms = {int8_total / optimum_total:.2f}x optimum's.")
    print(f"the 0.7x target needs encode + prefill <= {0.7 * optimum_total:.0f} ms: with the fastest encoder "
          f"({p50[fastest_encoder]:.0f} ms) a prefill of <= {needed:.0f} ms, i.e. >= {n / needed * 1e3:.0f} "
          f"positions/s and {gflop / needed * 1e3:.0f} GFLOP/s of matmuls; dense sgemm reaches "
          f"{gflop / p50[SGEMM] * 1e3:.0f} GFLOP/s here.")


if __name__ == "__main__":
    main()
