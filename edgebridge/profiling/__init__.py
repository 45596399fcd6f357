"""Profiling: per-stage statistics of generations, as a versioned JSON report (and HTML).

The CLI's ``edgebridge profile`` and an application's own code produce the same report:

    from edgebridge.profiling import Profiler
    profiler = Profiler(warmup=1)
    for _ in range(6):
        profiler.record(pipe.generate(prompt, images=[img]), config="my-app")
        with profiler.stage("postprocess", config="my-app"):
            ...  # the application's own work, timed into the same report
    profiler.write("profile/")   # report.json + report.html

The first ``warmup`` records of each configuration are dropped from the statistics. The schema
is ``REPORT_SCHEMA`` (``report.schema.json`` beside this file, documented in ``REPORT.md``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from edgebridge.errors import InputError
from edgebridge.timing import now_ms, percentile

REPORT_SCHEMA_VERSION = 1
REPORT_SCHEMA = Path(__file__).with_name("report.schema.json")

# stages every configuration reports, in pipeline order (ms unless named *_per_s)
STAGES = ("load_ms", "preprocess_ms", "encode_ms", "bridge_ms", "encode_bridge_ms", "prefill_ms", "ttft_ms",
          "per_token_ms", "decode_ms", "total_ms", "prefill_tokens_per_s", "decode_tokens_per_s")
# stages where edgebridge and a baseline measure the same thing, for ratios
COMPARABLE = ("encode_bridge_ms", "ttft_ms", "per_token_ms", "decode_tokens_per_s", "load_ms", "preprocess_ms")
HIGHER_IS_BETTER = {"prefill_tokens_per_s", "decode_tokens_per_s"}


def stat(samples: list[float]) -> dict[str, Any]:
    """Summary of one stage: every sample, p50 / p95 (linear interpolation), mean, min, max."""
    xs = [float(x) for x in samples if x is not None]
    if not xs:
        return {"n": 0, "samples": [], "p50": None, "p95": None, "mean": None, "min": None, "max": None}
    return {"n": len(xs), "samples": [round(x, 4) for x in xs], "p50": round(percentile(xs, 50), 4),
            "p95": round(percentile(xs, 95), 4), "mean": round(statistics.fmean(xs), 4),
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


@dataclass
class Configuration:
    """One system under test: an edgebridge backend/device/threads setting, or a baseline."""

    name: str
    kind: str = "edgebridge"  # "edgebridge" | "baseline"
    settings: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    per_token_ms: list[float] = field(default_factory=list)
    runs: int = 0
    warmup_dropped: int = 0
    status: str = "ok"
    error: str | None = None
    devices: dict[str, Any] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    peak_rss_method: str | None = None
    bridge_share: dict[str, Any] | None = None
    token_ids: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _seen: int = 0

    def add(self, stage: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(stage, []).append(float(value))

    def to_dict(self) -> dict[str, Any]:
        stages = {k: stat(v) for k, v in self.samples.items()}
        stages["per_token_ms"] = stat(self.per_token_ms)
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "settings": self.settings,
            "runs": self.runs,
            "warmup_dropped": self.warmup_dropped,
            "stages": stages,
            "devices": self.devices,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_rss_method": self.peak_rss_method,
            "bridge_share": self.bridge_share,
            "token_ids": self.token_ids,
            **self.extra,
        }


class Profiler:
    """Collects generation results and timed application stages per configuration."""

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = warmup
        self.configurations: dict[str, Configuration] = {}

    def configuration(self, name: str, **settings: Any) -> Configuration:
        conf = self.configurations.setdefault(name, Configuration(name=name))
        conf.settings.update(settings)
        return conf

    def record(self, result: Any, config: str = "default") -> bool:
        """Add one ``GenerationResult``; returns False while it was a warm-up (not counted)."""
        conf = self.configuration(config)
        conf._seen += 1
        if conf._seen <= self.warmup:
            conf.warmup_dropped += 1
            return False
        t = result.timings.to_dict() if hasattr(result.timings, "to_dict") else result.timings
        share = (conf.bridge_share or {}).get("share")
        graph = t.get("encode_ms")
        conf.add("encode_bridge_ms", graph)
        if share is not None and graph is not None:
            conf.add("bridge_ms", graph * share)
            conf.add("encode_ms", graph * (1.0 - share))
        else:
            conf.add("encode_ms", graph)
        for key in ("preprocess_ms", "prefill_ms", "ttft_ms", "decode_ms", "total_ms", "prefill_tokens_per_s",
                    "decode_tokens_per_s"):
            conf.add(key, t.get(key))
        for key, value in t.items():  # per-modality stages: preprocess_image_ms, encode_audio_ms ...
            if key.startswith(("preprocess_", "encode_")) and key not in ("preprocess_ms", "encode_ms"):
                conf.add(key, value)
        conf.per_token_ms.extend(t.get("per_token_ms") or [])
        conf.runs += 1
        conf.devices = result.devices
        conf.extra["prompt_tokens"] = t.get("prompt_tokens")
        conf.extra["new_tokens"] = t.get("new_tokens")
        if conf.token_ids is None:
            conf.token_ids = list(result.token_ids)
        return True

    @contextlib.contextmanager
    def stage(self, name: str, config: str = "default") -> Iterator[None]:
        """Time a block of application code into ``<name>_ms`` of ``config`` (warm-up not applied)."""
        start = now_ms()
        try:
            yield
        finally:
            self.configuration(config).add(f"{name}_ms", now_ms() - start)

    # --- the report ------------------------------------------------------------------------------

    def report(self, *, bundle: dict[str, Any] | None = None, workload: dict[str, Any] | None = None,
               environment: dict[str, Any] | None = None, memory_bandwidth: dict[str, Any] | None = None) -> dict:
        from edgebridge.profiling.system import environment as env_now

        configs = [c.to_dict() for c in self.configurations.values()]
        return {
            "schema": "edgebridge.profile",
            "schema_version": REPORT_SCHEMA_VERSION,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "bundle": bundle,
            "workload": workload or {"warmup": self.warmup},
            "environment": environment or env_now(),
            "memory_bandwidth": memory_bandwidth,
            "configurations": configs,
            "comparisons": comparisons(configs),
        }

    def write(self, out_dir: str | Path, report: dict[str, Any] | None = None, html: bool = True) -> dict[str, Path]:
        """Write ``report.json`` (and ``report.html``) into ``out_dir``; returns the paths."""
        from edgebridge.profiling.html import render_html

        report = report or self.report()
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise InputError(f"'{out}' is a file; the profile writes a folder (report.json, report.html).",
                             hint="Pass a folder path to -o.")
        paths = {"json": out / "report.json"}
        try:
            out.mkdir(parents=True, exist_ok=True)
            paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            if html:
                paths["html"] = out / "report.html"
                paths["html"].write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the profile into '{out}' ({exc.strerror or exc}).",
                             hint="Choose a writable folder with free space.") from None
        return paths


def _p50(conf: dict[str, Any], stage: str) -> float | None:
    return (conf["stages"].get(stage) or {}).get("p50")


def comparisons(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """edgebridge / baseline ratios of the p50 of every stage both measured."""
    out = []
    ours = [c for c in configs if c["kind"] == "edgebridge" and c["status"] == "ok"]
    baselines = [c for c in configs if c["kind"] == "baseline" and c["status"] == "ok"]
    for mine in ours:
        for base in baselines:
            ratios = {}
            for stage in COMPARABLE:
                a, b = _p50(mine, stage), _p50(base, stage)
                if a is not None and b:
                    ratios[stage] = {"edgebridge": a, "baseline": b, "ratio": round(a / b, 4),
                                     "better": "higher" if stage in HIGHER_IS_BETTER else "lower"}
            out.append({"configuration": mine["name"], "baseline": base["name"], "ratios": ratios})
    return out
