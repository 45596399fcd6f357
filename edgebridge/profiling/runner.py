"""``profile_bundle``: run a bundle over a matrix of configurations (and baselines), in one process.

Per configuration (encoder backend x device): load time, ``warmup`` untimed generations, then
``runs`` timed ones with every stage recorded; the encoder/bridge split from one per-node engine
profile; peak RSS since the configuration started; decode's achieved memory traffic against the
machine's streaming bandwidth measured in the same run. Baselines (``torch``,
``optimum-openvino``) run the source HF folder on the same inputs, in the same process.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable, Sequence

from edgebridge.errors import EdgebridgeError, InputError
from edgebridge.profiling import Profiler
from edgebridge.profiling.system import environment, memory_bandwidth, peak_rss_bytes, reset_peak_rss
from edgebridge.prompt import place_media
from edgebridge.timing import now_ms

KV_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # bytes per cached value by KV cache type


def bridge_share(pipe: Any, prepared: dict[str, Any]) -> dict[str, Any] | None:
    """Fraction of encoder + bridge graph time spent in the bridge, from the engine's per-node profile.

    The bridge is the tail of the graph: from its first node (names recorded at export) to the end.
    """
    shares = {}
    for modality, enc in pipe.encoders.items():
        nodes = set((enc.component.bridge or {}).get("graph_nodes") or [])
        if modality not in prepared or not nodes or not hasattr(enc.session, "node_times"):
            continue
        times = enc.session.node_times(prepared[modality].inputs)
        total = sum(us for _, us in times)
        first = next((i for i, (name, _) in enumerate(times) if name in nodes), None)
        if first is None or total <= 0:
            continue
        bridge = sum(us for _, us in times[first:])
        shares[modality] = {"share": bridge / total, "bridge_us": bridge, "graph_us": total, "nodes": len(times)}
    if not shares:
        return None
    total_bridge = sum(s["bridge_us"] for s in shares.values())
    total_graph = sum(s["graph_us"] for s in shares.values())
    return {"share": total_bridge / total_graph, "per_modality": shares,
            "method": "per-node engine profile (onnxruntime profiler / OpenVINO perf counters), one run"}


def decode_traffic(pipe: Any, conf: dict[str, Any], bandwidth: float | None) -> dict[str, Any] | None:
    """Bytes a decode step reads (weights + KV cache) x tokens/s, against the measured bandwidth."""
    stages = conf["stages"]
    tps = (stages.get("decode_tokens_per_s") or {}).get("p50")
    if not tps:
        return None
    info = pipe.llm.info
    n_past = (conf.get("prompt_tokens") or 0) + (conf.get("new_tokens") or 0) / 2
    per_token = info.bytes_read_per_token(int(n_past), KV_BYTES.get(pipe.llm.settings.kv_type, 2.0))
    achieved = per_token * tps
    return {"bytes_per_token": per_token, "achieved_bytes_per_s": achieved,
            "fraction_of_bandwidth": achieved / bandwidth if bandwidth else None,
            "method": "GGUF tensor bytes (minus unread embedding rows) + K/V cache at the mean decode position"}


def _media(images: Sequence[Any], audio: Sequence[Any]) -> dict[str, list[Any]]:
    return {k: list(v) for k, v in (("image", images), ("audio", audio)) if v}


def profile_bundle(
    bundle: str | Path,
    *,
    prompt: str = "",
    images: Sequence[Any] = (),
    audio: Sequence[Any] = (),
    max_new_tokens: int = 32,
    runs: int = 5,
    warmup: int = 1,
    backends: Sequence[str] = ("onnxruntime",),
    devices: Sequence[str] = ("CPU",),
    threads: int | None = None,
    precision: str | None = "f32",
    baselines: Sequence[str] = (),
    model_dir: str | Path | None = None,
    warm_cache: bool = False,
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Profile ``bundle`` for every backend x device, plus the named baselines; returns the report.

    Runs are cold by default: the embedding cache and KV-prefix reuse are off, so every run encodes
    and prefills everything. ``warm_cache`` turns them on (repeated requests, multi-turn chat).
    """
    from edgebridge import Pipeline
    from edgebridge.bundle import Bundle

    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup}).")
    if baselines and model_dir is None:
        raise InputError("baselines run the source model: pass --model-dir with the Hugging Face folder.")
    opened = Bundle.open(bundle)  # verify once, up front
    manifest = opened.manifest
    from edgebridge.preprocess.image import load_image

    for item in images:  # a bad input fails the profile at once, not every configuration
        load_image(item)
    step("measuring memory bandwidth")
    bandwidth = memory_bandwidth(threads=threads)
    profiler = Profiler(warmup=warmup)
    media = _media(images, audio)
    # The baselines read the prompt through the HF processor, which needs the placeholders the pipeline
    # adds itself when the prompt has none (the items first, each on its own line).
    baseline_prompt = place_media(prompt, manifest.inputs, {m: len(items) for m, items in media.items()})
    for backend in backends:
        for device in devices:
            name = f"{backend}/{device}"
            conf = profiler.configuration(name, backend=backend, device=device, threads=threads, precision=precision)
            step(f"{name}: loading")
            conf.peak_rss_method = "VmHWM since reset" if reset_peak_rss() else "process peak (not resettable)"
            try:
                start = now_ms()
                pipe = Pipeline.from_bundle(bundle, encoder_backend=backend, device=device, threads=threads,
                                            precision=precision, verify=False, cache_embeddings=warm_cache,
                                            reuse_prefix=warm_cache)
                conf.add("load_ms", now_ms() - start)
                prepared = {m: pipe.prepare(m, items) for m, items in media.items()}
                conf.bridge_share = bridge_share(pipe, prepared)
                for i in range(warmup + runs):
                    step(f"{name}: run {i + 1}/{warmup + runs}" + (" (warm-up)" if i < warmup else ""))
                    result = pipe.generate(prompt, images=images, audio=audio, max_new_tokens=max_new_tokens,
                                           stop_at_eos=False)
                    profiler.record(result, name)
                conf.peak_rss_bytes = peak_rss_bytes()
                conf.extra["decode_traffic"] = decode_traffic(pipe, conf.to_dict(), bandwidth["bytes_per_s"])
                conf.extra["warnings"] = result.warnings
                pipe.close()
            except EdgebridgeError as exc:
                conf.status, conf.error = "error", f"{exc.message} {exc.hint or ''}".strip()
            gc.collect()
    for baseline in baselines:
        step(f"baseline {baseline}")
        _run_baseline(profiler, baseline, Path(model_dir), baseline_prompt, media, max_new_tokens, runs, warmup,
                      threads, step)
    sizes = {rel: entry.bytes for rel, entry in manifest.files.items()}
    bundle_info = {
        "path": str(bundle),
        "family": manifest.family,
        "files_bytes": sizes,
        "total_bytes": sum(sizes.values()),
        "components": {name: {fmt: {"precision": art.precision,
                                    "bytes": sum(sizes.get(f, 0) for f in art.files)}
                              for fmt, art in comp.artifacts.items()} for name, comp in manifest.components.items()},
    }
    workload = {"prompt": prompt, "baseline_prompt": baseline_prompt if baselines else None,
                "images": [str(i) if isinstance(i, (str, Path)) else type(i).__name__ for i in images],
                "audio": [str(a) if isinstance(a, (str, Path)) else type(a).__name__ for a in audio],
                "max_new_tokens": max_new_tokens, "runs": runs, "warmup": warmup, "stop_at_eos": False,
                "warm_cache": warm_cache}
    return profiler.report(bundle=bundle_info, workload=workload, environment=environment(threads),
                           memory_bandwidth=bandwidth)


def _run_baseline(profiler: Profiler, name: str, model_dir: Path, prompt: str, media: dict[str, list[Any]],
                  max_new_tokens: int, runs: int, warmup: int, threads: int | None, step) -> None:
    conf = profiler.configuration(name, baseline=name, model_dir=str(model_dir), threads=threads)
    conf.kind = "baseline"
    try:
        from edgebridge.exporters.baselines import run_baseline
    except ImportError as exc:
        conf.status = "unavailable"
        conf.error = (f"baselines need the host-side packages ({exc.name or exc}); install them with "
                      "`pip install 'edgebridge[export]'`.")
        return
    conf.peak_rss_method = "VmHWM since reset" if reset_peak_rss() else "process peak (not resettable)"
    try:
        run_baseline(name, conf, model_dir, prompt, media, max_new_tokens, runs, warmup, threads, step)
        conf.peak_rss_bytes = peak_rss_bytes()
    except EdgebridgeError as exc:
        conf.status, conf.error = "error", f"{exc.message} {exc.hint or ''}".strip()
    except ImportError as exc:
        conf.status = "unavailable"
        conf.error = f"baseline '{name}' needs {exc.name or exc}; install edgebridge[export]."
    except Exception as exc:  # noqa: BLE001 - a peer's own failure is reported, not allowed to end the profile
        first = (str(exc).splitlines() or [""])[0][:300]
        conf.status, conf.error = "error", f"baseline '{name}' failed: {type(exc).__name__}: {first}"
    gc.collect()
