"""Audio in numpy: WAV reading, resampling, and the Whisper log-mel front end.

Shapes: ``S`` samples, ``M`` mel bins, ``T`` frames (100 per second at hop 160 / 16 kHz).

- **WAV**: RIFF/WAVE with PCM integers (8, 16, 24, 32 bit) or IEEE floats (32, 64 bit), plain or
  ``WAVE_FORMAT_EXTENSIBLE``; other encodings (A-law, mu-law, ADPCM, ...) are refused by name.
  Channels are averaged to mono.
- **Resampling** to the model's rate: band-limited windowed-sinc interpolation (Kaiser window,
  beta 8.6, 32 zero crossings per side, cut-off at 0.95 x the lower Nyquist frequency), the
  method of ``scipy.signal.resample_poly`` / libsamplerate's sinc converters.
- **Log-mel**: ``WhisperFeatureExtractor``'s computation (periodic Hann window, centred STFT with
  reflect padding, power spectrum, Slaney mel filters, log10 with a 1e-10 floor, clipped to 8 below
  each clip's maximum, then ``(x + 4) / 4``), matching transformers to ~1e-5.
- **Padding** (manifest ``padding``): ``max_length`` pads or truncates every clip to one window
  (Qwen2-Audio; longer clips are truncated as its processor does, and the result warns), with the
  feature attention mask of the real frames; ``multiple`` pads each clip to a whole number of
  windows and splits it into window-sized chunks (Voxtral).
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgebridge.errors import AudioInputError, NonFiniteError
from edgebridge.preprocess import Prepared, register_preprocessor

AudioLike = Union[str, os.PathLike, bytes, np.ndarray, "AudioClip"]
MAX_WAV_BYTES = 512 * 1024 * 1024

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_FORMAT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0050: "MPEG",
                 0x0055: "MP3", 0x0161: "WMA"}

MAX_ARRAY_CHANNELS = 8  # an array axis this short is channels; a longer one is time
SAMPLE_RATES = (1000, 768_000)  # what real recordings use; outside it a header lies (resampling work explodes)
MAX_SECONDS = 3600.0  # an hour: the longest clip decoded and resampled


def check_rate_and_length(rate: int, n_frames: int, name: str) -> None:
    """Refuse sample rates no recording has and clips so long that resampling would take GiBs."""
    if not SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1]:
        raise AudioInputError(f"'{name}' claims a sample rate of {rate} Hz; edgebridge takes "
                              f"{SAMPLE_RATES[0]}-{SAMPLE_RATES[1]} Hz.", hint="The header is damaged, or re-encode it.")
    if n_frames / rate > MAX_SECONDS:
        raise AudioInputError(f"'{name}' lasts {n_frames / rate:.0f} s, more than {MAX_SECONDS:.0f} s.",
                              hint="Cut the clip; the models take 30 s windows.")


@dataclass
class AudioClip:
    """Mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    source: str = "array"
    channels: int = 1

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


# --- WAV -----------------------------------------------------------------------------------------


def _chunks(data: bytes, name: str):
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size and cid != b"data":
            raise AudioInputError(f"'{name}' is a truncated WAV file (chunk {cid!r} cut short).")
        yield cid, body
        pos += 8 + size + (size & 1)


def read_wav(path: str | os.PathLike) -> AudioClip:
    """Parse a WAV file into a mono float32 clip (at its own sample rate)."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file '{path}' does not exist.", hint="Check the path.")
    size = path.stat().st_size
    if size == 0:
        raise AudioInputError(f"audio file '{path}' is empty.", hint="Pass a WAV file (PCM or float).")
    if size > MAX_WAV_BYTES:
        raise AudioInputError(f"audio file '{path}' is larger than {MAX_WAV_BYTES >> 20} MiB.",
                              hint="Cut the clip; the models take at most a few minutes of audio.")
    return parse_wav(path.read_bytes(), path.name, source=str(path))


def parse_wav(data: bytes, name: str, *, source: str | None = None) -> AudioClip:
    """Parse WAV bytes (a file's, an upload's) into a mono float32 clip; errors name it ``name``."""
    if len(data) > MAX_WAV_BYTES:
        raise AudioInputError(f"audio '{name}' is larger than {MAX_WAV_BYTES >> 20} MiB.",
                              hint="Cut the clip; the models take at most a few minutes of audio.")
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise AudioInputError(f"'{name}' is not a WAV file (no RIFF/WAVE header).",
                              hint="Convert it to WAV, e.g. `ffmpeg -i in.mp3 -ar 16000 -ac 1 out.wav`.")
    fmt = pcm = None
    for cid, body in _chunks(data, name):
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            pcm = body
            break
    if fmt is None or len(fmt) < 16 or pcm is None:
        raise AudioInputError(f"'{name}' has no fmt/data chunk; it is not a playable WAV file.")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the real tag
    if tag not in (_PCM, _FLOAT):
        raise AudioInputError(
            f"'{name}' uses the {_FORMAT_NAMES.get(tag, f'0x{tag:04x}')} encoding, which is not supported.",
            hint="Re-encode it as PCM or float WAV (`ffmpeg -i in.wav -c:a pcm_s16le out.wav`).")
    if channels < 1 or rate < 1 or block_align != channels * (bits // 8) or bits % 8:
        raise AudioInputError(f"'{name}' has an inconsistent WAV header ({channels} ch, {rate} Hz, {bits} bit).")
    n_frames = len(pcm) // block_align
    if n_frames == 0:
        raise AudioInputError(f"'{name}' holds no audio samples.", hint="Record or pass a non-empty clip.")
    check_rate_and_length(rate, n_frames, name)
    raw = pcm[: n_frames * block_align]
    if tag == _FLOAT and bits in (32, 64):
        x = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
    elif tag == _PCM and bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _PCM and bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif tag == _PCM and bits == 32:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise AudioInputError(f"'{name}': {bits}-bit {'float' if tag == _FLOAT else 'PCM'} WAV is not supported.",
                              hint="Use 8/16/24/32-bit PCM or 32/64-bit float.")
    x = x.reshape(n_frames, channels).mean(axis=1, dtype=np.float64).astype(np.float32)
    return AudioClip(samples=x, sample_rate=rate, source=source or name, channels=channels)


# --- resampling ----------------------------------------------------------------------------------

ZERO_CROSSINGS = 32
KAISER_BETA = 8.6
ROLLOFF = 0.95


def _kernel(d: np.ndarray, cutoff: float, half: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass taps at distances ``d`` (source samples)."""
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (d / (half + 1)) ** 2, 0.0, 1.0))) / np.i0(KAISER_BETA)
    return cutoff * np.sinc(cutoff * d) * window


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling ``[S] -> [ceil(S * dst / src)]`` by windowed-sinc interpolation.

    Output sample m sits at source position m * src / dst; with ``up / down`` the reduced ratio
    it has one of ``up`` fractional phases, so the taps are computed once per phase (polyphase).
    """
    if src_rate == dst_rate:
        return x.astype(np.float32, copy=False)
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    n_out = int(math.ceil(x.shape[0] * up / down))
    cutoff = ROLLOFF * min(1.0, dst_rate / src_rate)  # fraction of the source Nyquist frequency
    half = int(math.ceil(ZERO_CROSSINGS / cutoff))  # taps per side, in source samples
    offsets = np.arange(-half, half + 1)
    xp = np.concatenate([np.zeros(half + 1), x.astype(np.float64), np.zeros(half + 1)])
    table = _kernel(np.arange(up)[:, None] / up - offsets[None, :], cutoff, half) if up <= 65536 else None
    out = np.empty(n_out, np.float64)
    block = 16384
    for lo in range(0, n_out, block):
        m = np.arange(lo, min(n_out, lo + block), dtype=np.int64)
        base, phase = np.divmod(m * down, up)
        taps = table[phase] if table is not None else _kernel(phase[:, None] / up - offsets[None, :], cutoff, half)
        out[lo:lo + m.size] = (xp[base[:, None] + offsets[None, :] + half + 1] * taps).sum(axis=1)
    return out.astype(np.float32)


def load_audio(audio: AudioLike, sample_rate: int) -> AudioClip:
    """A path / WAV bytes / clip / 1-D float array (already at ``sample_rate``) as a mono clip at ``sample_rate``."""
    if isinstance(audio, AudioClip):
        clip = audio
    elif isinstance(audio, np.ndarray):
        if audio.ndim == 2:  # [S, channels] -> mono; [channels, S] (channels first) is read the same way
            if audio.shape[1] > MAX_ARRAY_CHANNELS and audio.shape[0] <= MAX_ARRAY_CHANNELS:
                audio = audio.T
            elif audio.shape[1] > MAX_ARRAY_CHANNELS:
                raise AudioInputError(f"an audio array of shape {audio.shape} has no axis of at most "
                                      f"{MAX_ARRAY_CHANNELS} channels.", hint="Pass [samples] or [samples, channels].")
            audio = audio.mean(axis=1)
        if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
            raise AudioInputError(f"audio arrays must be 1-D float waveforms, got {audio.dtype} {audio.shape}.",
                                  hint=f"Pass float samples in [-1, 1] at {sample_rate} Hz, or a WAV path.")
        clip = AudioClip(samples=audio.astype(np.float32), sample_rate=sample_rate)
    elif isinstance(audio, (str, os.PathLike)):
        clip = read_wav(audio)
    elif isinstance(audio, (bytes, bytearray)):
        clip = parse_wav(bytes(audio), "the audio data")
    else:
        raise AudioInputError(f"cannot use a {type(audio).__name__} as audio.", hint="Pass a WAV path or a float array.")
    if clip.samples.size == 0:
        raise AudioInputError(f"audio '{clip.source}' holds no samples.")
    if not np.isfinite(clip.samples).all():
        raise NonFiniteError(f"audio '{clip.source}' holds NaN or Inf samples.", hint="Check how the clip was made.")
    if clip.sample_rate != sample_rate:
        clip = AudioClip(resample(clip.samples, clip.sample_rate, sample_rate), sample_rate, clip.source, clip.channels)
    return clip


# --- Whisper log-mel -------------------------------------------------------------------------------


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    log_region = f >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    hz = 200.0 * m / 3.0
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), hz)


def mel_filters(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters ``[n_fft // 2 + 1, n_mels]`` (as transformers)."""
    mels = np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    edges = _mel_to_hz_slaney(mels)
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    diff = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[None, :]


def log_mel(wave: np.ndarray, n_fft: int, hop: int, filters: np.ndarray) -> np.ndarray:
    """``[S] -> [M, S // hop]`` Whisper log-mel features of one (padded) clip."""
    pad = n_fft // 2
    x = np.pad(wave.astype(np.float32), (pad, pad), mode="reflect")
    n_frames = 1 + (x.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(x, shape=(n_frames, n_fft), strides=(x.strides[0] * hop, x.strides[0]))
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    spec = np.fft.rfft(frames * window, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2)[:-1]  # Whisper drops the last frame
    mel = power @ filters.astype(np.float64)
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).T.astype(np.float32)


# --- the registered kind ---------------------------------------------------------------------------


def _tokens_for(frames: int, rule: dict[str, Any]) -> int:
    """Embeddings a clip of ``frames`` real mel frames becomes, by the manifest's rule."""
    if rule["kind"] == "conv-pool":  # Whisper conv stride 2, then average pooling stride 2 (Qwen2-Audio)
        after_conv = (frames - 1) // 2 + 1
        return (after_conv - 2) // 2 + 1
    if rule["kind"] == "per-chunk":
        return rule["per_chunk"]
    if rule["kind"] == "none":  # a tool reads the features; nothing goes into the prompt as embeddings
        return 0
    raise AudioInputError(f"unknown embeddings rule '{rule['kind']}' in the bundle.")


@register_preprocessor("whisper-logmel")
def prepare_audio(items: list[Any], spec: dict[str, Any]) -> Prepared:
    """Clips -> ``input_features [B, M, T]`` (+ ``feature_attention_mask``) and embeddings per clip."""
    rate, n_fft, hop = spec["sample_rate"], spec["n_fft"], spec["hop_length"]
    window = spec["chunk_samples"]
    filters = mel_filters(n_fft, spec["n_mels"], rate, spec.get("f_min", 0.0), spec.get("f_max", 8000.0))
    features, masks, tokens, rows, info = [], [], [], [], []
    for item in items:
        clip = load_audio(item, rate)
        x = clip.samples
        entry: dict[str, Any] = {"source": clip.source, "seconds": round(clip.seconds, 3)}
        if spec["padding"] == "max_length":
            if x.shape[0] > window:
                entry["truncated_to_seconds"] = window / rate
                x = x[:window]
            real_frames = int(math.ceil(x.shape[0] / hop))
            padded = np.zeros(window, np.float32)
            padded[: x.shape[0]] = x
            features.append(log_mel(padded, n_fft, hop, filters))
            mask = np.zeros(window // hop, np.int64)
            mask[:real_frames] = 1
            masks.append(mask)
            rows.append(slice(len(features) - 1, len(features)))
            tokens.append(_tokens_for(real_frames, spec["embeddings_per_clip"]))
        else:  # "multiple": whole windows, split into window-sized chunks
            n_chunks = max(1, int(math.ceil(x.shape[0] / window)))
            padded = np.zeros(n_chunks * window, np.float32)
            padded[: x.shape[0]] = x
            feats = log_mel(padded, n_fft, hop, filters)  # one clip: one log-mel maximum, as the reference
            frames = window // hop
            start = len(features)
            features.extend(feats[:, c * frames:(c + 1) * frames] for c in range(n_chunks))
            rows.append(slice(start, start + n_chunks))
            tokens.append(n_chunks * _tokens_for(frames, spec["embeddings_per_clip"]))
            entry["chunks"] = n_chunks
        info.append(entry)
    inputs = {"input_features": np.stack(features)}
    if spec.get("attention_mask_input"):
        inputs[spec["attention_mask_input"]] = np.stack(masks)
    return Prepared(inputs=inputs, tokens_per_item=tokens, info=info, item_rows=rows)


def wav_bytes(samples: np.ndarray, sample_rate: int, *, bits: int = 16, channels: int = 1) -> bytes:
    """Encode float samples ``[S]`` or ``[S, C]`` as a PCM / float WAV file (tests and tools)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x.reshape(-1, channels)
    if bits == 32 and x.dtype.kind == "f":
        tag, payload = _FLOAT, x.astype("<f4").tobytes()
    else:
        tag, scale = _PCM, float(1 << (bits - 1))
        ints = np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)
        payload = ints.astype({16: "<i2", 32: "<i4"}[bits]).tobytes() if bits in (16, 32) else b""
        if bits == 8:
            payload = (ints + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            payload = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in ints.reshape(-1))
    block = channels * bits // 8
    out = io.BytesIO()
    out.write(b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE")
    out.write(b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, sample_rate, sample_rate * block, block, bits))
    out.write(b"data" + struct.pack("<I", len(payload)) + payload)
    return out.getvalue()
