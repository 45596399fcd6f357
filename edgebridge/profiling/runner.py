"""``profile_bundle``: run a bundle over a matrix of configurations (and baselines), in one process.

Per configuration (encoder backend x device): load time, ``warmup`` untimed generations, then
``runs`` timed ones with every stage recorded; the encoder/bridge split from one per-node engine
profile; peak RSS since the configuration started; decode's achieved memory traffic against the
machine's streaming bandwidth measured in the same run. Baselines (``torch``,
``optimum-openvino``) run the source HF folder on the same inputs, in the same process.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgebridge.device_spec import DevicePlacement, parse_placement
from edgebridge.errors import EdgebridgeError, InputError
from edgebridge.manifest import Manifest
from edgebridge.plan import place_media
from edgebridge.preprocess import MediaOptions
from edgebridge.profiling import Configuration, Profiler
from edgebridge.profiling.system import environment, memory_bandwidth, peak_rss_bytes, reset_peak_rss
from edgebridge.runtimes.llamacpp.devices import check_request
from edgebridge.stages import StageOptions
from edgebridge.timing import now_ms

BASELINES = ("torch", "optimum-openvino")  # run by edgebridge.exporters.baselines (host side)

if TYPE_CHECKING:  # the pipeline loads the engines; imported when a profile runs
    from edgebridge.pipeline import Pipeline


def bridge_share(pipe: Pipeline, prepared: dict[str, Any]) -> dict[str, Any] | None:
    """Fraction of encoder + bridge graph time spent in the bridge, from the engine's per-node profile."""
    shares = {}
    for modality, stage in pipe.stages.items():
        if modality not in prepared or stage.produces != "embeddings":
            continue
        measured = stage.bridge_time(prepared[modality])
        if measured is not None:
            bridge, total, nodes = measured
            shares[modality] = {"share": bridge / total, "bridge_us": bridge, "graph_us": total, "nodes": nodes}
    if not shares:
        return None
    total_bridge = sum(s["bridge_us"] for s in shares.values())
    total_graph = sum(s["graph_us"] for s in shares.values())
    return {"share": total_bridge / total_graph, "per_modality": shares,
            "method": "per-node engine profile (onnxruntime profiler / OpenVINO perf counters), one run"}


def decode_traffic(pipe: Pipeline, conf: dict[str, Any], bandwidth: float | None) -> dict[str, Any] | None:
    """Bytes a decode step reads (weights + KV cache) x tokens/s, against the measured bandwidth."""
    stages = conf["stages"]
    tps = (stages.get("decode_tokens_per_s") or {}).get("p50")
    if not tps:
        return None
    n_past = (conf.get("prompt_tokens") or 0) + (conf.get("new_tokens") or 0) / 2
    per_token = pipe.llm.bytes_read_per_token(int(n_past))
    achieved = per_token * tps
    return {"bytes_per_token": per_token, "achieved_bytes_per_s": achieved,
            "fraction_of_bandwidth": achieved / bandwidth if bandwidth else None,
            "method": "GGUF tensor bytes (minus unread embedding rows) + K/V cache at the mean decode position"}


@dataclass(frozen=True)
class Workload:
    """What every configuration runs: the prompt, the media, and how many runs."""

    prompt: str
    media: dict[str, list[Any]]
    max_new_tokens: int
    runs: int
    warmup: int
    threads: int | None
    precision: str | None
    warm_cache: bool
    options: MediaOptions = MediaOptions()

    def describe(self, baseline_prompt: str | None) -> dict[str, Any]:
        def names(items: list[Any]) -> list[str]:
            return [str(i) if isinstance(i, (str, Path)) else type(i).__name__ for i in items]

        return {"prompt": self.prompt, "baseline_prompt": baseline_prompt, "images": names(self.media.get("image", [])),
                "audio": names(self.media.get("audio", [])), "max_new_tokens": self.max_new_tokens,
                "runs": self.runs, "warmup": self.warmup, "stop_at_eos": False, "warm_cache": self.warm_cache,
                **{name: getattr(self.options, name) for name in self.options.given()}}


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
    llm_devices: Sequence[str] = ("CPU",),
    gpu_layers: int | str | None = None,
    threads: int | None = None,
    precision: str | None = "f32",
    baselines: Sequence[str] = (),
    model_dir: str | Path | None = None,
    warm_cache: bool = False,
    min_image_tokens: int | None = None,
    max_image_tokens: int | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Profile ``bundle`` for every backend x device x LLM device, plus the named baselines; returns the report.

    Runs are cold by default: the embedding cache and KV-prefix reuse are off, so every run encodes
    and prefills everything. ``warm_cache`` turns them on (repeated requests, multi-turn chat).
    """
    from edgebridge.bundle import Bundle

    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup}).")
    _check_baselines(baselines, model_dir)
    placements = _placements(backends, devices, llm_devices, gpu_layers, threads, precision)
    manifest = Bundle.open(bundle).manifest  # verify once, up front
    from edgebridge.preprocess.image import load_image

    for item in images:  # a bad input fails the profile at once, not every configuration
        load_image(item)
    options = MediaOptions(min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens).check()
    work = Workload(prompt, {k: list(v) for k, v in (("image", images), ("audio", audio)) if v}, max_new_tokens,
                    runs, warmup, threads, precision, warm_cache, options)
    step("measuring memory bandwidth")
    bandwidth = memory_bandwidth(threads=threads)
    profiler = Profiler(warmup=warmup)
    for backend in backends:
        for placement in placements:
            _profile_configuration(profiler, Path(bundle), backend, placement, gpu_layers, work,
                                   bandwidth["bytes_per_s"], step)
    # The baselines read the prompt through the HF processor, which needs the placeholders the pipeline
    # adds itself when the prompt has none (the items first, each on its own line).
    baseline_prompt = place_media(prompt, manifest.inputs, {m: len(items) for m, items in work.media.items()})
    for baseline in baselines:
        step(f"baseline {baseline}")
        _run_baseline(profiler, baseline, Path(model_dir), baseline_prompt, work, step)
    return profiler.report(bundle=_bundle_info(bundle, manifest),
                           workload=work.describe(baseline_prompt if baselines else None),
                           environment=environment(threads), memory_bandwidth=bandwidth)


def _check_baselines(baselines: Sequence[str], model_dir: str | Path | None) -> None:
    if baselines and model_dir is None:
        raise InputError("baselines run the source model: pass --model-dir with the Hugging Face folder.")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline(s) {', '.join(unknown)}.", hint=f"Choose from: {', '.join(BASELINES)}.")


def _placements(backends: Sequence[str], devices: Sequence[str], llm_devices: Sequence[str],
                gpu_layers: int | str | None, threads: int | None, precision: str | None) -> list[DevicePlacement]:
    """Every encoder device x LLM device to profile; a bogus backend, device or setting fails the profile at
    once, not as a row."""
    placements = [parse_placement(d, None if "=" in d else ld) for d in devices for ld in llm_devices]
    placements = list(dict.fromkeys(placements))  # "llm=GPU" in --device repeats over --llm-device
    for backend in backends:
        for placement in placements:
            StageOptions(backend, placement.encoder, threads, precision).check()
            check_request(placement.llm, gpu_layers)
    return placements


def _profile_configuration(profiler: Profiler, bundle: Path, backend: str, placement: DevicePlacement,
                           gpu_layers: int | str | None, work: Workload, bandwidth: float | None,
                           step: Callable[[str], None]) -> None:
    """Load the bundle for one backend x placement, run the workload, record every run; errors are recorded."""
    from edgebridge.pipeline import Pipeline

    name = f"{backend}/{placement.encoder}" + ("" if placement.llm == "CPU" else f"/llm={placement.llm}")
    conf = profiler.configuration(name, backend=backend, device=placement.encoder, llm_device=placement.llm,
                                  threads=work.threads, precision=work.precision)
    step(f"{name}: loading")
    conf.peak_rss_method = "VmHWM since reset" if reset_peak_rss() else "process peak (not resettable)"
    try:
        start = now_ms()
        with Pipeline.from_bundle(bundle, encoder_backend=backend, device=placement.encoder,
                                  llm_device=placement.llm, gpu_layers=gpu_layers, threads=work.threads,
                                  precision=work.precision, verify=False, cache_embeddings=work.warm_cache,
                                  reuse_prefix=work.warm_cache) as pipe:
            conf.add("load_ms", now_ms() - start)
            conf.bridge_share = bridge_share(pipe, {m: pipe.stages[m].prepare(items, options=work.options)
                                                    for m, items in work.media.items()})
            _timed_runs(profiler, conf, pipe, work, step)
            conf.peak_rss_bytes = peak_rss_bytes()
            conf.extra["decode_traffic"] = decode_traffic(pipe, conf.to_dict(), bandwidth)
    except EdgebridgeError as exc:
        conf.status, conf.error = "error", f"{exc.message} {exc.hint or ''}".strip()
    gc.collect()


def _timed_runs(profiler: Profiler, conf: Configuration, pipe: Pipeline, work: Workload,
                step: Callable[[str], None]) -> None:
    result = None
    for i in range(work.warmup + work.runs):
        step(f"{conf.name}: run {i + 1}/{work.warmup + work.runs}" + (" (warm-up)" if i < work.warmup else ""))
        result = pipe.generate(work.prompt, images=work.media.get("image"), audio=work.media.get("audio"),
                               max_new_tokens=work.max_new_tokens, stop_at_eos=False,
                               min_image_tokens=work.options.min_image_tokens,
                               max_image_tokens=work.options.max_image_tokens)
        profiler.record(result, conf.name)
    conf.extra["warnings"] = result.warnings if result is not None else []
    conf.extra["media"] = result.media if result is not None else {}


def _bundle_info(bundle: str | Path, manifest: Manifest) -> dict[str, Any]:
    sizes = {rel: entry.bytes for rel, entry in manifest.files.items()}
    return {
        "path": str(bundle),
        "family": manifest.family,
        "files_bytes": sizes,
        "total_bytes": sum(sizes.values()),
        "components": {name: {fmt: {"precision": art.precision, "bytes": sum(sizes.get(f, 0) for f in art.files)}
                              for fmt, art in comp.artifacts.items()} for name, comp in manifest.components.items()},
    }


def _run_baseline(profiler: Profiler, name: str, model_dir: Path, prompt: str, work: Workload, step) -> None:
    conf = profiler.configuration(name, baseline=name, model_dir=str(model_dir), threads=work.threads)
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
        run_baseline(name, conf, model_dir, prompt, work.media, work.max_new_tokens, work.runs, work.warmup,
                     work.threads, step)
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
