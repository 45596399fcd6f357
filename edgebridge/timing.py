"""Stage timers for one generation (monotonic, in milliseconds)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator


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


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) without numpy."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
