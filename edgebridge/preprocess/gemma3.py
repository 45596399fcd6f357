"""Gemma 3's images (``Gemma3ImageProcessor``), kind ``gemma3-images``: every image resized to the tower's
square (no crop), rescaled, normalised; with ``pan_and_scan`` (a per-call option, off by default as in
``Gemma3Processor``) an elongated image also gives 2..``max_num_crops`` crops along its long side, each
its own run of embeddings after the whole image (the prompt layout ``pan-and-scan`` writes the text
around them as the processor does).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from PIL import Image

from edgebridge.preprocess import MediaOptions, Prepared, register_preprocessor
from edgebridge.preprocess.image import DEFAULT_MAX_PIXELS, image_info, load_image, normalized_chw, resize


def pan_and_scan(arr: np.ndarray, params: Mapping[str, Any]) -> list[np.ndarray]:
    """HWC crops as ``Gemma3ImageProcessor.pan_and_scan``: none unless the aspect ratio reaches
    ``min_ratio_to_activate`` and every crop keeps ``min_crop_size`` on both sides."""
    height, width = arr.shape[:2]
    long, short = (width, height) if width >= height else (height, width)
    if long / short < params["min_ratio_to_activate"]:
        return []
    n = min(int(math.floor(long / short + 0.5)), int(math.floor(long / params["min_crop_size"])))
    n = min(params["max_num_crops"], max(2, n))
    n_w, n_h = (n, 1) if width >= height else (1, n)
    crop_w, crop_h = int(math.ceil(width / n_w)), int(math.ceil(height / n_h))
    if min(crop_w, crop_h) < params["min_crop_size"]:
        return []
    return [arr[y:y + crop_h, x:x + crop_w] for y in range(0, crop_h * n_h, crop_h) for x in range(0, crop_w * n_w, crop_w)]


def _pixels(arr: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    size = spec["resize"]
    img = resize(Image.fromarray(np.ascontiguousarray(arr)), size["height"], size["width"], spec.get("resample", "bilinear"))
    return normalized_chw(np.asarray(img), spec)


@register_preprocessor("gemma3-images", options=("pan_and_scan",))
def prepare_gemma3(items: list[Any], spec: dict[str, Any], options: MediaOptions | None = None) -> Prepared:
    """Images -> ``pixel_values [sum(1 + crops), C, S, S]``; one embedding run per image and per crop."""
    crops_on = bool(options and options.pan_and_scan)
    pixels, info = [], []
    for item in items:
        img = load_image(item, max_pixels=int(spec.get("max_pixels", DEFAULT_MAX_PIXELS)))
        arr = np.asarray(img)
        crops = pan_and_scan(arr, spec["pan_and_scan"]) if crops_on else []
        pixels.extend(_pixels(a, spec) for a in [arr, *crops])
        info.append({**image_info(img), "crops": len(crops)})
    return Prepared(inputs={"pixel_values": np.stack(pixels)}, info=info,
                    item_rows=[slice(i, i + 1) for i in range(len(pixels))])
