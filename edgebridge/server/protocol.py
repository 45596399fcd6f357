"""A chat-completions request, checked field by field, turned into what ``Pipeline.generate`` takes.

Media come as ``image_url`` parts (``data:`` URIs only: a device has no network by default, and a
server that fetches URLs is a request-forgery hole) and ``input_audio`` parts (base64 WAV). Each is
decoded and its size checked here, before the pipeline sees it: base64 bytes against
``max_media_bytes`` and an image's header against ``max_image_pixels`` (413 either way).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

from edgebridge.errors import InputError
from edgebridge.sampling import GenerationConfig
from edgebridge.server.errors import ApiError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SAMPLING = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "presence_penalty": float,
            "frequency_penalty": float, "repetition_penalty": float, "seed": int}


@dataclass(frozen=True)
class Limits:
    max_media_bytes: int = 20 << 20
    max_image_pixels: int = 40_000_000
    default_max_tokens: int = 256


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    config: GenerationConfig
    stream: bool = False
    media: dict[str, list[bytes]] = field(default_factory=dict)


def bad(message: str, param: str | None = None, code: str = "invalid_request", status: int = 400) -> ApiError:
    return ApiError(status, message, code=code, param=param)


def parse_chat(body: Any, placeholders: dict[str, str], model_id: str, limits: Limits) -> ChatRequest:
    """``body`` (parsed JSON) checked; ``placeholders`` maps the bundle's modalities to their placeholder."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object.")
    model = body.get("model", model_id)
    if not isinstance(model, str):
        raise bad("'model' must be a string.", "model")
    if model != model_id:
        raise ApiError(404, f"model '{model[:80]}' is not served here; this server serves '{model_id}'.",
                       code="model_not_found", param="model")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise bad("only n=1 is supported (one answer per request).", "n", code="unsupported_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false.", "stream")
    media: dict[str, list[bytes]] = {m: [] for m in placeholders}
    messages = parse_messages(body.get("messages"), placeholders, media, limits)
    return ChatRequest(messages, parse_config(body, limits), stream, media)


def parse_messages(raw: Any, placeholders: dict[str, str], media: dict[str, list[bytes]],
                   limits: Limits) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise bad("'messages' must be a non-empty list.", "messages")
    out = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of {sorted(ROLES)}.", f"{where}.role")
        if "content" not in message or message["content"] is None:
            raise bad(f"{where} has no content.", f"{where}.content")
        text = content_text(message["content"], ROLES[role], placeholders, media, limits, where)
        out.append({"role": ROLES[role], "content": text})
    if out[-1]["role"] == "assistant":
        raise bad("the last message must not be the assistant's (the server writes the answer).", "messages")
    return out


def content_text(content: Any, role: str, placeholders: dict[str, str], media: dict[str, list[bytes]],
                 limits: Limits, where: str) -> str:
    """The message's text, with the bundle's placeholder where each of its media parts was."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise bad(f"{where}.content must be a string or a non-empty list of parts.", f"{where}.content")
    pieces = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
            continue
        modality = {"image_url": "image", "input_audio": "audio"}.get(kind)
        if modality is None:
            raise bad(f"{at} must be a text, image_url or input_audio part.", at)
        if role != "user":
            raise bad(f"{at}: only user messages may hold images or audio.", at)
        if modality not in placeholders:
            raise bad(f"{at}: this model takes no {modality}.", at, code="unsupported_modality")
        data = image_bytes(part, at, limits) if modality == "image" else audio_bytes(part, at, limits)
        media[modality].append(data)
        pieces.append(placeholders[modality])
    return "".join(pieces)


def image_bytes(part: dict[str, Any], at: str, limits: Limits) -> bytes:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str):
        raise bad(f"{at}.image_url.url must be a string.", at)
    if not url.startswith("data:"):
        raise bad(f"{at}: only data: URIs are accepted (this server fetches nothing from the network).", at,
                  code="remote_url_refused")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise bad(f"{at}: expected data:image/<type>;base64,<data>.", at, code="invalid_media", status=422)
    data = b64(payload, at, limits)
    check_image_header(data, at, limits)
    return data


def check_image_header(data: bytes, at: str, limits: Limits) -> None:
    """Refuse a non-image (422) or one that claims too many pixels (413) from its header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:
        width = height = limits.max_image_pixels  # PIL refused it for its size: over any limit of ours too
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise bad(f"{at}: the data is not an image that can be read (JPEG, PNG, WebP, BMP).", at,
                  code="invalid_media", status=422) from None
    if width * height > limits.max_image_pixels:
        raise bad(f"{at}: the image is {width}x{height} pixels, more than the limit of {limits.max_image_pixels}.",
                  at, code="image_too_large", status=413)


def audio_bytes(part: dict[str, Any], at: str, limits: Limits) -> bytes:
    ref = part.get("input_audio")
    if not isinstance(ref, dict) or not isinstance(ref.get("data"), str):
        raise bad(f"{at}.input_audio must be {{'data': <base64>, 'format': 'wav'}}.", at)
    if ref.get("format", "wav") != "wav":
        raise bad(f"{at}.input_audio.format: only 'wav' is supported.", at, code="invalid_media", status=422)
    return b64(ref["data"], at, limits)


def b64(payload: str, at: str, limits: Limits) -> bytes:
    if len(payload) * 3 // 4 > limits.max_media_bytes:
        raise bad(f"{at}: the data is larger than {limits.max_media_bytes >> 20} MiB.", at,
                  code="media_too_large", status=413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{at}: the data is not valid base64.", at, code="invalid_media", status=422) from None


def parse_config(body: dict[str, Any], limits: Limits) -> GenerationConfig:
    """The sampling fields as a checked ``GenerationConfig`` (greedy unless asked otherwise)."""
    values: dict[str, Any] = {}
    for name, kind in SAMPLING.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise bad(f"'{name}' must be a{'n integer' if kind is int else ' number'}.", name)
        values[name] = kind(value)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise bad("'max_tokens' must be a positive integer.", "max_tokens")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise bad("'stop' must be a string or a list of strings.", "stop")
    ignore_eos = body.get("ignore_eos", False)  # llama.cpp server's extension: benchmarks, long answers
    if not isinstance(ignore_eos, bool):
        raise bad("'ignore_eos' must be true or false.", "ignore_eos")
    try:
        return GenerationConfig(max_new_tokens=max_tokens or limits.default_max_tokens, stop=tuple(stop or ()),
                                stop_at_eos=not ignore_eos, **values).check()
    except InputError as exc:
        raise bad(f"{exc.message} {exc.hint or ''}".strip(), next((n for n in values if n in exc.message), None)) from None
