"""Load test of ``edgebridge serve`` on loopback: many clients, a bounded queue, stops by itself.

    .venv/bin/python benchmarks/serve_load.py [--bundle B] [--requests 200] [--clients 8] [--parallel 2]
                                              [--max-queue 4] [--max-tokens 16]

Starts the server (``--parallel`` pipelines, ``--max-queue`` waiting requests), warms it with one
request, then ``--clients`` threads send ``--requests`` streamed photo questions in all. A request
refused with 429 (queue full: expected under this load) is counted and retried after its
``Retry-After``; any other error is counted as such. Prints p50/p95 time to first token and total
latency of the answered requests, the 429s, the other errors, and the server's RSS after warm-up
and at the end. Without ``--bundle`` it exports the benchmark LLaVA (CLIP ViT-B/16 @ 224 + 12x768
llama, random weights) with a q8_0 LLM once into ``bench-out/``. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import bench_bundle, bench_model, machine, print_table, sample_image

from edgebridge.testing.serve import data_uri, image_message, serving


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def streamed(url: str, body: dict) -> tuple[int, float, float, float]:
    """(status, TTFT s, latency s, Retry-After s) of one streamed request."""
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    ttft = float("nan")
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            for line in resp:
                if line.startswith(b"data: {") and b'"content": "' in line and ttft != ttft:
                    ttft = time.perf_counter() - start
            return resp.status, ttft, time.perf_counter() - start, 0.0
    except urllib.error.HTTPError as exc:
        return exc.code, ttft, time.perf_counter() - start, float(exc.headers.get("Retry-After") or 0)


def load(url: str, body: dict, n_requests: int, n_clients: int) -> dict:
    results: list[tuple[int, float, float]] = []
    refused = [0]
    left = [n_requests]
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            while True:
                status, ttft, latency, retry = streamed(url, body)
                if status != 429:
                    break
                with lock:
                    refused[0] += 1
                time.sleep(retry)
            with lock:
                results.append((status, ttft, latency))

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results, "refused": refused[0], "wall_s": time.perf_counter() - start}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    bundle = args.bundle or bench_bundle(bench_model("llava"), "bundle-llava-bench-q8_0",
                                           quantize="llm=q8_0", encoder_formats=("onnx",))
    from PIL import Image
    import numpy as np

    photo = np.asarray(Image.open(sample_image()).convert("RGB"))
    body = {"model": bundle.name, "messages": image_message("\nWhat is in this image?", data_uri(photo)),
            "max_tokens": args.max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    with serving(bundle, "--parallel", str(args.parallel), "--max-queue", str(args.max_queue)) as srv:
        streamed(srv.url, body)  # warm-up: first-call allocations are not growth
        rss_before = rss_mib(srv.proc.pid)
        run = load(srv.url, body, args.requests, args.clients)
        rss_after = rss_mib(srv.proc.pid)
    ok = [r for r in run["results"] if r[0] == 200]
    other = [r[0] for r in run["results"] if r[0] != 200]
    ttft, latency = [r[1] for r in ok], [r[2] for r in ok]
    print(machine())
    print_table(f"edgebridge serve: {args.requests} requests, {args.clients} clients, --parallel {args.parallel}, "
                f"--max-queue {args.max_queue}, {args.max_tokens} tokens each ({bundle.name})",
                ["answered", "429 (retried)", "other errors", "TTFT p50/p95 ms", "latency p50/p95 ms",
                 "req/s", "RSS MiB before/after", "RSS growth"],
                [[len(ok), run["refused"], len(other), f"{pct(ttft, 50) * 1e3:.0f} / {pct(ttft, 95) * 1e3:.0f}",
                  f"{pct(latency, 50) * 1e3:.0f} / {pct(latency, 95) * 1e3:.0f}", f"{len(ok) / run['wall_s']:.2f}",
                  f"{rss_before:.0f} / {rss_after:.0f}", f"{(rss_after / rss_before - 1) * 100:+.1f}%"]])
    if other:
        print(f"other statuses: {sorted(set(other))}")


if __name__ == "__main__":
    main()
