"""A ``generate`` call's arguments checked before any work: wrong types get a clear ``InputError``
(not a ``TypeError`` from deep inside), and a lone path is not read as a list of one-letter paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgebridge.errors import InputError


def check_call(prompt: Any, max_new_tokens: Any, system: Any) -> None:
    """Wrong argument types get a clear error, not a TypeError from deep inside."""
    for name, value in (("prompt", prompt), ("system", system)):
        if value is None and name == "system":
            continue
        if not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {type(value).__name__}.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{name} holds characters that are not valid Unicode (lone surrogates).",
                             hint="Decode the text properly before passing it.") from None
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}.")


def media_lists(images: Sequence[Any] | None, audio: Sequence[Any] | None,
                videos: Sequence[Any] | None = None) -> dict[str, list[Any]]:
    """The call's media by modality (each a list; ``None`` is none)."""
    return {"image": items_list(images, "images"), "audio": items_list(audio, "audio"),
            "video": items_list(videos, "videos")}


def items_list(items: Sequence[Any] | None, name: str) -> list[Any]:
    """``items`` as a list; a lone path or another type than a list or tuple is refused."""
    if isinstance(items, (str, Path)):  # a lone path would be read as a list of one-letter paths
        raise InputError(f"{name}= takes a list of items, got one {type(items).__name__}.",
                         hint=f"Write {name}=[{str(items)!r}].")
    if items is not None and not isinstance(items, (list, tuple)):
        raise InputError(f"{name}= takes a list of items, got {type(items).__name__}.")
    return list(items or [])
