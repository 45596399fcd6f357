"""Peer systems run on the same model folder and inputs, for ratios in profiles and benchmarks.

- ``torch``: the HF model with transformers, eager, greedy ``generate``;
- ``optimum-openvino``: the folder exported by optimum-intel (``main_export``, fp16 weights, the
  same as ``optimum-cli export openvino --weight-format fp16``) and run with
  ``OVModelForVisualCausalLM``.

Each baseline records the same stage names as edgebridge's configurations where it measures the
same thing: ``load_ms`` (for optimum: export + compile), ``preprocess_ms`` (HF processor),
``encode_bridge_ms`` (vision tower + projector, timed on its own), ``ttft_ms`` (processor +
generation up to the first new token), ``per_token_ms`` (gaps between streamed tokens),
``decode_tokens_per_s``, ``total_ms``. Per-token times come from a streamer's timestamps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers.generation.streamers import BaseStreamer

from edgebridge.errors import InputError
from edgebridge.exporters.families import family_for
from edgebridge.preprocess.image import load_image
from edgebridge.profiling.runner import BASELINES  # the names the profiler accepts
from edgebridge.profiling.system import available_cores


class TimingStreamer(BaseStreamer):
    """Timestamps every new token ``generate`` emits (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def media_loader(media: dict[str, list[Any]]) -> Callable[[], dict[str, list[Any]]]:
    """Decode the media on every call, as edgebridge does per run (files are read each time)."""

    def load() -> dict[str, list[Any]]:
        out = dict(media)
        if media.get("image"):
            out["image"] = [load_image(i) for i in media["image"]]
        if media.get("audio"):
            from edgebridge.preprocess.audio import load_audio

            out["audio"] = [load_audio(a, 16000).samples for a in media["audio"]]
        return out

    return load


def timed_runs(conf: Any, generate: Callable[..., Any], make_inputs: Callable[[], dict[str, Any]],
                encode: Callable[[dict[str, Any]], Any] | None, max_new_tokens: int, runs: int, warmup: int,
                step: Callable[[str], None]) -> None:
    for i in range(warmup + runs):
        step(f"{conf.name}: run {i + 1}/{warmup + runs}" + (" (warm-up)" if i < warmup else ""))
        start = time.perf_counter()
        inputs = make_inputs()
        prepared = time.perf_counter()
        streamer = TimingStreamer()
        with torch.no_grad():
            generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                     streamer=streamer)
        end = time.perf_counter()
        encode_ms = None
        if encode is not None:
            with torch.no_grad():
                t0 = time.perf_counter()
                encode(inputs)
                encode_ms = _ms(time.perf_counter() - t0)
        if i < warmup:
            conf.warmup_dropped += 1
            continue
        gaps = [_ms(b - a) for a, b in zip(streamer.times, streamer.times[1:])]
        conf.add("preprocess_ms", _ms(prepared - start))
        conf.add("encode_bridge_ms", encode_ms)
        conf.add("ttft_ms", _ms(streamer.times[0] - start) if streamer.times else None)
        conf.add("total_ms", _ms(end - start))
        conf.add("decode_tokens_per_s", len(gaps) / (sum(gaps) / 1000.0) if gaps else None)
        conf.per_token_ms.extend(gaps)
        conf.runs += 1
        if conf.token_ids is None:
            conf.token_ids = streamer.tokens


def torch_baseline(conf: Any, model_dir: Path, prompt: str, media: dict[str, list[Any]], max_new_tokens: int,
                   runs: int, warmup: int, threads: int | None, step: Callable[[str], None]) -> None:
    torch.set_num_threads(threads or available_cores())
    family = family_for(model_dir)
    start = time.perf_counter()
    loaded = family.load(model_dir)
    conf.add("load_ms", _ms(time.perf_counter() - start))
    load_media = media_loader(media)
    encoders = {e.modality: e for e in family.encoders(loaded)}

    def encode(inputs: dict[str, Any]) -> None:
        for modality in media:
            enc = encoders[modality]
            enc.reference({name: inputs[name] for name in enc.input_names})

    conf.settings.update(engine="transformers eager", dtype="float32", torch_threads=torch.get_num_threads())
    timed_runs(conf, loaded.model.generate, lambda: family.reference_inputs(loaded, prompt, load_media()),
                encode if media else None, max_new_tokens, runs, warmup, step)


def export_optimum(model_dir: Path, out: str | Path) -> None:
    """Export ``model_dir`` with optimum-intel, fp16 weights (``optimum-cli export openvino --weight-format fp16``)."""
    from optimum.exporters.openvino import main_export
    from optimum.intel.openvino.configuration import OVConfig

    main_export(model_name_or_path=str(model_dir), output=str(out), task="image-text-to-text",
                ov_config=OVConfig(dtype="fp16"), local_files_only=True)


def optimum_ov_config(threads: int | None) -> dict[str, Any]:
    """The OpenVINO config the optimum-intel baseline compiles its models with: latency hint, our threads."""
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or available_cores()}


def load_optimum(exported: str | Path, threads: int | None) -> tuple[Any, dict[str, Any]]:
    """``OVModelForVisualCausalLM`` on CPU with the latency hint; returns it and its OpenVINO config."""
    from optimum.intel import OVModelForVisualCausalLM

    ov_config = optimum_ov_config(threads)
    return OVModelForVisualCausalLM.from_pretrained(str(exported), ov_config=ov_config, device="CPU"), ov_config


def optimum_openvino_baseline(conf: Any, model_dir: Path, prompt: str, media: dict[str, list[Any]],
                              max_new_tokens: int, runs: int, warmup: int, threads: int | None,
                              step: Callable[[str], None]) -> None:
    family = family_for(model_dir)
    loaded = family.load(model_dir)  # the HF processor (and the reference inputs' layout)
    load_media = media_loader(media)
    with tempfile.TemporaryDirectory(prefix="edgebridge-optimum-") as out:
        step(f"{conf.name}: exporting with optimum-intel (fp16 weights)")
        start = time.perf_counter()
        export_optimum(model_dir, out)
        model, ov_config = load_optimum(out, threads)
        conf.add("load_ms", _ms(time.perf_counter() - start))
        conf.settings.update(engine="optimum-intel OVModelForVisualCausalLM", weights="fp16",
                             load_includes="export + compile", ov_config=ov_config)

        def encode(inputs: dict[str, Any]) -> None:
            model.get_vision_embeddings(inputs["pixel_values"])

        timed_runs(conf, model.generate, lambda: family.reference_inputs(loaded, prompt, load_media()),
                   encode if media.get("image") else None, max_new_tokens, runs, warmup, step)
        model = None  # release the compiled model before its folder is removed


RUNNERS = {"torch": torch_baseline, "optimum-openvino": optimum_openvino_baseline}


def run_baseline(name: str, conf: Any, model_dir: Path, prompt: str, media: dict[str, list[Any]],
                 max_new_tokens: int, runs: int, warmup: int, threads: int | None,
                 step: Callable[[str], None] = lambda _: None) -> None:
    """Run baseline ``name`` and record its stages into the profiler configuration ``conf``."""
    if name not in RUNNERS:
        raise InputError(f"unknown baseline '{name}'.", hint=f"Choose from: {', '.join(BASELINES)}.")
    RUNNERS[name](conf, Path(model_dir), prompt, media, max_new_tokens, runs, warmup, threads, step)
