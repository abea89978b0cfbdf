"""Template + inputs → chat messages. vLLM applies the model's own chat template to
them, so the prompt a template renders is the prompt the model was tuned on.

Inputs are data: they are joined into message text by concatenation, never passed
through `str.format` or Jinja, and the model's special-token strings inside them are
broken up so a caller cannot close a turn or open a system message.

Few-shot examples come first and the caller's inputs last, so every request of a
template shares one prompt prefix and vLLM's prefix cache serves it.

A head or encoder template sends no prompt: its inputs' text (`embedding_text`), in one
pooling batch with their attribution variants (`pooled_batch`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptserve.templates.attribution import AttributionPlan
from adaptserve.templates.spec import TemplateSpec

# Zhao et al. (2021): inputs with no content, whose label distribution is the bias.
CONTENT_FREE = ("N/A", "", "[MASK]")
_ZERO_WIDTH_SPACE = "\u200b"

Message = dict[str, str]


# Without the model's tokenizer files (a remote model behind `upstreams`), the markers
# chat templates commonly use are defused instead, and so is every `<|`: it opens the
# `<|...|>` special tokens of most current model families.
COMMON_MARKERS = frozenset(
    {
        *("<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
        *("[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>"),
        *("<think>", "</think>", "<tool_call>", "</tool_call>", "<|", "|>", "<｜", "｜>"),
    }
)


def special_tokens(model_dir: Path | None) -> frozenset[str]:
    """The added-token strings of a local model's tokenizer (`<|im_end|>`, and the
    non-special ones chat templates also use, such as `<think>`), or the common markers
    when the model's files are not here."""
    if model_dir is None:
        return COMMON_MARKERS
    found: set[str] = set()
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        found.update(token["content"] for token in (data.get("added_tokens_decoder") or {}).values())
    tokenizer = model_dir / "tokenizer.json"
    if tokenizer.is_file():
        data = json.loads(tokenizer.read_text())
        found.update(t["content"] for t in data.get("added_tokens") or [])
    return frozenset(t for t in found if len(t) > 1)


class Renderer:
    def __init__(self, specials: frozenset[str] = frozenset()) -> None:
        self._specials = sorted(specials, key=len, reverse=True)

    def defuse(self, text: str) -> str:
        """A special token's text inside an input stays text: a zero-width space after
        its first character keeps the tokenizer from matching it."""
        for token in self._specials:
            if token in text:
                text = text.replace(token, token[0] + _ZERO_WIDTH_SPACE + token[1:])
        return text

    def format_inputs(self, spec: TemplateSpec, inputs: dict[str, Any]) -> str:
        lines = []
        for name in spec.inputs:
            value = inputs.get(name)
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"{_title(name)}: {self.defuse(text)}")
        return "\n".join(lines)

    def messages(self, spec: TemplateSpec, inputs: dict[str, Any]) -> list[Message]:
        """System, then the instruction with the first example (or the inputs), then
        one user/assistant turn per example, then the caller's inputs."""
        out: list[Message] = []
        if spec.system:
            out.append({"role": "system", "content": spec.system})
        header = instruction(spec) + "\n\n"
        for example in spec.examples:
            out.append({"role": "user", "content": header + self.format_inputs(spec, example.inputs)})
            out.append({"role": "assistant", "content": _answer(spec, example.label, example.output)})
            header = ""
        out.append({"role": "user", "content": header + self.format_inputs(spec, inputs)})
        return out

    def scoring_messages(self, spec: TemplateSpec, inputs: dict[str, Any]) -> tuple[list[Message], bool]:
        """The messages a classify prompt is scored after, and whether the last one is
        an open assistant turn (the answer prefix) the labels continue."""
        messages = self.messages(spec, inputs)
        if spec.answer_prefix is None:
            return messages, False
        return [*messages, {"role": "assistant", "content": spec.answer_prefix}], True


def instruction(spec: TemplateSpec) -> str:
    if spec.kind == "generate":
        if spec.schema_ is not None:
            return f"{spec.instruction}\nAnswer with JSON only."
        return spec.instruction
    choices = []
    for label in spec.labels:
        choices.append(f"- {label.text}" + (f": {label.description}" if label.description else ""))
    return f"{spec.instruction}\nAnswer with one of:\n" + "\n".join(choices)


def calibration_inputs(spec: TemplateSpec) -> list[dict[str, Any]]:
    """The template's own calibration inputs, or the content-free ones."""
    return spec.calibration_inputs or content_free_inputs(spec)


def content_free_inputs(spec: TemplateSpec) -> list[dict[str, Any]]:
    """One input per content-free string, in every string field (other fields take
    a neutral value), for contextual calibration."""
    neutral = {"integer": 0, "number": 0, "boolean": False}
    return [
        {name: (text if f.type == "string" else neutral[f.type]) for name, f in spec.inputs.items()}
        for text in CONTENT_FREE
    ]


def label_answer(spec: TemplateSpec, label_text: str) -> str:
    """The whole answer that says a label: the answer prefix, a space, the label."""
    return f"{spec.answer_prefix} {label_text}" if spec.answer_prefix else label_text


def _answer(spec: TemplateSpec, label: str | None, output: Any) -> str:
    if spec.kind == "classify":
        return label_answer(spec, spec.labels[spec.label_index(label or "")].text)
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


def embedding_text(spec: TemplateSpec, inputs: dict[str, Any]) -> str:
    """What a head template embeds (and an encoder template classifies): its inputs'
    values in the template's order (those given), one per line. A template of one
    `text` input sends the text as it is, as `adaptserve train --method head` (and
    `--method encoder`) read their training texts."""
    return "\n".join(str(inputs[name]) for name in spec.inputs if inputs.get(name) is not None)


def pooled_batch(
    spec: TemplateSpec, inputs: list[dict[str, Any]], plans: Sequence[AttributionPlan] | None
) -> tuple[list[list[dict[str, Any]]], list[str], str]:
    """One pooling call's batch for a head or encoder template call: each input's group
    (the input, then its attribution variants when `plans` are given), every group's
    texts in order, and the request parameter a too-long text is named by."""
    groups = [p.variants(i) for p, i in zip(plans, inputs, strict=True)] if plans else [[i] for i in inputs]
    texts = [embedding_text(spec, v) for group in groups for v in group]
    return groups, texts, "attribution" if plans else "inputs"
