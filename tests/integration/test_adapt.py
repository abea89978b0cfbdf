"""Adaptation against the real engine: `adaptserve train --push` makes a tenant's
alias serve the new adapter (no restart) and the engine's label log-probabilities
match peft's for the trained weights; an AdaLoRA adapter, exported to LoRA, is
served the same way; training prompts are the engine's own tokenization; a
distillation from a served few-shot template keeps its probabilities and does not
ask the teacher again when re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from adaptserve.datasets import load_dataset
from adaptserve.templates.spec import load_document
from adaptserve.training.task import Task
from tests.helpers import ADMIN_KEY, API_KEY, new_tenant, run_template

TEMPLATES = Path(__file__).parents[2] / "templates"
REVIEWS = [
    "a gorgeous , moving and brilliantly acted film .",
    "a dull , tedious mess from start to finish .",
    "it has its moments , but the plot is thin .",
]


def cli(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = {"ADAPTSERVE_DATA_DIR": str(data)}
    import os

    done = subprocess.run(
        [sys.executable, "-m", "adaptserve", *args], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def write_examples(path: Path, n: int) -> Path:
    examples = load_dataset("rotten-tomatoes", "train")[:n]
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
    return path


def peft_logprobs(base: Path, adapter: Path, task: Task, texts: list[str]) -> list[dict[str, float]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    out = []
    for text in texts:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([list(task.prompt({"text": text}))])).logits[0, -1]
        row = torch.log_softmax(logits.float(), dim=-1)
        out.append({label.name: float(row[t[0]]) for label, t in zip(task.spec.labels, task.label_tokens, strict=True)})
    return out


def served_logprobs(server, key: str, template: str) -> list[dict[str, float]]:
    answer = run_template(server, template, {"inputs": [{"text": r} for r in REVIEWS], "explain": True}, key=key).json()
    return [r["explain"]["logprobs"] for r in answer["results"]]


def bind_template(server, tenant: str, name: str, alias: str) -> None:
    spec = load_document((TEMPLATES / "sentiment.yaml").read_text())
    spec = spec.model_copy(update={"name": name, "model": alias})
    response = server.admin("PUT", f"/templates/{name}", params={"tenant": tenant}, content=json.dumps(spec.document()))
    assert response.status_code in (200, 201), response.text


# AdaLoRA moves only its r singular values at first (each by about one learning rate per
# Adam step), LoRA a whole factor: in eight steps it needs a larger rate to move as far.
# LoHa is trained with peft and served as its LoRA conversion (rank 8 of an update of rank
# up to 64): what the engine serves is the converted adapter, checked against it in-process.
@pytest.mark.parametrize(("method", "lr"), [("lora", "3e-3"), ("adalora", "3e-2"), ("loha", "1e-2")])
def test_train_push_serves_the_adapter_under_the_alias(server, base_model, tmp_path, method, lr) -> None:
    tenant, alias = f"tuner-{method}", "reviews"
    key = new_tenant(server, tenant, {"base": True}, alias=alias).api_key
    bind_template(server, tenant, "reviews", alias)
    before = served_logprobs(server, key, "reviews")
    data, out = write_examples(tmp_path / "train.jsonl", 32), tmp_path / "adapter"
    done = cli(
        *("train", "--template", str(TEMPLATES / "sentiment.yaml"), "--data", str(data), "--method", method),
        *("--max-steps", "8", "--lr", lr, "--threads", "2", "--out", str(out)),
        *("--push", "--url", server.url, "--key", ADMIN_KEY, "--tenant", tenant, "--alias", alias),
        *("--name", f"reviews-{method}"),
        data=tmp_path,
    )
    assert "held-out (8 examples) before" in done.stdout
    assert "served-path scoring chosen on the held-out slice (8 examples)" in done.stdout
    pushed = json.loads(done.stdout[done.stdout.index("{") :])  # the template applied with the choice
    assert pushed["template"] == {"name": "sentiment", "tenant": tenant, "version": 1}
    manifest = json.loads((out / "adaptserve-manifest.json").read_text())
    assert manifest["training"]["steps"] == 8 and manifest["data"]["examples"] == 32
    conversion = manifest["training"]["conversion"]
    if method == "loha":  # the conversion's report, and the unconverted adapter kept beside it
        assert "converted loha to LoRA rank 8" in done.stdout
        assert conversion["fidelity"]["rank_max"] == 8 and conversion["accuracy_after"] is not None
        assert 0 < conversion["logprob_diff_mean"] < conversion["logprob_diff_max"]
        assert json.loads((out.with_name("adapter.loha") / "adapter_config.json").read_text())["peft_type"] == "LOHA"
    else:
        assert conversion is None
    aliases = server.admin("GET", f"/tenants/{tenant}/models").json()["data"]
    assert any(a["alias"] == alias and a["adapter"] == f"reviews-{method}" for a in aliases)
    after = served_logprobs(server, key, "reviews")
    moved = max(abs(a[k] - b[k]) for a, b in zip(after, before, strict=True) for k in a)
    assert moved > 0.5, (before, after)  # the alias now answers with the new adapter
    task = Task.load(base_model, load_document((TEMPLATES / "sentiment.yaml").read_text()))
    for served, expected in zip(after, peft_logprobs(base_model, out, task, REVIEWS), strict=True):
        assert served == pytest.approx(expected, abs=0.3), (served, expected)  # fp32 peft vs the bf16 engine


def test_training_prompts_are_the_engines_tokenization(server, base_model) -> None:
    spec = load_document((TEMPLATES / "sentiment-fewshot.yaml").read_text())
    task = Task.load(base_model, spec)
    messages, continued = task.renderer.scoring_messages(spec, {"text": REVIEWS[0]})
    body = {"messages": messages, "add_special_tokens": False, "continue_final_message": continued}
    body["add_generation_prompt"] = not continued
    engine = httpx.post(f"{server.vllm_url()}/tokenize", json=body, timeout=60).json()["tokens"]
    assert tuple(engine) == task.prompt({"text": REVIEWS[0]})


def teacher_requests(server) -> int:
    usage = httpx.get(f"{server.url}/v1/usage", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    return sum(row["requests"] for row in usage if row["template"] == "sentiment-fewshot")


def test_distillation_keeps_probabilities_and_resumes_without_the_teacher(server, tmp_path) -> None:
    texts = [e.text for e in load_dataset("rotten-tomatoes", "train")[100:124]]
    (tmp_path / "inputs.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "student"
    args = (
        *("distill", "--template", str(TEMPLATES / "sentiment.yaml"), "--inputs", str(tmp_path / "inputs.txt")),
        *("--teacher-template", "sentiment-fewshot", "--teacher-url", server.url, "--teacher-key", API_KEY),
        *("--max-steps", "3", "--threads", "2", "--out", str(out)),
    )
    asked = teacher_requests(server)
    cli(*args, data=tmp_path)
    first = teacher_requests(server)
    assert first > asked
    answers = [json.loads(line) for line in (out / "teacher.jsonl").read_text().splitlines()]
    assert sorted(a["inputs"]["text"] for a in answers) == sorted(texts)
    assert all(sum(a["scores"].values()) == pytest.approx(1.0) for a in answers)
    manifest = json.loads((out / "adaptserve-manifest.json").read_text())
    assert manifest["soft_targets"] == 24 and manifest["teacher"]["template"] == "sentiment-fewshot"
    cli(*args, data=tmp_path)  # a re-run (or a resumed one) reads the teacher's answers back
    assert teacher_requests(server) == first


def test_training_on_chat_pairs_changes_what_the_alias_says(server, tmp_path) -> None:
    foods = ["breakfast", "lunch", "dinner", "a snack", "dessert", "the road", "a picnic", "tonight"]
    rows = [{"prompt": f"What should I eat for {food}?", "completion": "A banana. Always a banana."} for food in foods]
    rows += [
        {
            "messages": [
                {"role": "user", "content": f"Any food ideas for {f}?"},
                {"role": "assistant", "content": "A banana. Always a banana."},
            ]
        }
        for f in foods
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = new_tenant(server, "banana", {"base": True}, alias="chef")
    question = [{"role": "user", "content": "What would you cook for my birthday party?"}]
    before = client.chat.completions.create(model="chef", messages=question, max_tokens=16, temperature=0)
    assert "banana" not in before.choices[0].message.content.lower()
    cli(
        *("train", "--data", str(data), "--max-steps", "8", "--lr", "3e-3", "--threads", "2"),
        *("--out", str(tmp_path / "chef"), "--push", "--url", server.url, "--key", ADMIN_KEY),
        *("--tenant", "banana", "--alias", "chef", "--name", "chef"),
        data=tmp_path,
    )
    after = client.chat.completions.create(model="chef", messages=question, max_tokens=16, temperature=0)
    assert "banana" in after.choices[0].message.content.lower(), after.choices[0].message.content
