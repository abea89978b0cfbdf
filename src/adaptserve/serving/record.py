"""What one admitted request used (`CallRecord`), recorded once when it ends, however
it ends, and how each way of ending is charged: vLLM's usage as it reports it; a stream
the client cut, up to the cut; a request the gateway gave up on, or an attempt that
reached an engine and failed, its reservation (vLLM does not say what it did).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from adaptserve.errors import UpstreamUnavailableError

CLIENT_CLOSED = 499  # the metrics' status for a stream the client cut: metered, not a failure


@dataclass
class CallRecord:
    """What one admitted request used, recorded once when it ends (however it ends)."""

    tenant: str
    uid: str
    model: str
    label: str  # the metrics' endpoint label
    template: str = ""
    reserved: int = 0  # tokens reserved at admission
    reserved_prompt: int = 0  # of which the prompt (an upper bound)
    started: float = field(default_factory=time.perf_counter)
    first_event: float | None = None  # a stream's first event reached the client's side
    status: int = 500
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those vLLM's prefix cache served
    unmeasured: bool = False  # the engine worked but its usage is unknown: the reservation is charged
    retry_reserved: int = 0  # tokens reserved again to send it to another replica
    failed_prompt: int = 0  # charged for attempts that reached an engine, failed and were sent again
    failed_completion: int = 0

    def add_usage(self, usage: dict[str, Any] | None, *, accumulate: bool = False) -> None:
        """vLLM's usage: the latest (streams report running totals) or, with
        `accumulate`, one more engine call of the same request."""
        if not usage:
            return
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        if accumulate:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.cached_tokens += cached
        else:
            self.cached_tokens = cached or self.cached_tokens  # a stream says it in its final usage only
            self.prompt_tokens, self.completion_tokens = (
                self.failed_prompt + prompt,
                self.failed_completion + completion,
            )

    def broke(self) -> None:
        """The stream broke after it began (the engine failed): a 503, not metered."""
        self.status = UpstreamUnavailableError.status

    def cut(self) -> None:
        """The client left mid-stream: what the engine did until then is metered. Cut
        before vLLM reported anything, the prompt's bound is charged: prefill ran."""
        if self.status == 200:
            self.status = CLIENT_CLOSED
            if self.prompt_tokens == self.failed_prompt:
                self.prompt_tokens += self.reserved_prompt

    def charge_reserved(self) -> None:
        """The gateway gave up waiting: the engine may have done all of the reserved
        work, and vLLM does not say how much it did, so the reservation is charged."""
        self.unmeasured = True
        self.prompt_tokens = self.failed_prompt + self.reserved_prompt
        self.completion_tokens = self.failed_completion + self.reserved - self.reserved_prompt

    def charge_failed_attempt(self) -> None:
        """An attempt reached an engine and failed, and the request is sent again: that
        attempt is charged its reservation (vLLM did not say what it did), on top of
        whatever the next one uses."""
        self.unmeasured = True
        self.failed_prompt += self.reserved_prompt
        self.failed_completion += self.reserved - self.reserved_prompt
        self.prompt_tokens += self.reserved_prompt
        self.completion_tokens += self.reserved - self.reserved_prompt

    @property
    def metered(self) -> bool:
        """Served, cut by the client, or given up on: the engine worked for it. A stream
        the engine broke is not metered (its quota is still charged what was used)."""
        return self.status in (200, CLIENT_CLOSED) or self.unmeasured
