"""Peers benchmark: edgebridge vs OpenVINO GenAI's VLMPipeline, optimum-intel, transformers eager and bare llama.cpp.

    .venv/bin/python benchmarks/peers.py [--model llava|qwen2.5-vl] [--runs 4] [--rounds 3] [--warmup 1]
                                         [--tokens 32] [--threads 2]

On the benchmark LLaVA (CLIP ViT-B/16 @ 224 + 12x768 llama, seeded random weights; tokenizer and
processor from ``edgebridge.testing``), or with ``--model qwen2.5-vl`` the benchmark Qwen2.5-VL (a
12 x 768 windowed native-resolution tower, a 12 x 768 M-RoPE qwen2 LLM; the photo at 448 x 294 px,
168 image tokens), the same photo and prompt
for every system:

- time to first token: image file -> decoded, preprocessed, encoded, prompt prefilled -> the first
  new token (every system decodes and preprocesses the image inside the timed region);
- decode tokens/s (greedy, ``--tokens`` new tokens, no early stop) and peak RSS;
- edgebridge at f16 (fp32 encoder) and with a q8_0 / q4_0 LLM and an int8-static encoder, on
  onnxruntime and OpenVINO, each with the caches a user gets (embedding cache, KV-prefix reuse) *cold*
  (a different image every call, as for VLMPipeline below: the chat header is all a call shares with
  the one before) and *warm* (each run asks a different question about the same photo, as a chat
  follow-up does);
- OpenVINO GenAI's C++ ``VLMPipeline`` (the `bench` extra), fp16 and int8 weights, each exported by
  optimum-cli from the same folder: cold = a different image every call (a block changed at the centre,
  where preprocessing keeps it), warm = the same image and alternating questions; TTFT = wall time of a
  one-token generate with the image decoded inside it (its own ``perf_metrics`` recorded beside);
- optimum-intel ``OVModelForVisualCausalLM`` (fp16 weights, latency hint) and transformers eager;
- the pipeline vs a bare ``llama_cpp.Llama`` decoding each GGUF (runs alternating in one child, the
  same text prompt as long as the image prompt), for the decode-overhead ratio.

Every system runs in its own child process (so peak RSS is its own; the children of edgebridge
never import torch), in one invocation. edgebridge's and VLMPipeline's children are all loaded at
once and then driven sample by sample in turn (``--warmup`` + ``--runs`` x ``--rounds`` samples per
mode each): this machine's slow spells last tens of seconds, longer than a system's whole round, so
only call-by-call turns give every system the same mix of them. The other peers run ``--rounds``
round-robin passes of one child each (``--runs`` timed runs after a warm-up), samples pooled.
Medians. Prints
ratio tables and the quantized artifacts' measured drift (written at export into the manifest);
writes everything to ``BENCH_DIR/peers-<time>.json``. Asserts nothing.

Quantized exports use the default drift budget; where the random weights break it (near-tied
logits flip under low-bit rounding), the bundle is re-exported with the budget lifted and the
table marks it "over budget", with the measured drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (BENCH_DIR, ROOT, BareLlama, bench_bundle, bench_model, genai_export, machine, optimum_export,
                    print_table, sample_image)

QWEN_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
PROMPTS_BY_MODEL = {  # warm runs alternate: follow-up questions about the same photo
    "llava": ["USER: <image>\nDescribe the picture. ASSISTANT:", "USER: <image>\nWhat colours are in it? ASSISTANT:"],
    "qwen2.5-vl": [f"{QWEN_IMAGE}Describe the picture.<|im_end|>\n<|im_start|>assistant\n",
                   f"{QWEN_IMAGE}What colours are in it?<|im_end|>\n<|im_start|>assistant\n"],
}
LIFTED_BUDGET = {"encoder": {"cosine_min": 0.0}, "llm": {"top1_agreement": 0.0, "kl_mean": 1e9}}

# name -> (bundle key, encoder backend); bundles below.
EDGEBRIDGE = {
    # `edgebridge export` with no flags: the latency target's measured pick (precisions, prefill engine,
    # encoder engine: `auto`, the runtime's default, runs the one recorded); then each engine forced
    "edgebridge default export (auto engine)": ("default", "auto"),
    "edgebridge default export (onnxruntime)": ("default", "onnxruntime"),
    "edgebridge default export (openvino)": ("default", "openvino"),
    "edgebridge f16 + fp32 enc (onnxruntime)": ("f16", "onnxruntime"),
    "edgebridge f16 + fp32 enc (openvino)": ("f16", "openvino"),
    "edgebridge q8_0 + int8-static enc (onnxruntime)": ("q8_0", "onnxruntime"),
    "edgebridge q8_0 + int8-static enc (openvino)": ("q8_0", "openvino"),
    "edgebridge q4_0 + int8-static enc (onnxruntime)": ("q4_0", "onnxruntime"),
    "edgebridge q8_0 + int8 prefill graph + int8-static enc (onnxruntime)": ("q8_0-prefill", "onnxruntime"),
    "edgebridge q8_0 + int8 prefill graph + int8-static enc (openvino)": ("q8_0-prefill", "openvino"),
    "edgebridge q4_0 + int8 prefill graph + int8-static enc (onnxruntime)": ("q4_0-prefill", "onnxruntime"),
}
BUNDLES = {  # key -> export options
    "default": {"profile_target": "latency"},
    "f16": {"llm_dtype": "f16"},
    "q8_0": {"quantize": "encoder=int8-static,llm=q8_0"},
    "q4_0": {"quantize": "encoder=int8-static,llm=q4_0", "encoder_formats": ("onnx",)},
    # the same GGUFs plus the LLM's int8 prefill graph, whose KV cache is handed to llama.cpp
    "q8_0-prefill": {"quantize": "encoder=int8-static,llm=q8_0", "prefill": "int8"},
    "q4_0-prefill": {"quantize": "encoder=int8-static,llm=q4_0", "encoder_formats": ("onnx",), "prefill": "int8"},
}
PAIRED = ("f16", "q8_0", "q4_0")  # bundles whose GGUF also runs bare (the prefill bundles share theirs)
OPTIMUM, TRANSFORMERS = "optimum-intel OpenVINO (fp16)", "transformers eager (fp32)"
# OpenVINO GenAI's C++ VLMPipeline, the strongest CPU peer (the `bench` extra): name -> weight format
GENAI = {"OpenVINO GenAI VLMPipeline (fp16)": "fp16", "OpenVINO GenAI VLMPipeline (int8 weights)": "int8"}
TURN_PAUSE_S = 0.05  # between two systems' turns: the last one's worker threads stop spinning


# --- children: one system each ---------------------------------------------------------------

class EdgebridgeSystem:
    """One edgebridge configuration, one sample at a time (``sample``), so the driver can interleave it
    call by call with the other systems. The caches a user gets (embedding cache, KV-prefix reuse) are
    on in both modes, as VLMPipeline's are: cold gives them a new image every call (the chat header is
    all it shares with the call before), warm the same photo and alternating questions; each mode on a
    freshly loaded pipeline."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from edgebridge.profiling import Profiler
        from edgebridge.profiling.system import reset_peak_rss

        reset_peak_rss()
        self.spec, self.profiler = spec, Profiler(warmup=spec["warmup"])
        self.mode: str | None = None
        self.pipe = None

    def sample(self, mode: str, i: int) -> None:
        from edgebridge import Pipeline

        spec = self.spec
        if mode != self.mode:
            if self.pipe is not None:
                self.pipe.close()
            self.pipe = Pipeline.from_bundle(spec["bundle"], encoder_backend=spec["backend"], threads=spec["threads"],
                                             precision="f32", verify=False)
            self.mode = mode
        image, prompt = (spec["cold_images"][i], spec["prompts"][0]) if mode == "cold" else \
            (spec["image"], spec["prompts"][i % 2])
        result = self.pipe.generate(prompt, images=[image], max_new_tokens=spec["tokens"], stop_at_eos=False)
        self.profiler.record(result, mode)

    def result(self) -> dict[str, Any]:
        if self.pipe is not None:
            self.pipe.close()
        return {mode: self.profiler.configurations[mode].to_dict() for mode in ("cold", "warm")
                if mode in self.profiler.configurations}


def child_peer(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from edgebridge.exporters.baselines import load_optimum, media_loader, timed_runs
    from edgebridge.exporters.families import family_for
    from edgebridge.profiling import Configuration
    from edgebridge.profiling.system import reset_peak_rss

    reset_peak_rss()
    torch.set_num_threads(spec["threads"])
    model_dir = Path(spec["model"])
    family = family_for(model_dir)
    conf = Configuration(name=spec["system"], kind="baseline")
    prompt = spec["prompts"][0]
    if spec["system"] == OPTIMUM:
        from transformers import AutoProcessor

        # the processor only: no torch model in this process (Qwen-VL: the image-only processor, as its
        # AutoProcessor needs a video processor, which needs torchvision)
        loader = getattr(family, "load_processor", lambda folder: AutoProcessor.from_pretrained(folder))
        processor = loader(model_dir)
        model, _ = load_optimum(spec["optimum_dir"], spec["threads"])

        def make_inputs() -> dict[str, Any]:
            return dict(processor(images=media()["image"], text=prompt, return_tensors="pt"))

        def encode(inputs: dict[str, Any]) -> None:
            if "image_grid_thw" in inputs:
                model.get_vision_embeddings(inputs["pixel_values"], inputs["image_grid_thw"])
            else:
                model.get_vision_embeddings(inputs["pixel_values"])
    else:
        loaded = family.load(model_dir)
        model = loaded.model
        enc = family.encoders(loaded)[0]

        def make_inputs() -> dict[str, Any]:
            return family.reference_inputs(loaded, prompt, media())

        def encode(inputs: dict[str, Any]) -> None:
            if "image_grid_thw" in inputs:  # native resolution: the tower takes the patches and their grid
                model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            else:
                enc.reference({name: inputs[name] for name in enc.input_names})
    media = media_loader({"image": [spec["image"]]})
    timed_runs(conf, model.generate, make_inputs, encode, spec["tokens"], spec["runs"], spec["warmup"],
               lambda _: None)
    return {"cold": conf.to_dict()}


def child_pair(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode through the pipeline vs a bare ``llama_cpp.Llama`` on the same GGUF, runs alternating
    (so machine noise hits both alike), after the same text prompt of the multimodal prompt's length."""
    from edgebridge import Pipeline

    prompt = "Describe the picture in detail. " * max(1, spec["prompt_positions"] // 7)
    ours, theirs = [], []
    bare = BareLlama(Path(spec["gguf"]), spec["threads"])
    with Pipeline.from_bundle(spec["bundle"], threads=spec["threads"], verify=False, cache_embeddings=False,
                              reuse_prefix=False) as pipe:
        for i in range(spec["warmup"] + spec["runs"]):
            result = pipe.generate(prompt, max_new_tokens=spec["tokens"], stop_at_eos=False)
            bare_rate = bare.decode_tokens_per_s(prompt, spec["tokens"])
            if i >= spec["warmup"]:
                ours.append(result.timings["decode_tokens_per_s"])
                theirs.append(bare_rate)
    bare.close()
    return {"pipeline_tokens_per_s": statistics.median(ours), "decode_tokens_per_s": statistics.median(theirs),
            "pipeline_samples": ours, "samples": theirs, "prompt_tokens": result.prompt_tokens}


def varied_images(photo: Path, n: int, work: Path) -> list[Path]:
    """``n`` copies of the photo, each with a different block at the centre, where every processor keeps it
    (a changed corner is cropped away by CLIP-style preprocessing and VLMPipeline's image cache answers)."""
    import numpy as np
    from PIL import Image

    base = np.asarray(Image.open(photo).convert("RGB"))
    h, w = base.shape[:2]
    paths = []
    for i in range(n):
        img = base.copy()
        img[h // 2 - 16:h // 2 + 16, w // 2 - 16:w // 2 + 16] = (37 * i) % 256
        paths.append(work / f"varied-{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


class GenaiSystem:
    """VLMPipeline, 2 threads, one sample at a time: cold = a different image every call, warm = the same
    image and alternating questions (its own image cache and prefix cache on); TTFT = wall time of a
    one-token generate with the image decoded inside it; decode rate from its own TPOT over ``tokens``
    tokens (cold samples)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import openvino_genai as og

        from edgebridge.profiling import Configuration
        from edgebridge.profiling.system import reset_peak_rss

        reset_peak_rss()
        self.spec = spec
        self.pipe = og.VLMPipeline(spec["genai_dir"], "CPU", PERFORMANCE_HINT="LATENCY",
                                   INFERENCE_NUM_THREADS=spec["threads"])
        self.one, self.many = og.GenerationConfig(), og.GenerationConfig()
        self.one.max_new_tokens = 1
        self.many.max_new_tokens = self.many.min_new_tokens = spec["tokens"]
        self.one.apply_chat_template = self.many.apply_chat_template = False  # the same prompt text as the others
        self.confs = {mode: Configuration(name=spec["system"], kind="baseline", settings={
            "engine": "openvino_genai.VLMPipeline", "weights": spec["weights"]}) for mode in ("cold", "warm")}
        self.prompt_tokens: dict[str, int] = {}

    def sample(self, mode: str, i: int) -> None:
        import numpy as np
        import openvino as ov
        from PIL import Image

        spec, conf = self.spec, self.confs[mode]
        path, prompt = (spec["cold_images"][i], spec["prompts"][0]) if mode == "cold" else \
            (spec["image"], spec["prompts"][i % 2])
        start = time.perf_counter()
        image = ov.Tensor(np.asarray(Image.open(path).convert("RGB"))[None])
        result = self.pipe.generate(prompt, images=[image], generation_config=self.one)
        ttft = (time.perf_counter() - start) * 1000
        self.prompt_tokens[mode] = int(result.perf_metrics.get_num_input_tokens())
        if i < spec["warmup"]:
            conf.warmup_dropped += 1
            return
        conf.runs += 1
        conf.add("ttft_ms", ttft)
        conf.add("genai_ttft_ms", result.perf_metrics.get_ttft().mean)
        conf.add("encode_bridge_ms", result.perf_metrics.get_prepare_embeddings_duration().mean)
        if mode == "cold":
            decode = self.pipe.generate(prompt, images=[image], generation_config=self.many).perf_metrics
            conf.add("decode_tokens_per_s", 1000.0 / decode.get_tpot().mean)

    def result(self) -> dict[str, Any]:
        return {mode: {**conf.to_dict(), "prompt_tokens": self.prompt_tokens.get(mode)}
                for mode, conf in self.confs.items() if conf.runs}


SYSTEMS = {"edgebridge": EdgebridgeSystem, "genai": GenaiSystem}  # the ones the lockstep driver interleaves


CHILDREN = {"peer": child_peer, "pair": child_pair}  # one-shot children, the round-robin driver's


def merge(into: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Pool one more round's samples of a system into its result (statistics recomputed)."""
    from edgebridge.profiling import stat

    if into is None or "error" in into or "error" in new:
        return new if into is None or "error" in new else into
    for mode in ("cold", "warm"):
        if mode in new:
            stages = into[mode]["stages"]
            for stage, st in new[mode]["stages"].items():
                stages[stage] = stat((stages.get(stage) or {}).get("samples", []) + st["samples"])
            into[mode]["runs"] += new[mode]["runs"]
    for key in ("samples", "pipeline_samples"):
        if key in new:
            into[key] = into[key] + new[key]
    if "samples" in new:
        into["decode_tokens_per_s"] = statistics.median(into["samples"])
        into["pipeline_tokens_per_s"] = statistics.median(into["pipeline_samples"])
    into["peak_rss_bytes"] = max(into.get("peak_rss_bytes") or 0, new.get("peak_rss_bytes") or 0)
    return into


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one system in a fresh interpreter; its result (and its own peak RSS) as a dict."""
    out = BENCH_DIR / "peers-child.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__)), "--child", json.dumps(spec), "--child-out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        print(f"  {spec.get('system')}: FAILED (exit {proc.returncode})\n    " + "\n    ".join(tail), flush=True)
        return {"error": "\n".join(tail), "returncode": proc.returncode}
    print(f"  {spec.get('system')}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


def child_main(spec_text: str, out: Path) -> None:
    spec = json.loads(spec_text)
    out.write_text(json.dumps(finished(CHILDREN[spec["kind"]](spec))))


def finished(result: dict[str, Any]) -> dict[str, Any]:
    """A child's result with what only the child can say: its own peak RSS, whether torch was loaded."""
    from edgebridge.profiling.system import peak_rss_bytes

    return {**result, "peak_rss_bytes": peak_rss_bytes(), "torch_imported": "torch" in sys.modules}


def lockstep_child(spec_text: str, out: Path) -> None:
    """A system that takes one sample per command from the driver (a JSON line on stdin) and answers
    each on its own copy of stdout ("ready", "ok", "done" or a JSON error); what the libraries print
    goes to stderr."""
    import traceback

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        spec = json.loads(spec_text)
        system = SYSTEMS[spec["kind"]](spec)
        answers.write("ready\n")
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("finish"):
                break
            system.sample(command["mode"], command["i"])
            answers.write("ok\n")
        out.write_text(json.dumps(finished(system.result())))
        answers.write("done\n")
    except Exception:  # noqa: BLE001 - the driver reports it as this system's failure
        answers.write(json.dumps({"error": "\n".join(traceback.format_exc().strip().splitlines()[-12:])}) + "\n")
        raise SystemExit(1) from None


class LockstepChild:
    """The driver's end of one ``lockstep_child`` process."""

    def __init__(self, spec: dict[str, Any], index: int) -> None:
        self.out = BENCH_DIR / f"peers-lockstep-{index}.json"
        self.out.unlink(missing_ok=True)
        log = open(BENCH_DIR / f"peers-lockstep-{index}.log", "w")  # noqa: SIM115 - the child's lifetime
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), "--child", json.dumps(spec), "--child-out",
                                      str(self.out), "--lockstep-child"], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()

    def answer(self, command: dict[str, Any] | None = None) -> str:
        if command is not None:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() or f'{{"error": "exited with {self.proc.wait()}"}}'

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_lockstep(specs: dict[str, dict[str, Any]], samples: int) -> dict[str, dict[str, Any]]:
    """Every system loaded in its own process at once, then driven one sample at a time in turn:
    ``samples`` per mode (cold, then warm), system after system. The machine's slow spells here last
    tens of seconds (one llama.cpp decode loop alone drifts between ~330 and ~415 tok/s), longer than
    a system's whole round, so call-by-call turns are what give every system the same mix of them."""
    children: dict[str, LockstepChild] = {}
    failed: dict[str, dict[str, Any]] = {}

    def fail(system: str, line: str) -> None:
        error = json.loads(line).get("error", line) if line.startswith("{") else line
        print(f"  {system}: FAILED\n    " + "\n    ".join(error.splitlines()[-6:]), flush=True)
        failed[system] = {"error": error}
        children.pop(system).close()

    for index, (system, spec) in enumerate(specs.items()):
        children[system] = LockstepChild(spec, index)
        line = children[system].answer()  # loaded one at a time, not side by side
        if line != "ready":
            fail(system, line)
    for mode in ("cold", "warm"):
        print(f"  {mode}: {samples} samples per system, in turn", flush=True)
        for i in range(samples):
            for system in list(children):
                time.sleep(TURN_PAUSE_S)
                line = children[system].answer({"mode": mode, "i": i})
                if line != "ok":
                    fail(system, line)
    results = dict(failed)
    for system, child in children.items():
        line = child.answer({"finish": True})
        results[system] = json.loads(child.out.read_text()) if line == "done" else {"error": line}
        child.close()
    return results


# --- the driver --------------------------------------------------------------------------------

def export_bundles(model: Path, kind: str) -> dict[str, dict[str, Any]]:
    """The edgebridge bundles (reused when present), each with whether it kept the default budget."""
    from edgebridge.errors import ParityError
    from edgebridge.manifest import read_manifest

    bundles = {}
    for key, options in BUNDLES.items():
        name = f"bundle-{kind}-bench-{key}" + ("-int8s" if "quantize" in options else "")
        within = True
        try:
            over = BENCH_DIR / f"{name}-over-budget"
            path = over if (over / "edgebridge.json").is_file() else bench_bundle(model, name, **options)
        except ParityError as exc:
            print(f"  {key}: over the default drift budget ({exc.message}); re-exporting with the budget lifted")
            within, path = False, bench_bundle(model, name + "-over-budget", max_drift=LIFTED_BUDGET, **options)
        if path.name.endswith("-over-budget"):
            within = False
        bundles[key] = {"path": path, "within_budget": within, "drift": drift_summary(read_manifest(path))}
    return bundles


def drift_summary(manifest) -> str:
    parts = []
    for name, comp in manifest.components.items():
        for fmt, art in comp.artifacts.items():
            m = art.parity.metrics if art.parity else {}
            if art.precision in ("fp32", "f32", "f16"):
                continue
            if "cosine_min" in m:
                parts.append(f"{fmt} {art.precision} cos_min {m['cosine_min']:.4f}")
            if "top1_agreement" in m:
                parts.append(f"{fmt} {art.precision} top1 {m['top1_agreement']:.2f} KL {m['kl_mean']:.3g}")
    return "; ".join(parts) or "none (full precision)"


def p50(conf: dict[str, Any] | None, stage: str) -> float | None:
    return ((conf or {}).get("stages", {}).get(stage) or {}).get("p50")


def ratio(a: float | None, b: float | None) -> float | str:
    return a / b if a and b else "-"


def report(results: dict[str, dict[str, Any]], bundles: dict[str, dict[str, Any]]) -> None:
    optimum, hf = results.get(OPTIMUM, {}), results.get(TRANSFORMERS, {})  # absent when left out by --only
    opt_ttft = p50(optimum.get("cold"), "ttft_ms")
    hf_ttft = p50(hf.get("cold"), "ttft_ms")
    hf_encode = p50(hf.get("cold"), "encode_bridge_ms")
    opt_decode = p50(optimum.get("cold"), "decode_tokens_per_s")
    ttft_rows, decode_rows = [], []
    for name, res in results.items():
        if name.startswith("bare "):
            continue  # decode-only rows, below
        if "error" in res:
            ttft_rows.append([name, "failed", "-", "-", "-", "-", "-", "-"])
            continue
        cold, warm = res.get("cold"), res.get("warm")
        ttft = p50(cold, "ttft_ms")
        ttft_rows.append([name, ttft, p50(warm, "ttft_ms") if warm else "-", ratio(ttft, opt_ttft),
                          ratio(ttft, hf_ttft), p50(cold, "encode_bridge_ms") or "-",
                          ratio(hf_encode, p50(cold, "encode_bridge_ms")), p50(cold, "prefill_ms") or "-"])
        decode = p50(cold, "decode_tokens_per_s")
        note = "-"
        if name in EDGEBRIDGE:
            key = EDGEBRIDGE[name][0]
            note = ("" if bundles[key]["within_budget"] else "OVER BUDGET: ") + bundles[key]["drift"]
        rss = (res.get("peak_rss_bytes") or 0) / 2**20
        decode_rows.append([name, decode, ratio(decode, opt_decode), rss, "yes" if res.get("torch_imported") else "no",
                            note])
    pair_rows = []
    for key in PAIRED:
        res = results.get(f"bare llama-cpp-python ({key})")
        if res is None:
            continue
        if "error" in res:
            pair_rows.append([key, "failed", "-", "-", "-"])
            continue
        pair_rows.append([key, res["decode_tokens_per_s"], res["pipeline_tokens_per_s"],
                          ratio(res["pipeline_tokens_per_s"], res["decode_tokens_per_s"]), res["prompt_tokens"]])
    print_table("time to first token, image + prompt (p50 ms; caches on; cold = a new image every call, "
                "warm = follow-up on the same photo)",
                ["system", "TTFT cold", "TTFT warm", "cold / optimum", "cold / transformers", "encode+bridge ms",
                 "encoder vs eager", "prefill ms"], ttft_rows)
    print_table("decode after the image prompt, and memory (p50)",
                ["system", "decode tok/s", "vs optimum", "peak RSS MB", "torch in process",
                 "quantization drift (measured at export)"], decode_rows)
    print_table("decode: edgebridge pipeline vs bare llama-cpp-python on the same GGUF (runs alternating, same "
                "text prompt)", ["GGUF", "bare tok/s", "pipeline tok/s", "pipeline / bare", "prompt tokens"],
                pair_rows)
    print("targets: TTFT cold <= 0.7x optimum and <= 0.15x transformers; decode >= 1.5x optimum (q8_0) and "
          ">= 0.97x bare; encoder + bridge >= 10x eager at cosine >= 0.999.")
    report_genai(results)


def report_genai(results: dict[str, dict[str, Any]]) -> None:
    """Every system against OpenVINO GenAI's fastest form per measure (fp16 or int8 weights)."""
    genai = [results[name] for name in GENAI if name in results and "error" not in results[name]]
    if not genai:
        print("OpenVINO GenAI: not measured (install the `bench` extra: pip install -e '.[bench]').")
        return

    def best(mode: str, stage: str, pick) -> float | None:
        values = [v for v in (p50(r.get(mode), stage) for r in genai) if v]
        return pick(values) if values else None

    cold, warm = best("cold", "ttft_ms", min), best("warm", "ttft_ms", min)
    decode = best("cold", "decode_tokens_per_s", max)
    rss = min((r.get("peak_rss_bytes") or 0) for r in genai) / 2**20
    rows = []
    for name, res in results.items():
        if name.startswith("bare ") or "error" in res:
            continue
        mine_rss = (res.get("peak_rss_bytes") or 0) / 2**20
        rows.append([name, ratio(p50(res.get("cold"), "ttft_ms"), cold),
                     ratio(p50(res.get("warm"), "ttft_ms"), warm) if res.get("warm") else "-",
                     ratio(p50(res.get("cold"), "decode_tokens_per_s"), decode), ratio(mine_rss, rss)])
    print_table(f"vs OpenVINO GenAI's fastest form (cold TTFT {cold:.0f} ms, warm {warm:.0f} ms, decode "
                f"{decode:.0f} tok/s, peak RSS {rss:.0f} MB)",
                ["system", "TTFT cold / GenAI", "TTFT warm / GenAI", "decode / GenAI", "peak RSS / GenAI"], rows)
    print("issue 18 targets for the default export: cold <= 0.7, warm <= 0.5, decode >= 1.5, RSS <= 1.0")


def genai_specs(model: Path, common: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The VLMPipeline rows, when the `bench` extra is installed (its exports made once)."""
    try:
        import openvino_genai  # noqa: F401
    except ImportError:
        print("  OpenVINO GenAI: not installed (pip install -e '.[bench]'); its rows are skipped")
        return {}
    return {name: {**common, "kind": "genai", "system": name, "weights": weights,
                   "genai_dir": str(genai_export(model, weights))} for name, weights in GENAI.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="timed runs per system and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds: edgebridge and VLMPipeline take runs x rounds samples per mode in turn; "
                             "the other systems run one child per round, round-robin")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(PROMPTS_BY_MODEL), default="llava")
    parser.add_argument("--only", help="comma-separated parts of system names: run only the systems that contain one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lockstep-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (lockstep_child if args.lockstep_child else child_main)(args.child, args.child_out)
        return
    print(f"machine: {machine()}")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    model = bench_model("llava", vision="clip", text="llama") if args.model == "llava" else bench_model(args.model)
    print("exports (reused when present):", flush=True)
    bundles = export_bundles(model, args.model)
    optimum_dir = optimum_export(model)
    samples = args.warmup + args.runs * args.rounds
    common = {"runs": args.runs, "warmup": args.warmup, "tokens": args.tokens, "threads": args.threads,
              "image": str(sample_image()), "model": str(model), "prompts": PROMPTS_BY_MODEL[args.model],
              "cold_images": [str(p) for p in varied_images(sample_image(), samples, BENCH_DIR)]}
    specs = {system: {**common, "kind": "peer", "system": system, "optimum_dir": str(optimum_dir)}
             for system in (TRANSFORMERS, OPTIMUM)}
    specs.update(genai_specs(model, common))
    specs.update({system: {**common, "kind": "edgebridge", "system": system, "bundle": str(bundles[key]["path"]),
                           "backend": backend} for system, (key, backend) in EDGEBRIDGE.items() if key in bundles})
    wanted = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    if wanted:
        specs = {system: spec for system, spec in specs.items() if any(w in system for w in wanted)}
    interleaved = {system: spec for system, spec in specs.items() if spec["kind"] in SYSTEMS}
    print("edgebridge and VLMPipeline, one process each, sample by sample in turn:", flush=True)
    results: dict[str, dict[str, Any]] = run_lockstep(interleaved, samples) if interleaved else {}
    # The peers without a sample-at-a-time child: round-robin, every system once per round.
    others = {system: spec for system, spec in specs.items() if system not in interleaved}
    pairs = {f"bare llama-cpp-python ({key})": key for key in PAIRED}
    pairs = {system: key for system, key in pairs.items() if not wanted or any(w in system for w in wanted)}
    for r in range(args.rounds if others or pairs else 0):
        print(f"round {r + 1}/{args.rounds} (one child process per system):", flush=True)
        for system, spec in others.items():
            results[system] = merge(results.get(system), run_child(spec))
        positions = next((res["cold"]["prompt_tokens"] for res in results.values()
                          if (res.get("cold") or {}).get("prompt_tokens")), 200)
        for system, key in pairs.items():
            path = bundles[key]["path"]
            results[system] = merge(results.get(system), run_child(
                {**common, "kind": "pair", "system": system, "bundle": str(path), "gguf": str(path / "llm.gguf"),
                 "prompt_positions": positions}))
    report(results, bundles)
    out = BENCH_DIR / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "settings": {**common, "rounds": args.rounds}, "results": results,
                               "bundles": {k: {**v, "path": str(v["path"])} for k, v in bundles.items()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
