"""End to end for the audio families: WAV -> bundle -> chained runtime == transformers.

Qwen2-Audio (masked Whisper encoder, pooling, linear projector; qwen2) and Voxtral (Whisper encoder,
frame stacking, MLP adapter; llama), through both encoder engines, on synthesized speech: the 16
greedy tokens equal transformers' ``generate`` and first-step logits agree to <= 1e-3 (f32 GGUF,
strict llama.cpp settings).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgebridge import Pipeline
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import exported, run_cli
from tests.reference import hf_reference

COVERS_FAMILIES = ["qwen2-audio", "voxtral"]
pytestmark = pytest.mark.slow

PROMPTS = {
    "qwen2-audio": "<|im_start|>user\n<|AUDIO|>What does the speaker say?<|im_end|>\n<|im_start|>assistant\n",
    "voxtral": "[INST][BEGIN_AUDIO][AUDIO]What does the speaker say?[/INST]",
}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_greedy_tokens_and_first_logits_match_transformers(workdir, speech, kind, backend):
    bundle = exported(workdir, kind)
    prompt = PROMPTS[kind]
    for clip in speech[:2]:
        ref = hf_reference(bundle.model_dir, prompt, {"audio": [clip]})
        with Pipeline.from_bundle(bundle.bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
            result = pipe.generate(prompt, audio=[clip], max_new_tokens=16)
            logits = pipe.prefill_logits(prompt, audio=[clip])
        assert result.prompt_tokens == len(ref.prompt_ids)
        assert result.token_ids == ref.token_ids and len(ref.token_ids) == 16
        assert np.abs(logits - ref.first_logits).max() <= 1e-3


def test_qwen2_audio_wraps_a_bare_placeholder_like_its_processor(workdir, speech):
    """Without <|audio_bos|>/<|audio_eos|> around <|AUDIO|>, the processor adds them; so do we."""
    bundle = exported(workdir, "qwen2-audio")
    prompt = "<|AUDIO|>Transcribe:"
    ref = hf_reference(bundle.model_dir, prompt, {"audio": [speech[0]]}, max_new_tokens=8)
    with Pipeline.from_bundle(bundle.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, audio=[speech[0]], max_new_tokens=8)
    assert result.prompt_tokens == len(ref.prompt_ids) and result.token_ids == ref.token_ids


def test_two_clips_and_a_real_recording(workdir, speech, recordings):
    bundle = exported(workdir, "voxtral")
    prompt = "[INST][BEGIN_AUDIO][AUDIO] then [BEGIN_AUDIO][AUDIO][/INST]"
    clips = [speech[2], recordings[0]]
    ref = hf_reference(bundle.model_dir, prompt, {"audio": clips}, max_new_tokens=8)
    with Pipeline.from_bundle(bundle.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        result = pipe.generate(prompt, audio=clips, max_new_tokens=8)
    assert result.token_ids == ref.token_ids


def test_long_clip_truncated_with_a_warning_like_the_reference(workdir, speech, tmp_path):
    from edgebridge.preprocess.audio import load_audio, wav_bytes

    bundle = exported(workdir, "qwen2-audio")
    long_clip = np.concatenate([load_audio(p, 16000).samples for p in speech] * 5)
    path = tmp_path / "long.wav"
    path.write_bytes(wav_bytes(long_clip, 16000))
    prompt = PROMPTS["qwen2-audio"]
    ref = hf_reference(bundle.model_dir, prompt, {"audio": [path]}, max_new_tokens=8)
    proc = run_cli("run", str(bundle.bundle), "--audio", str(path), "-p", prompt, "-n", "8", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert any("truncated to 30 s" in w for w in payload["warnings"])
    with Pipeline.from_bundle(bundle.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        assert pipe.generate(prompt, audio=[path], max_new_tokens=8).token_ids == ref.token_ids


def test_manifest_records_the_audio_front_end(workdir):
    manifest = exported(workdir, "qwen2-audio").manifest
    audio = manifest.inputs["audio"]
    pre = audio.preprocessing
    assert (pre["kind"], pre["sample_rate"], pre["n_fft"], pre["hop_length"], pre["n_mels"]) == (
        "whisper-logmel", 16000, 400, 160, 128)
    assert pre["chunk_seconds"] == 30.0 and pre["padding"] == "max_length" and pre["truncation"] is True
    assert pre["attention_mask_input"] == "feature_attention_mask"
    assert pre["embeddings_per_clip"]["kind"] == "conv-pool" and audio.tokens_per_item == 750
    assert audio.layout["wrap_if_missing"] == {"before": "<|audio_bos|>", "after": "<|audio_eos|>"}
    vox = exported(workdir, "voxtral").manifest.inputs["audio"]
    assert vox.preprocessing["padding"] == "multiple" and vox.preprocessing["embeddings_per_clip"]["per_chunk"] == 375


def test_bad_audio_through_the_cli(workdir, tmp_path):
    bundle = exported(workdir, "voxtral")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "image.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    for name, message in (("empty.wav", "is empty"), ("image.wav", "not a WAV file")):
        proc = run_cli("run", str(bundle.bundle), "--audio", str(tmp_path / name), "-p", "hi")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_profile_times_the_audio_stages(workdir, speech, tmp_path):
    bundle = exported(workdir, "qwen2-audio")
    proc = run_cli("profile", str(bundle.bundle), "-o", str(tmp_path / "p"), "--audio", str(speech[0]),
                   "-p", PROMPTS["qwen2-audio"], "-n", "4", "--runs", "2", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    stages = report["configurations"][0]["stages"]
    for key in ("preprocess_audio_ms", "encode_audio_ms", "encode_ms", "bridge_ms", "prefill_ms", "ttft_ms"):
        assert stages[key]["n"] == 2, key
    assert 0 < report["configurations"][0]["bridge_share"]["share"] < 1
