"""Video files to frames, with PyAV (FFmpeg's decoders, shipped in its wheel).

``load_video`` decodes a file and samples it at ``fps`` frames per second of video time (Qwen2-VL's
default is 2): ``n = round(duration * fps)`` frames, at least ``min_frames``, evenly spaced over the
decoded frames, then at most ``max_frames`` (evenly thinned; the result says how many were dropped).
Frames come back as RGB ``uint8 [F, H, W, 3]``.

A file that is not a video, has no video stream or no decodable frame is refused with a clear error;
the decoded size is bounded (``max_pixels`` per frame, ``max_decoded_frames`` in all) so a hostile
file cannot make the process allocate without limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.errors import InputError

DEFAULT_FPS = 2.0
MAX_DECODED_FRAMES = 4096
MAX_FRAME_PIXELS = 16_000_000


class VideoInputError(InputError):
    """A video input that cannot be read."""


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: float  # of the sampled frames (video time)
    info: dict[str, Any]


def _open(path: Path) -> Any:
    import av

    from edgebridge.preprocess.image import check_regular_file

    try:
        check_regular_file(path, "video")
    except InputError as exc:
        raise VideoInputError(exc.message, hint=exc.hint) from None
    if path.stat().st_size == 0:
        raise VideoInputError(f"video file '{path}' is empty.", hint="Pass an MP4, MKV, WebM or AVI video.")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoInputError(f"'{path.name}' is not a video edgebridge can read ({type(exc).__name__}).",
                              hint="Pass an MP4, MKV, WebM or AVI video.") from None
    if not container.streams.video:
        container.close()
        raise VideoInputError(f"'{path.name}' has no video stream.", hint="Pass a file with moving pictures.")
    return container


def decode(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    """Every frame of the first video stream as RGB arrays, and the stream's duration in seconds."""
    import av

    container = _open(Path(path))
    frames: list[np.ndarray] = []
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.width * frame.height > MAX_FRAME_PIXELS:
                raise VideoInputError(f"'{Path(path).name}' has {frame.width}x{frame.height} frames, more than "
                                      f"{MAX_FRAME_PIXELS} pixels each.", hint="Downscale the video.")
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) > MAX_DECODED_FRAMES:
                raise VideoInputError(f"'{Path(path).name}' has more than {MAX_DECODED_FRAMES} frames.",
                                      hint="Cut the clip shorter.")
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    except av.FFmpegError as exc:
        raise VideoInputError(f"'{Path(path).name}' could not be decoded ({type(exc).__name__}).",
                              hint="The file is damaged or uses a codec this FFmpeg build lacks.") from None
    finally:
        container.close()
    if not frames:
        raise VideoInputError(f"'{Path(path).name}' holds no decodable frame.", hint="Pass a video with frames.")
    return frames, len(frames) / rate


def load_video(item: Any, fps: float = DEFAULT_FPS, max_frames: int | None = None, min_frames: int = 2) -> Video:
    """A path (or ``[F, H, W, 3]`` uint8 frames at ``fps``) -> frames sampled at ``fps``, with what was done."""
    if isinstance(item, np.ndarray):
        if item.ndim != 4 or item.shape[-1] != 3 or item.dtype != np.uint8 or not item.shape[0]:
            raise VideoInputError(f"a video array must be uint8 [frames, height, width, 3], got {item.dtype} "
                                  f"{item.shape}.")
        frames, seconds = list(item), item.shape[0] / fps
    elif isinstance(item, (str, os.PathLike)):
        frames, seconds = decode(item)
    else:
        raise VideoInputError(f"a video is a file path or a uint8 frame array, got {type(item).__name__}.")
    wanted = max(min_frames, int(round(seconds * fps)))
    picks = np.unique(np.linspace(0, len(frames) - 1, min(wanted, len(frames))).round().astype(int))
    dropped = 0
    if max_frames is not None and len(picks) > max_frames:
        dropped = len(picks) - max_frames
        picks = picks[np.unique(np.linspace(0, len(picks) - 1, max_frames).round().astype(int))]
    sampled_fps = len(picks) / seconds if seconds > 0 else fps
    info = {"seconds": round(seconds, 3), "decoded_frames": len(frames), "frames": int(len(picks)),
            "fps": round(sampled_fps, 4), "dropped_frames": int(dropped), "frame_indices": picks.tolist(),
            "source_fps": round(len(frames) / seconds, 6) if seconds > 0 else fps}
    return Video(np.stack([frames[i] for i in picks]), sampled_fps, info)
