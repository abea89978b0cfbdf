"""Prometheus metrics, by tenant and model alias (vLLM's own /metrics has no
per-adapter breakdown). One registry per gateway, no global state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["tenant", "model", "endpoint"]
        self.requests = Counter("adaptserve_requests", "requests answered", [*labels, "status"], registry=self.registry)
        self.tokens = Counter(
            "adaptserve_tokens", "tokens processed", ["tenant", "model", "kind"], registry=self.registry
        )
        self.latency = Histogram(
            "adaptserve_request_seconds",
            "time from request to last byte",
            labels,
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.adapter_loads = Counter(
            "adaptserve_adapter_loads", "adapter loads into vLLM", ["result"], registry=self.registry
        )
        self.adapter_unloads = Counter(
            "adaptserve_adapter_unloads", "adapter unloads from vLLM", registry=self.registry
        )
        self.adapter_load_seconds = Histogram(
            "adaptserve_adapter_load_seconds",
            "time to load an adapter",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
