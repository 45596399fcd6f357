"""Calibration and evaluation inputs for quantized encoders.

The default sets are documented and offline. Images: the photographs that ship inside
scikit-image (``SKIMAGE_PHOTOS``; grayscale ones are converted to RGB) plus seeded synthetic
images (gradients, checkerboards, noise, flat colours) that stretch activation ranges. Photos
are split in two: even positions calibrate, odd positions evaluate, so drift is measured on
images the calibration never saw. A ``--calibration DIR`` of images replaces the photos (the
same even/odd split applies; synthetic images still join the calibration half).

Audio: the sentences in ``SPEECH_SENTENCES`` synthesized by espeak-ng and the alsa-utils voice
recordings (even/odd split), plus seeded synthetic clips (tones, a chirp, noise, near-silence) in
the calibration half; ``--calibration DIR`` of WAV files replaces the speech.

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


SPEECH_SENTENCES = (
    "Hello, how are you today?", "What is the capital of France?", "Please turn on the lights in the kitchen.",
    "The weather will be sunny with a light breeze.", "Set a timer for ten minutes.",
    "Read me the latest news headlines.", "How far is the moon from the earth?", "Play some relaxing music.",
)
AUDIO_SUFFIXES = {".wav"}
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


def synthetic_audio(n: int = N_SYNTHETIC, rate: int = 16000, seed: int = 0) -> list[np.ndarray]:
    """Seeded clips that span the front end's range: tones, a chirp, noise bursts, near-silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(3 * rate) / rate
    clips = [0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * (200 + 1200 * t) * t),
             0.2 * rng.standard_normal(t.size), 0.001 * rng.standard_normal(t.size)]
    while len(clips) < n:
        clips.append(0.4 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) * (rng.uniform(0, 1, t.size) > 0.5))
    return [c.astype(np.float32) for c in clips[:n]]


def _speech(folder: Path | None) -> tuple[list[Any], list[str]]:
    """Real speech: a folder of WAVs, else espeak-ng sentences and the alsa-utils recordings."""
    import shutil
    import subprocess
    import tempfile

    if folder is not None:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in AUDIO_SUFFIXES) \
            if Path(folder).is_dir() else []
        if len(paths) < 2:
            raise ExportError(f"the calibration folder '{folder}' needs at least 2 WAV files.")
        return [str(p) for p in paths], [p.name for p in paths]
    items, names = [], []
    if shutil.which("espeak-ng"):
        from edgebridge.preprocess.audio import read_wav

        with tempfile.TemporaryDirectory() as tmp:
            for i, sentence in enumerate(SPEECH_SENTENCES):
                path = Path(tmp) / f"{i}.wav"
                subprocess.run(["espeak-ng", "-w", str(path), sentence], check=True, capture_output=True)
                items.append(read_wav(path))
                names.append(f"espeak-ng: {sentence}")
    for path in sorted(ALSA_SOUNDS.glob("*.wav")):
        items.append(str(path))
        names.append(f"alsa-utils: {path.name}")
    if len(items) < 2:
        raise ExportError("no speech for audio calibration: install espeak-ng or alsa-utils, or pass --calibration DIR.")
    return items, names


def audio_calibration(preprocessing: dict[str, Any], folder: Path | None = None) -> CalibrationSet:
    """Speech (espeak-ng sentences, alsa-utils recordings, or a folder) split even/odd, plus synthetic clips."""
    prepare = get_preprocessor(preprocessing["kind"])
    items, names = _speech(folder)
    synthetic = synthetic_audio(rate=preprocessing["sample_rate"])

    def arrays(batch: list[Any]) -> list[dict[str, np.ndarray]]:
        out = []
        for item in batch:
            prepared = prepare([item], preprocessing)
            rows = prepared.item_rows[0] if prepared.item_rows else slice(0, 1)
            out.append({k: v[rows][:1] for k, v in prepared.inputs.items()})  # the first window of each clip
        return out

    return CalibrationSet(
        calibrate=arrays(items[0::2] + synthetic),
        evaluate=arrays(items[1::2]),
        description={"source": str(folder) if folder else "default",
                     "calibrate": names[0::2] + [f"synthetic-{i}" for i in range(len(synthetic))],
                     "evaluate": names[1::2]},
    )


# modality -> builder(preprocessing, folder) of its calibration/evaluation set
CALIBRATION_BUILDERS = {"image": image_calibration, "audio": audio_calibration}


def calibration_for(modality: str, preprocessing: dict[str, Any], folder: Path | None = None) -> CalibrationSet:
    """The calibration/evaluation set for one encoder, by modality."""
    if modality not in CALIBRATION_BUILDERS:
        raise ExportError(f"no calibration set for {modality} encoders; quantize this component with a weight-only "
                          "precision (fp16, int8, int4) instead.")
    return CALIBRATION_BUILDERS[modality](preprocessing, folder)
