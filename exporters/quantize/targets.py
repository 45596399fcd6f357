"""``--profile-target``: which of the candidates within the drift budget an export keeps.

``auto`` without a target keeps the first candidate within budget in ``AUTO_ORDER`` (smallest first).
A target measures every candidate on this machine and keeps the best one within the drift budget and
the memory budget:

- ``latency``: encoders by their measured time per item; the LLM by the time of a typical answer on
  this machine: a ``PROMPT_POSITIONS``-position prompt prefilled at its measured prefill rate plus
  ``ANSWER_TOKENS`` tokens at its measured decode rate (both from the export's own timing run);
- ``size``: the fewest bytes.

The memory budget (``--max-memory MB``) counts weights: the bytes of the artifact a run loads (one
encoder format per component, the GGUF). A candidate above what is left of it is refused with that
reason, like a candidate beyond the drift budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PROFILE_TARGETS = ("latency", "size")
PROMPT_POSITIONS = 256  # an image prompt: 196-256 image tokens and a question, the common case
ANSWER_TOKENS = 64


@dataclass(frozen=True)
class Ranking:
    """How a target orders one kind of candidate: the measure's name, unit and value per trial."""

    measure: str
    unit: str
    value: Callable[[dict[str, float], int], float]  # (trial speed, trial bytes) -> lower is better


def _answer_ms(speed: dict[str, float], _bytes: int) -> float:
    return 1000.0 * (PROMPT_POSITIONS / speed["prefill_tokens_per_s"] + ANSWER_TOKENS / speed["decode_tokens_per_s"])


RANKINGS: dict[tuple[str, str], Ranking] = {
    ("latency", "encoder"): Ranking("latency_ms", "ms per item", lambda speed, _b: speed["latency_ms"]),
    ("latency", "llm"): Ranking("answer_ms", f"ms for a {PROMPT_POSITIONS}-position prompt + {ANSWER_TOKENS} "
                                             "tokens", _answer_ms),
    ("size", "encoder"): Ranking("bytes", "bytes", lambda _s, size: float(size)),
    ("size", "llm"): Ranking("bytes", "bytes", lambda _s, size: float(size)),
}


def ranking(target: str, kind: str) -> Ranking:
    """The ranking of ``target`` for ``kind`` (``encoder`` or ``llm``)."""
    return RANKINGS[(target, kind)]
