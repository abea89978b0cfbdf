"""Adaptation in-process, on the real default model but without the engine: training
items rendered like the server renders them, the loss (hard and soft targets), a few real training steps on the default
model (the loss falls, Ctrl-C leaves a usable adapter, the manifest is complete),
the AdaLoRA → LoRA export's equivalence, a soft prompt scored where peft places it, and the teacher's bounded, retried,
resumable labelling."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch

from adaptserve.default_model import folder_digest
from adaptserve.errors import ConfigurationError
from adaptserve.templates.render import Renderer
from adaptserve.templates.spec import load_document
from adaptserve.training.distill import CACHE, Teacher, TeacherCache, label, match_label, student_items
from adaptserve.training.manifest import MANIFEST, write_manifest
from adaptserve.training.scoring import target_logprobs
from adaptserve.training.task import Item, Task
from adaptserve.training.train import TrainConfig, batches, item_loss, split_holdout, train

TEMPLATES = Path(__file__).parents[2] / "templates"
REVIEWS = [
    ("a gorgeous , moving and brilliantly acted film .", "positive"),
    ("a dull , tedious mess from start to finish .", "negative"),
    ("warm , funny and wise : the best comedy of the year .", "positive"),
    ("boring , badly written and far too long .", "negative"),
]


@pytest.fixture(scope="module")
def base(base_model: Path) -> Path:
    return base_model


@pytest.fixture(scope="module")
def sentiment(base: Path) -> Task:
    return Task.load(base, load_document((TEMPLATES / "sentiment.yaml").read_text()))


def rows(n: int) -> list[dict]:
    return [{"text": f"{text} ({i})", "label": gold} for i in range(n // len(REVIEWS)) for text, gold in REVIEWS]


def test_items_are_the_templates_scoring_prompt_and_the_label_answer(sentiment: Task) -> None:
    spec = sentiment.spec
    item = sentiment.items([{"text": "a riveting documentary .", "label": "positive"}])[0]
    messages, continued = Renderer().scoring_messages(spec, {"text": "a riveting documentary ."})
    expected = sentiment.tokenizer.apply_chat_template(messages, continue_final_message=continued, tokenize=False)
    assert sentiment.tokenizer.decode(item.prompt) == expected
    assert item.target == (*sentiment.label_tokens[1], sentiment.eos)
    assert sentiment.tokenizer.decode(item.target) == " positive<|im_end|>"
    assert sentiment.first_token_path and item.label == 1
    # A label by its verbalizer works too; an unknown one names its row.
    assert sentiment.items([{"text": "x", "label": "negative"}])[0].label == 0
    with pytest.raises(ConfigurationError, match="row 2: label 'great'"):
        sentiment.items([{"text": "x", "label": "negative"}, {"text": "y", "label": "great"}])
    with pytest.raises(ConfigurationError, match="row 1: lacks the template input"):
        sentiment.items([{"review": "x", "label": "negative"}])


def test_untemplated_rows_are_prompt_completion_or_messages(base: Path) -> None:
    task = Task.load(base, None)
    pair = task.items([{"prompt": "Say hi.", "completion": "Hi!"}])[0]
    chat = task.items([{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}])
    assert pair == chat[0]
    assert task.tokenizer.decode(pair.target) == "Hi!<|im_end|>"
    assert task.tokenizer.decode(pair.prompt).endswith("Say hi.<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ConfigurationError, match="needs prompt and completion"):
        task.items([{"text": "x"}])


def test_holdout_and_batches_are_seeded_and_cover_everything() -> None:
    items = [Item((i,) * (i % 7 + 1), (1,)) for i in range(50)]
    train_a, held_a = split_holdout(items, 0.15, seed=3)
    train_b, held_b = split_holdout(items, 0.15, seed=3)
    assert (train_a, held_a) == (train_b, held_b) and len(held_a) == 8
    assert sorted(map(id, train_a + held_a)) == sorted(map(id, items))
    assert split_holdout(items[:20], 0.15, 0) == (items[:20], [])  # too few to hold out
    import random

    chunks = batches(train_a, 8, random.Random(0))
    assert sorted(id(it) for b in chunks for it in b) == sorted(map(id, train_a))
    assert chunks == batches(train_a, 8, random.Random(0))


def test_soft_targets_are_a_distribution_over_the_labels_first_tokens(sentiment: Task) -> None:
    rows_ = torch.log_softmax(torch.randn(2, sentiment.tokenizer.vocab_size), dim=-1)
    neg, pos = (tokens[0] for tokens in sentiment.label_tokens)
    hard = Item((1, 2), (pos, sentiment.eos), label=1)
    soft = Item((1, 2), (pos, sentiment.eos), label=1, soft=(0.3, 0.7))
    assert item_loss(sentiment, hard, rows_) == pytest.approx(float(-rows_[0, pos] - rows_[1, sentiment.eos]))
    expected = -(0.3 * rows_[0, neg] + 0.7 * rows_[0, pos]) - rows_[1, sentiment.eos]
    assert item_loss(sentiment, soft, rows_) == pytest.approx(float(expected))


def test_a_few_steps_lower_the_loss_and_write_a_complete_manifest(sentiment: Task, base: Path, tmp_path) -> None:
    items = sentiment.items(rows(32))
    config = TrainConfig(max_steps=6, learning_rate=1e-3, threads=2)
    _, outcome = train(sentiment, items, base, tmp_path, config, progress=lambda _: None)
    assert outcome.steps == 6 and not outcome.interrupted
    assert outcome.examples == {"train": 24, "held_out": 8}
    assert outcome.after["loss"] < outcome.before["loss"] - 0.5
    # The held-out slice as the server will answer it: the template as written (sentiment.yaml
    # has calibration on), every option fit would weigh, and the one chosen; without
    # calibration, the same argmax training reports.
    served = outcome.served
    assert served["template_calibration"] is True and 0.0 <= served["as_written"]["accuracy"] <= 1.0
    assert served["options"]["none"]["accuracy"] == outcome.after["accuracy"]
    assert set(served["options"]) == {"none", "template", "content-free", "training"}
    assert served["chosen"]["accuracy"] >= served["options"]["none"]["accuracy"]
    manifest = write_manifest(tmp_path, base=base, items=items, source="unit", training=outcome.summary())
    stored = json.loads((tmp_path / MANIFEST).read_text())
    assert stored == json.loads(json.dumps(manifest))
    assert stored["base_model"]["sha256"] == folder_digest(base)
    assert stored["data"]["examples"] == 32 and len(stored["data"]["sha256"]) == 64
    assert stored["adapter"]["sha256"] == folder_digest(tmp_path)
    assert stored["training"]["served"]["as_written"] == served["as_written"]
    assert stored["training"]["config"]["rank"] == 8 and stored["training"]["config"]["method"] == "lora"
    assert {"torch", "transformers", "peft"} <= set(stored["versions"])
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_ctrl_c_leaves_a_usable_adapter(sentiment: Task, base: Path, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def interrupt(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    _, outcome = train(sentiment, sentiment.items(rows(16)), base, tmp_path, TrainConfig(max_steps=8), interrupt)
    assert outcome.interrupted and outcome.steps == 2
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == sentiment.tokenizer.vocab_size


def test_a_deadline_ends_training_after_the_step_that_passes_it(sentiment: Task, base: Path, tmp_path) -> None:
    """fit's time budget: `max_seconds` stops the optimizer steps (at least one runs) and
    the adapter is written as at the end of any run."""
    config = TrainConfig(max_steps=8, max_seconds=0.0, threads=2)
    _, outcome = train(sentiment, sentiment.items(rows(16)), base, tmp_path, config)
    assert outcome.out_of_time and not outcome.interrupted and outcome.steps == 1
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8


def test_adalora_exports_to_a_lora_with_the_same_logits(sentiment: Task, base: Path, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = TrainConfig(method="adalora", max_steps=8, learning_rate=3e-3, threads=2)
    model, _ = train(sentiment, sentiment.items(rows(32)), base, tmp_path, config, progress=lambda _: None)
    exported = json.loads((tmp_path / "adapter_config.json").read_text())
    assert exported["peft_type"] == "LORA" and exported["r"] == exported["lora_alpha"] <= 12
    ids = torch.tensor([list(sentiment.items(rows(4))[0].prompt)])
    with torch.no_grad():
        adalora = model.eval()(input_ids=ids).logits
        lora = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path
        ).eval()
        plain = lora(input_ids=ids).logits
        with lora.disable_adapter():
            untouched = lora(input_ids=ids).logits
    assert (untouched - adalora).abs().max() > 1.0  # training moved the model...
    torch.testing.assert_close(plain, adalora, atol=1e-3, rtol=1e-3)  # ...and the export kept it


def test_a_soft_prompt_trains_and_is_scored_where_peft_places_it(sentiment: Task, base: Path, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = TrainConfig(method="prompt-tuning", virtual_tokens=4, max_steps=6, threads=2)
    _, outcome = train(sentiment, sentiment.items(rows(32)), base, tmp_path, config, progress=lambda _: None)
    assert outcome.after["loss"] < outcome.before["loss"] - 0.5
    assert outcome.served == {}  # not served: no "as served" figure to report
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_virtual_tokens"] == 4
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path)
    item = sentiment.items(rows(4))[0]
    with torch.no_grad():
        [ours] = target_logprobs(loaded.eval(), [item])
        ids = torch.tensor([[*item.prompt, *item.target]])
        logits = loaded(input_ids=ids).logits[0, 4:]  # peft's own forward: the 4 virtual tokens first
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits[0]
    at = slice(len(item.prompt) - 1, len(item.prompt) + len(item.target) - 1)
    torch.testing.assert_close(ours, torch.log_softmax(logits[at], dim=-1), atol=1e-4, rtol=1e-4)
    assert (torch.log_softmax(plain[at], dim=-1) - ours).abs().max() > 0.5  # and the prompt matters


def test_a_soft_prompt_is_not_pushed() -> None:
    from adaptserve.cli import main

    argv = ["train", "--dataset", "trec", "--template", "question-type", "--templates-dir", str(TEMPLATES)]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--method", "prompt-tuning", "--push", "--admin-key", "k", "--url", "http://127.0.0.1:9"])
    assert "a soft prompt cannot be pushed" in str(done.value.code)


def teacher_transport(calls: list[list[str]], fail_after: int | None = None, busy_first: bool = False):
    """A fake teacher template: labels by keyword, with probabilities."""

    def handle(request: httpx.Request) -> httpx.Response:
        if busy_first and not calls:
            calls.append([])
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}})
        texts = [i["text"] for i in json.loads(request.content)["inputs"]]
        calls.append(texts)
        if fail_after is not None and len(calls) > fail_after:
            return httpx.Response(400, json={"error": {"message": "teacher gone"}})
        results = []
        for text in texts:
            p = 0.9 if "good" in text else 0.2
            results.append(
                {
                    "label": "positive" if p > 0.5 else "negative",
                    "scores": {"negative": 1 - p, "positive": p},
                    "calibrated": True,
                    "version": 1,
                }
            )
        return httpx.Response(200, json={"results": results})

    return httpx.MockTransport(handle)


def test_interrupted_labelling_resumes_without_asking_the_teacher_again(sentiment: Task, tmp_path) -> None:
    inputs = [{"text": f"{'good' if i % 2 else 'bad'} film {i}"} for i in range(20)]
    teacher = Teacher("http://teacher", "k", template="sentiment-fewshot", concurrency=1, batch=4)
    first: list[list[str]] = []
    with pytest.raises(ConfigurationError, match="teacher gone"):
        asyncio.run(
            label(
                teacher, sentiment.spec, inputs, TeacherCache(tmp_path / CACHE), transport=teacher_transport(first, 2)
            )
        )
    asked_first = {t for call in first[:2] for t in call}
    assert len(asked_first) == 8 and len((tmp_path / CACHE).read_text().splitlines()) == 8
    second: list[list[str]] = []
    answers = asyncio.run(
        label(teacher, sentiment.spec, inputs, TeacherCache(tmp_path / CACHE), transport=teacher_transport(second))
    )
    asked_second = {t for call in second for t in call}
    assert asked_second == {i["text"] for i in inputs} - asked_first  # nothing asked twice
    assert [a["inputs"] for a in answers] == inputs
    items, skipped = student_items(sentiment, answers)
    assert skipped == 0 and [it.soft for it in items[:2]] == [pytest.approx((0.8, 0.2)), pytest.approx((0.1, 0.9))]
    assert [it.label for it in items[:2]] == [0, 1]


def test_the_teacher_is_retried_when_busy(sentiment: Task, tmp_path) -> None:
    calls: list[list[str]] = []
    teacher = Teacher("http://teacher", "k", template="t", batch=8)
    answers = asyncio.run(
        label(
            teacher,
            sentiment.spec,
            [{"text": "good"}],
            TeacherCache(tmp_path / CACHE),
            transport=teacher_transport(calls, busy_first=True),
        )
    )
    assert len(calls) == 2 and answers[0]["label"] == "positive"


def test_chat_teachers_answers_are_matched_to_labels() -> None:
    spec = load_document((TEMPLATES / "question-type-fewshot.yaml").read_text())
    assert match_label(spec, "The question asks for a number, I think.") == "NUM"
    assert match_label(spec, "It is about a person (HUM)") == "HUM"
    assert match_label(spec, "no idea") is None
    with pytest.raises(ConfigurationError, match="exactly one"):
        Teacher("http://x", "k")


def test_shared_first_tokens_are_scored_by_whole_answers(base: Path) -> None:
    """The continuation path in-process (one read per answer prefix) picks the label
    whose whole answer is most likely, as scoring each answer on its own does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adaptserve.training.scoring import scan, target_logprobs

    task = Task.load(base, load_document((TEMPLATES / "question-type.yaml").read_text()))
    assert not task.first_token_path
    questions = ["How many moons does Mars have ?", "Who painted the Mona Lisa ?", "What does NASA stand for ?"]
    items = [task.classify_item({"question": q}, 0) for q in questions]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(r=4))
    _, scores = scan(model, task, items)
    with torch.no_grad():
        for item, got in zip(items, scores, strict=True):
            answers = [Item(item.prompt, tokens) for tokens in task.label_tokens]
            rows = target_logprobs(model, answers)
            totals = [
                float(r.gather(1, torch.tensor(a.target)[:, None]).sum()) for a, r in zip(answers, rows, strict=True)
            ]
            assert got == pytest.approx(totals, abs=1e-4)


def test_inputs_and_cached_answers_split_on_newlines_only(sentiment: Task, tmp_path) -> None:
    from adaptserve.training.distill import read_inputs

    odd = "a review with a line\u2028separator and a \x85 next-line character"
    (tmp_path / "inputs.txt").write_text(f"first review\n{odd}\n\n")
    inputs = read_inputs(tmp_path / "inputs.txt", sentiment.spec)
    assert inputs == [{"text": "first review"}, {"text": odd}]
    cache = TeacherCache(tmp_path / CACHE)
    cache.add([{"key": "k1", "inputs": inputs[1], "label": "positive", "scores": None}])
    with (tmp_path / CACHE).open("a") as f:
        f.write('{"key": "k2", "inputs": {"te')  # a line cut short by a kill
    resumed = TeacherCache(tmp_path / CACHE)
    assert list(resumed.answers) == ["k1"] and resumed.answers["k1"]["inputs"] == {"text": odd}
    resumed.add([{"key": "k3", "inputs": inputs[0], "label": "negative", "scores": None}])
    assert list(TeacherCache(tmp_path / CACHE).answers) == ["k1", "k3"]


def test_serving_far_below_training_is_a_warning() -> None:
    from adaptserve.training.served import warning

    written = {"calibration": "content-free", "temperature": 1.0, "accuracy": 0.80}
    served = {"as_written": written, "chosen": {"calibration": None, "temperature": 1.5, "accuracy": 0.97}}
    line = warning(served, 1.0, applied=False)  # the template as written loses what the choice keeps
    assert line is not None and "0.800" in line and "calibration: none" in line and "--alias" in line
    assert warning(served, 1.0, applied=True) is None  # the choice is what serves
    far = served | {"chosen": {"calibration": None, "temperature": 1.0, "accuracy": 0.80}}
    line = warning(far, 1.0, applied=True)
    assert line is not None and "20 points below" in line
    assert warning({}, 1.0, applied=False) is None
