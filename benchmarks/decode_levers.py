"""Decode levers: what each setting does to tokens/s on this machine, against the memory-bound limit.

    .venv/bin/python benchmarks/decode_levers.py [--rounds 3] [--tokens 48] [--context 220]

On the benchmark LLaVA's text model (12x768 llama, random weights), after a ``--context``-position
prompt (an image prompt's length), greedy decode of ``--tokens`` tokens, per lever:

- the GGUF type (f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0), with its drift against the f32 GGUF from the
  default export's own trials (``bundle-llava-bench-default``; within the default budget or not);
- type mixes (``MIXES``: llama.cpp's quantizer with per-tensor type overrides, e.g. q8_0 with the FFN
  at q6_k), their drift measured here the same way (the reference texts, f32 GGUF as reference);
- the KV-cache type (f16, q8_0), flash attention on/off, 1 vs 2 threads (on q8_0);
- our per-token step (``LlamaCppLLM.eval_tokens`` + numpy argmax, what the pipeline runs) against a
  bare ``llama_cpp.Llama`` on the same GGUF: the Python overhead per token;
- prompt-lookup decoding (greedy, exact in principle): the last ``NGRAM`` tokens looked up in the prompt
  and the answer so far, the ``DRAFT`` tokens that followed the latest match verified in one batch, the
  longest agreeing run kept plus llama.cpp's next token. Its row says whether the ids equal plain greedy
  decode's and how many tokens each llama.cpp call gave; a second table times one llama.cpp call of
  1, 2, 4 and 8 tokens per GGUF type (what a verification costs against a plain step).

Each row's bytes read per token (weights + K/V at the context, from the GGUF's tensor table) over the
machine's read bandwidth measured in the same run (``decode_profile.read_bandwidth``) gives its
memory-bound ceiling; the table prints what fraction of it decode reaches, and each row against
OpenVINO GenAI's fastest decode when a ``peers.py`` result is in ``bench-out``. Rounds alternate the
configurations. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import genai_decode, prompt_ids, read_bandwidth  # noqa: E402

TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
# name -> (base type, {tensor-name regex: type}): fewer bytes than q8_0 where the drift allows
MIXES = {
    "q8_0, FFN q6_k": ("q8_0", {"ffn_(up|gate|down)": "q6_k"}),
    "q8_0, FFN up/gate q6_k": ("q8_0", {"ffn_(up|gate)": "q6_k"}),
    "q6_k, output q8_0": ("q6_k", {"^output\\.weight$": "q8_0"}),
}
NGRAM, DRAFT = 3, 8
BATCHES = (1, 2, 4, 8)


def _configs() -> dict[str, dict]:
    """name -> GGUF type and llama.cpp settings (the pipeline's defaults unless named)."""
    configs = {f"{t}": {"gguf": t} for t in (*TYPES, *MIXES)}
    configs["q8_0, KV q8_0"] = {"gguf": "q8_0", "kv_type": "q8_0", "flash_attn": True}  # a quantized V needs FA
    configs["q8_0, flash attention"] = {"gguf": "q8_0", "flash_attn": True}
    configs["q8_0, 1 thread"] = {"gguf": "q8_0", "threads": 1}
    configs["q8_0, bare llama-cpp-python"] = {"gguf": "q8_0", "bare": True}
    configs["q4_0, bare llama-cpp-python"] = {"gguf": "q4_0", "bare": True}
    for t in ("f32", "q8_0", "q4_0"):
        configs[f"{t}, prompt lookup"] = {"gguf": t, "lookup": True}
    return configs


def _proposal(history: list[int]) -> list[int]:
    """The ``DRAFT`` tokens after the latest earlier occurrence of the last ``NGRAM`` (down to 1) tokens."""
    for n in range(NGRAM, 0, -1):
        tail = history[-n:]
        for i in range(len(history) - n - 1, -1, -1):
            if history[i:i + n] == tail:
                return history[i + n:i + n + DRAFT]
    return []


def _lookup(path: Path, context: int, tokens: int, threads: int) -> tuple[float, str, float]:
    """(tokens/s with prompt lookup, how its ids compare with plain greedy decode and tokens per call,
    bytes read per plain step at the context)."""
    import numpy as np

    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    with LlamaCppLLM(path, LlamaSettings(n_ctx=1024, threads=threads)) as llm:
        prompt = prompt_ids(llm.n_vocab, context)
        plain = [int(np.argmax(llm.eval_tokens(prompt)))]
        while len(plain) < tokens:
            plain.append(int(np.argmax(llm.eval_tokens([plain[-1]]))))
        llm.reset()
        out, calls = [int(np.argmax(llm.eval_tokens(prompt)))], 0
        start = time.perf_counter()
        while len(out) < tokens:
            draft, kept, at = _proposal(prompt + out), llm.n_past, llm.next_pos
            best = np.asarray(llm.eval_tokens([out[-1]] + draft, "all")).reshape(len(draft) + 1, -1).argmax(axis=1)
            calls += 1
            agree = next((i for i, t in enumerate(draft) if best[i] != t), len(draft))
            out += [int(t) for t in best[:agree + 1]]
            llm.reset(kept + 1 + agree, at + 1 + agree)  # drop the cells of the drafts not kept
        rate = tokens / (time.perf_counter() - start)
        moved = llm.bytes_read_per_token(context + tokens // 2)
    out = out[:tokens]
    first = next((i for i, (a, b) in enumerate(zip(out, plain)) if a != b), None)
    same = "ids = plain greedy" if first is None else f"ids differ from plain greedy at token {first}"
    return rate, f"{same}; {(tokens - 1) / calls:.1f} tokens per llama.cpp call", moved


def _batch_ms(path: Path, context: int, threads: int) -> list[float]:
    """Median ms of one llama.cpp call of ``BATCHES`` tokens (all logits) after ``context`` positions."""
    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    with LlamaCppLLM(path, LlamaSettings(n_ctx=1024, threads=threads)) as llm:
        prompt = prompt_ids(llm.n_vocab, context + max(BATCHES))
        llm.eval_tokens(prompt[:context], "none")
        times = []
        for k in BATCHES:
            runs = []
            for _ in range(9):
                llm.reset(context, context)
                start = time.perf_counter()
                llm.eval_tokens(prompt[context:context + k], "all")
                runs.append(1000 * (time.perf_counter() - start))
            times.append(statistics.median(runs))
        return times


def _ours(path: Path, settings: dict, context: int, tokens: int, threads: int) -> tuple[float, float]:
    """(tokens/s, bytes read per token at the context) through our LLM stage."""
    import numpy as np

    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    s = LlamaSettings(n_ctx=1024, threads=settings.get("threads", threads),
                      kv_type=settings.get("kv_type", "f16"), flash_attn=settings.get("flash_attn", False))
    with LlamaCppLLM(path, s) as llm:
        logits = llm.eval_tokens(prompt_ids(llm.n_vocab, context))
        start = time.perf_counter()
        for _ in range(tokens):
            logits = llm.eval_tokens([int(np.argmax(logits))])
        rate = tokens / (time.perf_counter() - start)
        return rate, llm.bytes_read_per_token(context + tokens // 2)


def _bare(path: Path, context: int, tokens: int, threads: int) -> float:
    from common import BareLlama

    bare = BareLlama(path, threads)
    try:
        import numpy as np

        llm = bare.llm
        llm.reset()
        llm.eval(prompt_ids(llm.n_vocab(), context))
        start = time.perf_counter()
        for _ in range(tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return tokens / (time.perf_counter() - start)
    finally:
        bare.close()


def _mix(f32: Path, dst: Path, base: str, overrides: dict[str, str]) -> Path:
    """``f32`` quantized to ``base`` with the tensors matching each regex at its own type (written once)."""
    from edgebridge.exporters.quantize.gguf_quant import quantize_with_overrides

    if not dst.is_file():
        quantize_with_overrides(f32, dst, base, overrides)
    return dst


def _measured_drift(f32: Path, paths: dict[str, Path]) -> dict[str, str]:
    """Name -> drift of its GGUF against the f32 GGUF on the export's reference texts, as its trials measure it."""
    from edgebridge.exporters.gguf.export import N_CTX, reference_text_cases, run_llamacpp
    from edgebridge.exporters.quantize import DEFAULT_BUDGET, verdict
    from edgebridge.parity import logit_metrics
    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    cases = reference_text_cases(f32, add_bos=True)

    def logits(gguf: Path):
        with LlamaCppLLM(gguf, LlamaSettings(n_ctx=N_CTX)) as llm:
            return run_llamacpp(llm, cases)

    reference, drift = logits(f32), {}
    for name, path in paths.items():
        metrics = logit_metrics(logits(path), reference)
        passed, _ = verdict(metrics, DEFAULT_BUDGET["llm"])
        drift[name] = (f"top1 {metrics['top1_agreement']:.3f}, KL {metrics['kl_mean']:.2g} "
                       f"({'within' if passed else 'over'} budget)")
    return drift


def _drift(bench_dir: Path) -> dict[str, str]:
    """GGUF type -> its drift against the f32 GGUF, from the default export's trials (if exported)."""
    manifest = bench_dir / "bundle-llava-bench-default" / "edgebridge.json"
    if not manifest.is_file():
        return {}
    trials = json.loads(manifest.read_text())["components"]["llm"]["artifacts"]["gguf"]["quantization"]["trials"]
    return {t["precision"]: f"top1 {t['metrics']['top1_agreement']:.3f}, KL {t['metrics']['kl_mean']:.2g}"
                            f" ({'within' if t['passed'] else 'over'} budget)" for t in trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--context", type=int, default=220)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from common import BENCH_DIR, bench_ggufs, bench_model, machine, print_table


    paths = bench_ggufs(bench_model("llava", vision="clip", text="llama"), BENCH_DIR / "ggufs")
    mixed = {name: _mix(paths["f32"], BENCH_DIR / "ggufs" / f"llm-mix-{i}.gguf", base, overrides)
             for i, (name, (base, overrides)) in enumerate(MIXES.items())}
    paths.update(mixed)
    configs = _configs()
    rates: dict[str, list[float]] = {name: [] for name in configs}
    traffic: dict[str, float] = {}
    notes: dict[str, str] = {}
    bandwidth = []
    for _ in range(args.rounds):
        rate_bytes, probe = read_bandwidth(args.threads, BENCH_DIR)
        bandwidth.append(rate_bytes)
        for name, c in configs.items():
            if c.get("bare"):
                rates[name].append(_bare(paths[c["gguf"]], args.context, args.tokens, args.threads))
            elif c.get("lookup"):
                rate, notes[name], traffic[name] = _lookup(paths[c["gguf"]], args.context, args.tokens, args.threads)
                rates[name].append(rate)
            else:
                rate, traffic[name] = _ours(paths[c["gguf"]], c, args.context, args.tokens, args.threads)
                rates[name].append(rate)
    bw = statistics.median(bandwidth)
    drift, genai = _drift(BENCH_DIR), (genai_decode(BENCH_DIR, "llava") or (None,))[0]
    drift.update(_measured_drift(paths["f32"], mixed))
    print(machine())
    print(f"read bandwidth ({probe}, {args.threads} threads, median of the rounds): {bw / 1e9:.1f} GB/s")
    rows = []
    for name, c in configs.items():
        rate = statistics.median(rates[name])
        moved = traffic.get(name) or traffic[c["gguf"]]  # a bare run reads what our run of its GGUF reads
        rows.append([name, rate, moved / 1e6, bw / moved, rate / (bw / moved),
                     notes.get(name) or drift.get(c["gguf"], "-"), rate / genai if genai else "-"])
    print_table(f"decode after {args.context} positions, {args.tokens} tokens, p50 of {args.rounds} rounds",
                ["configuration", "tok/s", "MB read / token", "memory-bound tok/s", "of the bound", "drift vs f32",
                 f"vs GenAI {genai:.0f} tok/s" if genai else "vs GenAI"], rows)
    if genai:
        print(f"issue 18's decode target: >= 1.5x GenAI = {1.5 * genai:.0f} tok/s")
    batches = [[t, *_batch_ms(paths[t], args.context, args.threads)] for t in ("f32", "f16", "q8_0", "q6_k", "q4_0")]
    print_table(f"one llama.cpp call of k tokens after {args.context} positions (ms, median of 9): the cost of "
                "verifying k-1 drafted tokens", ["GGUF type", *(f"k={k}" for k in BATCHES)], batches)


if __name__ == "__main__":
    main()
