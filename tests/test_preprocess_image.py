"""numpy/PIL image preprocessing == the HF image processors, and unsafe images are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge.errors import ImageInputError, NonFiniteError
from edgebridge.exporters.image_spec import image_spec
from edgebridge.preprocess import get_preprocessor
from edgebridge.preprocess.image import load_image, preprocess_image

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera"]  # camera is grayscale


def _processors():
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    return {
        "clip-224": CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                       resample=3, do_convert_rgb=True),
        "clip-64-bilinear": CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 60, "width": 64},
                                               resample=2, do_convert_rgb=True),
        "siglip-384": SiglipImageProcessor(size={"height": 384, "width": 384}, resample=2, do_convert_rgb=True),
    }


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("proc_name", ["clip-224", "clip-64-bilinear", "siglip-384"])
def test_pixel_values_match_hf_processor(photo, proc_name):
    hf = _processors()[proc_name]
    arr = getattr(data, photo)()
    ref = hf(images=Image.fromarray(arr).convert("RGB"), return_tensors="np")["pixel_values"][0]
    ours = preprocess_image(load_image(arr), image_spec(hf))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5


def test_registered_kind_batches_images():
    spec = image_spec(_processors()["clip-224"])
    prepared = get_preprocessor(spec["kind"])([data.chelsea(), data.coffee()], spec)
    assert prepared.inputs["pixel_values"].shape == (2, 3, 224, 224)
    assert prepared.inputs["pixel_values"].dtype == np.float32
    assert prepared.info[0] == {"width": 451, "height": 300}


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageInputError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_truncated_image(tmp_path):
    path = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=95)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("side", [9000, 20000])  # above our 64 MP limit; 20000^2 is above PIL's own bomb limit too
def test_decompression_bomb(tmp_path, side):
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)  # a few KiB on disk, side^2 pixels decoded
    assert path.stat().st_size < 2_000_000
    with pytest.raises(ImageInputError, match="decompression bomb|too large"):
        load_image(path)


def test_arrays_nan_float_and_bad_shapes():
    nan = np.full((8, 8, 3), np.nan, dtype=np.float32)
    with pytest.raises(NonFiniteError, match="NaN"):
        load_image(nan)
    with pytest.raises(ImageInputError, match="uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageInputError, match="HWC"):
        load_image(np.zeros((3, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="cannot use"):
        load_image(12345)
    gray = load_image(np.zeros((8, 9), dtype=np.uint8))
    assert gray.mode == "RGB" and gray.size == (9, 8)


@pytest.mark.parametrize("spec", [
    {"rescale_factor": 1 / 255, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    {"rescale_factor": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},  # SigLIP / Gemma 3
    {"rescale_factor": 1 / 255, "mean": 0.5, "std": 0.25},  # one value for every channel
    {"rescale_factor": 1 / 255},  # rescale only
    {"mean": [100.0, 110.0, 120.0], "std": [50.0, 60.0, 70.0]},  # normalize only
])
def test_the_byte_tables_give_the_float_arithmetics_bits(spec):
    """``normalized_chw`` looks uint8 pixels up in per-channel tables: bit for bit what rescaling and
    normalizing in floats gives (the HF-matching arithmetic), for every byte value; floats still compute."""
    from edgebridge.preprocess.image import normalized_chw, rescale_normalize

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    pixels[0, :16, 0] = np.arange(16)  # the extremes among them
    pixels[1, :16, 1] = np.arange(240, 256)
    for arr in (pixels, pixels.astype(np.float32) / 3):
        got, want = normalized_chw(arr, spec), rescale_normalize(arr, spec).transpose(2, 0, 1)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
