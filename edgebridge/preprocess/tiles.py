"""Image tiling in numpy + PIL, matching the HF processors that split an image into tiles.

Shapes: every tile is ``[C, S, S]`` float32; an image becomes ``T`` tiles, the encoder batch is
``[sum(T), C, S, S]``. ``Prepared.info`` carries each image's grid for the prompt layout.

- ``idefics3-tiles`` (Idefics3 / SmolVLM, ``Idefics3ImageProcessor``): resize the longest edge to
  ``resize_longest_edge`` (even short side, at most 4096), grow both sides to multiples of the tile,
  cut into ``rows x cols`` tiles, then add the whole image resized to one tile (the global image);
  an image no larger than one tile is just resized to it. Resampling is PIL Lanczos.
- ``gotocr2-tiles`` (InternVL, ``GotOcr2ImageProcessor``): pick the grid (up to ``max_patches``
  tiles) whose aspect ratio is closest to the image's, resize to it (bicubic), cut the tiles, and
  add a thumbnail of the whole image when there is more than one tile.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from edgebridge.preprocess import Prepared, register_preprocessor
from edgebridge.preprocess.image import DEFAULT_MAX_PIXELS, image_info, load_image, normalized_chw, resize

MAX_IMAGE_SIZE = 4096  # Idefics3's absolute bound on a side


def _finish(tiles: list[np.ndarray], spec: dict[str, Any]) -> list[np.ndarray]:
    """HWC uint8 tiles -> CHW float32 (rescale + normalise as the processor)."""
    return [normalized_chw(t, spec) for t in tiles]


# --- Idefics3 / SmolVLM ------------------------------------------------------------------------------


def _longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    if width >= height and width > MAX_IMAGE_SIZE:  # scale below the upper bound
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def _multiple_of_tile(height: int, width: int, tile: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def idefics3_tiles(img: Image.Image, spec: dict[str, Any]) -> tuple[list[np.ndarray], int, int]:
    """One image -> (HWC uint8 frames, rows, cols): the tiles row by row, then the global image."""
    tile, resample = spec["tile_size"], spec.get("resample", "lanczos")
    if spec.get("resize_longest_edge"):
        h, w = _longest_edge_size(img.size[1], img.size[0], spec["resize_longest_edge"])
        img = resize(img, h, w, resample)
    if not spec.get("do_image_splitting", True):
        return [np.asarray(resize(img, tile, tile, resample))], 0, 0
    h, w = _multiple_of_tile(img.size[1], img.size[0], tile)
    img = resize(img, h, w, resample)
    arr = np.asarray(img)
    if h <= tile and w <= tile:
        return [arr], 0, 0
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    th, tw = math.ceil(h / rows), math.ceil(w / cols)
    frames = [arr[r * th:min((r + 1) * th, h), c * tw:min((c + 1) * tw, w)] for r in range(rows) for c in range(cols)]
    if (h, w) != (tile, tile):
        arr = np.asarray(resize(img, tile, tile, resample))
    frames.append(arr)
    return frames, rows, cols


@register_preprocessor("idefics3-tiles")
def prepare_idefics3(items: list[Any], spec: dict[str, Any]) -> Prepared:
    tiles, info = [], []
    for item in items:
        img = load_image(item, max_pixels=int(spec.get("max_pixels", DEFAULT_MAX_PIXELS)))
        frames, rows, cols = idefics3_tiles(img, spec)
        info.append({**image_info(img), "rows": rows, "cols": cols, "tiles": len(frames)})
        tiles.extend(_finish(frames, spec))
    rows_of = [slice(i, i + 1) for i in range(len(tiles))]  # each tile is its own prompt segment
    return Prepared(inputs={"pixel_values": np.stack(tiles)}, info=info, item_rows=rows_of)


# --- InternVL (GOT-OCR2 tiling) ------------------------------------------------------------------


def optimal_grid(height: int, width: int, tile_h: int, tile_w: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) with the aspect ratio closest to the image's (ties: more tiles while they fit)."""
    grids = sorted(((w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1)
                    if min_tiles <= w * h <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * tile_h * tile_w * grid[0] * grid[1]:
            best = grid
    return best


def gotocr2_tiles(img: Image.Image, spec: dict[str, Any]) -> list[np.ndarray]:
    th, tw = spec["tile"]["height"], spec["tile"]["width"]
    resample = spec.get("resample", "bicubic")
    if not spec.get("crop_to_patches") or spec.get("max_patches", 1) <= 1:
        return [np.asarray(resize(img, th, tw, resample))]
    cols, rows = optimal_grid(img.size[1], img.size[0], th, tw, spec["min_patches"], spec["max_patches"])
    canvas = np.asarray(resize(img, th * rows, tw * cols, "bicubic"))  # the processor's crop resize is bicubic
    tiles = [canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]
    if spec.get("use_thumbnail", True) and len(tiles) != 1:
        tiles.append(np.asarray(resize(img, th, tw, "bicubic")))
    return tiles


@register_preprocessor("gotocr2-tiles")
def prepare_gotocr2(items: list[Any], spec: dict[str, Any]) -> Prepared:
    tiles, info, rows, counts = [], [], [], []
    per_tile = int(spec["tokens_per_tile"])
    for item in items:
        img = load_image(item, max_pixels=int(spec.get("max_pixels", DEFAULT_MAX_PIXELS)))
        frames = gotocr2_tiles(img, spec)
        rows.append(slice(len(tiles), len(tiles) + len(frames)))
        tiles.extend(_finish(frames, spec))
        counts.append(per_tile * len(frames))
        info.append({**image_info(img), "tiles": len(frames)})
    return Prepared(inputs={"pixel_values": np.stack(tiles)}, tokens_per_item=counts, info=info, item_rows=rows)


# --- Idefics2 ----------------------------------------------------------------------------------------


def idefics2_size(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """``Idefics2ImageProcessor``'s rule: shrink the longer side to ``longest`` (keeping the aspect), then
    raise each side to at least ``shortest`` (each on its own, as transformers does)."""
    aspect = width / height
    if width >= height and width > longest:
        width, height = longest, int(longest / aspect)
    elif height > width and height > longest:
        height, width = longest, int(longest * aspect)
    return max(height, shortest), max(width, shortest)


def idefics2_crops(img: Image.Image, spec: dict[str, Any]) -> list[np.ndarray]:
    """One image -> HWC uint8 crops: the four quadrants and the whole image (splitting), or the image."""
    arr = np.asarray(img)
    if spec.get("do_image_splitting"):
        h, w = arr.shape[:2]
        mh, mw = h // 2, w // 2
        crops = [arr[:mh, :mw], arr[:mh, mw:], arr[mh:, :mw], arr[mh:, mw:], arr]
    else:
        crops = [arr]
    out = []
    for crop in crops:
        h, w = idefics2_size(crop.shape[0], crop.shape[1], spec["shortest_edge"], spec["longest_edge"])
        out.append(np.asarray(resize(Image.fromarray(np.ascontiguousarray(crop)), h, w, spec.get("resample", "bilinear"))))
    return out


@register_preprocessor("idefics2-resize")
def prepare_idefics2(items: list[Any], spec: dict[str, Any]) -> Prepared:
    """Variable-size crops: each runs through the encoder on its own (no padding, so no pixel mask)."""
    runs, info = [], []
    for item in items:
        img = load_image(item, max_pixels=int(spec.get("max_pixels", DEFAULT_MAX_PIXELS)))
        crops = _finish(idefics2_crops(img, spec), spec)
        runs.extend({"pixel_values": c[None]} for c in crops)
        info.append({**image_info(img), "crops": len(crops)})
    rows_of = [slice(i, i + 1) for i in range(len(runs))]
    return Prepared(inputs=runs[0], info=info, item_rows=rows_of, runs=runs)
