"""Preprocessing kinds, looked up by the manifest's ``preprocessing.kind``.

Each module in this package may register kinds with ``@register_preprocessor``; modules are
imported on first lookup, so a new kind is one new file. A preprocessor turns a list of user
items (images, audio clips) into the encoder graph's input arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgebridge.errors import ManifestError
from edgebridge.registry import discover


@dataclass
class Prepared:
    """Encoder inputs for a batch of items, and what each item becomes in the prompt."""

    inputs: dict[str, np.ndarray]
    tokens_per_item: list[int] | None = None  # None: the manifest's fixed count for every item
    info: list[dict[str, Any]] = field(default_factory=list)  # per item, e.g. original size, tiles
    item_rows: list[slice] | None = None  # encoder batch rows of each item (None: item i is row i)
    runs: list[dict[str, np.ndarray]] | None = None  # inputs too different to batch: one encoder run each

    def item_embeddings(self, out: np.ndarray, fixed_tokens: int) -> list[np.ndarray]:
        """Split the encoder output ``[rows, N, D]`` into one ``[n_i, D]`` array per item."""
        rows = self.item_rows or [slice(i, i + 1) for i in range(out.shape[0])]
        counts = self.tokens_per_item or [fixed_tokens] * len(rows)
        return [out[r].reshape(-1, out.shape[-1])[:n] for r, n in zip(rows, counts)]


Preprocessor = Callable[[list[Any], dict[str, Any]], Prepared]
_KINDS: dict[str, Preprocessor] = {}


def register_preprocessor(kind: str) -> Callable[[Preprocessor], Preprocessor]:
    def deco(fn: Preprocessor) -> Preprocessor:
        _KINDS[kind] = fn
        return fn

    return deco


def get_preprocessor(kind: str) -> Preprocessor:
    discover(__name__, __path__)
    if kind not in _KINDS:
        raise ManifestError(
            f"the bundle needs preprocessing kind '{kind}', which this edgebridge does not have.",
            hint=f"Known kinds: {', '.join(sorted(_KINDS))}. Upgrade edgebridge.",
        )
    return _KINDS[kind]
