"""Reusing work across ``generate`` calls: encoder outputs and the LLM's KV cache.

Both are exact: a hit returns what recomputing would (the same arrays; the same KV entries).

- ``EmbeddingCache``: encoder + bridge outputs keyed by the sha256 of the encoder's input arrays
  (after preprocessing), so the same image or clip is encoded once (LRU, ``capacity`` entries).
- ``KVPrefix``: what each position of the llama.cpp KV cache holds (a token id, or row r of an
  embedding run with a given digest). A new prompt keeps the longest common prefix and only the
  rest is prefilled (a follow-up question about the same image, a fixed system prompt). When the
  whole prompt matches, its last position is recomputed, because its logits are needed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Hashable

import numpy as np


def digest(arrays: dict[str, np.ndarray] | np.ndarray, salt: str = "") -> str:
    h = hashlib.sha256(salt.encode())
    items = sorted(arrays.items()) if isinstance(arrays, dict) else [("", arrays)]
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.data)
    return h.hexdigest()


class EmbeddingCache:
    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

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
