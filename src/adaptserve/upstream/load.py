"""An engine's own view of its load, read from its Prometheus /metrics a few times a
second: requests running and queued, KV-cache use, and which adapters its batch runs
and waits for (`vllm:lora_requests_info`, whose newest label set is the current one).
These count every gateway replica's requests, where `Upstream.inflight` counts this
one's."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LOAD_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache",
}
_LORA_INFO = "vllm:lora_requests_info"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class EngineLoad:
    running: float = 0.0
    waiting: float = 0.0  # queued for a batch slot
    kv_cache: float = 0.0  # fraction of the KV cache in use
    running_adapters: frozenset[str] = frozenset()  # in the batch now
    waiting_adapters: frozenset[str] = frozenset()  # queued
    max_loras: int = 0  # adapters one batch can hold (0: not reported)

    def slot_for(self, adapter: str, here: frozenset[str] = frozenset()) -> str:
        """Where `adapter` stands in the engine's batch: "running" (it is in it),
        "blocking" (in it, while other adapters wait for a slot: more of its requests
        keep the slot from them), "waiting" (queued for it), "free" (a slot is free),
        "full", or "unknown". `here`: the adapters of this gateway's own requests on
        the engine now, fresher than the scrape (those it does not list as waiting
        count as in the batch)."""
        if not self.max_loras:
            return "unknown"
        batch = self.running_adapters | (here - self.waiting_adapters)
        if adapter in batch:
            crowd = batch | self.waiting_adapters
            return "blocking" if len(crowd) > self.max_loras else "running"
        if adapter in self.waiting_adapters:
            return "waiting"
        return "free" if len(batch) < self.max_loras else "full"

    @classmethod
    def parse(cls, text: str) -> EngineLoad:
        """The gauges (summed over the engine's label sets; the KV cache's fullest) and
        the newest adapter info. A line scan, not a parser: it runs a few times a second."""
        values = {"running": 0.0, "waiting": 0.0, "kv_cache": 0.0}
        newest, info = -1.0, {}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            field = _LOAD_GAUGES.get(name)
            if field is None and name != _LORA_INFO:
                continue
            rest = line[line.rindex("}") + 1 :] if "{" in line else line.split(" ", 1)[1]
            value = float(rest.split()[0])
            if field is None:  # the adapter info: its value is when it was set
                if value > newest:
                    newest, info = value, dict(_LABEL.findall(line[: line.rindex("}")]))
                continue
            values[field] = max(values[field], value) if field == "kv_cache" else values[field] + value
        return cls(
            **values,
            running_adapters=_names(info.get("running_lora_adapters", "")),
            waiting_adapters=_names(info.get("waiting_lora_adapters", "")),
            max_loras=int(float(info.get("max_lora", "0") or 0)),
        )


def _names(joined: str) -> frozenset[str]:
    return frozenset(n for n in joined.split(",") if n)
