"""The Qwen-VL line end to end: native-resolution vision graph, M-RoPE positions, image-token budgets.

Tiny seeded Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``make-tiny qwen2-vl|qwen2.5-vl|qwen3-vl``; Qwen2.5-VL's
tower attends in 2x2-token windows in block 0, over the frame in block 1; Qwen3-VL interpolates a learned
position table and adds deepstack features to the first LLM layer), f32 GGUF, strict llama.cpp settings.
Videos for all three (Qwen3-VL: each temporal patch behind its timestamp in the prompt). For each encoder
engine: the 16 greedy token ids equal transformers' ``generate`` on the processor's prompt
(``<|vision_start|><|image_pad|><|vision_end|>``) for one photo at two sizes and for two photos of
different sizes in one prompt; the numpy preprocessing equals the HF image processor; the token budget
gives the HF processor's grids.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge import Pipeline
from edgebridge.errors import ImageInputError, InputError
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported, run_cli
from tests.reference import hf_reference

COVERS_FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]
pytestmark = pytest.mark.slow

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
PROMPT = f"<|im_start|>user\n{IMAGE}What is in this image?<|im_end|>\n<|im_start|>assistant\n"
TWO = f"<|im_start|>user\n{IMAGE}and{IMAGE}Compare them.<|im_end|>\n<|im_start|>assistant\n"
CASES = {"cat": (PROMPT, ["chelsea"]), "page": (PROMPT, ["page"]), "cat+page": (TWO, ["chelsea", "page"]),
         "rocket+cat": (TWO, ["rocket", "chelsea"])}


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module", params=COVERS_FAMILIES)
def qwen2_vl(workdir, request):
    return exported(workdir, request.param)


ARCH = {"qwen2-vl": ("qwen2vl", [2, 3, 3, 0], 0), "qwen2.5-vl": ("qwen2vl", [2, 3, 3, 0], 0),
        "qwen3-vl": ("qwen3vl", [3, 3, 2, 0], 1)}


def test_export_gates_and_the_gguf(qwen2_vl):
    m = qwen2_vl.manifest
    for art in m.components["vision_encoder"].artifacts.values():  # two grids: 4x6 and 6x8 patches
        assert art.parity.passed and art.parity.metrics["max_abs"] <= 1e-4 and art.parity.samples == 6 + 12
    arch, sections, deepstack = ARCH[m.family]
    llm = m.llm.artifacts["gguf"]
    assert llm.details["architecture"] == arch and llm.parity.metrics["max_abs"] <= 1e-3
    reader = gguf.GGUFReader(str(qwen2_vl.bundle / llm.files[0]))
    assert list(reader.fields[f"{arch}.rope.dimension_sections"].contents()) == sections
    if deepstack:  # input rows: the main embedding and one deepstack slice per layer, side by side
        assert reader.fields[f"{arch}.n_deepstack_layers"].contents() == deepstack
    assert m.llm.inputs[0].shape[-1] == 64 * (1 + deepstack) == m.components["vision_encoder"].outputs[0].shape[-1]
    assert m.inputs["image"].layout.positions.value == "mrope"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_and_first_logits_match_transformers(qwen2_vl, case, backend):
    prompt, names = CASES[case]
    images = [photo(n) for n in names]
    ref = hf_reference(qwen2_vl.model_dir, prompt, {"image": images})
    with Pipeline.from_bundle(qwen2_vl.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, images=images, max_new_tokens=16)
        logits = pipe.prefill_logits(prompt, images=images)
    assert result.prompt_tokens == len(ref.prompt_ids)
    assert result.token_ids == ref.token_ids and len(ref.token_ids) == 16
    # ~3e-6 with our build's fix to llama.cpp's qwen2vl loader (runtimes/llamacpp/patches): it read no
    # RMS-norm epsilon, and the first logits were 2e-4 off here
    assert np.abs(logits - ref.first_logits).max() <= 1e-4
    assert [m["grid_thw"] for m in result.media["image"]] == [list(g) for g in ref_grids(qwen2_vl, images)]


def ref_grids(exp, images) -> list[list[int]]:
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor.from_pretrained(exp.model_dir)(images=images)["image_grid_thw"].tolist()


@pytest.mark.parametrize("size, cut", [((120, 200), True), ((56, 56), False), ((300, 90), True)])
def test_window_layouts_give_the_same_tower_output(workdir, size, cut):
    """Qwen2.5-VL: whole windows attended one by one (new bundles) and the older [N, N] window bias over
    every pair give the same embeddings, on grids whose edge windows are cut (empty slots padded)."""
    import torch

    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.families.qwen2_vl import QwenVisionGraph
    from edgebridge.preprocess.qwen_vl import vision_inputs

    model_dir = exported(workdir, "qwen2.5-vl").model_dir
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    spec = family.preprocessing(loaded)
    padded, _ = family.vision_graph(loaded)
    vision = loaded.config.vision_config
    dropped = QwenVisionGraph(loaded.model.model.visual, window_blocks=tuple(padded.window_blocks)).eval()
    frames = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    frames = frames[:, :, :size[0] // 28 * 28, :size[1] // 28 * 28]
    new, _ = vision_inputs(frames, spec)
    old, _ = vision_inputs(frames, {**spec, "window_padded": False})
    assert padded.window_rows == spec["window"] ** 2 * vision.spatial_merge_size ** 2
    assert new["pixel_values"].shape[0] % padded.window_rows == 0
    assert (new["pixel_values"].shape[0] > old["pixel_values"].shape[0]) == cut  # cut windows: empty slots padded
    with torch.no_grad():
        a = padded(**{k: torch.from_numpy(v) for k, v in new.items()})
        b = dropped(**{k: torch.from_numpy(v) for k, v in old.items()})
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "page", "rocket", "camera", "coffee"])
def test_preprocessing_equals_the_hf_processor(qwen2_vl, name):
    from transformers import Qwen2VLImageProcessor

    from edgebridge.preprocess import preprocess

    spec = qwen2_vl.manifest.inputs["image"].preprocessing.to_dict()
    ref = Qwen2VLImageProcessor.from_pretrained(qwen2_vl.model_dir)(images=[photo(name)], return_tensors="np")
    import torch

    from edgebridge.exporters.families.qwen2_vl import raster_patches

    ours = preprocess(spec["kind"], [getattr(data, name)()], spec)
    assert ours.info[0]["grid_thw"] == ref["image_grid_thw"][0].tolist()
    patches = raster_patches({k: torch.from_numpy(v) for k, v in ours.runs[0].items()}, spec).numpy()
    assert np.abs(patches - ref["pixel_values"]).max() <= 1e-5  # (Qwen2.5-VL's window order undone)


def test_image_token_budget_gives_the_processors_grids(qwen2_vl):
    from transformers import Qwen2VLImageProcessor

    table = []
    with Pipeline.from_bundle(qwen2_vl.bundle) as pipe:
        for budget in (4, 9, 16):
            result = pipe.generate(PROMPT, images=[photo("astronaut")], max_new_tokens=2, max_image_tokens=budget)
            spec = qwen2_vl.manifest.inputs["image"].preprocessing
            factor = spec["patch_size"] * spec["merge_size"]
            ip = Qwen2VLImageProcessor.from_pretrained(qwen2_vl.model_dir, max_pixels=budget * factor * factor)
            ref = ip(images=[photo("astronaut")])["image_grid_thw"][0].tolist()
            media = result.media["image"][0]
            table.append((budget, media["grid_thw"], media["tokens"]))
            assert media["grid_thw"] == ref and media["tokens"] <= budget
    assert len({tuple(g) for _, g, _ in table}) == 3, table  # three budgets, three grids


def test_budget_errors_are_clear(qwen2_vl, clip_llama_f32):
    with Pipeline.from_bundle(qwen2_vl.bundle) as pipe:
        with pytest.raises(InputError, match="above max_image_tokens"):
            pipe.generate(PROMPT, images=[photo("chelsea")], min_image_tokens=20, max_image_tokens=4)
        with pytest.raises(ImageInputError, match="more than the budget"):  # each side is at least one token
            pipe.generate(PROMPT, images=[np.zeros((28, 28 * 150, 3), np.uint8)], max_image_tokens=4)
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        with pytest.raises(InputError, match="does not apply"):
            pipe.generate("<image>hi", images=[photo("chelsea")], max_image_tokens=16)
    proc = run_cli("run", str(qwen2_vl.bundle), "-p", PROMPT, "-i", "/dev/null", "--max-image-tokens", "0")
    assert proc.returncode == 2 and "max_image_tokens must be a positive number" in proc.stderr, proc.stderr


def test_cli_reports_the_grid_and_tokens(qwen2_vl, tmp_path):
    import json

    path = tmp_path / "cat.png"
    photo("chelsea").save(path)
    proc = run_cli("run", str(qwen2_vl.bundle), "-p", PROMPT, "-i", str(path), "-n", "2", "--json",
                   "--max-image-tokens", "9")
    assert proc.returncode == 0, proc.stderr
    media = json.loads(proc.stdout)["media"]["image"][0]
    assert media["tokens"] <= 9 and media["tokens"] == np.prod(media["llm_grid"])


def test_kv_prefix_reuse_and_embedding_cache_keep_the_answers(qwen2_vl):
    requests = [(PROMPT, ["chelsea"]), (PROMPT.replace("What is in", "Describe"), ["chelsea"]),
                (TWO, ["chelsea", "page"]), (PROMPT, ["page"])]
    settings = LlamaSettings.strict()
    with Pipeline.from_bundle(qwen2_vl.bundle, llm_settings=settings) as cached, \
            Pipeline.from_bundle(qwen2_vl.bundle, llm_settings=settings, cache_embeddings=False,
                                 reuse_prefix=False) as plain:
        reused = []
        for prompt, names in requests:
            images = [photo(n) for n in names]
            a, b = cached.generate(prompt, images=images, max_new_tokens=8), \
                plain.generate(prompt, images=images, max_new_tokens=8)
            assert a.token_ids == b.token_ids, (prompt, names)
            reused.append(a.reused_positions)
    # the follow-up keeps the image (a cut inside an M-RoPE image keeps none of it); the third prompt
    # shares the text before its first image; the fourth only "<|im_start|>user\n..."
    assert reused[0] == 0 and reused[1] > 12 and reused[2] > 0


# --- video -------------------------------------------------------------------------------------------


def write_video(path, frames: int = 12, fps: int = 6, size: tuple[int, int] = (96, 128)) -> None:
    """A short synthetic clip: a bright square crossing a gradient, MPEG-4 in MP4, written with PyAV."""
    import av

    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
            img[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
            x = 8 + i * (w - 40) // frames
            img[30:60, x:x + 30] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def video_reference(exp, video, question: str):
    """transformers' generate on the video path: the image processor's video patches (the video processor
    needs torchvision, not installable here) of the same sampled frames; the prompt as the processor
    expands ``<|video_pad|>`` (Qwen3-VL: each temporal patch behind its time, from the processor's own
    ``_calculate_timestamps``); Qwen2.5-VL's seconds per temporal patch."""
    import torch
    from transformers import Qwen2VLImageProcessor

    from tests.reference import _loaded

    family, loaded = _loaded(str(exp.model_dir))
    vid = Qwen2VLImageProcessor.from_pretrained(exp.model_dir)(images=None, videos=[list(video.frames)],
                                                               return_tensors="pt")
    t, h, w = vid["video_grid_thw"][0].tolist()
    if family.name == "qwen3-vl":
        times = loaded.processor._calculate_timestamps(video.info["frame_indices"], video.info["source_fps"], 2)
        body = "".join(f"<{x:.1f} seconds><|vision_start|>{'<|video_pad|>' * (h * w // 4)}<|vision_end|>"
                       for x in times)
    else:
        body = f"<|vision_start|>{'<|video_pad|>' * (t * h * w // 4)}<|vision_end|>"
    prompt = f"<|im_start|>user\n{body}{question}<|im_end|>\n<|im_start|>assistant\n"
    ids = loaded.processor.tokenizer(prompt, return_tensors="pt")
    extra = {"second_per_grid_ts": torch.tensor([2 / video.fps])} if family.temporal_time else {}
    with torch.no_grad():
        out = loaded.model.generate(**ids, pixel_values_videos=vid["pixel_values_videos"],
                                    video_grid_thw=vid["video_grid_thw"], max_new_tokens=16, do_sample=False, **extra)
    return out[0, ids["input_ids"].shape[1]:].tolist(), [t, h, w], ids["input_ids"].shape[1]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_video_greedy_tokens_match_transformers(qwen2_vl, backend, tmp_path):
    from edgebridge.preprocess.video import load_video

    clip = tmp_path / "clip.mp4"
    write_video(clip)
    video = load_video(clip, fps=2.0, max_frames=64)  # 2 s at 2 fps: 4 frames, two temporal patches
    ref_ids, ref_grid, n_prompt = video_reference(qwen2_vl, video, "What happens?")
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n" \
             "<|im_start|>assistant\n"
    with Pipeline.from_bundle(qwen2_vl.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, videos=[clip], max_new_tokens=16)
    media = result.media["video"][0]
    assert media["grid_thw"] == ref_grid and ref_grid[0] == 2 and media["frames"] == 4
    assert result.prompt_tokens == n_prompt and result.token_ids == ref_ids and len(ref_ids) == 16


def test_video_errors_and_frame_budget(qwen2_vl, tmp_path):
    from edgebridge.preprocess.video import VideoInputError


    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=24)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    with Pipeline.from_bundle(qwen2_vl.bundle) as pipe:
        result = pipe.generate("<|video_pad|>", videos=[clip], max_new_tokens=1, video_fps=4.0, max_frames=4)
        assert result.media["video"][0]["frames"] == 4 and result.media["video"][0]["dropped_frames"] == 12
        assert any("frames dropped to fit max_frames" in w for w in result.call_warnings)
        for bad in (not_video, tmp_path / "missing.mp4"):
            with pytest.raises(VideoInputError):
                pipe.generate("<|video_pad|>", videos=[bad], max_new_tokens=1)
        with pytest.raises(InputError, match="list of items"):
            pipe.generate("<|video_pad|>", videos=str(clip), max_new_tokens=1)
    proc = run_cli("run", str(qwen2_vl.bundle), "-p", "hi", "--video", str(not_video))
    assert proc.returncode == 2 and "not a video" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli("run", str(qwen2_vl.bundle), "-p", "<|image_pad|><|image_pad|>", "-i", str(clip))
    assert proc.returncode == 2 and "placeholder" in proc.stderr, proc.stderr  # more markers than media


# --- quantization and profiling, like every other family ----------------------------------------------


def test_quantized_bundle_runs_and_profiles(workdir, tmp_path):
    from edgebridge.exporters.api import export_bundle
    from edgebridge.profiling.runner import profile_bundle
    from tests.conftest import tiny_model

    bundle = tmp_path / "q"
    manifest = export_bundle(tiny_model(workdir, "qwen2.5-vl"), bundle, llm_dtype="f32",
                             quantize="encoder.onnx=int8-static,encoder.openvino=int4,llm=q8_0",
                             max_drift=["encoder.cosine_min=0.7", "llm.top1_agreement=0.3", "llm.kl_mean=1.0"])
    arts = manifest.components["vision_encoder"].artifacts
    assert (arts["onnx"].precision, arts["openvino"].precision, manifest.llm.artifacts["gguf"].precision) == \
        ("int8-static", "int4", "q8_0")
    assert arts["onnx"].parity.metrics["cosine_min"] >= 0.99 and arts["onnx"].quantization["calibration"]
    report = profile_bundle(bundle, prompt=PROMPT, images=[data.chelsea()], max_new_tokens=4, runs=1, warmup=0,
                            backends=["onnxruntime", "openvino"], max_image_tokens=9)
    for conf in report["configurations"]:
        assert conf["status"] == "ok", conf.get("error")
        assert conf["media"]["image"][0]["tokens"] <= 9 and conf["stages"]["ttft_ms"]["p50"] > 0
    assert report["workload"]["max_image_tokens"] == 9
    import json

    import jsonschema

    from edgebridge.profiling import Profiler

    paths = Profiler().write(tmp_path / "report", report)  # the JSON and HTML files, as `edgebridge profile`
    schema = Path(__file__).resolve().parents[1] / "edgebridge" / "profiling" / "report.schema.json"
    jsonschema.validate(json.loads(Path(paths["json"]).read_text()), json.loads(schema.read_text()))
