"""Qwen-VL native-resolution preprocessing (``qwen-vl-patches``), in numpy + PIL.

As Qwen2-VL's image processor does it (transformers 4.57 ``image_processing_qwen2_vl.py``):

1. ``smart_resize``: height and width rounded to multiples of ``patch_size * merge_size`` (28),
   scaled so that ``min_pixels <= H * W <= max_pixels``, aspect ratio kept as closely as possible;
2. resize through PIL (bicubic), rescale, normalize (``image.normalized_chw``);
3. frames repeated to a multiple of ``temporal_patch_size`` (an image is one frame, repeated);
4. patches ``[t * h * w, C * temporal * patch * patch]`` in the merger's order: every 2x2 block of
   patches that becomes one LLM token is contiguous.

The vision graph also takes what transformers computes from ``grid_thw`` inside the model, so the
exported graph has no data-dependent shapes: each patch's 2-D rotary angles (``rotary_pos_emb``,
``[N, head_dim / 2]``) and an additive attention bias (``[N, N]``: 0 within one frame's patches,
``MASKED`` across frames, as the model attends frame by frame).

Qwen2.5-VL's tower attends within windows in most blocks (``window`` in the spec: the window's side
in merged tokens): its patches are fed in window order (in units of the 2x2 blocks the merger folds),
and ``reverse_index`` gives the merged tokens back their raster order (transformers'
``get_window_index`` and its ``argsort``). Bundles with ``window_padded`` keep every window whole
(empty slots as masked zero rows, ``window_key_bias``) so the graph attends window by window; older
ones drop them and mask across windows with ``window_bias`` (``window_layout``).

Qwen3-VL adds a learned position embedding of ``grid_per_side``² entries, bilinearly interpolated to
each image's patch grid (``pos_embed`` in the spec): the runtime gives each patch its four table
rows (``pos_index``, ``[4, N]``) and weights (``pos_weight``), the graph does the weighted lookup
(transformers' ``fast_pos_embed_interpolate``).

Each image is its own encoder run (sizes differ); the item's LLM tokens are ``t * h * w / 4`` and
``info`` carries its grid (``llm_grid``: t, h/2, w/2), from which the prompt plan numbers M-RoPE
positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgebridge.errors import ImageInputError, InputError
from edgebridge.preprocess import MediaOptions, Prepared, register_preprocessor
from edgebridge.preprocess.image import DEFAULT_MAX_PIXELS, image_info, load_image, normalized_chw, resize

MASKED = -1e9  # additive bias between patches of different frames: exp() of it is exactly 0 in float32


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): multiples of ``factor`` with ``min_pixels <= h * w <= max_pixels``, aspect kept."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise ImageInputError(f"an image of {width}x{height} pixels has an aspect ratio above 200, which Qwen-VL "
                              "models do not take.", hint="Crop the image closer to its content.")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(frames: np.ndarray, patch: int, temporal: int, merge: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``frames [F, C, H, W]`` -> (patches ``[t*h*w, C*temporal*patch*patch]``, grid (t, h, w))."""
    if frames.shape[0] % temporal:
        pad = np.repeat(frames[-1:], temporal - frames.shape[0] % temporal, axis=0)
        frames = np.concatenate([frames, pad])
    f, c, height, width = frames.shape
    t, h, w = f // temporal, height // patch, width // patch
    x = frames.reshape(t, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(t * h * w, c * temporal * patch * patch)), (t, h, w)


def rotary_angles(grid: tuple[int, int, int], merge: int, dim: int, theta: float = 10000.0) -> np.ndarray:
    """Each patch's 2-D rotary angles ``[t*h*w, dim]``: ``dim / 2`` frequencies of its row, then of its
    column (the vision tower's ``rot_pos_emb``), in ``patchify``'s order."""
    t, h, w = grid
    rows = np.arange(h).reshape(h // merge, merge, 1, 1).repeat(w // merge, 2).repeat(merge, 3)
    cols = np.arange(w).reshape(1, 1, w // merge, merge).repeat(h // merge, 0).repeat(merge, 1)
    rows = rows.transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.transpose(0, 2, 1, 3).reshape(-1)
    inv_freq = (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)
    table = np.outer(np.arange(max(h, w), dtype=np.float32), inv_freq).astype(np.float32)
    angles = np.concatenate([table[rows], table[cols]], axis=1)
    return np.ascontiguousarray(np.tile(angles, (t, 1)), dtype=np.float32)


def frame_bias(grid: tuple[int, int, int]) -> np.ndarray:
    """Additive attention bias ``[N, N]``: patches attend within their own temporal patch only."""
    t, h, w = grid
    frame = np.repeat(np.arange(t), h * w)
    return _bias(frame[:, None] == frame[None, :])


def pos_embed_interpolation(grid: tuple[int, int, int], merge: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[4, N]`` table rows, ``[4, N]`` weights): each patch's bilinear blend of a ``side`` x ``side``
    learned position table, in ``patchify``'s order (float32 as torch computes it)."""
    t, h, w = grid
    hs = np.linspace(0, side - 1, h, dtype=np.float32)
    ws = np.linspace(0, side - 1, w, dtype=np.float32)
    h0, w0 = hs.astype(np.int64), ws.astype(np.int64)
    h1, w1 = np.minimum(h0 + 1, side - 1), np.minimum(w0 + 1, side - 1)
    dh, dw = (hs - h0).astype(np.float32), (ws - w0).astype(np.float32)
    index = [h0[:, None] * side + w0[None], h0[:, None] * side + w1[None], h1[:, None] * side + w0[None],
             h1[:, None] * side + w1[None]]
    weight = [(1 - dh)[:, None] * (1 - dw)[None], (1 - dh)[:, None] * dw[None], dh[:, None] * (1 - dw)[None],
              dh[:, None] * dw[None]]

    def blocks(a: np.ndarray) -> np.ndarray:  # raster [h, w] -> merge-block order, repeated per frame
        b = a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)
        return np.tile(b, t)

    return (np.stack([blocks(i) for i in index]).astype(np.int64),
            np.stack([blocks(x.astype(np.float32)) for x in weight]).astype(np.float32))


def window_order(grid: tuple[int, int, int], merge: int, window: int) -> np.ndarray:
    """Merged-token index at each slot of the windows (``[windows, window * window]``, -1 where a window
    cut at the frame's edge has no token): windows of ``window`` x ``window`` merged tokens, row by row
    per frame, as transformers' ``get_window_index`` pads and orders them."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    pad_h, pad_w = -h % window, -w % window  # transformers pads a full window more when divisible; same order
    index = np.full((t, h + pad_h, w + pad_w), -1)
    index[:, :h, :w] = np.arange(t * h * w).reshape(t, h, w)
    windows = index.reshape(t, (h + pad_h) // window, window, (w + pad_w) // window, window).transpose(0, 1, 3, 2, 4)
    return windows.reshape(-1, window * window)


def window_layout(patches: np.ndarray, angles: np.ndarray, grid: tuple[int, int, int], merge: int, window: int,
                  padded: bool) -> dict[str, np.ndarray]:
    """Qwen2.5-VL's inputs in window order (in units of the 2x2 blocks the merger folds).

    ``padded`` (bundles whose graph attends window by window): every window keeps all its slots, empty
    ones as zero rows that no row attends to (``window_key_bias [P]``), so the graph can cut the rows
    into equal windows; ``attention_bias`` then also masks them. Otherwise the empty slots are dropped and
    ``window_bias [N, N]`` masks across windows (the graph attends over every pair, ~11x the work).
    ``reverse_index``: the slot of each merged token in raster order."""
    slots = window_order(grid, merge, window)
    window_id = np.repeat(np.arange(slots.shape[0]), slots.shape[1])
    slots = slots.reshape(-1)
    filled = slots >= 0
    if not padded:
        window_id, slots, filled = window_id[filled], slots[filled], filled[filled]
    unit = merge * merge
    real = np.repeat(filled, unit)
    rows = (np.maximum(slots, 0)[:, None] * unit + np.arange(unit)).reshape(-1)
    reverse = np.empty(int(filled.sum()), np.int64)
    reverse[slots[filled]] = np.nonzero(filled)[0]
    pixels, rotary = patches[rows], angles[rows]  # fancy indexing copies: zeroed in place
    pixels[~real], rotary[~real] = 0, 0
    out = {"pixel_values": pixels, "rotary_pos_emb": rotary, "reverse_index": reverse}
    if not padded:
        same = np.repeat(window_id, unit)
        out["window_bias"] = _bias(same[:, None] == same[None, :])
        return out
    frame = np.where(real, rows // (grid[1] * grid[2]), -1)
    out["attention_bias"] = _bias((frame[:, None] == frame[None, :]) & real[None, :])
    out["window_key_bias"] = _bias(real)
    return out


def _bias(attend: np.ndarray) -> np.ndarray:
    """Additive float32 attention bias: 0 where ``attend``, ``MASKED`` elsewhere."""
    return np.where(attend, np.float32(0.0), np.float32(MASKED))


def vision_inputs(frames: np.ndarray, spec: dict[str, Any]) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    """Normalized ``frames [F, C, H, W]`` -> the vision graph's inputs for one image or video, and its grid."""
    merge = int(spec["merge_size"])
    patches, grid = patchify(frames, int(spec["patch_size"]), int(spec["temporal_patch_size"]), merge)
    rotary = spec["rotary"]
    angles = rotary_angles(grid, merge, int(rotary["dim"]), float(rotary.get("theta", 10000.0)))
    padded_windows = bool(spec.get("window")) and bool(spec.get("window_padded"))
    inputs = {"pixel_values": patches, "rotary_pos_emb": angles}
    if not padded_windows:  # (padded windows: the layout writes its own, masking the empty slots)
        inputs["attention_bias"] = frame_bias(grid)
    if spec.get("pos_embed"):
        inputs["pos_index"], inputs["pos_weight"] = pos_embed_interpolation(grid, merge,
                                                                            int(spec["pos_embed"]["grid_per_side"]))
    if spec.get("window"):
        inputs.update(window_layout(patches, angles, grid, merge, int(spec["window"]), bool(spec.get("window_padded"))))
    return inputs, grid


def pixel_budget(spec: dict[str, Any], options: MediaOptions | None) -> tuple[int, int]:
    """(min_pixels, max_pixels): the processor's, or the call's token budget (one token = ``factor``² pixels)."""
    factor = int(spec["patch_size"]) * int(spec["merge_size"])
    low, high = int(spec["min_pixels"]), int(spec["max_pixels"])
    if options is not None and options.min_image_tokens is not None:
        low = int(options.min_image_tokens) * factor * factor
    if options is not None and options.max_image_tokens is not None:
        high = int(options.max_image_tokens) * factor * factor
    if low > high:
        raise InputError(f"the image token budget is empty: at least {low // factor ** 2} tokens and at most "
                         f"{high // factor ** 2}.", hint="Raise --max-image-tokens or lower --min-image-tokens.")
    return low, high


def image_frames(item: Any, spec: dict[str, Any], budget: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """One image -> (``[1, C, H, W]`` float32 frames, info with its original and resized size)."""
    img = load_image(item, max_pixels=int(spec.get("max_image_pixels", DEFAULT_MAX_PIXELS)))
    factor = int(spec["patch_size"]) * int(spec["merge_size"])
    height, width = smart_resize(img.size[1], img.size[0], factor, *budget)
    if height * width > budget[1]:  # each side is at least one token: a very long image overflows a small budget
        raise ImageInputError(
            f"a {img.size[0]}x{img.size[1]} image needs at least {height * width // factor ** 2} tokens "
            f"({height}x{width} pixels), more than the budget of {budget[1] // factor ** 2}.",
            hint="Raise --max-image-tokens, or crop the image closer to its content.")
    chw = normalized_chw(np.asarray(resize(img, height, width, spec.get("resample", "bicubic"))), spec)
    return chw[None], {**image_info(img), "resized": [height, width]}


@register_preprocessor("qwen-vl-patches", options=("min_image_tokens", "max_image_tokens"))
def prepare_qwen_vl(items: list[Any], spec: dict[str, Any], options: MediaOptions | None = None) -> Prepared:
    """Images -> one vision-graph run each; tokens per image ``t * h * w / merge**2`` within the budget."""
    runs, info, tokens = [], [], []
    merge = int(spec["merge_size"])
    budget = pixel_budget(spec, options)
    for item in items:
        frames, meta = image_frames(item, spec, budget)
        inputs, (t, h, w) = vision_inputs(frames, spec)
        runs.append(inputs)
        tokens.append(t * h * w // merge ** 2)
        info.append({**meta, "grid_thw": [t, h, w], "llm_grid": [t, h // merge, w // merge], "tokens": tokens[-1]})
    return Prepared(inputs=runs[0], tokens_per_item=tokens, info=info,
                    item_rows=[slice(i, i + 1) for i in range(len(runs))], runs=runs)


def temporal_index(t: int, seconds_per_grid: float, tokens_per_second: int | None) -> list[int]:
    """Each temporal patch's M-RoPE t offset: its index (Qwen2-VL), or its time in ``tokens_per_second``
    units (Qwen2.5-VL: index x seconds per patch x tokens per second, truncated, in float32 as torch)."""
    if not tokens_per_second:
        return list(range(t))
    scaled = (np.arange(t) * np.float32(seconds_per_grid)).astype(np.float32) * np.float32(tokens_per_second)
    return [int(x) for x in scaled.astype(np.float32)]


def video_frames(video: Any, spec: dict[str, Any], budget: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Sampled RGB frames -> (``[F, C, H, W]`` float32, resized like an image of the first frame's size)."""
    frames = video.frames
    factor = int(spec["patch_size"]) * int(spec["merge_size"])
    height, width = smart_resize(frames.shape[1], frames.shape[2], factor, *budget)
    from PIL import Image

    out = [normalized_chw(np.asarray(resize(Image.fromarray(f), height, width, spec.get("resample", "bicubic"))), spec)
           for f in frames]
    return np.stack(out), {"width": int(frames.shape[2]), "height": int(frames.shape[1]), "resized": [height, width]}


@register_preprocessor("qwen-vl-video", options=("min_image_tokens", "max_image_tokens", "video_fps", "max_frames"))
def prepare_qwen_vl_video(items: list[Any], spec: dict[str, Any], options: MediaOptions | None = None) -> Prepared:
    """Videos -> one vision-graph run each: frames sampled at ``video_fps`` (default the spec's ``fps``),
    two per temporal patch; each frame's token budget is the image one. ``info`` gives the grid, the
    sampling and ``t_index`` (each temporal patch's M-RoPE offset: Qwen2.5-VL counts it in time)."""
    from edgebridge.preprocess.video import load_video

    options = options or MediaOptions()
    fps = float(options.video_fps or spec.get("fps", 2.0))
    max_frames = int(options.max_frames or spec.get("max_frames", 64))
    runs, info, tokens = [], [], []
    merge, temporal = int(spec["merge_size"]), int(spec["temporal_patch_size"])
    budget = pixel_budget(spec, options)
    for item in items:
        video = load_video(item, fps=fps, max_frames=max_frames, min_frames=temporal)
        frames, meta = video_frames(video, spec, budget)
        inputs, (t, h, w) = vision_inputs(frames, spec)
        runs.append(inputs)
        tokens.append(t * h * w // merge ** 2)
        seconds_per_grid = temporal / video.fps
        entry = {**meta, **video.info, "grid_thw": [t, h, w], "llm_grid": [t, h // merge, w // merge],
                 "tokens": tokens[-1], "second_per_grid": seconds_per_grid,
                 "t_index": temporal_index(t, seconds_per_grid, spec.get("tokens_per_second"))}
        if spec.get("timestamps"):  # Qwen3-VL: each temporal patch its own run, behind its time in the prompt
            entry.update(timestamps=frame_times(video.info["frame_indices"], video.info["source_fps"], temporal),
                         run_grids=[[1, h // merge, w // merge]] * t, run_t_index=[[0]] * t)
        info.append(entry)
    if spec.get("timestamps"):
        counts = [i["run_grids"][0][1] * i["run_grids"][0][2] for i in info for _ in i["run_grids"]]
        return Prepared(inputs=runs[0], tokens_per_item=counts, info=info, runs=runs,
                        run_items=[len(i["run_grids"]) for i in info])
    return Prepared(inputs=runs[0], tokens_per_item=tokens, info=info,
                    item_rows=[slice(i, i + 1) for i in range(len(runs))], runs=runs)


def frame_times(indices: list[int], source_fps: float, temporal: int) -> list[float]:
    """Each temporal patch's time in seconds: the mean of its first and last frame's (Qwen3-VL's processor;
    an odd last patch repeats its last frame, as the patches do)."""
    indices = list(indices) + [indices[-1]] * (-len(indices) % temporal)
    times = [i / source_fps for i in indices]
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]
