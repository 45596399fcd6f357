"""Host-side tiling and text preprocessing == the HF processors (numpy/PIL, pure Python)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from edgebridge.preprocess.tiles import prepare_gotocr2, prepare_idefics2, prepare_idefics3
from edgebridge.preprocess.wordpiece import WordPiece

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera", "page", "text", "coins", "hubble_deep_field"]


def _img(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _norm(ip) -> dict:
    return {"rescale_factor": 1 / 255, "mean": list(ip.image_mean), "std": list(ip.image_std)}


@pytest.mark.parametrize("photo", PHOTOS)
def test_idefics3_tiles_match_the_processor(photo):
    from transformers import Idefics3ImageProcessor

    for longest, tile, split in ((256, 64, True), (364 * 2, 364, True), (256, 64, False)):
        ip = Idefics3ImageProcessor(size={"longest_edge": longest}, max_image_size={"longest_edge": tile},
                                    do_image_splitting=split)
        ref = ip(images=[[_img(photo)]], return_tensors="np", return_row_col_info=True)
        ours = prepare_idefics3([_img(photo)], {"tile_size": tile, "resize_longest_edge": longest,
                                                "do_image_splitting": split, "resample": "lanczos", **_norm(ip)})
        assert ours.inputs["pixel_values"].shape == ref["pixel_values"][0].shape
        assert np.abs(ours.inputs["pixel_values"] - ref["pixel_values"][0]).max() <= 1e-5
        assert (ours.info[0]["rows"], ours.info[0]["cols"]) == (ref["rows"][0][0], ref["cols"][0][0])


@pytest.mark.parametrize("photo", PHOTOS)
def test_internvl_tiles_match_the_processor(photo):
    from transformers import GotOcr2ImageProcessor

    for max_patches in (1, 4, 12):
        ip = GotOcr2ImageProcessor(size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1,
                                   max_patches=max_patches)
        ref = ip(images=[_img(photo)], return_tensors="np")
        spec = {"tile": {"height": 64, "width": 64}, "crop_to_patches": True, "min_patches": 1,
                "max_patches": max_patches, "use_thumbnail": True, "resample": "bicubic", "tokens_per_tile": 16,
                **_norm(ip)}
        ours = prepare_gotocr2([_img(photo)], spec)
        assert ours.inputs["pixel_values"].shape == ref["pixel_values"].shape
        assert np.abs(ours.inputs["pixel_values"] - ref["pixel_values"]).max() <= 1e-5
        assert ours.tokens_per_item == [16 * int(ref["num_patches"][0])]


@pytest.mark.parametrize("photo", PHOTOS)
def test_idefics2_crops_match_the_processor(photo):
    from transformers import Idefics2ImageProcessor

    for split in (False, True):
        ip = Idefics2ImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, do_image_splitting=split)
        ref = ip(images=[[_img(photo)]], return_tensors="np")
        ours = prepare_idefics2([_img(photo)], {"shortest_edge": 64, "longest_edge": 128, "do_image_splitting": split,
                                                "resample": "bilinear", **_norm(ip)})
        assert len(ours.runs) == ref["pixel_values"].shape[1]
        for i, run in enumerate(ours.runs):
            mask = ref["pixel_attention_mask"][0, i].astype(bool)
            h, w = int(mask.any(1).sum()), int(mask.any(0).sum())  # the processor pads to the batch's largest crop
            assert run["pixel_values"].shape[2:] == (h, w)
            assert np.abs(run["pixel_values"][0] - ref["pixel_values"][0, i, :, :h, :w]).max() <= 1e-5


def test_wordpiece_matches_bert_tokenizer_fast(tmp_path):
    from edgebridge.testing.instructblip import qformer_tokenizer

    hf = qformer_tokenizer()
    hf.save_pretrained(tmp_path)
    ours = WordPiece.from_file(tmp_path / "vocab.txt")
    texts = ["What is in this image?", "Héllo, Wörld! Ça va? naïve café", "東京 is big; 北京 too",
             "tab\there\nnewline\r\n end", "x" * 120, "supercalifragilisticexpialidocious!!!",
             "ctrl\x00char\x07bell\ufffd", "it's 3.14 $100 (50%) [ok] {a} <b> a+b=c ~ ^ _ |", "  padded  ", "",
             "emoji 🚀 and ☃", "UPPER lower MiXeD", "don't won't can't"]
    for text in texts:
        assert ours.encode(text) == hf(text)["input_ids"], text
    assert ours.encode("one two three four five six", max_length=5) == hf(
        "one two three four five six", max_length=5, truncation=True)["input_ids"]
