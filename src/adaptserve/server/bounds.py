"""What one request may cost: how many sequences it asks for, how many tokens it may
read and write, how many log-probabilities it may return, and how large a schema or
grammar vLLM must compile for it. `RequestBounds.check` refuses a body over any of
them (400, naming the field) before it reaches the engine; `worst_case_tokens` is the
request's token reservation for the tenant's `tokens_per_minute`.

The token estimate is an upper bound for text: a token of the model's tokenizer
covers at least one byte of the text it came from, and the JSON of a chat message
(`{"role": ..., "content": ...}`, 27 bytes of syntax) is longer than the few marker
tokens a chat template adds around it. Token-id prompts are counted exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from adaptserve.errors import InvalidRequestError

_SCHEMA_FIELDS = ("json", "regex", "grammar", "choice", "structural_tag")
_ALTERNATIVES = ("anyOf", "oneOf", "allOf", "enum")


@dataclass(frozen=True)
class RequestBounds:
    context: int  # the engine's context length (prompt + completion of one sequence)
    max_sequences: int = 256  # prompts × n
    max_tokens: int = 262_144  # worst-case prompt + completion tokens of one request
    max_logprobs: int = 200_000  # generated tokens × (top_logprobs + 1), when asked for
    max_schema_bytes: int = 32_768  # one schema, grammar, regex or choice list, as JSON
    max_schema_depth: int = 16
    max_schema_alternatives: int = 256  # anyOf/oneOf/allOf branches and enum values, summed

    def check(self, body: dict[str, Any], chat: bool) -> int:
        """Refuse a request over a bound; → its worst-case token use."""
        if body.get("use_beam_search"):
            raise InvalidRequestError("beam search is not offered by this server.", param="use_beam_search")
        prompts = _prompt_sizes(body, chat)
        n = int(body.get("n") or 1)
        if len(prompts) * n > self.max_sequences:
            raise InvalidRequestError(
                f"{len(prompts)} prompt(s) × n={n} is more than {self.max_sequences} sequences in one request.",
                param="prompt" if not chat else "n",
            )
        total = self.worst_case_tokens(body, chat)
        if total > self.max_tokens:
            raise InvalidRequestError(
                f"this request may use up to {total} tokens (prompt + max_tokens × n), more than "
                f"{self.max_tokens} per request; lower max_tokens, n or the number of prompts.",
                param="max_tokens",
            )
        self._check_logprobs(body, len(prompts) * n, chat)
        self._check_schemas(body)
        return total

    def worst_case_tokens(self, body: dict[str, Any], chat: bool) -> int:
        n = int(body.get("n") or 1)
        asked = body.get("max_completion_tokens") if chat else None
        asked = asked or body.get("max_tokens")
        completion = min(int(asked), self.context) if asked else self.context
        return sum(min(p, self.context) + n * completion for p in _prompt_sizes(body, chat))

    def _check_logprobs(self, body: dict[str, Any], sequences: int, chat: bool) -> None:
        top = (int(body.get("top_logprobs") or 0) if body.get("logprobs") else None) if chat else body.get("logprobs")
        if top is None or body.get("stream"):
            return  # streamed log-probabilities are relayed as they come, never held whole
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or self.context
        entries = sequences * min(int(asked), self.context) * (int(top) + 1)
        if entries > self.max_logprobs:
            raise InvalidRequestError(
                f"this request may return {entries} log-probabilities, more than {self.max_logprobs}; "
                "stream it, or lower max_tokens, n or top_logprobs.",
                param="logprobs",
            )

    def _check_schemas(self, body: dict[str, Any]) -> None:
        outputs = body.get("structured_outputs")
        if isinstance(outputs, dict):
            for name in _SCHEMA_FIELDS:
                if outputs.get(name) is not None:
                    self._check_schema(outputs[name], f"structured_outputs.{name}", choices=name == "choice")
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            self._check_schema(response_format.get("json_schema"), "response_format")
        tools = body.get("tools")
        if isinstance(tools, list):
            for i, tool in enumerate(tools):
                self._check_schema(tool, f"tools[{i}]")

    def _check_schema(self, value: Any, param: str, choices: bool = False) -> None:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.max_schema_bytes:
            raise InvalidRequestError(
                f"{param} is {size} bytes; at most {self.max_schema_bytes} are compiled.", param=param
            )
        depth, alternatives = _shape(value)
        if choices and isinstance(value, list):
            alternatives += len(value)
        if depth > self.max_schema_depth:
            raise InvalidRequestError(f"{param} nests {depth} deep; at most {self.max_schema_depth}.", param=param)
        if alternatives > self.max_schema_alternatives:
            raise InvalidRequestError(
                f"{param} has {alternatives} alternatives (anyOf/oneOf/allOf/enum/choices); "
                f"at most {self.max_schema_alternatives}.",
                param=param,
            )


def _prompt_sizes(body: dict[str, Any], chat: bool) -> list[int]:
    """Per prompt, an upper bound on its tokens (exact for token ids)."""
    if chat:
        extra = {k: body[k] for k in ("messages", "tools") if body.get(k) is not None}
        return [len(json.dumps(extra, ensure_ascii=False).encode())]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [len(prompt.encode())]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [len(prompt)]
    if isinstance(prompt, list):
        return [len(p.encode()) if isinstance(p, str) else len(p) for p in prompt]
    return [0]


def _shape(value: Any) -> tuple[int, int]:
    """(how deeply objects and lists nest, how many alternatives it offers); iterative."""
    deepest, alternatives, stack = 0, 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            for key, child in item.items():
                if key in _ALTERNATIVES and isinstance(child, list):
                    alternatives += len(child)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest, alternatives
