"""What `POST /v1/templates/{name}` does: check the call and its inputs, then classify
(label scores, calibrated, every engine call in one admission and each within the
request bounds, checked before any of them runs; with
`"explain": "attributions"`, each input's attribution variants scored in the same call) or generate (text, or
JSON that matches the schema, via vLLM's `structured_outputs`), for one input or a
batch (`run` → the answer's body) or as a stream (`stream` → a `StreamingAnswer`).
A classify template that names a head is answered by `heads.py` instead (one
embeddings call and the head's weights); one that names an encoder by `encoders.py`
(one call to the classify model's engine).
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from adaptserve.errors import APIError, InvalidRequestError, invalid_from
from adaptserve.pii.masking import Placeholders
from adaptserve.pii.policy import PiiMode
from adaptserve.serving.answers import StreamingAnswer
from adaptserve.serving.bounds import Reservation
from adaptserve.serving.encoders import EncoderService
from adaptserve.serving.heads import HeadService
from adaptserve.serving.pipeline import Endpoint, Pipeline
from adaptserve.serving.privacy import restoring
from adaptserve.serving.record import CallRecord
from adaptserve.serving.relay import relay_text
from adaptserve.templates import schema as json_schema
from adaptserve.templates.attribution import AttributionOptions, AttributionPlan, plan
from adaptserve.templates.classify import Classifier, ScoringPlan
from adaptserve.templates.registry import MAX_VERSION, TemplateRegistry, TemplateVersion
from adaptserve.templates.render import Renderer, calibration_inputs, content_free_inputs
from adaptserve.templates.spec import TemplateSpec, check_inputs
from adaptserve.tenancy.auth import Principal


class TemplateOutputError(APIError):
    """The model's answer does not parse or does not match the template's schema."""

    status = 502
    type = "upstream_error"
    code = "invalid_output"


def _no_number(value: object) -> object:
    if not isinstance(value, (bool, str)):
        raise ValueError('explain is true, false or "attributions"')
    return value


class TemplateCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] | list[Any]
    version: int | None = Field(None, ge=1, le=MAX_VERSION)
    explain: Annotated[Literal[False, True, "attributions"], BeforeValidator(_no_number)] = False
    attribution: AttributionOptions | None = None  # with explain: "attributions"
    stream: StrictBool = False
    max_tokens: int | None = Field(None, ge=1, le=8192)  # generate only
    temperature: float | None = Field(None, ge=0, le=2)


@dataclass(frozen=True)
class TemplateLimits:
    max_batch: int  # inputs in one call
    max_units: int  # attribution units of one input (adjacent ones are joined beyond)
    max_prompts: int  # prompts scored for one call's attributions
    cache_size: int = 256  # template versions whose scoring plan is kept


class TemplateService:
    def __init__(
        self,
        pipeline: Pipeline,
        templates: TemplateRegistry,
        renderer: Renderer,
        limits: TemplateLimits,
        heads: HeadService,
        encoders: EncoderService,
    ) -> None:
        self._pipeline, self._templates, self._renderer, self._heads = pipeline, templates, renderer, heads
        self._encoders = encoders
        self._classifier = Classifier(templates, renderer, limits.cache_size)
        self._limits = limits

    def cache_sizes(self) -> dict[str, int]:
        """How many entries each per-template cache holds now (each at most
        `template_cache_size`)."""
        return self._templates.cache_sizes() | self._classifier.cache_sizes()

    def visible(self, tenant: str) -> dict[str, Any]:
        return {"object": "list", "data": [t.summary() for t in self._templates.visible(tenant)]}

    def describe(self, tenant: str, name: str) -> dict[str, Any]:
        template = self._templates.get(tenant, name)
        spec = template.spec
        out = template.summary() | {"inputs": spec.inputs_schema(), "calibration": spec.calibrates}
        if spec.kind == "classify":
            out["labels"] = [{"name": label.name, "description": label.description} for label in spec.labels]
            out["temperature"] = spec.temperature
        else:
            out["output_schema"] = spec.schema_
        return out

    async def run(self, principal: Principal, name: str, call: TemplateCall) -> dict[str, Any]:
        """A call that is not streamed: one input's result, or a batch's results."""
        template, checked = await self._checked(principal, name, call)
        spec = template.spec
        model = spec.model if spec.head is None and spec.encoder is None else None
        checked, placeholders = await self._screened(principal, model, checked, call)
        batch = isinstance(call.inputs, list)
        if template.spec.kind == "classify":
            results, usage = await self._classify(principal, template, checked, call)
            return {"results": results, "usage": usage} if batch else results[0]
        if not batch:
            return await self._generate(principal, template, checked[0], call, placeholders)
        outcomes = await asyncio.gather(
            *(self._generate(principal, template, item, call, placeholders) for item in checked),
            return_exceptions=True,
        )
        return {"results": [_result_or_error(o) for o in outcomes]}

    async def stream(self, principal: Principal, name: str, call: TemplateCall) -> StreamingAnswer:
        """One input of a generate template, streamed: `{"delta"}` events, then the result."""
        template, checked = await self._checked(principal, name, call)
        checked, placeholders = await self._screened(principal, template.spec.model, checked, call)
        body = self._chat_body(template.spec, checked[0], call) | {"stream": True}

        def finish(text: str, reason: str | None, record: CallRecord) -> dict[str, Any]:
            usage = {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens}
            return finish_generation(template.spec, text, reason) | {"version": template.version, "usage": usage}

        relay = restoring(functools.partial(relay_text, finish=finish), placeholders)
        model, name = template.spec.model, template.name
        return await self._pipeline.stream(principal, model, Endpoint.CHAT, body, template=name, relay=relay)

    async def _checked(
        self, principal: Principal, name: str, call: TemplateCall
    ) -> tuple[TemplateVersion, list[dict[str, Any]]]:
        template = await self._templates.reads.in_loop_or_thread(
            self._templates.get, principal.tenant, name, call.version
        )
        spec = template.spec
        batch = isinstance(call.inputs, list)
        items = call.inputs if isinstance(call.inputs, list) else [call.inputs]
        if batch and not 1 <= len(items) <= self._limits.max_batch:
            raise InvalidRequestError(f"a batch holds 1 to {self._limits.max_batch} inputs", param="inputs")
        checked = [check_inputs(spec, item, f"inputs[{i}]" if batch else "inputs") for i, item in enumerate(items)]
        if call.stream and (batch or spec.kind != "generate"):
            raise InvalidRequestError("stream is for one input of a generate template", param="stream")
        if call.explain == "attributions" and spec.kind != "classify":
            raise InvalidRequestError("attributions are for classify templates", param="explain")
        if call.attribution is not None and call.explain != "attributions":
            raise InvalidRequestError('attribution goes with "explain": "attributions"', param="attribution")
        return template, checked

    async def _screened(
        self, principal: Principal, model: str | None, inputs: list[dict[str, Any]], call: TemplateCall
    ) -> tuple[list[dict[str, Any]], Placeholders | None]:
        """The inputs' text under the tenant's PII policy: masked (restored in a generate
        template's answer) or refused. What admission would refuse is refused first
        (`model` None: a head or encoder template's, whose model is resolved after)): detection is
        the costliest check."""
        if principal.pii.mode is PiiMode.MASK and call.explain == "attributions":
            raise InvalidRequestError(
                "attributions are not given while this tenant's personal data is masked", param="explain"
            )
        if not principal.pii.screens:
            return inputs, None
        if model is not None:
            await self._pipeline.precheck(principal, model)
        fields = [(i, k) for i, item in enumerate(inputs) for k, v in item.items() if _scalar(v)]
        texts = [str(inputs[i][k]) for i, k in fields]
        masked, placeholders = await self._pipeline.privacy.screen(principal, texts, "inputs")
        out = [dict(item) for item in inputs]
        for (i, k), text, original in zip(fields, masked, texts, strict=True):
            if text == original:
                continue
            if not isinstance(inputs[i][k], str):  # a number cannot hold a placeholder
                raise InvalidRequestError("a number input holds personal data, which cannot be masked", param="inputs")
            out[i][k] = text
        return out, placeholders

    async def _classify(
        self, principal: Principal, template: TemplateVersion, inputs: list[dict[str, Any]], call: TemplateCall
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Every engine call (tokenizing, calibrating, scoring) inside one admission,
        each held to the request bounds before any of them runs."""
        plans = self._attribution_plans(inputs, call)
        if template.spec.head is not None:  # one embeddings call and the head, in the gateway
            return await self._heads.classify(principal, template, inputs, bool(call.explain), plans)
        if template.spec.encoder is not None:  # one call to the classify model's engine
            return await self._encoders.classify(principal, template, inputs, bool(call.explain), plans)
        scored = [v for p, i in zip(plans, inputs, strict=True) for v in p.variants(i)] if plans else inputs
        param = "attribution" if plans else "inputs"
        spec = template.spec
        target = await self._pipeline.resolved(principal.tenant, spec.model)  # once: its base is what is admitted
        base = target.engine
        plan = self._classifier.cached_plan(spec, base or "")
        context = self._pipeline.context(base)
        if plan is not None:
            reserve = self._bounded(spec, plan, scored, param, context)
        else:
            reserve = Reservation(*self._classifier.worst_case(template, scored, base or ""))
        async with self._pipeline.admitted(
            principal, spec.model, reserve, label="template", template=template.name, target=target
        ) as engine:
            if plan is None:  # read from the tokenizer in this admission, checked before anything is scored
                self._bounded(spec, await self._classifier.plan(engine, spec), scored, param, context)
            return await self._classifier.classify(engine, template, inputs, bool(call.explain), plans)

    async def check_fits(self, spec: TemplateSpec) -> None:
        """Refuse (400) a classify template whose smallest call can never fit the
        request bounds: one input with empty text, or its calibration. Its scoring plan
        is read from the served model's tokenizer (503 while no engine is up; a generate
        model of `models:` with adapters, or an alias of one of its adapters: its
        engine's) and kept for its calls. A template runs on the base model or on such a
        model: one naming a generate model without adapters is refused."""
        self._pipeline.engines.refuse_generate(spec.model, "the template's model", "model", spec.tenant)
        if spec.kind != "classify":
            return
        if spec.head is not None:
            await self._heads.check_template(spec)
            return
        if spec.encoder is not None:
            self._encoders.check_template(spec)
            return
        base = await self._pipeline.base_of(spec.tenant, spec.model)
        plan = await self._classifier.plan(_Tokenizer(self._pipeline, base), spec)
        self._bounded(spec, plan, [content_free_inputs(spec)[1]], "labels", self._pipeline.context(base))

    def _bounded(
        self, spec: TemplateSpec, plan: ScoringPlan, scored: list[dict[str, Any]], param: str, context: int | None
    ) -> Reservation:
        """The call's engine requests (its scoring, and the calibration's when the
        template has one: it may still have to run), each within the request bounds
        (`context`: its model's, None: the base model's); → their worst case together
        (at most two requests' worth)."""
        bounds, ids = self._pipeline.bounds, len(plan.token_ids)
        reserve = bounds.check_scoring(self._classifier.prompt_bounds(spec, plan, scored), ids, param, context)
        if not spec.calibrates:
            return reserve
        calibration = self._classifier.prompt_bounds(spec, plan, calibration_inputs(spec))
        extra = bounds.check_scoring(calibration, ids, "calibration", context)
        return Reservation(reserve.prompt + extra.prompt, reserve.total + extra.total)

    def _attribution_plans(self, inputs: list[dict[str, Any]], call: TemplateCall) -> list[AttributionPlan] | None:
        if call.explain != "attributions":
            return None
        options = call.attribution or AttributionOptions()
        batch = isinstance(call.inputs, list)
        plans = [
            plan(item, options, self._limits.max_units, f"inputs[{i}]" if batch else "inputs", self._limits.max_prompts)
            for i, item in enumerate(inputs)
        ]
        prompts = sum(len(p.coalitions) for p in plans)
        if prompts > self._limits.max_prompts:
            raise InvalidRequestError(
                f"attributions would score {prompts} prompts, over the {self._limits.max_prompts} allowed "
                "(explain_max_prompts): send fewer inputs or permutations, or use sentences or fields as units",
                param="attribution",
            )
        return plans

    async def _generate(
        self,
        principal: Principal,
        template: TemplateVersion,
        inputs: dict[str, Any],
        call: TemplateCall,
        placeholders: Placeholders | None,
    ) -> dict[str, Any]:
        body = self._chat_body(template.spec, inputs, call)
        answer = await self._pipeline.call(principal, template.spec.model, Endpoint.CHAT, body, template=template.name)
        choice = answer.body["choices"][0]
        text, reason = choice["message"].get("content") or "", choice.get("finish_reason")
        result = await asyncio.to_thread(finish_generation, template.spec, text, reason)  # parsing, off the loop
        if placeholders is not None:  # parsed first: a restored value never breaks the JSON
            result = placeholders.restore_all(result)
        result |= {"version": template.version, "usage": answer.body.get("usage")}
        if call.explain:
            result["explain"] = {"prompt_tokens": (answer.body.get("usage") or {}).get("prompt_tokens")}
        return result

    def _chat_body(self, spec: TemplateSpec, inputs: dict[str, Any], call: TemplateCall) -> dict[str, Any]:
        sampling = spec.sampling
        body: dict[str, Any] = {
            "messages": self._renderer.messages(spec, inputs),
            "temperature": call.temperature if call.temperature is not None else sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": call.max_tokens or sampling.max_tokens,
        }
        if sampling.stop:
            body["stop"] = sampling.stop
        if spec.schema_ is not None:
            body["structured_outputs"] = {"json": spec.schema_}
        return body


def finish_generation(spec: TemplateSpec, text: str, finish_reason: str | None) -> dict[str, Any]:
    """The model's text → `{"text"}`, or `{"output"}` parsed and checked against the schema."""
    if spec.schema_ is None:
        return {"text": text, "finish_reason": finish_reason}
    hint = " (the answer was cut at max_tokens; raise it)" if finish_reason == "length" else ""
    try:
        output = json.loads(text)
        json_schema.validate(output, spec.schema_)
    except RecursionError as exc:
        raise TemplateOutputError(f"the model's answer nests too deeply{hint}") from exc
    except ValueError as exc:
        raise TemplateOutputError(f"the model's answer is not JSON{hint}: {exc}") from exc
    except jsonschema.ValidationError as exc:  # where and which rule, never the value (it may be personal data)
        where = "/".join(map(str, exc.absolute_path)) or "the top level"
        raise TemplateOutputError(
            f"the model's answer does not match the schema{hint}: at {where}, {exc.validator} {exc.validator_value!r}"
        ) from exc
    return {"output": output, "finish_reason": finish_reason}


@dataclass(frozen=True)
class _Tokenizer:
    """The tokenizer of the engines a template runs on (`engine`: a generate model of
    `models:`, None: the base model's), for a template's scoring plan when it is saved."""

    pipeline: Pipeline
    engine: str | None

    @property
    def base(self) -> str:
        return self.engine or ""

    async def tokenize(self, body: dict[str, Any]) -> list[int]:
        return await self.pipeline.tokenize(body, self.engine)


def _scalar(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def parse_call(body: dict[str, Any]) -> TemplateCall:
    try:
        return TemplateCall.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def _result_or_error(outcome: dict[str, Any] | BaseException) -> dict[str, Any]:
    if isinstance(outcome, APIError):
        return outcome.body()
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
