"""Per-component quantization: what to try, the drift budget, and the search for ``auto``.

``--quantize`` takes ``auto`` or comma-separated ``COMPONENT=PRECISION`` pairs, where COMPONENT
is ``encoder`` (every encoder + bridge graph, both formats), ``encoder.onnx`` /
``encoder.openvino`` (one format) or ``llm``; PRECISION may be ``auto``.

``--max-drift`` takes ``COMPONENT.METRIC=VALUE`` pairs (``encoder.cosine_min=0.99``,
``llm.kl_mean=0.05``). Defaults (``DEFAULT_BUDGET``):

- encoder: worst-vector cosine >= 0.99 against PyTorch on held-out photos;
- llm: top-1 agreement >= 0.90 and mean KL <= 0.05 nats against the f32 GGUF on the reference
  text set (next-token distributions at every position).

``auto`` tries each component's candidates from smallest/fastest to largest (``AUTO_ORDER``)
and keeps the first within budget; every trial (size, latency, drift, verdict) is recorded. A
profile target (``targets.py``: ``latency`` or ``size``) measures every candidate instead and keeps
the best within the drift and memory budgets, recording why (``choose``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

from edgebridge.errors import ExportError
from edgebridge.exporters.quantize.gguf_quant import LLM_FTYPES, LLM_MIXES
from edgebridge.exporters.quantize.onnx_quant import PRECISIONS as ONNX_PRECISIONS
from edgebridge.exporters.quantize.openvino_quant import PRECISIONS as OPENVINO_PRECISIONS
from edgebridge.exporters.quantize.targets import ranking
from edgebridge.manifest import canonical_precision
from edgebridge.parity import LOWER_BOUNDS, UPPER_BOUNDS, enforce, violations

ENCODER_PRECISIONS = {"onnx": ONNX_PRECISIONS, "openvino": OPENVINO_PRECISIONS}
LLM_PRECISIONS = ("f32", "f16", *LLM_FTYPES, *LLM_MIXES)
AUTO_ORDER = {
    "onnx": ["int8-static", "int8", "f16", "f32"],
    "openvino": ["int4", "int8-static", "int8", "f16", "f32"],
    "llm": ["q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0-ffn-q6_k", "q8_0", "f16", "f32"],
}
TIE = 0.05  # a profile target's measures closer than this to the best count as equal (timing noise)
TIMING_ROUNDS = 3  # side-by-side timings: rounds that alternate the candidates (edgebridge.timing.alternating_medians)
# A profile target's second timing of the candidates within budget, side by side: updates each trial's
# ``speed`` and says how it was measured.
Retime = Callable[[list["Trial"]], str]
DEFAULT_BUDGET: dict[str, dict[str, float]] = {
    "encoder": {"cosine_min": 0.99},
    "llm": {"top1_agreement": 0.90, "kl_mean": 0.05},
}


@dataclass
class QuantPlan:
    """Precision per encoder format and for the LLM (``auto`` allowed), and the drift budget."""

    encoder: dict[str, str]
    llm: str
    budget: dict[str, dict[str, float]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_BUDGET))
    calibration: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # int4_mode, int4_group_size
    target: str | None = None  # a profile target (targets.PROFILE_TARGETS): measure all, keep the best
    max_memory_mb: float | None = None  # weights budget of one run: an encoder format per component + the GGUF

    def memory_left(self, used_bytes: int) -> float | None:
        """Bytes of ``--max-memory`` left once ``used_bytes`` of weights are kept (None: no budget)."""
        return None if self.max_memory_mb is None else self.max_memory_mb * 2**20 - used_bytes

    def candidates(self, target: str) -> list[str]:
        """The precisions to try for ``target`` ("onnx", "openvino" or "llm"), in order."""
        precision = self.llm if target == "llm" else self.encoder[target]
        return list(AUTO_ORDER[target]) if precision == "auto" else [precision]

    @property
    def quantizes_encoders(self) -> bool:
        return any(p != "f32" for p in self.encoder.values())


def parse_quantize(spec: str | None, formats: tuple[str, ...], llm_dtype: str = "f16") -> dict[str, Any]:
    """``--quantize`` text -> ``{"encoder": {format: precision}, "llm": precision}``."""
    encoder = {fmt: "f32" for fmt in formats}
    llm = llm_dtype
    if spec and spec.strip() == "auto":
        return {"encoder": {fmt: "auto" for fmt in formats}, "llm": "auto"}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        if "=" not in item:
            raise ExportError(f"--quantize item '{item}' is not COMPONENT=PRECISION.",
                              hint="Example: --quantize encoder=int8,llm=q4_k_m (or --quantize auto).")
        key, precision = (s.strip().lower() for s in item.split("=", 1))
        precision = canonical_precision(precision)  # fp32/fp16, the old spelling, still accepted
        if key == "llm":
            if precision not in (*LLM_PRECISIONS, "auto"):
                raise ExportError(f"unknown LLM precision '{precision}'.",
                                  hint=f"Choose from: {', '.join(LLM_PRECISIONS)}, auto.")
            llm = precision
            continue
        targets = formats if key == "encoder" else (key.split(".", 1)[1],) if key.startswith("encoder.") else ()
        if not targets:
            raise ExportError(f"unknown --quantize component '{key}'.",
                              hint="Use encoder, encoder.onnx, encoder.openvino or llm.")
        for fmt in targets:
            if fmt not in formats:
                raise ExportError(f"--quantize names {key}, but the export writes no {fmt} encoder.",
                                  hint="Add it with --encoder-format.")
            if precision not in (*ENCODER_PRECISIONS[fmt], "auto"):
                raise ExportError(f"{fmt} encoders cannot be quantized to '{precision}'.",
                                  hint=f"{fmt} takes: {', '.join(ENCODER_PRECISIONS[fmt])}, auto.")
            encoder[fmt] = precision
    return {"encoder": encoder, "llm": llm}


def target_defaults(parsed: dict[str, Any], spec: str | None, formats: tuple[str, ...],
                    llm_dtype_given: bool) -> dict[str, Any]:
    """With a profile target, every precision the user did not fix (by ``--quantize`` or ``--llm-dtype``)
    becomes ``auto``; the fixed ones stay as given."""
    keys = {item.split("=", 1)[0].strip().lower() for item in (spec or "").split(",") if "=" in item}
    encoder = {fmt: p if ("encoder" in keys or f"encoder.{fmt}" in keys) else "auto"
               for fmt, p in parsed["encoder"].items() if fmt in formats}
    llm = parsed["llm"] if ("llm" in keys or llm_dtype_given) else "auto"
    return {"encoder": encoder, "llm": llm}


def parse_budget(items: list[str] | None) -> dict[str, dict[str, float]]:
    """``--max-drift`` items -> the budget, defaults filled in."""
    budget = copy.deepcopy(DEFAULT_BUDGET)
    for item in items or []:
        for part in filter(None, (s.strip() for s in item.split(","))):
            try:
                key, value = part.split("=", 1)
                component, metric = key.strip().split(".", 1)
                number = float(value)
            except ValueError:
                raise ExportError(f"--max-drift item '{part}' is not COMPONENT.METRIC=VALUE.",
                                  hint="Example: --max-drift encoder.cosine_min=0.99,llm.kl_mean=0.05") from None
            if not math.isfinite(number):  # a NaN bound would let every gate pass
                raise ExportError(f"--max-drift item '{part}' is not a finite number.",
                                  hint="Example: --max-drift encoder.cosine_min=0.99,llm.kl_mean=0.05")
            if component not in budget:
                raise ExportError(f"--max-drift names unknown component '{component}' (use encoder or llm).")
            if metric not in UPPER_BOUNDS | LOWER_BOUNDS:
                raise ExportError(f"--max-drift names unknown metric '{metric}'.",
                                  hint=f"Metrics: {', '.join(sorted(UPPER_BOUNDS | LOWER_BOUNDS))}.")
            budget[component][metric] = number
    return budget


@dataclass
class Trial:
    """One candidate precision tried: its size, speed, drift and verdict."""

    precision: str
    bytes: int
    speed: dict[str, float]
    metrics: dict[str, float]
    tolerance: dict[str, float]
    passed: bool
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verdict(metrics: dict[str, float], tolerance: dict[str, float]) -> tuple[bool, str]:
    broken = violations(metrics, tolerance)
    if not broken:
        return True, "within budget"
    key, value, limit = broken[0]
    sign = "<" if key in LOWER_BOUNDS else ">"
    return False, f"{key} {value:.4g} {sign} {limit:.4g}"


def choose_within_budget(label: str, candidates: list[str], evaluate: Callable[[str], Trial],
                         hint: str | None = None) -> tuple[Trial, list[Trial]]:
    """Evaluate candidates in order and keep the first within its budget: (kept trial, every trial).

    When none is, ``parity.enforce`` raises ``ParityError`` for the last one tried (the largest
    precision), naming ``label`` (``{precision}`` is filled in) and its first broken figure.
    """
    trials = []
    for precision in candidates:
        trial = evaluate(precision)
        trials.append(trial)
        if trial.passed:
            return trial, trials
    _refuse(label, trials[-1], hint)


def _refuse(label: str, last: Trial, hint: str | None) -> NoReturn:
    """No candidate was kept: the last one's first broken drift figure (``ParityError``), else its verdict."""
    enforce(label.format(precision=last.precision), last.metrics, last.tolerance, hint=hint)
    raise ExportError(f"{label.format(precision=last.precision)} was refused: {last.verdict}.", hint=hint)


def over_memory(size: int, left: float | None) -> str | None:
    """The verdict of weights that do not fit what is left of the memory budget; None when they do."""
    if left is None or size <= left:
        return None
    return f"weights {size / 2**20:.1f} MB > {max(left, 0) / 2**20:.1f} MB left of --max-memory"


def choose(label: str, candidates: list[str], evaluate: Callable[[str], Trial], hint: str | None, plan: QuantPlan,
           kind: str, used_bytes: int = 0, retime: Retime | None = None
           ) -> tuple[Trial, list[Trial], dict[str, Any] | None]:
    """Pick a precision for one artifact: (kept trial, every trial, the selection record or None).

    Without a profile target: the first candidate within the budgets (``choose_within_budget``). With
    one, every candidate is measured and the best by the target's ranking within the budgets is kept.
    ``kind`` is ``encoder`` or ``llm``; ``used_bytes`` the weights already kept for the run (the
    memory budget's remainder is what a candidate may take). ``retime``: with a latency target, the
    candidates within budget are timed again side by side before they are ranked (each was timed once,
    right after it was written, minutes apart from the others).
    """
    left = plan.memory_left(used_bytes)

    def checked(precision: str) -> Trial:
        trial = evaluate(precision)
        over = over_memory(trial.bytes, left)
        if trial.passed and over:
            trial.passed, trial.verdict = False, over
        return trial

    memory_hint = "Raise --max-memory or choose a smaller precision." if left is not None else None
    if plan.target is None or len(candidates) == 1:
        kept, trials = choose_within_budget(label, candidates, checked, hint or memory_hint)
        return kept, trials, None
    trials = [checked(precision) for precision in candidates]
    passing = [t for t in trials if t.passed]
    if not passing:
        _refuse(label, trials[-1], hint or memory_hint)
    rank = ranking(plan.target, kind)
    timing = retime(passing) if retime is not None and plan.target == "latency" and len(passing) > 1 else None
    values = {t.precision: round(rank.value(t.speed, t.bytes), 3) for t in passing}
    sizes = {t.precision: t.bytes for t in passing}
    ties = within_tie(values)
    kept = next(t for t in passing if t.precision == smallest_of_best(values, sizes))
    budgets = "drift and memory budgets" if left is not None else "drift budget"
    tied = f"; within {TIE:.0%} of the best, so the smallest of {len(ties)}" if len(ties) > 1 else ""
    selection = {
        "target": plan.target, "measure": rank.measure, "unit": rank.unit, "within_budget": values,
        "reason": f"{kept.precision}: {rank.measure} {values[kept.precision]:g} ({rank.unit}), the best of the "
                  f"{len(passing)} of {len(trials)} candidates within the {budgets} measured on this machine{tied}",
    }
    if timing:
        selection["timing"] = timing
    return kept, trials, selection


def within_tie(values: dict[Any, float]) -> list[Any]:
    """The keys whose value (lower is better) is within ``TIE`` of the best: timing noise on a busy machine."""
    best = min(values.values())
    return [k for k, v in values.items() if v <= best * (1 + TIE)]


def smallest_of_best(values: dict[Any, float], sizes: dict[Any, int]) -> Any:
    """The profile targets' rule: of the keys within ``TIE`` of the best value, the fewest bytes (then the
    better value)."""
    return min(within_tie(values), key=lambda k: (sizes[k], values[k]))


def check_memory(plan: QuantPlan, label: str, size: int, used_bytes: int = 0) -> None:
    """Refuse an artifact written without a search (nothing to choose) that exceeds the memory budget."""
    over = over_memory(size, plan.memory_left(used_bytes))
    if over:
        raise ExportError(f"{label} was refused: {over}.", hint="Raise --max-memory or choose a smaller precision.")
