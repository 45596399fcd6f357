"""Quantization benchmark: size, speed ratio vs full precision (same run) and drift, per component.

    .venv/bin/python benchmarks/quantization.py [--runs 7] [--tokens 64]

On the benchmark LLaVA (CLIP ViT-B/16 @ 224 + 12x768 llama, random weights):
- encoder + projector per engine and precision: MB, batch-1 latency and speed-up over the fp32
  artifact of the same engine, worst/mean cosine and max-abs against PyTorch on the held-out
  photos of the default calibration set;
- LLM per GGUF type: MB, decode and prefill tokens/s and their ratio to f16, top-1 agreement and
  mean KL against the f32 GGUF on the reference text set.
Targets to read against: ONNX int8 >= 1.5x fp32 with worst cosine >= 0.99; q4_k_m decode >= 2x f16.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import BENCH_DIR, bench_ggufs, bench_model, machine, median_ms, print_table


def encoder_table(model_dir: Path, work: Path, runs: int) -> list[list[object]]:
    import torch

    from edgebridge.exporters.encoder import export_onnx
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.quantize import ENCODER_PRECISIONS
    from edgebridge.exporters.quantize.calibration import calibration_for
    from edgebridge.exporters.quantize.onnx_quant import quantize_onnx
    from edgebridge.exporters.quantize.openvino_quant import quantize_openvino
    from edgebridge.parity import embedding_metrics
    from edgebridge.runtimes.registry import open_encoder

    family = family_for(model_dir)
    loaded = family.load(model_dir)
    enc = family.encoders(loaded)[0]
    fp32 = work / "encoder-fp32.onnx"
    if not fp32.exists():
        export_onnx(enc, fp32)
    calib = calibration_for("image", enc.preprocessing)
    with torch.no_grad():
        refs = [enc.reference({k: torch.from_numpy(v) for k, v in item.items()}).numpy() for item in calib.evaluate]
    timing_input = calib.evaluate[0]
    rows = []
    for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        base_ms = None
        for precision in ENCODER_PRECISIONS[fmt]:
            out_dir = work / fmt / precision
            out_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            if fmt == "onnx":
                files = [out_dir / "encoder.onnx"]
                quantize_onnx(fp32, files[0], precision, calib)
            else:
                files = [out_dir / "encoder.xml", out_dir / "encoder.bin"]
                quantize_openvino(fp32, files[0], precision, calib)
            quant_s = time.perf_counter() - start
            opts = {"precision": "f32"} if fmt == "openvino" else {}
            session = open_encoder(backend, files, artifact_precision=precision, **opts)
            outs = [session.run(item)[0] for item in calib.evaluate]
            m = embedding_metrics(np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs]),
                                  np.concatenate([r.reshape(-1, r.shape[-1]) for r in refs]))
            ms = median_ms(lambda: session.run(timing_input), runs=runs)
            base_ms = base_ms or ms
            size = sum(f.stat().st_size for f in files) / 1e6
            rows.append([fmt, precision, size, ms, base_ms / ms, m["cosine_min"], m["cosine_mean"], m["max_abs"],
                         f"{quant_s:.0f}s"])
    return rows


def llm_table(model_dir: Path, work: Path, n_tokens: int, runs: int) -> list[list[object]]:
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.gguf.export import reference_text_cases, run_llamacpp
    from edgebridge.parity import logit_metrics
    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    family = family_for(model_dir)
    add_bos = family.prompt_layout(family.load(model_dir)).add_bos
    paths = bench_ggufs(model_dir, work)
    cases = reference_text_cases(paths["f32"], add_bos)
    with LlamaCppLLM(paths["f32"], LlamaSettings(n_ctx=512)) as llm:
        ref = run_llamacpp(llm, cases)
    prompt = [int(t) for case in cases for _, data in case for t in data][:128]
    rows, base = [], None
    for precision in ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"):
        with LlamaCppLLM(paths[precision], LlamaSettings(n_ctx=512)) as llm:
            m = logit_metrics(run_llamacpp(llm, cases), ref)
            decode, prefill = [], []
            for _ in range(runs):
                llm.reset()
                start = time.perf_counter()
                logits = llm.eval_tokens(prompt)
                prefill.append(len(prompt) / (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(n_tokens):
                    logits = llm.eval_tokens([int(np.argmax(logits))])
                decode.append(n_tokens / (time.perf_counter() - start))
        dec, pre = statistics.median(decode), statistics.median(prefill)
        if precision == "f16":
            base = (dec, pre)
        rows.append([precision, paths[precision].stat().st_size / 1e6, dec, pre, m["top1_agreement"], m["kl_mean"]])
    return [r[:4] + [r[2] / base[0], r[3] / base[1]] + r[4:] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    model = bench_model("llava", vision="clip", text="llama")
    work = BENCH_DIR / "quantization"
    work.mkdir(parents=True, exist_ok=True)
    print_table(
        "encoder + projector (CLIP ViT-B/16 @ 224), batch 1; drift vs PyTorch on 7 held-out photos",
        ["engine", "precision", "MB", "median ms", "speed-up vs fp32", "cosine min", "cosine mean", "max abs",
         "quantize time"],
        encoder_table(model, work, args.runs),
    )
    print_table(
        f"LLM (12 x 768 llama, random weights), decode {args.tokens} tokens, prefill 128; drift vs f32 GGUF",
        ["GGUF", "MB", "decode tok/s", "prefill tok/s", "decode vs f16", "prefill vs f16", "top-1 agreement",
         "KL mean"],
        llm_table(model, work, args.tokens, args.runs),
    )


if __name__ == "__main__":
    main()
