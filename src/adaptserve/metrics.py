"""Prometheus metrics, by tenant and model alias (vLLM's own /metrics has no
per-adapter breakdown), and the upstreams' state as the pool sees it when scraped.
One registry per gateway, no global state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

UpstreamStates = Callable[[], list[tuple[str, str, bool, int]]]  # (model, url, in service, in flight)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.upstream_states: UpstreamStates = list  # the pool's, once there is one
        self.registry.register(_Upstreams(self))
        labels = ["tenant", "model", "endpoint"]
        self.requests = Counter("adaptserve_requests", "requests answered", [*labels, "status"], registry=self.registry)
        self.tokens = Counter(
            "adaptserve_tokens",
            "tokens processed; kind: prompt, completion, or cached (the prompt tokens vLLM's prefix cache served)",
            ["tenant", "model", "kind"],
            registry=self.registry,
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
        for result in ("ok", "failed"):  # both series exist from the start: a first failure is an increase
            self.adapter_loads.labels(result)
        self.adapter_unloads = Counter(
            "adaptserve_adapter_unloads", "adapter unloads from vLLM", registry=self.registry
        )
        self.adapter_load_seconds = Histogram(
            "adaptserve_adapter_load_seconds",
            "time to load an adapter",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

        self.first_token = Histogram(
            "adaptserve_time_to_first_token_seconds",
            "time from a streamed request to its first event",
            ["tenant", "model"],
            registry=self.registry,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.quota_rejections = Counter(
            "adaptserve_quota_rejections",
            "requests refused by a tenant quota",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self.pii_found = Counter(
            "adaptserve_pii_found",
            "personal data found in requests, by entity type and the tenant's mode (mask or block)",
            ["tenant", "entity", "mode"],
            registry=self.registry,
        )
        self.upstream_restarts = Counter(
            "adaptserve_upstream_restarts",
            "an upstream came back as a new engine (its adapters gone)",
            ["upstream"],
            registry=self.registry,
        )
        self.admin_unauthenticated = Counter(
            "adaptserve_admin_unauthenticated",
            "admin mutations no key was accepted for (401, or 429 from the failed-key throttle): counted, "
            "never written to the audit trail",
            ["status"],
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "adaptserve_upstream_retries",
            "requests retried on another upstream after a failure before any answer",
            registry=self.registry,
        )
        self.requests_held = Counter(
            "adaptserve_requests_held",
            "adapter requests held back in the gateway so their adapter's batch slot drained for adapters "
            "waiting for one (serving/picker.py, Picker.drains)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Upstreams(Collector):
    """Read at scrape time, so upstreams that leave (DNS) leave the metrics too."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "upstream"]  # the model: the generate model's name, or a `models:` entry's
        up = GaugeMetricFamily("adaptserve_upstream_up", "1 while an upstream is in service", labels=labels)
        inflight = GaugeMetricFamily(
            "adaptserve_upstream_inflight", "this gateway's requests in flight on an upstream", labels=labels
        )
        for model, url, ready, count in self._metrics.upstream_states():
            up.add_metric([model, url], 1.0 if ready else 0.0)
            inflight.add_metric([model, url], float(count))
        yield up
        yield inflight
