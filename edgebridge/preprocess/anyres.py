"""LLaVA-NeXT / LLaVA-OneVision "anyres": tiles on a grid of pinpoints, and the host side of their bridge.

Preprocessing (``llava-anyres``, equal to ``LlavaNextImageProcessor`` / ``LlavaOnevisionImageProcessor``):
pick the pinpoint resolution that keeps the most of the image and wastes the least, resize into it
keeping the aspect (sides rounded up), pad with zeros to it (centred), cut ``tile x tile`` tiles, and put
the whole image resized to one tile first (the base). OneVision with several images in one prompt
(``multi_image: square``) pads each to a square in the mean colour and uses that one tile only.

Packing (after the encoder graph made ``[T, N, D]`` features of an image's tiles; HF's
``pack_image_features``): the tiles' features laid out as the padded grid, the padding rows or columns
cut again (unpad, to the image's aspect), OneVision's ``anyres_max_K`` shrinks a grid larger than K
tiles by bilinear interpolation, a learned ``image_newline`` vector ends every row, the base tile's
features go first. The token count of each image follows from the same arithmetic, so the prompt plan
knows it before anything is encoded.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from edgebridge.errors import ManifestError
from edgebridge.preprocess import Prepared, register_preprocessor
from edgebridge.preprocess.image import DEFAULT_MAX_PIXELS, image_info, load_image, normalized_chw, resize


def best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) pinpoint keeping the most pixels of the image, then wasting the least."""
    best, best_effective, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(h), int(w)), effective, waste
    if best is None:
        raise ManifestError("the bundle's anyres preprocessing lists no grid pinpoints.")
    return best


def fitted_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The image resized into ``target`` keeping its aspect (the other side rounded up, capped)."""
    th, tw = target
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def anyres_tiles(img: Image.Image, spec: Mapping[str, Any]) -> tuple[list[np.ndarray], tuple[int, int]]:
    """HWC uint8 tiles (base first) and the (rows, cols) grid of the rest."""
    tile, resample = int(spec["tile"]), spec.get("resample", "bicubic")
    width, height = img.size
    target = best_resolution(height, width, spec["pinpoints"])
    new_h, new_w = fitted_size(height, width, target)
    canvas = np.zeros((target[0], target[1], 3), dtype=np.uint8)
    top, left = (target[0] - new_h) // 2, (target[1] - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = np.asarray(resize(img, new_h, new_w, resample))
    rows, cols = target[0] // tile, target[1] // tile
    tiles = [canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]
    return [np.asarray(resize(img, tile, tile, resample)), *tiles], (rows, cols)


def square_tile(img: Image.Image, spec: Mapping[str, Any]) -> np.ndarray:
    """OneVision's multi-image form: padded to a square in the mean colour, resized to one tile."""
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = [int(m * 255) for m in spec["mean"]]
    top, left = ((side - h) // 2, 0) if w > h else (0, (side - w) // 2)
    out[top:top + h, left:left + w] = arr
    return np.asarray(resize(Image.fromarray(out), int(spec["tile"]), int(spec["tile"]), spec.get("resample", "bicubic")))


# --- the token arithmetic and the packing ---------------------------------------------------------


def unpadded_shape(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int, int, int]:
    """(rows, cols) of the feature grid ``grid_h x grid_w`` once the padding is cut, and where they start."""
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        pad = (grid_h - new_h) // 2
        return grid_h - 2 * pad, grid_w, pad, 0
    new_w = int(round(width * (grid_h / height), 7))
    pad = (grid_w - new_w) // 2
    return grid_h, grid_w - 2 * pad, 0, pad


def pooled_shape(rows: int, cols: int, side: int, max_tiles: int | None) -> tuple[int, int]:
    """OneVision's ``anyres_max_K``: a grid over K tiles' worth (by more than 10 %) is scaled down."""
    if not max_tiles:
        return rows, cols
    ratio = math.sqrt(rows * cols / (max_tiles * side * side))
    return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)


def item_tokens(info: Mapping[str, Any], spec: Mapping[str, Any]) -> int:
    side = int(spec["features_per_side"])
    if info["grid"] == [0, 0]:  # a single tile (OneVision's multi-image form): its features and a newline
        return side * side + 1
    rows, cols, _, _ = unpadded_shape(info["height"], info["width"], info["grid"][0] * side, info["grid"][1] * side)
    rows, cols = pooled_shape(rows, cols, side, spec.get("max_tiles"))
    return side * side + rows * (cols + 1)


def bilinear(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``[D, H, W] -> [D, rows, cols]`` as torch's ``interpolate(mode="bilinear", align_corners=False)``."""
    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    r0, r1, wr = taps(x.shape[1], rows)
    c0, c1, wc = taps(x.shape[2], cols)
    top = x[:, r0] * (1 - wr)[None, :, None] + x[:, r1] * wr[None, :, None]
    return top[:, :, c0] * (1 - wc)[None, None, :] + top[:, :, c1] * wc[None, None, :]


def pack(feats: np.ndarray, info: Mapping[str, Any], spec: Mapping[str, Any], newline: np.ndarray) -> np.ndarray:
    """``[T, N, D]`` tile features of one image -> its ``[n, D]`` embeddings, as HF's ``pack_image_features``."""
    side, dim = int(spec["features_per_side"]), feats.shape[-1]
    base = feats[0]
    if info["grid"] == [0, 0]:
        return np.concatenate([base, newline[None]]).astype(np.float32)
    gh, gw = info["grid"]
    grid = feats[1:].reshape(gh, gw, side, side, dim).transpose(4, 0, 2, 1, 3).reshape(dim, gh * side, gw * side)
    rows, cols, top, left = unpadded_shape(info["height"], info["width"], gh * side, gw * side)
    grid = grid[:, top:top + rows, left:left + cols]
    pooled = pooled_shape(rows, cols, side, spec.get("max_tiles"))
    if pooled != (rows, cols):
        grid = bilinear(grid, *pooled)
    grid = np.concatenate([grid, np.broadcast_to(newline[:, None, None], (dim, grid.shape[1], 1))], axis=2)
    return np.concatenate([base, grid.reshape(dim, -1).T]).astype(np.float32)


def _pack_item(spec: Mapping[str, Any], rows: np.ndarray, info: Mapping[str, Any],
               bridge: Mapping[str, Any]) -> np.ndarray:
    newline = np.asarray(bridge.get("image_newline") or [], dtype=np.float32)
    if newline.shape != (rows.shape[-1],):
        raise ManifestError(f"the bundle's image_newline has {newline.size} values; the embeddings are "
                            f"{rows.shape[-1]} wide.", hint="Re-export the bundle.")
    return pack(rows, info, spec, newline)


@register_preprocessor("llava-anyres")
def prepare_anyres(items: list[Any], spec: dict[str, Any]) -> Prepared:
    """Images -> ``pixel_values [sum(T), C, S, S]``, each image's rows, its token count and grid."""
    tiles: list[np.ndarray] = []
    info, rows = [], []
    square = spec.get("multi_image") == "square" and len(items) > 1
    for item in items:
        img = load_image(item, max_pixels=int(spec.get("max_pixels", DEFAULT_MAX_PIXELS)))
        frames, grid = ([square_tile(img, spec)], (0, 0)) if square else anyres_tiles(img, spec)
        rows.append(slice(len(tiles), len(tiles) + len(frames)))
        tiles.extend(normalized_chw(t, spec) for t in frames)
        info.append({**image_info(img), "grid": list(grid)})
    counts = [item_tokens(i, spec) for i in info]
    return Prepared(inputs={"pixel_values": np.stack(tiles)}, tokens_per_item=counts, info=info, item_rows=rows,
                    pack=partial(_pack_item, spec))
