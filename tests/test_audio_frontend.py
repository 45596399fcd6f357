"""The torch-free audio front end: WAV reading, resampling, Whisper log-mel == transformers."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from edgebridge.errors import AudioInputError, NonFiniteError
from edgebridge.preprocess.audio import load_audio, prepare_audio, read_wav, resample, wav_bytes

QWEN_SPEC = dict(kind="whisper-logmel", sample_rate=16000, n_fft=400, hop_length=160, n_mels=128,
                 chunk_samples=480000, padding="max_length", attention_mask_input="feature_attention_mask",
                 embeddings_per_clip={"kind": "conv-pool"})
VOXTRAL_SPEC = dict(QWEN_SPEC, padding="multiple", attention_mask_input=None,
                    embeddings_per_clip={"kind": "per-chunk", "per_chunk": 375})


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor_on_real_speech(speech, recordings, n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    spec = dict(QWEN_SPEC, n_mels=n_mels)
    for path in [*speech, *recordings]:
        wave = load_audio(path, 16000).samples
        ref = fe(wave, sampling_rate=16000, return_tensors="np", padding="max_length", return_attention_mask=True)
        ours = prepare_audio([path], spec)
        assert np.abs(ours.inputs["input_features"][0] - ref["input_features"][0]).max() <= 1e-4, path
        assert np.array_equal(ours.inputs["feature_attention_mask"][0], ref["attention_mask"][0])
        frames = int(ref["attention_mask"][0].sum())
        assert ours.tokens_per_item == [((frames - 1) // 2 + 1 - 2) // 2 + 1]


def test_voxtral_padding_chunks_whole_windows(speech):
    fe = WhisperFeatureExtractor(feature_size=128)
    long_clip = np.concatenate([load_audio(p, 16000).samples for p in speech] * 5)  # > 30 s
    assert 30 < long_clip.size / 16000 < 60
    ref = fe(long_clip, sampling_rate=16000, padding=True, truncation=False, pad_to_multiple_of=480000,
             return_tensors="np")["input_features"][0]
    ref = ref.reshape(128, -1, 3000).transpose(1, 0, 2)
    ours = prepare_audio([long_clip, speech[0]], VOXTRAL_SPEC)
    assert ours.inputs["input_features"].shape == (3, 128, 3000)  # 2 chunks + 1 chunk
    assert np.abs(ours.inputs["input_features"][:2] - ref).max() <= 1e-4
    assert ours.tokens_per_item == [750, 375] and ours.item_rows == [slice(0, 2), slice(2, 3)]


def test_clip_longer_than_the_window_is_truncated_and_reported(speech):
    long_clip = np.concatenate([load_audio(p, 16000).samples for p in speech] * 5)
    ours = prepare_audio([long_clip], QWEN_SPEC)
    assert ours.info[0]["truncated_to_seconds"] == 30.0 and ours.info[0]["seconds"] > 30
    assert ours.inputs["feature_attention_mask"].sum() == 3000 and ours.tokens_per_item == [750]


def test_silence_is_valid_input():
    ours = prepare_audio([np.zeros(16000, np.float32)], QWEN_SPEC)
    feats = ours.inputs["input_features"]
    assert np.isfinite(feats).all() and np.allclose(feats, feats.flat[0])  # a constant spectrogram
    assert ours.tokens_per_item == [25]


def test_resampler_is_band_limited_and_accurate():
    sr = 22050
    t = np.arange(2 * sr) / sr
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(tone, sr, 16000)
    assert out.shape == (32000,)
    expected = np.sin(2 * np.pi * 1000 * np.arange(out.size) / 16000)
    assert np.abs(out[400:-400] - expected[400:-400]).max() < 1e-3
    alias = resample(np.sin(2 * np.pi * 10000 * t).astype(np.float32), sr, 16000)  # above the new Nyquist
    assert np.abs(alias[400:-400]).max() < 1e-3
    up = resample(tone[:8000], sr, 48000)  # upsampling keeps the tone too
    expected = np.sin(2 * np.pi * 1000 * np.arange(up.size) / 48000)
    assert np.abs(up[400:-400] - expected[400:-400]).max() < 1e-3


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_pcm_and_float_wavs_read_back(tmp_path, bits):
    rng = np.random.default_rng(bits)
    stereo = rng.uniform(-0.5, 0.5, (1000, 2))
    path = tmp_path / f"x{bits}.wav"
    path.write_bytes(wav_bytes(stereo, 16000, bits=bits, channels=2))
    clip = read_wav(path)
    assert clip.sample_rate == 16000 and clip.channels == 2
    step = 2.0 / (1 << bits)
    assert np.abs(clip.samples - stereo.mean(axis=1)).max() <= step + 1e-6  # downmixed to mono


def _wav_with(tag: int, bits: int, payload: bytes) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE" +
            b"fmt " + struct.pack("<IHHIIHH", 16, tag, 1, 8000, 8000 * bits // 8, bits // 8, bits) +
            b"data" + struct.pack("<I", len(payload)) + payload)


def test_bad_audio_files_get_clear_errors(tmp_path):
    cases = {
        "empty.wav": (b"", "is empty"),
        "text.wav": (b"this is not audio at all", "not a WAV file"),
        "mulaw.wav": (_wav_with(7, 8, bytes(100)), "mu-law"),
        "adpcm.wav": (_wav_with(2, 8, bytes(100)), "ADPCM"),
        "nodata.wav": (_wav_with(1, 16, b""), "no audio samples"),
        "truncated.wav": (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "no fmt/data|truncated"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AudioInputError, match=message):
            read_wav(path)
    with pytest.raises(AudioInputError, match="does not exist"):
        read_wav(tmp_path / "missing.wav")


def test_nan_samples_are_refused(tmp_path):
    x = np.zeros(100, np.float32)
    x[10] = np.nan
    path = tmp_path / "nan.wav"
    path.write_bytes(wav_bytes(x, 16000, bits=32))
    with pytest.raises(NonFiniteError, match="NaN"):
        load_audio(path, 16000)
    with pytest.raises(NonFiniteError):
        load_audio(x, 16000)
    with pytest.raises(AudioInputError, match="1-D float"):
        load_audio(np.zeros(10, np.int16), 16000)
