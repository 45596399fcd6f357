"""The host side of LLaVA-NeXT / OneVision in numpy against transformers, fast: tiles, token counts and
packing (unpad, OneVision's bilinear pooling, newlines) for images of many shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgebridge.preprocess import preprocess
from edgebridge.preprocess.anyres import bilinear, item_tokens, pack
from edgebridge.testing.anyres import NEXT_PINPOINTS, ONEVISION_PINPOINTS, TILE
from edgebridge.testing.llava import CLIP_MEAN, CLIP_STD

SIZES = [(300, 451), (451, 300), (64, 64), (100, 700), (700, 90), (257, 256), (31, 200), (128, 128), (500, 500)]
SPEC = {"tile": TILE, "features_per_side": 8, "resample": "bicubic", "rescale_factor": 1 / 255}


def image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def hf_processors():
    from transformers import LlavaNextImageProcessor, LlavaOnevisionImageProcessor

    nxt = LlavaNextImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
                                  image_grid_pinpoints=NEXT_PINPOINTS, resample=3, image_mean=CLIP_MEAN,
                                  image_std=CLIP_STD)
    ov = LlavaOnevisionImageProcessor(size={"height": TILE, "width": TILE}, image_grid_pinpoints=ONEVISION_PINPOINTS,
                                      resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return {"next": (nxt, {**SPEC, "pinpoints": NEXT_PINPOINTS, "mean": CLIP_MEAN, "std": CLIP_STD,
                           "max_tiles": None, "multi_image": "anyres"}),
            "onevision": (ov, {**SPEC, "pinpoints": ONEVISION_PINPOINTS, "mean": [0.5] * 3, "std": [0.5] * 3,
                               "max_tiles": 9, "multi_image": "square"})}


@pytest.mark.parametrize("kind", ["next", "onevision"])
@pytest.mark.parametrize("size", SIZES)
def test_tiles_equal_the_hf_image_processor(kind, size):
    hf, spec = hf_processors()[kind]
    img = image(*size)
    ours = preprocess("llava-anyres", [img], {"kind": "llava-anyres", **spec})
    theirs = hf(images=[img], return_tensors="np")["pixel_values"][0]
    assert ours.inputs["pixel_values"].shape == theirs.shape
    assert np.abs(ours.inputs["pixel_values"] - theirs).max() <= 1e-5


def test_onevision_multi_image_form_equals_the_hf_image_processor():
    hf, spec = hf_processors()["onevision"]
    imgs = [image(300, 451), image(90, 200, seed=1)]
    ours = preprocess("llava-anyres", imgs, {"kind": "llava-anyres", **spec})
    theirs = hf(images=[imgs], return_tensors="np")["pixel_values"][:, 0]  # per image: one square tile
    assert ours.tokens_per_item == [65, 65]
    assert np.abs(ours.inputs["pixel_values"] - theirs).max() <= 1e-5


def _hf_pack(model_cls, config, feats: np.ndarray, size: tuple[int, int], newline: np.ndarray) -> np.ndarray:
    model = model_cls.__new__(model_cls)  # pack_image_features reads only the config
    torch.nn.Module.__init__(model)
    model.config = config
    kwargs = {"vision_aspect_ratio": config.vision_aspect_ratio} if hasattr(config, "vision_aspect_ratio") else \
        {"vision_feature_select_strategy": "full"}
    out, _ = model.pack_image_features([torch.from_numpy(feats)], torch.tensor([size]),
                                       image_newline=torch.from_numpy(newline), **kwargs)
    return out[0].numpy()


@pytest.mark.parametrize("kind", ["next", "onevision"])
@pytest.mark.parametrize("size", SIZES)
def test_packing_and_token_count_equal_transformers(kind, size):
    from transformers import LlavaNextConfig, LlavaOnevisionConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    _, spec = hf_processors()[kind]
    vision = {"model_type": "siglip_vision_model", "image_size": TILE, "patch_size": 8}
    if kind == "next":
        config, cls = LlavaNextConfig(vision_config=vision, image_grid_pinpoints=NEXT_PINPOINTS), LlavaNextModel
    else:
        config = LlavaOnevisionConfig(vision_config=vision, image_grid_pinpoints=ONEVISION_PINPOINTS)
        cls = LlavaOnevisionModel
    prepared = preprocess("llava-anyres", [image(*size)], {"kind": "llava-anyres", **spec})
    info = prepared.info[0]
    tiles = prepared.inputs["pixel_values"].shape[0]
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((tiles, 64, 16)).astype(np.float32)
    newline = rng.standard_normal(16).astype(np.float32)
    theirs = _hf_pack(cls, config, feats, size, newline)
    ours = pack(feats, info, spec, newline)
    assert ours.shape == theirs.shape == (item_tokens(info, spec), 16)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_bilinear_equals_torch_interpolate():
    x = np.random.default_rng(0).standard_normal((3, 22, 32)).astype(np.float32)
    for rows, cols in [(19, 28), (7, 5), (22, 31), (30, 40)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], [rows, cols], mode="bilinear")[0].numpy()
        assert np.abs(bilinear(x, rows, cols) - ref).max() <= 1e-5
