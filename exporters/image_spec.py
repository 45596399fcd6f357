"""An HF image processor's settings as a ``resize-crop-normalize`` manifest spec.

The runtime reproduces these steps in numpy/PIL (``edgebridge.preprocess.image``). Processors
with steps it does not reproduce (padding, tiling, ...) are refused here, by name, rather than
exported with preprocessing that silently differs.
"""

from __future__ import annotations

from typing import Any

from edgebridge.errors import UnsupportedModelError
from edgebridge.preprocess.image import RESAMPLE_NAMES

# step flags we cannot reproduce in the plain resize-crop-normalize kind
_UNSUPPORTED_FLAGS = ("do_pad", "do_image_splitting", "do_reduce_labels", "do_flip_channel_order")


def _resample_name(value: Any) -> str:
    number = int(getattr(value, "value", value))
    if number not in RESAMPLE_NAMES:
        raise UnsupportedModelError(f"image resample mode {value!r} is not supported.")
    return RESAMPLE_NAMES[number]


def pixel_steps(image_processor: Any) -> dict[str, Any]:
    """Resample mode, rescale factor and mean/std of a processor (``None`` for a step it skips): the
    per-pixel part that the tiling preprocessing kinds share."""
    ip = image_processor
    return {
        "resample": _resample_name(ip.resample),
        "rescale_factor": float(ip.rescale_factor) if ip.do_rescale else None,
        "mean": [float(x) for x in ip.image_mean] if ip.do_normalize else None,
        "std": [float(x) for x in ip.image_std] if ip.do_normalize else None,
    }


def image_spec(image_processor: Any) -> dict[str, Any]:
    """Read a CLIP/SigLIP-style image processor into the manifest's preprocessing dict."""
    for flag in _UNSUPPORTED_FLAGS:
        if getattr(image_processor, flag, False):
            raise UnsupportedModelError(
                f"{type(image_processor).__name__} sets {flag}=True, which the plain image preprocessing does not do.",
                hint="This model needs a family with its own preprocessing kind.",
            )
    spec: dict[str, Any] = {"kind": "resize-crop-normalize", "processor": type(image_processor).__name__}
    if getattr(image_processor, "do_resize", True):
        size = dict(image_processor.size)
        if not ({"shortest_edge"} <= size.keys() or {"height", "width"} <= size.keys()):
            raise UnsupportedModelError(f"image processor size {size} is not supported.")
        spec["resize"] = {k: int(v) for k, v in size.items() if v is not None}
        spec["resample"] = _resample_name(getattr(image_processor, "resample", 3))
    if getattr(image_processor, "do_center_crop", False):
        crop = dict(image_processor.crop_size)
        spec["center_crop"] = {"height": int(crop["height"]), "width": int(crop["width"])}
    if getattr(image_processor, "do_rescale", True):
        spec["rescale_factor"] = float(image_processor.rescale_factor)
    if getattr(image_processor, "do_normalize", True):
        spec["mean"] = [float(x) for x in image_processor.image_mean]
        spec["std"] = [float(x) for x in image_processor.image_std]
    spec["convert_rgb"] = True
    return spec
