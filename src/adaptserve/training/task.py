"""Training examples as token ids, rendered exactly as the server renders them.

A `Task` turns labelled rows into `Item`s (prompt ids + the target ids the loss is on).
With a template, the prompt is the template's scoring prompt through the model's chat
template (the same messages `templates/classify.py` sends to vLLM's `/tokenize`), and
a classify target is the label's answer tokenized where it appears, followed by the
end-of-turn token; so an adapter bound to the template sees at serving time what it
saw in training. Without a template, rows are prompt/completion pairs or chat
`messages` whose last assistant message is the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptserve.errors import ConfigurationError
from adaptserve.templates.classify import ScoringPlan, Tokens
from adaptserve.templates.render import Renderer, content_free_inputs, label_answer, special_tokens
from adaptserve.templates.spec import TemplateSpec


@dataclass(frozen=True)
class Item:
    prompt: Tokens
    target: Tokens  # the tokens the loss is on
    label: int | None = None  # classify: the gold (or the teacher's top) label
    soft: tuple[float, ...] | None = None  # distillation: the teacher's label distribution
    # classify: the template inputs it was rendered from (real calibration inputs for `train`)
    inputs: dict[str, Any] | None = field(default=None, compare=False, hash=False)


class Task:
    def __init__(self, tokenizer: Any, spec: TemplateSpec | None, specials: frozenset[str] = frozenset()) -> None:
        self.tokenizer, self.spec = tokenizer, spec
        self.renderer = Renderer(specials)
        self.eos: int = tokenizer.eos_token_id
        self.label_tokens: list[Tokens] = self._label_tokens() if spec and spec.kind == "classify" else []
        self.plan = ScoringPlan.build(self.label_tokens) if self.label_tokens else None

    @classmethod
    def load(cls, model_dir: Path, spec: TemplateSpec | None) -> Task:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_dir), spec, special_tokens(model_dir))

    @property
    def first_token_path(self) -> bool:
        """The labels' answers start with distinct tokens: one position decides them."""
        return self.plan is not None and self.plan.path == "first_token"

    def _tokenize(self, messages: list[dict[str, str]], continued: bool) -> Tokens:
        ids = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not continued,
            continue_final_message=continued,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        return tuple(ids)

    def prompt(self, inputs: dict[str, Any]) -> Tokens:
        assert self.spec is not None
        return self._tokenize(*self.renderer.scoring_messages(self.spec, inputs))

    def _label_tokens(self) -> list[Tokens]:
        """Each label's answer as the difference of two tokenizations (see
        `Classifier.plan`): the tokens the model writes after the prompt."""
        assert self.spec is not None
        inputs = content_free_inputs(self.spec)[0]
        prompt = self.prompt(inputs)
        messages = self.renderer.messages(self.spec, inputs)
        out = []
        for label in self.spec.labels:
            answer = {"role": "assistant", "content": label_answer(self.spec, label.text)}
            full = self._tokenize([*messages, answer], continued=True)
            if full[: len(prompt)] != prompt or len(full) == len(prompt):
                raise ConfigurationError("the chat template does not extend the prompt with the answer")
            out.append(full[len(prompt) :])
        return out

    def classify_item(self, inputs: dict[str, Any], label: int, soft: tuple[float, ...] | None = None) -> Item:
        return Item(self.prompt(inputs), (*self.label_tokens[label], self.eos), label, soft, inputs)

    def generate_item(self, inputs: dict[str, Any], output: Any) -> Item:
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        return self._pair(self.prompt(inputs), text)

    def _pair(self, prompt: Tokens, completion: str) -> Item:
        target = tuple(self.tokenizer.encode(completion, add_special_tokens=False))
        return Item(prompt, (*target, self.eos))

    def items(self, rows: list[dict[str, Any]], where: str = "data") -> list[Item]:
        """Rows of a JSONL/CSV file → items; a clear error names the bad row."""
        out = []
        for i, row in enumerate(rows):
            try:
                out.append(self._item(row))
            except (KeyError, ValueError) as exc:
                raise ConfigurationError(f"{where} row {i + 1}: {exc}") from None
        return out

    def _item(self, row: dict[str, Any]) -> Item:
        if self.spec is None:
            if "messages" in row:
                *context, last = row["messages"]
                if last.get("role") != "assistant":
                    raise ValueError("the last message must be the assistant's answer")
                return self._pair(self._tokenize(context, continued=False), last["content"])
            if "prompt" not in row or "completion" not in row:
                raise ValueError("needs prompt and completion, or messages (or pass --template)")
            return self._pair(self._tokenize([{"role": "user", "content": row["prompt"]}], False), row["completion"])
        inputs = self.inputs_of(row)
        if self.spec.kind == "generate":
            if "output" not in row:
                raise ValueError("needs an output")
            return self.generate_item(inputs, row["output"])
        return self.classify_item(inputs, self.label_index(str(row.get("label", ""))))

    def inputs_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """The template's inputs from a row: by name, or `text` for a one-input template."""
        assert self.spec is not None
        names = list(self.spec.inputs)
        if len(names) == 1 and names[0] not in row and "text" in row:
            return {names[0]: row["text"]}
        missing = [n for n in names if self.spec.inputs[n].required and n not in row]
        if missing:
            raise ValueError(f"lacks the template input(s) {missing}")
        return {n: row[n] for n in names if n in row}

    def label_index(self, label: str) -> int:
        """A label by its name or its verbalizer."""
        assert self.spec is not None
        for i, candidate in enumerate(self.spec.labels):
            if label in (candidate.name, candidate.text):
                return i
        raise ValueError(f"label {label!r} is not one of {[x.name for x in self.spec.labels]}")
