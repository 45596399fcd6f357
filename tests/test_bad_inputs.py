"""Bad input gets a clear ``EdgebridgeError`` and a non-zero exit, never a crash.

The dangerous cases (corrupt engine files, wrong embedding widths) run in a subprocess through
the real CLI: the test asserts the process exited normally (no signal), with status 2, our
message on stderr and no traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgebridge import Pipeline
from edgebridge.errors import (
    ContextOverflowError,
    CorruptArtifactError,
    EmbeddingShapeError,
    NonFiniteError,
    PromptError,
)
from edgebridge.manifest import MANIFEST_NAME
from edgebridge.runtimes.llamacpp import LlamaCppLLM
from tests.conftest import copy_bundle, run_cli, run_isolated

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory, photo) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(photo).save(path)
    return path


def _assert_clean_failure(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # a signal would be negative
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), proc.stderr


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path, keep_magic: bool = False) -> None:
    rng = np.random.default_rng(0)
    head = path.read_bytes()[:4] if keep_magic else b""
    path.write_bytes(head + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


CORRUPTIONS = {
    "truncated-gguf": ("llm.gguf", _truncate, "onnxruntime", "GGUF"),
    "garbage-gguf-with-magic": ("llm.gguf", lambda p: _garbage(p, keep_magic=True), "onnxruntime", "GGUF"),
    "not-a-gguf": ("llm.gguf", _garbage, "onnxruntime", "not a GGUF"),
    "truncated-onnx": ("vision_encoder.onnx", _truncate, "onnxruntime", "onnxruntime cannot load"),
    "garbage-onnx": ("vision_encoder.onnx", _garbage, "onnxruntime", "onnxruntime cannot load"),
    "truncated-ir-weights": ("vision_encoder.bin", _truncate, "openvino", "truncated"),
    "garbage-ir-xml": ("vision_encoder.xml", _garbage, "openvino", "not valid XML"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_engine_files_fail_cleanly(clip_llama_f32, cat_png, tmp_path, case):
    rel, corrupt, backend, message = CORRUPTIONS[case]
    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "b")
    corrupt(bundle / rel)
    # default: the sha256 check catches it before any engine sees the file
    proc = run_cli("run", str(bundle), "--image", str(cat_png), "-p", "hi", "--backend", backend)
    _assert_clean_failure(proc, rel)
    # without the hash check, our structural validation (or the engine's clean error) catches it
    proc = run_cli("run", str(bundle), "--image", str(cat_png), "-p", "hi", "--backend", backend, "--no-verify")
    _assert_clean_failure(proc, message)


def test_tampered_file_is_named(clip_llama_f32, cat_png, tmp_path):
    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "b")
    with open(bundle / "llm.gguf", "r+b") as fh:  # same size, one byte changed deep in the weights
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-100, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    proc = run_cli("run", str(bundle), "--image", str(cat_png), "-p", "hi")
    _assert_clean_failure(proc, "llm.gguf", "sha256")


def _edit_manifest(bundle: Path, edit) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("prompt"), "missing the key 'prompt'"),
        (lambda d: d["components"]["llm"].pop("inputs"), "components.llm.inputs"),
        (lambda d: d.__setitem__("schema_version", 99), "schema version 99"),
        (lambda d: d["components"]["llm"]["artifacts"]["gguf"]["details"].__setitem__("architecture", "qwen2"),
         "wrong architecture label"),
    ],
    ids=["no-prompt", "no-llm-inputs", "newer-schema", "wrong-arch-label"],
)
def test_bad_manifest_fails_cleanly(clip_llama_f32, cat_png, tmp_path, edit, message):
    bundle = copy_bundle(clip_llama_f32.bundle, tmp_path / "b")
    _edit_manifest(bundle, edit)
    proc = run_cli("run", str(bundle), "--image", str(cat_png), "-p", "hi")
    _assert_clean_failure(proc, message)


def test_bad_images_through_the_cli(clip_llama_f32, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    proc = run_cli("run", str(clip_llama_f32.bundle), "--image", str(text), "-p", "hi")
    _assert_clean_failure(proc, "not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    proc = run_cli("run", str(clip_llama_f32.bundle), "--image", str(bomb), "-p", "hi")
    _assert_clean_failure(proc, "too large")


def test_prompt_longer_than_context(clip_llama_f32, cat_png):
    proc = run_cli("run", str(clip_llama_f32.bundle), "--image", str(cat_png), "-p", "hi " * 40, "--n-ctx", "64")
    _assert_clean_failure(proc, "context holds")
    with Pipeline.from_bundle(clip_llama_f32.bundle, n_ctx=64) as pipe:
        with pytest.raises(ContextOverflowError, match="n_ctx"):
            pipe.generate("hi", images=[np.zeros((32, 32, 3), np.uint8)])


def test_small_context_chunks_to_the_real_batch_size(clip_llama_f32, photo):
    """n_ctx below n_batch makes llama.cpp clamp n_batch; a larger batch would abort the process."""
    with Pipeline.from_bundle(clip_llama_f32.bundle, n_ctx=100) as pipe:
        result = pipe.generate("USER: <image>\nWhat is this? ASSISTANT:", images=[photo], max_new_tokens=40)
    assert result.finish_reason == "context"
    # every position is used; the last token is sampled from the logits at position 99
    assert result.prompt_tokens + len(result.token_ids) == 100 + 1


def test_placeholder_count_mismatch(clip_llama_f32, photo):
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        with pytest.raises(PromptError, match="2 '<image>' placeholder"):
            pipe.generate("<image> <image> hi", images=[photo])
        with pytest.raises(PromptError, match="takes no audio"):
            pipe.generate("hi", audio=["x.wav"])


def test_nan_pixels(clip_llama_f32, photo):
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        with pytest.raises(NonFiniteError):
            pipe.generate("hi", images=[np.full((16, 16, 3), np.nan, np.float32)])
        good = pipe.prepare("image", [photo])
        bad = good.inputs["pixel_values"].copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(NonFiniteError, match="pixel_values"):
            pipe.stages["image"].check_inputs({"pixel_values": bad})


def test_wrong_width_embeddings_never_reach_llama_cpp(clip_llama_f32):
    code = (
        "import numpy as np, sys\n"
        "from edgebridge.runtimes.llamacpp import LlamaCppLLM\n"
        "from edgebridge.errors import EmbeddingShapeError\n"
        "llm = LlamaCppLLM(sys.argv[1])\n"
        "for bad in (np.zeros((4, llm.n_embd - 1), np.float32), np.zeros((4, llm.n_embd + 7), np.float32),\n"
        "            np.zeros((llm.n_embd,), np.float32), np.zeros((0, llm.n_embd), np.float32)):\n"
        "    try:\n"
        "        llm.eval_embeddings(bad)\n"
        "    except EmbeddingShapeError as exc:\n"
        "        print('refused', bad.shape)\n"
        "llm.eval_embeddings(np.zeros((3, llm.n_embd), np.float64))\n"  # other float dtypes are converted
        "print('ok', llm.n_past)\n"
    )
    proc = run_isolated(code, str(clip_llama_f32.bundle / "llm.gguf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("refused") == 4
    assert "ok 3" in proc.stdout


def test_llm_refuses_out_of_range_tokens_and_wrong_expectations(clip_llama_f32):
    path = clip_llama_f32.bundle / "llm.gguf"
    with LlamaCppLLM(path) as llm:
        with pytest.raises(Exception, match="out of range"):
            llm.eval_tokens([llm.n_vocab])
        with pytest.raises(EmbeddingShapeError):
            llm.eval_embeddings(np.zeros((2, llm.n_embd + 1), np.float32))
    with pytest.raises(CorruptArtifactError, match="embedding width"):
        LlamaCppLLM(path, expect_n_embd=123)
    with pytest.raises(CorruptArtifactError, match="architecture"):
        LlamaCppLLM(path, expect_architecture="qwen2")


def test_missing_bundle_folder():
    proc = run_cli("run", "/nonexistent/bundle", "-p", "hi")
    _assert_clean_failure(proc, "not a folder")
