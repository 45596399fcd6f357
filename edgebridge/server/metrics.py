"""The server's Prometheus metrics, in a registry of its own (two apps in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgebridge_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("edgebridge_errors", "Requests answered with an error, by code", ["code"], registry=r)
        self.queue_depth = Gauge("edgebridge_queue_depth", "Requests waiting for a free pipeline", registry=r)
        self.busy = Gauge("edgebridge_busy_pipelines", "Pipelines answering a request now", registry=r)
        self.ttft = Histogram("edgebridge_ttft_seconds", "Time to first token", buckets=TTFT_BUCKETS, registry=r)
        self.per_token = Histogram("edgebridge_per_token_seconds", "Decode time per token", buckets=TOKEN_BUCKETS,
                                   registry=r)
        self.tokens = Counter("edgebridge_tokens_generated", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("edgebridge_prompt_tokens", "Prompt positions prefilled", registry=r)

    def observe_result(self, result) -> None:
        t = result.timings
        self.ttft.observe(t.ttft_ms / 1e3)
        for ms in t.per_token_ms:
            self.per_token.observe(ms / 1e3)
        self.tokens.inc(len(result.token_ids))
        self.prompt_tokens.inc(result.prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
