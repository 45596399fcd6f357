"""An HF ``WhisperFeatureExtractor`` as a ``whisper-logmel`` manifest spec (the runtime's audio front end).

The spec records everything the torch-free front end needs and the manifest documents: sample
rate, FFT size, hop, mel bins and filter bank, window length, padding and truncation, the
feature attention mask, and how many embeddings a clip of a given length becomes.
"""

from __future__ import annotations

from typing import Any

from edgebridge.errors import UnsupportedModelError
from edgebridge.preprocess.audio import KAISER_BETA, ROLLOFF, ZERO_CROSSINGS


def audio_spec(fe: Any, *, padding: str, embeddings_per_clip: dict[str, Any],
               attention_mask_input: str | None) -> dict[str, Any]:
    if type(fe).__name__ != "WhisperFeatureExtractor":
        raise UnsupportedModelError(f"audio feature extractor {type(fe).__name__} is not supported (Whisper log-mel only).")
    if getattr(fe, "dither", 0.0):
        raise UnsupportedModelError("the feature extractor dithers its input (random noise); its output cannot be "
                                    "reproduced exactly.", hint="Set dither=0.0 in preprocessor_config.json.")
    if getattr(fe, "do_normalize", False):
        raise UnsupportedModelError("per-clip normalisation of the waveform (do_normalize=True) is not supported.")
    return {
        "kind": "whisper-logmel",
        "processor": type(fe).__name__,
        "sample_rate": int(fe.sampling_rate),
        "n_fft": int(fe.n_fft),
        "hop_length": int(fe.hop_length),
        "n_mels": int(fe.feature_size),
        "f_min": 0.0,
        "f_max": 8000.0,
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "window": "hann (periodic)",
        "log": "log10, floor 1e-10, clipped to max - 8, then (x + 4) / 4",
        "chunk_seconds": float(fe.chunk_length),
        "chunk_samples": int(fe.n_samples),
        "frames_per_chunk": int(fe.nb_max_frames),
        "padding": padding,
        "truncation": padding == "max_length",
        "attention_mask_input": attention_mask_input,
        "embeddings_per_clip": embeddings_per_clip,
        "resample": f"windowed sinc, Kaiser beta {KAISER_BETA}, {ZERO_CROSSINGS} zero crossings, cut-off {ROLLOFF} x Nyquist",
        "channels": "mean of channels",
    }
