"""The CLI end to end: make-tiny, export, inspect, run --json, families."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import PROMPT, run_cli, run_isolated

pytestmark = pytest.mark.slow


def test_make_tiny_export_inspect_run(tmp_path, photo):
    model = tmp_path / "tiny"
    proc = run_isolated("from edgebridge.testing.__main__ import main; import sys; sys.exit(main(sys.argv[1:]))",
                        "make-tiny", "llava", "--vision", "siglip", "--text", "qwen2", str(model))
    assert proc.returncode == 0, proc.stderr
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()

    bundle = tmp_path / "bundle"
    proc = run_cli("export", str(model), "-o", str(bundle), "--encoder-format", "onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity" in proc.stderr.lower() or "parity" in proc.stdout.lower()
    assert "bundle written" in proc.stdout
    files = {p.name for p in bundle.iterdir()}  # the default latency target may keep the prefill graph
    assert files - {"llm_prefill.onnx", "llm_prefill.onnx.data"} == {
        "edgebridge.json", "llm.gguf", "vision_encoder.onnx", "vision_encoder.onnx.data"}

    proc = run_cli("export", str(model), "-o", str(bundle))
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli("inspect", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(files) - 1} files verified (sha256)" in proc.stdout and "pass" in proc.stdout

    image = tmp_path / "cat.jpg"
    Image.fromarray(photo).save(image)
    proc = run_cli("run", str(bundle), "--image", str(image), "--prompt", PROMPT, "--max-new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert set(payload) >= {"text", "token_ids", "timings", "devices"}
    assert len(payload["token_ids"]) == 4
    assert payload["devices"]["vision_encoder"]["executed"] == "CPU"
    for key in ("preprocess_ms", "encode_ms", "prefill_ms", "ttft_ms", "per_token_p50_ms", "decode_tokens_per_s"):
        assert payload["timings"][key] > 0

    proc = run_cli("run", str(bundle), "--image", str(image), "--prompt", PROMPT, "-n", "4", "--chat")
    assert proc.returncode == 0, proc.stderr
    assert "tokens" in proc.stderr and "TTFT" in proc.stderr


def test_unavailable_device_falls_back_and_says_so(clip_llama_f16, tmp_path, photo):
    image = tmp_path / "cat.png"
    Image.fromarray(photo).save(image)
    for backend in ("onnxruntime", "openvino"):
        proc = run_cli("run", str(clip_llama_f16.bundle), "--image", str(image), "-p", PROMPT, "-n", "2",
                       "--backend", backend, "--device", "NPU", "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)["devices"]["vision_encoder"]
        assert report["requested"] == "NPU" and report["executed"] == "CPU"
        assert "NPU" in report["fallback_reason"]
        assert "warning" in proc.stderr and "NPU" in proc.stderr


def test_families_and_help():
    proc = run_cli("families")
    assert proc.returncode == 0 and "llava" in proc.stdout and "converter" in proc.stdout
    proc = run_cli("--help")
    assert proc.returncode == 0 and "export" in proc.stdout and "run" in proc.stdout
    proc = run_cli("run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
