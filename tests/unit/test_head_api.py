"""Classifier heads through the gateway, on fake engines (the encoder's vectors are
deterministic: `fake_embedding`): the admin API (validation, versions, activation,
rollback, deletion, tenant isolation) and head templates (probabilities against numpy
on the fake vectors, one embeddings call per call, attributions, metering, swaps)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptserve.bench.fake_engine import EMBED_DIM, FakeState, fake_embedding
from adaptserve.cli import main as cli_main
from adaptserve.errors import ConfigurationError
from adaptserve.fit.baselines import C_GRID
from adaptserve.training.head import train_head
from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    FAKE_ENCODER,
    RunningGateway,
    assert_openai_error,
    call_as,
    embed_entry,
    new_tenant,
    random_head,
    run_template,
    tenant_admin_key,
    wait_for_usage,
)

LABELS = ["negative", "positive", "neutral"]


def _head(seed: int = 0, labels: list[str] = LABELS, **changes: Any) -> dict[str, Any]:
    return random_head(labels, seed, **changes)


def _template(name: str = "mood", head: str = "h", labels: list[str] = LABELS, **changes: Any) -> dict[str, Any]:
    doc = {
        "name": name,
        "kind": "classify",
        "head": head,
        "inputs": {"text": {}},
        "labels": [{"name": n} for n in labels],
    }
    return doc | changes


def _put_head(
    embed_gateway: RunningGateway, name: str, body: dict[str, Any], key: str | None = None, **params: Any
) -> Any:
    return embed_gateway.admin("PUT", f"/heads/{name}", json=body, params=params, **({"key": key} if key else {}))


def _put_template(embed_gateway: RunningGateway, doc: dict[str, Any], key: str | None = None, **params: Any) -> Any:
    return embed_gateway.admin(
        "PUT", f"/templates/{doc['name']}", json=doc, params=params, **({"key": key} if key else {})
    )


def _expected(head: dict[str, Any], texts: list[str], order: list[str] = LABELS) -> np.ndarray:
    """numpy on the fake engine's vectors (float32, as they travel), columns in `order`."""
    x = np.array([fake_embedding(t.split()) for t in texts], dtype=np.float32).astype(np.float64)
    logits = (x @ np.array(head["coef"]).T + np.array(head["intercept"])) / head.get("temperature", 1.0)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p[:, [head["labels"].index(n) for n in order]]


# -- the admin API -------------------------------------------------------------------------
def test_a_head_is_versioned_activated_and_rolled_back(embed_gateway: RunningGateway) -> None:
    first = _put_head(embed_gateway, "h", _head(1))
    assert first.status_code == 201, first.text
    v1 = first.json()["version"]
    assert first.json()["active_version"] == v1 and len(v1) == 12
    assert _put_head(embed_gateway, "h", _head(1)).status_code == 200  # identical: the same version
    staged = _put_head(embed_gateway, "h", _head(2), activate="false")
    v2 = staged.json()["version"]
    assert staged.status_code == 201 and v2 != v1 and staged.json()["active_version"] == v1
    assert [v["version"] for v in embed_gateway.admin("GET", "/heads/h").json()["versions"]] == [v1, v2]
    assert embed_gateway.admin("POST", "/heads/h/activate", json={"version": v2}).json()["active_version"] == v2
    back = embed_gateway.admin("POST", "/heads/h/rollback").json()
    assert (back["active_version"], back["previous_version"]) == (v1, v2)
    assert_openai_error(
        embed_gateway.admin("POST", "/heads/h/activate", json={"version": "0" * 12}), 404, "head_not_found", "version"
    )
    fresh = _put_head(embed_gateway, "fresh", _head(3))
    assert fresh.status_code == 201
    assert_openai_error(embed_gateway.admin("POST", "/heads/fresh/rollback"), 409, "no_earlier_version")
    assert embed_gateway.admin("DELETE", "/heads/h").status_code == 204
    assert_openai_error(embed_gateway.admin("GET", "/heads/h"), 404, "head_not_found", "name")
    assert [h["name"] for h in embed_gateway.admin("GET", "/heads").json()["data"]] == ["fresh"]


@pytest.mark.parametrize(
    ("changes", "code", "param"),
    [
        ({"coef": [[0.0] * EMBED_DIM] * 2}, "invalid_head", "coef"),
        ({"labels": ["a", "a", "b"]}, "invalid_head", "labels"),
        ({"intercept": [0.0]}, "invalid_head", "intercept"),
        ({"embedding_model": "nope"}, "head_mismatch", "embedding_model"),
        ({"embedding_model": "default"}, "head_mismatch", "embedding_model"),  # the generate model
        ({"dim": 4, "coef": [[0.0] * 4] * 3}, "head_mismatch", "dim"),  # the engine's vectors are 8-dimensional
    ],
)
def test_a_bad_head_is_a_400_naming_the_field(
    embed_gateway: RunningGateway, changes: dict[str, Any], code: str, param: str
) -> None:
    assert_openai_error(_put_head(embed_gateway, "h", _head(0, **changes)), 400, code, param)
    assert embed_gateway.admin("GET", "/heads").json()["data"] == []


def test_heads_are_per_tenant(embed_gateway: RunningGateway) -> None:
    for tenant in ("acme", "globex"):
        new_tenant(embed_gateway, tenant)
    acme, globex = tenant_admin_key(embed_gateway, "acme"), tenant_admin_key(embed_gateway, "globex")
    assert _put_head(embed_gateway, "h", _head(1), key=acme).status_code == 201
    assert _put_head(embed_gateway, "g", _head(2)).status_code == 201  # the operator's: global
    assert_openai_error(call_as(embed_gateway, globex, "GET", "/admin/heads/h"), 404, "head_not_found", "name")
    assert_openai_error(
        call_as(embed_gateway, globex, "POST", "/admin/heads/h/rollback"), 404, "head_not_found", "name"
    )
    assert_openai_error(
        call_as(embed_gateway, globex, "GET", "/admin/heads/h", params={"tenant": "acme"}), 404, "tenant_not_found"
    )
    assert [h["name"] for h in call_as(embed_gateway, globex, "GET", "/admin/heads").json()["data"]] == ["g"]
    assert sorted(h["name"] for h in call_as(embed_gateway, acme, "GET", "/admin/heads").json()["data"]) == ["g", "h"]
    assert call_as(embed_gateway, acme, "GET", "/admin/heads/h").json()["owner"] == "acme"
    assert_openai_error(call_as(embed_gateway, acme, "DELETE", "/admin/heads/g"), 403, "permission_denied")
    # globex's own "h" is another head: names are per owner
    assert _put_head(embed_gateway, "h", _head(3), key=globex).status_code == 201
    assert call_as(embed_gateway, globex, "GET", "/admin/heads/h").json()["owner"] == "globex"
    assert len(embed_gateway.admin("GET", "/heads").json()["data"]) == 3
    # a template resolves its owner's head: acme's "h", never globex's
    assert _put_template(embed_gateway, _template(), key=acme).status_code == 201
    assert_openai_error(
        _put_template(embed_gateway, _template("other", head="nope"), key=acme), 400, "head_mismatch", "head"
    )
    # a deleted tenant's heads go with it
    assert embed_gateway.admin("DELETE", "/tenants/globex").status_code == 204
    assert sorted(h["owner"] or "" for h in embed_gateway.admin("GET", "/heads").json()["data"]) == ["", "acme"]


# -- head templates ------------------------------------------------------------------------
def test_a_head_template_answers_numpy_on_one_embeddings_call(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    head = _head(4, temperature=0.7)
    assert _put_head(embed_gateway, "h", head).status_code == 201
    order = ["positive", "neutral", "negative"]  # the template's order, not the head's
    assert _put_template(embed_gateway, _template(labels=order)).status_code == 201, "template"
    texts = ["the cat sat on the mat", "a b c", "dull and slow"]
    before = len(encoder.requests)
    answer = run_template(embed_gateway, "mood", {"inputs": [{"text": t} for t in texts]})
    assert answer.status_code == 200, answer.text
    assert len(encoder.requests) == before + 1 and encoder.requests[-1]["input"] == texts  # one batch
    expected = _expected(head, texts, order)
    for result, row in zip(answer.json()["results"], expected, strict=True):
        assert list(result["scores"]) == order
        assert list(result["scores"].values()) == pytest.approx(row.tolist(), abs=1e-12)
        assert result["label"] == order[int(row.argmax())]
        assert result["head"]["name"] == "h" and result["calibrated"] is False
    assert answer.json()["usage"]["prompt_tokens"] == sum(len(t.split()) + 2 for t in texts)
    one = run_template(embed_gateway, "mood", {"inputs": {"text": texts[0]}, "explain": True}).json()
    assert one["usage"]["prompt_tokens"] == len(texts[0].split()) + 2 and one["explain"]["scoring"] == "head"
    rows = wait_for_usage(embed_gateway, API_KEY, requests=2)
    assert {(r["model"], r["template"]) for r in rows} == {("embedder", "mood")}
    assert sum(r["prompt_tokens"] for r in rows) == sum(len(t.split()) + 2 for t in [*texts, texts[0]])


def test_attributions_of_a_head_template_come_from_one_embeddings_call(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    head = _head(5)
    _put_head(embed_gateway, "h", head)
    _put_template(embed_gateway, _template())
    before = len(encoder.requests)
    body = {"inputs": {"text": "good fun film"}, "explain": "attributions"}
    answer = run_template(embed_gateway, "mood", body)
    assert answer.status_code == 200, answer.text
    assert len(encoder.requests) == before + 1
    sent = encoder.requests[-1]["input"]
    assert [t.split() for t in sent] == [["good", "fun", "film"], ["fun", "film"], ["good", "film"], ["good", "fun"]]
    spans = answer.json()["explain"]["attributions"]["spans"]
    probs = _expected(head, sent)
    best = int(probs[0].argmax())
    assert ["good fun film"[s["start"] : s["end"]] for s in spans] == ["good", "fun", "film"]
    for i, span in enumerate(spans):
        assert span["contribution"] == pytest.approx(probs[0, best] - probs[i + 1, best], abs=1e-9)


def test_a_swap_changes_the_next_call_and_a_mismatch_is_refused(embed_gateway: RunningGateway) -> None:
    first, second = _head(6), _head(7)
    v1 = _put_head(embed_gateway, "h", first).json()["version"]
    _put_template(embed_gateway, _template())
    v2 = _put_head(embed_gateway, "h", second, activate="false").json()["version"]
    text = {"inputs": {"text": "quite good"}}
    assert run_template(embed_gateway, "mood", text).json()["head"]["version"] == v1
    embed_gateway.admin("POST", "/heads/h/activate", json={"version": v2})
    swapped = run_template(embed_gateway, "mood", text).json()
    assert swapped["head"]["version"] == v2
    assert list(swapped["scores"].values()) == pytest.approx(_expected(second, ["quite good"])[0].tolist(), abs=1e-12)
    # labels that are not the head's: refused when the template is saved, and when a version changes them
    assert_openai_error(
        _put_template(embed_gateway, _template("bad", labels=["yes", "no"])), 400, "head_mismatch", "labels"
    )
    _put_head(embed_gateway, "h", _head(8, labels=["a", "b", "c"]))
    assert_openai_error(run_template(embed_gateway, "mood", text), 400, "head_mismatch", "labels")
    embed_gateway.admin("POST", "/heads/h/rollback")
    assert run_template(embed_gateway, "mood", text).json()["head"]["version"] == v2


def test_a_head_records_its_embedding_weights_and_is_refused_on_other_weights(
    start_gateway: Callable[..., RunningGateway], encoder: FakeState
) -> None:
    weights, other = "ab" * 32, "cd" * 32
    first = start_gateway(models=[embed_entry(encoder, digest=weights)])
    refused = _put_head(first, "h", _head(10, embedding_digest=other))
    assert_openai_error(refused, 400, "head_mismatch", "embedding_digest")
    assert other[:12] in refused.json()["error"]["message"] and weights[:12] in refused.json()["error"]["message"]
    stamped = _put_head(first, "h", _head(10))  # none given: the served model's digest is recorded
    assert stamped.status_code == 201
    same = _put_head(first, "h", _head(10, embedding_digest=weights))  # the very head the stamp made
    assert same.status_code == 200 and same.json()["version"] == stamped.json()["version"]
    _put_template(first, _template())
    text = {"inputs": {"text": "quite good"}}
    assert run_template(first, "mood", text).status_code == 200
    # The weights behind `embedder` change (another digest in its entry): the head's answers would be noise.
    first.server.stop()
    swapped = start_gateway(models=[embed_entry(encoder, digest=other)])
    assert_openai_error(run_template(swapped, "mood", text), 400, "head_mismatch", "head")
    assert _put_head(swapped, "h", _head(11)).status_code == 201  # a head for these weights serves again
    assert run_template(swapped, "mood", text).status_code == 200


def test_a_tenants_head_on_a_model_it_may_not_call_is_refused_as_unknown(
    start_gateway: Callable[..., RunningGateway], encoder: FakeState
) -> None:
    gateway = start_gateway(models=[embed_entry(encoder, tenants=["someone-else"], digest="ab" * 32)])
    assert gateway.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    refused = _put_head(gateway, "h", _head(12, embedding_digest="cd" * 32), tenant="acme")
    assert_openai_error(refused, 400, "head_mismatch", "embedding_model")  # not its dim, not its digest
    assert "ab" * 6 not in refused.json()["error"]["message"]
    assert _put_head(gateway, "h", _head(12)).status_code == 201  # a global head: the operator's


def test_a_head_template_takes_no_prompt_fields(embed_gateway: RunningGateway) -> None:
    _put_head(embed_gateway, "h", _head(9))
    for extra in (
        {"model": "other"},
        {"temperature": 2.0},
        {"examples": [{"inputs": {"text": "x"}, "label": "neutral"}]},
        {"kind": "generate"},
    ):
        response = _put_template(embed_gateway, _template(**extra))
        assert response.status_code == 400, (extra, response.text)
    without = _template()
    assert "instruction" not in without and _put_template(embed_gateway, without).status_code == 201
    described = embed_gateway.post("/v1/templates/mood", None).status_code  # a POST without inputs: 400, not 500
    assert described == 400


# -- training and the CLI --------------------------------------------------------------------
def test_train_method_head_embeds_through_the_server_fits_and_pushes(
    embed_gateway: RunningGateway, encoder: FakeState, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    words = {"positive": ["good", "great", "fine", "fun"], "negative": ["bad", "awful", "poor", "dull"]}
    rng = np.random.default_rng(0)
    rows = [
        {"text": " ".join(rng.choice(words[label], size=3)), "label": label} for label in ["positive", "negative"] * 12
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "h.json"
    argv = ["train", "--method", "head", "--data", str(data), "--embedding-model", "embedder", "--name", "h"]
    argv += [
        "--global",
        "--embed-key",
        API_KEY,
        "--out",
        str(out),
        "--url",
        embed_gateway.url,
        "--admin-key",
        ADMIN_KEY,
    ]
    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == ["negative", "positive"] and report["C"] in C_GRID and report["examples"] == 24
    assert embed_gateway.admin("GET", "/heads/h").json()["active_version"] == report["version"]
    assert any(
        r.get("model") == FAKE_ENCODER and len(r["input"]) == 24 for r in encoder.requests
    )  # one batch of 64 at most
    # the same fit in process, on the fake vectors as they travel (float32): the same head
    x = np.array([fake_embedding(r["text"].split()) for r in rows], dtype=np.float32).astype(np.float64)
    expected, _ = train_head(x, [r["label"] for r in rows], "embedder")
    pushed = json.loads(out.read_text())
    np.testing.assert_allclose(np.array(pushed["coef"]), expected.coef, atol=1e-9)
    _put_template(embed_gateway, _template(labels=["positive", "negative"]))
    answer = run_template(embed_gateway, "mood", {"inputs": [{"text": "good fun"}, {"text": "awful dull"}]}).json()
    assert [r["label"] for r in answer["results"]] == ["positive", "negative"]
    # the heads commands
    with pytest.raises(SystemExit) as done:
        cli_main(["heads", "rollback", "h", "--url", embed_gateway.url, "--admin-key", ADMIN_KEY])
    assert done.value.code == 1 and json.loads(capsys.readouterr().out)["error"]["code"] == "no_earlier_version"
    with pytest.raises(SystemExit) as done:
        cli_main(["heads", "push", str(out), "--name", "h2", "--url", embed_gateway.url, "--admin-key", ADMIN_KEY])
    assert done.value.code == 0 and json.loads(capsys.readouterr().out)["version"] == report["version"]


def _word_fit(gateway: RunningGateway, folder: Path) -> Any:
    """A fit run on 48 two-label texts of mood words, against `gateway`."""
    from adaptserve.datasets import Example
    from adaptserve.fit.candidates import Server, zero_shot
    from adaptserve.fit.run import Fit, FitConfig

    words = {"positive": ["good", "great", "fine", "fun"], "negative": ["bad", "awful", "poor", "dull"]}
    rng = np.random.default_rng(1)
    examples = [
        Example(" ".join(rng.choice(words[label], size=3)) + f" take {i}", label)
        for i in range(24)
        for label in ("negative", "positive")
    ]
    config = FitConfig(folder, zero_shot(["negative", "positive"]), "text", candidates=("majority",))
    return Fit(examples, config, Server(gateway.url, API_KEY, ADMIN_KEY, "default"))


def test_fit_serves_its_minilm_baseline_as_a_head_refit_on_every_example(
    embed_gateway: RunningGateway, encoder: FakeState, tmp_path: Path
) -> None:
    from adaptserve.fit.head import serve_head

    fit = _word_fit(embed_gateway, tmp_path)
    examples = fit.examples
    served = serve_head(fit, "moods", "embedder")
    # Trained on every example: one embeddings batch of all 48 texts, in order.
    trained = [r["input"] for r in encoder.requests if r.get("model") == FAKE_ENCODER and len(r["input"]) == 48]
    assert trained == [[e.text for e in examples]]
    assert served["refit_on"] == 48 and served["candidate"] == "minilm" and served["model"] == "embedder"
    assert served["chosen"]["C"] in C_GRID and served["checked_inputs"] == len(fit.folds.test(0))
    # Through the served template the head's own probabilities, to float32 rounding.
    assert served["agreement"] == 1.0 and served["largest_probability_gap"] < 1e-5
    head = embed_gateway.admin("GET", "/heads/moods").json()
    assert head["active_version"] == served["head"]["version"]
    answer = run_template(embed_gateway, "moods", {"inputs": {"text": "great fun"}}).json()
    assert answer["label"] == "positive" and answer["head"]["name"] == "moods"


def test_fit_serves_no_head_on_embedding_weights_it_did_not_measure(
    start_gateway: Callable[..., RunningGateway], encoder: FakeState, tmp_path: Path
) -> None:
    from adaptserve.fit.head import serve_head

    gateway = start_gateway(models=[embed_entry(encoder, digest="cd" * 32)])  # not the bundled MiniLM's
    with pytest.raises(ConfigurationError, match=r"refused head moods: .*trained on embedder weights"):
        serve_head(_word_fit(gateway, tmp_path), "moods", "embedder")
    assert gateway.admin("GET", "/heads/moods").status_code == 404


def test_fit_serves_what_it_chose_and_says_why_it_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from adaptserve.cli.fit import _serve
    from adaptserve.fit import head as fit_head

    calls: list[str] = []

    def serve_head(fit: Any, name: str, model: str, candidate: str) -> dict[str, Any]:
        if model == "missing":
            raise ConfigurationError("the server gave no embeddings from missing")
        calls.append(f"head {name} on {model}")
        return {"candidate": candidate}

    monkeypatch.setattr(fit_head, "serve_head", serve_head)
    fit = SimpleNamespace(serve=lambda candidate, name: calls.append(f"llm {candidate}") or {"candidate": candidate})
    args = SimpleNamespace(serve_llm=False, embedding_model="minilm")

    def decided(choice: str | None, baseline: str | None, llm: str | None = "zero-shot") -> SimpleNamespace:
        return SimpleNamespace(choice=choice, baseline=baseline, llm=llm, verdict="the picks share no test fold")

    assert _serve(fit, decided("llm", "minilm"), "t", args) == {"served": {"candidate": "zero-shot"}}
    assert _serve(fit, decided("baseline", "minilm"), "t", args) == {"served": {"candidate": "minilm"}}
    assert _serve(fit, decided("baseline", "minilm", llm=None), "t", args) == {"served": {"candidate": "minilm"}}
    assert calls == ["llm zero-shot", "head t on minilm", "head t on minilm"]
    distilled = _serve(fit, decided("baseline", "distilled-head"), "t", args)
    assert distilled == {"served": {"candidate": "distilled-head"}} and calls[-1] == "head t on minilm"
    tfidf = _serve(fit, decided("baseline", "tfidf"), "t", args)["not_served"]
    assert "fit serves only minilm or distilled-head" in tfidf and "--serve-llm serves zero-shot" in tfidf
    missing = SimpleNamespace(serve_llm=False, embedding_model="missing")
    failed = _serve(fit, decided("baseline", "minilm"), "t", missing)
    assert "serving it failed" in failed["not_served"] and "no embeddings from missing" in failed["not_served"]
    assert "fit made no choice" in _serve(fit, decided(None, "minilm"), "t", args)["not_served"]  # no shared fold
    assert _serve(fit, decided("baseline", "minilm"), "t", SimpleNamespace(serve_llm=True, embedding_model="m")) == {
        "served": {"candidate": "zero-shot"}
    }


def test_a_distilled_head_learns_the_teachers_probabilities_not_only_its_labels() -> None:
    from adaptserve.training.head import distill_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    # A teacher unsure everywhere (0.7 / 0.3): hard labels would teach certainty; the student learns 0.7.
    unsure = np.tile([0.7, 0.3], (300, 1))
    head, facts = distill_head(x, unsure, ["yes", "no"], "embedder")
    assert np.abs(head.probabilities(x)[:, 0] - 0.7).max() < 0.05 and facts["training_agreement"] == 1.0
    # A teacher that is a logistic model of the vectors: the student recovers its probabilities.
    w = rng.normal(size=(8, 3))
    logits = x @ w
    teacher = np.exp(logits - logits.max(axis=1, keepdims=True))
    teacher /= teacher.sum(axis=1, keepdims=True)
    head, facts = distill_head(x, teacher, ["a", "b", "c"], "embedder")
    assert facts["C"] in C_GRID and facts["inner_agreement"] > 0.9 and facts["training_agreement"] > 0.95
    assert np.abs(head.probabilities(x) - teacher).mean() < 0.05
    with pytest.raises(ConfigurationError, match="one row per text"):
        distill_head(x, teacher[:, :2], ["a", "b", "c"], "embedder")


def test_distill_method_head_learns_a_teacher_template_through_the_server(
    embed_gateway: RunningGateway, encoder: FakeState, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from adaptserve.fit.candidates import zero_shot

    teacher = zero_shot(["bad", "good"]) | {"name": "teacher"}  # the fake engine: a label said twice wins
    assert _put_template(embed_gateway, teacher).status_code == 201
    texts = [f"{word} {word} item {i}" for i in range(20) for word in ("good", "bad")]
    inputs = tmp_path / "unlabelled.txt"
    inputs.write_text("\n".join(texts) + "\n")
    out = tmp_path / "student.json"
    argv = ["distill", "--method", "head", "--inputs", str(inputs), "--teacher-template", "teacher"]
    argv += [
        "--teacher-url",
        embed_gateway.url,
        "--teacher-key",
        API_KEY,
        "--template",
        str(_template_file(tmp_path, teacher)),
    ]
    argv += ["--embedding-model", "embedder", "--name", "student", "--global", "--embed-key", API_KEY]
    with pytest.raises(SystemExit) as done:
        cli_main([*argv, "--out", str(out), "--url", embed_gateway.url, "--admin-key", ADMIN_KEY])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == 40 and report["teacher"] == "teacher" and report["labels"] == ["bad", "good"]
    assert embed_gateway.admin("GET", "/heads/student").json()["active_version"] == report["version"]
    cached = [json.loads(line) for line in (tmp_path / "student.teacher" / "teacher.jsonl").read_text().splitlines()]
    assert len(cached) == 40 and all(set(c["scores"]) == {"bad", "good"} for c in cached)
    # The pushed head on the fake vectors answers as the teacher labelled.
    pushed = json.loads(out.read_text())
    probs = _expected(pushed, texts, order=["bad", "good"])
    teacher_top = [max(c["scores"], key=c["scores"].__getitem__) for c in cached]
    by_text = dict(zip([c["inputs"]["text"] for c in cached], teacher_top, strict=True))
    student_top = [["bad", "good"][int(np.argmax(p))] for p in probs]
    assert student_top == [by_text[t] for t in texts]


def _template_file(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / f"{doc['name']}.json"
    path.write_text(json.dumps(doc))
    return path


def test_eval_measures_a_head_template_from_its_answers(
    embed_gateway: RunningGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`adaptserve eval` on a head template: its answers are uncalibrated probabilities,
    scored as they are (a head's explain has logits, not the LLM's log-probabilities)."""
    assert embed_gateway.admin("PUT", "/heads/h", json=_head(labels=["negative", "positive"])).status_code == 201
    assert _put_template(embed_gateway, _template(labels=["negative", "positive"])).status_code == 201
    texts = ["good fun", "awful dull", "great film", "poor plot", "fine day", "bad luck"]
    gold = ["positive", "negative", "positive", "negative", "positive", "negative"]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(texts, gold, strict=True)))
    argv = ["eval", "mood", "--data", str(data), "--out", str(tmp_path), "--url", embed_gateway.url, "--key", API_KEY]
    with pytest.raises(SystemExit) as done:
        cli_main(argv)
    assert done.value.code == 0, capsys.readouterr()
    (written,) = tmp_path.glob("mood-*.json")
    report = json.loads(written.read_text())
    expected = _expected(_head(labels=["negative", "positive"]), texts, order=["negative", "positive"])
    predicted = [["negative", "positive"][int(np.argmax(p))] for p in expected]
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)
    assert report["uncalibrated"]["accuracy"] == pytest.approx(accuracy) and "calibrated" not in report


def test_distill_method_head_refuses_missing_flags_before_asking_the_teacher(
    embed_gateway: RunningGateway, tmp_path: Path
) -> None:
    inputs = tmp_path / "unlabelled.txt"
    inputs.write_text("good good\nbad bad\n")
    template = _template_file(tmp_path, zero_shot_doc())
    argv = ["distill", "--method", "head", "--inputs", str(inputs), "--teacher-template", "teacher"]
    argv += ["--teacher-url", embed_gateway.url, "--teacher-key", API_KEY, "--template", str(template)]
    argv += ["--embedding-model", "embedder", "--global", "--url", embed_gateway.url, "--admin-key", ADMIN_KEY]
    with pytest.raises(SystemExit, match="needs --embedding-model and --name"):
        cli_main(argv)  # no --name
    with pytest.raises(SystemExit, match=r"--tenant|--global"):
        cli_main([a for a in argv if a != "--global"] + ["--name", "student"])  # whose: neither
    # The teacher was never asked: no cache where it would be (heads/NAME.teacher/, from the working folder).
    assert not Path("heads/student.teacher").exists() and not Path("heads/None.teacher").exists()


def zero_shot_doc() -> dict[str, Any]:
    from adaptserve.fit.candidates import zero_shot

    return zero_shot(["bad", "good"]) | {"name": "teacher"}
