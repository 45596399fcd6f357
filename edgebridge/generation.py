"""What one ``generate`` returns, and the decode loop that produces its tokens.

``decode`` is the text decoder: from the prefill's logits it picks tokens (the argmax, or llama.cpp's
sampler chain), streams their text (UTF-8 split across tokens, and text that may become a stop string,
held back) and stops at a stop token or string, ``max_new_tokens`` or a full context. It keeps nothing
between calls.

Imports no torch and no transformers.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Protocol

import numpy as np

from edgebridge.sampling import GenerationConfig, StopStrings
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
    finish_reason: str  # "stop" (a stop token or string), "length" (max_new_tokens), "context" (n_ctx full)
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

    def token_bytes(self, token: int, *, first: bool = False) -> bytes: ...


@dataclass
class Decoded:
    """The decode loop's outcome (the text was streamed as it came)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    per_token_ms: list[float]
    decode_ms: float


def decode(llm: Decoder, logits: np.ndarray, config: GenerationConfig, stop_ids: set[int],
           choose: Callable[[np.ndarray], int]) -> Generator[str, None, Decoded]:
    """Tokens from ``logits`` on, each picked by ``choose`` (the argmax, or a sampler); yields text
    pieces (stop strings held back and cut), returns the ``Decoded`` outcome."""
    start = now_ms()
    token = choose(logits)
    tokens: list[int] = []
    per_token: list[float] = []
    text: list[str] = []
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopStrings(config.stop)
    finish = "length"
    while True:
        if token in stop_ids:
            finish = "stop"
            break
        tokens.append(token)
        piece = stops.feed(utf8.decode(llm.token_bytes(token, first=len(tokens) == 1)))
        if piece:
            text.append(piece)
            yield piece
        if stops.stopped:
            finish = "stop"
            break
        if len(tokens) >= config.max_new_tokens:
            break
        if llm.n_past >= llm.n_ctx:
            finish = "context"
            break
        t0 = now_ms()
        token = choose(llm.step(token))
        per_token.append(now_ms() - t0)
    tail = "" if stops.stopped else stops.feed(utf8.decode(b"", final=True)) + stops.flush()
    if tail:
        text.append(tail)
        yield tail
    return Decoded(tokens, "".join(text), finish, per_token, now_ms() - start)


def argmax(logits: np.ndarray) -> int:
    return int(np.argmax(logits))
