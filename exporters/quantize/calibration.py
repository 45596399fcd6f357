"""Calibration and evaluation inputs for quantized encoders.

The default image set is documented and offline: the photographs that ship inside
scikit-image (``SKIMAGE_PHOTOS``; grayscale ones are converted to RGB) plus seeded synthetic
images (gradients, checkerboards, noise, flat colours) that stretch activation ranges. Photos
are split in two: even positions calibrate, odd positions evaluate, so drift is measured on
images the calibration never saw. A ``--calibration DIR`` of images replaces the photos (the
same even/odd split applies; synthetic images still join the calibration half).

Every item goes through the bundle's own preprocessing (the runtime's numpy code), so the
quantizer sees exactly the inputs the runtime will feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.errors import ExportError
from edgebridge.preprocess import get_preprocessor

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
                  "immunohistochemistry", "moon", "coins", "clock", "colorwheel", "grass", "brick", "cell")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
N_SYNTHETIC = 6


@dataclass
class CalibrationSet:
    """Encoder inputs (dicts of batch-1 arrays) for calibration and for measuring drift."""

    calibrate: list[dict[str, np.ndarray]]
    evaluate: list[dict[str, np.ndarray]]
    description: dict[str, Any]


def synthetic_images(n: int = N_SYNTHETIC, seed: int = 0, size: int = 256) -> list[np.ndarray]:
    """Seeded HWC uint8 images that span the pixel range: gradients, checkers, noise, flat colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = np.stack([xx, yy, 1 - xx], axis=-1)
        elif kind == 1:
            tiles = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2)[..., None]
            img = tiles * rng.uniform(0.2, 1.0, 3)
        elif kind == 2:
            img = rng.uniform(0, 1, (size, size, 3))
        else:
            img = np.ones((size, size, 3)) * rng.uniform(0, 1, 3)
        images.append((img * 255).round().astype(np.uint8))
    return images


def _photos(folder: Path | None) -> tuple[list[Any], list[str]]:
    if folder is None:
        from skimage import data

        return [getattr(data, name)() for name in SKIMAGE_PHOTOS], [f"skimage.data.{n}" for n in SKIMAGE_PHOTOS]
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if len(paths) < 2:
        raise ExportError(
            f"the calibration folder '{folder}' needs at least 2 images ({', '.join(sorted(IMAGE_SUFFIXES))}).",
            hint="Point --calibration at a folder of representative images, or leave it out for the default set.",
        )
    return [str(p) for p in paths], [p.name for p in paths]


def image_calibration(preprocessing: dict[str, Any], folder: Path | None = None) -> CalibrationSet:
    prepare = get_preprocessor(preprocessing["kind"])
    items, names = _photos(folder)

    def arrays(batch: list[Any]) -> list[dict[str, np.ndarray]]:
        out = []
        for item in batch:
            prepared = prepare([item], preprocessing)
            out.append({k: v for k, v in prepared.inputs.items()})
        return out

    calib_items = items[0::2] + synthetic_images()
    eval_items = items[1::2]
    return CalibrationSet(
        calibrate=arrays(calib_items),
        evaluate=arrays(eval_items),
        description={
            "source": str(folder) if folder else "default",
            "calibrate": names[0::2] + [f"synthetic-{i}" for i in range(N_SYNTHETIC)],
            "evaluate": names[1::2],
        },
    )


# modality -> builder(preprocessing, folder) of its calibration/evaluation set
CALIBRATION_BUILDERS = {"image": image_calibration}


def calibration_for(modality: str, preprocessing: dict[str, Any], folder: Path | None = None) -> CalibrationSet:
    """The calibration/evaluation set for one encoder, by modality."""
    if modality not in CALIBRATION_BUILDERS:
        raise ExportError(f"no calibration set for {modality} encoders; quantize this component with a weight-only "
                          "precision (fp16, int8, int4) instead.")
    return CALIBRATION_BUILDERS[modality](preprocessing, folder)
