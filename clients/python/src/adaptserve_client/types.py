"""What the tenant-side calls return: small typed records built from the JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TokenUsage:
        data = data or {}
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


@dataclass(frozen=True)
class Span:
    """One unit of the input (`inputs[field][start:end]`) and how much removing it
    lowers the predicted label's calibrated probability (`contribution`) and its margin
    over the runner-up (`margin`); negative: the unit argued against the label."""

    field: str
    start: int
    end: int
    contribution: float
    margin: float

    def text(self, inputs: dict[str, Any]) -> str:
        return str(inputs[self.field])[self.start : self.end]


@dataclass(frozen=True)
class Attributions:
    """`"explain": "attributions"`: the spans of the input, in input order."""

    method: str  # occlusion or shapley
    units: str  # words, sentences or fields
    label: str
    runner_up: str
    probability: float
    merged: bool  # adjacent units were joined to fit the server's cap
    prompts: int  # prompts scored for it
    spans: list[Span]
    baseline: float | None = None  # shapley: the probability with every unit removed

    def top(self, k: int) -> list[Span]:
        """The `k` spans that raised the label's probability most."""
        return sorted(self.spans, key=lambda s: s.contribution, reverse=True)[:k]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attributions:
        spans = [
            Span(s["field"], int(s["start"]), int(s["end"]), float(s["contribution"]), float(s["margin"]))
            for s in data["spans"]
        ]
        baseline = data.get("baseline")
        return cls(
            method=data["method"],
            units=data["units"],
            label=data["label"],
            runner_up=data["runner_up"],
            probability=float(data["probability"]),
            merged=bool(data["merged"]),
            prompts=int(data["prompts"]),
            spans=spans,
            baseline=None if baseline is None else float(baseline),
        )


@dataclass(frozen=True)
class Classification:
    """A classify template's answer: the label, every label's probability (summing to 1)."""

    label: str
    scores: dict[str, float]
    calibrated: bool
    version: int
    usage: TokenUsage
    explain: dict[str, Any] | None = None
    attributions: Attributions | None = None  # with explain="attributions"

    @property
    def confidence(self) -> float:
        return self.scores[self.label]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Classification:
        return cls(
            label=data["label"],
            scores={k: float(v) for k, v in data["scores"].items()},
            calibrated=bool(data.get("calibrated")),
            version=int(data["version"]),
            usage=TokenUsage.from_json(data.get("usage")),
            explain=data.get("explain"),
            attributions=Attributions.from_json(shown)
            if (shown := (data.get("explain") or {}).get("attributions"))
            else None,
        )


@dataclass(frozen=True)
class Generation:
    """A generate template's answer: `text`, or `output` checked against its JSON schema."""

    text: str | None
    output: Any
    finish_reason: str | None
    version: int
    usage: TokenUsage
    explain: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generation:
        return cls(
            text=data.get("text"),
            output=data.get("output"),
            finish_reason=data.get("finish_reason"),
            version=int(data["version"]),
            usage=TokenUsage.from_json(data.get("usage")),
            explain=data.get("explain"),
        )


@dataclass(frozen=True)
class Template:
    """A template the caller can run (`templates.list`), with details from `templates.get`."""

    name: str
    kind: str
    version: int
    description: str | None = None
    labels: list[str] = field(default_factory=list)
    inputs: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Template:
        return cls(
            name=data["name"],
            kind=data["kind"],
            version=int(data["version"]),
            description=data.get("description"),
            labels=[label["name"] for label in data.get("labels") or []],
            inputs=data.get("inputs"),
            output_schema=data.get("output_schema"),
            raw=data,
        )


@dataclass(frozen=True)
class UsageRow:
    """Requests and tokens for one model alias (and template) in one hour."""

    model: str
    template: str | None
    hour: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    tenant: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageRow:
        fields = ("model", "template", "hour", "requests", "prompt_tokens", "completion_tokens", "tenant")
        return cls(**{k: data.get(k) for k in fields})
