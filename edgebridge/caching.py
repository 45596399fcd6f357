"""Reusing work across ``generate`` calls: encoder outputs and the LLM's KV cache.

Both are exact: a hit returns what recomputing would (the same arrays; the same KV entries).

- ``EmbeddingCache``: encoder + bridge outputs keyed by the ``source_digest`` of the items as given
  (preprocessing is a function of them), else by the sha256 of the encoder's input arrays, so the same
  image or clip is encoded once (LRU, ``capacity`` entries); and
  the last few calls' preprocessed items keyed by the sha256 of the items as given (``source_digest``:
  a file's bytes, encoded bytes, an image's pixels), so a follow-up about the same image is not decoded
  and preprocessed again (the bench LLaVA: 5.6 of a 25 ms answer to a follow-up; Qwen2.5-VL 8.5 + a
  3 ms digest of 27 ms). Only ``PREPARED_CAPACITY`` entries: each holds its pixel arrays.
- ``KVPrefix``: what each position of the llama.cpp KV cache holds (a token id, or row r of an
  embedding run with a given content key). A new prompt keeps the longest common prefix and only the
  rest is prefilled (a follow-up question about the same image, a fixed system prompt). When the
  whole prompt matches, its last position is recomputed, because its logits are needed.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np

PREPARED_CAPACITY = 2  # preprocessed items kept: a conversation about one image, and one before it
MAX_SOURCE_BYTES = 64 * 2**20  # larger files are not hashed to look for a reuse (preprocessing reads them anyway)


def digest(arrays: dict[str, np.ndarray] | np.ndarray, salt: str = "") -> str:
    h = hashlib.sha256(salt.encode())
    items = sorted(arrays.items()) if isinstance(arrays, dict) else [("", arrays)]
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.data)
    return h.hexdigest()


def source_digest(items: Sequence[Any], salt: str = "") -> str | None:
    """sha256 of media items as the caller gave them: a file's bytes (a regular file, at most
    ``MAX_SOURCE_BYTES``), encoded bytes, a PIL image's mode, size and pixels, an array; None when any item
    is something else (a list of frames, a missing path: preprocessing then runs and says what is wrong)."""
    from PIL import Image  # here, not at import: the LLM session imports this module for KVPrefix

    h = hashlib.sha256(salt.encode())
    for item in items:
        if isinstance(item, (str, os.PathLike)):  # a file and its bytes given directly decode alike
            try:
                path = Path(item)
                if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
                    return None
                kind, data = "encoded", path.read_bytes()
            except (OSError, ValueError):  # unreadable, a NUL in the name: preprocessing says what is wrong
                return None
        elif isinstance(item, (bytes, bytearray)):
            kind, data = "encoded", bytes(item)
        elif isinstance(item, Image.Image):
            kind, data = f"pil {item.mode} {item.size}", item.tobytes()
        elif isinstance(item, np.ndarray) and not item.dtype.hasobject:  # the bytes, no copy when contiguous
            kind, data = f"array {item.dtype} {item.shape}", np.ascontiguousarray(item).reshape(-1).view(np.uint8)
        else:
            return None
        h.update(f"|{kind}|{len(data)}|".encode())
        h.update(data)
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._prepared: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    def prepared_for(self, source: str | None) -> Any | None:
        """The preprocessed items of an earlier call with the same ``source_digest``, if still kept."""
        if source is None or source not in self._prepared:
            return None
        self._prepared.move_to_end(source)
        return self._prepared[source]

    def keep_prepared(self, source: str | None, prepared: Any) -> None:
        if source is None:
            return
        self._prepared[source] = prepared
        self._prepared.move_to_end(source)
        while len(self._prepared) > PREPARED_CAPACITY:
            self._prepared.popitem(last=False)

    def get(self, key: str) -> Any | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
        self._prepared.clear()


class KVPrefix:
    """The signature of every position in the KV cache, and how much of it a new prompt can keep."""

    def __init__(self) -> None:
        self.positions: list[Hashable] = []

    def keep_for(self, wanted: list[Hashable]) -> int:
        """Positions to keep: the common prefix, minus one when it is the whole prompt (logits needed)."""
        n = 0
        for a, b in zip(self.positions, wanted):
            if a != b:
                break
            n += 1
        return min(n, len(wanted) - 1)

    def set(self, positions: list[Hashable]) -> None:
        self.positions = list(positions)

    def append(self, position: Hashable) -> None:
        self.positions.append(position)

    def clear(self) -> None:
        self.positions = []
