"""Rows of a GGUF's token-embedding table, read on the host (gguf-py and numpy; no torch).

Why: llama.cpp decodes a batch of token ids *or* of embeddings, never both, and its non-causal mode
only lets rows of one batch see each other. A prefix-LM prompt (PaliGemma: image and text attend to
each other both ways) is therefore fed as one batch of embeddings, its text rows taken from the
model's own table. They are the raw table rows: llama.cpp's gemma2 graph scales every input row by
sqrt(hidden) alike, as transformers scales ``inputs_embeds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgebridge.errors import CorruptArtifactError

TABLE = "token_embd.weight"


class TokenRows:
    """The GGUF's ``token_embd.weight`` (memory-mapped; quantized rows dequantized on demand)."""

    def __init__(self, gguf_path: Path) -> None:
        from gguf import GGUFReader

        reader = GGUFReader(str(gguf_path))
        tensors = [t for t in reader.tensors if t.name == TABLE]
        if not tensors:
            raise CorruptArtifactError(f"the GGUF has no '{TABLE}' tensor to read token rows from.")
        self._tensor = tensors[0]
        self.n_vocab = int(self._tensor.shape[1])
        self.n_embd = int(self._tensor.shape[0])

    def rows(self, ids: Sequence[int]) -> np.ndarray:
        """``[len(ids), n_embd]`` float32 rows of the table."""
        from gguf import GGMLQuantizationType, quants

        idx = np.asarray(ids, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_vocab):
            raise CorruptArtifactError(f"token id outside the table's {self.n_vocab} rows.")
        data = self._tensor.data[idx]
        kind = self._tensor.tensor_type
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            return np.asarray(data, dtype=np.float32).reshape(idx.size, self.n_embd)
        return quants.dequantize(np.ascontiguousarray(data), kind).reshape(idx.size, self.n_embd).astype(np.float32)
