"""Stage timers for one generation (monotonic, in milliseconds)."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from edgebridge.typed import ReadAsDict


def now_ms() -> float:
    return time.perf_counter() * 1000.0


@dataclass
class StageTimes:
    """Wall-clock milliseconds per named stage, in the order the stages ran."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = now_ms()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + (now_ms() - start)

    def add(self, name: str, ms: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + ms


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in ms over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = now_ms()
        fn()
        samples.append(now_ms() - start)
    return percentile(samples, 50)


K = TypeVar("K")


def alternating_medians(keys: Sequence[K], measure: Callable[[K], Mapping[str, float]], rounds: int
                        ) -> dict[K, dict[str, float]]:
    """Each key's figures from ``rounds`` rounds that alternate the keys, each figure the median. Side by
    side, a busy machine's drift over an export's minutes touches every key alike: timed once each,
    minutes apart, the bench Qwen2.5-VL's q6_k GGUF decoded at 428 tok/s in one export and 332 in
    another, and the choice of GGUF type followed the noise."""
    samples: dict[K, list[Mapping[str, float]]] = {k: [] for k in keys}
    for _ in range(rounds):
        for k in keys:
            samples[k].append(measure(k))
    return {k: {name: statistics.median(r[name] for r in runs) for name in runs[0]} for k, runs in samples.items()}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) without numpy."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class GenerationTimings(ReadAsDict):
    """Where one ``generate`` spent its time. ``to_dict()`` gives the JSON keys of ``--json`` and the
    profile report (``ttft_ms``, ``prefill_ms``, ``encode_image_ms`` ...); read access by key works on
    the object itself (``result.timings["ttft_ms"]``).

    ``stages`` holds the named stages in the order they ran (``prompt``, ``preprocess_image``,
    ``tool_audio``, ``encode_image``, ``prefill``). ``embedding_cache_hits`` counts the pipeline's
    hits so far (all calls), the other figures are this call's.
    """

    stages: dict[str, float]
    ttft_ms: float
    prompt_tokens: int
    new_tokens: int
    decode_ms: float
    per_token_ms: list[float]
    total_ms: float
    reused_prefix_positions: int = 0
    prefill_engine: str = "llama.cpp"
    embedding_cache_hits: int = 0

    def _sum(self, prefix: str) -> float:
        return sum(v for k, v in self.stages.items() if k.startswith(prefix))

    @property
    def prefill_tokens_per_s(self) -> float | None:
        prefill = self.stages.get("prefill", 0.0)
        return round(self.prompt_tokens / (prefill / 1000.0), 1) if prefill > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        tok = self.per_token_ms
        return round(len(tok) / (sum(tok) / 1000.0), 1) if tok and sum(tok) > 0 else None

    def to_dict(self) -> dict[str, Any]:
        tok = self.per_token_ms
        out: dict[str, Any] = {k + "_ms": round(v, 3) for k, v in self.stages.items()}
        out.update(
            preprocess_ms=round(self._sum("preprocess_"), 3),
            encode_ms=round(self._sum("encode_"), 3),
            ttft_ms=round(self.ttft_ms, 3),
            prompt_tokens=self.prompt_tokens,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            new_tokens=self.new_tokens,
            decode_ms=round(self.decode_ms, 3),
            per_token_ms=[round(x, 3) for x in tok],
            per_token_p50_ms=round(percentile(tok, 50), 3) if tok else None,
            per_token_p95_ms=round(percentile(tok, 95), 3) if tok else None,
            decode_tokens_per_s=self.decode_tokens_per_s,
            total_ms=round(self.total_ms, 3),
            reused_prefix_positions=self.reused_prefix_positions,
            prefill_engine=self.prefill_engine,
            embedding_cache_hits=self.embedding_cache_hits,
        )
        return out
