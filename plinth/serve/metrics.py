"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/health", "/metrics",
          "/tokenize", "/detokenize", "/tokenizer_info")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Requests by route and status, tokens in and out, time to first token, inter-token latency, queue depth,
    active sequences and KV-cache memory (the last three read from the engine at scrape time)."""

    def __init__(self, engine: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("plinth_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("plinth_prompt_tokens", "prompt tokens read", registry=r)
        self.completion_tokens = Counter("plinth_completion_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("plinth_time_to_first_token_seconds", "request arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("plinth_inter_token_latency_seconds", "time between two tokens of one sequence",
                             buckets=LATENCY_BUCKETS, registry=r)
        Gauge("plinth_queue_depth", "sequences waiting for a batch row", registry=r).set_function(
            lambda: engine.stats()["waiting"])
        Gauge("plinth_active_sequences", "sequences in the running batch", registry=r).set_function(
            lambda: engine.stats()["active"])
        Gauge("plinth_kv_cache_bytes", "memory held by the KV cache", registry=r).set_function(
            lambda: engine.stats()["kv_bytes"])

    def count_request(self, path: str, status: int) -> None:
        route = path if path in ROUTES else "other"  # unknown paths share one label: no unbounded label set
        self.requests.labels(route=route, status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
