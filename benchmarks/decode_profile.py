"""Where a decode step's time goes, stage by stage, against each stage's limit on this machine.

    .venv/bin/python benchmarks/decode_profile.py [--model llava|qwen2.5-vl] [--context 220] [--tokens 32]
                                                  [--rounds 12] [--gguf PATH ...] [--symbols N]

Issue 18 asks for decode >= 1.5x OpenVINO GenAI's and, where that is out of reach, for the arithmetic
against the machine's measured peaks and how far each stage is from its limit. This script gives both
for the default export's GGUF (and the q8_0 bundle's, when ``peers.py`` wrote them), with the runtime
settings the export recorded (flash attention):

- **read bandwidth**, measured in the same run by ``read_bandwidth.c`` (compiled here with ``cc``; a
  decode step reads every weight once, so this is its floor), median over the rounds of each round's
  best pass; without a C compiler, numpy's threaded f32 GEMV (75-85% of the C probe on this VM; the
  table says which one it used);
- **decode tok/s** through ``LlamaCppLLM.eval_tokens`` + argmax (the pipeline's step) after a
  ``--context``-position prompt, each round decoding ``--tokens`` tokens from the same cached prompt;
- **the split of the step's CPU time** by Linux ``perf`` (when installed and permitted), recorded only
  while decoding (perf's control FIFO): the weights' quantized dot products, attention over the K/V
  cache (f16 dot products, softmax, the K/V writes), OpenMP's barriers between graph nodes, the
  activations' quantization, the other ggml ops, and the host (Python, llama.cpp's graph set-up);
  ``--symbols N`` also prints the N busiest symbols.

Each stage's limit: the weights' bytes (and the K/V cache's at llama.cpp's padded cell count) over
the read bandwidth; no floor for the rest. Prints what 1.5x GenAI's fastest decode (newest
``peers.py`` result for the model) needs per token. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# stage -> pattern on "dso symbol" (first match wins; the rest of libggml is "other ggml ops")
STAGES = (
    ("weights (quantized dot products)", r"ggml_vec_dot_(q\d|iq|tq)|tinyBLAS_Q|ggml_gemv_|ggml_gemm_"),
    # mul_mat_one_chunk: the attention scores' block-of-rows kernel (patch 0004) is inlined there; the
    # weights' products only loop over their dot-product calls in it
    ("attention (K/V cache)", r"ggml_vec_dot_f16|mul_mat_one_chunk|soft_max|flash_attn|fp32_to_fp16|set_rows|vec_mad_f16"),
    ("thread barriers (OpenMP)", r"^libgomp|ggml_barrier"),
    ("activation quantization", r"quantize_row_q8"),
    ("other ggml ops", r"^libggml"),
)
HOST = "host (Python, llama.cpp set-up, kernel)"
KV_PAD = 256  # llama.cpp pads the attended cells to a multiple of 256 (llama_kv_cache::get_n_kv)


def read_bandwidth(threads: int, work: Path) -> tuple[float, str]:
    """(bytes/s, probe used): the C probe built into ``work`` once, else numpy's GEMV."""
    source = Path(__file__).with_name("read_bandwidth.c")
    binary = work / "read_bandwidth"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc and (not binary.is_file() or binary.stat().st_mtime < source.stat().st_mtime):
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([cc, "-O3", "-march=native", "-pthread", str(source), "-o", str(binary)], check=True)
    if binary.is_file():
        out = subprocess.run([str(binary), str(threads)], check=True, capture_output=True, text=True).stdout
        return float(out.split()[0]), "read_bandwidth.c"
    return _numpy_read_bandwidth(threads), "numpy f32 GEMV (no C compiler)"


def _numpy_read_bandwidth(threads: int, mib: int = 256) -> float:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    matrix, vector = np.ones((mib * 256, 1024), np.float32), np.ones(1024, np.float32)
    slices = [s for s in np.array_split(np.arange(matrix.shape[0]), threads) if s.size]
    with ThreadPoolExecutor(threads) as pool:
        best = float("inf")
        for _ in range(8):
            start = time.perf_counter()
            list(pool.map(lambda rows: matrix[rows[0]:rows[-1] + 1] @ vector, slices))
            best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best


def prompt_ids(n_vocab: int, context: int) -> list[int]:
    """The synthetic prompt both decode benchmarks decode after (``context`` ids spread over the vocabulary)."""
    import numpy as np

    return [int(t) for t in (np.arange(context) * 7 + 3) % n_vocab]


def child(args: argparse.Namespace) -> None:
    """Decode in this process (perf's target): prompt, then ``rounds`` x ``tokens`` steps, recorded
    only while decoding when a control FIFO is given."""
    import numpy as np

    from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

    n_ctx = max(1024, args.context + args.tokens + 8)
    settings = LlamaSettings(n_ctx=n_ctx, threads=args.threads, flash_attn=args.flash_attn)
    with LlamaCppLLM(Path(args.child), settings) as llm:
        first = llm.eval_tokens(prompt_ids(llm.n_vocab, args.context))
        _perf_control(args.ctl, "enable")
        rates = []
        for _ in range(args.rounds):
            llm.reset(args.context, args.context)
            logits, start = first, time.perf_counter()
            for _ in range(args.tokens):
                logits = llm.eval_tokens([int(np.argmax(logits))])
            rates.append(args.tokens / (time.perf_counter() - start))
        _perf_control(args.ctl, "disable")
        n_kv = -(-(args.context + args.tokens) // KV_PAD) * KV_PAD
        weights = llm.bytes_read_per_token(0)
        print(json.dumps({"tok_s": statistics.median(rates), "weight_bytes": weights,
                          "kv_bytes": llm.bytes_read_per_token(n_kv) - weights, "precision": llm.precision}))


def _perf_control(ctl: str | None, command: str) -> None:
    if ctl:
        control, ack = ctl.split(",")
        with open(control, "w") as fifo:
            fifo.write(command + "\n")
        with open(ack) as fifo:
            fifo.readline()


def profile(gguf: Path, flash_attn: bool, args: argparse.Namespace) -> tuple[dict, dict[str, float] | None]:
    """(the child's figures, stage -> share of CPU time) for one GGUF; shares None without perf. Prints the
    ``args.symbols`` busiest symbols of the decode steps."""
    cmd = [sys.executable, __file__, "--child", str(gguf), "--context", str(args.context), "--tokens",
           str(args.tokens), "--rounds", str(args.rounds), "--threads", str(args.threads)]
    cmd += ["--flash-attn"] if flash_attn else []
    perf = shutil.which("perf")
    if not perf:
        return _figures(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout), None
    with tempfile.TemporaryDirectory() as tmp:
        control, ack, data = (Path(tmp) / n for n in ("ctl", "ack", "perf.data"))
        os.mkfifo(control)
        os.mkfifo(ack)
        record = [perf, "record", "-q", "-F", "1999", "-D", "-1", f"--control=fifo:{control},{ack}", "-o", str(data)]
        run = subprocess.run([*record, "--", *cmd, "--ctl", f"{control},{ack}"], capture_output=True, text=True)
        if run.returncode != 0:  # perf not permitted here: time without it
            print(f"perf record failed ({run.stderr.strip()[-200:]}); timing without the split")
            return _figures(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout), None
        report = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym"],
                                check=True, capture_output=True, text=True).stdout
    if args.symbols:
        samples = [line.split() for line in report.splitlines() if re.match(r"\s*[\d.]+%", line)]
        for share, dso, _, *symbol in samples[:args.symbols]:  # "12.3%  libx.so  [.]  symbol"
            print(f"    {share:>7} {dso} {' '.join(symbol)[:110]}")
    return _figures(run.stdout), stage_shares(report)


def _figures(stdout: str) -> dict:
    """The child's figures: its last line of output (JSON)."""
    return json.loads(stdout.strip().splitlines()[-1])


def stage_shares(report: str) -> dict[str, float]:
    """``perf report --sort dso,sym`` text -> stage -> fraction of the samples."""
    shares = {name: 0.0 for name, _ in STAGES} | {HOST: 0.0}
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*\S)", line)
        if not match:
            continue
        share, label = float(match[1]) / 100, f"{match[2]} {match[3]}"
        stage = next((name for name, pattern in STAGES if re.search(pattern, label)), HOST)
        if stage == STAGES[4][0] and converts_f16(match[2], match[3]):
            stage = STAGES[1][0]
        shares[stage] += share
    return shares


def converts_f16(dso: str, symbol: str) -> bool:
    """Whether an address perf could not name in the ggml CPU library sits among f16 -> f32 conversions
    (``vcvtph2ps``). The wheel's library keeps only exported symbols, and patch 0004's f16 rows kernel
    is inlined into a static function, so perf shows it as bare addresses (8-10% of the step on the
    AVX2-only VM, counted as "other ggml ops" until 2026-12-02). In a step over quantized weights
    the only f16 data is the K/V cache."""
    if not (dso.startswith("libggml-cpu") and re.fullmatch(r"0x[0-9a-f]+", symbol)):
        return False
    import llama_cpp

    library, address = Path(llama_cpp.__file__).parent / "lib" / dso, int(symbol, 16)
    objdump = shutil.which("objdump")
    if not objdump or not library.is_file():
        return False
    code = subprocess.run([objdump, "-d", f"--start-address={address - 48:#x}", f"--stop-address={address + 48:#x}",
                           str(library)], capture_output=True, text=True).stdout
    return "vcvtph2ps" in code


def genai_decode(bench_dir: Path, model: str) -> tuple[float, str] | None:
    """(OpenVINO GenAI's fastest cold decode tok/s, the file) from the newest ``peers.py`` result for
    ``model``: a figure of that run, not of this one."""
    for run in sorted(bench_dir.glob("peers-2*.json"), reverse=True):
        result = json.loads(run.read_text())
        if not Path(result["settings"]["model"]).name.startswith(model):
            continue
        rates = [r["cold"]["stages"]["decode_tokens_per_s"]["p50"] for name, r in result["results"].items()
                 if name.startswith("OpenVINO GenAI")
                 and "decode_tokens_per_s" in (r.get("cold") or {}).get("stages", {})]
        if rates:
            return max(rates), run.name
    return None


def stage_rows(figures: dict, shares: dict[str, float] | None, bandwidth: float) -> list[list[object]]:
    """One row per stage: share, ms of each token, its limit in ms and how far it is from it."""
    step_ms = 1000 / figures["tok_s"]
    limits = {STAGES[0][0]: figures["weight_bytes"], STAGES[1][0]: figures["kv_bytes"]}
    rows = []
    for stage, share in (shares or {"whole step": 1.0}).items():
        floor = 1000 * limits[stage] / bandwidth if stage in limits else None
        spent = share * step_ms
        rows.append([stage, f"{100 * share:.1f}%", spent, floor if floor is not None else "-",
                     f"{floor / spent:.0%}" if floor and spent else "-"])
    return rows


def default_ggufs(bench_dir: Path, model: str) -> list[tuple[str, Path, bool]]:
    """(label, GGUF, flash attention) for the bundles ``peers.py`` exported for ``model``."""
    found = []
    for suffix in ("default", "q8_0-int8s"):
        manifest = bench_dir / f"bundle-{model}-bench-{suffix}" / "edgebridge.json"
        if manifest.is_file():
            gguf = json.loads(manifest.read_text())["components"]["llm"]["artifacts"]["gguf"]
            runtime = gguf.get("details", {}).get("runtime") or {}
            found.append((f"{suffix} export ({gguf['precision']})", manifest.parent / gguf["files"][0],
                          bool(runtime.get("flash_attn"))))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava", choices=("llava", "qwen2.5-vl"))
    parser.add_argument("--context", type=int, default=220)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf", type=Path, action="append", default=[], help="profile this GGUF too")
    parser.add_argument("--flash-attn", action="store_true", help="flash attention for --gguf files")
    parser.add_argument("--symbols", type=int, default=0, help="print the N busiest symbols of the decode steps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ctl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from common import BENCH_DIR, machine, print_table

    targets = default_ggufs(BENCH_DIR, args.model) + [(p.name, p, args.flash_attn) for p in args.gguf]
    if not targets:
        sys.exit(f"no GGUF to profile: run benchmarks/peers.py --model {args.model} first, or pass --gguf")
    print(machine())
    genai = genai_decode(BENCH_DIR, args.model)
    for label, gguf, flash_attn in targets:
        before, probe = read_bandwidth(args.threads, BENCH_DIR)
        figures, shares = profile(gguf, flash_attn, args)
        bandwidth = (before + read_bandwidth(args.threads, BENCH_DIR)[0]) / 2  # the VM's bandwidth drifts
        print_table(f"{label}: flash attention {'on' if flash_attn else 'off'}, "
                    f"{figures['tok_s']:.0f} tok/s after {args.context} positions; read bandwidth "
                    f"{bandwidth / 1e9:.1f} GB/s ({probe}, mean of before and after)",
                    ["stage", "CPU time", "ms / token", "limit ms (bytes / read bw)", "limit / spent"],
                    stage_rows(figures, shares, bandwidth))
        floor_ms = 1000 * (figures["weight_bytes"] + figures["kv_bytes"]) / bandwidth
        print(f"  all bytes at the read bandwidth: {floor_ms:.2f} ms/token ({1000 / floor_ms:.0f} tok/s); "
              f"measured {1000 / figures['tok_s']:.2f} ms")
        if genai:
            print(f"  OpenVINO GenAI's fastest decode in {genai[1]}: {genai[0]:.0f} tok/s; 1.5x of it is "
                  f"{1000 / (1.5 * genai[0]):.2f} ms/token (peers.py measures both in one run; this VM drifts)")


if __name__ == "__main__":
    main()
