"""Gemma 3 end to end: pooled SigLIP features, ``<start_of_image>`` prompts, bidirectional image attention.

A tiny seeded Gemma 3 (``make-tiny gemma3``: 64 px SigLIP, 16 pooled tokens per image, a 2-layer gemma3
text model with a 32-token sliding window), f32 GGUF, strict llama.cpp settings. Through both encoder
engines, the 16 greedy ids equal transformers' ``generate`` on the processor's prompt for one photo, for
two photos of different sizes, and with pan-and-scan for a wide and a tall image (3 and 2 crops, the
processor's sentence around them); with the manifest's ``bidirectional`` switched off (causal image
attention) the answer changes, so the attention rule is what makes them equal.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge import Pipeline
from edgebridge.manifest import MANIFEST_NAME
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported, run_cli
from tests.reference import hf_reference, strict_run

COVERS_FAMILIES = ["gemma3"]
pytestmark = pytest.mark.slow

ONE = "<start_of_image>What is in this image?"
TWO = "Compare <start_of_image> and <start_of_image>. Which is brighter?"
CASES = {"cat": (ONE, ["chelsea"]), "cat+astronaut": (TWO, ["chelsea", "astronaut"])}


def photos(names: list[str]) -> list[np.ndarray]:
    out = [getattr(data, n)() for n in names]
    return [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in out]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_tokens_match_transformers(workdir, case, backend):
    b = exported(workdir, "gemma3")
    prompt, names = CASES[case]
    images = photos(names)
    assert len({im.shape for im in images}) == len(images)  # different sizes when there are two
    ref = hf_reference(b.model_dir, prompt, {"image": [Image.fromarray(im) for im in images]})
    result, logits = strict_run(b.bundle, prompt, images, backend)
    assert result.token_ids == ref.token_ids
    assert len(ref.token_ids) == 16 and len(set(ref.token_ids)) >= 3
    assert result.prompt_tokens == len(ref.prompt_ids)
    tolerance = b.manifest.components["llm"].artifacts["gguf"].parity.tolerance["max_abs"]
    assert np.abs(logits - ref.first_logits).max() <= tolerance


def test_causal_image_attention_changes_the_answer(workdir, tmp_path):
    b = exported(workdir, "gemma3")
    causal = shutil.copytree(b.bundle, tmp_path / "causal")
    manifest = json.loads((causal / MANIFEST_NAME).read_text())
    assert manifest["inputs"]["image"]["layout"]["bidirectional"] is True
    manifest["inputs"]["image"]["layout"]["bidirectional"] = False
    (causal / MANIFEST_NAME).write_text(json.dumps(manifest))
    images = photos(["chelsea"])
    ref = hf_reference(b.model_dir, ONE, {"image": [Image.fromarray(im) for im in images]})
    both_ways, logits = strict_run(b.bundle, ONE, images)
    one_way, causal_logits = strict_run(causal, ONE, images)
    assert both_ways.token_ids == ref.token_ids
    assert one_way.token_ids != ref.token_ids
    assert np.abs(causal_logits - logits).max() > 0.1


def test_two_way_rows_share_one_batch(workdir):
    """Both-ways attention needs the image in one micro-batch: the engine refuses more rows than its batch
    holds (a clear error, not a silently split image), and the session sizes the batch for the image."""
    from edgebridge.errors import InputError
    from edgebridge.runtimes.llamacpp import LlamaCppLLM

    b = exported(workdir, "gemma3")
    gguf = b.bundle / b.manifest.llm.artifacts["gguf"].files[0]
    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=256, n_batch=8, n_ubatch=8)) as llm:
        with pytest.raises(InputError, match="one batch"):
            llm.eval_embeddings(np.zeros((16, llm.n_embd), np.float32), causal=False)
    with Pipeline.from_bundle(b.bundle, llm_settings=LlamaSettings.strict(n_batch=8, n_ubatch=8)) as pipe:
        small = pipe.generate(ONE, images=photos(["chelsea"]), max_new_tokens=16)
    assert small.token_ids == strict_run(b.bundle, ONE, photos(["chelsea"]))[0].token_ids


def pan_and_scan_images() -> dict[str, np.ndarray]:
    """Shapes that Gemma 3's processor call defaults crop (256 px crops at least): 3 side by side, 2 stacked."""
    cat = data.chelsea()
    return {"wide": np.concatenate([cat, cat], axis=1), "tall": np.concatenate([cat, cat], axis=0)[:, :280].copy()}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("shape, crops", [("wide", 3), ("tall", 2)])
def test_pan_and_scan_matches_transformers(workdir, shape, crops, backend):
    b = exported(workdir, "gemma3")
    image = pan_and_scan_images()[shape]
    ref = hf_reference(b.model_dir, ONE, {"image": [Image.fromarray(image)]}, do_pan_and_scan=True)
    with Pipeline.from_bundle(b.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(ONE, images=[image], max_new_tokens=16, pan_and_scan=True)
        plain = pipe.generate(ONE, images=[image], max_new_tokens=1)
    assert result.prompt_tokens == len(ref.prompt_ids) > plain.prompt_tokens + crops * 16
    assert result.token_ids == ref.token_ids and len(set(ref.token_ids)) >= 3


def test_pan_and_scan_from_the_cli(workdir, tmp_path):
    b = exported(workdir, "gemma3")
    path = tmp_path / "wide.png"
    Image.fromarray(pan_and_scan_images()["wide"]).save(path)
    counts = []
    for extra in ([], ["--pan-and-scan"]):
        proc = run_cli("run", str(b.bundle), "-i", str(path), "-p", ONE, "-n", "2", "--json", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts.append(json.loads(proc.stdout)["prompt_tokens"])
    assert counts[1] - counts[0] > 3 * 16  # three crops, each in its wrap, and the processor's sentence
