"""Whisper speech recognition as a tool: log-mel features in, the transcript out (greedy, KV cache).

Three graphs (optimum's Whisper export): ``encoder`` (features -> hidden states), ``decoder`` (the
prompt tokens + hidden states -> logits, self-attention and cross-attention caches) and
``decoder_with_past`` (one token + caches -> logits, the grown self-attention cache). The loop is
transformers' short-form greedy decoding: the prompt (``<|startoftranscript|>``, language and task
for multilingual models, ``<|notimestamps|>``), ``suppress_tokens`` masked at every step and
``begin_suppress_tokens`` at the first, until ``<|endoftext|>`` or ``max_length``. Text is the
byte-level decoding of the non-special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.bundle import bundle_file
from edgebridge.manifest import Component
from edgebridge.runtimes.registry import run_named
from edgebridge.runtimes.tools import ToolOutput, open_graphs, register_tool


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies spell tokens in it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ByteLevelVocab:
    """Token id -> bytes for byte-level BPE vocabularies (special tokens dropped)."""

    def __init__(self, path: Path) -> None:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.tokens: list[str] = data["tokens"]
        self.special = set(data["special_ids"])
        self._map = {ch: byte for byte, ch in bytes_to_unicode().items()}

    def decode(self, ids: list[int]) -> str:
        raw = bytearray()
        for i in ids:
            if i in self.special or not 0 <= i < len(self.tokens):
                continue
            raw.extend(self._map.get(ch, ord("?")) for ch in self.tokens[i])
        return raw.decode("utf-8", errors="replace")


@register_tool("whisper-asr")
class WhisperASR:
    def __init__(self, root: Path, component: Component, backend: str, **options: Any) -> None:
        spec = component.tool
        self.graphs = open_graphs(root, component, backend, **options)
        self.report = self.graphs["encoder"].report
        self.vocab = ByteLevelVocab(bundle_file(root, spec["vocab"]))
        self.prompt = [int(i) for i in spec["prompt_ids"]]
        self.eos = int(spec["eos_id"])
        self.max_length = int(spec["max_length"])
        self.n_layers = int(spec["decoder_layers"])
        self.suppress = np.asarray(spec["suppress_tokens"], dtype=np.int64)
        self.begin_suppress = np.asarray(spec["begin_suppress_tokens"], dtype=np.int64)

    def transcribe(self, features: np.ndarray) -> list[int]:
        """``features [1, M, T]`` -> generated token ids (without the prompt and the end token)."""
        hidden = run_named(self.graphs["encoder"], {"input_features": features})["last_hidden_state"]
        out = run_named(self.graphs["decoder"], {"input_ids": np.asarray([self.prompt], np.int64),
                                                 "encoder_hidden_states": hidden})
        cache = {f"past_key_values.{i}.{side}.{kv}": out[f"present.{i}.{side}.{kv}"]
                 for i in range(self.n_layers) for side in ("decoder", "encoder") for kv in ("key", "value")}
        generated: list[int] = []
        logits = out["logits"][0, -1]
        while len(self.prompt) + len(generated) < self.max_length:
            scores = logits.astype(np.float32, copy=True)
            scores[self.suppress] = -np.inf
            if not generated:
                scores[self.begin_suppress] = -np.inf
            token = int(np.argmax(scores))
            if token == self.eos:
                break
            generated.append(token)
            out = run_named(self.graphs["decoder_with_past"], {"input_ids": np.asarray([[token]], np.int64), **cache})
            for i in range(self.n_layers):
                for kv in ("key", "value"):
                    cache[f"past_key_values.{i}.decoder.{kv}"] = out[f"present.{i}.decoder.{kv}"]
            logits = out["logits"][0, -1]
        return generated

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()

    def run(self, inputs: dict[str, np.ndarray], rows: list[slice]) -> list[ToolOutput]:
        outputs = []
        for r in rows:
            features = inputs["input_features"][r][:1]  # one 30 s window per clip
            ids = self.transcribe(np.ascontiguousarray(features, dtype=np.float32))
            outputs.append(ToolOutput(text=self.vocab.decode(ids).strip(), details={"token_ids": ids}))
        return outputs
