"""What one request may cost: how many sequences it asks for, how many tokens it may
read and write, how many log-probabilities it may return, and how large a schema or
grammar vLLM must compile for it. `RequestBounds.check` refuses a body over any of
them (400, naming the field) before it reaches the engine, and returns its
`Reservation`: the worst-case tokens charged against the tenant's `tokens_per_minute`.
A request that cannot fit the context (max_tokens alone over it, or a token-id prompt
plus max_tokens) is refused as vLLM would (400 `context_length_exceeded`).

The token estimate is an upper bound for text: a token of the model's tokenizer
covers at least one byte of the text it came from, and the JSON of a chat message
(`{"role": ..., "content": ...}`, 27 bytes of syntax) is longer than the few marker
tokens a chat template adds around it. Token-id prompts are counted exactly. The
context is asked for at each check (`context_length`): the gateway passes the smallest
`max_model_len` the engines in service reported in /v1/models when they came up, an
engine that reports none counting as the `vllm.max_model_len` setting (the answer too
while none is in service).

`check_inputs` holds an embeddings request to the same bounds: its inputs count as
sequences, each text's bytes (plus two special tokens) bound its tokens.

`check_scoring` holds a classify template's scoring request (token-id prompts, one
generated token each, chosen log-probabilities) to the same bounds, from each prompt's
token bound, before anything is tokenized or scored.

Schemas are bounded as vLLM receives them: everything under `structured_outputs`,
`response_format` and `tools` (vLLM compiles all tools into one grammar for
`tool_choice: required`) counts together, strings that hold JSON are parsed, and
repetition counts (`minItems`, `maxLength`, `{n,m}` in a regex, ...) are capped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adaptserve.errors import ContextLengthExceededError, InvalidRequestError

_ALTERNATIVES = ("anyOf", "oneOf", "allOf", "enum", "choice", "structures", "triggers")
_REPEATS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
CHAT_PROMPT_FIELDS = ("messages", "tools", "documents", "chat_template_kwargs")
_SCHEMA_FIELDS = ("structured_outputs", "response_format", "tools")
_SPECIAL_TOKENS = 2  # what an encoder's tokenizer adds around a text ([CLS] ... [SEP])


@dataclass(frozen=True)
class Reservation:
    prompt: int  # an upper bound on the prompt tokens (all prompts)
    total: int  # prompt + the most the request may generate


@dataclass
class RequestBounds:
    context_length: Callable[[], int]  # the engines' context now (prompt + completion of one sequence)
    max_sequences: int = 256  # prompts × n
    max_tokens: int = 262_144  # worst-case prompt + completion tokens of one request
    max_logprobs: int = 200_000  # generated tokens × log-probabilities per token, when held whole
    max_schema_bytes: int = 32_768  # everything vLLM compiles for one request, as JSON
    max_schema_depth: int = 32
    max_schema_alternatives: int = 1024  # anyOf/oneOf/allOf branches, enum values, choices, summed
    max_schema_repeat: int = 4096  # minItems/maxLength/... and regex {n,m} counts

    def check(self, body: dict[str, Any], chat: bool, context: int | None = None) -> Reservation:
        """Refuse a request over a bound (`context`: its model's, None: the base
        model's, `context_length`); → its worst-case token use."""
        prompts = _prompt_sizes(body, chat)
        n = body.get("n") or 1
        if len(prompts) * n > self.max_sequences:
            raise InvalidRequestError(
                f"{len(prompts)} prompt(s) × n={n} is more than {self.max_sequences} sequences in one request.",
                param="n" if chat else "prompt",
            )
        context = context or self.context_length()
        reservation = self._reserve(body, chat, context)
        if reservation.total > self.max_tokens:
            raise InvalidRequestError(
                f"this request may use up to {reservation.total} tokens (prompt + max_tokens × n), more than "
                f"{self.max_tokens} per request; lower max_tokens, n or the number of prompts.",
                param="max_tokens",
            )
        _check_context(body, chat, context)
        self._check_logprobs(body, len(prompts) * n, chat, context)
        self._check_schemas(body)
        return reservation

    def check_scoring(
        self, prompts: Sequence[int], token_ids: int, param: str, context: int | None = None
    ) -> Reservation:
        """A classifier's scoring request, by each prompt's token bound: one token is
        generated per prompt, with the log-probabilities of `token_ids` at it. The same
        bounds as `check` (sequences, tokens, log-probabilities; `context`: its model's,
        None: the base model's); → its worst case."""
        if len(prompts) > self.max_sequences:
            raise InvalidRequestError(
                f"this call scores {len(prompts)} prompts (inputs × the labels' answer prefixes) in one request, "
                f"more than {self.max_sequences} sequences; send fewer inputs",
                param=param,
            )
        context = context or self.context_length()
        sizes = [min(p, context) for p in prompts]
        reservation = Reservation(sum(sizes), sum(sizes) + len(sizes))
        if reservation.total > self.max_tokens:
            raise InvalidRequestError(
                f"this call may read up to {reservation.total} tokens in one request, more than {self.max_tokens}; "
                "send fewer or shorter inputs",
                param=param,
            )
        entries = len(prompts) * (token_ids + 1)
        if entries > self.max_logprobs:
            raise InvalidRequestError(
                f"this call may return {entries} log-probabilities, more than {self.max_logprobs}; send fewer inputs",
                param=param,
            )
        return reservation

    def check_inputs(self, inputs: Sequence[str | Sequence[int]], context: int | None, param: str) -> Reservation:
        """An encoder's inputs (texts or token ids; `context`: its length, None:
        unknown): how many, and how many tokens they may read; → the worst case (an
        encoder generates nothing)."""
        if not inputs:
            raise InvalidRequestError("input is empty: send a string or a non-empty list", param=param)
        if len(inputs) > self.max_sequences:
            raise InvalidRequestError(
                f"{len(inputs)} inputs in one request, more than {self.max_sequences}; send fewer", param=param
            )
        sizes = [len(i.encode()) + _SPECIAL_TOKENS if isinstance(i, str) else len(i) for i in inputs]
        total = sum(min(size, context) if context else size for size in sizes)
        if total > self.max_tokens:
            raise InvalidRequestError(
                f"these inputs may read up to {total} tokens, more than {self.max_tokens} per request; "
                "send fewer or shorter inputs",
                param=param,
            )
        return Reservation(total, total)

    def _reserve(self, body: dict[str, Any], chat: bool, context: int) -> Reservation:
        n = body.get("n") or 1
        asked = _asked(body, chat)
        completion = asked if asked else context  # vLLM fills the context when unset
        sizes = [min(p, context) for p in _prompt_sizes(body, chat)]
        # One sequence never holds more than the context: prompt + completion ≤ context.
        generated = sum(n * min(completion, max(context - p, 1)) for p in sizes)
        return Reservation(sum(sizes), sum(sizes) + generated)

    def _check_logprobs(self, body: dict[str, Any], sequences: int, chat: bool, context: int) -> None:
        top = _logprobs_per_token(body, chat)
        chosen = len(body.get("logprob_token_ids") or [])
        if (top is None and not chosen) or body.get("stream"):
            return  # streamed log-probabilities are relayed as they come, never held whole
        per_token = max(top or 0, chosen) + 1
        asked = body.get("max_completion_tokens") or body.get("max_tokens") or context
        entries = sequences * min(asked, context) * per_token
        if entries > self.max_logprobs:
            raise InvalidRequestError(
                f"this request may return {entries} log-probabilities, more than {self.max_logprobs}; "
                "stream it, or lower max_tokens, n, top_logprobs or logprob_token_ids.",
                param="logprobs",
            )

    def _check_schemas(self, body: dict[str, Any]) -> None:
        present = {name: body[name] for name in _SCHEMA_FIELDS if body.get(name) is not None}
        if not present:
            return
        param = next(iter(present)) if len(present) == 1 else "tools"
        size = len(json.dumps(present, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.max_schema_bytes:
            raise InvalidRequestError(
                f"{', '.join(present)}: {size} bytes to compile; at most {self.max_schema_bytes}.", param=param
            )
        depth, alternatives, repeat = _shape(present)
        if depth > self.max_schema_depth:
            raise InvalidRequestError(f"{param} nests {depth} deep; at most {self.max_schema_depth}.", param=param)
        if alternatives > self.max_schema_alternatives:
            raise InvalidRequestError(
                f"{param} offers {alternatives} alternatives (anyOf/oneOf/allOf/enum/choice); "
                f"at most {self.max_schema_alternatives}.",
                param=param,
            )
        if repeat > self.max_schema_repeat:
            raise InvalidRequestError(
                f"{param} repeats something {repeat} times (minItems, maxLength, {{n,m}}, ...); "
                f"at most {self.max_schema_repeat}.",
                param=param,
            )


def _asked(body: dict[str, Any], chat: bool) -> int | None:
    """The completion tokens asked for per sequence (None: unset, vLLM fills the context)."""
    return (body.get("max_completion_tokens") if chat else None) or body.get("max_tokens")


def _check_context(body: dict[str, Any], chat: bool, context: int) -> None:
    """Refuse what vLLM would: a sequence whose prompt plus max_tokens exceeds the
    context. Only what is certain here: a text prompt's tokens are not known before
    the engine tokenizes it (it counts as none), a token-id prompt's are exact."""
    asked = _asked(body, chat)
    if not asked:
        return
    prompt = None if chat else body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        prompt = [prompt]  # one prompt of token ids
    exact = [len(p) for p in prompt if isinstance(p, list)] if isinstance(prompt, list) else []
    longest = max(exact, default=0)
    if longest + asked > context:
        field = "max_completion_tokens" if chat and body.get("max_completion_tokens") else "max_tokens"
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{field}={asked}" + (f" with a prompt of {longest} tokens" if longest else "") + ".",
            param=field,
        )


def _logprobs_per_token(body: dict[str, Any], chat: bool) -> int | None:
    """The top log-probabilities asked for per generated token (None: none asked)."""
    if not chat:
        return body.get("logprobs")
    return (body.get("top_logprobs") or 0) if body.get("logprobs") else None


def _prompt_sizes(body: dict[str, Any], chat: bool) -> list[int]:
    """Per prompt, an upper bound on its tokens (exact for token ids)."""
    if chat:
        fields = {k: body[k] for k in CHAT_PROMPT_FIELDS if body.get(k) is not None}
        return [len(json.dumps(fields, ensure_ascii=False).encode())]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [len(prompt.encode())]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [len(prompt)]
    if isinstance(prompt, list):
        return [len(p.encode()) if isinstance(p, str) else len(p) for p in prompt]
    return [0]


def _shape(value: Any) -> tuple[int, int, int]:
    """(how deeply it nests, how many alternatives it offers, its largest repetition
    count); strings that hold JSON count as what they hold. Iterative."""
    deepest, alternatives, repeat, stack = 0, 0, 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            repeat = max([repeat, *(_count(m[2] or m[1]) for m in _QUANTIFIER.finditer(item))])
            parsed = _json(item) if item[:1] in "{[" else None
            if parsed is not None:
                stack.append((parsed, depth))
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            for key, child in item.items():
                if key in _ALTERNATIVES and isinstance(child, list):
                    alternatives += len(child)
                if key in _REPEATS and isinstance(child, int):
                    repeat = max(repeat, child)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest, alternatives, repeat


def _count(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else 10**9  # int() refuses thousands of digits


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
