"""The template document (YAML or JSON) as a pydantic model, and the checks of the
inputs a caller sends to a template endpoint.

A template is data, never code: its text is sent as chat messages and caller inputs
are inserted as plain strings (see `render.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, ClassVar, Literal

import jsonschema
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from adaptserve.db import check_name
from adaptserve.errors import InvalidRequestError, invalid_from
from adaptserve.templates import schema as json_schema

InputType = Literal["string", "integer", "number", "boolean"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputField(_Strict):
    type: InputType = "string"
    description: str = ""
    max_length: int = Field(4000, ge=1, le=1_000_000)
    required: StrictBool = True


class Label(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64)
    description: str = ""
    verbalizer: StrictStr | None = Field(None, min_length=1, max_length=200)

    @property
    def text(self) -> str:
        """What the model is asked to answer for this label."""
        return self.verbalizer or self.name


class Example(_Strict):
    inputs: dict[str, Any]
    label: StrictStr | None = None
    output: Any = None


class Sampling(_Strict):
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=8192)
    stop: list[str] | None = None


class TemplateSpec(_Strict):
    name: StrictStr
    kind: Literal["classify", "generate"]
    description: str = ""
    tenant: StrictStr | None = None  # None: global, visible to every tenant
    model: StrictStr = "default"  # the caller's model alias it runs on
    # classify: a classifier head (heads/) answers instead of the model: one embeddings
    # call on the head's embedding model, then its weights, in the gateway.
    head: StrictStr | None = Field(None, min_length=1, max_length=64)
    # classify: a sequence classifier of `models:` (role classify) answers instead: one
    # call to its engine's /classify, its probabilities under the template's labels.
    encoder: StrictStr | None = Field(None, min_length=1, max_length=64)
    system: StrictStr | None = None
    instruction: StrictStr = Field("", max_length=20_000)  # required, except with a head or an encoder
    inputs: dict[str, InputField] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list, max_length=64)
    labels: list[Label] = Field(default_factory=list, max_length=100)
    # classify: the start of the answer the labels complete ("The sentiment is"), so
    # they are scored where the model would say them, not at the start of its turn.
    answer_prefix: StrictStr | None = Field(None, min_length=1, max_length=500)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    sampling: Sampling = Field(default_factory=Sampling)
    # classify: divide out the label bias of the calibration inputs. `auto`: `train` and
    # `fit` choose on labelled data (and write true or false); served as `true` until then.
    calibration: StrictBool | Literal["auto"] = True
    # classify: label log-probabilities are divided by it before the softmax (fitted on
    # labelled data by `adaptserve fit` and `train`; 1 leaves the model's own scores).
    temperature: float = Field(1.0, gt=0.01, le=100)
    # The inputs whose mean label distribution is divided out; default: "N/A", "" and
    # "[MASK]" in every field (Zhao et al.). A few real, label-balanced unlabelled inputs
    # suit tasks where an empty input is not neutral (an empty review reads as negative).
    calibration_inputs: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=64)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "a template name")

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputField]) -> dict[str, InputField]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"input name {name!r} must be an identifier (letters, digits, '_')")
        return value

    @model_validator(mode="after")
    def _by_kind(self) -> TemplateSpec:
        if self.head is not None or self.encoder is not None:
            self._check_head()
        elif not self.instruction:
            raise ValueError("instruction: a template needs an instruction (only a head or encoder template has none)")
        if self.kind == "classify":
            self._check_labels()
        else:
            if self.labels or self.answer_prefix or self.calibration_inputs or self.temperature != 1.0:
                raise ValueError("labels, answer_prefix, calibration_inputs and temperature are for kind: classify")
            if self.schema_ is not None:
                json_schema.check_schema(self.schema_)  # its patterns before any example is matched
        for i, example in enumerate(self.examples):
            self._check_example(i, example)
        for i, inputs in enumerate(self.calibration_inputs or []):
            try:
                check_inputs(self, inputs, param=f"calibration_inputs[{i}]")
            except InvalidRequestError as exc:
                raise ValueError(exc.message) from exc
        return self

    def _check_head(self) -> None:
        """A head or an encoder answers from the inputs' text alone: nothing of a prompt
        applies (the contextual calibration neither: `calibrates` is false)."""
        field = "head" if self.head is not None else "encoder"
        if self.head is not None and self.encoder is not None:
            raise ValueError("a template names a head or an encoder, not both")
        if self.kind != "classify":
            raise ValueError(f"{field} is for kind: classify")
        given = {
            "model": self.model != "default",
            "system": self.system is not None,
            "examples": bool(self.examples),
            "answer_prefix": self.answer_prefix is not None,
            "calibration_inputs": self.calibration_inputs is not None,
            "temperature": self.temperature != 1.0,
        }
        if any(given.values()):
            fields = ", ".join(name for name, set_ in given.items() if set_)
            raise ValueError(f"a {field} template takes no {fields}: its {field} alone answers, from the inputs' text")

    def _check_labels(self) -> None:
        if len(self.labels) < 2:
            raise ValueError("a classify template needs at least two labels")
        if self.schema_ is not None:
            raise ValueError("schema is for kind: generate")
        if self.answer_prefix is not None and self.answer_prefix != self.answer_prefix.rstrip():
            raise ValueError("answer_prefix must not end with a space: the space goes with the label")
        names = [label.name for label in self.labels]
        texts = [label.text for label in self.labels]
        if len(set(names)) != len(names) or len(set(texts)) != len(texts):
            raise ValueError("label names and verbalizers must be unique")
        for a in texts:
            for b in texts:
                if a != b and b.startswith(a):
                    # P(a) would count every answer that goes on to be b: a bias, not a score.
                    raise ValueError(f"verbalizer {a!r} is a prefix of {b!r}; make them differ")

    def _check_example(self, i: int, example: Example) -> None:
        where = f"examples[{i}]"
        try:
            check_inputs(self, example.inputs, param=f"{where}.inputs")
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from exc
        if self.kind == "classify":
            if example.label not in {label.name for label in self.labels}:
                raise ValueError(f"{where}.label must be one of the labels")
        elif example.output is None:
            raise ValueError(f"{where}.output is required for kind: generate")
        elif self.schema_ is not None:
            try:
                json_schema.validate(example.output, self.schema_)
            except jsonschema.ValidationError as exc:
                raise ValueError(f"{where}.output does not match the schema: {exc.message}") from exc

    @property
    def calibrates(self) -> bool:
        """Whether the server divides out the calibration inputs' bias (`auto` too;
        never for a head, which carries its own temperature, nor an encoder)."""
        return self.calibration is not False and self.head is None and self.encoder is None

    @property
    def digest(self) -> str:
        """Content hash: re-applying an unchanged template makes no new version."""
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if doc.get("temperature") == 1.0:
            del doc["temperature"]  # the default: documents (and digests) from before it existed stay the same
        if doc.get("instruction") == "":
            del doc["instruction"]  # a head or encoder template's: none
        return doc

    def label_index(self, name: str) -> int:
        return [label.name for label in self.labels].index(name)

    def inputs_schema(self) -> dict[str, Any]:
        """The inputs as JSON Schema, for `GET /v1/templates/{name}`."""
        properties: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            prop: dict[str, Any] = {"type": spec.type}
            if spec.description:
                prop["description"] = spec.description
            if spec.type == "string":
                prop["maxLength"] = spec.max_length
            properties[name] = prop
        required = [name for name, spec in self.inputs.items() if spec.required]
        return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def check_inputs(spec: TemplateSpec, inputs: object, param: str = "inputs") -> dict[str, Any]:
    """A caller's inputs, checked against the template: 400 naming the field."""
    if not isinstance(inputs, dict):
        raise InvalidRequestError(f"{param} must be an object of the template's inputs", param=param)
    for name in inputs:
        if name not in spec.inputs:
            raise InvalidRequestError(
                f"{param}.{name} is not an input of template {spec.name}", param=f"{param}.{name}"
            )
    for name, field in spec.inputs.items():
        where = f"{param}.{name}"
        value = inputs.get(name)
        if value is None:
            if field.required:
                raise InvalidRequestError(f"{where} is required", param=where)
            continue
        wrong_bool = isinstance(value, bool) and field.type != "boolean"
        if wrong_bool or not isinstance(value, _PY_TYPES[field.type]):
            raise InvalidRequestError(f"{where} must be of type {field.type}", param=where)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"{where} must be a finite number", param=where)
        if isinstance(value, str) and len(value) > field.max_length:
            raise InvalidRequestError(f"{where} is longer than {field.max_length} characters", param=where)
    return inputs


MAX_DOCUMENT_DEPTH = 64  # lists and objects; a template needs a handful, the schema up to MAX_SCHEMA_DEPTH


def parse_document(data: object, text: str | bytes | None = None) -> TemplateSpec:
    """A decoded YAML/JSON document → a spec, or a 400 naming the first bad field (and,
    given the document's `text`, the line it is on)."""
    if not isinstance(data, dict):
        raise InvalidRequestError("a template must be a YAML or JSON object")
    if json_schema.depth(data, MAX_DOCUMENT_DEPTH) > MAX_DOCUMENT_DEPTH:
        raise _too_deep()
    try:
        return TemplateSpec.model_validate(data)
    except ValidationError as exc:
        line = _line_of(text, exc.errors()[0]["loc"]) if text is not None else None
        raise invalid_from(exc, prefix=f"invalid template at line {line}: " if line else "invalid template: ") from exc


def _line_of(text: str | bytes, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node of `loc` (a pydantic error's path) found in
    the document `text`, composed again (it parsed once: it composes)."""
    if not loc:  # the document as a whole (a check across fields): no one line
        return None
    node = yaml.compose(text, Loader=_NoAliasLoader)
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            # a key given twice: YAML keeps the last one, so its line is the one to name
            node = next((value for key, value in reversed(node.value) if key.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(f"the template nests lists and objects more than {MAX_DOCUMENT_DEPTH} deep")


class _TooDeepError(yaml.YAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors/aliases: a few aliases can expand to an exponentially large
    document ("billion laughs"), and templates never need them. Nesting is bounded
    while the document is composed (the composer recurses). Booleans are YAML 1.2's
    (true/false only), so labels such as `yes`, `no`, `on` and `off` stay strings."""

    _depth = 0

    yaml_implicit_resolvers: ClassVar[dict[str, list]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not allowed in templates")
        self._depth += 1  # scalars count too: a document MAX_DOCUMENT_DEPTH deep holds them one deeper
        try:
            if self._depth > MAX_DOCUMENT_DEPTH + 1:
                raise _TooDeepError("too deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_document(text: str | bytes, name: str | None = None) -> TemplateSpec:
    """YAML or JSON text → a checked spec, or a 400. `name` (from a URL) is the
    document's name when it has none, and must match the one it has."""
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: no Python objects
    except _TooDeepError as exc:
        raise _too_deep() from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "not YAML"
        raise InvalidRequestError(f"the template is not a YAML or JSON document{where}: {what}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the template is not a YAML or JSON document: {exc}") from exc
    if name is not None and isinstance(data, dict):
        data.setdefault("name", name)
        if data["name"] != name:
            raise InvalidRequestError("the document's name differs from the URL's", param="name")
    return parse_document(data, text)


_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
