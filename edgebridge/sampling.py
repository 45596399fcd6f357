"""How the next token is chosen: ``GenerationConfig`` (openvino.genai's name for it) and stop strings.

``temperature=0`` (the default) is greedy: the argmax, exactly the ids edgebridge always gave, with no
sampler involved. Anything else runs llama.cpp's own sampler chain (``runtimes/llamacpp/sampler.py``:
penalties -> top-k -> top-p -> min-p -> temperature -> a seeded draw), so the same seed gives the same
tokens and the samplers behave as they do in llama.cpp's tools.

Stop strings end the answer where one appears; it is not part of the text. While streaming, text
that could still turn into a stop string is held back until it cannot.

Imports no torch and no transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from edgebridge.errors import InputError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already generated
    presence_penalty: float = 0.0  # subtracted once from a generated token's logit
    frequency_penalty: float = 0.0  # subtracted per occurrence
    penalty_last_n: int = 64  # how many generated tokens the penalties look back on
    seed: int | None = None  # None: a fresh random draw each call
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_at_eos: bool = True

    def check(self) -> "GenerationConfig":
        """Refuse values no sampler takes, naming the field."""
        def bad(name: str, why: str) -> InputError:
            return InputError(f"{name} {why}, got {getattr(self, name)!r}.")

        for name in ("max_new_tokens", "top_k", "penalty_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "must be a whole number")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", "must be at least 1")
        if self.top_k < 0 or self.penalty_last_n < 0:
            raise bad("top_k" if self.top_k < 0 else "penalty_last_n", "must be >= 0")
        numbers = {"temperature": (0, 100), "top_p": (0, 1), "min_p": (0, 1), "repetition_penalty": (1e-3, 100),
                   "presence_penalty": (-100, 100), "frequency_penalty": (-100, 100)}
        for name, (low, high) in numbers.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise bad(name, f"must be a number in [{low}, {high}]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2 ** 32):
            raise bad("seed", "must be a whole number in [0, 2**32)")
        if not all(isinstance(s, str) and s for s in self.stop) or len(self.stop) > 16:
            raise bad("stop", "must be at most 16 non-empty strings")
        return self

    @property
    def greedy(self) -> bool:
        """The argmax with nothing else: today's path, no sampler."""
        return self.temperature == 0 and self.repetition_penalty == 1 and not self.presence_penalty \
            and not self.frequency_penalty

    def with_(self, **changes: Any) -> "GenerationConfig":
        return replace(self, **changes)


class StopStrings:
    """Text pieces in, the part that cannot belong to a stop string out; ``stopped`` once one appears."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
