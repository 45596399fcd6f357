"""What one ``generate`` returns, and the decode loop that produces its tokens.

``decode_greedy`` is the text decoder: from the prefill's logits it picks tokens, streams their
text (UTF-8 split across tokens is held back until complete) and stops at a stop token,
``max_new_tokens`` or a full context. It keeps nothing between calls.

Imports no torch and no transformers.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator, Protocol

import numpy as np

from edgebridge.timing import GenerationTimings, now_ms


@dataclass
class GenerationResult:
    """What one ``generate`` call produced, how long each stage took, and where it ran.

    ``warnings`` holds what applies to this result: the pipeline's load-time fallbacks, then this
    call's own notes (``call_warnings``: a clip cut to the model's window ...).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (a stop token), "length" (max_new_tokens), "context" (n_ctx full)
    timings: GenerationTimings
    devices: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    tool_outputs: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"audio": [transcript]}
    call_warnings: list[str] = field(default_factory=list)
    media: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per item: size, grid, tokens

    @property
    def prefill_engine(self) -> str:
        return self.timings.prefill_engine

    @property
    def reused_positions(self) -> int:
        return self.timings.reused_prefix_positions

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": list(self.token_ids), "prompt_tokens": self.prompt_tokens,
                "finish_reason": self.finish_reason, "timings": self.timings.to_dict(), "devices": self.devices,
                "warnings": list(self.warnings), "tool_outputs": dict(self.tool_outputs), "media": self.media}


class GenerationStream:
    """Iterate to receive text pieces as they are decoded; ``result`` is set at the end."""

    def __init__(self, steps: Generator[str, None, GenerationResult]) -> None:
        self._steps = steps
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._steps


class Decoder(Protocol):
    n_past: int
    n_ctx: int

    def step(self, token: int) -> np.ndarray: ...

    def token_bytes(self, token: int) -> bytes: ...


@dataclass
class Decoded:
    """The decode loop's outcome (the text was streamed as it came)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    per_token_ms: list[float]
    decode_ms: float


def decode_greedy(llm: Decoder, logits: np.ndarray, max_new_tokens: int,
                  stop_ids: set[int]) -> Generator[str, None, Decoded]:
    """Greedy tokens from ``logits`` on; yields text pieces, returns the ``Decoded`` outcome."""
    start = now_ms()
    token = int(np.argmax(logits))
    tokens: list[int] = []
    per_token: list[float] = []
    raw = bytearray()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    finish = "length"
    while True:
        if token in stop_ids:
            finish = "stop"
            break
        tokens.append(token)
        piece = llm.token_bytes(token)
        raw += piece
        text_piece = utf8.decode(piece)
        if text_piece:
            yield text_piece
        if len(tokens) >= max_new_tokens:
            break
        if llm.n_past >= llm.n_ctx:
            finish = "context"
            break
        t0 = now_ms()
        token = int(np.argmax(llm.step(token)))
        per_token.append(now_ms() - t0)
    tail = utf8.decode(b"", final=True)
    if tail:
        yield tail
    return Decoded(tokens, bytes(raw).decode("utf-8", errors="replace"), finish, per_token, now_ms() - start)
