"""LLaVA-NeXT and LLaVA-OneVision end to end: anyres tiles, unpadding, OneVision's pooling, newlines.

Tiny seeded models (``make-tiny llava-next|llava-onevision``: 64 px tiles; NeXT: CLIP, up to 2 x 2
tiles, llama; OneVision: SigLIP, up to 4 x 4 tiles so the wide photo's grid is pooled, qwen2), f32 GGUF,
strict llama.cpp settings. Through both encoder engines, the 16 greedy ids and the prompt length equal
transformers' ``generate`` on the processor's prompt for a wide photo, a square one and two photos of
different sizes in one prompt (OneVision's multi-image form: one square tile each).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.conftest import exported
from tests.reference import hf_reference, strict_run

COVERS_FAMILIES = ["llava-next", "llava-onevision"]
pytestmark = pytest.mark.slow

ONE = "USER: <image>\nWhat is in this image? ASSISTANT:"
TWO = "USER: <image> and <image>\nCompare them. ASSISTANT:"
CASES = {"cat": (ONE, ["chelsea"]), "rocket": (ONE, ["rocket"]), "cat+astronaut": (TWO, ["chelsea", "astronaut"])}


def photos(names: list[str]) -> list[np.ndarray]:
    return [getattr(data, n)() if n != "astronaut" else data.astronaut()[::2, ::3] for n in names]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", COVERS_FAMILIES)
def test_greedy_tokens_match_transformers(workdir, kind, case, backend):
    b = exported(workdir, kind)
    prompt, names = CASES[case]
    images = photos(names)
    ref = hf_reference(b.model_dir, prompt, {"image": [Image.fromarray(im) for im in images]})
    result, logits = strict_run(b.bundle, prompt, images, backend)
    assert result.prompt_tokens == len(ref.prompt_ids)
    assert result.token_ids == ref.token_ids and len(ref.token_ids) == 16
    assert np.abs(logits - ref.first_logits).max() <= 1e-3
    if case == "cat":  # the comparison is not one repeated token
        assert len(set(ref.token_ids)) >= 3
